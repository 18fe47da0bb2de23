//! The nftables dataplane with real packets: the real `switchyard` daemon runs in a node namespace of its
//! own, backends are servers in pod namespaces, clients connect from pods, the node and an external client.
//! Needs root and `cargo build -p switchyard` first. Each test has its own namespaces, so they run in parallel.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_tests::daemon::{self, backend_counter, backends, find_service, Daemon, EndpointSlice, Service};
use switchyard_tests::netns::{Cluster, EXTERNAL_IP, NODE_IP};
use switchyard_tests::traffic::{self, tally, tcp_request, tcp_requests, HeldConnection, Outcome, Server, UdpClient};

/// Client timeout for one attempt.
const T: Duration = Duration::from_secs(1);
/// How long the daemon gets to program a change.
const SYNC: Duration = Duration::from_secs(10);
const VIP: [u8; 4] = [10, 96, 0, 10];
const TARGET: u16 = 8080;

fn vip(port: u16) -> SocketAddr {
    SocketAddr::from((VIP, port))
}

/// TCP servers on port 8080 in the given pods, each named after its pod.
fn tcp_servers(c: &Cluster, pods: &[usize]) -> Vec<Server> {
    pods.iter().map(|&i| traffic::tcp_server(&c.pod(i).ns, &c.pod(i).name, TARGET)).collect()
}

/// The EndpointSlice of Service `name` with the given pods ready on TCP port 8080 (port name `http`).
fn slice(c: &Cluster, name: &str, pods: &[usize]) -> EndpointSlice {
    EndpointSlice::new(name).tcp("http", TARGET as u32).ready(pods.iter().map(|&i| c.pod(i).ip))
}

/// A ClusterIP Service `web` at 10.96.0.10:80 -> 8080, port name `http`.
fn web() -> Service {
    Service::new("web", "10.96.0.10").tcp("http", 80, TARGET as u32)
}

/// Writes `web.yaml` with the Service and its slice, and waits until the dump shows `n` backends for it.
fn apply(d: &mut Daemon, svc: &Service, eps: &EndpointSlice, n: usize) -> Value {
    d.write_documents(&format!("{}.yaml", svc.name), &[svc.yaml(), eps.yaml()]);
    wait_backends(d, &svc.name, n)
}

fn wait_backends(d: &mut Daemon, name: &str, n: usize) -> Value {
    d.wait_until(&format!("service {name} has {n} backends"), SYNC, |v| backends(v, name).len() == n)
}

fn all_answered(outcomes: &[Outcome]) {
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.is_answered(), "attempt {i}: {o} (all: {:?})", tally(outcomes));
    }
}

/// A ClusterIP Service over TCP answers a pod's connections from its backends, and the backend sees the
/// pod's own address (pod traffic inside --cluster-cidr is not masqueraded).
#[test]
fn clusterip_tcp_from_pod() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let dump = apply(&mut d, &web(), &slice(&c, "web", &[1, 2]), 2);
    let svc = find_service(&dump, "default", "web").expect("web in the dump");
    assert_eq!(svc["protocol"], "TCP");
    assert_eq!(svc["port"], "http");
    assert!(
        svc["frontends"]
            .as_array()
            .expect("frontends")
            .iter()
            .any(|f| f["kind"] == "ClusterIP" && f["ip"] == "10.96.0.10" && f["port"] == 80),
        "no ClusterIP frontend 10.96.0.10:80 in {svc}"
    );

    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 10, T);
    all_answered(&outcomes);
    for o in &outcomes {
        assert!(["pod1", "pod2"].contains(&o.by()), "{o}");
        assert_eq!(o.answer().source.ip(), IpAddr::from(c.pod(0).ip), "pod traffic must not be masqueraded");
    }
}

