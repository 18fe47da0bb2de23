//! The cases run inside the VM. Each takes a fresh network namespace as the node (IPVS state is per
//! namespace), with pods and an external client in namespaces of their own, programs plans made by the
//! model from Service and EndpointSlice YAML through `IpvsDataplane`, and sends real connections.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use switchyard_ipvs::translate::OWNER_FLAG;
use switchyard_ipvs::{IpvsDataplane, Settings};
use switchyard_ipvs_netlink::{Client, Destination, Service, ServiceFlags, ServiceId, Timeouts};
use switchyard_model::dataplane::{Dataplane, SyncReport};
use switchyard_model::store::Object;
use switchyard_model::{manifest, plan_service, Family, NodePlan, PlanKey, PlanOptions, ServicePlan};

use crate::netns::*;

pub const CASES: &[(&str, fn())] = &[
    ("rr_alternates", rr_alternates),
    ("wrr_follows_weights", wrr_follows_weights),
    ("lc_and_wlc_prefer_the_least_loaded", lc_and_wlc_prefer_the_least_loaded),
    ("sed_and_nq_differ_on_idle_backends", sed_and_nq_differ_on_idle_backends),
    ("sh_and_mh_keep_a_source_on_one_backend", sh_and_mh_keep_a_source_on_one_backend),
    ("sh_and_mh_port_flag_spreads_one_source", sh_and_mh_port_flag_spreads_one_source),
    ("sh_fallback_flag_avoids_a_drained_backend", sh_fallback_flag_avoids_a_drained_backend),
    ("dh_keeps_a_destination_on_one_backend", dh_keeps_a_destination_on_one_backend),
    ("persistence_holds_and_expires", persistence_holds_and_expires),
    ("removed_backend_drains_with_weight_zero", removed_backend_drains_with_weight_zero),
    ("grace_period_ends_a_drain", grace_period_ends_a_drain),
    ("restart_adopts_state_and_leaves_no_weight_zero", restart_adopts_state_and_leaves_no_weight_zero),
    ("udp_service_and_udp_backend_removal", udp_service_and_udp_backend_removal),
    ("sctp_service_and_sctp_backend_removal", sctp_service_and_sctp_backend_removal),
    ("nodeport_and_external_addresses_from_outside", nodeport_and_external_addresses_from_outside),
    ("external_traffic_policy_local", external_traffic_policy_local),
    ("internal_traffic_policy_local", internal_traffic_policy_local),
    ("rejects_and_drops", rejects_and_drops),
    ("source_ranges", source_ranges),
    ("hairpin_and_masquerade_all", hairpin_and_masquerade_all),
    ("ipv6_services", ipv6_services),
    ("dump_and_counters", dump_and_counters),
    ("incremental_sync_touches_only_what_changed", incremental_sync_touches_only_what_changed),
    ("sysctls_cleanup_and_foreign_services", sysctls_cleanup_and_foreign_services),
];

/// Cases run alone, after the others (none needs it yet).
pub const ALONE: &[&str] = &[];

/// Pod names: pod `i` serves as `NAMES[i]`.
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
/// The client pod (in a namespace of its own), as a pod index.
const CLIENT: usize = 99;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn ipa(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The plans the model makes for node `node-a` from Services and EndpointSlices.
fn plans(yaml: &str) -> BTreeMap<PlanKey, ServicePlan> {
    let (objects, skipped) = manifest::parse(yaml);
    assert!(skipped.is_empty(), "{skipped:?}");
    let mut services = Vec::new();
    let mut slices: Vec<EndpointSlice> = Vec::new();
    for o in objects {
        match o {
            Object::Service(s) => services.push(*s),
            Object::EndpointSlice(s) => slices.push(*s),
            Object::Node(_) => {}
        }
    }
    let opts = PlanOptions::new("node-a");
    let mut out = BTreeMap::new();
    for svc in &services {
        let mine: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.metadata.namespace == svc.metadata.namespace
                    && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name"))
                        == svc.metadata.name.as_ref()
            })
            .collect();
        let (ps, problems) = plan_service(svc, &mine, None, &opts);
        assert!(problems.is_empty(), "{problems:?}");
        for p in ps {
            out.insert((p.name.clone(), p.family), p);
        }
    }
    out
}

/// A TCP Service `name` on `cluster_ip:80` (NodePort `node_port` unless 0) to port 8080 of the pods
/// `backends` (pod index, node name), with `annotations` and extra `spec` lines (YAML flow mappings).
fn service(
    name: &str,
    cluster_ip: &str,
    node_port: u16,
    annotations: &str,
    spec: &str,
    backends: &[(usize, &str)],
) -> String {
    let kind = if node_port != 0 { "NodePort" } else { "ClusterIP" };
    let np = if node_port != 0 { format!(", nodePort: {node_port}") } else { String::new() };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default, annotations: {{{annotations}}}}}\n\
         spec:\n  type: {kind}\n  clusterIP: {cluster_ip}\n  ports: [{{name: http, protocol: TCP, port: 80, targetPort: 8080{np}}}]\n"
    );
    for line in spec.lines().filter(|l| !l.trim().is_empty()) {
        y.push_str(&format!("  {}\n", line.trim()));
    }
    y.push_str(&slice(name, "http", "TCP", 8080, backends));
    y
}

/// An IPv4 EndpointSlice of `name` with these pods.
fn slice(name: &str, port_name: &str, protocol: &str, port: u16, backends: &[(usize, &str)]) -> String {
    let mut y = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: {port_name}, protocol: {protocol}, port: {port}}}]\nendpoints:\n"
    );
    for (i, node) in backends {
        y.push_str(&format!(
            "  - {{addresses: [\"{}\"], nodeName: {node}, conditions: {{ready: true}}}}\n",
            pod_ip(*i)
        ));
    }
    if backends.is_empty() {
        y.push_str("  []\n");
    }
    y.replace("endpoints:\n  []\n", "endpoints: []\n")
}

fn node_plan() -> NodePlan {
    let mut n = NodePlan {
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap(), "fd00:96::/112".parse().unwrap()],
        ..NodePlan::default()
    };
    n.nodeport_ips.insert(Family::V4, Some(vec![ipa(NODE_IP)]));
    n.nodeport_ips.insert(Family::V6, Some(vec![ipa(NODE_IP6)]));
    n
}

