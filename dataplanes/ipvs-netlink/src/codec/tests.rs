use std::net::IpAddr;

use netlink_packet_core::{DefaultNla, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A whole netlink message around an IPVS message, as bytes.
fn to_bytes(msg: &IpvsMessage) -> Vec<u8> {
    let mut genl = GenlMessage::from_payload(msg.clone());
    genl.set_resolved_family_id(0x20);
    let mut nl = NetlinkMessage::from(genl);
    nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    nl.header.sequence_number = 7;
    nl.finalize();
    let mut buf = vec![0; nl.buffer_len()];
    nl.serialize(&mut buf);
    buf
}

fn from_bytes(bytes: &[u8]) -> IpvsMessage {
    let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes).unwrap();
    match nl.payload {
        NetlinkPayload::InnerMessage(genl) => genl.payload,
        other => panic!("not an IPVS message: {other:?}"),
    }
}

/// Parses bytes and emits them again: same bytes.
fn assert_round_trip(bytes: &[u8]) -> IpvsMessage {
    let nl = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(bytes).unwrap();
    let mut again = vec![0; nl.buffer_len()];
    nl.serialize(&mut again);
    assert_eq!(hex(&again), hex(bytes), "re-emitted bytes differ for {nl:?}");
    from_bytes(bytes)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A delete-service request is laid out as the kernel (and ipvsadm) lay it out: nested service without
/// NLA_F_NESTED; AF and protocol host order, 16-byte address, port in network order.
#[test]
fn del_service_bytes_are_the_kernels_layout() {
    let msg =
        IpvsMessage::new(IpvsCmd::DelService, vec![IpvsAttr::Service(ServiceId::tcp(ip("10.0.0.1"), 80).to_attrs())]);
    let expected = unhex(
        "44000000 2000 0500 07000000 00000000
         03 01 0000
         3000 0100
           0600 0100 0200 0000
           0600 0200 0600 0000
           1400 0300 0a000001 00000000 00000000 00000000
           0600 0400 0050 0000",
    );
    assert_eq!(hex(&to_bytes(&msg)), hex(&expected));
    assert_eq!(assert_round_trip(&expected), msg);
}

/// Every kind of attribute the codec knows survives emit then parse, at every level.
#[test]
fn every_known_attribute_round_trips() {
    let mut service = Service::new(ServiceId::udp(ip("fd00::1"), 53), "mh").persistent(300);
    service.flags |= ServiceFlags::SH_PORT;
    service.netmask = Netmask::from_prefix(Family::Ipv6, 64);
    service.pe_name = Some("sip".into());
    let mut service_attrs = service.to_attrs();
    service_attrs.push(ServiceAttr::Stats(vec![
        StatsAttr::Conns(1),
        StatsAttr::InPkts(2),
        StatsAttr::OutPkts(3),
        StatsAttr::InBytes(1 << 40),
        StatsAttr::OutBytes(5),
        StatsAttr::Cps(6),
        StatsAttr::InPps(7),
        StatsAttr::OutPps(8),
        StatsAttr::InBps(9),
        StatsAttr::OutBps(10),
    ]));
    service_attrs.push(ServiceAttr::Stats64(Stats { conns: 1 << 33, ..Stats::default() }.to_attrs64()));
    let mut dest = Destination::new(ip("fd00:1::2"), 8080).weight(7);
    dest.fwd_method = ForwardMethod::Tunnel;
    (dest.tun_type, dest.tun_port, dest.tun_flags) = (1, 6080, 1);
    let mut dest_attrs = dest.to_attrs();
    dest_attrs.extend([DestAttr::ActiveConns(1), DestAttr::InactConns(2), DestAttr::PersistConns(3)]);
    dest_attrs.push(DestAttr::Stats64(Stats { outbytes: 99, ..Stats::default() }.to_attrs64()));
    let mut daemon = Daemon::new(DaemonState::Backup, "eth0", 3);
    (daemon.sync_maxlen, daemon.mcast_port, daemon.mcast_ttl) = (Some(1400), Some(8848), Some(1));
    daemon.mcast_group = Some(ip("ff02::81"));

    for msg in [
        IpvsMessage::new(IpvsCmd::NewDest, vec![IpvsAttr::Service(service_attrs), IpvsAttr::Dest(dest_attrs)]),
        IpvsMessage::new(IpvsCmd::NewDaemon, vec![IpvsAttr::Daemon(daemon.to_attrs())]),
        IpvsMessage::new(IpvsCmd::SetConfig, Timeouts { tcp: 1, tcp_fin: 2, udp: 3 }.to_attrs()),
        IpvsMessage::new(IpvsCmd::SetInfo, vec![IpvsAttr::Version(0x010201), IpvsAttr::ConnTabSize(4096)]),
    ] {
        let bytes = to_bytes(&msg);
        assert_eq!(from_bytes(&bytes), msg);
        assert_round_trip(&bytes);
    }
}

/// The plain structs convert to attributes and back unchanged.
#[test]
fn plain_structs_convert_both_ways() {
    let mut s = Service::new(ServiceId::fwmark(Family::Ipv6, 9), "sh").persistent(60);
    s.flags |= ServiceFlags::SH_FALLBACK;
    s.pe_name = Some("sip".into());
    assert_eq!(Service::from_attrs(&s.to_attrs()).unwrap(), s);
    let s = Service::new(ServiceId::sctp(ip("10.0.0.1"), 9), "rr");
    assert_eq!(Service::from_attrs(&s.to_attrs()).unwrap(), s);

    let mut d = Destination::new(ip("10.1.0.2"), 8080).weight(3);
    (d.u_threshold, d.l_threshold, d.fwd_method) = (10, 5, ForwardMethod::Route);
    assert_eq!(Destination::from_attrs(&d.to_attrs(), Family::Ipv4).unwrap(), d);

    let mut daemon = Daemon::new(DaemonState::Master, "eth1", 200);
    daemon.mcast_group = Some(ip("224.0.0.82"));
    assert_eq!(Daemon::from_attrs(&daemon.to_attrs()).unwrap(), daemon);
}

/// Attributes this codec does not know — at the top level, in a service, a destination, both kinds of
/// counters and a daemon — are kept as `Other` and emitted again byte for byte.
#[test]
fn unknown_attributes_survive_at_every_level() {
    let unknown = |kind: u16| DefaultNla::new(kind, vec![0xde, 0xad, 0xbe, 0xef, 0x01]);
    let msg = IpvsMessage::new(
        IpvsCmd::NewService,
        vec![
            IpvsAttr::Service(vec![
                ServiceAttr::AddressFamily(2),
                ServiceAttr::Other(unknown(40)),
                ServiceAttr::Stats(vec![StatsAttr::Conns(1), StatsAttr::Other(unknown(41))]),
                ServiceAttr::Stats64(vec![Stats64Attr::Other(unknown(42)), Stats64Attr::Conns(1)]),
            ]),
            IpvsAttr::Dest(vec![DestAttr::Other(unknown(43)), DestAttr::Weight(1)]),
            IpvsAttr::Daemon(vec![DaemonAttr::Other(unknown(44))]),
            IpvsAttr::Other(unknown(45)),
        ],
    );
    let bytes = to_bytes(&msg);
    assert_eq!(from_bytes(&bytes), msg, "each unknown attribute parsed back as Other");
    assert_round_trip(&bytes);
}

/// A known attribute whose value is not in the kernel's form (here a 4-byte port and a scheduler name
/// without its NUL), or that carries NLA_F_NESTED or NLA_F_NET_BYTEORDER, is kept raw rather than altered.
#[test]
fn known_attributes_in_another_form_are_kept_raw() {
    let bytes = unhex(
        "38000000 2000 0100 07000000 00000000
         01 01 0000
         2400 0100
           0800 0400 00000050
           0600 0600 7272 0000
           0800 0180 01020304
           0800 0140 02000000",
    );
    let msg = assert_round_trip(&bytes);
    let attrs = msg.service_attrs().unwrap();
    assert!(attrs.iter().all(|a| matches!(a, ServiceAttr::Other(_))), "{attrs:?}");
}

/// The info attributes reuse the numbers of the service and destination attributes; they are read as info
/// only in GET_INFO/SET_INFO messages.
#[test]
fn info_attributes_are_read_by_command() {
    let bytes = unhex(
        "24000000 2000 0000 07000000 00000000
         0e 01 0000
         0800 0100 01020100
         0800 0200 00100000",
    );
    let msg = assert_round_trip(&bytes);
    let info = Info::from_attrs(&msg.attrs).unwrap();
    assert_eq!((info.version_string().as_str(), info.conn_tab_size), ("1.2.1", 4096));
}

/// A truncated nested attribute is a decode error, not a silent partial parse.
#[test]
fn truncated_nested_attributes_fail_to_decode() {
    let bytes = unhex(
        "20000000 2000 0000 07000000 00000000
         01 01 0000
         0c00 0100
           0800 0100 0200",
    );
    assert!(NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&bytes).is_err());
}

