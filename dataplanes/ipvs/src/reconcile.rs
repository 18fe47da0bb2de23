//! The reconciler: what the dataplane believes is in the kernel, and the diff that brings the kernel to the
//! plans.
//!
//! Per family it keeps the kernel's view of Switchyard's virtual services (with destinations and
//! weights), the dummy interface's addresses and the companion table's shared sets, and per Service port
//! what it owns. A sync translates the Service ports that changed (all of them in a full sync), then:
//! 1. adds the dummy addresses they need;
//! 2. adds and edits virtual services and destinations; a destination that leaves a plan is set to weight 0
//!    and tracked as draining (UDP and SCTP ones, which have no connection to finish, are deleted at once,
//!    as kube-proxy does);
//! 3. applies the companion table's changes in one `nft` transaction (one per Service port if the kernel
//!    rejects the batch);
//! 4. deletes the virtual services of frontends that are gone, then the addresses nothing needs.
//!
//! A full sync also deletes Switchyard's virtual services that no plan has. Draining destinations are
//! deleted by [`Inner::drain`] once they have no active or inactive connection, or once the grace period
//! has passed; a restore finds weight-0 destinations and drains them again, so none is left behind.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;
use std::time::Instant;

use switchyard_ipvs_netlink::{Protocol, ServiceId};
use switchyard_model::dataplane::{Dump, SyncReport};
use switchyard_model::{Family, FrontendKind, NodePlan, PlanKey, ServicePlan};
use switchyard_nftables::names::{self, MapName};
use tracing::{debug, info, warn};

use crate::kernel::{error_chain, Error, Kernel, Result};
use crate::listing;
use crate::translate::{self, ServiceObjects, Virtual, DUMMY_INTERFACE, FWMARK_BASE, OWNER_FLAG, TABLE};
use crate::Settings;

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

/// Reference counts of shared members (an address used by several Service ports).
#[derive(Clone, Debug, Default)]
struct Refs(HashMap<IpAddr, usize>);

impl Refs {
    fn add<'a>(&mut self, ips: impl IntoIterator<Item = &'a IpAddr>) {
        for ip in ips {
            *self.0.entry(*ip).or_default() += 1;
        }
    }
    fn remove<'a>(&mut self, ips: impl IntoIterator<Item = &'a IpAddr>) {
        for ip in ips {
            if let Some(n) = self.0.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.0.remove(ip);
                }
            }
        }
    }
    fn has(&self, ip: &IpAddr) -> bool {
        self.0.contains_key(ip)
    }
}

/// What one Service port owns in one family.
#[derive(Clone, Debug, Default)]
struct Owned {
    ipvs: BTreeSet<ServiceId>,
    elements: BTreeMap<ServiceId, String>,
    chains: BTreeSet<String>,
    fingerprint: Option<u64>,
    addresses: BTreeSet<IpAddr>,
    cluster_ips: BTreeSet<IpAddr>,
    hairpin: BTreeSet<IpAddr>,
    nodeports: bool,
}

impl Owned {
    fn of(o: &ServiceObjects, nodeports: bool, conflict: bool) -> Owned {
        Owned {
            ipvs: o.ipvs.keys().copied().collect(),
            elements: o.elements.clone(),
            chains: o.chains.keys().cloned().collect(),
            // A Service port that lost a frontend to another is not what its plan asks for: leave no
            // fingerprint, so that it is rewritten once the conflict is gone.
            fingerprint: (!conflict).then_some(o.fingerprint),
            addresses: o.addresses.clone(),
            cluster_ips: o.cluster_ips.clone(),
            hairpin: o.hairpin.clone(),
            nodeports,
        }
    }
}

/// One family's state.
#[derive(Debug, Default)]
struct FamilyState {
    /// Switchyard's virtual services as the kernel has them.
    ipvs: BTreeMap<ServiceId, Virtual>,
    /// The dummy interface's addresses.
    addresses: BTreeSet<IpAddr>,
    /// The `cluster-ips` set.
    cluster_ips: BTreeSet<IpAddr>,
    /// The backends in the `hairpin` set.
    hairpin: BTreeSet<IpAddr>,
    keys: BTreeMap<String, Owned>,
    ipvs_owner: HashMap<ServiceId, String>,
    address_refs: Refs,
    cluster_ip_refs: Refs,
    hairpin_refs: Refs,
    /// Service ports that lost a frontend to another, retried whenever something changes.
    conflicted: BTreeSet<String>,
    marks: BTreeMap<String, u32>,
    /// The node plan and NodePort addresses the table was last synced with.
    applied_node: Option<(NodePlan, Vec<IpAddr>)>,
    /// Set by a restore: the next sync is a full one whatever it is asked.
    needs_full: bool,
}

