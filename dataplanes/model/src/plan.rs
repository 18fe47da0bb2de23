//! From Kubernetes objects to [`ServicePlan`]s: every decision about which endpoints serve which traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{Backend, Family, Frontend, FrontendKind, Protocol, Scheduler, ServiceName, ServicePlan, ServicePortName};

/// Annotation choosing a Service's scheduler.
pub const SCHEDULER_ANNOTATION: &str = "switchyard.io/scheduler";
/// Label that hands a Service to another proxy (kube-proxy ignores Services carrying it).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a Service headless.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
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
}

impl PlanOptions {
    /// Options for a node with every scheduler available; the daemon narrows them to its dataplane.
    pub fn new(node_name: impl Into<String>) -> Self {
        PlanOptions {
            node_name: node_name.into(),
            default_scheduler: Scheduler::Random,
            supported_schedulers: Scheduler::ALL.into_iter().collect(),
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
    _node: Option<&Node>,
    opts: &PlanOptions,
) -> (Vec<ServicePlan>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut slice_problems = Vec::new();
    let mut plans = Vec::new();
    if is_ignored(svc) {
        return (plans, problems);
    }
    let name = ServiceName {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
    };
    let object = name.to_string();
    let mut problem = |reason: &'static str, message: String| {
        problems.push(Problem { kind: "Service", object: object.clone(), reason, message });
    };
    let spec = svc.spec.as_ref().expect("is_ignored checks spec");

    // Addresses by family.
    let mut cluster_ips: BTreeMap<Family, Vec<IpAddr>> = BTreeMap::new();
    let listed = spec.cluster_ips.clone().filter(|v| !v.is_empty());
    for s in listed.unwrap_or_else(|| spec.cluster_ip.iter().cloned().collect()) {
        match parse_ip(&s) {
            Some(ip) => cluster_ips.entry(Family::of(&ip)).or_default().push(ip),
            None => problem("InvalidClusterIP", format!("clusterIP {s:?} is not an IP address; skipped")),
        }
    }
    let mut external_ips: Vec<(FrontendKind, IpAddr)> = Vec::new();
    for s in spec.external_ips.iter().flatten() {
        match parse_ip(s) {
            Some(ip) => external_ips.push((FrontendKind::ExternalIp, ip)),
            None => problem("InvalidExternalIP", format!("externalIP {s:?} is not an IP address; skipped")),
        }
    }
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
    for ing in ingress.into_iter().flatten().filter(|_| is_lb) {
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        if let Some(s) = ing.ip.as_deref() {
            match parse_ip(s) {
                Some(ip) => external_ips.push((FrontendKind::LoadBalancer, ip)),
                None => problem("InvalidLoadBalancerIP", format!("ingress IP {s:?} is not an IP address; skipped")),
            }
        }
    }
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer"));

    // Scheduler and affinity.
    let requested = match svc.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULER_ANNOTATION)) {
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
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let t = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
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

    let mut seen_ports = BTreeSet::new();
    for port in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(port.protocol.as_deref().unwrap_or("TCP")) else {
            problem("InvalidProtocol", format!("port {:?}: protocol {:?} unknown; skipped", port.name, port.protocol));
            continue;
        };
        let Some(number) = valid_port(port.port) else {
            problem("InvalidPort", format!("port {:?}: {} is out of range; skipped", port.name, port.port));
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
            let cluster_backends = usable(&endpoints);
            plans.push(ServicePlan {
                name: spn.clone(),
                family,
                frontends,
                scheduler,
                affinity_timeout,
                external_backends: cluster_backends.clone(),
                cluster_backends,
                masquerade_external: true,
            });
        }
    }
    problems.append(&mut slice_problems);
    // The same slice is read once per port and family: report each of its problems once.
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.to_string()));
    (plans, problems)
}

/// The endpoints to send traffic to, as kube-proxy picks them: the ready ones; when none is ready, the ones
/// still serving while terminating (so a rolling update never leaves a window of refused connections).
fn usable(endpoints: &[Backend]) -> Vec<Backend> {
    let ready: Vec<Backend> = endpoints.iter().filter(|b| b.ready).cloned().collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints.iter().filter(|b| b.serving && b.terminating).cloned().collect()
}

/// All endpoints of one Service port and family across the Service's EndpointSlices, deduplicated by
/// address and port (the first slice in name order wins), sorted.
fn endpoints_for(
    spn: &ServicePortName,
    svc_port: &ServicePort,
    family: Family,
    slices: &[&EndpointSlice],
    problems: &mut Vec<Problem>,
) -> Vec<Backend> {
    let address_type = match family {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    };
    let want_name = svc_port.name.as_deref().unwrap_or("");
    let mut by_addr: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    let mut sorted: Vec<&&EndpointSlice> = slices.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for slice in sorted {
        if slice.address_type != address_type {
            continue;
        }
        let slice_name = format!(
            "{}/{}",
            slice.metadata.namespace.as_deref().unwrap_or(""),
            slice.metadata.name.as_deref().unwrap_or("")
        );
        let mut problem = |reason: &'static str, message: String| {
            problems.push(Problem { kind: "EndpointSlice", object: slice_name.clone(), reason, message });
        };
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == want_name
                && Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")) == Some(spn.protocol)
        });
        let Some(port) = port else { continue };
        let Some(number) = port.port.and_then(valid_port) else {
            problem("InvalidPort", format!("port {want_name:?}: {:?} is not a valid port; skipped", port.port));
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let Some(first) = ep.addresses.first() else { continue };
            let Some(ip) = parse_ip(first).filter(|ip| Family::of(ip) == family) else {
                problem("InvalidEndpointAddress", format!("{first:?} is not an {address_type} address; skipped"));
                continue;
            };
            let cond = ep.conditions.as_ref();
            let ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let backend = Backend {
                ip,
                port: number,
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
                ready,
                serving: cond.and_then(|c| c.serving).unwrap_or(ready),
                terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                weight: 1,
            };
            if by_addr.contains_key(&(ip, number)) {
                problem("DuplicateEndpoint", format!("{} is listed by another slice too; the first is used", backend.addr()));
                continue;
            }
            by_addr.insert((ip, number), backend);
        }
    }
    by_addr.into_values().collect()
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// Parses an IP as Kubernetes writes it, tolerating surrounding whitespace.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

#[cfg(test)]
mod tests;