fn settings() -> Settings {
    let mut s = Settings::new(switchyard_nftables::translate::Settings {
        masquerade_all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap(), "fd00:244::/48".parse().unwrap()],
    });
    s.drain_interval = Duration::from_secs(1);
    s.grace_period = Duration::from_secs(120);
    s
}

/// A dataplane on this thread's namespace, restored and fully synced with `plans`.
fn programmed(settings: Settings, plans: &BTreeMap<PlanKey, ServicePlan>) -> (IpvsDataplane, SyncReport) {
    let mut dp = IpvsDataplane::new(settings);
    dp.restore().unwrap();
    let report = dp.sync(&node_plan(), plans, None).unwrap_or_else(|e| panic!("sync: {e}"));
    assert!(report.failed.is_empty(), "{report:?}");
    (dp, report)
}

/// Pods with TCP servers on 8080 (and UDP on 5353) for `servers` of them, plus the client pod.
fn lab(servers: usize, extra: &[&str]) -> Lab {
    let lab = Lab::new(NAMES.len(), extra);
    for (i, name) in NAMES.iter().enumerate().take(servers) {
        lab.pods.tcp_server(SocketAddr::new(pod_ip(i), 8080), name);
        lab.pods.udp_server(SocketAddr::new(pod_ip(i), 5353), name);
        lab.pods.tcp_server(SocketAddr::new(pod_ip6(i), 8080), name);
    }
    lab
}

/// From pod `pod` (or the client pod, [`CLIENT`]).
fn from_pod(lab: &Lab, pod: usize, to: SocketAddr) -> Outcome {
    if pod == CLIENT {
        let ip = if to.is_ipv4() { client_ip() } else { client_ip6() };
        return lab.client.run(move || tcp(Some(ip), to));
    }
    let ip = if to.is_ipv4() { pod_ip(pod) } else { pod_ip6(pod) };
    lab.pods.run(move || tcp(Some(ip), to))
}

fn from_external(lab: &Lab, from: Option<&str>, to: SocketAddr) -> Outcome {
    let from = from.map(ipa);
    lab.external.run(move || tcp(from, to))
}

/// Holds a connection from the client pod; returns the backend's name.
fn hold_from_pod(lab: &Lab, to: SocketAddr) -> (String, Held) {
    let (outcome, held) = lab.client.run(move || tcp_connect(Some(client_ip()), to, Duration::from_secs(2)));
    (outcome.name().to_string(), held.unwrap())
}

fn counts<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n.to_string()).or_insert(0) += 1;
    }
    m
}

fn client() -> Client {
    Client::new().expect("an IPVS client")
}

fn set_weights(plans: &mut BTreeMap<PlanKey, ServicePlan>, weights: &[(usize, u32)]) {
    for p in plans.values_mut() {
        for b in p.cluster.backends.iter_mut().chain(p.external.backends.iter_mut()) {
            if let Some((_, w)) = weights.iter().find(|(i, _)| pod_ip(*i) == b.ip) {
                b.weight = *w;
            }
        }
    }
}

fn remove_backend(plans: &mut BTreeMap<PlanKey, ServicePlan>, pod: usize) -> BTreeSet<PlanKey> {
    let mut changed = BTreeSet::new();
    for (k, p) in plans.iter_mut() {
        let before = p.cluster.backends.len() + p.external.backends.len();
        p.cluster.backends.retain(|b| b.ip != pod_ip(pod));
        p.external.backends.retain(|b| b.ip != pod_ip(pod));
        if before != p.cluster.backends.len() + p.external.backends.len() {
            changed.insert(k.clone());
        }
    }
    changed
}

/// The destinations of an IPVS service: address -> (weight, active + inactive connections).
fn dests(id: &ServiceId) -> BTreeMap<IpAddr, (u32, u32)> {
    client()
        .destinations(id)
        .unwrap()
        .into_iter()
        .map(|d| (d.addr, (d.weight, d.active_conns + d.inact_conns)))
        .collect()
}

/// rr: connections through a ClusterIP alternate strictly between the two backends.
fn rr_alternates() {
    let lab = lab(2, &[]);
    let p = plans(&service("web", "10.96.1.10", 0, "switchyard.io/scheduler: rr", "", &[(0, "node-a"), (1, "node-b")]));
    let (_dp, _) = programmed(settings(), &p);
    let names: Vec<String> = (0..6).map(|_| from_pod(&lab, CLIENT, sa("10.96.1.10:80")).name().to_string()).collect();
    for pair in names.windows(2) {
        assert_ne!(pair[0], pair[1], "rr alternates: {names:?}");
    }
    assert_eq!(counts(names.iter().map(String::as_str)).len(), 2, "{names:?}");
    let svc = client().service(&ServiceId::tcp(ipa("10.96.1.10"), 80)).unwrap();
    assert_eq!(svc.scheduler, "rr");
    assert!(svc.flags.contains(OWNER_FLAG), "Switchyard's services carry its flag");
}

/// wrr: with weights 3 and 1, eight connections split 6 to 2.
fn wrr_follows_weights() {
    let lab = lab(2, &[]);
    let mut p =
        plans(&service("web", "10.96.1.11", 0, "switchyard.io/scheduler: wrr", "", &[(0, "node-a"), (1, "node-b")]));
    set_weights(&mut p, &[(0, 3), (1, 1)]);
    let (_dp, _) = programmed(settings(), &p);
    let names: Vec<String> = (0..8).map(|_| from_pod(&lab, CLIENT, sa("10.96.1.11:80")).name().to_string()).collect();
    assert_eq!(
        counts(names.iter().map(String::as_str)),
        BTreeMap::from([("a".into(), 6), ("b".into(), 2)]),
        "{names:?}"
    );
    let d = dests(&ServiceId::tcp(ipa("10.96.1.11"), 80));
    assert_eq!((d[&pod_ip(0)].0, d[&pod_ip(1)].0), (3, 1), "weights in the kernel");
}

