//! Health as kube-proxy reports it: unhealthy when a queued change has waited longer than the timeout
//! (twice the sync period). `/healthz` is also unhealthy until the first sync has been programmed (which
//! makes it the DaemonSet's readiness probe) and while the Node is being deleted or tainted
//! `ToBeDeletedByClusterAutoscaler`; `/livez` is neither, so a slow first list does not restart the pod.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

#[derive(Debug)]
struct State {
    oldest_queued: Option<SystemTime>,
    last_updated: Option<SystemTime>,
    node_eligible: bool,
}

/// Shared health state, updated by the sync loop and read by the HTTP server.
#[derive(Clone, Debug)]
pub struct Health {
    timeout: Duration,
    state: Arc<Mutex<State>>,
}

/// The JSON body of /healthz and /livez.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Last successful sync, RFC 3339, empty before the first one.
    pub last_updated: String,
    /// Now, RFC 3339.
    pub current_time: String,
    /// Whether the node may receive new traffic: false while its Node is being deleted or is tainted
    /// `ToBeDeletedByClusterAutoscaler`; `/healthz` then fails so load balancers drain the node.
    pub node_eligible: bool,
    /// Whether the first sync has been programmed.
    pub synced: bool,
    /// The verdict.
    pub healthy: bool,
}

impl Health {
    /// Health with the given staleness timeout, counting start-up as a queued change.
    pub fn new(timeout: Duration) -> Self {
        Health {
            timeout,
            state: Arc::new(Mutex::new(State { oldest_queued: Some(SystemTime::now()), last_updated: None, node_eligible: true })),
        }
    }

    /// A change was queued for the next sync.
    pub fn queued(&self) {
        let mut s = self.state.lock().expect("health lock");
        s.oldest_queued.get_or_insert_with(SystemTime::now);
    }

    /// A sync programmed everything queued so far.
    pub fn updated(&self) {
        let mut s = self.state.lock().expect("health lock");
        s.oldest_queued = None;
        s.last_updated = Some(SystemTime::now());
    }

    /// Records whether the node may receive new traffic.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.state.lock().expect("health lock").node_eligible = eligible;
    }

    /// The report; `readiness` adds the first-sync and node-eligibility requirements of /healthz.
    pub fn report(&self, readiness: bool) -> Report {
        let s = self.state.lock().expect("health lock");
        let now = SystemTime::now();
        let fresh = s
            .oldest_queued
            .is_none_or(|q| now.duration_since(q).unwrap_or_default() <= self.timeout);
        let synced = s.last_updated.is_some();
        Report {
            last_updated: s.last_updated.map(|t| humantime::format_rfc3339_seconds(t).to_string()).unwrap_or_default(),
            current_time: humantime::format_rfc3339_seconds(now).to_string(),
            node_eligible: s.node_eligible,
            synced,
            healthy: fresh && (!readiness || (synced && s.node_eligible)),
        }
    }
}

#[cfg(test)]
mod tests;
