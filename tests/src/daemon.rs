//! The real `switchyard` binary, run inside a test's node namespace, and concise builders for the manifests it
//! reads.
//!
//! [`Daemon::start`] finds `target/<profile>/switchyard` next to the test executable (build it first with
//! `cargo build -p switchyard`), makes a temporary manifests directory, starts `switchyard run` in the node
//! namespace with its stderr captured to a file, and waits for `/healthz`. When the daemon guard is dropped
//! during a panic, it prints the daemon's stderr, the last dump and the node's nft ruleset, so a failed test
//! shows what the daemon did. The directory is removed on drop.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use crate::netns::Netns;

/// How long [`Daemon::start`] waits for `/healthz` by default (times `SWITCHYARD_SCENARIO_TIME_SCALE`).
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The `switchyard` binary next to the running test executable. Panics, saying how to build it, if missing.
pub fn binary() -> PathBuf {
    built_executable("switchyard", "cargo build -p switchyard")
}

/// The executable `name` that cargo built next to the running test executable
/// (`target/<profile>/deps/<test>-<hash>` -> `target/<profile>/<name>`). Panics, saying `how` to build it, if
/// it is missing.
pub fn built_executable(name: &str, how: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        candidates.push(dir.join(name));
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("the {name} executable is missing (looked at {candidates:?}): run `{how}` first"))
}

