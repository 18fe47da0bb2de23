//! The one writer of the model: API objects in, plans and the set of changed plans out.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, RandomState};

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::plan::{plan_reduced, PlanOptions, Problem, SERVICE_NAME_LABEL};
use crate::reduced::{Names, ServiceInfo, SliceInfo};
use crate::{Family, NodePlan, PlanKey, Protocol, ServiceName, ServicePlan, ServicePortName};

/// An API object a source delivers.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A v1 Service.
    Service(Box<Service>),
    /// A discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice(Box<EndpointSlice>),
    /// A v1 Node (only this node's matters).
    Node(Box<Node>),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
        }
    }

    /// The object's namespace (empty for Nodes) and name.
    pub fn key(&self) -> ObjectKey {
        let meta = match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
        };
        ObjectKey {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// The kinds of object the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// v1 Node.
    Node,
}

/// Identifies an object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// What a source tells the store.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// An object was created or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectKey),
    /// The complete current set of objects of a kind (an initial list or a relist): objects of the kind not
    /// in it are deleted.
    Replace(Kind, Vec<Object>),
    /// The source has delivered complete initial lists of every kind. Nothing is programmed before this.
    Synced,
}

/// Counts of changes an event made, for kube-proxy's change metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Services created, changed or deleted.
    pub services: usize,
    /// EndpointSlices created, changed or deleted.
    pub endpoint_slices: usize,
    /// Whether this node's Node object changed.
    pub node: bool,
}

/// The model: the API objects this node knows and the plans they make.
///
/// Services and EndpointSlices are kept reduced to what planning reads (see [`crate::reduced`]), with a
/// fingerprint of the whole object to tell whether a new version changed anything, as comparing the whole
/// objects did.
#[derive(Debug)]
pub struct Store {
    options: PlanOptions,
    services: BTreeMap<ServiceName, StoredService>,
    slices: BTreeMap<(String, String), StoredSlice>,
    /// The names of each Service's EndpointSlices, sorted. (A Vec: a BTreeSet allocates room for eleven
    /// names, and a Service mostly has one slice.)
    slices_by_service: BTreeMap<ServiceName, Vec<String>>,
    node: Option<Node>,
    dirty: BTreeSet<ServiceName>,
    plans: BTreeMap<PlanKey, ServicePlan>,
    synced: bool,
    interfaces: Vec<std::net::IpAddr>,
    /// The plan each changed UDP key had before its first change since [`Store::take_replaced`].
    replaced: BTreeMap<PlanKey, Option<ServicePlan>>,
    fingerprints: Fingerprints,
    names: Names,
}

#[derive(Debug)]
struct StoredService {
    fingerprint: u128,
    /// `None`: the Service is ignored.
    info: Option<ServiceInfo>,
}

#[derive(Debug)]
struct StoredSlice {
    fingerprint: u128,
    /// The `kubernetes.io/service-name` label.
    service: Option<String>,
    info: SliceInfo,
}

/// Tells versions of an object apart without keeping them: 128 bits of SipHash of the object's JSON, under
/// keys random to this process. Two different versions look alike only by a 2^-128 accident.
#[derive(Debug, Default)]
struct Fingerprints {
    keys: [RandomState; 2],
    json: Vec<u8>,
    /// Counts objects that did not serialize (none of the kinds read can fail): each gets a fingerprint of
    /// its own, so it always counts as changed.
    failed: u128,
}

impl Fingerprints {
    fn of(&mut self, object: &impl serde::Serialize) -> u128 {
        self.json.clear();
        if serde_json::to_writer(&mut self.json, object).is_err() {
            self.failed += 1;
            return self.failed;
        }
        let [a, b] = &self.keys;
        u128::from(a.hash_one(&self.json)) << 64 | u128::from(b.hash_one(&self.json))
    }
}

impl Store {
    /// An empty model.
    pub fn new(options: PlanOptions) -> Self {
        Store {
            options,
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            slices_by_service: BTreeMap::new(),
            node: None,
            dirty: BTreeSet::new(),
            plans: BTreeMap::new(),
            synced: false,
            interfaces: Vec::new(),
            replaced: BTreeMap::new(),
            fingerprints: Fingerprints::default(),
            names: Names::default(),
        }
    }

    /// Whether every source has delivered its initial lists.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The current plans, as of the last [`Store::recompute`].
    pub fn plans(&self) -> &BTreeMap<PlanKey, ServicePlan> {
        &self.plans
    }