/// lc: with connections held open, a new one goes to the backend with fewer; wlc: with weights 3 and 1,
/// eight held connections split 6 to 2.
fn lc_and_wlc_prefer_the_least_loaded() {
    let lab = lab(2, &[]);
    let mut yaml = service("lc", "10.96.1.12", 0, "switchyard.io/scheduler: lc", "", &[(0, "node-a"), (1, "node-b")]);
    yaml.push_str("---\n");
    yaml.push_str(&service(
        "wlc",
        "10.96.1.13",
        0,
        "switchyard.io/scheduler: wlc",
        "",
        &[(0, "node-a"), (1, "node-b")],
    ));
    let mut p = plans(&yaml);
    for (k, plan) in p.iter_mut() {
        if k.0.name == "wlc" {
            for b in plan.cluster.backends.iter_mut() {
                b.weight = if b.ip == pod_ip(0) { 3 } else { 1 };
            }
        }
    }
    let (_dp, _) = programmed(settings(), &p);
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..4 {
        let (name, h) = hold_from_pod(&lab, sa("10.96.1.12:80"));
        // Each new connection goes to a backend with the fewest held so far.
        let c = counts(names.iter().map(String::as_str));
        let mine = c.get(&name).copied().unwrap_or(0);
        let least = ["a", "b"].iter().map(|n| c.get(*n).copied().unwrap_or(0)).min().unwrap();
        assert_eq!(mine, least, "lc sent connection {} to {name} though it held {mine}: {names:?}", names.len() + 1);
        names.push(name);
        held.push(h);
    }
    assert_eq!(counts(names.iter().map(String::as_str)), BTreeMap::from([("a".into(), 2), ("b".into(), 2)]));
    let mut wlc = Vec::new();
    for _ in 0..8 {
        let (name, h) = hold_from_pod(&lab, sa("10.96.1.13:80"));
        wlc.push(name);
        held.push(h);
    }
    assert_eq!(
        counts(wlc.iter().map(String::as_str)),
        BTreeMap::from([("a".into(), 6), ("b".into(), 2)]),
        "wlc: {wlc:?}"
    );
    let d = dests(&ServiceId::tcp(ipa("10.96.1.13"), 80));
    assert_eq!((d[&pod_ip(0)].1, d[&pod_ip(1)].1), (6, 2), "the kernel counts the held connections");
}

/// sed and nq, weights 3 and 1, connections held: sed sends the first two to the heavier backend
/// (expected delay 1/3, 2/3 against 1); nq sends them to both, as an idle backend is used before any queue.
fn sed_and_nq_differ_on_idle_backends() {
    let lab = lab(2, &[]);
    let mut yaml = service("sed", "10.96.1.14", 0, "switchyard.io/scheduler: sed", "", &[(0, "node-a"), (1, "node-b")]);
    yaml.push_str("---\n");
    yaml.push_str(&service("nq", "10.96.1.15", 0, "switchyard.io/scheduler: nq", "", &[(0, "node-a"), (1, "node-b")]));
    let mut p = plans(&yaml);
    set_weights(&mut p, &[(0, 3), (1, 1)]);
    let (_dp, _) = programmed(settings(), &p);
    let mut held = Vec::new();
    let mut sed = Vec::new();
    let mut nq = Vec::new();
    for _ in 0..2 {
        let (name, h) = hold_from_pod(&lab, sa("10.96.1.14:80"));
        sed.push(name);
        held.push(h);
        let (name, h) = hold_from_pod(&lab, sa("10.96.1.15:80"));
        nq.push(name);
        held.push(h);
    }
    assert_eq!(sed, ["a", "a"], "sed");
    assert_eq!(counts(nq.iter().map(String::as_str)).len(), 2, "nq uses both idle backends: {nq:?}");
}

/// Sources of the external client for the hashing schedulers.
const SOURCES: [&str; 8] = [
    "192.168.50.10",
    "192.168.50.11",
    "192.168.50.12",
    "192.168.50.13",
    "192.168.50.14",
    "192.168.50.15",
    "192.168.50.16",
    "192.168.50.17",
];

/// Which backend each source reaches `to` on, asserting it is the same on every try.
fn backend_per_source(lab: &Lab, to: SocketAddr, tries: usize) -> BTreeMap<&'static str, String> {
    let mut out = BTreeMap::new();
    for s in SOURCES {
        let names: BTreeSet<String> = (0..tries).map(|_| from_external(lab, Some(s), to).name().to_string()).collect();
        assert_eq!(names.len(), 1, "{to}: source {s} reached {names:?}");
        out.insert(s, names.into_iter().next().unwrap());
    }
    out
}

/// sh and mh: each source address reaches one backend on every connection, and the sources spread over
/// the backends.
fn sh_and_mh_keep_a_source_on_one_backend() {
    let lab = lab(3, &SOURCES);
    let backends = [(0, "node-a"), (1, "node-b"), (2, "node-c")];
    let mut yaml = service("sh", "10.96.1.16", 0, "switchyard.io/scheduler: sh", "", &backends);
    yaml.push_str("---\n");
    yaml.push_str(&service("mh", "10.96.1.17", 0, "switchyard.io/scheduler: mh", "", &backends));
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    for vip in ["10.96.1.16:80", "10.96.1.17:80"] {
        let map = backend_per_source(&lab, sa(vip), 3);
        let used: BTreeSet<&String> = map.values().collect();
        assert!(used.len() >= 2, "{vip}: every source on one backend: {map:?}");
    }
}

/// sh-port and mh-port: one source address reaches several backends (its source ports differ); the flags
/// are in the kernel.
fn sh_and_mh_port_flag_spreads_one_source() {
    let lab = lab(3, &[]);
    let backends = [(0, "node-a"), (1, "node-b"), (2, "node-c")];
    let mut yaml = service(
        "sh",
        "10.96.1.18",
        0,
        "switchyard.io/scheduler: sh, switchyard.io/scheduler-flags: sh-port",
        "",
        &backends,
    );
    yaml.push_str("---\n");
    yaml.push_str(&service(
        "mh",
        "10.96.1.19",
        0,
        "switchyard.io/scheduler: mh, switchyard.io/scheduler-flags: \"mh-port,mh-fallback\"",
        "",
        &backends,
    ));
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    for vip in ["10.96.1.18:80", "10.96.1.19:80"] {
        let names: BTreeSet<String> = (0..12).map(|_| from_external(&lab, None, sa(vip)).name().to_string()).collect();
        assert!(names.len() >= 2, "{vip}: one source reached only {names:?}");
    }
    let flags = |vip: &str| client().service(&ServiceId::tcp(ipa(vip), 80)).unwrap().flags.without_hashed();
    assert_eq!(flags("10.96.1.18"), OWNER_FLAG | ServiceFlags::SH_PORT);
    assert_eq!(flags("10.96.1.19"), OWNER_FLAG | ServiceFlags::SH_PORT | ServiceFlags::SH_FALLBACK);
}

