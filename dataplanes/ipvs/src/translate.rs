//! Pure translation: a [`ServicePlan`] to the IPVS virtual services, dummy-interface addresses and
//! companion nftables objects that implement it, and the static skeleton of the companion table. No I/O.
//!
//! IPVS (per family, in the network namespace's IPVS table):
//! - one virtual service per frontend: each ClusterIP, externalIP and LB IP on the Service port, and the
//!   NodePort on each NodePort address of the node; NAT (masquerading) destinations with the backends'
//!   weights: the cluster route's for ClusterIPs, the external route's for the rest;
//! - for `externalTrafficPolicy: Local` with external frontends, one firewall-mark service holding the
//!   cluster route: pods and the node reaching an external address are marked with it by the companion
//!   table and short-circuit to every endpoint, as with kube-proxy;
//! - every virtual service of Switchyard carries [`OWNER_FLAG`], so a restart or `cleanup` finds its own
//!   and never touches another's.
//!
//! The companion table (`ip switchyard-ipvs` / `ip6 switchyard-ipvs`) does what IPVS cannot:
//! - `filter-input` / `filter-output` (before IPVS schedules, which it does in LOCAL_IN at priority 99 and
//!   LOCAL_OUT at -98) send new connections through `services`, whose verdict map `service-ips`
//!   (address . protocol . port) goes to the Service port's chain: `service-K` for ClusterIPs,
//!   `external-K` for NodePorts, externalIPs and LB IPs, `firewall-K` first for LB IPs with source ranges;
//! - those chains set the conntrack mark bit [`MASQUERADE_CT_MARK`] where the connection must be
//!   masqueraded, set the firewall mark of the short-circuit service (Local policies), drop by source range,
//!   and reject (no endpoint anywhere) or drop (Local policy, none on this node) new connections of a route
//!   without backends;
//! - a live ClusterIP on a port no Service has is refused; an unallocated address of `--service-cidr` is
//!   dropped;
//! - `nat-postrouting` masquerades the marked connections and hairpin traffic (a backend reaching itself,
//!   by the `hairpin` set of backend addresses).
//!
//! The first rule of `service-K` carries, in its comment, a fingerprint of the Service port's nft objects
//! and its firewall mark, so that a restarted daemon recognises what is current.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_ipvs_netlink::codec::Netmask;
use switchyard_ipvs_netlink::{Destination, Protocol, Service, ServiceFlags, ServiceId};
use switchyard_model::{Family, FrontendKind, NodePlan, Scheduler, ServicePlan, WhenEmpty};
use switchyard_nftables::names::{self, MapName};
use switchyard_nftables::translate::Settings;

/// The companion table's name, in both families.
pub const TABLE: &str = "switchyard-ipvs";
/// The dummy interface that holds ClusterIPs, externalIPs and LB IPs.
pub const DUMMY_INTERFACE: &str = "switchyard-ipvs";
/// The flag every virtual service of Switchyard carries: `IP_VS_SVC_F_SCHED3` (`flag-3`), which no
/// scheduler of the kernel reads.
pub const OWNER_FLAG: ServiceFlags = ServiceFlags::SCHED3;
/// The conntrack mark bit that asks `nat-postrouting` to masquerade a connection (kube-proxy's bit, on the
/// conntrack mark rather than the packet mark, which IPVS matches whole for firewall-mark services).
pub const MASQUERADE_CT_MARK: u32 = 0x4000;
/// Firewall marks of the short-circuit services are `FWMARK_BASE | n`, `n` in 1..=0xffff.
pub const FWMARK_BASE: u32 = 0x5359_0000;
/// Prefix of the comment that carries a Service port's fingerprint.
pub const FINGERPRINT_PREFIX: &str = "sy fp=";
/// The set of live ClusterIPs.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// The set of (backend, backend) address pairs, for hairpin masquerade.
pub const HAIRPIN: &str = "hairpin";
/// The set of Service CIDRs (`--service-cidr`).
pub const SERVICE_CIDRS: &str = "service-cidrs";
/// The set of pod CIDRs (`--cluster-cidr`).
pub const CLUSTER_CIDRS: &str = "cluster-cidrs";

