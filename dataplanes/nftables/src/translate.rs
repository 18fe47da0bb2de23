//! Pure translation: a [`ServicePlan`] to the nftables objects that implement it, and the static skeleton
//! of Switchyard's table. No I/O happens here.
//!
//! Layout of the table (one per family, `ip switchyard` / `ip6 switchyard`):
//! - verdict maps `service-ips` (address . protocol . port) and `service-nodeports` (protocol . port)
//!   dispatch new connections from the `nat-prerouting` / `nat-output` hooks to a Service port's chains, so the
//!   cost of a packet does not grow with the number of Services; NodePorts only on the `nodeport-ips` set's
//!   addresses (or every local address);
//! - maps `no-endpoint-services` / `no-endpoint-nodeports`, consulted from the filter hooks after DNAT, send
//!   new connections to Service ports without any endpoint to a chain that rejects them; the same hooks
//!   reject unknown ports of live ClusterIPs (`cluster-ips`) and drop unallocated Service addresses
//!   (`service-cidrs`);
//! - per Service port `K` (`namespace/name/protocol/port`): chain `service-K` (cluster traffic: masquerade
//!   rules, the scheduler's rule; or reject/drop), chain `external-K` (NodePort/externalIP/LB traffic; the
//!   Local-policy short-circuit), chain `firewall-K` (LB source ranges);
//! - per backend a conntrack mark, and elements, never chains: the scheduler's rule of each route sets the
//!   connection's mark to a slot, `numgen`/`jhash … mod N offset B` (the route owns slots `B..B+N` of
//!   `backend-slots`, one per backend), and goes to the shared chain `backend-pick`, which turns the slot
//!   into the backend's mark through `backend-slots`; `backend-dnat` then masquerades hairpin traffic
//!   (`hairpin`: backend address . mark) and DNATs to the mark's address and port (`backend-addrs`). A
//!   backend change is a handful of element updates, and the kernel's object count does not grow with
//!   endpoints (a chain and a named map per endpoint made loading quadratic at 50,000 Services). Each map is
//!   looked up from one chain only: the kernel walks every element of a map each time a rule in another
//!   chain binds it;
//! - per backend, elements of the counted sets `backend-traffic` (packets and bytes both ways) and
//!   `backend-connections` (new connections), which the `accounting-*` chains look the connection's mark up
//!   in (per-element counters: no counter objects, which nft would have to read back before every
//!   transaction);
//! - Service ports with ClientIP affinity keep a chain per backend (`endpoint-K__IP/PORT`: marks hairpin
//!   traffic, records the client in the backend's timeout set `affinity-K__IP/PORT`, sets the mark and
//!   DNATs) and per route a named verdict map `lb-cluster-K` / `lb-external-K` the scheduler picks from, as
//!   kube-proxy does: a client's affinity then ends only with its own backend.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_model::{Backend, Family, FrontendKind, NodePlan, Scheduler, ServicePlan, WhenEmpty};

use crate::names::{self, MapName};

/// The masquerade mark, the same bit kube-proxy uses.
pub const MASQUERADE_MARK: u32 = 0x4000;
/// Prefix of the comment that carries a Service port's fingerprint on the last rule of its `service-` chain.
pub const FINGERPRINT_PREFIX: &str = "sy fp=";

/// Node-wide settings that shape the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Masquerade all traffic to Services (`--masquerade-all`).
    pub masquerade_all: bool,
    /// Pod CIDRs of the cluster (`--cluster-cidr`); traffic to a ClusterIP from outside them is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
}