/// A ClusterIP Service over TCP answers connections from the node itself; the backend sees a node address.
#[test]
fn clusterip_tcp_from_node() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web(), &slice(&c, "web", &[1, 2]), 2);

    let outcomes = tcp_requests(&c.node, vip(80), 10, T);
    all_answered(&outcomes);
    let node_addrs: Vec<IpAddr> = c.node_addresses().into_iter().map(IpAddr::from).collect();
    for o in &outcomes {
        assert!(["pod1", "pod2"].contains(&o.by()), "{o}");
        assert!(node_addrs.contains(&o.answer().source.ip()), "source {} is not a node address", o.answer().source);
    }
}

/// A ClusterIP Service over UDP answers datagrams, from one kept socket and from fresh ones.
#[test]
fn clusterip_udp() {
    let c = Cluster::new(3);
    let _s1 = traffic::udp_server(&c.pod(1).ns, "pod1", 5353);
    let _s2 = traffic::udp_server(&c.pod(2).ns, "pod2", 5353);
    let mut d = Daemon::start(&c.node);
    let svc = Service::new("dns", "10.96.0.53").udp("dns", 53, 5353);
    let eps = EndpointSlice::new("dns").udp("dns", 5353).ready([c.pod(1).ip, c.pod(2).ip]);
    let dump = apply(&mut d, &svc, &eps, 2);
    assert_eq!(find_service(&dump, "default", "dns").expect("dns")["protocol"], "UDP");

    let addr = SocketAddr::from(([10, 96, 0, 53], 53));
    let client = UdpClient::new(&c.pod(0).ns, addr);
    let first = client.request(T);
    for _ in 0..5 {
        let o = client.request(T);
        // One socket is one conntrack entry: the same backend every time.
        assert_eq!(o.by(), first.by(), "{o}");
        assert_eq!(o.answer().source, SocketAddr::new(c.pod(0).ip.into(), client.local_addr().port()));
    }
    let fresh: Vec<Outcome> = c.pod(0).ns.run(|| (0..10).map(|_| traffic::udp_request_here(addr, T)).collect());
    all_answered(&fresh);
    let node = traffic::udp_request(&c.node, addr, T);
    assert!(node.is_answered(), "from the node: {node}");
}

/// A NodePort Service answers the external client on the node's address, and the backend sees a node
/// address (the external client is masqueraded).
#[test]
fn nodeport_from_external_is_masqueraded() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let svc = web().node_port(30080);
    let dump = apply(&mut d, &svc, &slice(&c, "web", &[1, 2]), 2);
    let fes = find_service(&dump, "default", "web").expect("web")["frontends"].clone();
    assert!(
        fes.as_array().expect("frontends").iter().any(|f| f["kind"] == "NodePort" && f["port"] == 30080),
        "no NodePort frontend in {fes}"
    );

    let outcomes = tcp_requests(&c.external, SocketAddr::new(NODE_IP.into(), 30080), 10, T);
    all_answered(&outcomes);
    let node_addrs: Vec<IpAddr> = c.node_addresses().into_iter().map(IpAddr::from).collect();
    for o in &outcomes {
        let src = o.answer().source.ip();
        assert_ne!(src, IpAddr::from(EXTERNAL_IP), "NodePort traffic must be masqueraded");
        assert!(node_addrs.contains(&src), "source {src} is not a node address");
    }
    // With kube-proxy's default `--nodeport-addresses=primary`, the node's primary address (its Node's
    // InternalIP) takes NodePort traffic, from the node itself and from pods; other local addresses (the
    // pod-side gateway) and loopback do not.
    let from_node = tcp_request(&c.node, SocketAddr::new(NODE_IP.into(), 30080), T);
    assert!(from_node.is_answered(), "node -> own address NodePort: {from_node}");
    let from_pod = tcp_request(&c.pod(0).ns, SocketAddr::new(NODE_IP.into(), 30080), T);
    assert!(from_pod.is_answered(), "pod -> node's primary address NodePort: {from_pod}");
    let gw = SocketAddr::new(switchyard_tests::netns::NODE_POD_GW.into(), 30080);
    let on_gw = tcp_request(&c.pod(0).ns, gw, T);
    assert!(matches!(on_gw, Outcome::Refused(_)), "NodePort on a non-primary address must not be served: {on_gw}");
    let lo = tcp_request(&c.node, SocketAddr::from(([127, 0, 0, 1], 30080)), T);
    assert!(matches!(lo, Outcome::Refused(_)), "NodePort on loopback must not be served: {lo}");
    // The ClusterIP of the same Service still works from a pod.
    assert!(tcp_request(&c.pod(0).ns, vip(80), T).is_answered());
}

