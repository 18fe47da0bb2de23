//! Pure translation: a [`ServicePlan`] (and the node's NodePort addresses) to the map entries that the
//! socket hooks serve it with. No I/O happens here.
//!
//! What the socket hooks serve of a plan (everything else stays with the nftables table):
//! - its ClusterIPs, by the cluster route;
//! - its NodePort on the loopback addresses the node plan lists (`--localhost-nodeports`: `127.0.0.1`), by
//!   the external route, or by the cluster route for `externalTrafficPolicy: Local` (traffic from the node
//!   itself short-circuits to every endpoint, as with kube-proxy).
//!
//! TCP and UDP only: SCTP Services are served by nftables alone.

use std::collections::BTreeMap;
use std::net::IpAddr;

use switchyard_ebpf_common::{
    route, scheduler, ServiceKey, FAMILY_V4, FAMILY_V6, MAX_SCAN, MAX_WRR_SLOTS, PROTO_TCP, PROTO_UDP,
};
use switchyard_model::{Backend, Family, FrontendKind, NodePlan, Protocol, Scheduler, ServicePlan};

/// One backend of a translated plan.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
    /// Weight (the model's, at least 0).
    pub weight: u32,
    /// Bit `1 << route` for each route the backend is in.
    pub routes: u8,
}

/// What one plan becomes in the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translation {
    /// [`scheduler`] number.
    pub scheduler: u8,
    /// Affinity timeout in seconds, 0 without.
    pub affinity_timeout: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Frontends and the route each takes, sorted.
    pub frontends: BTreeMap<ServiceKey, u8>,
    /// Per route that some frontend takes: its slots, as indices into `backends`.
    pub routes: BTreeMap<u8, Vec<usize>>,
    /// Every backend of some route, sorted by address and port.
    pub backends: Vec<BackendSpec>,
    /// Stable hash of all of the above: equal fingerprints program equal state.
    pub fingerprint: u64,
}

/// The scheduler's number in the maps.
pub fn scheduler_number(s: Scheduler) -> Option<u8> {
    Some(match s {
        Scheduler::Random => scheduler::RANDOM,
        Scheduler::Rr => scheduler::RR,
        Scheduler::Wrr => scheduler::WRR,
        Scheduler::Lc => scheduler::LC,
        Scheduler::Wlc => scheduler::WLC,
        Scheduler::Dh => scheduler::DH,
        Scheduler::Sh => scheduler::SH,
        Scheduler::Sed => scheduler::SED,
        Scheduler::Nq => scheduler::NQ,
        Scheduler::Mh => return None,
    })
}

/// The scheduler a number in the maps stands for.
pub fn scheduler_of(n: u8) -> Scheduler {
    match n {
        scheduler::RR => Scheduler::Rr,
        scheduler::WRR => Scheduler::Wrr,
        scheduler::LC => Scheduler::Lc,
        scheduler::WLC => Scheduler::Wlc,
        scheduler::DH => Scheduler::Dh,
        scheduler::SH => Scheduler::Sh,
        scheduler::SED => Scheduler::Sed,
        scheduler::NQ => Scheduler::Nq,
        _ => Scheduler::Random,
    }
}

/// The family number of a model family.
pub fn family_number(f: Family) -> u8 {
    match f {
        Family::V4 => FAMILY_V4,
        Family::V6 => FAMILY_V6,
    }
}

/// An address as the maps hold it: four words in network order, IPv4 in the first.
pub fn addr_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The address that map words of a family stand for.
pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

/// A port as the maps hold it (network byte order in memory).
pub fn port_net(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// The port a map's network-order port stands for.
pub fn port_host(net: u16) -> u16 {
    u16::from_be_bytes(net.to_ne_bytes())
}

/// The protocol number of a model protocol, if the socket hooks serve it.
pub fn proto_number(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(PROTO_TCP),
        Protocol::Udp => Some(PROTO_UDP),
        Protocol::Sctp => None,
    }
}

/// A frontend key.
pub fn service_key(ip: IpAddr, port: u16, proto: u8) -> ServiceKey {
    let family = if ip.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
    ServiceKey { addr: addr_words(ip), port: port_net(port), proto, family }
}

