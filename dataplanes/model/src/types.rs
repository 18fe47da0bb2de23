//! The model's value types: names, frontends, backends, schedulers and the per-port plan.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A transport protocol a Service port can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lower-case name the kernel tools use (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// Parses a Kubernetes protocol name (`TCP`, `UDP`, `SCTP`, any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP family. Dataplanes program each family separately (`ip switchyard` and `ip6 switchyard`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The unspecified address of the family (`0.0.0.0` or `::`), which a NodePort frontend uses to mean
    /// "every node address".
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::from([0u8; 4]),
            Family::V6 => IpAddr::from([0u16; 8]),
        }
    }
}

/// Identifies one port of one Service: what kube-proxy calls a `ServicePortName`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePortName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name; empty for the single unnamed port a Service may have.
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port/protocol`, kube-proxy's log format.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}/{}", self.namespace, self.name, self.port, self.protocol)
    }
}

/// Identifies a Service (all of its ports).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What kind of address a frontend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    /// One of the Service's `clusterIPs`. Traffic to it is cluster traffic.
    #[serde(rename = "ClusterIP")]
    ClusterIp,
    /// The Service's `nodePort` on this node's addresses. External traffic.
    NodePort,
    /// One of the Service's `externalIPs`. External traffic.
    #[serde(rename = "ExternalIP")]
    ExternalIp,
    /// A `status.loadBalancer.ingress` IP. External traffic.
    LoadBalancer,
}

impl FrontendKind {
    /// Whether traffic to this frontend follows `externalTrafficPolicy` (everything but ClusterIPs).
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }

    /// The name used in dumps and kernel comments (`ClusterIP`, `NodePort`, `ExternalIP`, `LoadBalancer`).
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

impl FromStr for FrontendKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Ok(match s {
            "ClusterIP" => FrontendKind::ClusterIp,
            "NodePort" => FrontendKind::NodePort,
            "ExternalIP" => FrontendKind::ExternalIp,
            "LoadBalancer" => FrontendKind::LoadBalancer,
            _ => return Err(()),
        })
    }
}

/// An address and port this node accepts traffic for a Service port on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    /// What kind of address this is.
    pub kind: FrontendKind,
    /// The address. For [`FrontendKind::NodePort`] it is the family's unspecified address (`0.0.0.0`, `::`),
    /// meaning every address of this node that NodePorts are served on.
    pub ip: IpAddr,
    /// The destination port.
    pub port: u16,
}

/// One endpoint of a Service port, with the conditions its EndpointSlice reported.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    /// The endpoint's address.
    pub ip: IpAddr,
    /// The endpoint's port (the Service port's target port as the EndpointSlice resolved it).
    pub port: u16,
    /// The node the endpoint runs on, if the EndpointSlice says.
    pub node_name: Option<String>,
    /// The zone the endpoint runs in, if the EndpointSlice says.
    pub zone: Option<String>,
    /// `conditions.ready` (absent means true).
    pub ready: bool,
    /// `conditions.serving` (absent means the value of `ready`).
    pub serving: bool,
    /// `conditions.terminating` (absent means false).
    pub terminating: bool,
    /// Relative weight for weighted schedulers; 1 unless something says otherwise.
    pub weight: u32,
    /// `hints.forZones`: the zones this endpoint should serve.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes`: the nodes this endpoint should serve.
    pub node_hints: Vec<String>,
}

impl Backend {
    /// `ip:port`, with brackets for IPv6: the form used in metric labels and logs.
    pub fn addr(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }
}

/// How a dataplane picks a backend for a new connection.
///
/// The names are ipvsadm's where IPVS has the scheduler. Each dataplane says which it can honour
/// ([`crate::dataplane::Dataplane::supports`]); the store falls back to [`Scheduler::Random`] for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Uniformly random, kube-proxy's behaviour.
    Random,
    /// Round robin.
    Rr,
    /// Weighted round robin.
    Wrr,
    /// Least connections.
    Lc,
    /// Weighted least connections.
    Wlc,
    /// Destination hashing.
    Dh,
    /// Source hashing.
    Sh,
    /// Shortest expected delay.
    Sed,
    /// Never queue.
    Nq,
    /// Maglev hashing.
    Mh,
}

impl Scheduler {
    /// Every scheduler, in a fixed order.
    pub const ALL: [Scheduler; 10] = [
        Scheduler::Random,
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
    ];

    /// The scheduler's name as written in the `switchyard.io/scheduler` annotation and `--scheduler`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Random => "random",
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Mh => "mh",
        }
    }
}

impl FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scheduler::ALL
            .into_iter()
            .find(|x| x.as_str() == s.trim())
            .ok_or_else(|| format!("unknown scheduler {s:?}"))
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Flags of the hashing schedulers `sh` and `mh` (ipvsadm's `sh-fallback`, `sh-port`, `mh-fallback`,
/// `mh-port`), from the `switchyard.io/scheduler-flags` annotation. Both off for every other scheduler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SchedulerFlags {
    /// Pick another backend when the hashed one is unavailable (weight 0, draining) instead of refusing the
    /// connection (`sh-fallback` / `mh-fallback`).
    pub fallback: bool,
    /// Hash the client's source port as well as its address (`sh-port` / `mh-port`).
    pub port: bool,
}

