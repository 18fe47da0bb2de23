//! Switchyard's nftables dataplane.
//!
//! [`translate`] turns a plan into nft objects (pure); [`kernel`] is the one door to the kernel (`nft`, and
//! [`netlink`] for element-only changes); [`listing`] reads
//! a table back for restore and dump. [`NftablesDataplane`] reconciles: it adopts what is in the kernel,
//! rewrites only the Service ports whose objects changed (recognised by a fingerprint stored in the kernel),
//! each batch in one atomic transaction, and prunes what nothing references.

pub mod kernel;
pub mod listing;
pub mod names;
pub mod netlink;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use switchyard_model::dataplane::{Dataplane, Dump, Error, SyncReport};
use std::net::IpAddr;

use switchyard_model::{Family, FrontendKind, NodePlan, PlanKey, Scheduler, ServicePlan};
use tracing::{debug, warn};

use kernel::Nft;
use listing::Programmed;
use names::{MapName, TABLE};
use translate::{Fam, ServiceObjects, Settings};

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// The nftables dataplane: one table per family, named `switchyard`.
#[derive(Debug)]
pub struct NftablesDataplane {
    nft: Box<dyn Nft>,
    settings: Settings,
    tables: BTreeMap<Family, TableState>,
}

/// What the dataplane believes is in one family's table: exactly what was restored plus what it has
/// applied since.
#[derive(Debug, Default)]
struct TableState {
    services: HashMap<String, Programmed>,
    /// Which Service port owns each dispatch element, so two Services claiming one address and port cannot
    /// make every transaction fail.
    /// Only dispatch elements are here: backend elements (marks, slots) are unique by allocation.
    owners: HashMap<(MapName, String), String>,
    /// Service ports that lost an element to another one, retried whenever something else changes.
    conflicted: BTreeSet<String>,
    marks: HashMap<String, u32>,
    used_marks: BTreeSet<u32>,
    next_mark: u32,
    /// Allocated blocks of `backend-slots`: first slot -> count. A block is given back only once the
    /// transaction that stops using it is in the kernel, so no two routes ever share a slot.
    slot_blocks: BTreeMap<u32, u32>,
    /// The block each route has in the kernel (route -> first slot, count).
    route_blocks: HashMap<String, (u32, u32)>,
    /// Blocks allocated for a route in a transaction not yet applied.
    pending_blocks: HashMap<String, (u32, u32)>,
    next_slot: u32,
    /// The node plan the skeleton was last applied with (none yet in this run).
    applied_node: Option<NodePlan>,
    /// ClusterIPs in the kernel's `cluster-ips` set.
    cluster_ips: HashSet<IpAddr>,
    /// How many programmed Service ports have each ClusterIP.
    cluster_ip_refs: HashMap<IpAddr, usize>,
}

/// Slots live below this (numgen/jhash results are 32-bit; the offset must leave room for `mod`).
const SLOT_LIMIT: u32 = 0x7fff_0000;

impl translate::Ids for TableState {
    fn mark(&mut self, endpoint: &str) -> u32 {
        if let Some(&m) = self.marks.get(endpoint) {
            return m;
        }
        loop {
            self.next_mark = if self.next_mark >= 0x7fff_ffff { 1 } else { self.next_mark + 1 };
            if self.used_marks.insert(self.next_mark) {
                self.marks.insert(endpoint.to_string(), self.next_mark);
                return self.next_mark;
            }
        }
    }

    fn slots(&mut self, route: &str, n: u32) -> u32 {
        // A route keeps its block while its backends fit (shrinking frees nothing until applied).
        if let Some(&(base, count)) = self.route_blocks.get(route) {
            if n <= count {
                self.pending_blocks.insert(route.to_string(), (base, n));
                return base;
            }
        }
        if let Some(&(base, count)) = self.pending_blocks.get(route) {
            if count == n {
                return base;
            }
        }
        // The next free run of n slots after the last one handed out, wrapping around.
        let mut base = self.next_slot;
        let mut wrapped = false;
        loop {
            if base.saturating_add(n) > SLOT_LIMIT {
                assert!(!wrapped, "backend-slots exhausted");
                (base, wrapped) = (0, true);
            }
            let overlap = self.slot_blocks.range(..base + n).next_back().filter(|(b, c)| **b + **c > base);
            match overlap {
                Some((b, c)) => base = b + c,
                None => break,
            }
        }
        self.slot_blocks.insert(base, n);
        self.pending_blocks.insert(route.to_string(), (base, n));
        self.next_slot = base + n;
        base
    }
}