/// Everything one Service port owns in one family's table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceObjects {
    /// Chains and their rules, in order.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity sets and their timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// With affinity, the schedulers' verdict maps (`integer : verdict`) and their elements
    /// (`0 : goto endpoint-…`).
    pub maps: BTreeMap<String, Vec<String>>,
    /// Elements of the shared maps: (map, key) -> value (with its comment), all as nft syntax.
    pub elements: BTreeMap<(MapName, String), String>,
    /// The backends, by [`names::endpoint`] name, whose conntrack marks this Service port holds.
    pub endpoints: BTreeSet<String>,
    /// Each route's block of `backend-slots`: route ([`names::balance_map`] name) -> (first slot, count).
    pub slot_blocks: BTreeMap<String, (u32, u32)>,
    /// The ClusterIPs, members of the shared `cluster-ips` set while any Service port has them.
    pub cluster_ips: BTreeSet<IpAddr>,
    /// Hash of all of the above but the elements of the backend maps, stored in the kernel to recognise an
    /// unchanged Service port after a restart (the reconciler compares those elements themselves). Backend
    /// elements are left out so that an endpoint that moves, while the number of backends stays, changes no
    /// rule (the fingerprint is in a rule's comment): only elements, which need no chain rewritten.
    pub fingerprint: u64,
}

/// Identifiers the translation asks the reconciler for; stable for as long as what they name exists.
pub trait Ids {
    /// The conntrack mark of a backend (by its [`names::endpoint`] name).
    fn mark(&mut self, endpoint: &str) -> u32;
    /// The first of `n` consecutive `backend-slots` slots for a route (by its [`names::balance_map`] name).
    fn slots(&mut self, route: &str, n: u32) -> u32;
}

