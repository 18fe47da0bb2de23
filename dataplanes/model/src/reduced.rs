//! Services and EndpointSlices reduced to what planning reads, which is what the store keeps.
//!
//! The parsed Kubernetes objects are several times larger than this (an EndpointSlice endpoint alone is 352
//! bytes before its strings, and most of its fields never matter here); at tens of thousands of Services
//! keeping them whole was the largest part of the daemon's memory. Everything [`crate::plan`] reads is kept
//! exactly as the object said it, invalid values included, so that plans and problems are the same as if
//! the objects themselves were planned.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{EndpointPort, EndpointSlice};

use crate::plan::{is_ignored, parse_ip, SCHEDULER_ANNOTATION, SCHEDULER_FLAGS_ANNOTATION};
use crate::Family;

/// An address as an object wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IpText {
    /// Text that is exactly this address's canonical form (the common case, kept without the text).
    Ip(IpAddr),
    /// Any other text, valid or not, kept to be parsed and quoted as written.
    Text(Box<str>),
}

impl IpText {
    pub(crate) fn new(s: &str) -> IpText {
        match s.parse::<IpAddr>() {
            Ok(ip) if ip.to_string() == s => IpText::Ip(ip),
            _ => IpText::Text(s.into()),
        }
    }

    /// The address, as [`parse_ip`] reads the text.
    pub(crate) fn ip(&self) -> Option<IpAddr> {
        match self {
            IpText::Ip(ip) => Some(*ip),
            IpText::Text(s) => parse_ip(s),
        }
    }

    /// The text as written, for problem messages.
    pub(crate) fn text(&self) -> String {
        match self {
            IpText::Ip(ip) => ip.to_string(),
            IpText::Text(s) => s.to_string(),
        }
    }
}

/// One copy of each node and zone name, shared by every endpoint that names it: a cluster has few nodes
/// and zones, and hundreds of thousands of endpoints.
#[derive(Debug, Default)]
pub(crate) struct Names {
    names: HashSet<Arc<str>>,
    /// Size after the last sweep of names no endpoint uses any more.
    swept: usize,
}

impl Names {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(n) = self.names.get(s) {
            return n.clone();
        }
        // Nodes come and go: forget the names nothing holds once the set has doubled since the last sweep.
        if self.names.len() >= 2 * self.swept.max(64) {
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.swept = self.names.len();
        }
        let n: Arc<str> = s.into();
        self.names.insert(n.clone());
        n
    }
}

/// What planning reads of a Service that is not ignored.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `clusterIPs`, or `clusterIP` when that list is absent or empty.
    pub cluster_ips: Vec<IpText>,
    pub external_ips: Vec<IpText>,
    /// `status.loadBalancer.ingress[].ip` of a LoadBalancer Service, without `ipMode: Proxy` ones.
    pub lb_ips: Vec<IpText>,
    /// `type: LoadBalancer`.
    pub is_lb: bool,
    /// `type: NodePort` or `LoadBalancer`.
    pub node_ports: bool,
    /// The scheduler annotation.
    pub scheduler: Option<Box<str>>,
    /// The scheduler flags annotation.
    pub scheduler_flags: Option<Box<str>>,
    /// `sessionAffinity: ClientIP`, with its `timeoutSeconds` if set.
    pub affinity: Option<Option<i32>>,
    pub internal_local: bool,
    pub external_local: bool,
    /// `loadBalancerSourceRanges` of a LoadBalancer Service, when not empty.
    pub source_ranges: Option<Vec<String>>,
    pub health_check_node_port: Option<i32>,
    /// The ports, without the fields planning does not read (`targetPort`, `appProtocol`).
    pub ports: Vec<ServicePort>,
}

