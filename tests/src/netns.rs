//! Network namespaces for real-kernel tests, and a small cluster topology built from them.
//!
//! Every namespace is created with `ip netns add` under a name unique to this process and test
//! (`sy<pid>c<counter><role>`), so tests run in parallel without seeing each other. A [`Netns`] is a RAII guard:
//! dropping it kills every process still running in the namespace and deletes it, also when the test panics.
//!
//! Code runs inside a namespace on a thread of its own ([`Netns::run`], [`Netns::spawn`]): that thread alone
//! calls `setns(CLONE_NEWNET)`, so the test thread stays where it was. Sockets opened there stay in that
//! namespace after the thread ends and can be used from any thread.
//!
//! [`Cluster`] is what a simple point-to-point CNI builds: a node namespace (where the daemon runs,
//! `ip_forward=1`), pod namespaces joined to it by veth pairs with a /32 pod address and a /32 route on the
//! node side, and one external client on a subnet of its own, whose node-side address is the NodePort
//! address. Every address lives inside these namespaces only. [`Cluster::dual_stack`] adds IPv6 to all of it
//! (pods `fd00:244::X/128`, gateway `fd00:244::1`, external subnet `fd00:50::/64`), with duplicate address
//! detection off so every address is usable at once.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Panics with a clear message unless the process runs as root: these tests need network namespaces and
/// nftables, and must fail loudly rather than pass without having run.
pub fn require_root() {
    if effective_uid() != Some(0) {
        panic!(
            "switchyard's netns tests need root (network namespaces, nftables): run them as root, \
             e.g. `sudo -E cargo test -p switchyard-tests`"
        );
    }
}

/// The effective uid, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh prefix for namespace names, unique in this process: `sy<pid>c<n>`.
pub fn unique_prefix() -> String {
    format!("sy{}c{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Whether a named network namespace (as `ip netns` names them) exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Runs a command to completion and returns its output; panics if it cannot be started.
fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2 installed?)"))
}

