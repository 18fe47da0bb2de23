//! Where a test's client traffic is sent from: a thread of the test process that has entered a network
//! namespace, or a process of its own inside a network namespace **and a cgroup**.
//!
//! Threads are enough wherever the kernel decides by packets (nftables, IPVS). Cgroup socket hooks (the eBPF
//! dataplane) decide by the cgroup of the process that opens the socket, so a client that stands for a pod or
//! a node process must be a process in the cgroup the programs are attached to: [`Sender::in_cgroup`] starts
//! the `switchyard-test-sender` executable (built from `src/bin/` of this crate, next to the test
//! executables), which joins the cgroup, enters the namespace, performs one [`Request`] and prints its
//! [`Reply`] as JSON.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::netns::Netns;
use crate::traffic::{self, Try};

/// What to send: `tries` TCP connections or UDP datagrams (each from a fresh socket), or one HTTP GET.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// `tcp`, `udp` or `http`.
    pub protocol: String,
    /// The source address to bind to (the kernel's choice when `None`).
    pub bind: Option<IpAddr>,
    /// The destination.
    pub to: SocketAddr,
    /// How many tries (TCP, UDP).
    pub tries: usize,
    /// The timeout of one try.
    pub timeout: Duration,
    /// The HTTP path.
    pub path: String,
    /// Whether to look up each connected socket's remote address in the kernel ([`traffic::kernel_peer`]).
    pub look_up_peers: bool,
}

/// What came of a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// One per TCP or UDP try.
    Tries(Vec<Try>),
    /// The HTTP status and body, if an answer came.
    Http(Option<(u16, String)>),
}

/// Performs `req` in the calling thread's network namespace (and its process's cgroup).
pub fn perform(req: &Request) -> Reply {
    match req.protocol.as_str() {
        "http" => Reply::Http(crate::daemon::http_get(req.to, &req.path, req.timeout)),
        "udp" => Reply::Tries(
            (0..req.tries)
                .map(|_| traffic::udp_try_from_here(req.bind, req.to, req.timeout, req.look_up_peers))
                .collect(),
        ),
        _ => Reply::Tries(
            (0..req.tries)
                .map(|_| traffic::tcp_try_from_here(req.bind, req.to, req.timeout, req.look_up_peers))
                .collect(),
        ),
    }
}

/// A place to send from: a namespace, and possibly a cgroup.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    ns: &'a Netns,
    cgroup: Option<&'a Path>,
}

impl<'a> Sender<'a> {
    /// A thread of the test process inside `ns`.
    pub fn thread(ns: &'a Netns) -> Sender<'a> {
        Sender { ns, cgroup: None }
    }

    /// A process of its own inside `ns` and the cgroup directory `cgroup`.
    pub fn in_cgroup(ns: &'a Netns, cgroup: &'a Path) -> Sender<'a> {
        Sender { ns, cgroup: Some(cgroup) }
    }

    /// The namespace.
    pub fn ns(&self) -> &'a Netns {
        self.ns
    }

    /// The cgroup, for a process sender.
    pub fn cgroup(&self) -> Option<&'a Path> {
        self.cgroup
    }

    /// Performs `req` from here. `Err` says why a process sender could not report (it did not start, died,
    /// or took far longer than the request's own timeouts allow).
    pub fn send(&self, req: &Request) -> Result<Reply, String> {
        let Some(cgroup) = self.cgroup else { return Ok(self.ns.run(|| perform(req))) };
        let mut child = Command::new(binary())
            .arg(cgroup)
            .arg(self.ns.name())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary().display()))?;
        let input = serde_json::to_vec(req).expect("a request serializes");
        child.stdin.take().expect("piped").write_all(&input).map_err(|e| format!("writing the request: {e}"))?;
        let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        // Every wait of the sender is bounded by the request's timeouts; this bounds a sender gone wrong.
        let limit = req.timeout * (req.tries.max(1) as u32 + 1) + Duration::from_secs(10);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (mut out, mut err) = (Vec::new(), String::new());
            let _ = stdout.read_to_end(&mut out);
            let _ = stderr.read_to_string(&mut err);
            let _ = tx.send((out, err));
        });
        let (out, err) = match rx.recv_timeout(limit) {
            Ok(v) => v,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the sender process did not finish within {limit:?}"));
            }
        };
        let status = child.wait().map_err(|e| format!("waiting for the sender: {e}"))?;
        if !status.success() {
            return Err(format!("the sender process failed ({status}): {err}"));
        }
        serde_json::from_slice(&out)
            .map_err(|e| format!("the sender printed no reply ({e}): {}{err}", String::from_utf8_lossy(&out)))
    }
}

/// The `switchyard-test-sender` executable next to the running test executable.
pub fn binary() -> PathBuf {
    crate::daemon::built_executable("switchyard-test-sender", "cargo build -p switchyard-tests --bins")
}

/// The sender process's `main`: `switchyard-test-sender CGROUP_DIR NETNS_NAME` joins the cgroup, enters the
/// named network namespace, reads a JSON [`Request`] on stdin, performs it and prints the JSON [`Reply`].
pub fn process_main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cgroup, netns] = args.as_slice() else {
        eprintln!("usage: switchyard-test-sender CGROUP_DIR NETNS_NAME < request.json");
        std::process::exit(2);
    };
    // The cgroup first: a socket belongs to the cgroup its process was in when it was opened.
    if let Err(e) = crate::cgroup::TestCgroup::join(Path::new(cgroup)) {
        eprintln!("cannot join cgroup {cgroup}: {e}");
        std::process::exit(1);
    }
    let path = Path::new("/run/netns").join(netns);
    let entered = std::fs::File::open(&path)
        .map_err(|e| e.to_string())
        .and_then(|f| nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string()));
    if let Err(e) = entered {
        eprintln!("cannot enter network namespace {}: {e}", path.display());
        std::process::exit(1);
    }
    let mut input = String::new();
    let req: Request = match std::io::stdin().read_to_string(&mut input).map(|_| serde_json::from_str(&input)) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("not a request ({e}): {input}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("cannot read the request: {e}");
            std::process::exit(1);
        }
    };
    let reply = perform(&req);
    println!("{}", serde_json::to_string(&reply).expect("a reply serializes"));
}