/// Translates one plan.
pub fn service(plan: &ServicePlan, settings: &Settings, ids: &mut dyn Ids) -> ServiceObjects {
    let f = Fam(plan.family);
    let key = names::service_key(&plan.name);
    let svc_chain = names::service_chain(&key);
    let ext_chain = names::external_chain(&key);
    let fw_chain = names::firewall_chain(&key);
    let proto = plan.name.protocol.as_str();
    let mut o = ServiceObjects::default();

    // Every backend of any traffic class: its mark, counters, and its address (an element, or with
    // affinity a chain and a timeout set).
    for b in plan.all_backends() {
        let ep = names::endpoint(&key, b.ip, b.port);
        let mark = ids.mark(&ep);
        o.elements.insert((MapName::BackendTraffic, mark.to_string()), String::new());
        o.elements.insert((MapName::BackendConnections, mark.to_string()), String::new());
        match plan.affinity_timeout {
            Some(timeout) => {
                let set = names::affinity_set(&ep);
                let rules = vec![
                    format!("{} saddr {} jump mark-for-masquerade", f.ip(), b.ip),
                    format!("update @{set} {{ {} saddr }}", f.ip()),
                    format!("meta l4proto {proto} ct mark set {mark:#010x} dnat to {}", f.sockaddr(b.ip, b.port)),
                ];
                o.sets.insert(set, timeout);
                o.chains.insert(ep.clone(), rules);
            }
            None => {
                o.elements.insert((MapName::BackendAddrs, mark.to_string()), format!(": {} . {}", b.ip, b.port));
                o.elements.insert((MapName::Hairpin, format!("{} . {mark}", b.ip)), String::new());
            }
        }
        o.endpoints.insert(ep);
    }

    // The cluster path: masquerade where needed, then a backend; without one, reject or drop.
    let mut svc_rules = Vec::new();
    if !plan.cluster.backends.is_empty() {
        if settings.masquerade_all {
            svc_rules.push("jump mark-for-masquerade".to_string());
        } else if let Some(cidrs) = f.cidrs(&settings.cluster_cidrs) {
            svc_rules.push(format!("{} saddr != {cidrs} jump mark-for-masquerade", f.ip()));
        }
        balance(&mut svc_rules, &mut o, ids, plan, &key, false, &plan.cluster.backends);
    } else {
        // Reject: reached from the filter hooks through the no-endpoint maps. Drop: from the nat hooks.
        svc_rules.extend(empty_verdict(plan.cluster.when_empty).iter().map(|r| r.to_string()));
    }

    // The external path.
    let has_external = plan.frontends(true).next().is_some();
    let external_reachable = !plan.external.backends.is_empty() || plan.external.when_empty == WhenEmpty::Drop;
    if has_external && external_reachable {
        let mut rules = Vec::new();
        if plan.external_local {
            // Pods and the node itself short-circuit to the cluster route, as with kube-proxy: only traffic
            // from outside is held to this node's endpoints and keeps its source address.
            if !plan.cluster.backends.is_empty() {
                if let Some(cidrs) = f.cidrs(&settings.cluster_cidrs) {
                    rules.push(format!("{} saddr {cidrs} goto {svc_chain}", f.ip()));
                }
                rules.push("fib saddr type local jump mark-for-masquerade".to_string());
                rules.push(format!("fib saddr type local goto {svc_chain}"));
            }
        } else {
            rules.push("jump mark-for-masquerade".to_string());
        }
        if plan.external.backends.is_empty() {
            rules.extend(empty_verdict(plan.external.when_empty).iter().map(|r| r.to_string()));
        } else if !plan.external_local && plan.external.backends == plan.cluster.backends {
            rules.push(format!("goto {svc_chain}"));
        } else {
            balance(&mut rules, &mut o, ids, plan, &key, true, &plan.external.backends);
        }
        o.chains.insert(ext_chain.clone(), rules);
    }

    // loadBalancerSourceRanges: LB IPs go through a firewall chain first.
    let firewalled = plan.source_ranges.is_some()
        && plan.frontends.iter().any(|fe| fe.kind == FrontendKind::LoadBalancer)
        && o.chains.contains_key(&ext_chain);
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

    // Dispatch elements.
    for fe in &plan.frontends {
        let external = fe.kind.is_external();
        let route = if external { &plan.external } else { &plan.cluster };
        let target = match fe.kind {
            FrontendKind::LoadBalancer if firewalled => &fw_chain,
            _ if external => &ext_chain,
            _ => &svc_chain,
        };
        let comment = fe.kind.as_str();
        let (live, dead, k) = if fe.kind == FrontendKind::NodePort {
            (MapName::ServiceNodeports, MapName::NoEndpointNodeports, format!("{proto} . {}", fe.port))
        } else {
            (MapName::ServiceIps, MapName::NoEndpointServices, format!("{} . {proto} . {}", fe.ip, fe.port))
        };
        if route.backends.is_empty() && route.when_empty == WhenEmpty::Reject {
            o.elements.insert((dead, k), format!("comment \"{comment}\" : goto {svc_chain}"));
        } else {
            o.elements.insert((live, k), format!("comment \"{comment}\" : goto {target}"));
        }
    }
    for ip in plan.cluster_ips() {
        o.cluster_ips.insert(ip);
    }

    o.fingerprint = fingerprint(&o);
    let note = format!(
        "{FINGERPRINT_PREFIX}{:016x} scheduler={} affinity={}",
        o.fingerprint,
        plan.scheduler,
        plan.affinity_timeout.map_or("none".to_string(), |t| t.to_string())
    );
    if let Some(last) = svc_rules.last_mut() {
        write!(last, " comment \"{note}\"").expect("write to String");
    }
    o.chains.insert(svc_chain, svc_rules);
    o
}

/// The rules that refuse new connections at once: a TCP reset for TCP (an ICMPv6 unreachable makes Linux
/// wait for a SYN retransmission before it gives up), ICMP port unreachable for the rest.
const REJECT: [&str; 2] = ["meta l4proto tcp reject with tcp reset", "reject"];

fn empty_verdict(when: WhenEmpty) -> &'static [&'static str] {
    match when {
        WhenEmpty::Reject => &REJECT,
        WhenEmpty::Drop => &["drop"],
    }
}