/// sh without flags refuses a source whose backend drains (weight 0); with sh-fallback the source moves to
/// another backend.
fn sh_fallback_flag_avoids_a_drained_backend() {
    let lab = lab(3, &SOURCES);
    let backends = [(0, "node-a"), (1, "node-b"), (2, "node-c")];
    let mut yaml = service("plain", "10.96.1.20", 0, "switchyard.io/scheduler: sh", "", &backends);
    yaml.push_str("---\n");
    yaml.push_str(&service(
        "fallback",
        "10.96.1.21",
        0,
        "switchyard.io/scheduler: sh, switchyard.io/scheduler-flags: sh-fallback",
        "",
        &backends,
    ));
    let mut p = plans(&yaml);
    let (mut dp, _) = programmed(settings(), &p);
    let plain = backend_per_source(&lab, sa("10.96.1.20:80"), 1);
    let fallback = backend_per_source(&lab, sa("10.96.1.21:80"), 1);
    let changed = remove_backend(&mut p, 0);
    dp.sync(&node_plan(), &p, Some(&changed)).unwrap();
    assert_eq!(dests(&ServiceId::tcp(ipa("10.96.1.20"), 80))[&pod_ip(0)].0, 0, "a drains");
    let on_a: Vec<&str> = plain.iter().filter(|(_, b)| *b == "a").map(|(s, _)| *s).collect();
    assert!(!on_a.is_empty(), "no source hashed to a: {plain:?}");
    for s in on_a {
        assert_eq!(
            from_external(&lab, Some(s), sa("10.96.1.20:80")),
            Outcome::Refused,
            "sh without fallback, source {s}"
        );
    }
    for (s, b) in &fallback {
        let got = from_external(&lab, Some(s), sa("10.96.1.21:80"));
        if b == "a" {
            assert_ne!(got.name(), "a", "sh-fallback, source {s}");
        } else {
            assert_eq!(got.name(), b, "sh-fallback keeps the other sources, source {s}");
        }
    }
}

/// dh: each destination address (here four externalIPs of one Service) reaches one backend whatever the
/// source, and the addresses spread over the backends.
fn dh_keeps_a_destination_on_one_backend() {
    let lab = lab(3, &SOURCES[..3]);
    let backends = [(0, "node-a"), (1, "node-b"), (2, "node-c")];
    let vips = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4", "198.51.100.5", "198.51.100.6"];
    let spec = format!("externalIPs: [{}]", vips.join(", "));
    let (_dp, _) = programmed(
        settings(),
        &plans(&service("dh", "10.96.1.22", 0, "switchyard.io/scheduler: dh", &spec, &backends)),
    );
    let mut used = BTreeSet::new();
    for vip in vips {
        let to = SocketAddr::new(ipa(vip), 80);
        let names: BTreeSet<String> = SOURCES[..3]
            .iter()
            .flat_map(|s| (0..2).map(|_| from_external(&lab, Some(s), to).name().to_string()).collect::<Vec<_>>())
            .collect();
        assert_eq!(names.len(), 1, "{vip} reached {names:?}");
        used.extend(names);
    }
    assert!(used.len() >= 2, "every destination on one backend: {used:?}");
}

/// ClientIP affinity is IPVS persistence with the Service's timeout: a client keeps its backend over new
/// connections (TCP and UDP), and after its connections and the timeout have expired it is scheduled anew.
fn persistence_holds_and_expires() {
    let lab = lab(2, &[]);
    let spec = "sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 3}}";
    let mut yaml =
        service("sticky", "10.96.1.23", 0, "switchyard.io/scheduler: rr", spec, &[(0, "node-a"), (1, "node-b")]);
    yaml = yaml.replace("ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}]",
        "ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080}, {name: dns, protocol: UDP, port: 53, targetPort: 5353}]");
    yaml.push_str(
        &slice("sticky", "dns", "UDP", 5353, &[(0, "node-a"), (1, "node-b")]).replace("sticky-1", "sticky-2"),
    );
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    let svc = client().service(&ServiceId::udp(ipa("10.96.1.23"), 53)).unwrap();
    assert!(svc.flags.contains(ServiceFlags::PERSISTENT) && svc.timeout == 3, "{svc:?}");
    let tcp_names: BTreeSet<String> =
        (0..4).map(|_| from_pod(&lab, CLIENT, sa("10.96.1.23:80")).name().to_string()).collect();
    assert_eq!(tcp_names.len(), 1, "TCP persistence: {tcp_names:?}");
    // UDP "connections" expire after the UDP timeout; then the template after the persistence timeout.
    client().set_timeouts(&Timeouts { tcp: 0, tcp_fin: 0, udp: 2 }).unwrap();
    let ask = || lab.client.run(|| udp(Some(client_ip()), sa("10.96.1.23:53"))).name().to_string();
    let first = ask();
    for _ in 0..4 {
        assert_eq!(ask(), first, "UDP persistence holds");
    }
    std::thread::sleep(Duration::from_secs(8));
    assert_ne!(ask(), first, "persistence expired: rr moves on to the other backend");
}