/// A virtual service as Switchyard programs it: its settings and destinations (address, port -> weight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Virtual {
    /// The kernel's scheduler name.
    pub scheduler: String,
    /// Flags, [`OWNER_FLAG`] included, the kernel's `HASHED` excluded.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (with `PERSISTENT`), else 0.
    pub timeout: u32,
    /// Destinations and weights; a weight of 0 is a draining destination.
    pub destinations: BTreeMap<(IpAddr, u16), u32>,
}

impl Virtual {
    /// The IPVS service to add or edit.
    pub fn service(&self, id: ServiceId) -> Service {
        let mut s = Service::new(id, self.scheduler.clone());
        s.flags = self.flags;
        s.timeout = self.timeout;
        s.netmask = Netmask::full(id.family());
        s
    }

    /// Whether the kernel's service has these settings (destinations aside).
    pub fn same_settings(&self, other: &Virtual) -> bool {
        self.scheduler == other.scheduler && self.flags == other.flags && self.timeout == other.timeout
    }

    /// The service as the kernel has it.
    pub fn from_kernel(s: &Service, dests: &[Destination]) -> Virtual {
        let persistent = s.flags.contains(ServiceFlags::PERSISTENT);
        Virtual {
            scheduler: s.scheduler.clone(),
            flags: s.flags.without_hashed(),
            timeout: if persistent { s.timeout } else { 0 },
            destinations: dests.iter().map(|d| ((d.addr, d.port), d.weight)).collect(),
        }
    }
}

/// A NAT destination of this weight.
pub fn destination(ip: IpAddr, port: u16, weight: u32) -> Destination {
    Destination::new(ip, port).weight(weight)
}

/// Everything one Service port owns in one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    /// Virtual services.
    pub ipvs: BTreeMap<ServiceId, Virtual>,
    /// `service-ips` elements per address-based virtual service: the value (`comment "K" : goto CHAIN`).
    pub elements: BTreeMap<ServiceId, String>,
    /// Addresses the dummy interface must hold.
    pub addresses: BTreeSet<IpAddr>,
    /// Members of the `cluster-ips` set.
    pub cluster_ips: BTreeSet<IpAddr>,
    /// Members of the `hairpin` set.
    pub hairpin: BTreeSet<IpAddr>,
    /// Chains and their rules (the fingerprint rule first in `service-K`).
    pub chains: BTreeMap<String, Vec<String>>,
    /// The firewall mark of the short-circuit service, if there is one.
    pub fwmark: Option<u32>,
    /// Hash of the chains and elements, stored in the kernel to recognise an unchanged Service port.
    pub fingerprint: u64,
}

/// The `service-ips` key of an address-based virtual service (`10.96.0.10 . tcp . 80`).
pub fn element_key(id: &ServiceId) -> Option<String> {
    match id {
        ServiceId::Inet { protocol, addr, port } => Some(format!("{addr} . {} . {port}", proto_name(*protocol)?)),
        ServiceId::Fwmark { .. } => None,
    }
}

/// Parses [`element_key`] back.
pub fn parse_element_key(key: &str) -> Option<ServiceId> {
    let mut it = key.split(" . ");
    let (addr, proto, port) = (it.next()?, it.next()?, it.next()?);
    let protocol = match proto {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => return None,
    };
    Some(ServiceId::Inet { protocol, addr: addr.parse().ok()?, port: port.parse().ok()? })
}

fn proto_name(p: Protocol) -> Option<&'static str> {
    match p {
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Sctp => Some("sctp"),
        _ => None,
    }
}

fn protocol(p: switchyard_model::Protocol) -> Protocol {
    match p {
        switchyard_model::Protocol::Tcp => Protocol::Tcp,
        switchyard_model::Protocol::Udp => Protocol::Udp,
        switchyard_model::Protocol::Sctp => Protocol::Sctp,
    }
}