impl TableState {
    /// After a Service port's transaction: its routes' blocks are now `new`'s; `old`'s others are free.
    fn commit_blocks(&mut self, old: &BTreeMap<String, (u32, u32)>, new: Option<&BTreeMap<String, (u32, u32)>>) {
        for (route, (base, _)) in old {
            if new.and_then(|n| n.get(route)).map(|b| b.0) != Some(*base) {
                self.slot_blocks.remove(base);
                self.route_blocks.remove(route);
            }
        }
        for (route, &(base, n)) in new.into_iter().flatten() {
            self.pending_blocks.remove(route);
            self.slot_blocks.insert(base, n);
            self.route_blocks.insert(route.clone(), (base, n));
        }
    }

    /// Before a sync: blocks handed out by an earlier one and not committed (its Service port was unchanged
    /// or failed) are free again; a route asks anew.
    fn forget_pending_blocks(&mut self) {
        for (route, (base, _)) in std::mem::take(&mut self.pending_blocks) {
            if self.route_blocks.get(&route).map(|b| b.0) != Some(base) {
                self.slot_blocks.remove(&base);
            }
        }
    }

    /// After a failed transaction: the blocks newly allocated for it are free again.
    fn forget_blocks(&mut self, new: Option<&BTreeMap<String, (u32, u32)>>) {
        for (route, block) in new.into_iter().flatten() {
            if self.pending_blocks.get(route) == Some(block) {
                self.pending_blocks.remove(route);
                if self.route_blocks.get(route).map(|b| b.0) != Some(block.0) {
                    self.slot_blocks.remove(&block.0);
                }
            }
        }
    }
}

impl NftablesDataplane {
    /// A dataplane that talks to the kernel through `nft`.
    pub fn new(settings: Settings, nft: Box<dyn Nft>) -> Self {
        NftablesDataplane { nft, settings, tables: BTreeMap::new() }
    }

    fn table(family: Family) -> String {
        format!("{} {TABLE}", Fam(family).table_family())
    }

    fn list(&self, family: Family) -> Result<listing::Listing, Error> {
        match self.nft.list("table", Fam(family).table_family(), TABLE)? {
            Some(json) => listing::parse(&json),
            None => Ok(listing::Listing::default()),
        }
    }