/// With the rr scheduler, successive connections alternate between the two backends.
#[test]
fn rr_alternates() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let dump = apply(&mut d, &web().scheduler("rr"), &slice(&c, "web", &[1, 2]), 2);
    assert_eq!(find_service(&dump, "default", "web").expect("web")["scheduler"], "rr");

    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 12, T);
    all_answered(&outcomes);
    let seq: Vec<&str> = outcomes.iter().map(|o| o.by()).collect();
    for w in seq.windows(2) {
        assert_ne!(w[0], w[1], "rr must alternate: {seq:?}");
    }
    assert_eq!(tally(&outcomes).values().copied().collect::<Vec<_>>(), vec![6, 6], "{seq:?}");
}

/// With the random scheduler, 60 connections reach each of 3 backends.
#[test]
fn random_reaches_every_backend() {
    let c = Cluster::new(4);
    let _s = tcp_servers(&c, &[1, 2, 3]);
    let mut d = Daemon::start(&c.node);
    let dump = apply(&mut d, &web().scheduler("random"), &slice(&c, "web", &[1, 2, 3]), 3);
    assert_eq!(find_service(&dump, "default", "web").expect("web")["scheduler"], "random");

    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 60, T);
    all_answered(&outcomes);
    let t = tally(&outcomes);
    assert_eq!(t.keys().cloned().collect::<Vec<_>>(), vec!["pod1", "pod2", "pod3"], "{t:?}");
}

/// With the sh (source hash) scheduler, every connection from one source goes to one backend.
#[test]
fn sh_keeps_one_source_on_one_backend() {
    let c = Cluster::new(6);
    let _s = tcp_servers(&c, &[0, 1, 2]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web().scheduler("sh"), &slice(&c, "web", &[0, 1, 2]), 3);

    for client in [3, 4, 5] {
        let outcomes = tcp_requests(&c.pod(client).ns, vip(80), 10, T);
        all_answered(&outcomes);
        let t = tally(&outcomes);
        assert_eq!(t.len(), 1, "pod{client} reached several backends: {t:?}");
    }
    let node = tally(&tcp_requests(&c.node, vip(80), 10, T));
    assert_eq!(node.len(), 1, "the node reached several backends: {node:?}");
}

/// With the dh (destination hash) scheduler, every connection to one Service address goes to one backend,
/// whatever its source.
#[test]
fn dh_keeps_one_destination_on_one_backend() {
    let c = Cluster::new(6);
    let _s = tcp_servers(&c, &[0, 1, 2]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web().scheduler("dh"), &slice(&c, "web", &[0, 1, 2]), 3);

    let mut all = Vec::new();
    for client in [3, 4, 5] {
        all.extend(tcp_requests(&c.pod(client).ns, vip(80), 5, T));
    }
    all.extend(tcp_requests(&c.node, vip(80), 5, T));
    all.extend(tcp_requests(&c.external, vip(80), 5, T));
    all_answered(&all);
    let t = tally(&all);
    assert_eq!(t.len(), 1, "one destination reached several backends: {t:?}");
}