impl SchedulerFlags {
    /// Parses the annotation: a comma-separated list of `<scheduler>-fallback` and `<scheduler>-port`, where
    /// `<scheduler>` is the one in use (`sh` or `mh`); empty items and surrounding whitespace are ignored.
    pub fn parse(scheduler: Scheduler, value: &str) -> Result<SchedulerFlags, String> {
        let mut flags = SchedulerFlags::default();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some(name) = item.strip_prefix(scheduler.as_str()).and_then(|r| r.strip_prefix('-')) else {
                return Err(format!("flag {item:?} is not one of scheduler {scheduler}"));
            };
            match (scheduler, name) {
                (Scheduler::Sh | Scheduler::Mh, "fallback") => flags.fallback = true,
                (Scheduler::Sh | Scheduler::Mh, "port") => flags.port = true,
                _ => return Err(format!("unknown flag {item:?} for scheduler {scheduler}")),
            }
        }
        Ok(flags)
    }

    /// The flags as the annotation writes them (`sh-fallback,sh-port`), empty without any.
    pub fn to_annotation(self, scheduler: Scheduler) -> String {
        let mut items = Vec::new();
        if self.fallback {
            items.push(format!("{scheduler}-fallback"));
        }
        if self.port {
            items.push(format!("{scheduler}-port"));
        }
        items.join(",")
    }
}

/// What happens to new connections of a traffic class that has no backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WhenEmpty {
    /// Refused at once (TCP reset / ICMP unreachable): the Service has no usable endpoint anywhere.
    Reject,
    /// Dropped: a Local traffic policy leaves this node without an endpoint while others have some.
    Drop,
}

/// Where one class of traffic (to ClusterIPs, or to external addresses) goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// The backends, sorted.
    pub backends: Vec<Backend>,
    /// What to do when `backends` is empty.
    pub when_empty: WhenEmpty,
}

/// What this node does for one Service port in one IP family: the unit every dataplane programs.
///
/// Plans are pure data derived from the API objects; two equal plans program the same kernel state.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServicePlan {
    /// Which Service port this is.
    pub name: ServicePortName,
    /// The IP family of every address in this plan.
    pub family: Family,
    /// Where this node accepts traffic for the port, sorted.
    pub frontends: Vec<Frontend>,
    /// How a backend is picked.
    pub scheduler: Scheduler,
    /// Flags of the `sh` and `mh` schedulers (`switchyard.io/scheduler-flags`); all off for others.
    pub scheduler_flags: SchedulerFlags,
    /// `sessionAffinity: ClientIP` timeout in seconds, if affinity is on.
    pub affinity_timeout: Option<u32>,
    /// Traffic to ClusterIPs (follows `internalTrafficPolicy`).
    pub cluster: Route,
    /// Traffic to NodePorts, externalIPs and LB IPs (follows `externalTrafficPolicy`).
    pub external: Route,
    /// `externalTrafficPolicy: Local`: external traffic keeps its client address (no masquerade), and
    /// external-address traffic that comes from pods or this node takes the cluster route instead, as
    /// kube-proxy does.
    pub external_local: bool,
    /// `loadBalancerSourceRanges` of this family: only these sources may reach the LB IPs. `None`: any.
    /// `Some(empty)`: the Service restricts sources but none of its ranges is of this family, so none may.
    pub source_ranges: Option<Vec<ipnet::IpNet>>,
    /// `healthCheckNodePort` for `externalTrafficPolicy: Local` LoadBalancer Services.
    pub health_check_node_port: Option<u16>,
}

impl ServicePlan {
    /// Every backend some traffic can reach: the cluster route's, and the external route's when the plan
    /// has external frontends. Without duplicates, sorted.
    pub fn all_backends(&self) -> Vec<&Backend> {
        let external = if self.frontends(true).next().is_some() { &self.external.backends[..] } else { &[] };
        let mut all: Vec<&Backend> = self.cluster.backends.iter().chain(external).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The frontends of one kind class: cluster (`false`) or external (`true`).
    pub fn frontends(&self, external: bool) -> impl Iterator<Item = &Frontend> {
        self.frontends.iter().filter(move |f| f.kind.is_external() == external)
    }

    /// The ClusterIPs.
    pub fn cluster_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.frontends(false).map(|f| f.ip)
    }
}

/// What this node does independently of any Service: where NodePorts are served, which addresses are
/// Service addresses. Dataplanes program it beside the plans.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodePlan {
    /// Addresses NodePorts are served on, per family; `None`: every local address but loopback.
    pub nodeport_ips: std::collections::BTreeMap<Family, Option<Vec<IpAddr>>>,
    /// `--service-cidr`: traffic to an address in these ranges that no Service has is dropped.
    pub service_cidrs: Vec<ipnet::IpNet>,
}

impl NodePlan {
    /// The NodePort addresses of a family (`None`: every local address but loopback).
    pub fn nodeport_ips(&self, family: Family) -> Option<&[IpAddr]> {
        self.nodeport_ips.get(&family).and_then(|o| o.as_deref())
    }
}

/// Key under which plans are stored: the Service port and the family.
pub type PlanKey = (ServicePortName, Family);
