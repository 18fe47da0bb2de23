//! Network namespaces the benchmark creates, the topology it builds from them, and the cleanup that removes
//! them on every way out: guards on drop (also while a panic unwinds), a signal thread for SIGINT/SIGTERM/
//! SIGHUP, and a sweep at start of namespaces left by a run that was killed outright.
//!
//! Every namespace is named `sybench<pid>-<role>`, so a later run knows which ones are orphans (their pid is
//! gone) and never touches another live run's.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context as _};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

/// Prefix of every namespace this program creates.
pub const PREFIX: &str = "sybench";

/// Namespaces and processes to remove if the program is interrupted.
static LIVE: Mutex<Live> = Mutex::new(Live { namespaces: Vec::new(), pids: Vec::new(), dirs: Vec::new() });

struct Live {
    namespaces: Vec<String>,
    pids: Vec<i32>,
    dirs: Vec<std::path::PathBuf>,
}

/// Records a directory to remove if the program is interrupted.
pub fn register_dir(dir: &Path) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).dirs.push(dir.to_path_buf());
}

/// Records a process to kill if the program is interrupted.
pub fn register_pid(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).pids.push(pid);
}

/// Forgets a process (it was stopped).
pub fn unregister_pid(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).pids.retain(|p| *p != pid);
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (call it first in `main`, so every thread inherits the
/// mask) and starts a thread that, on any of them, kills what is registered, deletes the namespaces and
/// exits. Children do not inherit the mask: std resets it when it spawns a process.
pub fn install_signal_cleanup() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("switchyard-bench: {sig:?}: removing the namespaces and processes it created");
            cleanup_registered();
            std::process::exit(128 + sig as i32);
        }
    })?;
    Ok(())
}