/// ClientIP affinity keeps a client on one backend, then expires after its timeout: with rr and a 2 s
/// timeout, the next connection after expiry goes to the other backend.
#[test]
fn client_ip_affinity_holds_then_expires() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let dump = apply(&mut d, &web().scheduler("rr").client_ip_affinity(2), &slice(&c, "web", &[1, 2]), 2);
    assert_eq!(find_service(&dump, "default", "web").expect("web")["affinityTimeoutSeconds"], 2);

    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 20, T);
    all_answered(&outcomes);
    let t = tally(&outcomes);
    assert_eq!(t.len(), 1, "affinity must hold one backend: {t:?}");
    let first = outcomes[0].by().to_string();

    std::thread::sleep(Duration::from_millis(3500));
    let after = tcp_request(&c.pod(0).ns, vip(80), T);
    assert!(after.is_answered(), "{after}");
    assert_ne!(after.by(), first, "affinity should have expired after 2 s");
    // And the new choice holds in turn.
    let again = tally(&tcp_requests(&c.pod(0).ns, vip(80), 5, T));
    assert_eq!(again.keys().collect::<Vec<_>>(), vec![after.by()], "{again:?}");
}

/// A Service without ready endpoints refuses connections at once (ECONNREFUSED, well under 1 s), on its
/// ClusterIP (TCP and UDP) and on its NodePort.
#[test]
fn no_endpoints_refuses_at_once() {
    let c = Cluster::new(2);
    let _s = tcp_servers(&c, &[1]);
    let _u = traffic::udp_server(&c.pod(1).ns, "pod1", 5353);
    let mut d = Daemon::start(&c.node);
    let svc = web().node_port(30080).udp("dns", 53, 5353);
    let eps = EndpointSlice::new("web")
        .tcp("http", TARGET as u32)
        .udp("dns", 5353)
        .endpoint(daemon::Endpoint::not_ready(c.pod(1).ip));
    d.write_documents("web.yaml", &[svc.yaml(), eps.yaml()]);
    d.wait_until("web is programmed without backends", SYNC, |v| {
        let ports: Vec<&Value> =
            v["services"].as_array().map(|a| a.iter().filter(|s| s["name"] == "web").collect()).unwrap_or_default();
        ports.len() == 2 && ports.iter().all(|p| p["backends"].as_array().is_some_and(|b| b.is_empty()))
    });

    let check = |o: Outcome, from: &str| match o {
        Outcome::Refused(after) => assert!(after < Duration::from_millis(500), "{from}: refused only after {after:?}"),
        other => panic!("{from}: expected a refusal at once, got {other}"),
    };
    check(tcp_request(&c.pod(0).ns, vip(80), Duration::from_secs(3)), "pod0 -> ClusterIP");
    check(tcp_request(&c.node, vip(80), Duration::from_secs(3)), "node -> ClusterIP");
    check(
        tcp_request(&c.external, SocketAddr::new(NODE_IP.into(), 30080), Duration::from_secs(3)),
        "external -> NodePort",
    );
    check(traffic::udp_request(&c.pod(0).ns, vip(53), Duration::from_secs(3)), "pod0 -> ClusterIP over UDP");
}

/// An endpoint removed from its EndpointSlice gets no new connections once the dump shows it gone.
#[test]
fn removed_endpoint_gets_no_new_connections() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let svc = web().scheduler("rr");
    apply(&mut d, &svc, &slice(&c, "web", &[1, 2]), 2);
    let before = tally(&tcp_requests(&c.pod(0).ns, vip(80), 4, T));
    assert_eq!(before.len(), 2, "both backends first: {before:?}");

    let dump = apply(&mut d, &svc, &slice(&c, "web", &[1]), 1);
    assert_eq!(backends(&dump, "web"), vec![format!("{}:{TARGET}", c.pod(1).ip)]);
    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 20, T);
    all_answered(&outcomes);
    assert_eq!(tally(&outcomes).keys().collect::<Vec<_>>(), vec!["pod1"]);
}