impl ServiceInfo {
    /// `None` for a Service Switchyard ignores (see [`is_ignored`]).
    pub(crate) fn new(svc: &Service) -> Option<ServiceInfo> {
        if is_ignored(svc) {
            return None;
        }
        let spec = svc.spec.as_ref().expect("is_ignored checks spec");
        let ips = |v: &[String]| v.iter().map(|s| IpText::new(s)).collect::<Vec<_>>();
        let listed = spec.cluster_ips.as_deref().filter(|v| !v.is_empty());
        let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
        let ingress = svc.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        let annotation = |k: &str| svc.metadata.annotations.as_ref().and_then(|a| a.get(k)).map(|v| v.as_str().into());
        Some(ServiceInfo {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            cluster_ips: ips(listed.unwrap_or(spec.cluster_ip.as_slice())),
            external_ips: ips(spec.external_ips.as_deref().unwrap_or_default()),
            lb_ips: ingress
                .into_iter()
                .flatten()
                .filter(|_| is_lb)
                .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|ing| ing.ip.as_deref().map(IpText::new))
                .collect(),
            is_lb,
            node_ports: matches!(spec.type_.as_deref(), Some("NodePort") | Some("LoadBalancer")),
            scheduler: annotation(SCHEDULER_ANNOTATION),
            scheduler_flags: annotation(SCHEDULER_FLAGS_ANNOTATION),
            affinity: (spec.session_affinity.as_deref() == Some("ClientIP"))
                .then(|| spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds)),
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            source_ranges: spec.load_balancer_source_ranges.clone().filter(|r| is_lb && !r.is_empty()),
            health_check_node_port: spec.health_check_node_port,
            ports: spec
                .ports
                .iter()
                .flatten()
                .map(|p| ServicePort { target_port: None, app_protocol: None, ..p.clone() })
                .collect(),
        })
    }
}

/// What planning reads of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SliceInfo {
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `addressType` (`None`: neither `IPv4` nor `IPv6`, so no family uses the slice).
    pub family: Option<Family>,
    /// The ports, without `appProtocol`.
    pub ports: Vec<EndpointPort>,
    /// The endpoints that have an address.
    pub endpoints: Vec<EndpointInfo>,
}

/// What planning reads of an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EndpointInfo {
    /// The first address (the only one Kubernetes allows).
    pub address: IpText,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub node_name: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
    /// `hints.forZones` and `hints.forNodes` names, when there are any.
    pub hints: Option<Box<Hints>>,
}

/// Topology hints of an endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Hints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

impl SliceInfo {
    pub(crate) fn new(slice: &EndpointSlice, names: &mut Names) -> SliceInfo {
        let mut endpoints: Vec<EndpointInfo> = slice
            .endpoints
            .iter()
            .flatten()
            .filter_map(|ep| {
                let cond = ep.conditions.as_ref();
                let hints = ep.hints.as_ref();
                let hints = Hints {
                    zones: hints.and_then(|h| h.for_zones.as_ref()).into_iter().flatten().map(|z| z.name.clone()).collect(),
                    nodes: hints.and_then(|h| h.for_nodes.as_ref()).into_iter().flatten().map(|n| n.name.clone()).collect(),
                };
                Some(EndpointInfo {
                    address: IpText::new(ep.addresses.first()?),
                    ready: cond.and_then(|c| c.ready),
                    serving: cond.and_then(|c| c.serving),
                    terminating: cond.and_then(|c| c.terminating),
                    node_name: ep.node_name.as_deref().map(|n| names.get(n)),
                    zone: ep.zone.as_deref().map(|z| names.get(z)),
                    hints: (hints != Hints::default()).then(|| Box::new(hints)),
                })
            })
            .collect();
        // Collected without knowing how many have an address: the spare capacity would be kept as long as
        // the slice (up to half of it).
        endpoints.shrink_to_fit();
        SliceInfo {
            namespace: slice.metadata.namespace.clone(),
            name: slice.metadata.name.clone(),
            family: match slice.address_type.as_str() {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            },
            ports: slice.ports.iter().flatten().map(|p| EndpointPort { app_protocol: None, ..p.clone() }).collect(),
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only an address's canonical text is kept as the address; any other text is kept as written, so
    /// that problems quote it.
    #[test]
    fn ip_text_keeps_what_was_written() {
        assert_eq!(IpText::new("10.0.0.1"), IpText::Ip([10, 0, 0, 1].into()));
        for s in ["FD00::1", " 10.0.0.1", "10.0.0.x"] {
            assert_eq!(IpText::new(s).text(), s);
            assert_eq!(IpText::new(s).ip(), parse_ip(s));
        }
    }

    /// One copy of a name, and names nothing uses are swept once the set has doubled.
    #[test]
    fn names_are_shared_and_swept() {
        let mut names = Names::default();
        let a = names.get("node-a");
        assert!(Arc::ptr_eq(&a, &names.get("node-a")));
        for i in 0..200 {
            names.get(&format!("gone-{i}"));
        }
        assert!(names.names.len() < 200);
        assert!(names.names.contains("node-a"));
    }
}
