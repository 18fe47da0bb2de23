//! Bytes captured from a real kernel (Debian 12's 6.1, in the VM; see `tests/captures/README.md`): every
//! message parses, is understood without leftovers, and is emitted again byte for byte; the client reads
//! the captured answers into what the kernel was holding. No VM, no root.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use netlink_packet_core::{DefaultNla, Emitable, NetlinkBuffer, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use switchyard_ipvs_netlink::client::Transport;
use switchyard_ipvs_netlink::codec::*;
use switchyard_ipvs_netlink::Client;

type Message = NetlinkMessage<GenlMessage<IpvsMessage>>;

/// The datagrams of a capture file: hex, one blank-line-separated block per datagram, `#` comments.
fn datagrams(name: &str) -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures").join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let hex: String = block.lines().filter(|l| !l.starts_with('#')).flat_map(|l| l.split_whitespace()).collect();
        if !hex.is_empty() {
            out.push((0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect());
        }
    }
    assert!(!out.is_empty(), "{name}: no datagrams");
    out
}

/// The messages of a datagram, each with its own bytes.
fn split(datagram: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest).unwrap().length() as usize;
        out.push(&rest[..len]);
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    out
}

fn messages(name: &str) -> Vec<Message> {
    datagrams(name).iter().flat_map(|d| split(d).into_iter().map(|m| Message::deserialize(m).unwrap())).collect()
}

fn ipvs_messages(name: &str) -> Vec<IpvsMessage> {
    messages(name)
        .into_iter()
        .filter_map(|m| match m.payload {
            NetlinkPayload::InnerMessage(genl) => Some(genl.payload),
            _ => None,
        })
        .collect()
}

const CAPTURES: &[&str] = &["service-dump", "dest-dump", "service-get", "info", "config", "error-esrch", "daemon-dump"];

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every captured message parses and is emitted again as the same bytes, header and padding included.
#[test]
fn captured_messages_round_trip_byte_for_byte() {
    for name in CAPTURES {
        for (i, datagram) in datagrams(name).iter().enumerate() {
            let mut again = Vec::new();
            for bytes in split(datagram) {
                let msg = Message::deserialize(bytes).unwrap_or_else(|e| panic!("{name} #{i}: {e}"));
                let mut buf = vec![0; msg.buffer_len()];
                msg.serialize(&mut buf);
                assert_eq!(hex(&buf), hex(bytes), "{name} datagram {i}: {msg:?}");
                again.extend_from_slice(&buf);
                again.resize((again.len() + 3) & !3, 0);
            }
            assert_eq!(hex(&again), hex(datagram), "{name} datagram {i}");
        }
    }
}

fn others_in(msg: &IpvsMessage) -> Vec<String> {
    let mut found = Vec::new();
    for a in &msg.attrs {
        match a {
            IpvsAttr::Service(attrs) => {
                for s in attrs {
                    match s {
                        ServiceAttr::Other(o) => found.push(format!("service {o:?}")),
                        ServiceAttr::Stats(st) => found
                            .extend(st.iter().filter(|x| matches!(x, StatsAttr::Other(_))).map(|x| format!("{x:?}"))),
                        ServiceAttr::Stats64(st) => found
                            .extend(st.iter().filter(|x| matches!(x, Stats64Attr::Other(_))).map(|x| format!("{x:?}"))),
                        _ => {}
                    }
                }
            }
            IpvsAttr::Dest(attrs) => {
                for d in attrs {
                    match d {
                        DestAttr::Other(o) => found.push(format!("dest {o:?}")),
                        DestAttr::Stats(st) => found
                            .extend(st.iter().filter(|x| matches!(x, StatsAttr::Other(_))).map(|x| format!("{x:?}"))),
                        DestAttr::Stats64(st) => found
                            .extend(st.iter().filter(|x| matches!(x, Stats64Attr::Other(_))).map(|x| format!("{x:?}"))),
                        _ => {}
                    }
                }
            }
            IpvsAttr::Daemon(attrs) => {
                found.extend(attrs.iter().filter(|x| matches!(x, DaemonAttr::Other(_))).map(|x| format!("{x:?}")))
            }
            IpvsAttr::Other(o) => found.push(format!("top {o:?}")),
            _ => {}
        }
    }
    found
}

