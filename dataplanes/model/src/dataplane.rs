//! The interface every dataplane implements, and the dataplane-neutral dump of kernel state.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{FrontendKind, NodePlan, PlanKey, Protocol, Scheduler, ServicePlan};

/// A dataplane: an idempotent reconciler of desired plans against what is programmed in the kernel.
///
/// The life of a dataplane in the daemon is: [`Dataplane::restore`] once (adopt what an earlier run
/// programmed, without touching it), then [`Dataplane::sync`] for every batch of changes. The first sync after
/// start is a full one, which also prunes what no plan references. Deleting something that is already gone is
/// success. A failed sync leaves the dataplane able to retry: the daemon calls `restore` and then a full sync.
pub trait Dataplane: Send + std::fmt::Debug {
    /// Short name (`nftables`, `ipvs`, `ebpf`), used in logs and metric labels.
    fn name(&self) -> &'static str;

    /// Whether the dataplane can honour a scheduler. Plans never ask for one it cannot.
    fn supports(&self, scheduler: Scheduler) -> bool;

    /// Reads what is programmed in the kernel and adopts it as the current state. Changes nothing.
    fn restore(&mut self) -> Result<(), Error>;

    /// Brings the kernel to `node` and to `desired` for the plans named in `changed` (`None`: all of them,
    /// and prune whatever the dataplane owns that no plan in `desired` references). A key in `changed` that
    /// is not in `desired` is deleted. All changes of one call are applied atomically where the kernel
    /// allows it.
    fn sync(
        &mut self,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
    ) -> Result<SyncReport, Error>;

    /// Reads the kernel (never the dataplane's memory) and returns what is programmed, with counters.
    fn dump(&self) -> Result<Dump, Error>;

    /// Removes everything the dataplane ever programmed.
    fn cleanup(&mut self) -> Result<(), Error>;
}

/// What one [`Dataplane::sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Plans written (created or rewritten).
    pub written: usize,
    /// Plans removed.
    pub removed: usize,
    /// Plans found already programmed as desired and left alone.
    pub unchanged: usize,
    /// Plans the kernel refused, with its reason. Their previous state stays programmed; the caller retries.
    pub failed: Vec<(PlanKey, String)>,
}

/// A dataplane failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel (or the tool that talks to it) refused a change. Retryable after a restore.
    #[error("{dataplane}: the kernel rejected the transaction: {message}")]
    Rejected {
        /// Which dataplane.
        dataplane: &'static str,
        /// What the kernel or tool said.
        message: String,
    },
    /// The kernel could not be reached or read (a missing tool, a permission problem, a parse failure).
    #[error("{dataplane}: {what}")]
    Io {
        /// Which dataplane.
        dataplane: &'static str,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// What the kernel returned could not be understood.
    #[error("{dataplane}: could not parse kernel state: {message}")]
    Parse {
        /// Which dataplane.
        dataplane: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// Whether trying again (after a restore) may succeed. Parse failures and missing tools will not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Rejected { .. })
    }
}

/// What is programmed in the kernel, in the stable form `switchyard dump -o json` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dump {
    /// One entry per Service port and family, sorted by namespace, name, port, protocol.
    pub services: Vec<DumpService>,
}

/// One Service port as found in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpService {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name (empty for an unnamed port).
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The addresses and ports the kernel accepts traffic on for this port.
    pub frontends: Vec<DumpFrontend>,
    /// The scheduler the kernel applies.
    pub scheduler: Scheduler,
    /// The ClientIP affinity timeout, or `None` without affinity.
    pub affinity_timeout_seconds: Option<u32>,
    /// The backends, with their kernel counters.
    pub backends: Vec<DumpBackend>,
}

/// A frontend as found in the kernel.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DumpFrontend {
    /// The kind of address.
    pub kind: FrontendKind,
    /// The address (`0.0.0.0` / `::` for a NodePort: every node address).
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
}

/// A backend as found in the kernel, with its counters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DumpBackend {
    /// The backend's address.
    pub ip: IpAddr,
    /// The backend's port.
    pub port: u16,
    /// Packets to and from the backend through this Service port, both directions.
    pub packets: u64,
    /// Bytes to and from the backend through this Service port, both directions.
    pub bytes: u64,
    /// Connections (conntrack entries) sent to the backend through this Service port.
    pub connections: u64,
}
