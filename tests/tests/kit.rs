//! Checks of the test kit itself, without the daemon: the topology routes as a simple CNI would, servers and
//! clients report what happened, sender processes sit where they are put, and namespaces and cgroups are gone
//! after drop. Needs root.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_tests::cgroup::TestCgroup;
use switchyard_tests::daemon::{documents, Endpoint, EndpointSlice, Service};
use switchyard_tests::netns::{netns_exists, unique_prefix, Cluster, Netns, EXTERNAL_IP};
use switchyard_tests::sender::{Reply, Request, Sender};
use switchyard_tests::traffic::{self, tcp_request, udp_request, HeldConnection, Outcome, UdpClient};

const T: Duration = Duration::from_secs(1);

fn addr(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A pod reaches another pod's TCP server through the node by plain routing, with its own address as source;
/// the node and the external client reach it too.
#[test]
fn pods_reach_each_other_through_the_node() {
    let c = Cluster::new(2);
    let _s = traffic::tcp_server(&c.pod(1).ns, "pod1", 8080);
    let target = addr(c.pod(1).ip, 8080);

    let o = tcp_request(&c.pod(0).ns, target, T);
    assert_eq!(o.by(), "pod1", "{o}");
    assert_eq!(o.answer().source.ip(), c.pod(0).ip);

    let o = tcp_request(&c.node, target, T);
    assert_eq!(o.by(), "pod1", "{o}");

    let o = tcp_request(&c.external, target, T);
    assert_eq!(o.by(), "pod1", "{o}");
    assert_eq!(o.answer().source.ip(), EXTERNAL_IP);
    assert_eq!(c.node.sysctl_get("net.ipv4.ip_forward"), "1");
}

/// A closed port is refused at once; an address nobody routes is a timeout, not a refusal.
#[test]
fn refused_is_told_from_timeout() {
    let c = Cluster::new(1);
    let o = tcp_request(&c.external, addr(c.pod(0).ip, 9), T);
    match o {
        Outcome::Refused(d) => assert!(d < Duration::from_millis(200), "refused after {d:?}"),
        other => panic!("expected refused, got {other}"),
    }
    // 10.99.0.1 goes out the node's uplink to the external client, which does not forward: dropped.
    let started = Instant::now();
    let o = tcp_request(&c.pod(0).ns, addr([10, 99, 0, 1], 80), Duration::from_millis(300));
    assert_eq!(o, Outcome::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));

    let o = udp_request(&c.external, addr(c.pod(0).ip, 9), T);
    assert!(matches!(o, Outcome::Refused(_)), "UDP to a closed port: {o}");
}

/// UDP servers answer with their name and the source they saw; one client socket keeps its source port.
#[test]
fn udp_round_trip() {
    let c = Cluster::new(2);
    let s = traffic::udp_server(&c.pod(1).ns, "pod1", 5353);
    let client = UdpClient::new(&c.pod(0).ns, addr(c.pod(1).ip, 5353));
    for _ in 0..3 {
        let o = client.request(T);
        assert_eq!(o.by(), "pod1");
        assert_eq!(o.answer().source, addr(c.pod(0).ip, client.local_addr().port()));
    }
    assert_eq!(s.served(), 3);
}

/// A held TCP connection exchanges messages later on; the server counts connections.
#[test]
fn held_connection_exchanges_later() {
    let c = Cluster::new(1);
    let s = traffic::tcp_server(&c.pod(0).ns, "pod0", 8080);
    let mut h = HeldConnection::open(&c.external, addr(c.pod(0).ip, 8080), T);
    assert_eq!(h.greeting.by, "pod0");
    std::thread::sleep(Duration::from_millis(200));
    let a = h.exchange("hello there", T).expect("exchange");
    assert_eq!(a.by, "pod0");
    assert_eq!(a.rest, "hello there");
    assert_eq!(a.source, h.local_addr());
    let outcomes = traffic::tcp_requests(&c.node, addr(c.pod(0).ip, 8080), 5, T);
    assert_eq!(traffic::tally(&outcomes).get("pod0"), Some(&5));
    assert_eq!(s.served(), 6);
}