/// The kernel's scheduler for a plan's. IPVS has no random scheduler: `random` is served by `rr`, the
/// default of kube-proxy's IPVS mode.
pub fn scheduler_name(s: Scheduler) -> &'static str {
    match s {
        Scheduler::Random => "rr",
        other => other.as_str(),
    }
}

/// The plan's scheduler of a kernel scheduler name, if it is one Switchyard programs.
pub fn parse_scheduler(name: &str) -> Option<Scheduler> {
    name.parse().ok().filter(|s| *s != Scheduler::Random)
}

/// Translates one plan. `nodeport_ips` are the addresses NodePorts are served on in the plan's family;
/// `fwmark` gives the Service port's firewall mark when it needs one.
pub fn service(
    plan: &ServicePlan,
    settings: &Settings,
    nodeport_ips: &[IpAddr],
    fwmark: &mut dyn FnMut() -> u32,
) -> ServiceObjects {
    let f = Fam(plan.family);
    let key = names::service_key(&plan.name);
    let svc_chain = names::service_chain(&key);
    let ext_chain = names::external_chain(&key);
    let fw_chain = names::firewall_chain(&key);
    let proto = protocol(plan.name.protocol);
    let mut o = ServiceObjects::default();

    let mut flags = OWNER_FLAG;
    if matches!(plan.scheduler, Scheduler::Sh | Scheduler::Mh) {
        if plan.scheduler_flags.fallback {
            flags |= ServiceFlags::SH_FALLBACK;
        }
        if plan.scheduler_flags.port {
            flags |= ServiceFlags::SH_PORT;
        }
    }
    let mut timeout = 0;
    if let Some(t) = plan.affinity_timeout {
        flags |= ServiceFlags::PERSISTENT;
        timeout = t;
    }
    let virtual_of = |backends: &[switchyard_model::Backend]| Virtual {
        scheduler: scheduler_name(plan.scheduler).to_string(),
        flags,
        timeout,
        destinations: backends.iter().map(|b| ((b.ip, b.port), b.weight.max(1))).collect(),
    };
    let cluster = virtual_of(&plan.cluster.backends);
    let external_virtual = virtual_of(&plan.external.backends);
    let has_external = plan.frontends(true).next().is_some();
    let masq = format!("ct mark set ct mark or {MASQUERADE_CT_MARK:#x}");
    let cidrs = settings.cluster_cidrs.iter().any(|c| Family::of(&c.addr()) == plan.family);

    // The cluster path.
    let mut svc_rules = Vec::new();
    if settings.masquerade_all {
        svc_rules.push(masq.clone());
    } else if cidrs {
        svc_rules.push(format!("{} saddr != @{CLUSTER_CIDRS} {masq}", f.ip()));
    }
    if plan.cluster.backends.is_empty() {
        svc_rules.push(empty_verdict(plan.cluster.when_empty).to_string());
    }

    // The external path.
    if has_external {
        let mut rules = Vec::new();
        if plan.external_local {
            // Pods and the node itself short-circuit to the cluster route, through the firewall-mark service.
            if !plan.cluster.backends.is_empty() {
                let mark = fwmark();
                o.fwmark = Some(mark);
                o.ipvs.insert(ServiceId::fwmark(ipvs_family(plan.family), mark), cluster.clone());
                let set_mark = format!("meta mark set {mark:#010x}");
                if cidrs {
                    let pod_masq = if settings.masquerade_all { format!(" {masq}") } else { String::new() };
                    rules.push(format!("{} saddr @{CLUSTER_CIDRS}{pod_masq} {set_mark} accept", f.ip()));
                }
                rules.push(format!("fib saddr type local {masq} {set_mark} accept"));
            }
        } else {
            rules.push(masq.clone());
        }
        if plan.external.backends.is_empty() {
            rules.push(empty_verdict(plan.external.when_empty).to_string());
        }
        o.chains.insert(ext_chain.clone(), rules);
    }
    let firewalled =
        plan.source_ranges.is_some() && plan.frontends.iter().any(|fe| fe.kind == FrontendKind::LoadBalancer);
    if firewalled {
        let ranges = plan.source_ranges.as_deref().unwrap_or_default();
        let mut rules = Vec::new();
        match f.cidrs(ranges) {
            Some(set) => rules.push(format!("{} saddr != {set} drop", f.ip())),
            None => rules.push("drop".to_string()),
        }
        rules.push(format!("goto {ext_chain}"));
        o.chains.insert(fw_chain.clone(), rules);
    }

    // Frontends: a virtual service and a dispatch element each; NodePorts on every NodePort address.
    for fe in &plan.frontends {
        let external = fe.kind.is_external();
        let target = match fe.kind {
            FrontendKind::LoadBalancer if firewalled => &fw_chain,
            _ if external => &ext_chain,
            _ => &svc_chain,
        };
        let addrs: Vec<IpAddr> = match fe.kind {
            FrontendKind::NodePort => nodeport_ips.iter().copied().filter(|ip| Family::of(ip) == plan.family).collect(),
            _ => vec![fe.ip],
        };
        for addr in addrs {
            let id = ServiceId::Inet { protocol: proto, addr, port: fe.port };
            o.ipvs.insert(id, if external { external_virtual.clone() } else { cluster.clone() });
            o.elements.insert(id, format!("comment \"{}\" : goto {target}", fe.kind.as_str()));
            if fe.kind != FrontendKind::NodePort {
                o.addresses.insert(addr);
            }
            if fe.kind == FrontendKind::ClusterIp {
                o.cluster_ips.insert(addr);
            }
        }
    }
    for b in plan.all_backends() {
        o.hairpin.insert(b.ip);
    }

    o.fingerprint = fingerprint(&svc_rules, &o);
    let note = format!(
        "{FINGERPRINT_PREFIX}{:016x} mark={}",
        o.fingerprint,
        o.fwmark.map_or("none".to_string(), |m| format!("{m:#010x}"))
    );
    svc_rules.insert(0, format!("counter comment \"{note}\""));
    o.chains.insert(svc_chain, svc_rules);
    o
}

