//! Switchyard's IPVS dataplane.
//!
//! [`translate`] turns a plan into IPVS virtual services, dummy-interface addresses and the objects of a
//! small companion nftables table (pure); [`kernel`] is the one door to the kernel (IPVS and rtnetlink over
//! netlink, sysctls, `nft`); [`listing`] reads the kernel back for restore and dump. [`IpvsDataplane`]
//! reconciles: it adopts what is in the kernel, changes only the virtual services, destinations and nft
//! objects that differ from the plans, drains destinations that leave a plan (weight 0, deleted once their
//! connections are gone or a grace period has passed), and prunes what nothing references.
//!
//! Construct it with [`IpvsDataplane::new`] and [`Settings::new`]; it opens nothing until it is used.

pub mod kernel;
pub mod listing;
mod reconcile;
pub mod rtnl;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use switchyard_ipvs_netlink::ServiceId;
use switchyard_model::dataplane::{Dataplane, Dump, Error, SyncReport};
use switchyard_model::{NodePlan, PlanKey, Scheduler, ServicePlan};
use tracing::warn;

use kernel::{Kernel, System};

/// Settings of the IPVS dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `--masquerade-all` and `--cluster-cidr`, as the nftables dataplane takes them.
    pub masquerade: switchyard_nftables::translate::Settings,
    /// How long a destination that left its plan (weight 0) may keep its connections before it is deleted
    /// anyway. Default 15 minutes, IPVS's own timeout of an established TCP connection.
    pub grace_period: Duration,
    /// How often draining destinations are checked. Default 10 s.
    pub drain_interval: Duration,
    /// Set `net.ipv4.conf.all.arp_ignore=1` and `arp_announce=2` so that the node does not answer ARP
    /// for the addresses on the dummy interface (kube-proxy's `strictARP`). Default on.
    pub strict_arp: bool,
}

impl Settings {
    /// The defaults, with these masquerade settings.
    pub fn new(masquerade: switchyard_nftables::translate::Settings) -> Settings {
        Settings {
            masquerade,
            grace_period: Duration::from_secs(15 * 60),
            drain_interval: Duration::from_secs(10),
            strict_arp: true,
        }
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings::new(Default::default())
    }
}

/// The IPVS dataplane: virtual services per frontend in the network namespace's IPVS table, the
/// dummy interface `switchyard-ipvs` holding ClusterIPs, externalIPs and LB IPs, and the companion tables
/// `ip switchyard-ipvs` / `ip6 switchyard-ipvs`.
///
/// A background thread, started by the first [`Dataplane::sync`], deletes draining destinations once
/// they are drained; it stops when the dataplane is dropped. An instance only used for
/// [`Dataplane::dump`] starts nothing and changes nothing.
#[derive(Debug)]
pub struct IpvsDataplane {
    inner: Arc<Mutex<reconcile::Inner>>,
    drainer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl IpvsDataplane {
    /// A dataplane on the real kernel of the calling thread's network namespace (sockets are opened on first
    /// use). `nft` is run from `PATH`.
    pub fn new(settings: Settings) -> IpvsDataplane {
        IpvsDataplane::with_kernel(settings, Box::new(System::new()))
    }

    /// A dataplane on this kernel (a fake, in tests).
    pub fn with_kernel(settings: Settings, kernel: Box<dyn Kernel>) -> IpvsDataplane {
        IpvsDataplane { inner: Arc::new(Mutex::new(reconcile::Inner::new(settings, kernel))), drainer: None }
    }

    fn lock(&self) -> MutexGuard<'_, reconcile::Inner> {
        // A panic while holding the lock leaves state that a restore rebuilds; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks draining destinations now and deletes the drained ones (the background thread does this every
    /// `drain_interval`). Returns how many are still draining.
    pub fn drain(&self) -> Result<usize, Error> {
        let mut inner = self.lock();
        inner.drain().map_err(kernel::Error::into_dataplane)?;
        Ok(inner.draining().len())
    }

    /// The destinations draining now: (service, address, port).
    pub fn draining(&self) -> Vec<(ServiceId, IpAddr, u16)> {
        self.lock().draining().keys().copied().collect()
    }

    fn start_drainer(&mut self) {
        if self.drainer.is_some() {
            return;
        }
        let interval = self.lock().settings().drain_interval;
        let inner = Arc::clone(&self.inner);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ipvs-drain".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
                        if let Err(e) = inner.drain() {
                            warn!(error = %kernel::error_chain(&e), "checking draining IPVS destinations failed; will retry");
                        }
                    }
                    _ => return,
                }
            })
            .expect("spawn the IPVS drain thread");
        self.drainer = Some((stop, thread));
    }
}

impl Drop for IpvsDataplane {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.drainer.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Dataplane for IpvsDataplane {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    /// Every scheduler of the model: all are IPVS ones but `random`, which IPVS serves as `rr`.
    fn supports(&self, scheduler: Scheduler) -> bool {
        Scheduler::ALL.contains(&scheduler)
    }

    fn restore(&mut self) -> Result<(), Error> {
        self.lock().restore().map_err(kernel::Error::into_dataplane)
    }

    fn sync(
        &mut self,
        node: &NodePlan,
        desired: &BTreeMap<PlanKey, ServicePlan>,
        changed: Option<&BTreeSet<PlanKey>>,
    ) -> Result<SyncReport, Error> {
        let report = self.lock().sync(node, desired, changed).map_err(kernel::Error::into_dataplane)?;
        self.start_drainer();
        Ok(report)
    }

    fn dump(&self) -> Result<Dump, Error> {
        self.lock().dump().map_err(kernel::Error::into_dataplane)
    }

    fn cleanup(&mut self) -> Result<(), Error> {
        self.lock().cleanup().map_err(kernel::Error::into_dataplane)
    }
}

#[cfg(test)]
mod tests;