/// Runs a command and panics with its stderr unless it exits 0. Returns stdout.
fn check(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace that is deleted, with every process in it killed, when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named exactly `name` (keep it unique: see [`unique_prefix`]) and brings `lo` up.
    pub fn new(name: &str) -> Netns {
        require_root();
        check(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file, `/run/netns/<name>` (what `setns` and `nsenter --net` take).
    pub fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <ns> <args>` and panics unless it succeeds. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        check(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program args` inside the namespace (`ip netns exec`), to be completed by the caller.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// A command that runs `program args` inside the namespace with `nsenter --net`, to be completed by the
    /// caller. Unlike [`command`](Self::command) (`ip netns exec`, which gives the program a mount namespace of
    /// its own with a fresh `/sys`), the program keeps the test's mounts: the cgroup2 hierarchy and the bpffs
    /// under `/sys/fs`, as a node daemon with the host's `/sys/fs/cgroup` and `/sys/fs/bpf` has. Its
    /// `/sys/class/net` then shows the test's namespace, not this one.
    pub fn command_keeping_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display())).arg("--").arg(program);
        cmd
    }

    /// Runs a program inside the namespace to completion and returns its output (whatever its exit status).
    pub fn exec(&self, argv: &[&str]) -> Output {
        let (program, args) = argv.split_first().expect("exec needs a program");
        output(self.command(program).args(args))
    }

    /// Runs a program inside the namespace and panics unless it exits 0. Returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let (program, args) = argv.split_first().expect("exec_ok needs a program");
        check(self.command(program).args(args))
    }

    /// Sets a sysctl inside the namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value).unwrap_or_else(|e| panic!("cannot set {key}={value}: {e}")));
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {key}: {e}")))
            .trim()
            .to_string()
    }

    /// Adds an address (`10.244.0.2/32`) to a device and brings the device up.
    pub fn add_addr(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Adds an IPv6 address (`fd00:244::10/128`) to a device without duplicate address detection (`nodad`:
    /// usable at once, never tentative) and brings the device up.
    pub fn add_addr6(&self, dev: &str, cidr: &str) {
        self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Adds an IPv6 route, e.g. `add_route6(&["default", "via", "fd00:50::2"])`.
    pub fn add_route6(&self, spec: &[&str]) {
        let mut args = vec!["-6", "route", "add"];
        args.extend_from_slice(spec);
        self.ip(&args);
    }

    /// Adds a route, e.g. `add_route(&["10.244.0.2/32", "dev", "vp0"])`.
    pub fn add_route(&self, spec: &[&str]) {
        let mut args = vec!["route", "add"];
        args.extend_from_slice(spec);
        self.ip(&args);
    }

    /// Runs `f` on a new thread that has entered this namespace, waits for it and returns its result.
    /// A panic inside `f` is passed on to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = self.open();
        thread::scope(|s| {
            let handle = s.spawn(move || {
                enter(&file, &self.name);
                drop(file);
                f()
            });
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a new thread that has entered this namespace and returns its handle.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
        let file = self.open();
        let name = self.name.clone();
        thread::Builder::new()
            .name(format!("in-{name}"))
            .spawn(move || {
                enter(&file, &name);
                drop(file);
                f()
            })
            .expect("cannot spawn a thread")
    }

    /// The pids of the processes running in this namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        let out = output(Command::new("ip").args(["netns", "pids", &self.name]));
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// `nft list ruleset` inside the namespace (or the error text), for diagnostics.
    pub fn nft_ruleset(&self) -> String {
        let out = self.exec(&["nft", "list", "ruleset"]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn open(&self) -> File {
        let path = self.path();
        File::open(&path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    }
}

fn enter(file: &File, name: &str) {
    setns(file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The processes here are the ones this test started in its own namespace (`ip netns exec`).
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let out = output(Command::new("ip").args(["netns", "del", &self.name]));
        if !out.status.success() && !thread::panicking() {
            eprintln!("warning: ip netns del {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Turns IPv6 duplicate address detection off for interfaces created in `ns` from now on (their link-local
/// addresses included), so no address is ever tentative.
fn no_dad(ns: &Netns) {
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
}

/// Creates a veth pair with one end `a_if` in `a` and the other `b_if` in `b`, both down and without addresses.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    assert!(a_if.len() <= 15 && b_if.len() <= 15, "interface names are limited to 15 bytes");
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name()]);
}

/// A pod of a [`Cluster`]: its namespace, its /32 address and the node side of its veth.
#[derive(Debug)]
pub struct Pod {
    /// The pod's name (`pod0`, `pod1`, ...), also what its servers answer with by default.
    pub name: String,
    /// The pod's network namespace; its interface is `eth0`.
    pub ns: Netns,
    /// The pod IP (`10.244.0.10` for pod0, `.11` for pod1, ...).
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address in a [`Cluster::dual_stack`] (`fd00:244::10` for pod0, `fd00:244::11` for pod1:
    /// the IPv4 address's last number written as the last group), else `None`.
    pub ip6: Option<Ipv6Addr>,
    /// The node-side veth (`vp0`, `vp1`, ...).
    pub node_if: String,
}

/// The node's gateway address on every pod veth (as the ptp CNI plugin does), and the address the node is
/// seen with by pods when it masquerades towards them.
pub const NODE_POD_GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's address on the external subnet: the NodePort address.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The external client's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// The pod CIDR the topology takes pod addresses from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The node's IPv6 gateway address on every pod veth ([`Cluster::dual_stack`]).
pub const NODE_POD_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);
/// The node's IPv6 address on the external subnet: the IPv6 NodePort address ([`Cluster::dual_stack`]).
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
/// The external client's IPv6 address ([`Cluster::dual_stack`]).
pub const EXTERNAL_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);
/// The IPv6 pod CIDR ([`Cluster::dual_stack`]).
pub const CLUSTER_CIDR6: &str = "fd00:244::/64";

/// A node, its pods and one external client, all in namespaces of their own.
///
/// Topology (`N` pods):
/// ```text
///  external (eth0 192.168.50.2/24, default via .1)
///     |
///  node     (ext0 192.168.50.1/24, default via 192.168.50.2; vpI 10.244.0.1/32 + route 10.244.0.(10+I)/32 dev vpI)
///     |
///  podI     (eth0 10.244.0.(10+I)/32, route 10.244.0.1 dev eth0, default via 10.244.0.1)
/// ```
/// A [`dual_stack`](Cluster::dual_stack) cluster has the same in IPv6 besides: external `fd00:50::2/64`
/// (default via `fd00:50::1`), node `fd00:50::1/64` on ext0 (default via `fd00:50::2`) and `fd00:244::1/128`
/// on every vpI with a route to `fd00:244::(10+I)/128`, pods `fd00:244::(10+I)/128` (default via
/// `fd00:244::1`), and `net.ipv6.conf.all.forwarding=1` on the node.
/// Drop order: pods, external, then node (fields drop in declaration order).
#[derive(Debug)]
pub struct Cluster {
    /// The pods, in the order they were created.
    pub pods: Vec<Pod>,
    /// The external client's namespace; its interface is `eth0`.
    pub external: Netns,
    /// The node's namespace, where the daemon runs.
    pub node: Netns,
    /// The common prefix of every namespace name in this cluster.
    pub prefix: String,
    /// Whether the cluster has IPv6 too ([`Cluster::dual_stack`]).
    pub ipv6: bool,
}

impl Cluster {
    /// Builds a node with `pods` pods and one external client. Panics (with the reason) if anything fails.
    pub fn new(pods: usize) -> Cluster {
        Cluster::build(pods, false)
    }

    /// Builds a node with `pods` pods and one external client, all with IPv4 and IPv6 addresses.
    pub fn dual_stack(pods: usize) -> Cluster {
        Cluster::build(pods, true)
    }

    fn build(pods: usize, ipv6: bool) -> Cluster {
        require_root();
        assert!(pods <= 200, "at most 200 pods");
        let prefix = unique_prefix();
        let node = Netns::new(&format!("{prefix}node"));
        node.sysctl("net.ipv4.ip_forward", "1");
        let external = Netns::new(&format!("{prefix}ext"));
        if ipv6 {
            for ns in [&node, &external] {
                no_dad(ns);
            }
            node.sysctl("net.ipv6.conf.all.forwarding", "1");
        }

        veth(&node, "ext0", &external, "eth0");
        node.add_addr("ext0", &format!("{NODE_IP}/24"));
        external.add_addr("eth0", &format!("{EXTERNAL_IP}/24"));
        external.add_route(&["default", "via", &NODE_IP.to_string()]);
        // The node's uplink: off-node traffic (and, before DNAT, Service addresses) routes this way.
        node.add_route(&["default", "via", &EXTERNAL_IP.to_string()]);
        if ipv6 {
            node.add_addr6("ext0", &format!("{NODE_IP6}/64"));
            external.add_addr6("eth0", &format!("{EXTERNAL_IP6}/64"));
            external.add_route6(&["default", "via", &NODE_IP6.to_string()]);
            node.add_route6(&["default", "via", &EXTERNAL_IP6.to_string()]);
        }

        let mut cluster = Cluster { pods: Vec::new(), external, node, prefix, ipv6 };
        for _ in 0..pods {
            cluster.add_pod();
        }
        cluster
    }

    /// Adds one more pod, wired to the node as the others, and returns it.
    pub fn add_pod(&mut self) -> &Pod {
        let i = self.pods.len();
        let name = format!("pod{i}");
        let ip = Ipv4Addr::new(10, 244, 0, 10 + i as u8);
        let ns = Netns::new(&format!("{}p{i}", self.prefix));
        if self.ipv6 {
            no_dad(&ns);
        }
        let node_if = format!("vp{i}");
        veth(&self.node, &node_if, &ns, "eth0");
        self.node.add_addr(&node_if, &format!("{NODE_POD_GW}/32"));
        self.node.add_route(&[&format!("{ip}/32"), "dev", &node_if]);
        ns.add_addr("eth0", &format!("{ip}/32"));
        ns.add_route(&[&NODE_POD_GW.to_string(), "dev", "eth0", "scope", "link"]);
        ns.add_route(&["default", "via", &NODE_POD_GW.to_string(), "dev", "eth0"]);
        let ip6 = self.ipv6.then(|| {
            let ip6: Ipv6Addr = format!("fd00:244::{}", 10 + i).parse().expect("a valid IPv6 address");
            self.node.add_addr6(&node_if, &format!("{NODE_POD_GW6}/128"));
            self.node.add_route6(&[&format!("{ip6}/128"), "dev", &node_if]);
            ns.add_addr6("eth0", &format!("{ip6}/128"));
            ns.add_route6(&[&NODE_POD_GW6.to_string(), "dev", "eth0"]);
            ns.add_route6(&["default", "via", &NODE_POD_GW6.to_string(), "dev", "eth0"]);
            ip6
        });
        self.pods.push(Pod { name, ns, ip, ip6, node_if });
        self.pods.last().expect("just pushed")
    }

    /// The pod named `pod<i>`.
    pub fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    /// The node's addresses as seen from outside loopback: the NodePort address and the pod gateway.
    pub fn node_addresses(&self) -> Vec<Ipv4Addr> {
        vec![NODE_IP, NODE_POD_GW]
    }

    /// Every address of the node outside loopback, both families (IPv6 ones in a dual-stack cluster): what a
    /// backend may see as source when the node masquerades.
    pub fn node_addresses_all(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.node_addresses().into_iter().map(IpAddr::from).collect();
        if self.ipv6 {
            v.extend([IpAddr::from(NODE_IP6), IpAddr::from(NODE_POD_GW6)]);
        }
        v
    }

    /// The names of every namespace of this cluster.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![self.node.name().to_string(), self.external.name().to_string()];
        v.extend(self.pods.iter().map(|p| p.ns.name().to_string()));
        v
    }
}