    fn sync_family(
        &mut self,
        family: Family,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
        report: &mut SyncReport,
    ) -> Result<(), Error> {
        let t = Self::table(family);
        let settings = self.settings.clone();
        let state = self.tables.entry(family).or_default();
        state.forget_pending_blocks();
        let plans: BTreeMap<String, &ServicePlan> = match changed {
            Some(keys) => keys
                .iter()
                .filter(|k| k.1 == family)
                .filter_map(|k| desired.get(k).map(|p| (names::service_key(&p.name), p)))
                .collect(),
            None => desired.values().filter(|p| p.family == family).map(|p| (names::service_key(&p.name), p)).collect(),
        };
        let mut todo: BTreeSet<String> = match changed {
            Some(keys) => keys.iter().filter(|k| k.1 == family).map(|k| names::service_key(&k.0)).collect(),
            None => plans.keys().chain(state.services.keys()).cloned().collect(),
        };
        let all_plans: BTreeMap<String, &ServicePlan> = if state.conflicted.is_empty() {
            plans
        } else {
            todo.extend(state.conflicted.iter().cloned());
            desired.values().filter(|p| p.family == family).map(|p| (names::service_key(&p.name), p)).collect()
        };

        // Translate what changed. Elements of everything being rewritten or removed count as free, so a
        // Service that takes over an address from one removed in the same batch can claim it. Only the
        // changed Service ports are looked at: the cost is independent of the table's size.
        let released: HashSet<(MapName, String)> =
            todo.iter().filter_map(|k| state.services.get(k)).flat_map(|p| dispatch_keys(&p.elements).cloned()).collect();
        let mut claimed: HashMap<(MapName, String), String> = HashMap::new();
        let mut work: Vec<(String, Option<ServiceObjects>, bool)> = Vec::new();
        for key in &todo {
            let new = all_plans.get(key).map(|p| translate::service(p, &settings, state));
            let mut conflict = false;
            let new = new.map(|mut objects| {
                objects.elements.retain(|e, _| {
                    if e.0.is_backend_map() {
                        return true;
                    }
                    let owner = claimed
                        .get(e)
                        .or_else(|| if released.contains(e) { None } else { state.owners.get(e) });
                    match owner {
                        Some(other) if other != key => {
                            warn!(service = %key, other = %other, element = %e.1, map = e.0.as_str(),
                                "address and port already used by another Service; not programmed for this one");
                            conflict = true;
                            false
                        }
                        _ => {
                            claimed.insert(e.clone(), key.clone());
                            true
                        }
                    }
                });
                objects
            });
            let old = state.services.get(key);
            let unchanged = match &new {
                Some(n) => {
                    !conflict
                        && old.and_then(|p| p.fingerprint) == Some(n.fingerprint)
                        && old.is_some_and(|p| backend_elements(&p.elements).eq(backend_elements(&n.elements)))
                        && !state.conflicted.contains(key)
                }
                None => !state.services.contains_key(key),
            };
            if unchanged {
                report.unchanged += 1;
                continue;
            }
            work.push((key.clone(), new, conflict));
        }
        let skeleton_current = state.applied_node.as_ref() == Some(node);
        if work.is_empty() && skeleton_current {
            return Ok(());
        }

        let skeleton = if skeleton_current { String::new() } else { translate::skeleton(family, TABLE, node) };
        let script_of = |items: &[(String, Option<ServiceObjects>, bool)], state: &TableState| {
            let mut s = skeleton.clone();
            let mut refs = state.cluster_ip_refs.clone();
            let empty = Programmed::default();
            let old = |key: &String| state.services.get(key).unwrap_or(&empty);
            for phase in [Phase::Remove, Phase::Add] {
                for (key, new, _) in items {
                    diff(&mut s, &t, family, old(key), new.as_ref(), phase);
                }
            }
            for (key, new, _) in items {
                count_cluster_ips(&mut refs, old(key), new.as_ref());
            }
            let ips = cluster_ip_changes(&mut s, &t, &state.cluster_ips, &refs);
            (s, ips)
        };
        let (script, ips) = script_of(&work, state);
        if work.is_empty() {
            // Only the skeleton: nothing to fall back to, the caller restores and retries.
            self.nft.apply(&script)?;
            state.applied_node = Some(node.clone());
            return Ok(());
        }
        // The `cluster-ips` changes of every script the kernel took: `state.cluster_ips` mirrors the kernel.
        let mut ips_applied = Vec::new();
        let applied: Vec<bool> = match self.nft.apply(&script) {
            Ok(()) => {
                ips_applied.push(ips);
                vec![true; work.len()]
            }
            Err(e) if work.len() > 1 => {
                warn!(error = %e, services = work.len(), "nftables batch rejected; applying Service ports one by one");
                work.iter()
                    .map(|item| {
                        let (script, ips) = script_of(std::slice::from_ref(item), state);
                        let r = self.nft.apply(&script);
                        if r.is_ok() {
                            ips_applied.push(ips);
                        }
                        r
                    })
                    .zip(&work)
                    .map(|(r, (key, _, _))| match r {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(service = %key, error = %e, "nftables rejected this Service port; its old rules stay");
                            report.failed.push((key_of(key, family), e.to_string()));
                            false
                        }
                    })
                    .collect()
            }
            Err(e) => {
                if let Some((key, _, _)) = work.first() {
                    warn!(service = %key, error = %e, "nftables rejected this Service port; its old rules stay");
                    report.failed.push((key_of(key, family), e.to_string()));
                }
                vec![false; work.len()]
            }
        };
        if applied.iter().any(|&ok| ok) {
            state.applied_node = Some(node.clone());
        }
        for (gone, added) in ips_applied {
            for ip in gone {
                state.cluster_ips.remove(&ip);
            }
            state.cluster_ips.extend(added);
        }
        for ((key, new, conflict), ok) in work.into_iter().zip(applied) {
            if !ok {
                state.forget_blocks(new.as_ref().map(|n| &n.slot_blocks));
                continue;
            }
            let empty = Programmed::default();
            count_cluster_ips(&mut state.cluster_ip_refs, state.services.get(&key).unwrap_or(&empty), new.as_ref());
            if let Some(old) = state.services.remove(&key) {
                for e in dispatch_keys(&old.elements) {
                    if state.owners.get(e) == Some(&key) {
                        state.owners.remove(e);
                    }
                }
                // Backends that are gone give their conntrack mark back, routes their old slot blocks.
                for ep in old.endpoints.iter().filter(|e| !new.as_ref().is_some_and(|n| n.endpoints.contains(*e))) {
                    if let Some(m) = state.marks.remove(ep) {
                        state.used_marks.remove(&m);
                    }
                }
                state.commit_blocks(&old.slot_blocks, new.as_ref().map(|n| &n.slot_blocks));
            } else {
                state.commit_blocks(&BTreeMap::new(), new.as_ref().map(|n| &n.slot_blocks));
            }
            match new {
                Some(n) => {
                    for e in dispatch_keys(&n.elements) {
                        state.owners.insert(e.clone(), key.clone());
                    }
                    if conflict {
                        state.conflicted.insert(key.clone());
                    } else {
                        state.conflicted.remove(&key);
                    }
                    debug!(service = %key, family = ?family, "programmed");
                    report.written += 1;
                    state.services.insert(key, programmed(n, conflict));
                }
                None => {
                    state.conflicted.remove(&key);
                    state.services.remove(&key);
                    report.removed += 1;
                }
            }
        }
        Ok(())
    }
}

