//! Switchyard's eBPF dataplane: load balancing at the socket.
//!
//! Programs on the cgroup `connect4/6`, `sendmsg4/6`, `recvmsg4/6`, `getpeername4/6` and `sock_release`
//! hooks (in `ebpf/programs`) rewrite a connect() or sendto() to a Service address into a backend address, so
//! no packet of the connection is ever NATed; replies and getpeername() show the Service address. They serve
//! ClusterIPs and localhost NodePorts for every process in the cgroup they are attached to (the cgroup2 root
//! by default: the whole node, pods included).
//!
//! Everything socket hooks cannot see — traffic from outside the node to NodePorts, externalIPs and
//! LoadBalancer IPs, forwarded traffic, processes outside the cgroup, SCTP — is served by an nftables table
//! built from the same plans ([`switchyard_nftables::NftablesDataplane`], owned by [`EbpfDataplane`]). Its
//! ClusterIP rules stay in place as the fallback for traffic that does not come from a hooked socket.
//!
//! Modules: [`translate`] is pure (plan → map entries); [`kernel`] is the one door to bpffs, the programs and
//! the maps; [`sockets`] destroys connected UDP sockets of removed backends. [`EbpfDataplane`] reconciles.
//!
//! # Constructing it (for the daemon)
//!
//! ```no_run
//! use switchyard_ebpf::{EbpfDataplane, EbpfSettings};
//! use switchyard_nftables::{kernel::NftCommand, translate::Settings};
//! let nft_settings = Settings::default(); // --masquerade-all, --cluster-cidr, as for the nftables dataplane
//! // Attached at the cgroup2 root, pinned under /sys/fs/bpf/switchyard/ (both settable on EbpfSettings).
//! let settings = EbpfSettings::new(nft_settings);
//! let dataplane = EbpfDataplane::new(settings, Box::new(NftCommand::default()));
//! ```

pub mod kernel;
pub mod sockets;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use switchyard_ebpf_common::{
    route, BackendValue, ServiceKey, ServiceMeta, ServiceValue, SlotKey, BACKENDS_MAP, CONNS_MAP, FAMILY_V4, META_MAP,
    NAME_LEN, PROTO_TCP, PROTO_UDP, RR_MAP, SERVICES_MAP, SLOTS_MAP,
};
use switchyard_model::dataplane::{Dataplane, Dump, DumpBackend, DumpFrontend, DumpService, Error, SyncReport};
use switchyard_model::{Family, FrontendKind, NodePlan, PlanKey, Protocol, Scheduler, ServicePlan, ServicePortName};
use switchyard_nftables::kernel::Nft;
use switchyard_nftables::NftablesDataplane;
use tracing::{debug, info, warn};

use kernel::{delete, entries, put, KernelError, Maps};
use translate::{addr_words, port_host, port_net, scheduler_of, words_addr, Translation};

const NAME: &str = "ebpf";

/// Where the dataplane keeps its kernel state and what it attaches to.
#[derive(Clone, Debug)]
pub struct EbpfSettings {
    /// The bpffs directory of Switchyard's pins (maps and links). Default `/sys/fs/bpf/switchyard`; a bpffs
    /// is mounted on `/sys/fs/bpf` if there is none.
    pub pin_dir: PathBuf,
    /// The cgroup2 directory the programs attach to. Default: the cgroup2 root of the host (every process).
    pub cgroup: PathBuf,
    /// Settings of the nftables table that serves external traffic (and is the ClusterIP fallback).
    pub nftables: switchyard_nftables::translate::Settings,
    /// Destroy connected UDP sockets whose backend was removed (default on).
    pub destroy_udp_sockets: bool,
    /// Count packets and bytes per backend with cgroup_skb programs (default on). They look every packet of
    /// every socket in the cgroup up in a hash map; turn them off to save that, and the dump then has
    /// socket-level connection counts only.
    pub count_packets: bool,
}

impl EbpfSettings {
    /// The defaults: pins under `/sys/fs/bpf/switchyard`, attached at the cgroup2 root.
    pub fn new(nftables: switchyard_nftables::translate::Settings) -> Self {
        EbpfSettings {
            pin_dir: PathBuf::from("/sys/fs/bpf/switchyard"),
            cgroup: kernel::cgroup2_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            nftables,
            destroy_udp_sockets: true,
            count_packets: true,
        }
    }
}

/// One route's slot set as programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SlotSet {
    id: u32,
    /// Backend id of each slot.
    slots: Vec<u32>,
}

