//! Service behaviours with real packets that a static scenario file cannot express: SCTP proven with
//! hand-built packets on raw sockets, connections held across a change of endpoint conditions, health that
//! follows the Node object and the endpoints, and bad objects arriving next to a live Service. Needs root and
//! `cargo build -p switchyard` first. Each test has its own namespaces, so they run in parallel.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_tests::daemon::{
    self, backend_counter, backends, http_get, Daemon, Endpoint, EndpointSlice, Node, Service,
};
use switchyard_tests::netns::{Cluster, EXTERNAL_IP, NODE_IP};
use switchyard_tests::traffic::{self, tally, tcp_request, tcp_requests, HeldConnection, Outcome, SctpSniffer};

/// Client timeout for one attempt that should be answered.
const T: Duration = Duration::from_secs(1);
/// Client timeout for one attempt that should be dropped.
const DROP: Duration = Duration::from_millis(400);
/// How long the daemon gets to program a change.
const SYNC: Duration = Duration::from_secs(10);
const TARGET: u16 = 8080;

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("serialize YAML")
}

fn wait_backends(d: &mut Daemon, name: &str, n: usize) -> Value {
    d.wait_until(&format!("service {name} has {n} backends"), SYNC, |v| backends(v, name).len() == n)
}

/// Polls `f` every 50 ms until it holds; panics with `what` after `timeout`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn all_answered(outcomes: &[Outcome]) {
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_answered(), "attempt {i}: {o} (all: {:?})", tally(outcomes));
    }
}

/// SCTP through a ClusterIP and a NodePort, proven with hand-built packets (this kernel has no SCTP sockets,
/// but conntrack and NAT handle SCTP): an INIT sent on a raw socket to the Service address arrives in the
/// backend's namespace addressed to the backend and its target port, with a valid checksum, from the pod's
/// own address for ClusterIP traffic and from a node address for the external client's NodePort traffic.
#[test]
fn sctp_is_dnatted_to_the_backend() {
    let c = Cluster::new(3);
    let mut d = Daemon::start(&c.node);
    let svc = Service::new("diameter", "10.96.0.30").port("diameter", "SCTP", 3868, 3869).node_port(30868);
    let eps = EndpointSlice::new("diameter").port("diameter", "SCTP", 3869).ready([c.pod(1).ip]);
    d.write_documents("diameter.yaml", &[svc.yaml(), eps.yaml()]);
    let dump = wait_backends(&mut d, "diameter", 1);
    assert_eq!(daemon::find_service(&dump, "default", "diameter").expect("diameter")["protocol"], "SCTP");

    let backend = traffic::SctpSniffer::open(&c.pod(1).ns);
    let bystander = SctpSniffer::open(&c.pod(2).ns);
    let want_dst = SocketAddrV4::new(c.pod(1).ip, 3869);

    // Pod -> ClusterIP: DNAT only.
    traffic::send_sctp_init(&c.pod(0).ns, SocketAddrV4::new([10, 96, 0, 30].into(), 3868), 40001, 0x0c1a_0001);
    let seen = backend.wait_for(0x0c1a_0001, Duration::from_secs(2)).unwrap_or_else(|| {
        panic!("the SCTP INIT to the ClusterIP never reached the backend; ruleset:\n{}", c.node.nft_ruleset())
    });
    assert_eq!(seen.dst, want_dst, "destination not rewritten to the backend: {seen:?}");
    assert_eq!(seen.src, SocketAddrV4::new(c.pod(0).ip, 40001), "pod traffic must keep its source: {seen:?}");
    assert!(seen.checksum_ok, "NAT left a wrong SCTP checksum: {seen:?}");

    // External -> NodePort: DNAT and masquerade.
    traffic::send_sctp_init(&c.external, SocketAddrV4::new(NODE_IP, 30868), 40002, 0x0c1a_0002);
    let seen = backend.wait_for(0x0c1a_0002, Duration::from_secs(2)).unwrap_or_else(|| {
        panic!("the SCTP INIT to the NodePort never reached the backend; ruleset:\n{}", c.node.nft_ruleset())
    });
    assert_eq!(seen.dst, want_dst, "destination not rewritten to the backend: {seen:?}");
    let node_addrs: Vec<IpAddr> = c.node_addresses().into_iter().map(IpAddr::from).collect();
    assert!(node_addrs.contains(&IpAddr::from(*seen.src.ip())), "NodePort traffic must be masqueraded: {seen:?}");
    assert!(seen.checksum_ok, "NAT left a wrong SCTP checksum: {seen:?}");

    // Neither went anywhere else.
    assert_eq!(bystander.wait_for(0x0c1a_0001, Duration::from_millis(100)), None);
    assert_eq!(bystander.wait_for(0x0c1a_0002, Duration::from_millis(100)), None);
}