/// A backend that leaves the plan (terminating or removed) drains: weight 0, its held connection keeps
/// working while new ones go elsewhere, and it is deleted once its connection is gone.
fn removed_backend_drains_with_weight_zero() {
    let lab = lab(2, &[]);
    let mut p =
        plans(&service("drain", "10.96.1.24", 0, "switchyard.io/scheduler: rr", "", &[(0, "node-a"), (1, "node-b")]));
    let (mut dp, _) = programmed(settings(), &p);
    let (n1, h1) = hold_from_pod(&lab, sa("10.96.1.24:80"));
    let (n2, h2) = hold_from_pod(&lab, sa("10.96.1.24:80"));
    assert_ne!(n1, n2, "rr: one held on each");
    let (mut h2, h1) = if n2 == "b" { (h2, h1) } else { (h1, h2) };
    let changed = remove_backend(&mut p, 1);
    let report = dp.sync(&node_plan(), &p, Some(&changed)).unwrap();
    assert_eq!(report.written, 1, "{report:?}");
    let id = ServiceId::tcp(ipa("10.96.1.24"), 80);
    assert_eq!(dests(&id)[&pod_ip(1)], (0, 1), "b: weight 0, its connection still counted");
    assert_eq!(h2.ask().name(), "b", "the held connection keeps working");
    for _ in 0..4 {
        assert_eq!(
            from_pod(&lab, CLIENT, sa("10.96.1.24:80")).name(),
            "a",
            "new connections avoid the draining backend"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(dests(&id).contains_key(&pod_ip(1)), "not deleted while its connection lives");
    assert_eq!(dp.draining().len(), 1);
    h2.reset();
    wait_for("the drained destination to be deleted", 40, || !dests(&id).contains_key(&pod_ip(1)));
    assert!(dp.draining().is_empty());
    drop(h1);
}

/// A draining destination whose connection stays open is deleted once the grace period has passed.
fn grace_period_ends_a_drain() {
    let lab = lab(2, &[]);
    let mut p =
        plans(&service("grace", "10.96.1.25", 0, "switchyard.io/scheduler: rr", "", &[(0, "node-a"), (1, "node-b")]));
    let mut s = settings();
    s.grace_period = Duration::from_secs(3);
    let (mut dp, _) = programmed(s, &p);
    let (n1, _h1) = hold_from_pod(&lab, sa("10.96.1.25:80"));
    let (n2, _h2) = hold_from_pod(&lab, sa("10.96.1.25:80"));
    assert_ne!(n1, n2, "rr: one held on each");
    let changed = remove_backend(&mut p, 1);
    dp.sync(&node_plan(), &p, Some(&changed)).unwrap();
    let id = ServiceId::tcp(ipa("10.96.1.25"), 80);
    assert_eq!(dests(&id)[&pod_ip(1)], (0, 1));
    wait_for("the grace period to end the drain", 20, || !dests(&id).contains_key(&pod_ip(1)));
}

/// Regression for kube-proxy #92019 and #108319: a restarted dataplane adopts the kernel's state without
/// touching it (a held connection survives, nothing is rewritten), finds the weight-0 destinations a crashed
/// run left, and deletes them once drained; none is left behind.
fn restart_adopts_state_and_leaves_no_weight_zero() {
    let lab = lab(3, &[]);
    let mut p = plans(&service(
        "restart",
        "10.96.1.26",
        30026,
        "switchyard.io/scheduler: rr",
        "",
        &[(0, "node-a"), (1, "node-b")],
    ));
    let id = ServiceId::tcp(ipa("10.96.1.26"), 80);
    let (held, changed) = {
        let (mut dp, _) = programmed(settings(), &p);
        let (n1, h1) = hold_from_pod(&lab, sa("10.96.1.26:80"));
        let (n2, h2) = hold_from_pod(&lab, sa("10.96.1.26:80"));
        assert_ne!(n1, n2, "rr: one held on each");
        let (h2, h1) = if n2 == "b" { (h2, h1) } else { (h1, h2) };
        drop(h1);
        let changed = remove_backend(&mut p, 1);
        dp.sync(&node_plan(), &p, Some(&changed)).unwrap();
        // A weight-0 destination without connections, as a crash in the middle of a drain leaves it.
        client().add_destination(&id, &Destination::new(pod_ip(2), 8080).weight(0)).unwrap();
        (h2, changed)
        // The dataplane is dropped here: its memory of draining destinations is gone.
    };
    let _ = changed;
    assert_eq!(dests(&id)[&pod_ip(1)].0, 0);
    let mut held = held;
    let mut dp = IpvsDataplane::new(settings());
    dp.restore().unwrap();
    let report = dp.sync(&node_plan(), &p, None).unwrap();
    assert_eq!((report.written, report.removed, report.failed.len()), (0, 0, 0), "nothing rewritten: {report:?}");
    assert_eq!(report.unchanged, 1);
    assert_eq!(held.ask().name(), "b", "the held connection survived the restart");
    wait_for("the leftover weight-0 destination without connections to go", 20, || {
        !dests(&id).contains_key(&pod_ip(2))
    });
    assert!(dests(&id).contains_key(&pod_ip(1)), "b still drains");
    held.reset();
    wait_for("the drained destination to be deleted", 40, || !dests(&id).contains_key(&pod_ip(1)));
    assert_eq!(dests(&id).keys().copied().collect::<Vec<_>>(), [pod_ip(0)], "no weight-0 leftovers");
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.26:80")).name(), "a");
}

/// A UDP Service answers through its ClusterIP and NodePort; a UDP backend that leaves the plan is deleted
/// at once (no connection to finish, as kube-proxy does); a UDP Service without endpoints refuses.
fn udp_service_and_udp_backend_removal() {
    let lab = lab(2, &[]);
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: default}\n\
        spec: {type: NodePort, clusterIP: 10.96.1.27, ports: [{name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}]}\n"
        .to_string()
        + &slice("dns", "dns", "UDP", 5353, &[(0, "node-a"), (1, "node-b")])
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: empty, namespace: default}\n\
        spec: {clusterIP: 10.96.1.28, ports: [{name: dns, protocol: UDP, port: 53, targetPort: 5353}]}\n";
    let mut p = plans(&yaml);
    let (mut dp, _) = programmed(settings(), &p);
    let names: BTreeSet<String> =
        (0..4).map(|_| lab.client.run(|| udp(Some(client_ip()), sa("10.96.1.27:53"))).name().to_string()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let got = lab.external.run(|| udp(None, sa("192.168.50.1:30053")));
    assert!(
        matches!(&got, Outcome::Answered { peer, .. } if *peer == ipa(NODE_POD_IP)),
        "NodePort, masqueraded: {got:?}"
    );
    assert_eq!(lab.client.run(|| udp(Some(client_ip()), sa("10.96.1.28:53"))), Outcome::Refused, "no endpoints");
    let changed = remove_backend(&mut p, 1);
    dp.sync(&node_plan(), &p, Some(&changed)).unwrap();
    let d = dests(&ServiceId::udp(ipa("10.96.1.27"), 53));
    assert_eq!(d.keys().copied().collect::<Vec<_>>(), [pod_ip(0)], "UDP: deleted, not drained");
    assert!(dp.draining().is_empty());
}

/// SCTP (IPVS's SCTP support, conntrack's SCTP tracking, the companion table's `sctp` rules), with real
/// associations: through the ClusterIP they reach both backends and keep the client pod's address, the
/// NodePort answers the external client masqueraded, a Service without endpoints refuses, and a removed
/// backend is deleted at once, not drained (no connection to finish, as for UDP).
fn sctp_service_and_sctp_backend_removal() {
    let lab = lab(0, &[]);
    for (i, name) in NAMES.iter().enumerate().take(2) {
        lab.pods.sctp_server(SocketAddr::new(pod_ip(i), 9000), name);
    }
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: sig, namespace: default}\n\
        spec: {type: NodePort, clusterIP: 10.96.1.29, ports: [{name: sig, protocol: SCTP, port: 90, targetPort: 9000, nodePort: 30090}]}\n"
        .to_string()
        + &slice("sig", "sig", "SCTP", 9000, &[(0, "node-a"), (1, "node-b")])
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: sig-empty, namespace: default}\n\
        spec: {clusterIP: 10.96.1.33, ports: [{name: sig, protocol: SCTP, port: 90, targetPort: 9000}]}\n";
    let mut p = plans(&yaml);
    let (mut dp, _) = programmed(settings(), &p);
    let mut names = BTreeSet::new();
    for _ in 0..4 {
        match lab.client.run(|| sctp(Some(client_ip()), sa("10.96.1.29:90"))) {
            Outcome::Answered { name, peer } => {
                assert_eq!(peer, client_ip(), "a pod keeps its address");
                names.insert(name);
            }
            other => panic!("ClusterIP: {other:?}"),
        }
    }
    assert_eq!(names.len(), 2, "{names:?}");
    let got = lab.external.run(|| sctp(Some(ipa(EXTERNAL_IP)), sa("192.168.50.1:30090")));
    assert!(
        matches!(&got, Outcome::Answered { peer, .. } if *peer == ipa(NODE_POD_IP)),
        "NodePort, masqueraded: {got:?}"
    );
    assert_eq!(lab.client.run(|| sctp(Some(client_ip()), sa("10.96.1.33:90"))), Outcome::Refused, "no endpoints");
    let changed = remove_backend(&mut p, 1);
    dp.sync(&node_plan(), &p, Some(&changed)).unwrap();
    let d = dests(&ServiceId::sctp(ipa("10.96.1.29"), 90));
    assert_eq!(d.keys().copied().collect::<Vec<_>>(), [pod_ip(0)], "SCTP: deleted, not drained");
    assert!(dp.draining().is_empty());
    for _ in 0..2 {
        assert_eq!(lab.client.run(|| sctp(Some(client_ip()), sa("10.96.1.29:90"))).name(), NAMES[0]);
    }
}