/// An established TCP connection through a ClusterIP keeps working while the daemon is stopped (SIGTERM)
/// and after it starts again; new connections keep working all along (a prober connects every 20 ms), and
/// the restarted daemon adopts the rules without flushing them (backend counters do not start over).
#[test]
fn restart_keeps_established_connection() {
    let c = Cluster::new(4);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web().scheduler("rr"), &slice(&c, "web", &[1, 2]), 2);

    let mut held = HeldConnection::open(&c.pod(0).ns, vip(80), T);
    let backend = held.greeting.by.clone();
    assert_eq!(held.exchange("before", T).expect("before the restart").by, backend);
    all_answered(&tcp_requests(&c.pod(0).ns, vip(80), 4, T));
    let counted = |v: &Value| -> u64 {
        [c.pod(1).ip, c.pod(2).ip]
            .iter()
            .map(|ip| backend_counter(v, "web", &ip.to_string(), "connections").unwrap_or(0))
            .sum()
    };
    let before = counted(&d.dump());
    assert!(before >= 5, "connections counted before the restart: {before}");

    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        c.pod(3).ns.spawn(move || {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(traffic::tcp_request_here(vip(80), T));
                std::thread::sleep(Duration::from_millis(20));
            }
            outcomes
        })
    };

    let status = d.stop();
    assert!(status.success(), "SIGTERM should end the daemon cleanly, got {status}");
    assert!(c.node.exec(&["nft", "list", "table", "ip", "switchyard"]).status.success(), "rules must stay");
    assert_eq!(held.exchange("while stopped", T).expect("while the daemon is stopped").by, backend);
    assert!(tcp_request(&c.pod(0).ns, vip(80), T).is_answered(), "new connection while stopped");

    d.start_again();
    let dump = wait_backends(&mut d, "web", 2);
    assert_eq!(backends(&dump, "web").len(), 2);
    let a = held.exchange("after", T).expect("after the restart");
    assert_eq!((a.by.as_str(), a.rest.as_str()), (backend.as_str(), "after"));
    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 6, T);
    all_answered(&outcomes);
    assert_eq!(tally(&outcomes).len(), 2, "both backends after the restart");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(held.exchange("later", T).expect("later").by, backend);

    stop.store(true, Ordering::Relaxed);
    let probes = prober.join().expect("prober");
    assert!(probes.len() >= 10, "too few probes: {}", probes.len());
    all_answered(&probes);
    let after = counted(&d.dump());
    assert!(after >= before + 7, "backend counters started over across the restart: {before} -> {after}");
}

/// `switchyard cleanup` removes Switchyard's tables (and running it again is still success).
#[test]
fn cleanup_removes_tables() {
    let c = Cluster::new(2);
    let _s = tcp_servers(&c, &[1]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web(), &slice(&c, "web", &[1]), 1);
    assert!(c.node.exec_ok(&["nft", "list", "tables"]).contains("switchyard"));
    d.stop();

    for round in 0..2 {
        let out = d.cli(&["cleanup"]);
        assert!(out.status.success(), "cleanup (round {round}) failed: {}", String::from_utf8_lossy(&out.stderr));
        let tables = c.node.exec_ok(&["nft", "list", "tables"]);
        assert!(!tables.contains("switchyard"), "tables left after cleanup: {tables}");
    }
    let o = tcp_request(&c.pod(0).ns, vip(80), Duration::from_millis(500));
    assert!(!o.is_answered(), "the Service still answers after cleanup: {o}");
}

/// Backend counters in the dump (connections, packets, bytes) grow with traffic through that backend.
#[test]
fn counters_increase_with_traffic() {
    let c = Cluster::new(2);
    let _s = tcp_servers(&c, &[1]);
    let mut d = Daemon::start(&c.node);
    let before = apply(&mut d, &web(), &slice(&c, "web", &[1]), 1);
    let ip = c.pod(1).ip.to_string();
    let get = |v: &Value, k: &str| {
        backend_counter(v, "web", &ip, k).unwrap_or_else(|| panic!("no {k} counter for {ip} in {v}"))
    };
    let (c0, p0, b0) = (get(&before, "connections"), get(&before, "packets"), get(&before, "bytes"));

    all_answered(&tcp_requests(&c.pod(0).ns, vip(80), 10, T));
    let after = d.wait_until("the counters grow", Duration::from_secs(5), |v| {
        backend_counter(v, "web", &ip, "connections").is_some_and(|n| n >= c0 + 10)
    });
    let (c1, p1, b1) = (get(&after, "connections"), get(&after, "packets"), get(&after, "bytes"));
    assert_eq!(c1, c0 + 10, "connections: {c0} -> {c1}");
    // Each connection is at least SYN, SYN-ACK, ACK, data and FINs.
    assert!(p1 >= p0 + 40, "packets: {p0} -> {p1}");
    assert!(b1 >= b0 + 40 * 52, "bytes: {b0} -> {b1}");
}