/// Flags for `switchyard run`.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--node-name`.
    pub node_name: String,
    /// `--dataplane`.
    pub dataplane: String,
    /// `--scheduler` (the default scheduler), if given.
    pub scheduler: Option<String>,
    /// `--cluster-cidr`, if given (default: the kit's IPv4 and IPv6 pod CIDRs).
    pub cluster_cidr: Option<String>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--min-sync-period`.
    pub min_sync_period: String,
    /// `--healthz-bind-address` (inside the node namespace).
    pub healthz_bind_address: String,
    /// More flags, passed as they are.
    pub extra_args: Vec<String>,
    /// Whether to write a v1 Node manifest (`node.yaml`, InternalIP [`crate::netns::NODE_IP`]) before starting.
    pub write_node: bool,
    /// `--ebpf-cgroup` (the eBPF dataplane's attach point), if given.
    pub ebpf_cgroup: Option<PathBuf>,
    /// `--bpffs-dir` (the eBPF dataplane's pins), if given; also passed to `switchyard dump`.
    pub bpffs_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node_name: "node".into(),
            dataplane: "nftables".into(),
            scheduler: None,
            cluster_cidr: Some(format!("{},{}", crate::netns::CLUSTER_CIDR, crate::netns::CLUSTER_CIDR6)),
            masquerade_all: false,
            min_sync_period: "100ms".into(),
            healthz_bind_address: "0.0.0.0:10256".into(),
            extra_args: Vec::new(),
            write_node: true,
            ebpf_cgroup: None,
            bpffs_dir: None,
        }
    }
}

impl Options {
    fn args(&self, manifests: &Path) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "run".into(),
            "--manifests".into(),
            manifests.display().to_string(),
            "--node-name".into(),
            self.node_name.clone(),
            "--dataplane".into(),
            self.dataplane.clone(),
            "--min-sync-period".into(),
            self.min_sync_period.clone(),
            "--healthz-bind-address".into(),
            self.healthz_bind_address.clone(),
        ];
        if let Some(s) = &self.scheduler {
            a.extend(["--scheduler".into(), s.clone()]);
        }
        if let Some(c) = &self.cluster_cidr {
            a.extend(["--cluster-cidr".into(), c.clone()]);
        }
        if self.masquerade_all {
            a.push("--masquerade-all".into());
        }
        if let Some(c) = &self.ebpf_cgroup {
            a.extend(["--ebpf-cgroup".into(), c.display().to_string()]);
        }
        if let Some(d) = &self.bpffs_dir {
            a.extend(["--bpffs-dir".into(), d.display().to_string()]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The arguments of `switchyard dump -o json` for this daemon's state: the eBPF dataplane's own view
    /// (maps and nftables) when the daemon has a pin directory of its own, else the nftables tables.
    fn dump_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["dump".into(), "-o".into(), "json".into()];
        if let Some(d) = &self.bpffs_dir {
            a.extend(["--dataplane".into(), self.dataplane.clone(), "--bpffs-dir".into(), d.display().to_string()]);
        }
        a
    }

    fn healthz_port(&self) -> u16 {
        self.healthz_bind_address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("healthz_bind_address needs a port")
    }
}

/// A `switchyard run` process in a node namespace, with its manifests directory.
#[derive(Debug)]
pub struct Daemon<'a> {
    node: &'a Netns,
    binary: PathBuf,
    opts: Options,
    dir: PathBuf,
    manifests: PathBuf,
    staging: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    last_dump: Option<Value>,
}

impl<'a> Daemon<'a> {
    /// Starts the daemon in `node` with default [`Options`] and waits until `/healthz` answers 200.
    pub fn start(node: &'a Netns) -> Daemon<'a> {
        Daemon::start_with(node, Options::default())
    }

    /// Starts the daemon in `node` with `opts` and waits until `/healthz` answers 200.
    pub fn start_with(node: &'a Netns, opts: Options) -> Daemon<'a> {
        Daemon::start_with_manifests(node, opts, &[])
    }

    /// Writes `files` (name, content) into the manifests directory, then starts the daemon and waits for
    /// `/healthz`: the first sync then already holds them.
    pub fn start_with_manifests(node: &'a Netns, opts: Options, files: &[(&str, &str)]) -> Daemon<'a> {
        let binary = binary();
        let dir = std::env::temp_dir().join(format!("{}-daemon", node.name()));
        let _ = fs::remove_dir_all(&dir);
        let manifests = dir.join("manifests");
        let staging = dir.join("staging");
        fs::create_dir_all(&manifests).expect("create manifests dir");
        fs::create_dir_all(&staging).expect("create staging dir");
        let stderr_path = dir.join("stderr.log");
        let mut d = Daemon { node, binary, opts, dir, manifests, staging, stderr_path, child: None, last_dump: None };
        if d.opts.write_node {
            let node_yaml = node_yaml(&d.opts.node_name, &crate::netns::NODE_IP.to_string());
            d.write_manifest("node.yaml", &node_yaml);
        }
        for (name, content) in files {
            d.write_manifest(name, content);
        }
        d.spawn();
        d.wait_healthy(START_TIMEOUT.mul_f64(crate::scenario::time_scale()));
        d
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the daemon is already running");
        let mut log =
            OpenOptions::new().create(true).append(true).open(&self.stderr_path).expect("open the daemon's stderr log");
        writeln!(log, "===== switchyard {} =====", self.opts.args(&self.manifests).join(" ")).ok();
        let out = log.try_clone().expect("clone log");
        let child = self
            .command()
            .args(self.opts.args(&self.manifests))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// The node namespace the daemon runs in.
    pub fn node(&self) -> &'a Netns {
        self.node
    }

    /// The manifests directory the daemon watches.
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Writes (or replaces) a manifest file atomically: written aside, then renamed into the directory.
    pub fn write_manifest(&self, name: &str, content: &str) {
        assert!(!name.contains('/'), "a plain file name");
        let tmp = self.staging.join(name);
        fs::write(&tmp, content).expect("write manifest");
        fs::rename(&tmp, self.manifests.join(name)).expect("rename manifest into place");
    }

    /// Writes a manifest file holding several YAML documents.
    pub fn write_documents(&self, name: &str, docs: &[String]) {
        self.write_manifest(name, &documents(docs));
    }

    /// Removes a manifest file (it must exist).
    pub fn remove_manifest(&self, name: &str) {
        fs::remove_file(self.manifests.join(name)).unwrap_or_else(|e| panic!("remove manifest {name}: {e}"));
    }

    /// `switchyard` in the node namespace, to be completed with arguments. The eBPF dataplane's daemon keeps
    /// the test's mounts (its cgroup and pins live under `/sys/fs`, which `ip netns exec` would hide): see
    /// [`Netns::command_keeping_mounts`].
    fn command(&self) -> std::process::Command {
        if self.opts.dataplane == "ebpf" {
            self.node.command_keeping_mounts(&self.binary)
        } else {
            self.node.command(&self.binary)
        }
    }

    /// Runs `switchyard <args>` in the node namespace (the CLI, not the daemon) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} {args:?}: {e}", self.binary.display()))
    }

    /// `switchyard dump -o json` in the node namespace, or the reason it failed.
    pub fn try_dump(&self) -> Result<Value, String> {
        let args = self.opts.dump_args();
        let out = self.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if !out.status.success() {
            return Err(format!("switchyard dump failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!("switchyard dump printed invalid JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    /// `switchyard dump -o json` in the node namespace; panics if it fails.
    pub fn dump(&mut self) -> Value {
        let v = self.try_dump().unwrap_or_else(|e| panic!("{e}"));
        self.last_dump = Some(v.clone());
        v
    }

    /// Polls the dump (every 100 ms) until `f` holds, and returns that dump. Panics after `timeout`, showing
    /// `what` was awaited and the last dump (or dump error).
    pub fn wait_until(&mut self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        let mut last: String;
        loop {
            match self.try_dump() {
                Ok(v) => {
                    if f(&v) {
                        self.last_dump = Some(v.clone());
                        return v;
                    }
                    last = serde_json::to_string_pretty(&v).unwrap_or_default();
                    self.last_dump = Some(v);
                }
                Err(e) => last = e,
            }
            if started.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting until {what}; last dump:\n{last}");
            }
            if let Some(status) = self.try_wait() {
                panic!("the daemon exited ({status}) while waiting until {what}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether `/healthz` answers 200 right now.
    pub fn healthz_ok(&self) -> bool {
        let port = self.opts.healthz_port();
        self.node.run(|| http_status(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz")) == Some(200)
    }

    /// Waits until `/healthz` answers 200; panics if the daemon exits or `timeout` passes.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let started = Instant::now();
        while !self.healthz_ok() {
            if let Some(status) = self.try_wait() {
                panic!("the daemon exited ({status}) before /healthz answered 200");
            }
            if started.elapsed() > timeout {
                panic!("/healthz did not answer 200 within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the daemon has exited (`None` while it runs or when it was not started).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Sends SIGTERM and waits (up to 10 s, then SIGKILL and a panic) for the daemon to exit. Returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon is not running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again with the same flags and manifests directory and waits for `/healthz`.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_healthy(START_TIMEOUT.mul_f64(crate::scenario::time_scale()));
    }

    /// [`stop`](Self::stop) then [`start_again`](Self::start_again).
    pub fn restart(&mut self) -> ExitStatus {
        let status = self.stop();
        self.start_again();
        status
    }

    /// Everything the daemon has written to stdout and stderr so far (all runs).
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `nft list ruleset` in the node namespace.
    pub fn nft_ruleset(&self) -> String {
        self.node.nft_ruleset()
    }

    /// Prints the daemon's logs, the last dump and the node's ruleset to stderr.
    pub fn print_diagnostics(&self) {
        eprintln!("----- switchyard logs ({}) -----\n{}", self.stderr_path.display(), self.logs());
        if let Some(d) = &self.last_dump {
            eprintln!("----- last dump -----\n{}", serde_json::to_string_pretty(d).unwrap_or_default());
        }
        eprintln!("----- nft list ruleset in {} -----\n{}", self.node.name(), self.nft_ruleset());
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_diagnostics();
        }
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() && started.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A minimal HTTP/1.0 GET in the calling thread's namespace: the status code and the body, if an answer
/// came within `timeout` (for the connection, then again for the answer).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.take(65_536).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// A minimal HTTP/1.0 GET in the calling thread's namespace; the status code, if any answer came.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------------------------
// Manifest builders.

/// Joins YAML documents into one multi-document file.
pub fn documents(docs: &[String]) -> String {
    docs.iter().map(|d| format!("---\n{d}")).collect()
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("serialize YAML")
}

/// A v1 Node with one InternalIP.
pub fn node_yaml(name: &str, internal_ip: &str) -> String {
    yaml(&json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]},
    }))
}

/// A v1 Node, built concisely: `Node::new("node").internal_ip("192.168.50.1").label(ZONE, "a").yaml()`.
#[derive(Debug, Clone, Default)]
pub struct Node {
    /// metadata.name.
    pub name: String,
    /// status.addresses of type InternalIP, in order.
    pub internal_ips: Vec<String>,
    /// metadata.labels.
    pub labels: BTreeMap<String, String>,
    /// spec.taints (keys; effect NoSchedule).
    pub taints: Vec<String>,
    /// metadata.deletionTimestamp, if set.
    pub deletion_timestamp: Option<String>,
}

impl Node {
    /// A Node without addresses, labels or taints.
    pub fn new(name: &str) -> Node {
        Node { name: name.into(), ..Node::default() }
    }

    /// Adds an InternalIP address.
    pub fn internal_ip(mut self, ip: impl ToString) -> Node {
        self.internal_ips.push(ip.to_string());
        self
    }

    /// Sets a label (e.g. `topology.kubernetes.io/zone`).
    pub fn label(mut self, key: &str, value: &str) -> Node {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a NoSchedule taint with this key (e.g. `ToBeDeletedByClusterAutoscaler`).
    pub fn taint(mut self, key: &str) -> Node {
        self.taints.push(key.into());
        self
    }

    /// Marks the Node as being deleted (metadata.deletionTimestamp).
    pub fn deleting(mut self) -> Node {
        self.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
        self
    }

    /// The Node as a JSON value.
    pub fn to_value(&self) -> Value {
        let mut addresses: Vec<Value> =
            self.internal_ips.iter().map(|ip| json!({"type": "InternalIP", "address": ip})).collect();
        addresses.push(json!({"type": "Hostname", "address": self.name}));
        let mut metadata = json!({"name": self.name});
        if !self.labels.is_empty() {
            metadata["labels"] = json!(self.labels);
        }
        if let Some(t) = &self.deletion_timestamp {
            metadata["deletionTimestamp"] = json!(t);
        }
        let mut v =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": metadata, "status": {"addresses": addresses}});
        if !self.taints.is_empty() {
            let taints: Vec<Value> = self.taints.iter().map(|k| json!({"key": k, "effect": "NoSchedule"})).collect();
            v["spec"] = json!({"taints": taints});
        }
        v
    }

    /// The Node as a YAML document.
    pub fn yaml(&self) -> String {
        yaml(&self.to_value())
    }
}

/// One port of a [`Service`].
#[derive(Debug, Clone)]
pub struct ServicePort {
    /// Port name (may be empty).
    pub name: String,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// The Service port.
    pub port: u32,
    /// The target port.
    pub target_port: u32,
    /// The node port, for NodePort/LoadBalancer Services.
    pub node_port: Option<u32>,
}

/// A v1 Service, built concisely: `Service::new("web", "10.96.0.10").tcp("http", 80, 8080).yaml()`.
#[derive(Debug, Clone)]
pub struct Service {
    /// metadata.namespace.
    pub namespace: String,
    /// metadata.name.
    pub name: String,
    /// spec.clusterIP (written as given, valid or not).
    pub cluster_ip: String,
    /// spec.type.
    pub type_: String,
    /// spec.ports.
    pub ports: Vec<ServicePort>,
    /// metadata.annotations.
    pub annotations: BTreeMap<String, String>,
    /// spec.sessionAffinity ClientIP with this timeout, if set.
    pub affinity_timeout: Option<u32>,
    /// spec.externalTrafficPolicy, if set.
    pub external_traffic_policy: Option<String>,
}

impl Service {
    /// A ClusterIP Service in namespace `default`, without ports yet.
    pub fn new(name: &str, cluster_ip: &str) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            cluster_ip: cluster_ip.into(),
            type_: "ClusterIP".into(),
            ports: Vec::new(),
            annotations: BTreeMap::new(),
            affinity_timeout: None,
            external_traffic_policy: None,
        }
    }

    /// Adds a port.
    pub fn port(mut self, name: &str, protocol: &str, port: u32, target_port: u32) -> Service {
        self.ports.push(ServicePort {
            name: name.into(),
            protocol: protocol.into(),
            port,
            target_port,
            node_port: None,
        });
        self
    }

    /// Adds a TCP port.
    pub fn tcp(self, name: &str, port: u32, target_port: u32) -> Service {
        self.port(name, "TCP", port, target_port)
    }

    /// Adds a UDP port.
    pub fn udp(self, name: &str, port: u32, target_port: u32) -> Service {
        self.port(name, "UDP", port, target_port)
    }

    /// Makes it a NodePort Service and gives the last port added this node port.
    pub fn node_port(mut self, node_port: u32) -> Service {
        self.type_ = "NodePort".into();
        self.ports.last_mut().expect("add a port first").node_port = Some(node_port);
        self
    }

    /// Sets an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Service {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Sets the `switchyard.io/scheduler` annotation (`rr`, `random`, `sh`, `dh`).
    pub fn scheduler(self, scheduler: &str) -> Service {
        self.annotation("switchyard.io/scheduler", scheduler)
    }

    /// sessionAffinity: ClientIP with `timeout_seconds`.
    pub fn client_ip_affinity(mut self, timeout_seconds: u32) -> Service {
        self.affinity_timeout = Some(timeout_seconds);
        self
    }

    /// Sets spec.externalTrafficPolicy.
    pub fn external_traffic_policy(mut self, policy: &str) -> Service {
        self.external_traffic_policy = Some(policy.into());
        self
    }

    /// The first port's `ip:port` socket address, for clients (panics unless clusterIP is a valid address).
    pub fn addr(&self) -> SocketAddr {
        let ip: std::net::IpAddr = self.cluster_ip.parse().expect("a valid clusterIP");
        SocketAddr::new(ip, self.ports.first().expect("a port").port as u16)
    }

    /// The Service as a JSON value (what the YAML holds).
    pub fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"protocol": p.protocol, "port": p.port, "targetPort": p.target_port});
                if !p.name.is_empty() {
                    v["name"] = json!(p.name);
                }
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let ip_family = if self.cluster_ip.contains(':') { "IPv6" } else { "IPv4" };
        let mut spec = json!({
            "type": self.type_,
            "clusterIP": self.cluster_ip,
            "clusterIPs": [self.cluster_ip],
            "ipFamilies": [ip_family],
            "ports": ports,
            "sessionAffinity": "None",
        });
        if let Some(t) = self.affinity_timeout {
            spec["sessionAffinity"] = json!("ClientIP");
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": t}});
        }
        if let Some(p) = &self.external_traffic_policy {
            spec["externalTrafficPolicy"] = json!(p);
        }
        let mut metadata = json!({"name": self.name, "namespace": self.namespace});
        if !self.annotations.is_empty() {
            metadata["annotations"] = json!(self.annotations);
        }
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec})
    }

    /// The Service as a YAML document.
    pub fn yaml(&self) -> String {
        yaml(&self.to_value())
    }
}

/// One endpoint of an [`EndpointSlice`].
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The address.
    pub ip: String,
    /// conditions.ready.
    pub ready: bool,
    /// conditions.serving.
    pub serving: bool,
    /// conditions.terminating.
    pub terminating: bool,
    /// nodeName, if set.
    pub node_name: Option<String>,
}

impl Endpoint {
    /// A ready, serving endpoint on node `node`.
    pub fn ready(ip: impl ToString) -> Endpoint {
        Endpoint { ip: ip.to_string(), ready: true, serving: true, terminating: false, node_name: Some("node".into()) }
    }

    /// An endpoint that is neither ready nor serving.
    pub fn not_ready(ip: impl ToString) -> Endpoint {
        Endpoint { ready: false, serving: false, ..Endpoint::ready(ip) }
    }

    /// A terminating endpoint, still serving or not.
    pub fn terminating(ip: impl ToString, serving: bool) -> Endpoint {
        Endpoint { ready: false, serving, terminating: true, ..Endpoint::ready(ip) }
    }

    /// Sets nodeName (None removes it).
    pub fn on_node(mut self, node: Option<&str>) -> Endpoint {
        self.node_name = node.map(Into::into);
        self
    }
}

/// A discovery.k8s.io/v1 EndpointSlice for a Service, built concisely:
/// `EndpointSlice::new("web").tcp("http", 8080).ready(["10.244.0.10"]).yaml()`.
#[derive(Debug, Clone)]
pub struct EndpointSlice {
    /// metadata.namespace.
    pub namespace: String,
    /// metadata.name.
    pub name: String,
    /// The kubernetes.io/service-name label.
    pub service: String,
    /// ports: (name, protocol, port).
    pub ports: Vec<(String, String, u32)>,
    /// endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointSlice {
    /// An empty IPv4 slice named `<service>-1` in namespace `default`.
    pub fn new(service: &str) -> EndpointSlice {
        EndpointSlice {
            namespace: "default".into(),
            name: format!("{service}-1"),
            service: service.into(),
            ports: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// Sets metadata.name.
    pub fn named(mut self, name: &str) -> EndpointSlice {
        self.name = name.into();
        self
    }

    /// Adds a port.
    pub fn port(mut self, name: &str, protocol: &str, port: u32) -> EndpointSlice {
        self.ports.push((name.into(), protocol.into(), port));
        self
    }

    /// Adds a TCP port.
    pub fn tcp(self, name: &str, port: u32) -> EndpointSlice {
        self.port(name, "TCP", port)
    }

    /// Adds a UDP port.
    pub fn udp(self, name: &str, port: u32) -> EndpointSlice {
        self.port(name, "UDP", port)
    }

    /// Adds an endpoint.
    pub fn endpoint(mut self, e: Endpoint) -> EndpointSlice {
        self.endpoints.push(e);
        self
    }

    /// Adds ready endpoints.
    pub fn ready<I: IntoIterator<Item = T>, T: ToString>(mut self, ips: I) -> EndpointSlice {
        self.endpoints.extend(ips.into_iter().map(Endpoint::ready));
        self
    }

    /// The slice as a JSON value.
    pub fn to_value(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|(n, p, port)| {
                let mut v = json!({"protocol": p, "port": port});
                if !n.is_empty() {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| {
                let mut v = json!({
                    "addresses": [e.ip],
                    "conditions": {"ready": e.ready, "serving": e.serving, "terminating": e.terminating},
                });
                if let Some(n) = &e.node_name {
                    v["nodeName"] = json!(n);
                }
                v
            })
            .collect();
        let family = if self.endpoints.iter().any(|e| e.ip.contains(':')) { "IPv6" } else { "IPv4" };
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"kubernetes.io/service-name": self.service},
            },
            "addressType": family,
            "ports": ports,
            "endpoints": endpoints,
        })
    }

    /// The slice as a YAML document.
    pub fn yaml(&self) -> String {
        yaml(&self.to_value())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reading dumps.

/// The dump's entry for Service `namespace/name` (first matching port), if any.
pub fn find_service<'v>(dump: &'v Value, namespace: &str, name: &str) -> Option<&'v Value> {
    dump["services"].as_array()?.iter().find(|s| s["namespace"] == namespace && s["name"] == name)
}

/// The backend addresses (`ip:port`) of Service `default/name` in a dump, sorted; empty if absent.
pub fn backends(dump: &Value, name: &str) -> Vec<String> {
    let mut v: Vec<String> = find_service(dump, "default", name)
        .and_then(|s| s["backends"].as_array())
        .map(|bs| bs.iter().map(|b| format!("{}:{}", b["ip"].as_str().unwrap_or("?"), b["port"])).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A backend's counter (`packets`, `bytes`, `connections`) for Service `default/name` and backend IP.
pub fn backend_counter(dump: &Value, name: &str, ip: &str, counter: &str) -> Option<u64> {
    find_service(dump, "default", name)?["backends"].as_array()?.iter().find(|b| b["ip"] == ip)?[counter].as_u64()
}