/// Kills every registered process and deletes every registered namespace.
fn cleanup_registered() {
    let (pids, namespaces, dirs) = {
        let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        (live.pids.clone(), live.namespaces.clone(), live.dirs.clone())
    };
    for pid in pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    for ns in namespaces.iter().rev() {
        remove(ns);
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Kills every process in a namespace and deletes it.
fn remove(name: &str) {
    for pid in pids_in(name) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn pids_in(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Removes namespaces left behind by runs of this program that are no longer alive (killed with SIGKILL,
/// say); never those of a run still going. Returns the names removed.
pub fn sweep() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/run/netns") else { return removed };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&name);
            removed.push(name);
        }
    }
    removed
}

/// Runs a command to completion; fails with its stderr unless it exits 0. Returns stdout.
pub fn check(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted (with every process in it killed) when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `sybench<pid>-<role>` and brings `lo` up.
    pub fn new(role: &str) -> anyhow::Result<Netns> {
        let name = format!("{PREFIX}{}-{role}", std::process::id());
        check(Command::new("ip").args(["netns", "add", &name]))?;
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).namespaces.push(name.clone());
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs: same pid).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Like [`Netns::command`], but with `nsenter --net` (which also execs), which keeps the host's `/sys`:
    /// `ip netns exec` mounts a fresh one, where the host's cgroup2 hierarchy and bpffs are not.
    pub fn command_keeping_sys(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name)).arg(program);
        cmd
    }

    /// Sets a sysctl of this namespace (`net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value))?.with_context(|| format!("setting {key}={value} in {}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result. Sockets made there stay
    /// in the namespace; processes spawned there start in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let file = self.open()?;
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map(|()| {
                    drop(file);
                    f()
                })
            });
            match h.join() {
                Ok(r) => r.with_context(|| format!("entering network namespace {}", self.name)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn open(&self) -> anyhow::Result<File> {
        File::open(format!("/run/netns/{}", self.name))
            .with_context(|| format!("opening network namespace {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).namespaces.retain(|n| *n != self.name);
    }
}

/// The client's address on its link to the proxy node.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 2);
/// The client's address on its link to the bare node.
pub const CLIENT_BARE: Ipv4Addr = Ipv4Addr::new(10, 241, 0, 2);
/// The backend's address behind the bare node.
pub const BACKEND_BARE: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
/// The pod CIDR given to the proxy (`--cluster-cidr`): holds the client, the backends and every endpoint,
/// so no Service traffic of the benchmark is masqueraded (as for pod-to-Service traffic in a cluster).
pub const CLUSTER_CIDR: &str = "10.128.0.0/9";

/// The backend's addresses behind the proxy node: 10.250.0.1, 10.250.0.2, …
pub fn backend_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + 1 + i as u32)
}

/// One client and one backend, joined by two nodes: the *proxy node*, where the proxy under test runs,
/// and a *bare node* with no rules at all. Every hop is a veth pair with /32 addresses and routes, as a
/// simple CNI makes them.
///
/// ```text
///   client 10.240.0.2 ── proxy node (ip_forward, uplink + default route) ── backend 10.250.0.1…
///          10.241.0.2 ── bare node  (ip_forward, nothing else)          ── backend 10.251.0.1
/// ```
///
/// The client reaches ClusterIPs (10.96.0.0/12) and 10.250.0.0/16 through the proxy node, 10.251.0.0/16
/// through the bare node; so connecting to 10.251.0.1 is "directly to the backend" over the same number of
/// hops, without any proxy rule or conntrack on the way.
#[derive(Debug)]
pub struct Topology {
    // Dropped in this order: client and backend first, then the nodes.
    pub client: Netns,
    pub backend: Netns,
    pub node: Netns,
    /// Only kept alive: nothing runs in it.
    #[allow(dead_code)]
    pub bare: Netns,
}

impl Topology {
    /// Builds it; `backends` addresses (10.250.0.1…) go on the backend's link to the proxy node.
    pub fn new(tag: &str, backends: usize) -> anyhow::Result<Topology> {
        let node = Netns::new(&format!("{tag}-node"))?;
        let bare = Netns::new(&format!("{tag}-bare"))?;
        let client = Netns::new(&format!("{tag}-client"))?;
        let backend = Netns::new(&format!("{tag}-backend"))?;
        let veth = |a: &Netns, an: &str, b: &Netns, bn: &str| {
            check(Command::new("ip").args([
                "link",
                "add",
                an,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                bn,
                "netns",
                b.name(),
            ]))
        };
        veth(&client, "c0", &node, "n-client")?;
        veth(&client, "c1", &bare, "b-client")?;
        veth(&backend, "k0", &node, "n-backend")?;
        veth(&backend, "k1", &bare, "b-backend")?;
        for ns in [&node, &bare] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }

        // Proxy node: an uplink with an address and a default route, as a real node has.
        // (A veth pair whose other end stays in the node: this kernel may have no dummy devices.)
        node.ip(&["link", "add", "uplink", "type", "veth", "peer", "name", "uplink-peer"])?;
        node.ip(&["link", "set", "uplink-peer", "up"])?;
        node.ip(&["addr", "add", "192.0.2.10/24", "dev", "uplink"])?;
        node.ip(&["link", "set", "uplink", "up"])?;
        node.ip(&["route", "add", "default", "dev", "uplink"])?;
        for (ns, dev, addr) in [
            (&node, "n-client", "10.240.0.1/32"),
            (&node, "n-backend", "10.249.0.1/32"),
            (&bare, "b-client", "10.241.0.1/32"),
            (&bare, "b-backend", "10.249.1.1/32"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", dev])?;
            ns.ip(&["link", "set", dev, "up"])?;
        }
        node.ip(&["route", "add", &format!("{CLIENT}/32"), "dev", "n-client"])?;
        node.ip(&["route", "add", "10.250.0.0/16", "dev", "n-backend"])?;
        bare.ip(&["route", "add", &format!("{CLIENT_BARE}/32"), "dev", "b-client"])?;
        bare.ip(&["route", "add", &format!("{BACKEND_BARE}/32"), "dev", "b-backend"])?;

        // Client.
        client.ip(&["addr", "add", &format!("{CLIENT}/32"), "dev", "c0"])?;
        client.ip(&["addr", "add", &format!("{CLIENT_BARE}/32"), "dev", "c1"])?;
        for dev in ["c0", "c1"] {
            client.ip(&["link", "set", dev, "up"])?;
        }
        client.ip(&["route", "add", "10.240.0.1/32", "dev", "c0"])?;
        client.ip(&["route", "add", "default", "via", "10.240.0.1", "dev", "c0", "src", &CLIENT.to_string()])?;
        client.ip(&["route", "add", "10.241.0.1/32", "dev", "c1"])?;
        client.ip(&[
            "route",
            "add",
            "10.251.0.0/16",
            "via",
            "10.241.0.1",
            "dev",
            "c1",
            "src",
            &CLIENT_BARE.to_string(),
        ])?;

        // Backend.
        for i in 0..backends {
            backend.ip(&["addr", "add", &format!("{}/32", backend_addr(i)), "dev", "k0"])?;
        }
        backend.ip(&["addr", "add", &format!("{BACKEND_BARE}/32"), "dev", "k1"])?;
        for dev in ["k0", "k1"] {
            backend.ip(&["link", "set", dev, "up"])?;
        }
        backend.ip(&["route", "add", "10.249.0.1/32", "dev", "k0"])?;
        backend.ip(&["route", "add", "default", "via", "10.249.0.1", "dev", "k0"])?;
        backend.ip(&["route", "add", "10.249.1.1/32", "dev", "k1"])?;
        backend.ip(&["route", "add", "10.241.0.0/16", "via", "10.249.1.1", "dev", "k1"])?;
        Ok(Topology { client, backend, node, bare })
    }
}