/// A malformed Service (invalid clusterIP, port 70000) next to a good one: the good one works, the daemon
/// stays up and healthy, and later changes are still applied.
#[test]
fn malformed_service_does_not_break_good_one() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let bad_ip = Service::new("bad-ip", "10.96.0.999").tcp("http", 80, TARGET as u32);
    let bad_port = Service::new("bad-port", "10.96.0.20").tcp("http", 70000, TARGET as u32);
    d.write_documents(
        "bad.yaml",
        &[bad_ip.yaml(), slice(&c, "bad-ip", &[1]).yaml(), bad_port.yaml(), slice(&c, "bad-port", &[1]).yaml()],
    );
    apply(&mut d, &web(), &slice(&c, "web", &[1, 2]), 2);

    all_answered(&tcp_requests(&c.pod(0).ns, vip(80), 5, T));
    assert!(d.is_running(), "the daemon died");
    assert!(d.healthz_ok(), "/healthz is not 200");
    let dump = d.dump();
    assert!(find_service(&dump, "default", "bad-ip").is_none(), "bad-ip was programmed: {dump}");
    let bad_port_entry = find_service(&dump, "default", "bad-port");
    assert!(
        bad_port_entry.is_none_or(|s| s["frontends"].as_array().is_none_or(|f| f.iter().all(|f| f["port"] != 70000))),
        "port 70000 was programmed: {dump}"
    );

    // Nor does a file that is not YAML at all.
    d.write_manifest("junk.yaml", "{{{ this is not: [yaml\n\t- at all");
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.is_running(), "the daemon died on a file that is not YAML");
    all_answered(&tcp_requests(&c.pod(0).ns, vip(80), 3, T));

    // Later changes still go through.
    let other = Service::new("other", "10.96.0.11").tcp("http", 81, TARGET as u32);
    apply(&mut d, &other, &slice(&c, "other", &[2]), 1);
    assert_eq!(tcp_request(&c.pod(0).ns, SocketAddr::from(([10, 96, 0, 11], 81)), T).by(), "pod2");
    assert!(d.is_running(), "the daemon died");
}