fn key_of(key: &str, family: Family) -> PlanKey {
    (names::parse_service_key(key).expect("keys come from names::service_key"), family)
}

fn programmed(n: ServiceObjects, conflict: bool) -> Programmed {
    Programmed {
        // A Service port that lost an element is not what its plan asks for: leave no fingerprint, so that
        // it is rewritten once the conflict is gone.
        fingerprint: (!conflict).then_some(n.fingerprint),
        rules: n.chains.iter().map(|(c, rules)| (c.clone(), translate::rules_hash(rules))).collect(),
        chains: n.chains.into_keys().collect(),
        sets: n.sets,
        maps: n.maps.into_keys().collect(),
        elements: n.elements,
        endpoints: n.endpoints,
        slot_blocks: n.slot_blocks,
    }
}

/// The keys of the dispatch elements (frontends) among a Service port's elements.
fn dispatch_keys(elements: &BTreeMap<(MapName, String), String>) -> impl Iterator<Item = &(MapName, String)> {
    elements.keys().filter(|(map, _)| !map.is_backend_map())
}

/// The elements of the backend maps among a Service port's elements (those its fingerprint leaves out).
fn backend_elements(elements: &BTreeMap<(MapName, String), String>) -> impl Iterator<Item = (&(MapName, String), &String)> {
    elements.iter().filter(|((map, _), _)| map.is_backend_map())
}

/// The chains of `old` that `new` has with the same rules, known because this run wrote them: they are
/// neither flushed nor refilled. None when an affinity set is recreated (its timeout changed): the kernel
/// deletes no set that a rule still names, so every chain is rewritten then.
fn kept_chains<'a>(old: &'a Programmed, new: &ServiceObjects) -> BTreeSet<&'a str> {
    if old.sets.iter().any(|(set, timeout)| new.sets.get(set).is_some_and(|t| t != timeout)) {
        return BTreeSet::new();
    }
    old.rules
        .iter()
        .filter(|(c, hash)| new.chains.get(*c).map(|rules| translate::rules_hash(rules)) == Some(**hash))
        .map(|(c, _)| c.as_str())
        .collect()
}

