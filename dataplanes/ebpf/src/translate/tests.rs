use std::net::IpAddr;

use switchyard_model::{Backend, Frontend, Route, SchedulerFlags, ServicePortName};

use super::*;

fn backend(ip: &str, weight: u32) -> Backend {
    Backend {
        ip: ip.parse().unwrap(),
        port: 8080,
        node_name: None,
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        weight,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

fn plan(protocol: Protocol, scheduler: Scheduler, cluster: Vec<Backend>, external: Vec<Backend>) -> ServicePlan {
    ServicePlan {
        name: ServicePortName { namespace: "ns".into(), name: "svc".into(), port: "http".into(), protocol },
        family: Family::V4,
        frontends: vec![
            Frontend { kind: FrontendKind::ClusterIp, ip: "10.96.0.1".parse().unwrap(), port: 80 },
            Frontend { kind: FrontendKind::NodePort, ip: "0.0.0.0".parse().unwrap(), port: 30080 },
            Frontend { kind: FrontendKind::ExternalIp, ip: "192.0.2.7".parse().unwrap(), port: 80 },
        ],
        scheduler,
        scheduler_flags: SchedulerFlags::default(),
        affinity_timeout: Some(60),
        cluster: Route { backends: cluster, when_empty: switchyard_model::WhenEmpty::Reject },
        external: Route { backends: external, when_empty: switchyard_model::WhenEmpty::Reject },
        external_local: false,
        source_ranges: None,
        health_check_node_port: None,
    }
}

fn localhost_node() -> NodePlan {
    let mut node = NodePlan::default();
    node.nodeport_ips.insert(Family::V4, Some(vec!["127.0.0.1".parse().unwrap(), "192.168.1.5".parse().unwrap()]));
    node
}

/// Addresses and ports are stored in network byte order and read back unchanged.
#[test]
fn address_words_round_trip() {
    for ip in ["10.96.0.1", "fd00::1:2", "::ffff:1.2.3.4"] {
        let ip: IpAddr = ip.parse().unwrap();
        let fam = if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
        assert_eq!(words_addr(addr_words(ip), fam), ip);
    }
    assert_eq!(addr_words("10.96.0.1".parse().unwrap())[0].to_ne_bytes(), [10, 96, 0, 1]);
    assert_eq!(port_net(80).to_ne_bytes(), [0, 80]);
    assert_eq!(port_host(port_net(30080)), 30080);
}

/// ClusterIPs take the cluster route; a NodePort only on loopback addresses of the node plan (the rest of
/// its addresses, externalIPs and LB IPs stay with nftables), by the external route.
#[test]
fn frontends_and_routes() {
    let p = plan(
        Protocol::Tcp,
        Scheduler::Rr,
        vec![backend("10.0.0.1", 1)],
        vec![backend("10.0.0.1", 1), backend("10.0.0.2", 1)],
    );
    let t = translate(&p, &localhost_node()).unwrap();
    let mut fronts: Vec<(IpAddr, u16, u8)> =
        t.frontends.iter().map(|(k, r)| (words_addr(k.addr, k.family), port_host(k.port), *r)).collect();
    fronts.sort();
    assert_eq!(
        fronts,
        vec![
            ("10.96.0.1".parse().unwrap(), 80, route::CLUSTER),
            ("127.0.0.1".parse().unwrap(), 30080, route::NODEPORT)
        ]
    );
    assert_eq!(t.backends.len(), 2);
    assert_eq!(t.backends[0].routes, 0b11, "10.0.0.1 is in both routes");
    assert_eq!(t.backends[1].routes, 0b10, "10.0.0.2 only in the external one");
    assert_eq!(t.routes[&route::CLUSTER], vec![0]);
    assert_eq!(t.routes[&route::NODEPORT], vec![0, 1]);
    assert_eq!(t.affinity_timeout, 60);

    // externalTrafficPolicy: Local — the node's own traffic takes the cluster route.
    let mut local = p.clone();
    local.external_local = true;
    let t = translate(&local, &localhost_node()).unwrap();
    assert_eq!(t.routes[&route::NODEPORT], vec![0]);

    // Without localhost NodePorts only the ClusterIP is served by the hooks.
    let t = translate(&p, &NodePlan::default()).unwrap();
    assert_eq!(t.frontends.len(), 1);
}

/// SCTP and Maglev are left to nftables.
#[test]
fn not_for_socket_hooks() {
    assert!(translate(&plan(Protocol::Sctp, Scheduler::Rr, vec![], vec![]), &NodePlan::default()).is_none());
    assert!(translate(&plan(Protocol::Tcp, Scheduler::Mh, vec![], vec![]), &NodePlan::default()).is_none());
}

/// wrr repeats each backend by its weight (divided by their gcd), interleaved; weight 0 gets no slot.
#[test]
fn wrr_slots_follow_weights() {
    let members = [(0, 2), (1, 4), (2, 6), (3, 0)];
    let s = slots(scheduler::WRR, &members);
    assert_eq!(s.len(), 6);
    assert_eq!((s.iter().filter(|i| **i == 0).count(), s.iter().filter(|i| **i == 1).count()), (1, 2));
    assert_eq!(s.iter().filter(|i| **i == 2).count(), 3);
    assert!(!s.contains(&3));
    assert_eq!(s, vec![2, 1, 0, 2, 1, 2], "smooth weighted round robin order");
    // Scaled down to fit.
    let big = slots(scheduler::WRR, &[(0, 1_000_000), (1, 1)]);
    assert!(big.len() <= MAX_WRR_SLOTS as usize && big.contains(&1));
}

/// The scanning schedulers see at most MAX_SCAN backends; the others all of them.
#[test]
fn scan_limit() {
    let members: Vec<(usize, u32)> = (0..300).map(|i| (i, 1)).collect();
    assert_eq!(slots(scheduler::LC, &members).len(), MAX_SCAN as usize);
    assert_eq!(slots(scheduler::RANDOM, &members).len(), 300);
}

/// The fingerprint changes with anything programmed and with nothing else.
#[test]
fn fingerprint() {
    let p = plan(Protocol::Tcp, Scheduler::Rr, vec![backend("10.0.0.1", 1)], vec![]);
    let a = translate(&p, &NodePlan::default()).unwrap().fingerprint;
    assert_eq!(a, translate(&p, &NodePlan::default()).unwrap().fingerprint);
    let mut q = p.clone();
    q.cluster.backends[0].weight = 2;
    assert_ne!(a, translate(&q, &NodePlan::default()).unwrap().fingerprint);
    let mut q = p.clone();
    q.health_check_node_port = Some(31000);
    assert_eq!(a, translate(&q, &NodePlan::default()).unwrap().fingerprint, "not something the hooks program");
}
