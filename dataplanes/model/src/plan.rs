//! From Kubernetes objects to [`ServicePlan`]s: every decision about which endpoints serve which traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::reduced::{Names, ServiceInfo, SliceInfo};

use crate::{
    Backend, Family, Frontend, FrontendKind, NodePlan, Protocol, Route, Scheduler, SchedulerFlags, ServiceName,
    ServicePlan, ServicePortName, WhenEmpty,
};

/// Annotation choosing a Service's scheduler.
pub const SCHEDULER_ANNOTATION: &str = "switchyard.io/scheduler";
/// Annotation setting flags of the `sh` and `mh` schedulers (`sh-fallback,sh-port`, `mh-port`, ...).
pub const SCHEDULER_FLAGS_ANNOTATION: &str = "switchyard.io/scheduler-flags";
/// Label that hands a Service to another proxy (kube-proxy ignores Services carrying it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service headless.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The most endpoints one Service port is programmed with (per family). Beyond that, the rest are left out
/// and reported: a runaway Service must not stall the programming of every other one.
pub const MAX_ENDPOINTS_PER_PORT: usize = 10_000;
/// The Node label naming its zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Default ClientIP affinity timeout, as in Kubernetes.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Settings that shape every plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// This node's name.
    pub node_name: String,
    /// Scheduler for Services without the annotation.
    pub default_scheduler: Scheduler,
    /// Schedulers the active dataplane can honour. Others fall back to [`Scheduler::Random`].
    pub supported_schedulers: BTreeSet<Scheduler>,
    /// Where NodePorts are served (`--nodeport-addresses`).
    pub nodeport_addresses: NodePortAddresses,
    /// Serve IPv4 NodePorts on 127.0.0.1 too (`--localhost-nodeports`).
    pub localhost_nodeports: bool,
    /// The Service IP ranges (`--service-cidr`).
    pub service_cidrs: Vec<ipnet::IpNet>,
}

/// `--nodeport-addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// The node's primary addresses: its InternalIP of each family (else ExternalIP), kube-proxy's default.
    Primary,
    /// This node's interface addresses within these CIDRs (`0.0.0.0/0`, `::/0`: every address).
    Cidrs(Vec<ipnet::IpNet>),
}

impl PlanOptions {
    /// Options for a node with every scheduler available; the daemon narrows them to its dataplane.
    pub fn new(node_name: impl Into<String>) -> Self {
        PlanOptions {
            node_name: node_name.into(),
            default_scheduler: Scheduler::Random,
            supported_schedulers: Scheduler::ALL.into_iter().collect(),
            nodeport_addresses: NodePortAddresses::Primary,
            localhost_nodeports: false,
            service_cidrs: Vec::new(),
        }
    }
}

/// Something wrong with an object, reported as a log line, a metric and (with the API source) an Event.
/// The rest of the object, and every other object, is still programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The kind of the object at fault (`Service`, `EndpointSlice`).
    pub kind: &'static str,
    /// `namespace/name` of the object at fault.
    pub object: String,
    /// A short CamelCase reason, as Kubernetes Events carry (`InvalidClusterIP`, `SchedulerRefused`, ...).
    pub reason: &'static str,
    /// What was wrong and what Switchyard did about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}: {}", self.kind, self.object, self.reason, self.message)
    }
}

/// The node plan: where NodePorts are served and the Service ranges. `node` is this node's Node object,
/// `interfaces` the addresses of this node's interfaces (loopback excluded).
pub fn plan_node(opts: &PlanOptions, node: Option<&Node>, interfaces: &[IpAddr]) -> NodePlan {
    let mut plan = NodePlan { service_cidrs: opts.service_cidrs.clone(), ..NodePlan::default() };
    for family in [Family::V4, Family::V6] {
        let mut ips: Option<Vec<IpAddr>> = match &opts.nodeport_addresses {
            // Without a Node object there is no primary address to go by: serve every local address.
            NodePortAddresses::Primary => node.map(|n| primary_ip(n, family).into_iter().collect()),
            NodePortAddresses::Cidrs(cidrs) => {
                let mine: Vec<&ipnet::IpNet> = cidrs.iter().filter(|c| Family::of(&c.addr()) == family).collect();
                if mine.iter().any(|c| c.prefix_len() == 0) {
                    None
                } else {
                    Some(interfaces.iter().filter(|ip| mine.iter().any(|c| c.contains(*ip))).copied().collect())
                }
            }
        };
        if opts.localhost_nodeports && family == Family::V4 {
            let list = ips.get_or_insert_with(|| interfaces.iter().filter(|ip| ip.is_ipv4()).copied().collect());
            list.push(IpAddr::from([127, 0, 0, 1]));
        }
        if let Some(list) = ips.as_mut() {
            list.sort();
            list.dedup();
        }
        plan.nodeport_ips.insert(family, ips);
    }
    plan
}