/// What one plan has in the maps.
#[derive(Clone, Debug, Default)]
struct Programmed {
    service_id: u32,
    /// 0 when the plan is not fully programmed (a frontend held by another Service): rewritten next time.
    fingerprint: u64,
    frontends: BTreeMap<ServiceKey, ServiceValue>,
    routes: BTreeMap<u8, SlotSet>,
    backends: BTreeMap<(IpAddr, u16), (u32, BackendValue)>,
}

/// Map entries that belong to no plan (left by an interrupted run): deleted by the next full sync.
#[derive(Debug, Default)]
struct Orphans {
    services: Vec<ServiceKey>,
    slot_sets: Vec<SlotSet>,
    backends: Vec<u32>,
    meta: Vec<u32>,
}

#[derive(Debug, Default)]
struct State {
    plans: BTreeMap<PlanKey, Programmed>,
    /// Which service id holds each frontend.
    owners: HashMap<ServiceKey, u32>,
    conflicted: BTreeSet<PlanKey>,
    orphans: Orphans,
    next_service_id: u32,
    next_slot_set: u32,
    next_backend_id: u32,
}

fn next(counter: &mut u32) -> u32 {
    *counter = counter.wrapping_add(1).max(1);
    *counter
}

/// The eBPF dataplane: socket hooks for local traffic, an nftables table for the rest.
#[derive(Debug)]
pub struct EbpfDataplane {
    settings: EbpfSettings,
    nft: NftablesDataplane,
    maps: Option<Maps>,
    state: State,
    last_node: Option<NodePlan>,
}

fn kernel_err(e: KernelError) -> Error {
    match e {
        // The source's text goes into `what` too: callers often print only the top error.
        KernelError::Io { what, source } => Error::Io { dataplane: NAME, what: format!("{what}: {source}"), source },
        KernelError::Setup(message) => {
            Error::Io { dataplane: NAME, what: message, source: std::io::Error::other("setup") }
        }
    }
}

fn name_bytes(s: &str) -> [u8; NAME_LEN] {
    let mut b = [0u8; NAME_LEN];
    let n = s.len().min(NAME_LEN - 1);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    b
}