impl FamilyState {
    fn mark_of(marks: &mut BTreeMap<String, u32>, key: &str) -> u32 {
        if let Some(&m) = marks.get(key) {
            return m;
        }
        let used: BTreeSet<u32> = marks.values().copied().collect();
        let mark = (1..=0xffffu32).map(|n| FWMARK_BASE | n).find(|m| !used.contains(m)).unwrap_or(FWMARK_BASE | 0xffff);
        marks.insert(key.to_string(), mark);
        mark
    }
}

/// One Service port's work in a sync.
struct Work {
    key: String,
    new: Option<ServiceObjects>,
    conflict: bool,
    graceful: bool,
    nodeports: bool,
    /// Whether anything was changed in the kernel for it.
    touched: bool,
    ok: bool,
}

/// The reconciler.
#[derive(Debug)]
pub(crate) struct Inner {
    kernel: Box<dyn Kernel>,
    settings: Settings,
    families: BTreeMap<Family, FamilyState>,
    /// Draining destinations: (service, address, port) -> when they are deleted whatever their connections.
    draining: BTreeMap<(ServiceId, IpAddr, u16), Instant>,
    dummy: Option<u32>,
    prepared: bool,
}

fn family_of(id: &ServiceId) -> Family {
    match id.family() {
        switchyard_ipvs_netlink::Family::Ipv4 => Family::V4,
        switchyard_ipvs_netlink::Family::Ipv6 => Family::V6,
    }
}

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