/// The ClusterIPs a Service port's dispatch elements name.
fn cluster_ips_of(elements: &BTreeMap<(MapName, String), String>) -> BTreeSet<IpAddr> {
    let clusterip = format!("comment \"{}\"", FrontendKind::ClusterIp.as_str());
    elements
        .iter()
        .filter(|((map, _), v)| matches!(map, MapName::ServiceIps | MapName::NoEndpointServices) && v.starts_with(&clusterip))
        .filter_map(|((_, k), _)| k.split(" . ").next()?.parse().ok())
        .collect()
}

/// Moves the ClusterIP reference counts from `old` to `new`.
fn count_cluster_ips(refs: &mut HashMap<IpAddr, usize>, old: &Programmed, new: Option<&ServiceObjects>) {
    for ip in cluster_ips_of(&old.elements) {
        if let Some(n) = refs.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                refs.remove(&ip);
            }
        }
    }
    for ip in new.map(|n| cluster_ips_of(&n.elements)).unwrap_or_default() {
        *refs.entry(ip).or_default() += 1;
    }
}

/// Appends the `cluster-ips` set changes that make it hold exactly the referenced ClusterIPs; returns them
/// (gone, added).
fn cluster_ip_changes(
    s: &mut String,
    t: &str,
    present: &HashSet<IpAddr>,
    refs: &HashMap<IpAddr, usize>,
) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let mut gone: Vec<IpAddr> = present.iter().filter(|ip| !refs.contains_key(ip)).copied().collect();
    let mut new: Vec<IpAddr> = refs.keys().filter(|ip| !present.contains(ip)).copied().collect();
    gone.sort();
    new.sort();
    for ip in &gone {
        writeln!(s, "delete element {t} {} {{ {ip} }}", translate::CLUSTER_IPS).expect("write to String");
    }
    for ip in &new {
        writeln!(s, "add element {t} {} {{ {ip} }}", translate::CLUSTER_IPS).expect("write to String");
    }
    (gone, new)
}

/// Which half of a Service port's changes [`diff`] writes. A batch writes every Service port's removals
/// before any one's additions, so that a Service port can take over an address another one gives up in
/// the same transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Unlink, flush and delete what `new` no longer has.
    Remove,
    /// Create and link what `new` has that `old` does not.
    Add,
}

/// Appends to `s` the commands that turn `old` into `new` (or remove `old` when `new` is `None`), in an
/// order the kernel accepts within one transaction: unlink, flush, delete, then create and link.
fn diff(s: &mut String, t: &str, family: Family, old: &Programmed, new: Option<&ServiceObjects>, phase: Phase) {
    let empty = ServiceObjects::default();
    let new = new.unwrap_or(&empty);
    let mut w = |line: String| {
        s.push_str(&line);
        s.push('\n');
    };
    if phase == Phase::Add {
        return diff_add(&mut w, t, family, old, new);
    }
    // Elements go one command per map: one netlink message for many elements.
    let mut gone: BTreeMap<MapName, Vec<&str>> = BTreeMap::new();
    for ((map, k), v) in &old.elements {
        if new.elements.get(&(*map, k.clone())) != Some(v) {
            gone.entry(*map).or_default().push(k);
        }
    }
    for (map, keys) in gone {
        w(format!("delete element {t} {} {{ {} }}", map.as_str(), keys.join(", ")));
    }
    let kept = kept_chains(old, new);
    for c in old.chains.iter().filter(|c| !kept.contains(c.as_str())) {
        w(format!("flush chain {t} {c}"));
    }
    // Scheduler maps point at endpoint chains: empty or remove them before any chain goes.
    // (Flushed before a delete too, so that no element still names an endpoint chain when that chain is
    // deleted later in the transaction, whatever order the kernel releases a deleted map's references in.)
    for map in &old.maps {
        w(format!("flush map {t} {map}"));
        if !new.maps.contains_key(map) {
            w(format!("delete map {t} {map}"));
        }
    }
    for c in old.chains.iter().filter(|c| !new.chains.contains_key(*c)) {
        w(format!("delete chain {t} {c}"));
    }
    for (set, timeout) in &old.sets {
        if new.sets.get(set) != Some(timeout) {
            w(format!("delete set {t} {set}"));
        }
    }
}