    /// The UDP plans that changed since the last call, each with the version it had before (`None`: it is
    /// new). The sync loop takes them once they are programmed, to delete the conntrack entries the old
    /// versions left behind: only UDP ones go stale ([`crate::conntrack`]), and keeping every plan a full sync
    /// replaces would hold a key per plan until the sync is done.
    pub fn take_replaced(&mut self) -> BTreeMap<PlanKey, Option<ServicePlan>> {
        std::mem::take(&mut self.replaced)
    }

    /// The node plan, from the options, this node's Node object and its interface addresses.
    pub fn node_plan(&self) -> NodePlan {
        crate::plan::plan_node(&self.options, self.node.as_ref(), &self.interfaces)
    }

    /// Whether this node may receive new traffic (see [`crate::plan::node_eligible`]).
    pub fn node_eligible(&self) -> bool {
        crate::plan::node_eligible(self.node.as_ref())
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.options.node_name
    }

    /// This node's interface addresses, as last recorded.
    pub fn interfaces(&self) -> &[std::net::IpAddr] {
        &self.interfaces
    }

    /// Records this node's interface addresses (loopback excluded). Returns whether they changed.
    pub fn set_interfaces(&mut self, mut addrs: Vec<std::net::IpAddr>) -> bool {
        addrs.sort();
        addrs.dedup();
        if addrs == self.interfaces {
            return false;
        }
        self.interfaces = addrs;
        true
    }

    /// Whether some object changed since the last [`Store::recompute`].
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes one event into the model. Plans are not recomputed until [`Store::recompute`].
    pub fn handle(&mut self, event: Event) -> Changes {
        let mut changes = Changes::default();
        match event {
            Event::Apply(obj) => self.apply(obj, &mut changes),
            Event::Delete(key) => self.delete(&key, &mut changes),
            Event::Replace(kind, objects) => {
                let keep: BTreeSet<ObjectKey> = objects.iter().map(Object::key).collect();
                for key in self.keys_of(kind) {
                    if !keep.contains(&key) {
                        self.delete(&key, &mut changes);
                    }
                }
                for obj in objects {
                    self.apply(obj, &mut changes);
                }
            }
            Event::Synced => self.synced = true,
        }
        changes
    }

    fn keys_of(&self, kind: Kind) -> Vec<ObjectKey> {
        let key = |namespace: &str, name: &str| ObjectKey { kind, namespace: namespace.into(), name: name.into() };
        match kind {
            Kind::Service => self.services.keys().map(|s| key(&s.namespace, &s.name)).collect(),
            Kind::EndpointSlice => self.slices.keys().map(|(ns, n)| key(ns, n)).collect(),
            Kind::Node => self.node.iter().map(|n| key("", n.metadata.name.as_deref().unwrap_or(""))).collect(),
        }
    }

    fn apply(&mut self, obj: Object, changes: &mut Changes) {
        match obj {
            Object::Service(svc) => {
                let name = service_name(&svc.metadata.namespace, &svc.metadata.name);
                let fingerprint = self.fingerprints.of(&svc);
                if self.services.get(&name).map(|s| s.fingerprint) != Some(fingerprint) {
                    self.services.insert(name.clone(), StoredService { fingerprint, info: ServiceInfo::new(&svc) });
                    self.dirty.insert(name);
                    changes.services += 1;
                }
            }
            Object::EndpointSlice(slice) => {
                let key = (
                    slice.metadata.namespace.clone().unwrap_or_default(),
                    slice.metadata.name.clone().unwrap_or_default(),
                );
                let fingerprint = self.fingerprints.of(&slice);
                if self.slices.get(&key).map(|s| s.fingerprint) == Some(fingerprint) {
                    return;
                }
                // The owning Service may have changed with the label: forget the old link first.
                self.unlink_slice(&key);
                let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned();
                if let Some(svc) = owner(&key.0, service.as_deref()) {
                    let names = self.slices_by_service.entry(svc.clone()).or_default();
                    if let Err(i) = names.binary_search(&key.1) {
                        names.insert(i, key.1.clone());
                    }
                    self.dirty.insert(svc);
                }
                let info = SliceInfo::new(&slice, &mut self.names);
                self.slices.insert(key, StoredSlice { fingerprint, service, info });
                changes.endpoint_slices += 1;
            }
            Object::Node(node) => {
                if node.metadata.name.as_deref() != Some(self.options.node_name.as_str()) {
                    return;
                }
                if self.node.as_ref() != Some(&node) {
                    self.node = Some(*node);
                    self.dirty.extend(self.services.keys().cloned());
                    changes.node = true;
                }
            }
        }
    }