/// Dropping a cluster deletes its namespaces and kills processes started in them.
#[test]
fn namespaces_are_gone_after_drop() {
    let c = Cluster::new(2);
    let names = c.namespace_names();
    assert_eq!(names.len(), 4);
    for n in &names {
        assert!(netns_exists(n), "{n} should exist");
        assert!(n.starts_with(&format!("sy{}c", std::process::id())), "{n}");
    }
    let mut child = c.node.command("sleep").arg("30").spawn().expect("spawn sleep");
    let pid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !c.node.pids().contains(&pid) {
        assert!(Instant::now() < deadline, "sleep never showed up in the node namespace");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(c);
    for n in &names {
        assert!(!netns_exists(n), "{n} should be gone");
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "sleep should have been killed");
}

/// A sender process sends from its own namespace (the backend sees the pod's address, the kernel's socket
/// table shows its sockets connected where it asked, TCP and UDP), and it sits in its cgroup while it runs.
#[test]
fn sender_process_in_a_cgroup() {
    let c = Cluster::new(2);
    let _tcp = traffic::tcp_server(&c.pod(1).ns, "pod1", 8080);
    let _udp = traffic::udp_server(&c.pod(1).ns, "pod1", 5353);
    let cgroup = TestCgroup::new(&format!("{}-kit", c.prefix));
    let sender = Sender::in_cgroup(&c.pod(0).ns, cgroup.path());
    for (protocol, port) in [("tcp", 8080), ("udp", 5353)] {
        let to = addr(c.pod(1).ip, port);
        let req = Request {
            protocol: protocol.into(),
            bind: None,
            to,
            tries: 3,
            timeout: T,
            path: "/".into(),
            look_up_peers: true,
        };
        let Reply::Tries(tries) = sender.send(&req).expect("the sender reports") else { panic!("not tries") };
        assert_eq!(tries.len(), 3);
        for t in &tries {
            assert_eq!(t.outcome.by(), "pod1", "{protocol}: {t:?}");
            assert_eq!(t.outcome.answer().source.ip(), c.pod(0).ip, "{protocol}: {t:?}");
            assert_eq!(t.kernel_peer, Some(to), "{protocol}: {t:?}");
        }
    }

    // An address nobody answers keeps the sender busy for a second: meanwhile it is in the cgroup and the
    // pod's namespace.
    let slow = Request {
        protocol: "tcp".into(),
        bind: None,
        to: addr([10, 99, 0, 1], 80),
        tries: 1,
        timeout: Duration::from_secs(1),
        path: "/".into(),
        look_up_peers: false,
    };
    std::thread::scope(|s| {
        let running = s.spawn(|| sender.send(&slow));
        // It joins the cgroup first, then the namespace.
        let deadline = Instant::now() + Duration::from_millis(900);
        while !cgroup.pids().first().is_some_and(|pid| c.pod(0).ns.pids().contains(pid)) {
            assert!(Instant::now() < deadline, "the sender never showed up in {:?} and the pod", cgroup.path());
            std::thread::sleep(Duration::from_millis(5));
        }
        let Reply::Tries(tries) = running.join().expect("join").expect("the sender reports") else { panic!() };
        assert_eq!(tries[0].outcome, Outcome::Timeout);
    });
    assert!(cgroup.pids().is_empty(), "the sender has exited");
}

/// Dropping a test cgroup kills the processes still in it and removes it, also when the test panics.
#[test]
fn cgroups_are_gone_after_drop() {
    let name = format!("{}-kit", unique_prefix());
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("spawn sleep");
    let mut path = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cgroup = TestCgroup::new(&name);
        path = Some(cgroup.path().to_path_buf());
        std::fs::write(cgroup.procs(), sleeper.id().to_string()).expect("move sleep into the cgroup");
        assert_eq!(cgroup.pids(), vec![sleeper.id() as i32]);
        panic!("a test failing while it holds a cgroup");
    }));
    assert!(result.is_err());
    let path = path.expect("the cgroup was made");
    assert!(!path.exists(), "{path:?} should be gone");
    assert!(!sleeper.wait().expect("wait").success(), "sleep should have been killed");
}

/// Namespace names are unique within the process, and each namespace is isolated (no shared addresses).
#[test]
fn namespaces_are_isolated() {
    let a = Netns::new(&switchyard_tests::netns::unique_prefix());
    let b = Netns::new(&switchyard_tests::netns::unique_prefix());
    assert_ne!(a.name(), b.name());
    let s = traffic::tcp_server(&a, "a", 7000);
    assert_eq!(tcp_request(&a, addr([127, 0, 0, 1], 7000), T).by(), "a");
    assert!(matches!(tcp_request(&b, addr([127, 0, 0, 1], 7000), T), Outcome::Refused(_)));
    drop(s);
}

/// The manifest builders produce the YAML shapes the daemon reads.
#[test]
fn manifest_builders() {
    let svc =
        Service::new("web", "10.96.0.10").tcp("http", 80, 8080).node_port(30080).scheduler("rr").client_ip_affinity(2);
    let v: serde_json::Value = serde_yaml::from_str(&svc.yaml()).expect("service YAML");
    assert_eq!(v["spec"]["type"], "NodePort");
    assert_eq!(v["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(v["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 2);
    assert_eq!(v["metadata"]["annotations"]["switchyard.io/scheduler"], "rr");
    assert_eq!(svc.addr(), addr([10, 96, 0, 10], 80));

    let eps = EndpointSlice::new("web")
        .tcp("http", 8080)
        .ready(["10.244.0.10"])
        .endpoint(Endpoint::terminating("10.244.0.11", true));
    let v: serde_json::Value = serde_yaml::from_str(&eps.yaml()).expect("slice YAML");
    assert_eq!(v["metadata"]["labels"]["kubernetes.io/service-name"], "web");
    assert_eq!(v["endpoints"][1]["conditions"]["terminating"], true);
    assert_eq!(v["endpoints"][1]["conditions"]["ready"], false);

    let file = documents(&[svc.yaml(), eps.yaml()]);
    let docs: Vec<serde_json::Value> =
        serde_yaml::Deserializer::from_str(&file).map(|d| serde::Deserialize::deserialize(d).expect("doc")).collect();
    assert_eq!(docs.len(), 2);
}