/// Appends the scheduler's rule over `backends` to `rules`: it picks a slot of the route's block in
/// `backend-slots` and goes to `backend-pick`; with affinity, the affinity rules and a pick from the
/// route's own verdict map of endpoint chains.
fn balance(
    rules: &mut Vec<String>,
    o: &mut ServiceObjects,
    ids: &mut dyn Ids,
    plan: &ServicePlan,
    key: &str,
    external: bool,
    backends: &[Backend],
) {
    let f = Fam(plan.family);
    let eps: Vec<String> = backends.iter().map(|b| names::endpoint(key, b.ip, b.port)).collect();
    let n = eps.len();
    let seed = (fnv1a(key.as_bytes()) & 0xffff_ffff) as u32;
    let selector = match plan.scheduler {
        Scheduler::Rr => format!("numgen inc mod {n}"),
        Scheduler::Sh => format!("jhash {} saddr mod {n} seed {seed:#010x}", f.ip()),
        Scheduler::Dh => format!("jhash {} daddr mod {n} seed {seed:#010x}", f.ip()),
        // The model only asks for schedulers this dataplane supports; anything else is random.
        _ => format!("numgen random mod {n}"),
    };
    let route = names::balance_map(key, external);
    if plan.affinity_timeout.is_some() {
        for ep in &eps {
            rules.push(format!("{} saddr @{} goto {ep}", f.ip(), names::affinity_set(ep)));
        }
        rules.push(format!("{selector} vmap @{route}"));
        o.maps.insert(route, eps.iter().enumerate().map(|(i, ep)| format!("{i} : goto {ep}")).collect());
        return;
    }
    let count = u32::try_from(n).expect("the model caps backends per route");
    let base = ids.slots(&route, count);
    for (i, ep) in (base..).zip(&eps) {
        o.elements.insert((MapName::BackendSlots, i.to_string()), format!(": {}", ids.mark(ep)));
    }
    o.slot_blocks.insert(route, (base, count));
    rules.push(format!("ct mark set {selector} offset {base} goto {BACKEND_PICK}"));
}

/// A hash of a chain's rules, to tell whether a chain needs rewriting.
pub(crate) fn rules_hash(rules: &[String]) -> u64 {
    fnv1a(rules.join("\n").as_bytes())
}

/// Stable 64-bit FNV-1a: the fingerprint must not change between builds or runs.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fingerprint(o: &ServiceObjects) -> u64 {
    let mut text = String::new();
    for (name, rules) in &o.chains {
        writeln!(text, "chain {name}").expect("write to String");
        for r in rules {
            writeln!(text, "  {r}").expect("write to String");
        }
    }
    for (name, t) in &o.sets {
        writeln!(text, "set {name} {t}").expect("write to String");
    }
    for (name, elems) in &o.maps {
        writeln!(text, "map {name} {}", elems.join(", ")).expect("write to String");
    }
    for ((map, k), v) in o.elements.iter().filter(|((map, _), _)| !map.is_backend_map()) {
        writeln!(text, "element {} {k} {v}", map.as_str()).expect("write to String");
    }
    for ip in &o.cluster_ips {
        writeln!(text, "cluster-ip {ip}").expect("write to String");
    }
    fnv1a(text.as_bytes())
}