/// An established connection to an endpoint that turns terminating (ready false, serving true, terminating
/// true) while another endpoint is ready keeps working, but the terminating endpoint gets no new connections.
#[test]
fn terminating_endpoint_keeps_its_connection_but_gets_no_new_ones() {
    let c = Cluster::new(3);
    let _s: Vec<_> = [1, 2].iter().map(|&i| traffic::tcp_server(&c.pod(i).ns, &c.pod(i).name, TARGET)).collect();
    let mut d = Daemon::start(&c.node);
    let svc = Service::new("web", "10.96.0.10").tcp("http", 80, TARGET as u32).scheduler("rr");
    let vip = svc.addr();
    let slice = |eps: Vec<Endpoint>| {
        eps.into_iter().fold(EndpointSlice::new("web").tcp("http", TARGET as u32), EndpointSlice::endpoint)
    };
    d.write_documents(
        "web.yaml",
        &[svc.yaml(), slice(vec![Endpoint::ready(c.pod(1).ip), Endpoint::ready(c.pod(2).ip)]).yaml()],
    );
    wait_backends(&mut d, "web", 2);

    let mut held = HeldConnection::open(&c.pod(0).ns, vip, T);
    let draining = held.greeting.by.clone();
    let (draining_ip, other, other_ip) =
        if draining == "pod1" { (c.pod(1).ip, "pod2", c.pod(2).ip) } else { (c.pod(2).ip, "pod1", c.pod(1).ip) };

    let eps = vec![Endpoint::terminating(draining_ip, true), Endpoint::ready(other_ip)];
    d.write_documents("web.yaml", &[svc.yaml(), slice(eps).yaml()]);
    let want = vec![format!("{other_ip}:{TARGET}")];
    d.wait_until("only the ready endpoint takes new connections", SYNC, |v| backends(v, "web") == want);

    let a = held.exchange("still there?", T).expect("the held connection to the terminating endpoint broke");
    assert_eq!((a.by.as_str(), a.rest.as_str()), (draining.as_str(), "still there?"));
    let outcomes = tcp_requests(&c.pod(0).ns, vip, 10, T);
    all_answered(&outcomes);
    assert_eq!(tally(&outcomes).keys().collect::<Vec<_>>(), vec![other], "new connections went to {draining}");
    std::thread::sleep(Duration::from_millis(300));
    let a = held.exchange("and later?", T).expect("the held connection broke later");
    assert_eq!(a.by, draining);
}