    fn delete(&mut self, key: &ObjectKey, changes: &mut Changes) {
        match key.kind {
            Kind::Service => {
                let name = ServiceName { namespace: key.namespace.clone(), name: key.name.clone() };
                if self.services.remove(&name).is_some() {
                    self.dirty.insert(name);
                    changes.services += 1;
                }
            }
            Kind::EndpointSlice => {
                let k = (key.namespace.clone(), key.name.clone());
                if self.slices.contains_key(&k) {
                    self.unlink_slice(&k);
                    self.slices.remove(&k);
                    changes.endpoint_slices += 1;
                }
            }
            Kind::Node => {
                if self.node.as_ref().and_then(|n| n.metadata.name.as_deref()) == Some(key.name.as_str()) {
                    self.node = None;
                    self.dirty.extend(self.services.keys().cloned());
                    changes.node = true;
                }
            }
        }
    }

    fn unlink_slice(&mut self, key: &(String, String)) {
        if let Some(svc) = self.slices.get(key).and_then(|s| owner(&key.0, s.service.as_deref())) {
            if let Some(set) = self.slices_by_service.get_mut(&svc) {
                set.retain(|n| *n != key.1);
                if set.is_empty() {
                    self.slices_by_service.remove(&svc);
                }
            }
            self.dirty.insert(svc);
        }
    }

    /// Recomputes the plans of every Service that changed since the last call. Returns the keys of the plans
    /// that were added, changed or removed, and the problems found in the objects recomputed.
    pub fn recompute(&mut self) -> (BTreeSet<PlanKey>, Vec<Problem>) {
        let mut changed = BTreeSet::new();
        let mut problems = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            let (new_plans, mut p) = match self.services.get(&name) {
                Some(StoredService { info: Some(svc), .. }) => {
                    let slices: Vec<&SliceInfo> = self
                        .slices_by_service
                        .get(&name)
                        .into_iter()
                        .flatten()
                        .filter_map(|s| self.slices.get(&(name.namespace.clone(), s.clone())).map(|s| &s.info))
                        .collect();
                    plan_reduced(svc, &slices, self.node.as_ref(), &self.options)
                }
                _ => (Vec::new(), Vec::new()),
            };
            problems.append(&mut p);
            // The Service's plans are adjacent in `plans`, from the least key a port of it can have on.
            let first: PlanKey = (
                ServicePortName {
                    namespace: name.namespace.clone(),
                    name: name.name.clone(),
                    port: String::new(),
                    protocol: Protocol::Tcp,
                },
                Family::V4,
            );
            debug_assert!(Protocol::Tcp < Protocol::Udp && Protocol::Tcp < Protocol::Sctp && Family::V4 < Family::V6);
            let old_keys: Vec<PlanKey> = self
                .plans
                .range(first..)
                .map(|(k, _)| k)
                .take_while(|k| k.0.namespace == name.namespace && k.0.name == name.name)
                .cloned()
                .collect();
            let mut new_keys = BTreeSet::new();
            for plan in new_plans {
                let key = (plan.name.clone(), plan.family);
                new_keys.insert(key.clone());
                if self.plans.get(&key) != Some(&plan) {
                    changed.insert(key.clone());
                    let old = self.plans.insert(key.clone(), plan);
                    self.record_replaced(key, old);
                }
            }
            for key in old_keys.into_iter().filter(|k| !new_keys.contains(k)) {
                let old = self.plans.remove(&key);
                changed.insert(key.clone());
                self.record_replaced(key, old);
            }
        }
        (changed, problems)
    }

    fn record_replaced(&mut self, key: PlanKey, old: Option<ServicePlan>) {
        if key.0.protocol == Protocol::Udp {
            self.replaced.entry(key).or_insert(old);
        }
    }
}

fn service_name(namespace: &Option<String>, name: &Option<String>) -> ServiceName {
    ServiceName { namespace: namespace.clone().unwrap_or_default(), name: name.clone().unwrap_or_default() }
}

/// The Service an EndpointSlice of `namespace` belongs to, from its `kubernetes.io/service-name` label.
fn owner(namespace: &str, label: Option<&str>) -> Option<ServiceName> {
    Some(ServiceName { namespace: namespace.to_string(), name: label?.to_string() })
}

#[cfg(test)]
mod tests;