/// The Node's InternalIP of a family, else its ExternalIP.
fn primary_ip(node: &Node, family: Family) -> Option<IpAddr> {
    let addrs = node.status.as_ref()?.addresses.as_ref()?;
    ["InternalIP", "ExternalIP"].iter().find_map(|t| {
        addrs.iter().filter(|a| a.type_ == *t).filter_map(|a| parse_ip(&a.address)).find(|ip| Family::of(ip) == family)
    })
}

/// Whether the node may receive new traffic: not being deleted, not tainted for deletion by the cluster
/// autoscaler (kube-proxy's rule for `/healthz`).
pub fn node_eligible(node: Option<&Node>) -> bool {
    let Some(node) = node else { return true };
    if node.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
    !taints.into_iter().flatten().any(|t| t.key == "ToBeDeletedByClusterAutoscaler")
}

/// Whether Switchyard ignores a Service altogether, as kube-proxy does: Services handed to another proxy,
/// headless Services, ExternalName Services and Services without a cluster IP.
pub fn is_ignored(svc: &Service) -> bool {
    let labels = svc.metadata.labels.as_ref();
    let has_label = |l: &str| labels.is_some_and(|m| m.contains_key(l));
    if has_label(SERVICE_PROXY_NAME_LABEL) || has_label(HEADLESS_LABEL) {
        return true;
    }
    let Some(spec) = svc.spec.as_ref() else { return true };
    if spec.type_.as_deref() == Some("ExternalName") {
        return true;
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => true,
        Some(_) => false,
    }
}

/// Computes the plans (one per port and family) for a Service from its EndpointSlices and this node.
/// Returns no plans for an ignored Service. Bad parts of the objects are skipped and reported.
pub fn plan_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: Option<&Node>,
    opts: &PlanOptions,
) -> (Vec<ServicePlan>, Vec<Problem>) {
    let Some(svc) = ServiceInfo::new(svc) else { return (Vec::new(), Vec::new()) };
    let mut names = Names::default();
    let slices: Vec<SliceInfo> = slices.iter().map(|s| SliceInfo::new(s, &mut names)).collect();
    plan_reduced(&svc, &slices.iter().collect::<Vec<_>>(), node, opts)
}

