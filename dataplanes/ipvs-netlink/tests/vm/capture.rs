//! Capture mode: sets up a little IPVS state with real traffic, sends requests with the client over a
//! recording transport, and prints every datagram the kernel answered, for the driver to store under
//! `tests/captures/` (host-side round-trip tests parse them).

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use switchyard_ipvs_netlink::client::{request, NetlinkTransport, Recording};
use switchyard_ipvs_netlink::codec::{Daemon, DaemonState, Netmask};
use switchyard_ipvs_netlink::{Client, Destination, Family, Service, ServiceFlags, ServiceId};

use crate::netns::{ask_tcp, ask_udp, wait_for, Lab};
use crate::CAPTURE_MARKER;

type Recorder = Client<Recording<NetlinkTransport>>;

fn capture<R: Debug>(c: &mut Recorder, name: &str, notes: &[&str], f: impl FnOnce(&mut Recorder) -> R) {
    let before = c.transport().received.len();
    let result = f(c);
    println!("capture {name}: {result:?}");
    for note in notes {
        println!("{CAPTURE_MARKER} NOTE {name} {note}");
    }
    for datagram in &c.transport().received[before..] {
        let hex: String = datagram.iter().map(|b| format!("{b:02x}")).collect();
        println!("{CAPTURE_MARKER} DATAGRAM {name} {hex}");
    }
}

pub fn run() {
    let b1 = Ipv4Addr::new(10, 1, 0, 2);
    let b2 = Ipv4Addr::new(10, 1, 0, 3);
    let lab = Lab::new(&[b1, b2]);
    lab.tcp_backend(SocketAddr::new(b1.into(), 8080), "b1");
    lab.tcp_backend(SocketAddr::new(b2.into(), 8080), "b2");
    lab.udp_backend(SocketAddr::new(b1.into(), 5353), "b1");

    let mut c = Client::with_transport(Recording::new(NetlinkTransport::open().unwrap())).unwrap();
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let tcp = ServiceId::tcp(ip("10.96.0.10"), 80);
    c.add_service(&Service::new(tcp, "rr")).unwrap();
    c.add_destination(&tcp, &Destination::new(b1.into(), 8080)).unwrap();
    c.add_destination(&tcp, &Destination::new(b2.into(), 8080).weight(2)).unwrap();
    let udp = ServiceId::udp(ip("10.96.0.10"), 53);
    let mut u = Service::new(udp, "wlc").persistent(300);
    u.netmask = Netmask::from_prefix(Family::Ipv4, 24);
    c.add_service(&u).unwrap();
    c.add_destination(&udp, &Destination::new(b1.into(), 5353)).unwrap();
    let mut f = Service::new(ServiceId::fwmark(Family::Ipv4, 7), "sh");
    f.flags = ServiceFlags::SH_PORT;
    c.add_service(&f).unwrap();
    let v6 = ServiceId::tcp(ip("fd00::10"), 443);
    c.add_service(&Service::new(v6, "mh")).unwrap();
    c.add_destination(&v6, &Destination::new(ip("fd00:1::2"), 8443)).unwrap();

    for _ in 0..3 {
        ask_tcp(SocketAddr::new(ip("10.96.0.10"), 80));
    }
    ask_udp(SocketAddr::new(ip("10.96.0.10"), 53));
    wait_for("counters", 20, || {
        c.service(&tcp).unwrap().stats.conns == 3 && c.service(&udp).unwrap().stats.inpkts == 1
    });
    let state = [
        "State: TCP 10.96.0.10:80 rr -> 10.1.0.2:8080 w1, 10.1.0.3:8080 w2 (3 connections made);",
        "UDP 10.96.0.10:53 wlc persistent 300 /24 -> 10.1.0.2:5353 (1 datagram exchanged);",
        "FWM 7 sh sh-port; TCP [fd00::10]:443 mh -> [fd00:1::2]:8443.",
    ];

    let with = |what: &str| -> Vec<String> {
        std::iter::once(what.to_string()).chain(state.iter().map(|s| s.to_string())).collect()
    };
    let notes = with("The kernel's answer to IPVS_CMD_GET_SERVICE with NLM_F_DUMP (Debian 12 kernel 6.1).");
    capture(&mut c, "service-dump", &notes.iter().map(String::as_str).collect::<Vec<_>>(), |c| c.services());
    let notes = with("The kernel's answer to IPVS_CMD_GET_DEST dump for TCP 10.96.0.10:80.");
    capture(&mut c, "dest-dump", &notes.iter().map(String::as_str).collect::<Vec<_>>(), |c| c.destinations(&tcp));
    let notes = with("The kernel's answer to IPVS_CMD_GET_SERVICE (no dump) for UDP 10.96.0.10:53: reply, then ack.");
    capture(&mut c, "service-get", &notes.iter().map(String::as_str).collect::<Vec<_>>(), |c| c.service(&udp));
    capture(&mut c, "info", &["The kernel's answer to IPVS_CMD_GET_INFO: reply (IPVS_CMD_SET_INFO), then ack."], |c| {
        c.info()
    });
    capture(
        &mut c,
        "config",
        &["The kernel's answer to IPVS_CMD_GET_CONFIG (timeouts 900/120/300): reply (IPVS_CMD_SET_CONFIG), then ack."],
        |c| c.timeouts(),
    );
    capture(
        &mut c,
        "error-esrch",
        &["The kernel's answer to IPVS_CMD_DEL_SERVICE of a missing service: NLMSG_ERROR -ESRCH (NETLINK_CAP_ACK)."],
        |c| c.delete_service(&ServiceId::tcp(ip("10.96.0.99"), 80)),
    );

    let mut daemon = Daemon::new(DaemonState::Master, "sy-d", 7);
    daemon.sync_maxlen = Some(1400);
    daemon.mcast_group = Some(ip("224.0.0.81"));
    daemon.mcast_port = Some(8850);
    daemon.mcast_ttl = Some(2);
    match c.send(&request::new_daemon(&daemon)) {
        Ok(_) => {
            capture(
                &mut c,
                "daemon-dump",
                &[
                    "The kernel's answer to IPVS_CMD_GET_DAEMON dump, with a master sync daemon on sy-d,",
                    "sync id 7, maxlen 1400, group 224.0.0.81, port 8850, ttl 2.",
                ],
                |c| c.daemons(),
            );
            c.send(&request::del_daemon(DaemonState::Master)).unwrap();
        }
        Err(e) => println!("capture: cannot start a sync daemon, no daemon capture: {e}"),
    }
    drop(lab);
}