/// Files removed from the manifests directory take their Services away: connections are then no longer
/// answered by a backend.
#[test]
fn removed_manifest_removes_service() {
    let c = Cluster::new(2);
    let _s = tcp_servers(&c, &[1]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web(), &slice(&c, "web", &[1]), 1);
    assert!(tcp_request(&c.pod(0).ns, vip(80), T).is_answered());
    d.remove_manifest("web.yaml");
    d.wait_until("web is gone", SYNC, |v| find_service(v, "default", "web").is_none());
    let started = Instant::now();
    let o = tcp_request(&c.pod(0).ns, vip(80), Duration::from_millis(500));
    assert!(!o.is_answered(), "still answered after removal: {o}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let set: BTreeSet<_> = backends(&d.dump(), "web").into_iter().collect();
    assert!(set.is_empty());
}

/// A pod that reaches itself through its Service's ClusterIP (hairpin) is answered, masqueraded to the node
/// so that its own reply goes back through the node's conntrack.
#[test]
fn hairpin_is_masqueraded() {
    let c = Cluster::new(2);
    let _s = tcp_servers(&c, &[1]);
    let mut d = Daemon::start(&c.node);
    apply(&mut d, &web(), &slice(&c, "web", &[1]), 1);
    let outcomes = tcp_requests(&c.pod(1).ns, vip(80), 3, T);
    all_answered(&outcomes);
    let node_addrs: Vec<IpAddr> = c.node_addresses().into_iter().map(IpAddr::from).collect();
    for o in &outcomes {
        assert_eq!(o.by(), "pod1");
        assert!(
            node_addrs.contains(&o.answer().source.ip()),
            "hairpin source {} is not a node address",
            o.answer().source
        );
    }
}

/// Changes made while the daemon is stopped are applied when it starts again: a removed backend and a
/// removed Service are pruned, a new Service is added, and what did not change keeps working.
#[test]
fn changes_while_stopped_apply_after_restart() {
    let c = Cluster::new(3);
    let _s = tcp_servers(&c, &[1, 2]);
    let mut d = Daemon::start(&c.node);
    let old = Service::new("old", "10.96.0.12").tcp("http", 82, TARGET as u32);
    apply(&mut d, &old, &slice(&c, "old", &[2]), 1);
    apply(&mut d, &web().scheduler("rr"), &slice(&c, "web", &[1, 2]), 2);
    d.stop();

    d.remove_manifest("old.yaml");
    d.write_documents("web.yaml", &[web().scheduler("rr").yaml(), slice(&c, "web", &[1]).yaml()]);
    let new = Service::new("new", "10.96.0.13").tcp("http", 83, TARGET as u32);
    d.write_documents("new.yaml", &[new.yaml(), slice(&c, "new", &[2]).yaml()]);
    d.start_again();

    let dump = d.wait_until("old pruned, web shrunk, new added", SYNC, |v| {
        find_service(v, "default", "old").is_none() && backends(v, "web").len() == 1 && backends(v, "new").len() == 1
    });
    assert_eq!(backends(&dump, "web"), vec![format!("{}:{TARGET}", c.pod(1).ip)]);
    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 6, T);
    all_answered(&outcomes);
    assert_eq!(tally(&outcomes).keys().collect::<Vec<_>>(), vec!["pod1"]);
    assert_eq!(tcp_request(&c.pod(0).ns, SocketAddr::from(([10, 96, 0, 13], 83)), T).by(), "pod2");
    let gone = tcp_request(&c.pod(0).ns, SocketAddr::from(([10, 96, 0, 12], 82)), Duration::from_millis(500));
    assert!(!gone.is_answered(), "the removed Service still answers: {gone}");
}

/// With no ready endpoint, traffic falls back to endpoints that are terminating but still serving (never to
/// ones that no longer serve); once a ready endpoint appears, it alone gets new connections.
#[test]
fn terminating_serving_endpoints_are_a_fallback() {
    let c = Cluster::new(4);
    let _s = tcp_servers(&c, &[1, 2, 3]);
    let mut d = Daemon::start(&c.node);
    let svc = web().scheduler("rr");
    let terminating = EndpointSlice::new("web")
        .tcp("http", TARGET as u32)
        .endpoint(daemon::Endpoint::terminating(c.pod(1).ip, true))
        .endpoint(daemon::Endpoint::terminating(c.pod(2).ip, false));
    apply(&mut d, &svc, &terminating, 1);
    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 6, T);
    all_answered(&outcomes);
    assert_eq!(tally(&outcomes).keys().collect::<Vec<_>>(), vec!["pod1"]);

    let with_ready = terminating.clone().ready([c.pod(3).ip]);
    d.write_documents("web.yaml", &[svc.yaml(), with_ready.yaml()]);
    let want = vec![format!("{}:{TARGET}", c.pod(3).ip)];
    d.wait_until("only the ready endpoint is a backend", SYNC, |v| backends(v, "web") == want);
    let outcomes = tcp_requests(&c.pod(0).ns, vip(80), 6, T);
    all_answered(&outcomes);
    assert_eq!(tally(&outcomes).keys().collect::<Vec<_>>(), vec!["pod3"]);
}