/// [`plan_service`] on the reduced objects the store keeps.
pub(crate) fn plan_reduced(
    svc: &ServiceInfo,
    slices: &[&SliceInfo],
    node: Option<&Node>,
    opts: &PlanOptions,
) -> (Vec<ServicePlan>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut slice_problems = Vec::new();
    let mut plans = Vec::new();
    let name = ServiceName { namespace: svc.namespace.clone(), name: svc.name.clone() };
    let object = name.to_string();
    let mut problem = |reason: &'static str, message: String| {
        problems.push(Problem { kind: "Service", object: object.clone(), reason, message });
    };

    // Addresses by family.
    let mut cluster_ips: BTreeMap<Family, Vec<IpAddr>> = BTreeMap::new();
    for s in &svc.cluster_ips {
        match s.ip() {
            Some(ip) => cluster_ips.entry(Family::of(&ip)).or_default().push(ip),
            None => problem("InvalidClusterIP", format!("clusterIP {:?} is not an IP address; skipped", s.text())),
        }
    }
    let mut external_ips: Vec<(FrontendKind, IpAddr)> = Vec::new();
    for s in &svc.external_ips {
        match s.ip() {
            Some(ip) => external_ips.push((FrontendKind::ExternalIp, ip)),
            None => problem("InvalidExternalIP", format!("externalIP {:?} is not an IP address; skipped", s.text())),
        }
    }
    let is_lb = svc.is_lb;
    for s in &svc.lb_ips {
        match s.ip() {
            Some(ip) => external_ips.push((FrontendKind::LoadBalancer, ip)),
            None => problem("InvalidLoadBalancerIP", format!("ingress IP {:?} is not an IP address; skipped", s.text())),
        }
    }
    let node_ports = svc.node_ports;

    // Scheduler and affinity.
    let requested = match svc.scheduler.as_deref() {
        None => opts.default_scheduler,
        Some(v) => match v.parse::<Scheduler>() {
            Ok(s) => s,
            Err(e) => {
                problem(
                    "InvalidScheduler",
                    format!("{SCHEDULER_ANNOTATION}: {e}; using {}", opts.default_scheduler),
                );
                opts.default_scheduler
            }
        },
    };
    let scheduler = if opts.supported_schedulers.contains(&requested) {
        requested
    } else {
        problem(
            "SchedulerRefused",
            format!("scheduler {requested} is not supported by this node's dataplane; using random"),
        );
        Scheduler::Random
    };
    let scheduler_flags = match svc.scheduler_flags.as_deref() {
        None => SchedulerFlags::default(),
        Some(v) if !matches!(scheduler, Scheduler::Sh | Scheduler::Mh) => {
            if !v.trim().is_empty() {
                problem(
                    "InvalidSchedulerFlags",
                    format!("{SCHEDULER_FLAGS_ANNOTATION}: {v:?}: scheduler {scheduler} has no flags; ignored"),
                );
            }
            SchedulerFlags::default()
        }
        Some(v) => SchedulerFlags::parse(scheduler, v).unwrap_or_else(|e| {
            problem("InvalidSchedulerFlags", format!("{SCHEDULER_FLAGS_ANNOTATION}: {e}; using none"));
            SchedulerFlags::default()
        }),
    };
    let affinity_timeout = svc.affinity.map(|t| {
        match t {
            None => DEFAULT_AFFINITY_TIMEOUT,
            Some(t) if (1..=86_400).contains(&t) => t as u32,
            Some(t) => {
                problem(
                    "InvalidAffinityTimeout",
                    format!("timeoutSeconds {t} is outside 1..86400; using {DEFAULT_AFFINITY_TIMEOUT}"),
                );
                DEFAULT_AFFINITY_TIMEOUT
            }
        }
    });

    let externally_reachable = node_ports || !external_ips.is_empty();
    let policy = Policy {
        internal_local: svc.internal_local,
        external_local: externally_reachable && svc.external_local,
    };
    let zone = node.and_then(|n| n.metadata.labels.as_ref()).and_then(|l| l.get(ZONE_LABEL)).cloned();
    let source_ranges: Option<Vec<ipnet::IpNet>> =
        svc.source_ranges.as_ref().map(|ranges| {
            ranges
                .iter()
                .filter_map(|r| match r.trim().parse::<ipnet::IpNet>() {
                    Ok(n) => Some(n.trunc()),
                    Err(_) => {
                        problem("InvalidSourceRange", format!("loadBalancerSourceRanges {r:?} is not a CIDR; skipped"));
                        None
                    }
                })
                .collect()
        });
    let health_check_node_port = match svc.health_check_node_port {
        Some(p) if policy.external_local && is_lb => match valid_port(p) {
            Some(p) => Some(p),
            None => {
                problem("InvalidHealthCheckNodePort", format!("healthCheckNodePort {p} is out of range; skipped"));
                None
            }
        },
        _ => None,
    };

    let mut seen_ports = BTreeSet::new();
    for port in &svc.ports {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP")) else {
            problem(
                "InvalidProtocol",
                format!("port {:?}: protocol {:?} unknown; skipped", port.name.as_deref().unwrap_or(""), port.protocol),
            );
            continue;
        };
        let Some(number) = valid_port(port.port) else {
            problem(
                "InvalidPort",
                format!("port {:?}: {} is out of range; skipped", port.name.as_deref().unwrap_or(""), port.port),
            );
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
        if !seen_ports.insert((port_name.clone(), protocol)) {
            problem("DuplicatePort", format!("port {port_name:?}/{protocol} appears twice; the first is used"));
            continue;
        }
        let node_port = match port.node_port {
            Some(n) if node_ports && n != 0 => match valid_port(n) {
                Some(n) => Some(n),
                None => {
                    problem("InvalidNodePort", format!("port {port_name:?}: nodePort {n} is out of range; skipped"));
                    None
                }
            },
            _ => None,
        };
        let spn = ServicePortName {
            namespace: name.namespace.clone(),
            name: name.name.clone(),
            port: port_name,
            protocol,
        };
        for (&family, ips) in &cluster_ips {
            let mut frontends: Vec<Frontend> =
                ips.iter().map(|&ip| Frontend { kind: FrontendKind::ClusterIp, ip, port: number }).collect();
            frontends.extend(
                external_ips
                    .iter()
                    .filter(|(_, ip)| Family::of(ip) == family)
                    .map(|&(kind, ip)| Frontend { kind, ip, port: number }),
            );
            if let Some(np) = node_port {
                frontends.push(Frontend { kind: FrontendKind::NodePort, ip: family.unspecified(), port: np });
            }
            frontends.sort();
            frontends.dedup();
            let endpoints = endpoints_for(&spn, port, family, slices, &mut slice_problems);
            let cat = categorize(&endpoints, policy, &opts.node_name, zone.as_deref());
            let when_empty = if cat.reachable { WhenEmpty::Drop } else { WhenEmpty::Reject };
            let route = |local: bool| Route {
                backends: if local { cat.local.clone() } else { cat.cluster.clone() },
                when_empty,
            };
            let source_ranges = source_ranges.as_ref().map(|all| {
                all.iter().filter(|n| Family::of(&n.addr()) == family).copied().collect::<Vec<_>>()
            });
            plans.push(ServicePlan {
                name: spn.clone(),
                family,
                frontends,
                scheduler,
                scheduler_flags,
                affinity_timeout,
                cluster: route(policy.internal_local),
                external: route(policy.external_local),
                external_local: policy.external_local,
                source_ranges,
                health_check_node_port,
            });
        }
    }
    // EndpointSlice ports naming no port of the Service: skipped (nothing can route to them), and said.
    let known: BTreeSet<(String, Protocol)> = svc
        .ports
        .iter()
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?)))
        .collect();
    for slice in slices {
        for port in &slice.ports {
            let name = port.name.clone().unwrap_or_default();
            let proto = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP"));
            if proto.is_some_and(|p| !known.contains(&(name.clone(), p))) {
                slice_problems.push(Problem {
                    kind: "EndpointSlice",
                    object: format!(
                        "{}/{}",
                        slice.namespace.as_deref().unwrap_or(""),
                        slice.name.as_deref().unwrap_or("")
                    ),
                    reason: "UnknownPort",
                    message: format!(
                        "port {name:?}/{} names no port of Service {object}; skipped",
                        port.protocol.as_deref().unwrap_or("TCP")
                    ),
                });
            }
        }
    }
    problems.append(&mut slice_problems);
    // The same slice is read once per port and family: report each of its problems once.
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.to_string()));
    (plans, problems)
}

