//! Real-kernel test kit for the socket load balancer: network namespaces, a test cgroup the programs are
//! attached to, client processes placed in it, backend servers, and plan builders.
//!
//! Topology (as a point-to-point CNI builds it; every address lives inside these namespaces only):
//! ```text
//!  node  (ip_forward=1; default routes out of a veth uplink; vpI 10.244.0.1/32 + fd00:244::1/128, routes to each pod)
//!    |
//!  podI  (eth0 10.244.0.(10+I)/32, fd00:244::(10+I)/128, default via the node)
//! ```
//! Clients are pods too: a client is a child process (this test binary, re-executed) that first moves
//! itself into the test cgroup and then enters its pod's network namespace, so its sockets are hooked.
//! Everything is removed on drop (namespaces, processes, cgroup, pins), also when a test panics.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchyard_ebpf::{kernel, EbpfDataplane, EbpfSettings};
use switchyard_model::dataplane::Dataplane;
use switchyard_model::{
    Backend, Family, Frontend, FrontendKind, NodePlan, PlanKey, Protocol, Route, Scheduler, ServicePlan,
    ServicePortName, WhenEmpty,
};
use switchyard_nftables::kernel::NftCommand;
pub use switchyard_tests::cgroup::TestCgroup;
pub use switchyard_tests::netns::Netns;

/// The env var that turns this test binary into a daemon process: `<pin dir>|<cgroup>|<nft netns>|<backend ip>`.
pub const DAEMON_ENV: &str = "SWITCHYARD_EBPF_TEST_DAEMON";