/// The static part of a family's table: hooks, dispatch maps, shared sets and helper chains, shaped by the
/// node plan. Applying it again is harmless: maps and sets are created if missing, the static chains are
/// replaced atomically and the node's sets refilled.
pub fn skeleton(family: Family, table: &str, node: &NodePlan) -> String {
    let f = Fam(family);
    let (fam, ip, addr_type) = (f.table_family(), f.ip(), f.addr_type());
    let t = format!("{fam} {table}");
    let mut s = format!("add table {t}\n");
    for (map, ty) in [
        (MapName::ServiceIps, format!("{addr_type} . inet_proto . inet_service : verdict")),
        (MapName::ServiceNodeports, "inet_proto . inet_service : verdict".to_string()),
        (MapName::NoEndpointServices, format!("{addr_type} . inet_proto . inet_service : verdict")),
        (MapName::NoEndpointNodeports, "inet_proto . inet_service : verdict".to_string()),
    ] {
        writeln!(s, "add map {t} {} {{ type {ty}; }}", map.as_str()).expect("write to String");
    }
    for set in [MapName::BackendTraffic, MapName::BackendConnections] {
        writeln!(s, "add set {t} {} {{ type mark; counter; }}", set.as_str()).expect("write to String");
    }
    writeln!(s, "add map {t} {} {{ type mark : mark; }}", MapName::BackendSlots.as_str()).expect("write to String");
    writeln!(s, "add map {t} {} {{ type mark : {addr_type} . inet_service; }}", MapName::BackendAddrs.as_str())
        .expect("write to String");
    writeln!(s, "add set {t} {} {{ type {addr_type} . mark; }}", MapName::Hairpin.as_str()).expect("write to String");
    writeln!(s, "add set {t} {CLUSTER_IPS} {{ type {addr_type}; }}").expect("write to String");
    writeln!(s, "add set {t} {NODEPORT_IPS} {{ type {addr_type}; }}").expect("write to String");
    writeln!(s, "add set {t} {SERVICE_CIDRS} {{ type {addr_type}; flags interval; }}").expect("write to String");
    writeln!(s, "flush set {t} {NODEPORT_IPS}").expect("write to String");
    let nodeport_ips: Vec<String> = node.nodeport_ips(family).unwrap_or_default().iter().map(|a| a.to_string()).collect();
    if !nodeport_ips.is_empty() {
        writeln!(s, "add element {t} {NODEPORT_IPS} {{ {} }}", nodeport_ips.join(", ")).expect("write to String");
    }
    writeln!(s, "flush set {t} {SERVICE_CIDRS}").expect("write to String");
    if let Some(cidrs) = f.cidrs(&node.service_cidrs) {
        writeln!(s, "add element {t} {SERVICE_CIDRS} {cidrs}").expect("write to String");
    }

    // Every packet of a connection DNATed to a backend, both ways, and each new one, counted on the
    // backend's element (the lookup of a counted set bumps the element's counter).
    let accounting = vec![
        format!("ct status dnat ct mark @{}", MapName::BackendTraffic.as_str()),
        format!("ct state new ct status dnat ct mark @{}", MapName::BackendConnections.as_str()),
    ];
    // Where NodePorts are served: the node plan's addresses, or every local address but loopback.
    let nodeport_match = match node.nodeport_ips(family) {
        Some(_) => format!("{ip} daddr @{NODEPORT_IPS} meta l4proto . th dport"),
        None => format!("fib daddr type local {ip} daddr != {} meta l4proto . th dport", f.loopback()),
    };
    // The filter hooks run after DNAT (output at -90, after nat output at -100), so traffic that reaches
    // them still addressed to a Service address was not sent to any backend.
    let chains: Vec<(&str, Option<String>, Vec<String>)> = vec![
        ("nat-prerouting", Some("type nat hook prerouting priority -100".into()), vec!["jump services".into()]),
        ("nat-output", Some("type nat hook output priority -100".into()), vec!["jump services".into()]),
        ("nat-postrouting", Some("type nat hook postrouting priority 100".into()), vec!["jump masquerading".into()]),
        ("filter-input", Some("type filter hook input priority -110".into()), vec!["ct state new jump endpoints-check".into()]),
        ("filter-forward", Some("type filter hook forward priority -110".into()), vec!["ct state new jump endpoints-check".into()]),
        ("filter-output", Some("type filter hook output priority -90".into()), vec!["ct state new jump endpoints-check".into()]),
        ("accounting-prerouting", Some("type filter hook prerouting priority -90".into()), accounting.clone()),
        ("accounting-output", Some("type filter hook output priority -90".into()), accounting),
        (
            "services",
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @{}", MapName::ServiceIps.as_str()),
                format!("{nodeport_match} vmap @{}", MapName::ServiceNodeports.as_str()),
            ],
        ),
        (
            "endpoints-check",
            None,
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @{}", MapName::NoEndpointServices.as_str()),
                format!("{nodeport_match} vmap @{}", MapName::NoEndpointNodeports.as_str()),
                // A live ClusterIP on a port no Service has: refused, as kube-proxy does.
                format!("{ip} daddr @{CLUSTER_IPS} {}", REJECT[0]),
                format!("{ip} daddr @{CLUSTER_IPS} {}", REJECT[1]),
                // An address of the Service range that no Service has: dropped.
                format!("{ip} daddr @{SERVICE_CIDRS} drop"),
            ],
        ),
        // Where every scheduler's pick becomes the backend's mark (a slot without one, never expected, is
        // dropped rather than taken for a mark), and the mark a DNAT. The transport protocol must be known
        // for nft to accept a port in the mapping.
        (
            BACKEND_PICK,
            None,
            vec![format!("ct mark set ct mark map @{} goto {BACKEND_DNAT}", MapName::BackendSlots.as_str()), "drop".into()],
        ),
        (
            BACKEND_DNAT,
            None,
            std::iter::once(format!("{ip} saddr . ct mark @{} jump mark-for-masquerade", MapName::Hairpin.as_str()))
                .chain(["tcp", "udp", "sctp"].map(|p| {
                    format!("meta l4proto {p} dnat to ct mark map @{}", MapName::BackendAddrs.as_str())
                }))
                .collect(),
        ),
        ("mark-for-masquerade", None, vec![format!("meta mark set meta mark or {MASQUERADE_MARK:#x}")]),
        (
            "masquerading",
            None,
            vec![
                format!("meta mark & {MASQUERADE_MARK:#x} == 0 return"),
                format!("meta mark set meta mark xor {MASQUERADE_MARK:#x}"),
                "masquerade fully-random".into(),
            ],
        ),
    ];
    // Declare every chain before any rule jumps to one.
    for (name, hook, _) in &chains {
        match hook {
            Some(h) => writeln!(s, "add chain {t} {name} {{ {h}; policy accept; }}"),
            None => writeln!(s, "add chain {t} {name}"),
        }
        .expect("write to String");
    }
    for (name, _, rules) in chains {
        writeln!(s, "flush chain {t} {name}").expect("write to String");
        for r in rules {
            writeln!(s, "add rule {t} {name} {r}").expect("write to String");
        }
    }
    s
}