/// Translates a plan, or `None` when the socket hooks serve none of it (SCTP, or Maglev, which they cannot
/// do: such plans are left to nftables).
pub fn translate(plan: &ServicePlan, node: &NodePlan) -> Option<Translation> {
    let proto = proto_number(plan.name.protocol)?;
    let sched = scheduler_number(plan.scheduler)?;
    let mut frontends = BTreeMap::new();
    for f in &plan.frontends {
        match f.kind {
            FrontendKind::ClusterIp => {
                frontends.insert(service_key(f.ip, f.port, proto), route::CLUSTER);
            }
            FrontendKind::NodePort => {
                for ip in node.nodeport_ips(plan.family).unwrap_or(&[]).iter().filter(|ip| ip.is_loopback()) {
                    frontends.insert(service_key(*ip, f.port, proto), route::NODEPORT);
                }
            }
            FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {}
        }
    }
    let route_backends = |r: u8| -> &[Backend] {
        if r == route::NODEPORT && !plan.external_local {
            &plan.external.backends
        } else {
            &plan.cluster.backends
        }
    };
    let used_routes: std::collections::BTreeSet<u8> = frontends.values().copied().collect();

    // Every backend of a used route, with the routes it is in.
    let mut by_addr: BTreeMap<(IpAddr, u16), BackendSpec> = BTreeMap::new();
    for &r in &used_routes {
        for b in route_backends(r) {
            let spec = by_addr.entry((b.ip, b.port)).or_insert_with(|| BackendSpec {
                ip: b.ip,
                port: b.port,
                weight: b.weight,
                routes: 0,
            });
            spec.routes |= 1 << r;
        }
    }
    let backends: Vec<BackendSpec> = by_addr.into_values().collect();
    let index: BTreeMap<(IpAddr, u16), usize> = backends.iter().enumerate().map(|(i, b)| ((b.ip, b.port), i)).collect();

    let mut routes = BTreeMap::new();
    for &r in &used_routes {
        let members: Vec<(usize, u32)> = route_backends(r).iter().map(|b| (index[&(b.ip, b.port)], b.weight)).collect();
        routes.insert(r, slots(sched, &members));
    }

    let mut t = Translation {
        scheduler: sched,
        affinity_timeout: plan.affinity_timeout.unwrap_or(0),
        proto,
        family: family_number(plan.family),
        frontends,
        routes,
        backends,
        fingerprint: 0,
    };
    t.fingerprint = fnv1a(
        format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            t.scheduler, t.affinity_timeout, t.proto, t.frontends, t.routes, t.backends
        )
        .as_bytes(),
    );
    Some(t)
}

/// The slots of a route: one per backend, except for wrr (each backend repeated by its weight, interleaved)
/// and the scanning schedulers (at most [`MAX_SCAN`]).
fn slots(sched: u8, members: &[(usize, u32)]) -> Vec<usize> {
    match sched {
        scheduler::WRR => wrr_slots(members),
        scheduler::LC | scheduler::WLC | scheduler::SED | scheduler::NQ => {
            members.iter().take(MAX_SCAN as usize).map(|m| m.0).collect()
        }
        _ => members.iter().map(|m| m.0).collect(),
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weighted round robin as a cyclic sequence: weights divided by their gcd (and scaled down to fit
/// [`MAX_WRR_SLOTS`]), interleaved by smooth weighted round robin so that heavy backends do not come in runs.
/// Backends of weight 0 get no slot.
fn wrr_slots(members: &[(usize, u32)]) -> Vec<usize> {
    let live: Vec<(usize, u64)> = members.iter().filter(|m| m.1 > 0).map(|m| (m.0, m.1 as u64)).collect();
    if live.is_empty() {
        return Vec::new();
    }
    let g = live.iter().fold(0, |g, m| gcd(g, m.1));
    let mut weights: Vec<u64> = live.iter().map(|m| m.1 / g).collect();
    let total: u64 = weights.iter().sum();
    if total > MAX_WRR_SLOTS as u64 {
        weights = weights.iter().map(|w| (w * MAX_WRR_SLOTS as u64 / total).max(1)).collect();
    }
    let total: u64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += *w as i64;
        }
        let (best, _) =
            current.iter().enumerate().max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i))).expect("not empty");
        current[best] -= total as i64;
        out.push(live[best].0);
    }
    out
}

/// Stable 64-bit FNV-1a (the fingerprint must not change between builds or runs).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;
