//! The sync loop: drains source events into the model, and at most once per `min_sync_period` hands the
//! changed plans to the dataplane. Nothing is programmed before the sources' initial lists are complete; the
//! first sync restores the kernel's state and is a full one (which prunes leftovers); a failure is retried
//! with backoff after another restore, and never flushes rules that were good.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchyard_model::conntrack::{stale_udp_flows, StaleFlows};
use switchyard_model::dataplane::Dataplane;
use switchyard_model::store::{Event, Store};
use switchyard_model::PlanKey;
use tokio::sync::mpsc::Receiver;
use tracing::{info, warn};

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::health::Health;
use crate::healthcheck::{Entry, HealthChecks};
use crate::metrics::Metrics;

/// Reads this node's interface addresses (loopback excluded).
pub type InterfaceReader = Box<dyn Fn() -> Vec<IpAddr> + Send>;

/// Deletes the conntrack entries the filters match; returns how many.
pub type ConntrackCleaner = Box<dyn FnMut(&[StaleFlows]) -> Result<usize, String> + Send>;

/// How often interface addresses are read again (they shape the NodePort addresses).
const INTERFACE_POLL: Duration = Duration::from_secs(5);

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Problems logged (and published as Events) per sync; the rest are only counted.
const MAX_PROBLEM_LOGS: usize = 100;

/// The loop's state.
pub struct SyncLoop {
    store: Store,
    dataplane: Box<dyn Dataplane>,
    metrics: Metrics,
    health: Health,
    min_sync_period: Duration,
    /// Plans changed but not yet programmed.
    pending: BTreeSet<PlanKey>,
    /// Whether the dataplane's view of the kernel is current (false at start and after a failure).
    restored: bool,
    /// Whether the next sync must be a full one.
    full: bool,
    last_sync: Option<Instant>,
    /// When the oldest change not yet programmed arrived.
    oldest_change: Option<Instant>,
    failures: u32,
    interfaces: InterfaceReader,
    conntrack: ConntrackCleaner,
    health_checks: Option<HealthChecks>,
    events: Option<crate::events::ProblemSink>,
}

impl std::fmt::Debug for SyncLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncLoop")
            .field("dataplane", &self.dataplane)
            .field("pending", &self.pending.len())
            .field("restored", &self.restored)
            .field("full", &self.full)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

impl SyncLoop {
    /// A loop over `store` and `dataplane`.
    pub fn new(
        store: Store,
        dataplane: Box<dyn Dataplane>,
        metrics: Metrics,
        health: Health,
        min_sync_period: Duration,
        interfaces: InterfaceReader,
        conntrack: ConntrackCleaner,
    ) -> Self {
        SyncLoop {
            interfaces,
            conntrack,
            health_checks: None,
            events: None,
            store,
            dataplane,
            metrics,
            health,
            min_sync_period,
            pending: BTreeSet::new(),
            restored: false,
            full: true,
            last_sync: None,
            oldest_change: None,
            failures: 0,
        }
    }

    /// Also publishes problems as Kubernetes Events through `sink`.
    pub fn with_events(mut self, sink: crate::events::ProblemSink) -> Self {
        self.events = Some(sink);
        self
    }