/// The Service's traffic policies.
#[derive(Clone, Copy, Debug)]
struct Policy {
    internal_local: bool,
    external_local: bool,
}

/// Endpoints sorted by use, as kube-proxy's `CategorizeEndpoints` sorts them.
#[derive(Debug, Default)]
struct Categories {
    /// For Cluster policies: ready endpoints (narrowed by topology hints), else serving-terminating ones.
    cluster: Vec<Backend>,
    /// For Local policies: this node's ready endpoints, else its serving-terminating ones.
    local: Vec<Backend>,
    /// Whether this node can reach any endpoint through either category.
    reachable: bool,
}

/// Sorts endpoints into the cluster and local categories.
///
/// Topology (kube-proxy's rule): when every ready endpoint carries node hints and one is hinted for this
/// node, cluster traffic uses the endpoints hinted for this node (`trafficDistribution: PreferSameNode`);
/// otherwise when every ready endpoint carries zone hints and one is hinted for this node's zone, the
/// endpoints hinted for the zone (`PreferClose`/`PreferSameZone`, topology-aware hints); otherwise all.
fn categorize(endpoints: &[Backend], policy: Policy, node: &str, zone: Option<&str>) -> Categories {
    let mut c = Categories::default();
    if policy.uses_cluster() {
        let ready: Vec<&Backend> = endpoints.iter().filter(|b| b.ready).collect();
        let all_have = |f: fn(&Backend) -> &Vec<String>| !ready.is_empty() && ready.iter().all(|b| !f(b).is_empty());
        let any_for = |f: fn(&Backend) -> &Vec<String>, v: &str| ready.iter().any(|b| f(b).iter().any(|h| h == v));
        let by_node = all_have(|b| &b.node_hints) && any_for(|b| &b.node_hints, node);
        let by_zone = !by_node && zone.is_some_and(|z| all_have(|b| &b.zone_hints) && any_for(|b| &b.zone_hints, z));
        c.cluster = ready
            .iter()
            .filter(|b| {
                if by_node {
                    b.node_hints.iter().any(|h| h == node)
                } else if by_zone {
                    b.zone_hints.iter().any(|h| Some(h.as_str()) == zone)
                } else {
                    true
                }
            })
            .map(|b| (*b).clone())
            .collect();
        if c.cluster.is_empty() {
            c.cluster = endpoints.iter().filter(|b| b.serving && b.terminating).cloned().collect();
        }
    }
    if policy.uses_local() {
        let local = |b: &&Backend| b.node_name.as_deref() == Some(node);
        c.local = endpoints.iter().filter(local).filter(|b| b.ready).cloned().collect();
        if c.local.is_empty() {
            c.local = endpoints.iter().filter(local).filter(|b| b.serving && b.terminating).cloned().collect();
        }
    }
    c.reachable = !c.cluster.is_empty() || !c.local.is_empty();
    c
}