/// NodePort, externalIP and LB IP from the external client reach the backends masqueraded
/// (`externalTrafficPolicy: Cluster`); so does the ClusterIP from outside the cluster CIDR; a pod keeps its
/// address.
fn nodeport_and_external_addresses_from_outside() {
    let lab = lab(2, &[]);
    let mut yaml =
        service("lb", "10.96.1.30", 30030, "", "externalIPs: [198.51.100.30]", &[(0, "node-a"), (1, "node-b")]);
    yaml = yaml.replace("type: NodePort", "type: LoadBalancer");
    yaml = yaml.replacen("---\n", "status: {loadBalancer: {ingress: [{ip: 203.0.113.30}]}}\n---\n", 1);
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    for to in ["192.168.50.1:30030", "198.51.100.30:80", "203.0.113.30:80", "10.96.1.30:80"] {
        let mut seen = BTreeSet::new();
        for _ in 0..4 {
            match from_external(&lab, None, sa(to)) {
                Outcome::Answered { name, peer } => {
                    assert_eq!(peer, ipa(NODE_POD_IP), "{to}: masqueraded to the node");
                    seen.insert(name);
                }
                other => panic!("{to}: {other:?}"),
            }
        }
        assert_eq!(seen.len(), 2, "{to}: {seen:?}");
    }
    match from_pod(&lab, CLIENT, sa("10.96.1.30:80")) {
        Outcome::Answered { peer, .. } => assert_eq!(peer, client_ip(), "a pod keeps its address"),
        other => panic!("{other:?}"),
    }
    assert_eq!(from_external(&lab, None, sa("192.168.50.1:30031")), Outcome::Refused, "no Service on this NodePort");
}

/// `externalTrafficPolicy: Local`: external traffic reaches only this node's endpoint and keeps the
/// client's address; pods and the node short-circuit to every endpoint (the node masqueraded); without a
/// local endpoint external traffic is dropped while pods still reach the others.
fn external_traffic_policy_local() {
    let lab = lab(2, &[]);
    let mut yaml =
        service("local", "10.96.1.31", 30031, "", "externalTrafficPolicy: Local", &[(0, "node-a"), (1, "node-b")]);
    yaml = yaml.replace("type: NodePort", "type: LoadBalancer");
    yaml = yaml.replacen("---\n", "status: {loadBalancer: {ingress: [{ip: 203.0.113.31}]}}\n---\n", 1);
    yaml.push_str("---\n");
    yaml.push_str(&service("remote", "10.96.1.32", 30032, "", "externalTrafficPolicy: Local", &[(1, "node-b")]));
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    for to in ["192.168.50.1:30031", "203.0.113.31:80"] {
        for _ in 0..4 {
            let got = from_external(&lab, None, sa(to));
            assert_eq!(got, Outcome::Answered { name: "a".into(), peer: ipa(EXTERNAL_IP) }, "{to} from outside");
        }
        let from_pods: BTreeSet<String> = (0..6)
            .map(|_| match from_pod(&lab, CLIENT, sa(to)) {
                Outcome::Answered { name, peer } => {
                    assert_eq!(peer, client_ip(), "{to}: a pod keeps its address");
                    name
                }
                other => panic!("{to} from a pod: {other:?}"),
            })
            .collect();
        assert_eq!(from_pods.len(), 2, "{to}: pods reach every endpoint: {from_pods:?}");
    }
    let from_node: BTreeSet<String> = (0..6)
        .map(|_| match tcp(None, sa("192.168.50.1:30031")) {
            Outcome::Answered { name, peer } => {
                assert_eq!(peer, ipa(NODE_POD_IP), "the node is masqueraded");
                name
            }
            other => panic!("from the node: {other:?}"),
        })
        .collect();
    assert_eq!(from_node.len(), 2, "the node reaches every endpoint: {from_node:?}");
    assert_eq!(from_external(&lab, None, sa("192.168.50.1:30032")), Outcome::Dropped, "no local endpoint: dropped");
    assert_eq!(from_pod(&lab, CLIENT, sa("192.168.50.1:30032")).name(), "b", "pods still reach the remote one");
}