/// The codec knows every attribute a 6.1 kernel sends: nothing in the captures falls back to `Other`.
#[test]
fn captured_messages_have_no_unknown_attributes() {
    for name in CAPTURES {
        for msg in ipvs_messages(name) {
            assert_eq!(others_in(&msg), Vec::<String>::new(), "{name}: {msg:?}");
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The service dump holds the four services set up in the VM, with their settings and counters.
#[test]
fn service_dump_reads_as_the_services_set_up() {
    let mut services: Vec<Service> = ipvs_messages("service-dump")
        .iter()
        .map(|m| Service::from_attrs(m.service_attrs().unwrap()).unwrap())
        .collect();
    services.sort_by_key(|s| s.id);
    let summary: Vec<(String, &str, u32, u32, Option<u8>)> = services
        .iter()
        .map(|s| (s.id.to_string(), s.scheduler.as_str(), s.flags.0, s.timeout, s.netmask.prefix_len(s.id.family())))
        .collect();
    assert_eq!(
        summary,
        [
            ("TCP 10.96.0.10:80".into(), "rr", 0x2, 0, Some(32)),
            ("TCP [fd00::10]:443".into(), "mh", 0x2, 0, Some(128)),
            ("UDP 10.96.0.10:53".into(), "wlc", 0x3, 300, Some(24)),
            ("FWM 7".into(), "sh", 0x12, 0, Some(32)),
        ]
    );
    let tcp = &services[0];
    assert_eq!(tcp.stats.conns, 3);
    assert!(tcp.stats.inpkts > 0 && tcp.stats.outpkts > 0 && tcp.stats.inbytes > 0 && tcp.stats.outbytes > 0);
    assert_eq!((services[2].stats.conns, services[2].stats.inpkts), (1, 1));
}

/// The 32-bit and 64-bit counters of one entry agree (the kernel fills both from the same numbers).
#[test]
fn legacy_and_64_bit_counters_agree() {
    for m in ipvs_messages("service-dump").iter().chain(&ipvs_messages("dest-dump")) {
        let (legacy, wide) = match (m.service_attrs(), m.dest_attrs()) {
            (_, Some(d)) => (
                d.iter().find_map(|a| if let DestAttr::Stats(s) = a { Some(Stats::from_attrs(s)) } else { None }),
                d.iter().find_map(|a| if let DestAttr::Stats64(s) = a { Some(Stats::from_attrs64(s)) } else { None }),
            ),
            (Some(s), None) => (
                s.iter().find_map(|a| if let ServiceAttr::Stats(s) = a { Some(Stats::from_attrs(s)) } else { None }),
                s.iter()
                    .find_map(|a| if let ServiceAttr::Stats64(s) = a { Some(Stats::from_attrs64(s)) } else { None }),
            ),
            _ => continue,
        };
        assert_eq!(legacy.unwrap(), wide.unwrap());
    }
}

/// The destination dump holds both NAT destinations with their weights and counters.
#[test]
fn dest_dump_reads_as_the_destinations_set_up() {
    let mut dests: Vec<Destination> = ipvs_messages("dest-dump")
        .iter()
        .map(|m| Destination::from_attrs(m.dest_attrs().unwrap(), Family::Ipv4).unwrap())
        .collect();
    dests.sort_by_key(|d| d.addr);
    let summary: Vec<_> = dests.iter().map(|d| (d.addr, d.port, d.fwd_method, d.weight, d.stats.conns)).collect();
    assert_eq!(
        summary,
        [(ip("10.1.0.2"), 8080, ForwardMethod::Masq, 1, 1), (ip("10.1.0.3"), 8080, ForwardMethod::Masq, 2, 2)]
    );
    assert!(dests.iter().all(|d| d.inact_conns + d.active_conns > 0 && d.stats.outbytes > 0));
}

/// The single-service answer, GET_INFO, GET_CONFIG and the daemon dump read as expected; the error
/// capture is NLMSG_ERROR -ESRCH.
#[test]
fn other_captures_read_as_expected() {
    let svc = Service::from_attrs(ipvs_messages("service-get")[0].service_attrs().unwrap()).unwrap();
    assert_eq!(svc.id, ServiceId::udp(ip("10.96.0.10"), 53));
    assert_eq!(svc.timeout, 300);

    let info = ipvs_messages("info");
    assert_eq!(info[0].cmd, IpvsCmd::SetInfo);
    let info = Info::from_attrs(&info[0].attrs).unwrap();
    assert_eq!((info.version_string().as_str(), info.conn_tab_size), ("1.2.1", 4096));

    let config = ipvs_messages("config");
    assert_eq!(config[0].cmd, IpvsCmd::SetConfig);
    assert_eq!(Timeouts::from_attrs(&config[0].attrs), Timeouts { tcp: 900, tcp_fin: 120, udp: 300 });

    let daemons: Vec<Daemon> =
        ipvs_messages("daemon-dump").iter().map(|m| Daemon::from_attrs(m.daemon_attrs().unwrap()).unwrap()).collect();
    assert_eq!(daemons.len(), 1);
    let d = &daemons[0];
    assert_eq!((d.state, d.mcast_ifn.as_str(), d.sync_id), (DaemonState::Master, "sy-d", 7));
    assert_eq!(
        (d.sync_maxlen, d.mcast_group, d.mcast_port, d.mcast_ttl),
        (Some(1400), Some(ip("224.0.0.81")), Some(8850), Some(2))
    );

    let error = messages("error-esrch");
    match &error[0].payload {
        NetlinkPayload::Error(e) => assert_eq!(e.raw_code(), -libc::ESRCH),
        other => panic!("{other:?}"),
    }
}

/// An unknown attribute added to a captured service (and to its counters) survives parse and emit, and
/// everything else is unchanged.
#[test]
fn unknown_attributes_added_to_a_capture_survive() {
    let mut msg = ipvs_messages("service-dump").remove(0);
    let IpvsAttr::Service(attrs) = &mut msg.attrs[0] else { panic!("{msg:?}") };
    attrs.push(ServiceAttr::Other(DefaultNla::new(200, b"from a newer kernel".to_vec())));
    for a in attrs.iter_mut() {
        if let ServiceAttr::Stats64(s) = a {
            s.push(Stats64Attr::Other(DefaultNla::new(12, 7u64.to_ne_bytes().to_vec())));
        }
    }
    let mut buf = vec![0; msg.buffer_len()];
    msg.emit(&mut buf);
    let header = netlink_packet_generic::GenlHeader { cmd: msg.cmd.into(), version: 1 };
    let parsed =
        <IpvsMessage as netlink_packet_core::ParseableParametrized<[u8], _>>::parse_with_param(&buf, header).unwrap();
    assert_eq!(parsed, msg);
    assert_eq!(others_in(&parsed).len(), 2);
}

/// Replays captured datagrams to the client, patching in the sequence number of each request.
struct Replay {
    answers: VecDeque<Vec<Vec<u8>>>,
    pending: VecDeque<Vec<u8>>,
}

impl Transport for Replay {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        let seq = &datagram[8..12];
        let answer = if u16::from_ne_bytes([datagram[4], datagram[5]]) == 0x10 {
            let mut genl = GenlMessage::from_payload(GenlCtrl {
                cmd: GenlCtrlCmd::NewFamily,
                nlas: vec![GenlCtrlAttrs::FamilyId(0x20)],
            });
            genl.finalize();
            let mut msg = NetlinkMessage::from(genl);
            msg.finalize();
            let mut b = vec![0; msg.buffer_len()];
            msg.serialize(&mut b);
            let mut ack = datagrams("info").pop().unwrap();
            ack.truncate(16 + 20);
            vec![b, ack]
        } else {
            self.answers.pop_front().expect("an answer for every request")
        };
        for mut d in answer {
            let mut at = 0;
            while at < d.len() {
                let len = u32::from_ne_bytes(d[at..at + 4].try_into().unwrap()) as usize;
                d[at + 8..at + 12].copy_from_slice(seq);
                at += (len + 3) & !3;
            }
            self.pending.push_back(d);
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Vec<u8>> {
        self.pending.pop_front().ok_or_else(|| io::Error::other("no more captured datagrams"))
    }
}

/// The client reads the captured answers, over several datagrams and up to NLMSG_DONE or the ack, into
/// the same objects as the codec; the captured error comes out as "not found".
#[test]
fn client_reads_captured_answers() {
    let answers = ["service-dump", "dest-dump", "info", "config", "daemon-dump", "error-esrch"];
    let replay = Replay { answers: answers.iter().map(|n| datagrams(n)).collect(), pending: VecDeque::new() };
    let mut c = Client::with_transport(replay).unwrap();
    assert_eq!(c.services().unwrap().len(), 4);
    let tcp = ServiceId::tcp(ip("10.96.0.10"), 80);
    assert_eq!(c.destinations(&tcp).unwrap().len(), 2);
    assert_eq!(c.info().unwrap().conn_tab_size, 4096);
    assert_eq!(c.timeouts().unwrap().tcp, 900);
    assert_eq!(c.daemons().unwrap()[0].sync_id, 7);
    let e = c.delete_service(&ServiceId::tcp(ip("10.96.0.99"), 80)).unwrap_err();
    assert!(e.is_not_found(), "{e}");
}