/// `/healthz` (probed from outside, as a load balancer does) answers 503 with nodeEligible false while the
/// Node has a deletionTimestamp or a `ToBeDeletedByClusterAutoscaler` taint, and 200 again once it has
/// neither; Services keep being served all along.
#[test]
fn healthz_fails_while_the_node_is_being_deleted() {
    let c = Cluster::new(2);
    let _s = traffic::tcp_server(&c.pod(1).ns, "pod1", TARGET);
    let mut d = Daemon::start(&c.node);
    let svc = Service::new("web", "10.96.0.10").tcp("http", 80, TARGET as u32);
    d.write_documents(
        "web.yaml",
        &[svc.yaml(), EndpointSlice::new("web").tcp("http", TARGET as u32).ready([c.pod(1).ip]).yaml()],
    );
    wait_backends(&mut d, "web", 1);
    let healthz = SocketAddr::new(NODE_IP.into(), 10256);
    let get = || c.external.run(|| http_get(healthz, "/healthz", T));
    let plain = Node::new("node").internal_ip(NODE_IP);

    for (why, node) in [
        ("deletionTimestamp", plain.clone().deleting()),
        ("autoscaler taint", plain.clone().taint("ToBeDeletedByClusterAutoscaler")),
    ] {
        assert_eq!(get().map(|(s, _)| s), Some(200), "healthy before the {why}");
        d.write_documents("node.yaml", &[node.yaml()]);
        eventually(&format!("/healthz answers 503 after the {why}"), SYNC, || get().is_some_and(|(s, _)| s == 503));
        let (_, body) = get().expect("an answer");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/healthz body {body:?}: {e}"));
        assert_eq!(v["nodeEligible"], false, "{body}");
        assert!(tcp_request(&c.pod(0).ns, svc.addr(), T).is_answered(), "the Service while the node is ineligible");

        d.write_documents("node.yaml", &[plain.yaml()]);
        eventually(&format!("/healthz answers 200 once the {why} is gone"), SYNC, || {
            get().is_some_and(|(s, _)| s == 200)
        });
    }
    // An unrelated taint does not count.
    d.write_documents("node.yaml", &[plain.clone().taint("example.com/other").yaml()]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(get().map(|(s, _)| s), Some(200), "an unrelated taint made /healthz fail");
    assert!(d.is_running());
}

/// An externalTrafficPolicy Local LoadBalancer Service follows its endpoint across nodes: with the endpoint
/// on this node, external traffic is answered (source kept) and the healthCheckNodePort answers 200 with
/// localEndpoints 1; once the EndpointSlice puts it on another node, external traffic is dropped (a timeout),
/// pods still reach it, and the health check answers 503 with localEndpoints 0; moved back, all recovers.
#[test]
fn etp_local_follows_the_endpoint_across_nodes() {
    let c = Cluster::new(2);
    let _s = traffic::tcp_server(&c.pod(1).ns, "pod1", TARGET);
    let d = Daemon::start(&c.node);
    let svc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "10.96.0.40", "clusterIPs": ["10.96.0.40"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32040,
            "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": TARGET, "nodePort": 30040}],
        },
    });
    let slice = |node: &str| {
        EndpointSlice::new("web")
            .tcp("http", TARGET as u32)
            .endpoint(Endpoint::ready(c.pod(1).ip).on_node(Some(node)))
            .yaml()
    };
    let nodeport = SocketAddr::new(NODE_IP.into(), 30040);
    let hc = SocketAddr::new(NODE_IP.into(), 32040);
    let health = || c.external.run(|| http_get(hc, "/", T));

    for round in 0..2 {
        d.write_documents("web.yaml", &[yaml(&svc), slice("node")]);
        eventually("the health check answers 200", SYNC, || health().is_some_and(|(s, _)| s == 200));
        let (_, body) = health().expect("an answer");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("health check body {body:?}: {e}"));
        assert_eq!(v["localEndpoints"], 1, "{body}");
        assert_eq!(v["service"], json!({"namespace": "default", "name": "web"}), "{body}");
        let o = tcp_request(&c.external, nodeport, T);
        assert_eq!(o.by(), "pod1", "round {round}: {o}");
        assert_eq!(o.answer().source.ip(), IpAddr::from(EXTERNAL_IP), "round {round}: source not kept");

        d.write_documents("web.yaml", &[yaml(&svc), slice("elsewhere")]);
        eventually("the health check answers 503", SYNC, || health().is_some_and(|(s, _)| s == 503));
        let (_, body) = health().expect("an answer");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("health check body {body:?}: {e}"));
        assert_eq!((v["localEndpoints"].clone(), v["serviceProxyHealthy"].clone()), (json!(0), json!(true)), "{body}");
        assert_eq!(tcp_request(&c.external, nodeport, DROP), Outcome::Timeout, "round {round}: external traffic");
        assert_eq!(tcp_request(&c.pod(0).ns, nodeport, T).by(), "pod1", "round {round}: pod traffic");
    }
}