    /// Runs until every sender of `rx` is gone.
    pub async fn run(mut self, mut rx: Receiver<Event>) {
        let mut next: Option<Instant> = None;
        self.health_checks = Some(HealthChecks::new(self.health.clone()));
        // Before anything is programmed: the first sync must know the NodePort addresses, or it would
        // program (and after a restart, flush) an empty set of them.
        self.store.set_interfaces((self.interfaces)());
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + INTERFACE_POLL, INTERFACE_POLL);
        loop {
            let deadline = next.map(tokio::time::Instant::from_std);
            tokio::select! {
                _ = poll.tick() => {
                    let addrs = (self.interfaces)();
                    if self.store.set_interfaces(addrs) && self.store.is_synced() {
                        let earliest = self.last_sync.map_or_else(Instant::now, |t| t + self.min_sync_period);
                        next = Some(next.map_or(earliest, |n| n.min(earliest)).max(Instant::now()));
                    }
                }
                ev = rx.recv() => {
                    let Some(ev) = ev else { return };
                    if self.take(ev) {
                        let earliest = self.last_sync.map_or_else(Instant::now, |t| t + self.min_sync_period);
                        next = Some(next.map_or(earliest, |n| n.min(earliest)).max(Instant::now()));
                    }
                }
                () = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => {
                    next = None;
                    if let Some(retry_in) = tokio::task::block_in_place(|| self.sync_once()) {
                        next = Some(Instant::now() + retry_in);
                    }
                }
            }
        }
    }

    /// Takes one event into the model. Returns whether a sync should be scheduled.
    fn take(&mut self, ev: Event) -> bool {
        let changes = self.store.handle(ev);
        self.health.set_node_eligible(self.store.node_eligible());
        self.metrics.service_changes.inc_by(changes.services as u64);
        self.metrics.endpoint_changes.inc_by(changes.endpoint_slices as u64);
        if changes.services + changes.endpoint_slices > 0 || changes.node {
            self.metrics.last_queued.set(unix_now());
            self.health.queued();
            self.oldest_change.get_or_insert_with(Instant::now);
        }
        self.store.is_synced() && (self.store.has_pending() || self.full || !self.pending.is_empty())
    }

    /// One sync. Returns when to retry, if something failed.
    fn sync_once(&mut self) -> Option<Duration> {
        let (changed, problems) = self.store.recompute();
        // Every problem is counted; a flood of them (a million bad endpoints) is logged and published in part.
        for (i, p) in problems.iter().enumerate() {
            self.metrics.problems.with_label_values(&[p.kind, p.reason]).inc();
            if i < MAX_PROBLEM_LOGS {
                warn!(kind = p.kind, object = %p.object, reason = p.reason, "{}", p.message);
                if let Some(sink) = &self.events {
                    let _ = sink.try_send(p.clone());
                }
            }
        }
        if problems.len() > MAX_PROBLEM_LOGS {
            warn!(more = problems.len() - MAX_PROBLEM_LOGS, "more problems in this sync; see switchyard_object_problems_total");
        }
        self.pending.extend(changed);
        let name = self.dataplane.name();
        let start = Instant::now();
        if !self.restored {
            if let Err(e) = self.dataplane.restore() {
                warn!(dataplane = name, error = %e, "cannot read the kernel's state; nothing changed, will retry");
                return Some(self.backoff());
            }
            self.restored = true;
            self.full = true;
        }
        let changed = (!self.full).then_some(&self.pending);
        let result = self.dataplane.sync(&self.store.node_plan(), self.store.plans(), changed);
        let elapsed = start.elapsed();
        self.metrics.sync_duration.observe(elapsed.as_secs_f64());
        match result {
            Ok(report) => {
                self.metrics.last_sync.set(unix_now());
                self.last_sync = Some(Instant::now());
                self.full = false;
                info!(
                    dataplane = name,
                    written = report.written,
                    removed = report.removed,
                    unchanged = report.unchanged,
                    failed = report.failed.len(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "synced"
                );
                self.update_health_checks();
                if report.failed.is_empty() {
                    self.pending.clear();
                    self.failures = 0;
                    self.clean_conntrack();
                    self.health.updated();
                    if let Some(t) = self.oldest_change.take() {
                        self.metrics.programming_duration.observe(t.elapsed().as_secs_f64());
                    }
                    None
                } else {
                    self.metrics.sync_failures.with_label_values(&[name]).inc_by(report.failed.len() as u64);
                    self.pending = report.failed.into_iter().map(|(k, _)| k).collect();
                    Some(self.backoff())
                }
            }
            Err(e) => {
                warn!(dataplane = name, error = %e, "sync failed; the kernel keeps its previous rules; will restore and retry");
                self.metrics.sync_failures.with_label_values(&[name]).inc();
                self.restored = false;
                Some(self.backoff())
            }
        }
    }

    /// Deletes the UDP conntrack entries the plans just programmed made stale (kube-proxy's cleanup), so
    /// clients sending from one socket reach a live backend with their next packet.
    fn clean_conntrack(&mut self) {
        let replaced = self.store.take_replaced();
        let node = self.store.node_plan();
        let mut filters = Vec::new();
        for (key, old) in &replaced {
            let ips: Vec<IpAddr> = match node.nodeport_ips(key.1) {
                Some(ips) => ips.to_vec(),
                None => self.store.interfaces().to_vec(),
            };
            filters.extend(stale_udp_flows(old.as_ref(), self.store.plans().get(key), &ips));
        }
        if filters.is_empty() {
            return;
        }
        match (self.conntrack)(&filters) {
            Ok(0) => {}
            Ok(n) => {
                info!(entries = n, "deleted stale UDP conntrack entries");
                self.metrics.conntrack_deleted.inc_by(n as u64);
            }
            Err(e) => {
                warn!(error = %e, "cannot delete stale UDP conntrack entries");
                self.metrics.conntrack_errors.inc();
            }
        }
    }

    /// Serves a health-check port for every `externalTrafficPolicy: Local` LoadBalancer Service, counting
    /// its endpoints on this node.
    fn update_health_checks(&mut self) {
        let Some(hc) = self.health_checks.as_mut() else { return };
        let mut desired: BTreeMap<u16, (Entry, BTreeSet<IpAddr>)> = BTreeMap::new();
        for plan in self.store.plans().values() {
            let Some(port) = plan.health_check_node_port else { continue };
            let (_, ips) = desired.entry(port).or_insert_with(|| {
                let e = Entry { namespace: plan.name.namespace.clone(), name: plan.name.name.clone(), local_endpoints: 0 };
                (e, BTreeSet::new())
            });
            let node = self.store.node_name();
            ips.extend(plan.external.backends.iter().filter(|b| b.node_name.as_deref() == Some(node)).map(|b| b.ip));
        }
        // Counted per family, as kube-proxy's per-family proxiers do: a dual-stack pod is one endpoint.
        hc.update(
            desired
                .into_iter()
                .map(|(port, (mut e, ips))| {
                    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
                    e.local_endpoints = v4.max(ips.len() - v4);
                    (port, e)
                })
                .collect(),
        );
    }

    fn backoff(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let secs = 1u64 << self.failures.min(5);
        Duration::from_secs(secs).min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests;