impl Inner {
    pub(crate) fn new(settings: Settings, kernel: Box<dyn Kernel>) -> Inner {
        Inner { kernel, settings, families: BTreeMap::new(), draining: BTreeMap::new(), dummy: None, prepared: false }
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn draining(&self) -> &BTreeMap<(ServiceId, IpAddr, u16), Instant> {
        &self.draining
    }

    /// Sets the sysctls IPVS needs and makes sure the dummy interface exists; once per dataplane.
    fn prepare(&mut self) -> Result<()> {
        if self.prepared {
            return Ok(());
        }
        let release = self.kernel.read_sysctl("kernel.osrelease")?.unwrap_or_default();
        let version: Vec<u32> =
            release.split(|c: char| !c.is_ascii_digit()).take(2).filter_map(|s| s.parse().ok()).collect();
        let mut wanted: Vec<(&str, &str, bool)> = vec![
            // IPVS keeps conntrack entries, so that the companion table's masquerade applies to its NAT.
            ("net.ipv4.vs.conntrack", "1", false),
            // Connections to a deleted destination are expired, so clients reconnect elsewhere.
            ("net.ipv4.vs.expire_nodest_conn", "1", false),
            // Persistence templates pointing at a weight-0 destination expire, so affinity moves on.
            ("net.ipv4.vs.expire_quiescent_template", "1", false),
            ("net.ipv4.ip_forward", "1", false),
        ];
        if version.as_slice() < [5, 9].as_slice() {
            // Before 5.9, reusing a connection with conntrack on delayed new connections by a second.
            wanted.push(("net.ipv4.vs.conn_reuse_mode", "0", false));
        } else {
            let current = self.kernel.read_sysctl("net.ipv4.vs.conn_reuse_mode")?;
            info!(sysctl = "net.ipv4.vs.conn_reuse_mode", value = current.as_deref().unwrap_or("?"), kernel = %release,
                "left as is (the kernel reschedules reused connections correctly since 5.9)");
        }
        if self.settings.strict_arp {
            // Do not answer ARP for the dummy interface's addresses on other interfaces.
            wanted.push(("net.ipv4.conf.all.arp_ignore", "1", true));
            wanted.push(("net.ipv4.conf.all.arp_announce", "2", true));
        }
        for (name, value, at_least) in wanted {
            let current = self.kernel.read_sysctl(name)?;
            let Some(current) = current else {
                return Err(Error::Sysctl {
                    name: name.into(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "missing (is the ip_vs module loaded?)"),
                });
            };
            let enough = match (current.parse::<u32>(), value.parse::<u32>()) {
                (Ok(c), Ok(v)) if at_least => c >= v,
                _ => current == value,
            };
            if enough {
                info!(sysctl = name, value = %current, "sysctl already as IPVS needs it");
            } else {
                self.kernel.write_sysctl(name, value)?;
                info!(sysctl = name, from = %current, to = value, "sysctl set for IPVS");
            }
        }
        let index = self.kernel.ensure_dummy(DUMMY_INTERFACE)?;
        info!(interface = DUMMY_INTERFACE, index, "dummy interface for Service addresses is up");
        self.dummy = Some(index);
        self.prepared = true;
        Ok(())
    }

    /// Switchyard's virtual services of the kernel, with destinations.
    fn our_services(
        &mut self,
    ) -> Result<Vec<(switchyard_ipvs_netlink::Service, Vec<switchyard_ipvs_netlink::Destination>)>> {
        let services = self.kernel.ipvs_services()?;
        let mut out = Vec::new();
        for s in services.into_iter().filter(|s| s.flags.contains(OWNER_FLAG)) {
            let dests = self.kernel.ipvs_destinations(&s.id)?;
            out.push((s, dests));
        }
        Ok(out)
    }

    fn table(&mut self, family: Family) -> Result<listing::Table> {
        let fam = translate::Fam(family).ip();
        match self.kernel.nft_list(fam, TABLE)? {
            Some(json) => Ok(listing::parse(&json)?),
            None => Ok(listing::Table::default()),
        }
    }

    pub(crate) fn restore(&mut self) -> Result<()> {
        let services = self.our_services()?;
        let dummy = self.kernel.link_index(DUMMY_INTERFACE)?;
        let addresses = match dummy {
            Some(index) => self.kernel.addresses()?.into_iter().filter(|a| a.index == index).map(|a| a.ip).collect(),
            None => Vec::new(),
        };
        let now = Instant::now();
        let grace = self.settings.grace_period;
        let mut families = BTreeMap::new();
        for family in FAMILIES {
            let table = self.table(family)?;
            let mut st = FamilyState { needs_full: true, ..FamilyState::default() };
            for (s, dests) in services.iter().filter(|(s, _)| family_of(&s.id) == family) {
                for d in dests.iter().filter(|d| d.weight == 0) {
                    self.draining.entry((s.id, d.addr, d.port)).or_insert(now + grace);
                }
                st.ipvs.insert(s.id, Virtual::from_kernel(s, dests));
            }
            st.addresses = addresses.iter().copied().filter(|ip| Family::of(ip) == family).collect();
            st.cluster_ips = table.cluster_ips.clone();
            st.hairpin = table.hairpin.clone();
            for (key, objects) in table.keys {
                let mut owned = Owned {
                    chains: objects.chains,
                    fingerprint: objects.fingerprint,
                    elements: objects.elements,
                    ..Owned::default()
                };
                owned.ipvs = owned.elements.keys().copied().collect();
                owned.nodeports = owned.elements.values().any(|v| listing::kind_of(v) == Some(FrontendKind::NodePort));
                if let Some(mark) = objects.fwmark {
                    owned.ipvs.insert(ServiceId::fwmark(translate::ipvs_family(family), mark));
                    st.marks.insert(key.clone(), mark);
                }
                for id in &owned.ipvs {
                    st.ipvs_owner.insert(*id, key.clone());
                }
                st.keys.insert(key, owned);
            }
            families.insert(family, st);
        }
        self.families = families;
        self.dummy = dummy;
        debug!(draining = self.draining.len(), "restored");
        Ok(())
    }

    /// Where NodePorts are served in a family: the node plan's addresses, or every global address of the
    /// node but the dummy interface's.
    fn nodeport_ips(&mut self, family: Family, node: &NodePlan) -> Result<Vec<IpAddr>> {
        let mut ips = match node.nodeport_ips(family) {
            Some(ips) => ips.to_vec(),
            None => {
                let dummy = self.dummy;
                self.kernel
                    .addresses()?
                    .into_iter()
                    .filter(|a| a.global && Some(a.index) != dummy && Family::of(&a.ip) == family)
                    .map(|a| a.ip)
                    .collect()
            }
        };
        // No NodePorts on loopback with IPVS (as with kube-proxy's IPVS mode): IPVS NATs a 127.0.0.1-sourced
        // connection to a pod but its replies never find their way back, so `--localhost-nodeports` is an
        // nftables/eBPF feature.
        ips.retain(|ip| Family::of(ip) == family && !ip.is_loopback());
        ips.sort();
        ips.dedup();
        Ok(ips)
    }

    pub(crate) fn sync(
        &mut self,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
    ) -> Result<SyncReport> {
        self.prepare()?;
        let mut report = SyncReport::default();
        for family in FAMILIES {
            self.sync_family(family, node, desired, changed, &mut report)?;
        }
        if let Err(e) = self.drain() {
            warn!(error = %error_chain(&e), "checking draining IPVS destinations failed; will retry");
        }
        Ok(report)
    }

    fn sync_family(
        &mut self,
        family: Family,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let nodeport_ips = self.nodeport_ips(family, node)?;
        let settings = self.settings.masquerade.clone();
        let st = self.families.entry(family).or_default();
        let full = changed.is_none() || st.needs_full;
        let node_current = st.applied_node.as_ref().is_some_and(|(n, ips)| n == node && *ips == nodeport_ips);
        let family_plans = || desired.values().filter(|p| p.family == family).map(|p| (names::service_key(&p.name), p));
        let changed_keys: BTreeSet<String> =
            changed.into_iter().flatten().filter(|k| k.1 == family).map(|k| names::service_key(&k.0)).collect();
        let (plans, mut todo): (BTreeMap<String, &ServicePlan>, BTreeSet<String>) =
            if full || !node_current || !st.conflicted.is_empty() {
                let plans: BTreeMap<String, &ServicePlan> = family_plans().collect();
                let mut todo = if full { plans.keys().chain(st.keys.keys()).cloned().collect() } else { changed_keys };
                if !node_current {
                    let has_nodeport = |p: &&ServicePlan| p.frontends.iter().any(|f| f.kind == FrontendKind::NodePort);
                    todo.extend(plans.iter().filter(|(_, p)| has_nodeport(p)).map(|(k, _)| k.clone()));
                    todo.extend(st.keys.iter().filter(|(_, o)| o.nodeports).map(|(k, _)| k.clone()));
                }
                todo.extend(st.conflicted.iter().cloned());
                (plans, todo)
            } else {
                let plans = changed
                    .into_iter()
                    .flatten()
                    .filter(|k| k.1 == family)
                    .filter_map(|k| desired.get(k).map(|p| (names::service_key(&p.name), p)))
                    .collect();
                (plans, changed_keys)
            };
        todo.retain(|k| plans.contains_key(k) || st.keys.contains_key(k));

        // Translate, keeping each frontend with the Service port that has it.
        let released: HashSet<ServiceId> =
            todo.iter().filter_map(|k| st.keys.get(k)).flat_map(|o| o.ipvs.iter().copied()).collect();
        let mut claimed: HashMap<ServiceId, String> = HashMap::new();
        let mut work: Vec<Work> = Vec::new();
        for key in &todo {
            let plan = plans.get(key);
            let marks = &mut st.marks;
            let mut new =
                plan.map(|p| translate::service(p, &settings, &nodeport_ips, &mut || FamilyState::mark_of(marks, key)));
            let mut conflict = false;
            if let Some(objects) = new.as_mut() {
                let ids: Vec<ServiceId> = objects.elements.keys().copied().collect();
                for id in ids {
                    let owner =
                        claimed.get(&id).or_else(|| if released.contains(&id) { None } else { st.ipvs_owner.get(&id) });
                    match owner {
                        Some(other) if other != key => {
                            warn!(service = %key, other = %other, frontend = %id,
                                "address and port already used by another Service; not programmed for this one");
                            objects.elements.remove(&id);
                            objects.ipvs.remove(&id);
                            conflict = true;
                        }
                        _ => {
                            claimed.insert(id, key.clone());
                        }
                    }
                }
                if objects.fwmark.is_none() {
                    st.marks.remove(key);
                }
            } else {
                st.marks.remove(key);
            }
            work.push(Work {
                key: key.clone(),
                graceful: plan.is_none_or(|p| p.name.protocol == switchyard_model::Protocol::Tcp),
                nodeports: plan.is_some_and(|p| p.frontends.iter().any(|f| f.kind == FrontendKind::NodePort)),
                new,
                conflict,
                touched: false,
                ok: true,
            });
        }

        // 1. Addresses first: a virtual service's address should be local before it gets traffic.
        let mut wanted_addresses: BTreeSet<IpAddr> = BTreeSet::new();
        for w in &work {
            if let Some(n) = &w.new {
                wanted_addresses.extend(n.addresses.iter().filter(|ip| !st.addresses.contains(ip)));
            }
        }
        if !wanted_addresses.is_empty() {
            let index = match self.dummy {
                Some(i) => i,
                None => {
                    let i = self.kernel.ensure_dummy(DUMMY_INTERFACE)?;
                    self.dummy = Some(i);
                    i
                }
            };
            let st = self.families.get_mut(&family).expect("entry made above");
            for ip in wanted_addresses {
                match self.kernel.add_address(index, ip) {
                    Err(e) if e.is_exists() => {}
                    other => other?,
                }
                st.addresses.insert(ip);
            }
        }

        // 2. Virtual services and destinations.
        for w in &mut work {
            let Some(new) = &w.new else { continue };
            match self.apply_ipvs(family, new, w.graceful) {
                Ok(touched) => w.touched |= touched,
                Err(e) => {
                    let message = error_chain(&e);
                    warn!(service = %w.key, error = %message, "IPVS refused a change for this Service port; will retry");
                    report.failed.push((key_of(&w.key, family), message));
                    w.ok = false;
                    w.touched = true;
                    self.refresh(family, new.ipvs.keys().copied().collect())?;
                    if !e.is_retryable() && !matches!(e, Error::Ipvs { .. }) {
                        return Err(e);
                    }
                }
            }
        }

        // 3. The companion table, in one transaction.
        let st = self.families.get_mut(&family).expect("entry made above");
        let skeleton = if node_current { String::new() } else { translate::skeleton(family, node, &settings) };
        let full_touch = full;
        let script = |items: &[&Work], st: &FamilyState| -> String {
            let t = format!("{} {TABLE}", translate::Fam(family).ip());
            let mut s = skeleton.clone();
            let (mut cips, mut hp) = (st.cluster_ip_refs.clone(), st.hairpin_refs.clone());
            let mut touched_cips: BTreeSet<IpAddr> = BTreeSet::new();
            let mut touched_hp: BTreeSet<IpAddr> = BTreeSet::new();
            let empty = Owned::default();
            for w in items {
                let old = st.keys.get(&w.key).unwrap_or(&empty);
                nft_diff(&mut s, &t, old, w.new.as_ref());
                cips.remove(&old.cluster_ips);
                hp.remove(&old.hairpin);
                touched_cips.extend(&old.cluster_ips);
                touched_hp.extend(&old.hairpin);
                if let Some(n) = &w.new {
                    cips.add(&n.cluster_ips);
                    hp.add(&n.hairpin);
                    touched_cips.extend(&n.cluster_ips);
                    touched_hp.extend(&n.hairpin);
                }
            }
            if full_touch {
                touched_cips.extend(st.cluster_ips.iter().chain(cips.0.keys()));
                touched_hp.extend(st.hairpin.iter().chain(hp.0.keys()));
            }
            shared_changes(&mut s, &t, translate::CLUSTER_IPS, &st.cluster_ips, &cips, &touched_cips, |ip| {
                ip.to_string()
            });
            shared_changes(&mut s, &t, translate::HAIRPIN, &st.hairpin, &hp, &touched_hp, translate::hairpin_element);
            s
        };
        let ready: Vec<&Work> = work.iter().filter(|w| w.ok).collect();
        let whole = script(&ready, st);
        let mut applied: HashSet<String> = HashSet::new();
        if !whole.is_empty() {
            match self.kernel.nft_apply(&whole) {
                Ok(()) => applied.extend(ready.iter().map(|w| w.key.clone())),
                Err(e) if ready.len() > 1 => {
                    warn!(error = %error_chain(&e), services = ready.len(),
                        "nftables batch rejected; applying Service ports one by one");
                    for w in &ready {
                        let one = script(std::slice::from_ref(w), st);
                        match self.kernel.nft_apply(&one) {
                            Ok(()) => {
                                applied.insert(w.key.clone());
                            }
                            Err(e) => {
                                let message = error_chain(&e);
                                warn!(service = %w.key, error = %message, "nftables rejected this Service port; its old rules stay");
                                report.failed.push((key_of(&w.key, family), message));
                            }
                        }
                    }
                }
                Err(e) => {
                    if let Some(w) = ready.first() {
                        let message = error_chain(&e);
                        warn!(service = %w.key, error = %message, "nftables rejected this Service port; its old rules stay");
                        report.failed.push((key_of(&w.key, family), message));
                    } else {
                        // Only the skeleton: nothing to fall back to; the caller restores and retries.
                        return Err(e);
                    }
                }
            }
            if !applied.is_empty() || ready.is_empty() {
                st.applied_node = Some((node.clone(), nodeport_ips.clone()));
            }
        } else {
            // Nothing to change in the table.
            applied.extend(ready.iter().map(|w| w.key.clone()));
            st.applied_node = Some((node.clone(), nodeport_ips.clone()));
        }

        // 4. Commit what was applied; delete the virtual services of frontends that are gone.
        let mut deletions: Vec<ServiceId> = Vec::new();
        for w in work.iter_mut() {
            let st = self.families.get_mut(&family).expect("entry made above");
            if !applied.contains(&w.key) {
                // Its IPVS changes (if any) are in the kernel: own them too, so that they are cleaned up.
                if let Some(n) = &w.new {
                    let owned = st.keys.entry(w.key.clone()).or_default();
                    owned.ipvs.extend(n.ipvs.keys().copied());
                    owned.fingerprint = None;
                    for id in n.ipvs.keys() {
                        st.ipvs_owner.insert(*id, w.key.clone());
                    }
                }
                continue;
            }
            let old = st.keys.remove(&w.key).unwrap_or_default();
            let new_owned = w.new.as_ref().map(|n| Owned::of(n, w.nodeports, w.conflict));
            let new_empty = Owned::default();
            let n = new_owned.as_ref().unwrap_or(&new_empty);
            let nft_changed = old.elements != n.elements || old.fingerprint != n.fingerprint || old.chains != n.chains;
            // Shared set members this Service port added to or removed from the kernel (after a restore its
            // own members are not known, but what the kernel has is).
            let added = |new: &BTreeSet<IpAddr>, present: &BTreeSet<IpAddr>| new.iter().any(|ip| !present.contains(ip));
            let mut sets_changed = added(&n.cluster_ips, &st.cluster_ips) || added(&n.hairpin, &st.hairpin);
            st.address_refs.remove(&old.addresses);
            st.cluster_ip_refs.remove(&old.cluster_ips);
            st.hairpin_refs.remove(&old.hairpin);
            st.address_refs.add(&n.addresses);
            st.cluster_ip_refs.add(&n.cluster_ips);
            st.hairpin_refs.add(&n.hairpin);
            sets_changed |= old.cluster_ips.iter().any(|ip| !st.cluster_ip_refs.has(ip) && st.cluster_ips.contains(ip));
            sets_changed |= old.hairpin.iter().any(|ip| !st.hairpin_refs.has(ip) && st.hairpin.contains(ip));
            if nft_changed || sets_changed {
                debug!(service = %w.key, elements = old.elements != n.elements, fingerprint = old.fingerprint != n.fingerprint,
                    chains = old.chains != n.chains, sets = sets_changed, "companion table objects changed");
            }
            w.touched |= nft_changed || sets_changed;
            for id in &old.ipvs {
                if st.ipvs_owner.get(id) == Some(&w.key) {
                    st.ipvs_owner.remove(id);
                }
                if !n.ipvs.contains(id) {
                    deletions.push(*id);
                }
            }
            for id in &n.ipvs {
                st.ipvs_owner.insert(*id, w.key.clone());
            }
            if w.conflict {
                st.conflicted.insert(w.key.clone());
            } else {
                st.conflicted.remove(&w.key);
            }
            match new_owned {
                Some(owned) => {
                    st.keys.insert(w.key.clone(), owned);
                }
                None => {
                    st.marks.remove(&w.key);
                    report.removed += 1;
                }
            }
        }
        // The shared sets now hold what the refs say, for the Service ports applied.
        {
            let st = self.families.get_mut(&family).expect("entry made above");
            let cips = st.cluster_ip_refs.clone();
            let hp = st.hairpin_refs.clone();
            if !applied.is_empty() || full {
                st.cluster_ips.retain(|ip| cips.has(ip));
                st.cluster_ips.extend(cips.0.keys());
                st.hairpin.retain(|ip| hp.has(ip));
                st.hairpin.extend(hp.0.keys());
            }
        }
        if full {
            // Switchyard's virtual services that no plan has (left by a crash, or by an older version).
            let st = self.families.get_mut(&family).expect("entry made above");
            let owned: HashSet<ServiceId> = st.keys.values().flat_map(|o| o.ipvs.iter().copied()).collect();
            deletions.extend(st.ipvs.keys().filter(|id| !owned.contains(id)).copied());
        }
        deletions.sort();
        deletions.dedup();
        for id in deletions {
            let st = self.families.get_mut(&family).expect("entry made above");
            if st.ipvs_owner.contains_key(&id) {
                continue;
            }
            ignore_not_found(self.kernel.ipvs_delete_service(&id))?;
            debug!(service = %id, "deleted virtual service");
            st.ipvs.remove(&id);
            self.draining.retain(|(s, _, _), _| *s != id);
        }

        // 5. Addresses nothing needs any more.
        let st = self.families.get_mut(&family).expect("entry made above");
        let unused: Vec<IpAddr> = st.addresses.iter().filter(|ip| !st.address_refs.has(ip)).copied().collect();
        if let Some(index) = self.dummy {
            for ip in unused {
                ignore_not_found(self.kernel.delete_address(index, ip))?;
                self.families.get_mut(&family).expect("entry made above").addresses.remove(&ip);
            }
        }

        let st = self.families.get_mut(&family).expect("entry made above");
        if full {
            st.needs_full = false;
        }
        for w in &work {
            if !applied.contains(&w.key) || w.new.is_none() {
                continue;
            }
            if w.touched {
                debug!(service = %w.key, family = ?family, "programmed");
                report.written += 1;
            } else {
                report.unchanged += 1;
            }
        }
        Ok(())
    }

    /// Brings the virtual services of one Service port to `new`. Returns whether anything changed.
    fn apply_ipvs(&mut self, family: Family, new: &ServiceObjects, graceful: bool) -> Result<bool> {
        let mut touched = false;
        let now = Instant::now();
        let grace = self.settings.grace_period;
        for (id, want) in &new.ipvs {
            let have = self.families.get(&family).and_then(|st| st.ipvs.get(id)).cloned();
            let mut have = match have {
                Some(h) => h,
                None => {
                    touched = true;
                    match self.kernel.ipvs_add_service(&want.service(*id)) {
                        Err(e) if e.is_exists() => {
                            self.kernel.ipvs_edit_service(&want.service(*id))?;
                            let dests = self.kernel.ipvs_destinations(id)?;
                            Virtual::from_kernel(&want.service(*id), &dests)
                        }
                        Err(e) => return Err(e),
                        Ok(()) => Virtual { destinations: BTreeMap::new(), ..want.clone() },
                    }
                }
            };
            if !have.same_settings(want) {
                debug!(service = %id, have = ?have, want = ?want, "virtual service settings differ");
                touched = true;
                self.kernel.ipvs_edit_service(&want.service(*id))?;
                have = Virtual { destinations: have.destinations, ..want.clone() };
            }
            self.set_view(family, *id, have.clone());
            for (&(ip, port), &weight) in &want.destinations {
                let dest = translate::destination(ip, port, weight);
                match have.destinations.get(&(ip, port)) {
                    None => {
                        touched = true;
                        match self.kernel.ipvs_add_destination(id, &dest) {
                            Err(e) if e.is_exists() => self.kernel.ipvs_edit_destination(id, &dest)?,
                            other => other?,
                        }
                    }
                    Some(&w) if w != weight => {
                        touched = true;
                        self.kernel.ipvs_edit_destination(id, &dest)?;
                    }
                    Some(_) => {}
                }
                self.draining.remove(&(*id, ip, port));
                have.destinations.insert((ip, port), weight);
                self.set_view(family, *id, have.clone());
            }
            let leaving: Vec<((IpAddr, u16), u32)> = have
                .destinations
                .iter()
                .filter(|(d, _)| !want.destinations.contains_key(d))
                .map(|(d, w)| (*d, *w))
                .collect();
            let graceful = graceful && !matches!(id, ServiceId::Inet { protocol: Protocol::Udp | Protocol::Sctp, .. });
            for ((ip, port), weight) in leaving {
                if graceful {
                    if weight != 0 {
                        touched = true;
                        self.kernel.ipvs_edit_destination(id, &translate::destination(ip, port, 0))?;
                        info!(service = %id, destination = %std::net::SocketAddr::new(ip, port), "draining destination (weight 0)");
                        have.destinations.insert((ip, port), 0);
                    }
                    self.draining.entry((*id, ip, port)).or_insert(now + grace);
                } else {
                    touched = true;
                    ignore_not_found(self.kernel.ipvs_delete_destination(id, &translate::destination(ip, port, 0)))?;
                    have.destinations.remove(&(ip, port));
                    self.draining.remove(&(*id, ip, port));
                }
                self.set_view(family, *id, have.clone());
            }
        }
        Ok(touched)
    }

    fn set_view(&mut self, family: Family, id: ServiceId, v: Virtual) {
        self.families.entry(family).or_default().ipvs.insert(id, v);
    }

    /// Reads these virtual services again after a failure, so that the view stays the kernel's.
    fn refresh(&mut self, family: Family, ids: Vec<ServiceId>) -> Result<()> {
        let services = self.kernel.ipvs_services()?;
        for id in ids {
            match services.iter().find(|s| s.id == id) {
                Some(s) => {
                    let dests = self.kernel.ipvs_destinations(&id)?;
                    self.set_view(family, id, Virtual::from_kernel(s, &dests));
                }
                None => {
                    self.families.entry(family).or_default().ipvs.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// Deletes the draining destinations that have no connection left, or whose grace period has passed.
    pub(crate) fn drain(&mut self) -> Result<()> {
        if self.draining.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let ids: BTreeSet<ServiceId> = self.draining.keys().map(|(id, _, _)| *id).collect();
        for id in ids {
            let dests = self.kernel.ipvs_destinations(&id)?;
            let mine: Vec<((ServiceId, IpAddr, u16), Instant)> =
                self.draining.iter().filter(|((s, _, _), _)| *s == id).map(|(k, v)| (*k, *v)).collect();
            for ((_, ip, port), deadline) in mine {
                let found = dests.iter().find(|d| d.addr == ip && d.port == port);
                let done = match found {
                    None => true,
                    Some(d) if d.weight != 0 => true,
                    Some(d) => {
                        let idle = d.active_conns + d.inact_conns == 0;
                        if idle || now >= deadline {
                            ignore_not_found(self.kernel.ipvs_delete_destination(&id, d))?;
                            info!(service = %id, destination = %std::net::SocketAddr::new(ip, port),
                                active = d.active_conns, inactive = d.inact_conns,
                                reason = if idle { "drained" } else { "grace period over" },
                                "deleted draining destination");
                            if let Some(v) = self.families.get_mut(&family_of(&id)).and_then(|st| st.ipvs.get_mut(&id))
                            {
                                v.destinations.remove(&(ip, port));
                            }
                            true
                        } else {
                            false
                        }
                    }
                };
                if done {
                    self.draining.remove(&(id, ip, port));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn dump(&mut self) -> Result<Dump> {
        let services = self.our_services()?;
        let mut dump = Dump::default();
        for family in FAMILIES {
            let table = self.table(family)?;
            let ipvs: BTreeMap<ServiceId, _> = services
                .iter()
                .filter(|(s, _)| family_of(&s.id) == family)
                .map(|(s, d)| (s.id, (s.clone(), d.clone())))
                .collect();
            dump.services.extend(listing::dump(&table, family, &ipvs));
        }
        dump.services.sort_by(|a, b| {
            (&a.namespace, &a.name, &a.port, a.protocol).cmp(&(&b.namespace, &b.name, &b.port, b.protocol))
        });
        Ok(dump)
    }

    pub(crate) fn cleanup(&mut self) -> Result<()> {
        let mut script = String::new();
        for family in FAMILIES {
            let t = format!("{} {TABLE}", translate::Fam(family).ip());
            // `add` first so that the delete succeeds whether or not the table exists.
            writeln!(script, "add table {t}\ndelete table {t}").expect("write to String");
        }
        self.kernel.nft_apply(&script)?;
        match self.kernel.ipvs_services() {
            Ok(services) => {
                for s in services.iter().filter(|s| s.flags.contains(OWNER_FLAG)) {
                    ignore_not_found(self.kernel.ipvs_delete_service(&s.id))?;
                }
            }
            // Without IPVS there is nothing of it to remove.
            Err(Error::Ipvs { source: switchyard_ipvs_netlink::Error::FamilyNotFound, .. }) => {}
            Err(e) => return Err(e),
        }
        if let Some(index) = self.kernel.link_index(DUMMY_INTERFACE)? {
            ignore_not_found(self.kernel.delete_link(index))?;
        }
        self.families.clear();
        self.draining.clear();
        self.dummy = None;
        self.prepared = false;
        Ok(())
    }
}

fn key_of(key: &str, family: Family) -> PlanKey {
    (names::parse_service_key(key).expect("keys come from names::service_key"), family)
}

/// Appends the set changes that make `set` hold exactly the referenced members among `touched`.
fn shared_changes(
    s: &mut String,
    t: &str,
    set: &str,
    present: &BTreeSet<IpAddr>,
    refs: &Refs,
    touched: &BTreeSet<IpAddr>,
    element: fn(IpAddr) -> String,
) {
    for ip in touched {
        match (present.contains(ip), refs.has(ip)) {
            (true, false) => writeln!(s, "delete element {t} {set} {{ {} }}", element(*ip)),
            (false, true) => writeln!(s, "add element {t} {set} {{ {} }}", element(*ip)),
            _ => Ok(()),
        }
        .expect("write to String");
    }
}

/// Appends to `s` the commands that turn `old` into `new` (or remove `old`), in an order the kernel
/// accepts within one transaction: unlink, flush, delete, then create and link.
fn nft_diff(s: &mut String, t: &str, old: &Owned, new: Option<&ServiceObjects>) {
    let empty = ServiceObjects::default();
    let new = new.unwrap_or(&empty);
    let map = MapName::ServiceIps.as_str();
    let mut w = |line: String| {
        s.push_str(&line);
        s.push('\n');
    };
    for (id, v) in &old.elements {
        if new.elements.get(id) != Some(v) {
            if let Some(k) = translate::element_key(id) {
                w(format!("delete element {t} {map} {{ {k} }}"));
            }
        }
    }
    let new_chains: BTreeSet<&String> = new.chains.keys().collect();
    let rewrite = old.fingerprint != Some(new.fingerprint) || old.chains.iter().collect::<BTreeSet<_>>() != new_chains;
    if rewrite {
        for c in &old.chains {
            w(format!("flush chain {t} {c}"));
        }
        // Firewall chains jump to external ones: delete them first.
        let mut gone: Vec<&String> = old.chains.iter().filter(|c| !new.chains.contains_key(*c)).collect();
        gone.sort_by_key(|c| !c.starts_with("firewall-"));
        for c in gone {
            w(format!("delete chain {t} {c}"));
        }
        for c in new.chains.keys().filter(|c| !old.chains.contains(*c)) {
            w(format!("add chain {t} {c}"));
        }
        for (c, rules) in &new.chains {
            for r in rules {
                w(format!("add rule {t} {c} {r}"));
            }
        }
    }
    for (id, v) in &new.elements {
        if old.elements.get(id) != Some(v) {
            if let Some(k) = translate::element_key(id) {
                w(format!("add element {t} {map} {{ {k} {v} }}"));
            }
        }
    }
}