/// `internalTrafficPolicy: Local`: ClusterIP traffic reaches only this node's endpoint; with none here it
/// is dropped.
fn internal_traffic_policy_local() {
    let lab = lab(2, &[]);
    let mut yaml =
        service("local", "10.96.1.33", 0, "", "internalTrafficPolicy: Local", &[(0, "node-a"), (1, "node-b")]);
    yaml.push_str("---\n");
    yaml.push_str(&service("remote", "10.96.1.34", 0, "", "internalTrafficPolicy: Local", &[(1, "node-b")]));
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    for _ in 0..4 {
        assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.33:80")).name(), "a");
    }
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.34:80")), Outcome::Dropped);
}

/// A Service without endpoints refuses at once (TCP, from a pod, the node and outside); a live ClusterIP on
/// a port no Service has refuses; an unallocated address of the Service CIDR drops.
fn rejects_and_drops() {
    let lab = lab(1, &[]);
    let mut yaml = service("empty", "10.96.1.35", 30035, "", "", &[]);
    yaml.push_str("---\n");
    yaml.push_str(&service("live", "10.96.1.36", 0, "", "", &[(0, "node-a")]));
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.35:80")), Outcome::Refused, "pod");
    assert_eq!(tcp(None, sa("10.96.1.35:80")), Outcome::Refused, "node");
    assert_eq!(from_external(&lab, None, sa("192.168.50.1:30035")), Outcome::Refused, "NodePort from outside");
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.36:80")).name(), "a");
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.36:81")), Outcome::Refused, "live ClusterIP, unknown port");
    assert_eq!(tcp(None, sa("10.96.1.36:22")), Outcome::Refused, "from the node too");
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.99.99:80")), Outcome::Dropped, "unallocated Service address");
}

/// `loadBalancerSourceRanges`: the LB IP answers sources in the ranges and drops the others; the NodePort
/// and ClusterIP are not restricted.
fn source_ranges() {
    let lab = lab(1, &["192.168.50.20"]);
    let mut yaml =
        service("fw", "10.96.1.37", 30037, "", "loadBalancerSourceRanges: [\"192.168.50.2/32\"]", &[(0, "node-a")]);
    yaml = yaml.replace("type: NodePort", "type: LoadBalancer");
    yaml = yaml.replacen("---\n", "status: {loadBalancer: {ingress: [{ip: 203.0.113.37}]}}\n---\n", 1);
    let (_dp, _) = programmed(settings(), &plans(&yaml));
    assert_eq!(from_external(&lab, None, sa("203.0.113.37:80")).name(), "a", "allowed source");
    assert_eq!(from_external(&lab, Some("192.168.50.20"), sa("203.0.113.37:80")), Outcome::Dropped, "other source");
    assert_eq!(from_external(&lab, Some("192.168.50.20"), sa("192.168.50.1:30037")).name(), "a", "NodePort open");
}

/// Hairpin: a backend reaching itself through its Service is masqueraded (else it would drop its own
/// address as a martian source); with `--masquerade-all` every pod is.
fn hairpin_and_masquerade_all() {
    let lab = lab(1, &[]);
    let p = plans(&service("self", "10.96.1.38", 0, "", "", &[(0, "node-a")]));
    {
        let (_dp, _) = programmed(settings(), &p);
        assert_eq!(
            from_pod(&lab, 0, sa("10.96.1.38:80")),
            Outcome::Answered { name: "a".into(), peer: ipa(NODE_POD_IP) }
        );
        assert_eq!(
            from_pod(&lab, CLIENT, sa("10.96.1.38:80")),
            Outcome::Answered { name: "a".into(), peer: client_ip() }
        );
    }
    let mut s = settings();
    s.masquerade.masquerade_all = true;
    let mut dp = IpvsDataplane::new(s);
    dp.restore().unwrap();
    dp.sync(&node_plan(), &p, None).unwrap();
    assert_eq!(
        from_pod(&lab, CLIENT, sa("10.96.1.38:80")),
        Outcome::Answered { name: "a".into(), peer: ipa(NODE_POD_IP) }
    );
}

/// A dual-stack Service: IPv6 ClusterIP from a pod and IPv6 NodePort from outside (masqueraded); the IPv6
/// addresses are on the dummy interface.
fn ipv6_services() {
    let lab = lab(2, &[]);
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: v6, namespace: default}
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  clusterIP: 10.96.1.39
  clusterIPs: [10.96.1.39, "fd00:96::39"]
  ports: [{name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30039}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: v6-1, namespace: default, labels: {kubernetes.io/service-name: v6}}
addressType: IPv6
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
  - {addresses: ["fd00:244::10"], nodeName: node-a}
  - {addresses: ["fd00:244::11"], nodeName: node-b}
"#;
    let (_dp, _) = programmed(settings(), &plans(yaml));
    let names: BTreeSet<String> =
        (0..4).map(|_| from_pod(&lab, CLIENT, sa("[fd00:96::39]:80")).name().to_string()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    match from_external(&lab, None, sa("[fd00:50::1]:30039")) {
        Outcome::Answered { peer, .. } => assert_eq!(peer, ipa("fd00:244::1"), "masqueraded"),
        other => panic!("{other:?}"),
    }
    assert_eq!(from_pod(&lab, CLIENT, sa("[fd00:96::39]:81")), Outcome::Refused, "unknown port");
}