fn empty_verdict(when: WhenEmpty) -> &'static str {
    match when {
        WhenEmpty::Reject => "reject",
        WhenEmpty::Drop => "drop",
    }
}

/// The IPVS family of a model family.
pub fn ipvs_family(f: Family) -> switchyard_ipvs_netlink::Family {
    match f {
        Family::V4 => switchyard_ipvs_netlink::Family::Ipv4,
        Family::V6 => switchyard_ipvs_netlink::Family::Ipv6,
    }
}

/// Stable 64-bit FNV-1a: the fingerprint must not change between builds or runs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fingerprint(svc_rules: &[String], o: &ServiceObjects) -> u64 {
    let mut text = String::new();
    for r in svc_rules {
        writeln!(text, "service {r}").expect("write to String");
    }
    for (name, rules) in &o.chains {
        writeln!(text, "chain {name}").expect("write to String");
        for r in rules {
            writeln!(text, "  {r}").expect("write to String");
        }
    }
    for (id, v) in &o.elements {
        writeln!(text, "element {} {v}", element_key(id).unwrap_or_default()).expect("write to String");
    }
    writeln!(text, "mark {:?}", o.fwmark).expect("write to String");
    fnv1a(text.as_bytes())
}

/// Parses the note of a `service-K` chain's first rule: the fingerprint and the firewall mark.
pub fn parse_note(comment: &str) -> Option<(u64, Option<u32>)> {
    let rest = comment.strip_prefix(FINGERPRINT_PREFIX)?;
    let mut words = rest.split(' ');
    let fp = u64::from_str_radix(words.next()?, 16).ok()?;
    let mark = words
        .find_map(|w| w.strip_prefix("mark="))
        .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok());
    Some((fp, mark))
}

