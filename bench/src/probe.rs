//! connect() latency: a TCP listener in the backend's namespace, and sequential connects from the client's
//! namespace to three targets, interleaved so that load on the machine hits all three alike.

use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::manifests;
use crate::netns::{backend_addr, Topology, BACKEND_BARE};

/// Accepts and closes connections on 0.0.0.0:8080 in the backend's namespace until dropped.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Listener {
    pub fn start(topo: &Topology) -> anyhow::Result<Listener> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let listener = topo
            .backend
            .run(|| TcpListener::bind(("0.0.0.0", manifests::TARGET_PORT)))?
            .context("listening on the backend")?;
        listener.set_nonblocking(true)?;
        let thread = std::thread::Builder::new().name("backend".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })?;
        Ok(Listener { stop, thread: Some(thread) })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Latencies of one target, in microseconds, sorted.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i]
    }
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }
}

/// connect() latencies to the three targets.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// To the backend through the bare node: no proxy rule, no conntrack. The baseline.
    pub bare: Samples,
    /// To the backend's address through the proxy node, not through a Service.
    pub direct: Samples,
    /// To Service 0's ClusterIP through the proxy node.
    pub cluster_ip: Samples,
}

impl Latency {
    /// ClusterIP median over the bare (direct) median.
    pub fn ratio(&self) -> f64 {
        self.cluster_ip.median() / self.bare.median()
    }
}

const WARMUP: usize = 50;
const TIMEOUT: Duration = Duration::from_secs(2);

/// `count` rounds of one connect to each target, in rotating order, after a warm-up; each connect is
/// timed from the call to its return (SYN out, SYN-ACK back) and the socket closed right after.
pub fn measure(topo: &Topology, count: usize) -> anyhow::Result<Latency> {
    let targets = [
        SocketAddr::V4(SocketAddrV4::new(BACKEND_BARE, manifests::TARGET_PORT)),
        SocketAddr::V4(SocketAddrV4::new(backend_addr(0), manifests::TARGET_PORT)),
        SocketAddr::V4(SocketAddrV4::new(manifests::cluster_ip(0), manifests::PORT)),
    ];
    topo.client.run(move || -> anyhow::Result<Latency> {
        for t in targets {
            TcpStream::connect_timeout(&t, TIMEOUT).with_context(|| format!("connecting to {t} from the client"))?;
        }
        let mut samples: [Vec<f64>; 3] = Default::default();
        let mut failures = 0usize;
        for round in 0..WARMUP + count {
            for k in 0..3 {
                let which = (round + k) % 3;
                let start = Instant::now();
                let r = TcpStream::connect_timeout(&targets[which], TIMEOUT);
                let took = start.elapsed();
                match r {
                    Ok(s) => drop(s),
                    Err(_) => {
                        failures += 1;
                        if failures > count / 100 + 1 {
                            bail!("too many failed connects (last to {})", targets[which]);
                        }
                        continue;
                    }
                }
                if round >= WARMUP {
                    samples[which].push(took.as_secs_f64() * 1e6);
                }
            }
        }
        let [bare, direct, cluster_ip] = samples.map(|mut v| {
            v.sort_by(f64::total_cmp);
            Samples(v)
        });
        Ok(Latency { bare, direct, cluster_ip })
    })?
}