/// The second half of [`diff`]: what `new` creates and links.
fn diff_add(w: &mut dyn FnMut(String), t: &str, family: Family, old: &Programmed, new: &ServiceObjects) {
    let addr_type = match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    };
    for (set, timeout) in &new.sets {
        if old.sets.get(set) != Some(timeout) {
            w(format!("add set {t} {set} {{ type {addr_type}; flags dynamic,timeout; timeout {timeout}s; }}"));
        }
    }
    for map in new.maps.keys().filter(|m| !old.maps.contains(*m)) {
        w(format!("add map {t} {map} {{ typeof numgen random mod 1 : verdict; }}"));
    }
    for c in new.chains.keys().filter(|c| !old.chains.contains(*c)) {
        w(format!("add chain {t} {c}"));
    }
    for (map, elems) in &new.maps {
        w(format!("add element {t} {map} {{ {} }}", elems.join(", ")));
    }
    let kept = kept_chains(old, new);
    for (c, rules) in new.chains.iter().filter(|(c, _)| !kept.contains(c.as_str())) {
        for r in rules {
            w(format!("add rule {t} {c} {r}"));
        }
    }
    let mut added: BTreeMap<MapName, Vec<String>> = BTreeMap::new();
    for ((map, k), v) in &new.elements {
        if old.elements.get(&(*map, k.clone())) != Some(v) {
            added.entry(*map).or_default().push(if v.is_empty() { k.clone() } else { format!("{k} {v}") });
        }
    }
    for (map, elems) in added {
        w(format!("add element {t} {} {{ {} }}", map.as_str(), elems.join(", ")));
    }
}

impl Dataplane for NftablesDataplane {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn supports(&self, scheduler: Scheduler) -> bool {
        matches!(scheduler, Scheduler::Random | Scheduler::Rr | Scheduler::Sh | Scheduler::Dh)
    }

    fn restore(&mut self) -> Result<(), Error> {
        for family in FAMILIES {
            let listing = self.list(family)?;
            let restored = listing::restore(&listing);
            let mut state = TableState::default();
            for (key, p) in &restored.services {
                for e in dispatch_keys(&p.elements) {
                    state.owners.insert(e.clone(), key.clone());
                }
                for ip in cluster_ips_of(&p.elements) {
                    *state.cluster_ip_refs.entry(ip).or_default() += 1;
                }
            }
            state.cluster_ips = listing
                .set_elements
                .get(translate::CLUSTER_IPS)
                .into_iter()
                .flatten()
                .filter_map(|e| e.parse().ok())
                .collect();
            for p in restored.services.values() {
                for (route, &(base, n)) in &p.slot_blocks {
                    state.slot_blocks.insert(base, n);
                    state.route_blocks.insert(route.clone(), (base, n));
                    state.next_slot = state.next_slot.max(base + n);
                }
            }
            state.used_marks = restored.marks.values().copied().collect();
            state.next_mark = state.used_marks.iter().next_back().copied().unwrap_or(0);
            state.marks = restored.marks;
            state.services = restored.services;
            self.tables.insert(family, state);
        }
        Ok(())
    }

    fn sync(
        &mut self,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
    ) -> Result<SyncReport, Error> {
        let mut report = SyncReport::default();
        for family in FAMILIES {
            self.sync_family(family, node, desired, changed, &mut report)?;
        }
        Ok(report)
    }

    fn dump(&self) -> Result<Dump, Error> {
        let mut dump = Dump::default();
        for family in FAMILIES {
            dump.services.extend(listing::dump(&self.list(family)?, family)?.services);
        }
        dump.services.sort_by(|a, b| (&a.namespace, &a.name, &a.port, a.protocol).cmp(&(&b.namespace, &b.name, &b.port, b.protocol)));
        Ok(dump)
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        let mut script = String::new();
        for family in FAMILIES {
            let t = Self::table(family);
            // `add` first so that the delete succeeds whether or not the table exists.
            writeln!(script, "add table {t}\ndelete table {t}").expect("write to String");
        }
        self.nft.apply(&script)?;
        self.tables.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
