//! Names of the kernel objects Switchyard owns, and parsing them back.
//!
//! Names are readable (`service-default/web/tcp/http`, `endpoint-default/web/tcp/http__10.244.0.5/8080`) so
//! that `nft list table ip switchyard` explains itself. Namespaces, Service names and port names are DNS
//! labels, so `/` and `__` never occur inside them and the names parse back unambiguously.

use std::net::IpAddr;

use switchyard_model::{Protocol, ServicePortName};

/// The table every family's objects live in.
pub const TABLE: &str = "switchyard";

/// The shared maps and counted sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapName {
    /// address . protocol . port -> verdict, for Service ports with backends.
    ServiceIps,
    /// protocol . port -> verdict, NodePorts with backends.
    ServiceNodeports,
    /// address . protocol . port -> verdict, for Service ports without backends (reject).
    NoEndpointServices,
    /// protocol . port -> verdict, NodePorts without backends (reject).
    NoEndpointNodeports,
    /// Set of backend conntrack marks, with a counter per element: packets and bytes both ways.
    BackendTraffic,
    /// Set of backend conntrack marks, with a counter per element: new connections.
    BackendConnections,
    /// Scheduler slot -> backend conntrack mark. Each route of a Service port owns a block of consecutive
    /// slots, one per backend, that its scheduler's `numgen`/`jhash` expression picks from (`mod N offset B`).
    BackendSlots,
    /// Backend conntrack mark -> backend address . port: the shared DNAT chain's map.
    BackendAddrs,
    /// Set of backend address . conntrack mark: traffic from a backend to itself through its Service
    /// (hairpin), which is masqueraded.
    Hairpin,
}

impl MapName {
    /// Every map.
    pub const ALL: [MapName; 9] = [
        MapName::ServiceIps,
        MapName::ServiceNodeports,
        MapName::NoEndpointServices,
        MapName::NoEndpointNodeports,
        MapName::BackendTraffic,
        MapName::BackendConnections,
        MapName::BackendSlots,
        MapName::BackendAddrs,
        MapName::Hairpin,
    ];

    /// The map's name in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            MapName::ServiceIps => "service-ips",
            MapName::ServiceNodeports => "service-nodeports",
            MapName::NoEndpointServices => "no-endpoint-services",
            MapName::NoEndpointNodeports => "no-endpoint-nodeports",
            MapName::BackendTraffic => "backend-traffic",
            MapName::BackendConnections => "backend-connections",
            MapName::BackendSlots => "backend-slots",
            MapName::BackendAddrs => "backend-addrs",
            MapName::Hairpin => "hairpin",
        }
    }

    /// Whether this is a counted set of backend marks (elements without values).
    pub fn is_backend_set(self) -> bool {
        matches!(self, MapName::BackendTraffic | MapName::BackendConnections)
    }

    /// Whether the elements are per backend, owned through the backend's conntrack mark.
    pub fn is_backend_map(self) -> bool {
        matches!(
            self,
            MapName::BackendTraffic | MapName::BackendConnections | MapName::BackendSlots | MapName::BackendAddrs | MapName::Hairpin
        )
    }

    /// The map of a name.
    pub fn parse(s: &str) -> Option<Self> {
        MapName::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// `namespace/name/protocol/port`; an unnamed port is written `-` (never a valid port name).
pub fn service_key(n: &ServicePortName) -> String {
    let port = if n.port.is_empty() { "-" } else { n.port.as_str() };
    format!("{}/{}/{}/{}", n.namespace, n.name, n.protocol.as_str(), port)
}

/// Parses [`service_key`] back.
pub fn parse_service_key(key: &str) -> Option<ServicePortName> {
    let mut it = key.split('/');
    let (namespace, name, protocol, port) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some(ServicePortName {
        namespace: namespace.into(),
        name: name.into(),
        protocol: Protocol::parse(protocol)?,
        port: if port == "-" { String::new() } else { port.into() },
    })
}

/// The chain for cluster traffic of a Service port.
pub fn service_chain(key: &str) -> String {
    format!("service-{key}")
}

/// The chain for external traffic of a Service port.
pub fn external_chain(key: &str) -> String {
    format!("external-{key}")
}

/// The verdict map the scheduler's rule of a route looks its pick up in, for Service ports with ClientIP
/// affinity (a named map: nft handles thousands of anonymous ones slowly). The same name identifies the
/// route's block of `backend-slots` for the others.
pub fn balance_map(key: &str, external: bool) -> String {
    if external { format!("lb-external-{key}") } else { format!("lb-cluster-{key}") }
}

/// The chain that enforces `loadBalancerSourceRanges` before external traffic to an LB IP.
pub fn firewall_chain(key: &str) -> String {
    format!("firewall-{key}")
}

/// The name of one backend of a Service port: the key of its conntrack mark, and its chain's name when the
/// Service port has ClientIP affinity. IPv6 colons become dots, since nft names cannot hold colons.
pub fn endpoint(key: &str, ip: IpAddr, port: u16) -> String {
    format!("endpoint-{key}__{}/{port}", ip.to_string().replace(':', "."))
}

/// The ClientIP affinity set of a backend.
pub fn affinity_set(endpoint: &str) -> String {
    format!("affinity-{}", endpoint.trim_start_matches("endpoint-"))
}

/// The Service key an object name belongs to, for any of the per-Service-port objects above.
pub fn owner_key(name: &str) -> Option<&str> {
    let rest = ["lb-cluster-", "lb-external-", "service-", "external-", "firewall-", "endpoint-", "affinity-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let key = rest.split("__").next()?;
    parse_service_key(key).map(|_| key)
}