/// Netmasks convert from and to prefix lengths in the kernel's two encodings.
#[test]
fn netmask_prefixes() {
    assert_eq!(Netmask::from_prefix(Family::Ipv4, 24).0, [255, 255, 255, 0]);
    assert_eq!(Netmask::from_prefix(Family::Ipv4, 0).0, [0, 0, 0, 0]);
    assert_eq!(Netmask::full(Family::Ipv6).0, 128u32.to_ne_bytes());
    for len in [0, 1, 17, 32] {
        assert_eq!(Netmask::from_prefix(Family::Ipv4, len).prefix_len(Family::Ipv4), Some(len));
    }
    for len in [0, 64, 128] {
        assert_eq!(Netmask::from_prefix(Family::Ipv6, len).prefix_len(Family::Ipv6), Some(len));
    }
    assert_eq!(Netmask([255, 0, 255, 0]).prefix_len(Family::Ipv4), None);
    assert_eq!(Netmask(200u32.to_ne_bytes()).prefix_len(Family::Ipv6), None);
}

/// A service dump entry without a scheduler, or with an unknown family, is a conversion error naming what
/// is wrong.
#[test]
fn incomplete_services_are_conversion_errors() {
    let id = ServiceId::tcp(ip("10.0.0.1"), 80).to_attrs();
    assert_eq!(
        Service::from_attrs(&id),
        Err(ConvertError::Missing { object: "service", attribute: "IPVS_SVC_ATTR_SCHED_NAME" })
    );
    assert_eq!(
        ServiceId::from_attrs(&[ServiceAttr::AddressFamily(1), ServiceAttr::Fwmark(1)]),
        Err(ConvertError::UnknownFamily(1))
    );
    let display = ServiceId::tcp(ip("fd00::1"), 80).to_string();
    assert_eq!(display, "TCP [fd00::1]:80");
    assert_eq!(ServiceId::fwmark(Family::Ipv4, 7).to_string(), "FWM 7");
}

/// Commands map to and from their numbers, unknown ones included.
#[test]
fn commands_map_to_numbers() {
    for n in 0..=40u8 {
        assert_eq!(u8::from(IpvsCmd::from(n)), n);
    }
    assert_eq!(IpvsCmd::from(1), IpvsCmd::NewService);
    assert_eq!(IpvsCmd::from(17), IpvsCmd::Flush);
    assert_eq!(IpvsCmd::from(99).name(), "IPVS_CMD_99");
}