fn name_str(b: &[u8; NAME_LEN]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn plan_key_of(meta: &ServiceMeta) -> Option<PlanKey> {
    let protocol = match meta.protocol {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    let family = if meta.family == FAMILY_V4 { Family::V4 } else { Family::V6 };
    Some((
        ServicePortName {
            namespace: name_str(&meta.namespace),
            name: name_str(&meta.name),
            port: name_str(&meta.port),
            protocol,
        },
        family,
    ))
}

fn meta_of(key: &PlanKey, t: &Translation, fingerprint: u64) -> ServiceMeta {
    ServiceMeta {
        fingerprint,
        namespace: name_bytes(&key.0.namespace),
        name: name_bytes(&key.0.name),
        port: name_bytes(&key.0.port),
        affinity_timeout: t.affinity_timeout,
        protocol: t.proto,
        family: t.family,
        scheduler: t.scheduler,
        _pad: 0,
    }
}

impl EbpfDataplane {
    /// A dataplane with these settings; `nft` runs the nftables table's transactions. Touches nothing until
    /// [`Dataplane::restore`] or [`Dataplane::sync`].
    pub fn new(settings: EbpfSettings, nft: Box<dyn Nft>) -> Self {
        if settings.nftables.masquerade_all {
            info!(
                "--masquerade-all applies to the traffic nftables serves; connections the socket hooks serve are \
                 never NATed, so their backends see the client's own address"
            );
        }
        let nft = NftablesDataplane::new(settings.nftables.clone(), nft);
        EbpfDataplane { settings, nft, maps: None, state: State::default(), last_node: None }
    }

    /// The settings.
    pub fn settings(&self) -> &EbpfSettings {
        &self.settings
    }

    /// Attaches the programs and opens the maps if that has not happened yet.
    fn ensure_maps(&mut self) -> Result<(), KernelError> {
        let s = &self.settings;
        if self.maps.is_some() && kernel::attached(&s.pin_dir, s.count_packets) {
            return Ok(());
        }
        let n = kernel::attach(&s.pin_dir, &s.cgroup, s.count_packets)?;
        if n > 0 {
            info!(programs = n, cgroup = %self.settings.cgroup.display(), pins = %self.settings.pin_dir.display(), "attached the socket load balancer");
        }
        self.maps = Some(Maps::open(&self.settings.pin_dir)?);
        Ok(())
    }

    /// Reads the maps into the reconciler's state.
    fn read_state(maps: &Maps) -> Result<State, KernelError> {
        let mut st = State::default();
        let metas = entries(&maps.meta)?;
        let mut by_id: HashMap<u32, PlanKey> = HashMap::new();
        for (id, meta) in &metas {
            st.next_service_id = st.next_service_id.max(*id);
            match plan_key_of(meta) {
                Some(key) if !st.plans.contains_key(&key) => {
                    by_id.insert(*id, key.clone());
                    st.plans.insert(
                        key,
                        Programmed { service_id: *id, fingerprint: meta.fingerprint, ..Programmed::default() },
                    );
                }
                _ => st.orphans.meta.push(*id),
            }
        }
        let mut sets: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
        for (k, backend) in entries(&maps.slots)? {
            sets.entry(k.slot_set).or_default().insert(k.index, backend);
        }
        let mut referenced = BTreeSet::new();
        for (k, v) in entries(&maps.services)? {
            let Some(plan) = by_id.get(&v.service_id).and_then(|key| st.plans.get_mut(key)) else {
                st.orphans.services.push(k);
                continue;
            };
            st.owners.insert(k, v.service_id);
            plan.frontends.insert(k, v);
            let slots = sets.get(&v.slot_set).map(|s| s.values().copied().collect()).unwrap_or_default();
            plan.routes.insert(v.route, SlotSet { id: v.slot_set, slots });
            referenced.insert(v.slot_set);
        }
        for (id, slots) in sets {
            st.next_slot_set = st.next_slot_set.max(id);
            if !referenced.contains(&id) {
                st.orphans.slot_sets.push(SlotSet { id, slots: slots.into_values().collect() });
            }
        }
        for (id, v) in entries(&maps.backends)? {
            st.next_backend_id = st.next_backend_id.max(id);
            let ip = words_addr(v.addr, v.family);
            let port = port_host(v.port);
            match by_id.get(&v.service_id).and_then(|key| st.plans.get_mut(key)) {
                Some(plan) if !plan.backends.contains_key(&(ip, port)) => {
                    plan.backends.insert((ip, port), (id, v));
                }
                _ => st.orphans.backends.push(id),
            }
        }
        Ok(st)
    }

    /// Programs one plan, in an order that never shows a connect() a half-written Service: backends first,
    /// then a new slot set (an unchanged one is kept), then the frontends that point at it, and only then
    /// the old slot sets and the backends nothing points at any more. Returns whether a frontend was held
    /// by another Service (and so not programmed for this one).
    fn write_plan(&mut self, key: &PlanKey, t: &Translation, removed: &mut BTreeSet<u32>) -> Result<bool, KernelError> {
        let maps = self.maps.as_mut().expect("maps are open during a sync");
        let st = &mut self.state;
        let old = st.plans.get(key).cloned().unwrap_or_default();
        let service_id = if old.service_id != 0 { old.service_id } else { next(&mut st.next_service_id) };

        // 1. Backends: new ones get a fresh id (ids are never reused while a socket may hold one), with
        //    their counters created before anything can point at them.
        let mut ids = Vec::with_capacity(t.backends.len());
        let mut backends = BTreeMap::new();
        for b in &t.backends {
            let value = BackendValue {
                addr: addr_words(b.ip),
                port: port_net(b.port),
                family: t.family,
                routes: b.routes,
                service_id,
                weight: b.weight,
            };
            let id = match old.backends.get(&(b.ip, b.port)) {
                Some((id, v)) => {
                    if *v != value {
                        put(&mut maps.backends, BACKENDS_MAP, id, &value)?;
                    }
                    *id
                }
                None => {
                    let id = next(&mut st.next_backend_id);
                    put(&mut maps.conns, CONNS_MAP, &id, &0)?;
                    kernel::zero_stats(&mut maps.stats, id)?;
                    put(&mut maps.backends, BACKENDS_MAP, &id, &value)?;
                    id
                }
            };
            ids.push(id);
            backends.insert((b.ip, b.port), (id, value));
        }

        // 2. Slot sets: a route whose slots changed gets a whole new set.
        let mut routes = BTreeMap::new();
        for (r, slots) in &t.routes {
            let want: Vec<u32> = slots.iter().map(|i| ids[*i]).collect();
            let set = match old.routes.get(r) {
                Some(s) if s.slots == want => s.clone(),
                _ => {
                    let id = next(&mut st.next_slot_set);
                    for (i, b) in want.iter().enumerate() {
                        put(&mut maps.slots, SLOTS_MAP, &SlotKey { slot_set: id, index: i as u32 }, b)?;
                    }
                    put(&mut maps.rr, RR_MAP, &id, &0)?;
                    SlotSet { id, slots: want }
                }
            };
            routes.insert(*r, set);
        }

        // 3. The frontends, each switched to its new slot set in one map update.
        let conflict = t.frontends.keys().any(|k| st.owners.get(k).is_some_and(|o| *o != service_id));
        let fingerprint = if conflict { 0 } else { t.fingerprint };
        put(&mut maps.meta, META_MAP, &service_id, &meta_of(key, t, fingerprint))?;
        let mut frontends = BTreeMap::new();
        for (k, r) in &t.frontends {
            if let Some(owner) = st.owners.get(k).filter(|o| **o != service_id) {
                warn!(service = %key.0, owner, "address and port already used by another Service; not programmed for this one");
                continue;
            }
            let set = &routes[r];
            let value = ServiceValue {
                service_id,
                slot_set: set.id,
                count: set.slots.len() as u32,
                affinity_timeout: t.affinity_timeout,
                scheduler: t.scheduler,
                route: *r,
                _pad: 0,
            };
            if old.frontends.get(k) != Some(&value) {
                put(&mut maps.services, SERVICES_MAP, k, &value)?;
            }
            st.owners.insert(*k, service_id);
            frontends.insert(*k, value);
        }
        for k in old.frontends.keys().filter(|k| !frontends.contains_key(*k)) {
            delete(&mut maps.services, SERVICES_MAP, k)?;
            st.owners.remove(k);
        }

        // 4. What nothing points at any more.
        for (r, s) in &old.routes {
            if routes.get(r).map(|n| n.id) != Some(s.id) {
                delete_slot_set(maps, s)?;
            }
        }
        for (addr, (id, _)) in &old.backends {
            if !backends.contains_key(addr) {
                delete_backend(maps, *id)?;
                removed.insert(*id);
            }
        }
        st.plans.insert(key.clone(), Programmed { service_id, fingerprint, frontends, routes, backends });
        Ok(conflict)
    }

    /// Removes one plan: frontends first, then its slot sets, backends and name.
    fn remove_plan(&mut self, key: &PlanKey, removed: &mut BTreeSet<u32>) -> Result<(), KernelError> {
        let Some(old) = self.state.plans.get(key).cloned() else { return Ok(()) };
        let maps = self.maps.as_mut().expect("maps are open during a sync");
        for k in old.frontends.keys() {
            delete(&mut maps.services, SERVICES_MAP, k)?;
            self.state.owners.remove(k);
        }
        for s in old.routes.values() {
            delete_slot_set(maps, s)?;
        }
        for (id, _) in old.backends.values() {
            delete_backend(maps, *id)?;
            removed.insert(*id);
        }
        delete(&mut maps.meta, META_MAP, &old.service_id)?;
        self.state.plans.remove(key);
        Ok(())
    }

    /// Deletes what belongs to no plan.
    fn prune(&mut self) -> Result<(), KernelError> {
        let maps = self.maps.as_mut().expect("maps are open during a sync");
        let orphans = std::mem::take(&mut self.state.orphans);
        for k in &orphans.services {
            delete(&mut maps.services, SERVICES_MAP, k)?;
        }
        for s in &orphans.slot_sets {
            delete_slot_set(maps, s)?;
        }
        for id in &orphans.backends {
            delete_backend(maps, *id)?;
        }
        for id in &orphans.meta {
            delete(&mut maps.meta, META_MAP, id)?;
        }
        Ok(())
    }

    /// Destroys connected UDP sockets whose backend is one of `removed`.
    fn destroy_sockets(&mut self, removed: &BTreeSet<u32>) {
        if removed.is_empty() || !self.settings.destroy_udp_sockets {
            return;
        }
        let Some(maps) = self.maps.as_ref() else { return };
        let cookies: BTreeSet<u64> = match entries(&maps.sockets) {
            Ok(e) => e
                .into_iter()
                .filter(|(_, s)| s.proto == PROTO_UDP && removed.contains(&s.backend_id))
                .map(|(c, _)| c)
                .collect(),
            Err(e) => {
                warn!(error = %e, "cannot read the socket map; connected UDP sockets of removed backends stay");
                return;
            }
        };
        if cookies.is_empty() {
            return;
        }
        match sockets::destroy_udp(&cookies) {
            Ok(n) => info!(sockets = n, "destroyed connected UDP sockets of removed backends"),
            Err(e) => warn!(error = %e, "cannot destroy connected UDP sockets of removed backends"),
        }
    }

    /// The socket hooks' part of the dump, read from the maps (`None` when nothing is pinned).
    fn dump_maps(&self) -> Result<Vec<(Family, DumpService)>, KernelError> {
        let dir = &self.settings.pin_dir;
        if !Maps::pinned(dir) {
            return Ok(Vec::new());
        }
        let maps = Maps::open(dir)?;
        let services = entries(&maps.services)?;
        let backends = entries(&maps.backends)?;
        let mut out = Vec::new();
        for (id, meta) in entries(&maps.meta)? {
            let Some((name, family)) = plan_key_of(&meta) else { continue };
            let mut frontends: Vec<DumpFrontend> = services
                .iter()
                .filter(|(_, v)| v.service_id == id)
                .map(|(k, v)| DumpFrontend {
                    kind: if v.route == route::NODEPORT { FrontendKind::NodePort } else { FrontendKind::ClusterIp },
                    ip: words_addr(k.addr, k.family),
                    port: port_host(k.port),
                })
                .collect();
            frontends.sort();
            let mut dump_backends = Vec::new();
            for (bid, b) in backends.iter().filter(|(_, b)| b.service_id == id) {
                let s = kernel::stats_sum(&maps.stats, *bid)?;
                dump_backends.push(DumpBackend {
                    ip: words_addr(b.addr, b.family),
                    port: port_host(b.port),
                    packets: s.packets,
                    bytes: s.bytes,
                    connections: s.connections,
                });
            }
            dump_backends.sort();
            out.push((
                family,
                DumpService {
                    namespace: name.namespace,
                    name: name.name,
                    port: name.port,
                    protocol: name.protocol,
                    frontends,
                    scheduler: scheduler_of(meta.scheduler),
                    affinity_timeout_seconds: (meta.affinity_timeout != 0).then_some(meta.affinity_timeout),
                    backends: dump_backends,
                },
            ));
        }
        Ok(out)
    }

    /// Live connection counts per backend address of one plan, as the schedulers see them (for tests and
    /// diagnostics). Read from the kernel.
    pub fn connection_counts(&self, key: &PlanKey) -> Result<BTreeMap<(IpAddr, u16), u64>, Error> {
        let dir = &self.settings.pin_dir;
        let maps = Maps::open(dir).map_err(kernel_err)?;
        let mut out = BTreeMap::new();
        let Some(plan) = self.state.plans.get(key) else { return Ok(out) };
        for (addr, (id, _)) in &plan.backends {
            let n = kernel::lookup(&maps.conns, id).map_err(kernel_err)?.unwrap_or(0);
            out.insert(*addr, if n >= 1 << 63 { 0 } else { n });
        }
        Ok(out)
    }
}

fn delete_slot_set(maps: &mut Maps, s: &SlotSet) -> Result<(), KernelError> {
    for i in 0..s.slots.len() {
        delete(&mut maps.slots, SLOTS_MAP, &SlotKey { slot_set: s.id, index: i as u32 })?;
    }
    delete(&mut maps.rr, RR_MAP, &s.id)
}

fn delete_backend(maps: &mut Maps, id: u32) -> Result<(), KernelError> {
    delete(&mut maps.backends, BACKENDS_MAP, &id)?;
    delete(&mut maps.conns, CONNS_MAP, &id)?;
    kernel::delete_stats(&mut maps.stats, id)
}

/// The family of an nftables dump entry (every address in it is of one family).
fn dump_family(s: &DumpService) -> Option<Family> {
    s.frontends
        .iter()
        .map(|f| f.ip)
        .chain(s.backends.iter().map(|b| b.ip))
        .find(|ip| !ip.is_unspecified() || s.frontends.len() == 1)
        .map(|ip| Family::of(&ip))
}

/// Merges the socket hooks' view into the nftables dump: one entry per Service port and family, frontends
/// of both, counters of a backend added up.
fn merge(mut dump: Dump, ebpf: Vec<(Family, DumpService)>) -> Dump {
    for (family, e) in ebpf {
        let existing = dump.services.iter_mut().find(|s| {
            s.namespace == e.namespace
                && s.name == e.name
                && s.port == e.port
                && s.protocol == e.protocol
                && dump_family(s) == Some(family)
        });
        match existing {
            Some(s) => {
                for f in e.frontends {
                    if !s.frontends.contains(&f) {
                        s.frontends.push(f);
                    }
                }
                s.frontends.sort();
                for b in e.backends {
                    match s.backends.iter_mut().find(|x| x.ip == b.ip && x.port == b.port) {
                        Some(x) => {
                            x.packets += b.packets;
                            x.bytes += b.bytes;
                            x.connections += b.connections;
                        }
                        None => s.backends.push(b),
                    }
                }
                s.backends.sort();
                s.scheduler = e.scheduler;
                s.affinity_timeout_seconds = e.affinity_timeout_seconds;
            }
            None => dump.services.push(e),
        }
    }
    dump.services.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.port, a.protocol).cmp(&(&b.namespace, &b.name, &b.port, b.protocol))
    });
    dump
}