/// The static part of a family's table, shaped by the node plan and the settings. Applying it again is
/// harmless: maps and sets are created if missing, the static chains replaced and the node's sets refilled.
pub fn skeleton(family: Family, node: &NodePlan, settings: &Settings) -> String {
    let f = Fam(family);
    let (ip, addr_type) = (f.ip(), f.addr_type());
    let t = format!("{} {TABLE}", f.ip());
    let mut lines = vec![
        format!("add table {t}"),
        format!(
            "add map {t} {} {{ type {addr_type} . inet_proto . inet_service : verdict; }}",
            MapName::ServiceIps.as_str()
        ),
        format!("add set {t} {CLUSTER_IPS} {{ type {addr_type}; }}"),
        format!("add set {t} {HAIRPIN} {{ type {addr_type} . {addr_type}; }}"),
        format!("add set {t} {SERVICE_CIDRS} {{ type {addr_type}; flags interval; }}"),
        format!("add set {t} {CLUSTER_CIDRS} {{ type {addr_type}; flags interval; }}"),
    ];
    for (set, cidrs) in [(SERVICE_CIDRS, &node.service_cidrs), (CLUSTER_CIDRS, &settings.cluster_cidrs)] {
        lines.push(format!("flush set {t} {set}"));
        if let Some(elems) = f.cidrs(cidrs) {
            lines.push(format!("add element {t} {set} {elems}"));
        }
    }
    let chains: Vec<(&str, Option<&str>, Vec<String>)> = vec![
        // Before IPVS schedules: LOCAL_IN at priority 99, LOCAL_OUT at -98.
        ("filter-input", Some("type filter hook input priority -10"), vec!["ct state new jump services".into()]),
        ("filter-output", Some("type filter hook output priority -110"), vec!["ct state new jump services".into()]),
        // An address of the Service range that no Service has is not local: it would be forwarded.
        (
            "filter-forward",
            Some("type filter hook forward priority -10"),
            vec![format!("ct state new {ip} daddr @{SERVICE_CIDRS} drop")],
        ),
        (
            "nat-postrouting",
            Some("type nat hook postrouting priority 100"),
            vec![
                format!("ct mark & {MASQUERADE_CT_MARK:#x} == {MASQUERADE_CT_MARK:#x} masquerade fully-random"),
                // Hairpin: a backend reaching itself through its Service (nft cannot compare two fields, so
                // through a set of (backend, backend) pairs).
                format!("{ip} saddr . {ip} daddr @{HAIRPIN} masquerade fully-random"),
            ],
        ),
        (
            "services",
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @{}", MapName::ServiceIps.as_str()),
                // A live ClusterIP on a port no Service has: refused, as kube-proxy does.
                format!("{ip} daddr @{CLUSTER_IPS} reject"),
                // An address of the Service range that no Service has: dropped.
                format!("{ip} daddr @{SERVICE_CIDRS} drop"),
            ],
        ),
    ];
    // Declare every chain before any rule jumps to one.
    for (name, hook, _) in &chains {
        lines.push(match hook {
            Some(h) => format!("add chain {t} {name} {{ {h}; policy accept; }}"),
            None => format!("add chain {t} {name}"),
        });
    }
    for (name, _, rules) in chains {
        lines.push(format!("flush chain {t} {name}"));
        lines.extend(rules.into_iter().map(|r| format!("add rule {t} {name} {r}")));
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

/// The `hairpin` element of a backend address: the pair (backend, backend).
pub fn hairpin_element(ip: IpAddr) -> String {
    format!("{ip} . {ip}")
}

/// Family-specific spelling.
#[derive(Clone, Copy)]
pub(crate) struct Fam(pub Family);

impl Fam {
    pub(crate) fn ip(self) -> &'static str {
        match self.0 {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self.0 {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    /// An anonymous set of the CIDRs of this family, or `None` if there is none.
    fn cidrs(self, cidrs: &[IpNet]) -> Option<String> {
        let mine: Vec<String> =
            cidrs.iter().filter(|c| Family::of(&c.addr()) == self.0).map(|c| c.to_string()).collect();
        (!mine.is_empty()).then(|| format!("{{ {} }}", mine.join(", ")))
    }
}