/// The env var that turns this test binary into a client process: `<cgroup.procs path>|<netns path>`.
pub const CLIENT_ENV: &str = "SWITCHYARD_EBPF_TEST_CLIENT";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace as the eBPF tests want it: `lo` up, IPv6 duplicate address detection off (every
/// address usable at once).
fn netns(name: &str) -> Netns {
    let ns = Netns::new(name);
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
    ns
}

/// A pod: its namespace and addresses.
#[derive(Debug)]
pub struct Pod {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

/// Everything one test needs: namespaces, a cgroup, a pin directory and the dataplane.
#[derive(Debug)]
pub struct Env {
    pub pods: Vec<Pod>,
    pub node: Netns,
    pub cgroup: TestCgroup,
    pub pin_dir: PathBuf,
    pub prefix: String,
}

impl Env {
    /// `pods` pods wired to a node; a test cgroup; a pin directory of the test's own.
    pub fn new(pods: usize) -> Env {
        switchyard_tests::netns::require_root();
        let prefix = format!("sye{}c{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let node = netns(&format!("{prefix}node"));
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
        // An uplink, as every node has: Service addresses route somewhere before nftables decides.
        node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
        node.ip(&["link", "set", "up0", "up"]);
        node.ip(&["link", "set", "up1", "up"]);
        node.ip(&["route", "add", "default", "dev", "up0"]);
        node.ip(&["-6", "route", "add", "default", "dev", "up0"]);
        let mut env = Env {
            pods: Vec::new(),
            node,
            cgroup: TestCgroup::new(&format!("{prefix}-clients")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/{prefix}")),
            prefix,
        };
        for _ in 0..pods {
            env.add_pod();
        }
        env
    }

    fn add_pod(&mut self) {
        let i = self.pods.len();
        let ns = netns(&format!("{}p{i}", self.prefix));
        let ip = Ipv4Addr::new(10, 244, 0, 10 + i as u8);
        let ip6: Ipv6Addr = format!("fd00:244::{}", 10 + i).parse().unwrap();
        let vif = format!("vp{i}");
        self.node.ip(&["link", "add", &vif, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        self.node.ip(&["addr", "add", "10.244.0.1/32", "dev", &vif]);
        self.node.ip(&["-6", "addr", "add", "fd00:244::1/128", "dev", &vif, "nodad"]);
        self.node.ip(&["link", "set", &vif, "up"]);
        self.node.ip(&["route", "add", &format!("{ip}/32"), "dev", &vif]);
        self.node.ip(&["-6", "route", "add", &format!("{ip6}/128"), "dev", &vif]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "10.244.0.1", "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", "10.244.0.1", "dev", "eth0"]);
        ns.ip(&["-6", "route", "add", "fd00:244::1", "dev", "eth0"]);
        ns.ip(&["-6", "route", "add", "default", "via", "fd00:244::1", "dev", "eth0"]);
        self.pods.push(Pod { name: format!("pod{i}"), ns, ip, ip6 });
    }

    /// Dataplane settings for this test: its own pins and cgroup, nftables in the node namespace.
    pub fn settings(&self) -> EbpfSettings {
        let mut s = EbpfSettings::new(switchyard_nftables::translate::Settings::default());
        s.pin_dir = self.pin_dir.clone();
        s.cgroup = self.cgroup.path().to_path_buf();
        s
    }

    pub fn dataplane(&self) -> EbpfDataplane {
        self.dataplane_nft_in(self.node.name())
    }

    /// A dataplane whose nftables table lives in another namespace (`netns`): then nothing but the socket
    /// hooks serves the clients.
    pub fn dataplane_nft_in(&self, netns: &str) -> EbpfDataplane {
        let nft = NftCommand { binary: "nft".into(), netns: Some(netns.to_string()) };
        EbpfDataplane::new(self.settings(), Box::new(nft))
    }

    /// A client process in pod `i`'s namespace and the test cgroup.
    pub fn client(&self, i: usize) -> Client {
        Client::start(&self.cgroup.procs(), &self.pods[i].ns.path())
    }

    /// Servers (TCP and UDP on port 8080, both families) in pods `ids`, answering with the pod's name.
    pub fn serve(&self, ids: &[usize]) -> Vec<Server> {
        ids.iter().map(|&i| Server::start(&self.pods[i])).collect()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = kernel::remove(&self.pin_dir);
    }
}

/// TCP and UDP servers on port 8080 in one pod, both families; each answers with the pod's name.
/// A TCP connection gets the name at once and then one line back per line it sends.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(pod: &Pod) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ip in [IpAddr::V4(pod.ip), IpAddr::V6(pod.ip6)] {
            let addr = SocketAddr::new(ip, 8080);
            let (name, s) = (pod.name.clone(), stop.clone());
            let tcp = pod.ns.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
            tcp.set_nonblocking(true).unwrap();
            threads.push(std::thread::spawn(move || tcp_loop(tcp, name, s)));
            let (name, s) = (pod.name.clone(), stop.clone());
            let udp = pod.ns.run(move || UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")));
            udp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            threads.push(std::thread::spawn(move || udp_loop(udp, name, s)));
        }
        Server { stop, threads }
    }
}

fn tcp_loop(l: TcpListener, name: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut c, _)) => {
                let (name, stop) = (name.clone(), stop.clone());
                std::thread::spawn(move || {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                    if c.write_all(format!("{name}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 256];
                    while !stop.load(Ordering::Relaxed) {
                        match c.read(&mut buf) {
                            Ok(0) => return,
                            Ok(_) => {
                                if c.write_all(format!("{name}\n").as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn udp_loop(u: UdpSocket, name: String, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = u.recv_from(&mut buf) {
            let _ = u.send_to(name.as_bytes(), from);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client process: this test binary re-executed, in the test cgroup and a pod's namespace, taking
/// commands on stdin (see [`client_main`]).
#[derive(Debug)]
pub struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Client {
    fn start(procs: &Path, netns: &Path) -> Client {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["--exact", "client_process", "--nocapture", "--test-threads=1"])
            .env(CLIENT_ENV, format!("{}|{}", procs.display(), netns.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a client process");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut c = Client { child, stdin, stdout };
        assert_eq!(c.cmd("ping"), "pong", "client did not start");
        c
    }

    /// Sends one command and returns its answer (without the `SY ` prefix). Panics after 10 s.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("write to client");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "client did not answer {line:?}");
            let mut out = String::new();
            let n = self.stdout.read_line(&mut out).expect("read from client");
            assert!(n > 0, "client exited while running {line:?}");
            // The test harness may print before the answer on the same line.
            if let Some(at) = out.find("SY ") {
                return out[at + 3..].trim_end().to_string();
            }
        }
    }

    /// `tcp ADDR`: the backend name a new TCP connection reaches (and its getpeername).
    pub fn tcp(&mut self, addr: &str) -> (String, String) {
        let a = self.cmd(&format!("tcp {addr}"));
        let mut it = a.split_whitespace();
        assert_eq!(it.next(), Some("ok"), "tcp {addr}: {a}");
        (it.next().unwrap().to_string(), it.next().unwrap().to_string())
    }

    /// The pid of the client process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("bad address {s}: {e}"))
}

fn errno(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(nix::libc::ECONNABORTED) => "ECONNABORTED".into(),
        Some(nix::libc::EDESTADDRREQ) => "EDESTADDRREQ".into(),
        Some(nix::libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(nix::libc::EAGAIN) => "TIMEOUT".into(),
        Some(n) => format!("errno{n}"),
        None => e.to_string().replace(' ', "_"),
    }
}

/// The client process's main loop: joins the cgroup, enters the namespace, then serves commands, one
/// answer line (`SY ...`) per command line.
pub fn client_main(spec: &str) -> ! {
    let (procs, netns) = spec.split_once('|').expect("cgroup|netns");
    std::fs::write(procs, std::process::id().to_string()).unwrap_or_else(|e| panic!("joining {procs}: {e}"));
    let ns = File::open(netns).expect("open netns");
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let mut held: Vec<Option<TcpStream>> = Vec::new();
    let mut udp: Vec<Option<UdpSocket>> = Vec::new();
    let mut unconnected: Option<UdpSocket> = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["ping"] => "pong".to_string(),
            ["tcp", addr] => match tcp_connect(parse_addr(addr), None) {
                Ok((name, peer, _)) => format!("ok {name} {peer}"),
                Err(e) => format!("err {}", errno(&e)),
            },
            ["tcpmany", addr, n] => {
                let a = parse_addr(addr);
                let mut names = Vec::new();
                let mut errors = 0;
                for _ in 0..n.parse::<usize>().unwrap() {
                    match tcp_connect(a, None) {
                        Ok((name, _, _)) => names.push(name),
                        Err(_) => errors += 1,
                    }
                }
                format!("ok {errors} {}", names.join(","))
            }
            ["tcpfrom", src, addr] => match tcp_connect(parse_addr(addr), Some(src.parse().unwrap())) {
                Ok((name, peer, _)) => format!("ok {name} {peer}"),
                Err(e) => format!("err {}", errno(&e)),
            },
            ["hold", addr] => match tcp_connect(parse_addr(addr), None) {
                Ok((name, peer, s)) => {
                    held.push(Some(s));
                    format!("ok {} {name} {peer}", held.len() - 1)
                }
                Err(e) => format!("err {}", errno(&e)),
            },
            ["talk", id] => {
                let s = held[id.parse::<usize>().unwrap()].as_mut().expect("held");
                let r = s.write_all(b"x\n").and_then(|_| read_line(s));
                match r {
                    Ok(name) => format!("ok {name}"),
                    Err(e) => format!("err {}", errno(&e)),
                }
            }
            ["close", id] => {
                held[id.parse::<usize>().unwrap()] = None;
                "ok".into()
            }
            ["udpc", addr] => {
                let a = parse_addr(addr);
                let bind: SocketAddr =
                    if a.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
                let s = UdpSocket::bind(bind).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                match s.connect(a).and_then(|_| udp_ask(&s)) {
                    Ok(name) => {
                        let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                        udp.push(Some(s));
                        format!("ok {} {name} {peer}", udp.len() - 1)
                    }
                    Err(e) => format!("err {}", errno(&e)),
                }
            }
            ["udpsend", id] => {
                let s = udp[id.parse::<usize>().unwrap()].as_ref().expect("held");
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                match udp_ask(s) {
                    Ok(name) => format!("ok {name}"),
                    Err(e) => format!("err {}", errno(&e)),
                }
            }
            ["udpreconnect", id, addr] => {
                let s = udp[id.parse::<usize>().unwrap()].as_ref().expect("held");
                match s.connect(parse_addr(addr)).and_then(|_| udp_ask(s)) {
                    Ok(name) => format!("ok {name}"),
                    Err(e) => format!("err {}", errno(&e)),
                }
            }
            ["udpu", addr] => {
                let a = parse_addr(addr);
                let s = unconnected.get_or_insert_with(|| {
                    let s = UdpSocket::bind("[::]:0").unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    s
                });
                let target = match a {
                    SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
                    v6 => v6,
                };
                let mut buf = [0u8; 256];
                match s.send_to(b"x", target).and_then(|_| s.recv_from(&mut buf)) {
                    Ok((n, from)) => {
                        let from = match from {
                            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                                Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                                None => from,
                            },
                            v4 => v4,
                        };
                        format!("ok {} {from}", String::from_utf8_lossy(&buf[..n]))
                    }
                    Err(e) => format!("err {}", errno(&e)),
                }
            }
            ["udpu4", addr] => {
                let s = UdpSocket::bind("0.0.0.0:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 256];
                match s.send_to(b"x", parse_addr(addr)).and_then(|_| s.recv_from(&mut buf)) {
                    Ok((n, from)) => format!("ok {} {from}", String::from_utf8_lossy(&buf[..n])),
                    Err(e) => format!("err {}", errno(&e)),
                }
            }
            _ => format!("err unknown command {line:?}"),
        };
        writeln!(out, "SY {answer}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0)
}

fn read_line(s: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = s.read(&mut b)?;
        if n == 0 || b[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        buf.push(b[0]);
    }
}

fn tcp_connect(addr: SocketAddr, src: Option<IpAddr>) -> std::io::Result<(String, String, TcpStream)> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if let Some(src) = src {
        s.bind(&SocketAddr::new(src, 0).into())?;
    }
    s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    let mut s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let name = read_line(&mut s)?;
    let peer = s.peer_addr()?.to_string();
    Ok((name, peer, s))
}

fn udp_ask(s: &UdpSocket) -> std::io::Result<String> {
    s.send(b"x")?;
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A backend of a plan.
pub fn backend(ip: IpAddr, port: u16, weight: u32) -> Backend {
    Backend {
        ip,
        port,
        node_name: None,
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        weight,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

/// A ClusterIP plan `default/NAME` port `p` for `vip:port` over `backends`.
pub fn plan(
    name: &str,
    protocol: Protocol,
    vip: IpAddr,
    port: u16,
    backends: Vec<Backend>,
    scheduler: Scheduler,
) -> ServicePlan {
    let family = Family::of(&vip);
    ServicePlan {
        name: ServicePortName { namespace: "default".into(), name: name.into(), port: "p".into(), protocol },
        family,
        frontends: vec![Frontend { kind: FrontendKind::ClusterIp, ip: vip, port }],
        scheduler,
        scheduler_flags: Default::default(),
        affinity_timeout: None,
        cluster: Route { backends: backends.clone(), when_empty: WhenEmpty::Reject },
        external: Route { backends, when_empty: WhenEmpty::Reject },
        external_local: false,
        source_ranges: None,
        health_check_node_port: None,
    }
}

/// The desired map of some plans.
pub fn desired(plans: &[ServicePlan]) -> std::collections::BTreeMap<PlanKey, ServicePlan> {
    plans.iter().map(|p| ((p.name.clone(), p.family), p.clone())).collect()
}

/// A full sync of these plans with an empty node plan; panics on failure.
pub fn sync(dp: &mut EbpfDataplane, plans: &[ServicePlan]) -> switchyard_model::dataplane::SyncReport {
    sync_node(dp, &NodePlan::default(), plans)
}

/// A full sync with a node plan.
pub fn sync_node(
    dp: &mut EbpfDataplane,
    node: &NodePlan,
    plans: &[ServicePlan],
) -> switchyard_model::dataplane::SyncReport {
    let report = dp.sync(node, &desired(plans), None).unwrap_or_else(|e| panic!("sync: {e}"));
    assert!(report.failed.is_empty(), "sync failed for {:?}", report.failed);
    report
}

/// Pod `i`'s IPv4 address as a backend on port 8080.
pub fn pod_backend(env: &Env, i: usize) -> Backend {
    backend(IpAddr::V4(env.pods[i].ip), 8080, 1)
}

/// The plan the daemon process programs: `default/restart` port 80 on 10.96.0.10, one backend on 8080.
pub fn restart_plan(backend_ip: IpAddr) -> ServicePlan {
    plan("restart", Protocol::Tcp, "10.96.0.10".parse().unwrap(), 80, vec![backend(backend_ip, 8080, 1)], Scheduler::Rr)
}

/// The daemon process's main: restore, one full sync of [`restart_plan`], print the report, exit (leaving
/// everything in the kernel, as a daemon that stops does).
pub fn daemon_main(spec: &str) -> ! {
    let parts: Vec<&str> = spec.split('|').collect();
    let mut settings = EbpfSettings::new(switchyard_nftables::translate::Settings::default());
    settings.pin_dir = PathBuf::from(parts[0]);
    settings.cgroup = PathBuf::from(parts[1]);
    let nft = NftCommand { binary: "nft".into(), netns: Some(parts[2].to_string()) };
    let mut dp = EbpfDataplane::new(settings, Box::new(nft));
    dp.restore().expect("restore");
    let r = dp.sync(&NodePlan::default(), &desired(&[restart_plan(parts[3].parse().unwrap())]), None).expect("sync");
    println!("SY written={} unchanged={} removed={} failed={}", r.written, r.unchanged, r.removed, r.failed.len());
    std::process::exit(0)
}

impl Env {
    /// Runs the daemon process once (a separate process that exits) and returns its report line.
    pub fn run_daemon(&self, backend_ip: IpAddr) -> String {
        let exe = std::env::current_exe().expect("current exe");
        let spec =
            format!("{}|{}|{}|{backend_ip}", self.pin_dir.display(), self.cgroup.path().display(), self.node.name());
        let out = Command::new(exe)
            .args(["--exact", "daemon_process", "--nocapture", "--test-threads=1"])
            .env(DAEMON_ENV, spec)
            .stdin(Stdio::null())
            .output()
            .expect("run the daemon process");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "daemon process failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let at = stdout.find("SY ").unwrap_or_else(|| panic!("no report from the daemon process: {stdout}"));
        stdout[at + 3..].lines().next().unwrap().to_string()
    }
}