/// Bad objects written next to a live Service (an invalid clusterIP, a port out of range, EndpointSlices
/// naming ports their Service lacks, an invalid endpoint address, the same endpoint in two slices) are
/// skipped with a log line naming each object and reason, the daemon stays up and healthy, and the good
/// Service's rules are left alone: its backend counters keep counting from where they were (no rewrite).
#[test]
fn bad_objects_leave_a_good_service_alone() {
    let c = Cluster::new(3);
    let _s: Vec<_> = [1, 2].iter().map(|&i| traffic::tcp_server(&c.pod(i).ns, &c.pod(i).name, TARGET)).collect();
    let mut d = Daemon::start(&c.node);
    let good = Service::new("good", "10.96.0.10").tcp("http", 80, TARGET as u32);
    let good_slice = EndpointSlice::new("good").tcp("http", TARGET as u32).ready([c.pod(1).ip, c.pod(2).ip]);
    d.write_documents("good.yaml", &[good.yaml(), good_slice.yaml()]);
    wait_backends(&mut d, "good", 2);
    let connections = |v: &Value| -> u64 {
        [c.pod(1).ip, c.pod(2).ip]
            .iter()
            .map(|ip| backend_counter(v, "good", &ip.to_string(), "connections").unwrap_or(0))
            .sum()
    };
    all_answered(&tcp_requests(&c.pod(0).ns, good.addr(), 10, T));
    let before = d.wait_until("10 connections counted", SYNC, |v| connections(v) >= 10);
    let before = connections(&before);
    assert_eq!(before, 10);

    let t = TARGET as u32;
    let bad = [
        Service::new("bad-ip", "10.96.0.999").tcp("http", 80, t).yaml(),
        EndpointSlice::new("bad-ip").tcp("http", t).ready([c.pod(1).ip]).yaml(),
        Service::new("bad-port", "10.96.0.20").tcp("http", 70000, t).yaml(),
        EndpointSlice::new("bad-port").tcp("http", t).ready([c.pod(1).ip]).yaml(),
        Service::new("unknown-port", "10.96.0.21").tcp("http", 80, t).yaml(),
        EndpointSlice::new("unknown-port").tcp("web", t).ready([c.pod(1).ip]).yaml(),
        Service::new("bad-endpoint", "10.96.0.22").tcp("http", 80, t).yaml(),
        EndpointSlice::new("bad-endpoint")
            .tcp("http", t)
            .ready(["10.244.0.999".to_string(), c.pod(2).ip.to_string()])
            .yaml(),
        Service::new("dup", "10.96.0.23").tcp("http", 80, t).yaml(),
        EndpointSlice::new("dup").named("dup-1").tcp("http", t).ready([c.pod(1).ip]).yaml(),
        EndpointSlice::new("dup").named("dup-2").tcp("http", t).ready([c.pod(1).ip, c.pod(2).ip]).yaml(),
    ];
    d.write_documents("bad.yaml", &bad);
    let want = [
        ("default/bad-ip", "InvalidClusterIP"),
        ("default/bad-port", "InvalidPort"),
        ("default/bad-endpoint-1", "InvalidEndpointAddress"),
        ("default/dup-2", "DuplicateEndpoint"),
    ];
    let logged = |d: &Daemon, (object, reason): (&str, &str)| {
        d.logs().lines().any(|l| l.contains(&format!("object={object} ")) && l.contains(reason))
    };
    eventually("every bad object is logged", SYNC, || want.iter().all(|w| logged(&d, *w)));
    // The others are programmed around their bad parts.
    wait_backends(&mut d, "dup", 2);
    wait_backends(&mut d, "bad-endpoint", 1);
    assert!(d.is_running(), "the daemon died");
    assert!(d.healthz_ok(), "/healthz is not 200");

    all_answered(&tcp_requests(&c.pod(0).ns, good.addr(), 10, T));
    let after = d.wait_until("20 connections counted", SYNC, |v| connections(v) >= before + 10);
    assert_eq!(connections(&after), before + 10, "the good Service's counters did not keep counting");
    assert_eq!(backends(&after, "good").len(), 2);
}