impl Dataplane for EbpfDataplane {
    fn name(&self) -> &'static str {
        NAME
    }

    fn supports(&self, scheduler: Scheduler) -> bool {
        !matches!(scheduler, Scheduler::Mh)
    }

    fn restore(&mut self) -> Result<(), Error> {
        self.nft.restore()?;
        self.last_node = None;
        let dir = &self.settings.pin_dir;
        if !Maps::pinned(dir) {
            self.maps = None;
            self.state = State::default();
            return Ok(());
        }
        let maps = Maps::open(dir).map_err(kernel_err)?;
        self.state = Self::read_state(&maps).map_err(kernel_err)?;
        debug!(plans = self.state.plans.len(), "restored the socket load balancer's maps");
        self.maps = Some(maps);
        Ok(())
    }

    fn sync(
        &mut self,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
    ) -> Result<SyncReport, Error> {
        let nft_report = self.nft.sync(node, desired, changed)?;
        self.ensure_maps().map_err(kernel_err)?;

        // A different node plan changes the localhost NodePorts of every plan: look at all of them.
        let full = changed.is_none() || self.last_node.as_ref() != Some(node);
        let mut keys: BTreeSet<PlanKey> = match changed {
            Some(c) if !full => c.clone(),
            _ => desired.keys().chain(self.state.plans.keys()).cloned().collect(),
        };
        keys.extend(self.state.conflicted.iter().cloned());
        let translations: BTreeMap<&PlanKey, Option<Translation>> =
            keys.iter().map(|k| (k, desired.get(k).and_then(|p| translate::translate(p, node)))).collect();

        let mut report = SyncReport { failed: nft_report.failed, ..SyncReport::default() };
        let mut removed = BTreeSet::new();
        let mut dirty = false;
        // Removals first, so that an address a removed Service gives up can be taken in the same batch.
        for (key, t) in &translations {
            if t.is_none() && self.state.plans.contains_key(*key) {
                match self.remove_plan(key, &mut removed) {
                    Ok(()) => report.removed += 1,
                    Err(e) => {
                        warn!(service = %key.0, error = %e, "cannot remove a Service port from the maps");
                        report.failed.push(((*key).clone(), e.to_string()));
                        dirty = true;
                    }
                }
            }
        }
        for (key, t) in &translations {
            let Some(t) = t else { continue };
            if self.state.plans.get(*key).is_some_and(|p| p.fingerprint == t.fingerprint)
                && !self.state.conflicted.contains(*key)
            {
                report.unchanged += 1;
                continue;
            }
            match self.write_plan(key, t, &mut removed) {
                Ok(conflict) => {
                    report.written += 1;
                    if conflict {
                        self.state.conflicted.insert((*key).clone());
                    } else {
                        self.state.conflicted.remove(*key);
                    }
                }
                Err(e) => {
                    warn!(service = %key.0, error = %e, "cannot program a Service port into the maps; its old entries stay");
                    report.failed.push(((*key).clone(), e.to_string()));
                    dirty = true;
                }
            }
        }
        if full && !dirty {
            self.prune().map_err(kernel_err)?;
        }
        if dirty {
            // Re-read what the kernel has, so the retry starts from the truth.
            let maps = self.maps.as_ref().expect("open");
            self.state = Self::read_state(maps).map_err(kernel_err)?;
        } else {
            self.last_node = Some(node.clone());
        }
        self.destroy_sockets(&removed);
        Ok(report)
    }

    fn dump(&self) -> Result<Dump, Error> {
        let dump = self.nft.dump()?;
        let ebpf = self.dump_maps().map_err(kernel_err)?;
        Ok(merge(dump, ebpf))
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.nft.cleanup()?;
        self.maps = None;
        kernel::remove(&self.settings.pin_dir).map_err(kernel_err)?;
        self.state = State::default();
        self.last_node = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