impl Policy {
    fn uses_cluster(self) -> bool {
        !self.internal_local || !self.external_local
    }
    fn uses_local(self) -> bool {
        self.internal_local || self.external_local
    }
}

/// All endpoints of one Service port and family across the Service's EndpointSlices, deduplicated by
/// address and port (the first slice in name order wins), sorted.
fn endpoints_for(
    spn: &ServicePortName,
    svc_port: &ServicePort,
    family: Family,
    slices: &[&SliceInfo],
    problems: &mut Vec<Problem>,
) -> Vec<Backend> {
    let address_type = match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    let want_name = svc_port.name.as_deref().unwrap_or("");
    let mut by_addr: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    let mut sorted: Vec<&&SliceInfo> = slices.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for slice in sorted {
        if slice.family != Some(family) {
            continue;
        }
        let slice_name = format!("{}/{}", slice.namespace.as_deref().unwrap_or(""), slice.name.as_deref().unwrap_or(""));
        let mut problem = |reason: &'static str, message: String| {
            problems.push(Problem { kind: "EndpointSlice", object: slice_name.clone(), reason, message });
        };
        let port = slice.ports.iter().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")) == Some(spn.protocol)
        });
        let Some(port) = port else { continue };
        let Some(number) = port.port.and_then(valid_port) else {
            problem("InvalidPort", format!("port {want_name:?}: {:?} is not a valid port; skipped", port.port));
            continue;
        };
        for ep in &slice.endpoints {
            let Some(ip) = ep.address.ip().filter(|ip| Family::of(ip) == family) else {
                problem("InvalidEndpointAddress", format!("{:?} is not an {address_type} address; skipped", ep.address.text()));
                continue;
            };
            let ready = ep.ready.unwrap_or(true);
            let backend = Backend {
                ip,
                port: number,
                node_name: ep.node_name.as_deref().map(String::from),
                zone: ep.zone.as_deref().map(String::from),
                ready,
                serving: ep.serving.unwrap_or(ready),
                terminating: ep.terminating.unwrap_or(false),
                weight: 1,
                zone_hints: ep.hints.as_ref().map(|h| h.zones.clone()).unwrap_or_default(),
                node_hints: ep.hints.as_ref().map(|h| h.nodes.clone()).unwrap_or_default(),
            };
            if by_addr.contains_key(&(ip, number)) {
                problem("DuplicateEndpoint", format!("{} is listed by another slice too; the first is used", backend.addr()));
                continue;
            }
            by_addr.insert((ip, number), backend);
        }
    }
    if by_addr.len() > MAX_ENDPOINTS_PER_PORT {
        problems.push(Problem {
            kind: "Service",
            object: format!("{}/{}", spn.namespace, spn.name),
            reason: "TooManyEndpoints",
            message: format!(
                "port {:?} has {} endpoints; only the first {MAX_ENDPOINTS_PER_PORT} (by address) are programmed",
                spn.port,
                by_addr.len()
            ),
        });
    }
    by_addr.into_values().take(MAX_ENDPOINTS_PER_PORT).collect()
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// Parses an IP as Kubernetes writes it, tolerating surrounding whitespace.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests;
