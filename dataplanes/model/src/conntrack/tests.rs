use super::*;
use crate::{Backend, Family, Frontend, Route, Scheduler, ServicePortName, WhenEmpty};

fn backend(last: u8) -> Backend {
    Backend {
        ip: IpAddr::from([10, 244, 0, last]),
        port: 53,
        node_name: None,
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        weight: 1,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

fn plan(protocol: Protocol, backends: &[u8]) -> ServicePlan {
    let route = Route { backends: backends.iter().map(|&b| backend(b)).collect(), when_empty: WhenEmpty::Reject };
    ServicePlan {
        name: ServicePortName { namespace: "kube-system".into(), name: "dns".into(), port: "dns".into(), protocol },
        family: Family::V4,
        frontends: vec![
            Frontend { kind: FrontendKind::ClusterIp, ip: IpAddr::from([10, 96, 0, 10]), port: 53 },
            Frontend { kind: FrontendKind::NodePort, ip: Family::V4.unspecified(), port: 30053 },
        ],
        scheduler: Scheduler::Random,
        scheduler_flags: Default::default(),
        affinity_timeout: None,
        cluster: route.clone(),
        external: route,
        external_local: false,
        source_ranges: None,
        health_check_node_port: None,
    }
}

const NODE: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 50, 1))];

/// A removed backend: flows to the Service that went to it are stale, flows to the remaining one are not.
#[test]
fn removed_backend() {
    let f = stale_udp_flows(Some(&plan(Protocol::Udp, &[2, 3])), Some(&plan(Protocol::Udp, &[3])), &NODE);
    assert_eq!(f.len(), 2, "ClusterIP and NodePort on the node address: {f:?}");
    let vip = (IpAddr::from([10, 96, 0, 10]), 53);
    assert!(f[0].matches(vip, (IpAddr::from([10, 244, 0, 2]), 53)));
    assert!(!f[0].matches(vip, (IpAddr::from([10, 244, 0, 3]), 53)));
    assert!(f[1].matches((NODE[0], 30053), (IpAddr::from([10, 244, 0, 2]), 53)));
}

/// From no backend to some: flows that met no backend (not NATed: the reply comes from the VIP) are stale.
#[test]
fn zero_to_some() {
    let f = stale_udp_flows(Some(&plan(Protocol::Udp, &[])), Some(&plan(Protocol::Udp, &[2])), &NODE);
    let vip = (IpAddr::from([10, 96, 0, 10]), 53);
    assert!(f[0].matches(vip, vip));
    assert!(!f[0].matches(vip, (IpAddr::from([10, 244, 0, 2]), 53)));
}

/// Only backends added, or TCP: nothing is stale. A deleted UDP Service: everything to it is.
#[test]
fn nothing_or_everything() {
    assert!(stale_udp_flows(Some(&plan(Protocol::Udp, &[2])), Some(&plan(Protocol::Udp, &[2, 3])), &NODE).is_empty());
    assert!(stale_udp_flows(Some(&plan(Protocol::Tcp, &[2])), Some(&plan(Protocol::Tcp, &[])), &NODE).is_empty());
    let gone = stale_udp_flows(Some(&plan(Protocol::Udp, &[2])), None, &NODE);
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|f| f.keep.is_empty()));
}