/// With the default `--nodeport-addresses primary`, the NodePort follows the Node's InternalIP: when the Node
/// object names another of the node's addresses (the pod gateway), NodePort traffic is served there and
/// refused on the old address; named back, the old address serves again.
#[test]
fn nodeport_follows_the_node_internal_ip() {
    let c = Cluster::new(2);
    let _s = traffic::tcp_server(&c.pod(1).ns, "pod1", TARGET);
    let mut d = Daemon::start(&c.node);
    let svc = Service::new("web", "10.96.0.10").tcp("http", 80, TARGET as u32).node_port(30080);
    d.write_documents(
        "web.yaml",
        &[svc.yaml(), EndpointSlice::new("web").tcp("http", TARGET as u32).ready([c.pod(1).ip]).yaml()],
    );
    wait_backends(&mut d, "web", 1);
    let on_node_ip = SocketAddr::new(NODE_IP.into(), 30080);
    let on_gateway = SocketAddr::new(switchyard_tests::netns::NODE_POD_GW.into(), 30080);
    let refused = |o: &Outcome| matches!(o, Outcome::Refused(_));
    assert_eq!(tcp_request(&c.pod(0).ns, on_node_ip, T).by(), "pod1");
    assert!(refused(&tcp_request(&c.pod(0).ns, on_gateway, T)), "the gateway is not the InternalIP yet");

    d.write_documents("node.yaml", &[Node::new("node").internal_ip(switchyard_tests::netns::NODE_POD_GW).yaml()]);
    eventually("the NodePort moves to the new InternalIP", SYNC, || {
        tcp_request(&c.pod(0).ns, on_gateway, T).is_answered()
    });
    let o = tcp_request(&c.pod(0).ns, on_node_ip, T);
    assert!(refused(&o), "the old InternalIP still serves the NodePort: {o}");

    d.write_documents("node.yaml", &[Node::new("node").internal_ip(NODE_IP).yaml()]);
    eventually("the NodePort moves back", SYNC, || tcp_request(&c.external, on_node_ip, T).is_answered());
    let o = tcp_request(&c.pod(0).ns, on_gateway, T);
    assert!(refused(&o), "the gateway still serves the NodePort: {o}");
}

/// With `--nodeport-addresses 10.244.0.0/16`, the NodePort on the matching interface address (the pod
/// gateway) is served as soon as `/healthz` reports ready, at the first start and after every restart, and
/// a prober connecting every 10 ms across 20 restarts is never refused.
#[test]
fn nodeport_cidr_addresses_are_served_once_ready() {
    let c = Cluster::new(3);
    let _s = traffic::tcp_server(&c.pod(1).ns, "pod1", TARGET);
    let svc = Service::new("web", "10.96.0.10").tcp("http", 80, TARGET as u32).node_port(30080);
    let eps = EndpointSlice::new("web").tcp("http", TARGET as u32).ready([c.pod(1).ip]);
    let files = [("web.yaml", daemon::documents(&[svc.yaml(), eps.yaml()]))];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let opts = daemon::Options {
        extra_args: vec!["--nodeport-addresses".into(), "10.244.0.0/16".into()],
        ..daemon::Options::default()
    };
    let mut d = Daemon::start_with_manifests(&c.node, opts, &files);
    let gateway = SocketAddr::new(switchyard_tests::netns::NODE_POD_GW.into(), 30080);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        c.pod(2).ns.spawn(move || {
            let mut outcomes = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                outcomes.push(traffic::tcp_request_here(gateway, T));
                std::thread::sleep(Duration::from_millis(10));
            }
            outcomes
        })
    };
    let mut right_after_ready = vec![tcp_request(&c.pod(0).ns, gateway, T)];
    for _ in 0..20 {
        d.restart();
        right_after_ready.push(tcp_request(&c.pod(0).ns, gateway, T));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = prober.join().expect("prober");
    let ready = tally(&right_after_ready);
    let across = tally(&probes);
    assert!(
        ready.keys().eq(["pod1"]) && across.keys().eq(["pod1"]),
        "right after /healthz was ready: {ready:?}; a prober across the restarts: {across:?}"
    );
}