/// The shared chain that turns a scheduler's slot (in the conntrack mark) into the backend's mark.
pub const BACKEND_PICK: &str = "backend-pick";
/// The shared chain that DNATs a connection to the backend its mark names.
pub const BACKEND_DNAT: &str = "backend-dnat";
/// The set of every ClusterIP.
pub const CLUSTER_IPS: &str = "cluster-ips";
/// The set of addresses NodePorts are served on (when not every local address).
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// The set of Service CIDRs (`--service-cidr`).
pub const SERVICE_CIDRS: &str = "service-cidrs";

/// Family-specific spelling.
#[derive(Clone, Copy)]
pub(crate) struct Fam(pub Family);

impl Fam {
    pub(crate) fn table_family(self) -> &'static str {
        match self.0 {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn ip(self) -> &'static str {
        self.table_family()
    }
    fn addr_type(self) -> &'static str {
        match self.0 {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    fn loopback(self) -> &'static str {
        match self.0 {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1",
        }
    }
    /// An anonymous set of the CIDRs of this family, or `None` if there is none.
    fn cidrs(self, cidrs: &[IpNet]) -> Option<String> {
        let mine: Vec<String> = cidrs.iter().filter(|c| Family::of(&c.addr()) == self.0).map(|c| c.to_string()).collect();
        (!mine.is_empty()).then(|| format!("{{ {} }}", mine.join(", ")))
    }
    fn sockaddr(self, ip: IpAddr, port: u16) -> String {
        match self.0 {
            Family::V4 => format!("{ip}:{port}"),
            Family::V6 => format!("[{ip}]:{port}"),
        }
    }
}