/// `dump` reads the kernel: names, frontends, scheduler, affinity and per-backend counters from IPVS.
fn dump_and_counters() {
    let lab = lab(2, &[]);
    let spec = "sessionAffinity: ClientIP\nsessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}";
    let p = plans(&service(
        "dumped",
        "10.96.1.40",
        30040,
        "switchyard.io/scheduler: wlc",
        spec,
        &[(0, "node-a"), (1, "node-b")],
    ));
    let (_dp, _) = programmed(settings(), &p);
    for _ in 0..3 {
        from_external(&lab, None, sa("192.168.50.1:30040")).name();
    }
    let reader = IpvsDataplane::new(settings());
    let mut last = None;
    wait_for("the counters", 20, || {
        let dump = reader.dump().unwrap();
        let ok = dump.services.len() == 1 && dump.services[0].backends.iter().map(|b| b.connections).sum::<u64>() == 3;
        last = Some(dump);
        ok
    });
    let dump = last.unwrap();
    let s = &dump.services[0];
    assert_eq!((s.namespace.as_str(), s.name.as_str(), s.port.as_str()), ("default", "dumped", "http"));
    assert_eq!(s.scheduler, switchyard_model::Scheduler::Wlc);
    assert_eq!(s.affinity_timeout_seconds, Some(60));
    let fronts: Vec<String> = s.frontends.iter().map(|f| format!("{} {}:{}", f.kind.as_str(), f.ip, f.port)).collect();
    assert_eq!(fronts, ["ClusterIP 10.96.1.40:80", "NodePort 192.168.50.1:30040"]);
    let total: u64 = s.backends.iter().map(|b| b.packets).sum();
    assert!(total >= 3 * 4, "packets both ways: {s:?}");
    assert!(s.backends.iter().all(|b| b.port == 8080), "{s:?}");
    assert!(s.backends.iter().map(|b| b.bytes).sum::<u64>() > 0);
}

/// Incremental sync: changing one Service rewrites only it; another's virtual service is not recreated
/// (its counters stay); a scheduler change edits the virtual service in place; an unchanged full sync
/// writes nothing.
fn incremental_sync_touches_only_what_changed() {
    let lab = lab(3, &[]);
    let mut yaml = service("one", "10.96.1.41", 0, "switchyard.io/scheduler: rr", "", &[(0, "node-a"), (1, "node-b")]);
    yaml.push_str("---\n");
    yaml.push_str(&service("two", "10.96.1.42", 0, "switchyard.io/scheduler: rr", "", &[(0, "node-a")]));
    let mut p = plans(&yaml);
    let (mut dp, report) = programmed(settings(), &p);
    assert_eq!(report.written, 2);
    for _ in 0..3 {
        from_pod(&lab, CLIENT, sa("10.96.1.42:80")).name();
        from_pod(&lab, CLIENT, sa("10.96.1.41:80")).name();
    }
    let conns = |vip: &str| client().service(&ServiceId::tcp(ipa(vip), 80)).unwrap().stats.conns;
    wait_for("counters", 20, || conns("10.96.1.42") == 3 && conns("10.96.1.41") == 3);
    // One more backend for "one".
    let one: PlanKey = p.keys().find(|k| k.0.name == "one").unwrap().clone();
    let mut b = p[&one].cluster.backends[0].clone();
    b.ip = pod_ip(2);
    p.get_mut(&one).unwrap().cluster.backends.push(b);
    let report = dp.sync(&node_plan(), &p, Some(&BTreeSet::from([one.clone()]))).unwrap();
    assert_eq!((report.written, report.unchanged), (1, 0), "{report:?}");
    assert_eq!(dests(&ServiceId::tcp(ipa("10.96.1.41"), 80)).len(), 3);
    p.get_mut(&one).unwrap().scheduler = switchyard_model::Scheduler::Wlc;
    dp.sync(&node_plan(), &p, Some(&BTreeSet::from([one]))).unwrap();
    let svc = client().service(&ServiceId::tcp(ipa("10.96.1.41"), 80)).unwrap();
    assert_eq!(svc.scheduler, "wlc");
    assert_eq!(svc.stats.conns, 3, "edited in place, not recreated");
    assert_eq!(conns("10.96.1.42"), 3, "the other Service was not touched");
    let report = dp.sync(&node_plan(), &p, None).unwrap();
    assert_eq!((report.written, report.unchanged, report.removed), (0, 2, 0), "{report:?}");
    p.retain(|k, _| k.0.name != "two");
    let report = dp.sync(&node_plan(), &p, None).unwrap();
    assert_eq!(report.removed, 1, "{report:?}");
    assert!(client().service(&ServiceId::tcp(ipa("10.96.1.42"), 80)).is_err(), "removed from IPVS");
    assert_eq!(from_pod(&lab, CLIENT, sa("10.96.1.42:80")), Outcome::Dropped, "and its address is gone");
}

/// The first sync sets the sysctls IPVS needs and creates the dummy interface; cleanup removes Switchyard's
/// virtual services, the interface and the companion tables, and leaves another's virtual service alone.
fn sysctls_cleanup_and_foreign_services() {
    let _lab = lab(1, &[]);
    let foreign = ServiceId::tcp(ipa("10.200.0.1"), 80);
    client().add_service(&Service::new(foreign, "rr")).unwrap();
    let p = plans(&service("mine", "10.96.1.43", 30043, "", "", &[(0, "node-a")]));
    let (mut dp, _) = programmed(settings(), &p);
    for (name, value) in [
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.vs.expire_nodest_conn", "1"),
        ("net.ipv4.vs.expire_quiescent_template", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ] {
        assert_eq!(read_sysctl(name), value, "{name}");
    }
    let addrs =
        std::process::Command::new("/sbin/ip").args(["-o", "addr", "show", "dev", "switchyard-ipvs"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&addrs.stdout).contains("10.96.1.43/32"),
        "{}",
        String::from_utf8_lossy(&addrs.stdout)
    );
    let full = dp.sync(&node_plan(), &p, None).unwrap();
    assert_eq!(full.written, 0, "the foreign service is not pruned nor anything rewritten: {full:?}");
    assert!(client().service(&foreign).is_ok());
    dp.cleanup().unwrap();
    let left: Vec<ServiceId> = client().services().unwrap().into_iter().map(|s| s.id).collect();
    assert_eq!(left, [foreign], "only the foreign service is left");
    let link = std::process::Command::new("/sbin/ip").args(["link", "show", "switchyard-ipvs"]).output().unwrap();
    assert!(!link.status.success(), "the dummy interface is gone");
    for fam in ["ip", "ip6"] {
        let t =
            std::process::Command::new("/sbin/nft").args(["list", "table", fam, "switchyard-ipvs"]).output().unwrap();
        assert!(!t.status.success(), "the {fam} table is gone");
    }
    assert!(dp.dump().unwrap().services.is_empty());
}
