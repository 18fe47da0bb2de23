//! Which UDP conntrack entries go stale when a plan changes, as kube-proxy decides it.
//!
//! A UDP client keeps sending from one socket, so its conntrack entry keeps it on whatever the first packet
//! met: a backend that has since gone, or no backend at all (the Service had none, and the packet was
//! rejected). Deleting such entries makes the next packet go through the rules again. Entries to a backend
//! that is still in use are kept.

use std::net::IpAddr;

use crate::{FrontendKind, Protocol, ServicePlan};

/// Conntrack entries to delete: UDP, original destination `dst`:`port`, and a reply source that is not one
/// of `keep` (the backends traffic to that destination may still go to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleFlows {
    /// The Service address the flows were sent to.
    pub dst: IpAddr,
    /// The Service port (or NodePort).
    pub port: u16,
    /// Backends whose flows are still valid.
    pub keep: Vec<(IpAddr, u16)>,
}

impl StaleFlows {
    /// Whether an entry with this original destination and this reply source is stale.
    pub fn matches(&self, orig_dst: (IpAddr, u16), reply_src: (IpAddr, u16)) -> bool {
        orig_dst == (self.dst, self.port) && !self.keep.contains(&reply_src)
    }
}

/// The stale-flow filters for a Service port whose plan went from `old` to `new` (either may be absent).
/// `node_ips` are the addresses NodePorts are served on, for NodePort frontends.
pub fn stale_udp_flows(old: Option<&ServicePlan>, new: Option<&ServicePlan>, node_ips: &[IpAddr]) -> Vec<StaleFlows> {
    let Some(any) = new.or(old) else { return Vec::new() };
    if any.name.protocol != Protocol::Udp {
        return Vec::new();
    }
    let backends = |plan: Option<&ServicePlan>, external: bool| -> Option<Vec<(IpAddr, u16)>> {
        let plan = plan?;
        let route = if external { &plan.external } else { &plan.cluster };
        Some(route.backends.iter().map(|b| (b.ip, b.port)).collect())
    };
    let mut out = Vec::new();
    let frontends = old.into_iter().chain(new).flat_map(|p| p.frontends.iter());
    let mut seen = Vec::new();
    for fe in frontends {
        if seen.contains(&fe) {
            continue;
        }
        seen.push(fe);
        let external = fe.kind.is_external();
        let in_new = new.is_some_and(|p| p.frontends.contains(fe));
        let before = if old.is_some_and(|p| p.frontends.contains(fe)) { backends(old, external) } else { None };
        let after = if in_new { backends(new, external) } else { None };
        // Nothing to clean when the frontend had backends and lost none of them.
        if let (Some(b), Some(a)) = (&before, &after) {
            if !b.is_empty() && b.iter().all(|x| a.contains(x)) {
                continue;
            }
        }
        let keep = after.unwrap_or_default();
        let dsts: Vec<IpAddr> = if fe.kind == FrontendKind::NodePort {
            node_ips.iter().filter(|ip| crate::Family::of(ip) == any.family).copied().collect()
        } else {
            vec![fe.ip]
        };
        out.extend(dsts.into_iter().map(|dst| StaleFlows { dst, port: fe.port, keep: keep.clone() }));
    }
    out
}

#[cfg(test)]
mod tests;
