//! Guest helpers: the node (the calling thread's own network namespace), pods and an external client in
//! namespaces of their own linked to it by veth pairs, tiny servers that say who they are and whom they
//! saw, and clients that tell an answer from a refusal and a drop.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
use nix::sys::time::TimeVal;

/// The node's address on the external link: its NodePort address (InternalIP).
pub const NODE_IP: &str = "192.168.50.1";
/// The node's IPv6 address on the external link.
pub const NODE_IP6: &str = "fd00:50::1";
/// The external client's address.
pub const EXTERNAL_IP: &str = "192.168.50.2";
/// The node's address on the pod link.
pub const NODE_POD_IP: &str = "10.244.0.1";

/// Moves the calling thread into a new network namespace (its own IPVS table) with loopback up.
pub fn enter_new_netns() {
    unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    ip("link set lo up");
}

/// Runs iproute2's `ip` in the calling thread's network namespace.
pub fn ip(args: &str) {
    let out = Command::new("/sbin/ip").args(args.split_whitespace()).output().expect("/sbin/ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes a sysctl of the calling thread's network namespace.
pub fn sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// Reads a sysctl of the calling thread's network namespace.
pub fn read_sysctl(name: &str) -> String {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")).trim().to_string()
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in a network namespace of its own; work for the namespace runs on it.
pub struct Ns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    tid: i32,
}

impl Ns {
    pub fn new() -> Ns {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let thread = std::thread::spawn(move || {
            enter_new_netns();
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            for job in job_rx {
                job();
            }
        });
        let tid = tid_rx.recv().unwrap();
        Ns { jobs: Some(jobs), thread: Some(thread), tid }
    }

    /// Runs `f` in the namespace (sockets it opens stay there) and returns its result.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs.as_ref().unwrap().send(Box::new(move || tx.send(f()).unwrap())).unwrap();
        rx.recv().expect("the namespace's job panicked")
    }

    /// A TCP server answering each line with `NAME PEER-ADDRESS`.
    pub fn tcp_server(&self, addr: SocketAddr, name: &'static str) {
        let listener = self.run(move || TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind TCP {addr}: {e}")));
        serve_lines(listener, name);
    }

    /// An SCTP server (a one-to-one style socket, which reads and writes as TCP does) answering each line
    /// with `NAME PEER-ADDRESS`.
    pub fn sctp_server(&self, addr: SocketAddr, name: &'static str) {
        let listener = self.run(move || {
            let socket = sctp_socket(addr)?;
            socket.bind(&addr.into())?;
            socket.listen(16)?;
            Ok::<_, std::io::Error>(TcpListener::from(socket))
        });
        serve_lines(listener.unwrap_or_else(|e| panic!("SCTP server on {addr}: {e}")), name);
    }

    /// A UDP server answering each datagram with `NAME PEER-ADDRESS`.
    pub fn udp_server(&self, addr: SocketAddr, name: &'static str) {
        let socket = self.run(move || UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind UDP {addr}: {e}")));
        std::thread::spawn(move || {
            let mut buf = [0; 1500];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(format!("{name} {}", from.ip()).as_bytes(), from);
            }
        });
    }
}

/// Answers each line on each connection `listener` accepts with `NAME PEER-ADDRESS`, on threads of its own.
fn serve_lines(listener: TcpListener, name: &'static str) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let peer = stream.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if writer.write_all(format!("{name} {peer}\n").as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// An SCTP one-to-one style socket (`SOCK_STREAM`, `IPPROTO_SCTP`) of `addr`'s family (needs the `sctp`
/// module).
fn sctp_socket(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::from(libc::IPPROTO_SCTP)))
}

impl Drop for Ns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The node (the calling thread's new namespace) with a pod network and an external client:
/// - pods: a namespace on `sy-p` (node 10.244.0.1/24, fd00:244::1/64), pod `i` at 10.244.0.(10+i) and
///   fd00:244::(10+i), default route via the node (the backends);
/// - client: a pod in a namespace of its own on `sy-c` (node 10.244.1.1/24, fd00:244:1::1/64) at
///   10.244.1.10 and fd00:244:1::10, so that backends answer it through the node, as other pods would;
/// - external: a namespace on `sy-x` (node 192.168.50.1/24, fd00:50::1/64), client 192.168.50.2 and
///   fd00:50::2 plus `extra` addresses, default route via the node.
pub struct Lab {
    pub pods: Ns,
    pub client: Ns,
    pub external: Ns,
}

/// The client pod's IPv4 address.
pub fn client_ip() -> IpAddr {
    "10.244.1.10".parse().unwrap()
}

/// The client pod's IPv6 address.
pub fn client_ip6() -> IpAddr {
    "fd00:244:1::10".parse().unwrap()
}

impl Lab {
    pub fn new(pods: usize, extra: &[&str]) -> Lab {
        enter_new_netns();
        sysctl("net.ipv6.conf.all.forwarding", "1");
        let lab = Lab { pods: Ns::new(), client: Ns::new(), external: Ns::new() };
        ip("link add sy-c type veth peer name sy-cc");
        ip(&format!("link set sy-cc netns {}", lab.client.tid));
        ip("addr add 10.244.1.1/24 dev sy-c");
        ip("addr add fd00:244:1::1/64 dev sy-c nodad");
        ip("link set sy-c up");
        lab.client.run(|| {
            ip("addr add 10.244.1.10/24 dev sy-cc");
            ip("addr add fd00:244:1::10/64 dev sy-cc nodad");
            ip("link set sy-cc up");
            ip("route add default via 10.244.1.1");
            ip("-6 route add default via fd00:244:1::1");
        });
        ip("link add sy-p type veth peer name sy-pp");
        ip(&format!("link set sy-pp netns {}", lab.pods.tid));
        ip("addr add 10.244.0.1/24 dev sy-p");
        ip("addr add fd00:244::1/64 dev sy-p nodad");
        ip("link set sy-p up");
        ip("link add sy-x type veth peer name sy-xx");
        ip(&format!("link set sy-xx netns {}", lab.external.tid));
        ip("addr add 192.168.50.1/24 dev sy-x");
        ip("addr add fd00:50::1/64 dev sy-x nodad");
        ip("link set sy-x up");
        // As on a real node: what is not local or on a link goes to a gateway (here the external client).
        ip("route add default via 192.168.50.2");
        lab.pods.run(move || {
            for i in 0..pods {
                ip(&format!("addr add 10.244.0.{}/24 dev sy-pp", 10 + i));
                ip(&format!("addr add fd00:244::{:x}/64 dev sy-pp nodad", 0x10 + i));
            }
            ip("link set sy-pp up");
            ip("route add default via 10.244.0.1");
            ip("-6 route add default via fd00:244::1");
        });
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        lab.external.run(move || {
            ip("addr add 192.168.50.2/24 dev sy-xx");
            ip("addr add fd00:50::2/64 dev sy-xx nodad");
            for a in extra {
                let a = if a.contains('/') {
                    a
                } else if a.contains(':') {
                    format!("{a}/128")
                } else {
                    format!("{a}/32")
                };
                ip(&format!("addr add {a} dev sy-xx{}", if a.contains(':') { " nodad" } else { "" }));
            }
            ip("link set sy-xx up");
            ip("route add default via 192.168.50.1");
            ip("-6 route add default via fd00:50::1");
        });
        lab
    }
}

/// Pod `i`'s IPv4 address.
pub fn pod_ip(i: usize) -> IpAddr {
    format!("10.244.0.{}", 10 + i).parse().unwrap()
}

/// Pod `i`'s IPv6 address.
pub fn pod_ip6(i: usize) -> IpAddr {
    format!("fd00:244::{:x}", 0x10 + i).parse().unwrap()
}

/// What became of an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by this server, which saw this source address.
    Answered { name: String, peer: IpAddr },
    /// Refused at once (TCP reset, ICMP unreachable).
    Refused,
    /// No answer in time.
    Dropped,
}

impl Outcome {
    /// The answering server's name; panics for a refusal or a drop.
    pub fn name(&self) -> &str {
        match self {
            Outcome::Answered { name, .. } => name,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn parse(answer: &str) -> Outcome {
        let mut words = answer.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let peer = words.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("bad answer {answer:?}"));
        Outcome::Answered { name, peer }
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | HostUnreachable | NetworkUnreachable => Outcome::Refused,
        TimedOut | WouldBlock => Outcome::Dropped,
        _ if e.raw_os_error() == Some(libc::EINPROGRESS) || e.raw_os_error() == Some(libc::EAGAIN) => Outcome::Dropped,
        _ => panic!("unexpected error: {e}"),
    }
}

/// A TCP connection kept open.
pub struct Held {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Held {
    /// Sends a line and returns the answer.
    pub fn ask(&mut self) -> Outcome {
        self.stream.write_all(b"again\n").expect("write on a held connection");
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(n) if n > 0 => Outcome::parse(&line),
            Ok(_) => Outcome::Refused,
            Err(e) => classify(&e),
        }
    }

    /// Closes with a reset (SO_LINGER 0), so that IPVS forgets the connection quickly.
    pub fn reset(self) {
        socket::setsockopt(&self.stream, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).unwrap();
        drop(self);
    }
}

/// Connects from `from` (any local address if `None`) to `to`, sends a line and reads the answer. The
/// connection stays open in the returned [`Held`] when answered.
pub fn tcp_connect(from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> (Outcome, Option<Held>) {
    let family = if to.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    let tv = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv).unwrap();
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv).unwrap();
    if let Some(ip) = from {
        socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(ip, 0)))
            .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    }
    if let Err(e) = socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to)) {
        return (classify(&std::io::Error::from(e)), None);
    }
    let stream = TcpStream::from(fd);
    let mut held = Held { reader: BufReader::new(stream.try_clone().unwrap()), stream };
    let outcome = held.ask();
    let held = matches!(outcome, Outcome::Answered { .. }).then_some(held);
    (outcome, held)
}

/// One TCP exchange from `from` to `to`, closed afterwards.
pub fn tcp(from: Option<IpAddr>, to: SocketAddr) -> Outcome {
    tcp_connect(from, to, Duration::from_secs(2)).0
}

/// One SCTP association from `from` (any local address if `None`) to `to`: a blocking connect (it returns once
/// the association is up, or after 2 s), one line sent, the answer read, closed afterwards.
///
/// A reject is an ICMP port unreachable, which Linux SCTP takes as a soft error while it sets an association
/// up: connect() retransmits its INIT until the timeout, as for a drop, and only `SO_ERROR` then tells the
/// two apart (ECONNREFUSED). Kube-proxy's reject is the same ICMP, so SCTP clients see it alike.
pub fn sctp(from: Option<IpAddr>, to: SocketAddr) -> Outcome {
    let timeout = Duration::from_secs(2);
    let socket = sctp_socket(to).unwrap_or_else(|e| panic!("an SCTP socket (is the sctp module loaded?): {e}"));
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket.set_write_timeout(Some(timeout)).unwrap();
    if let Some(ip) = from {
        socket.bind(&SocketAddr::new(ip, 0).into()).unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    }
    if let Err(e) = socket.connect(&to.into()) {
        return match socket.take_error() {
            Ok(Some(soft)) if soft.kind() == std::io::ErrorKind::ConnectionRefused => Outcome::Refused,
            _ => classify(&e),
        };
    }
    let stream = TcpStream::from(socket);
    let mut held = Held { reader: BufReader::new(stream.try_clone().unwrap()), stream };
    held.ask()
}

/// One UDP exchange from a new socket on `from` to `to`.
pub fn udp(from: Option<IpAddr>, to: SocketAddr) -> Outcome {
    let any: IpAddr = if to.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
    let s = UdpSocket::bind(SocketAddr::new(from.unwrap_or(any), 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.connect(to).unwrap();
    if let Err(e) = s.send(b"hello") {
        return classify(&e);
    }
    let mut buf = [0; 1500];
    match s.recv(&mut buf) {
        Ok(n) => Outcome::parse(&String::from_utf8_lossy(&buf[..n])),
        Err(e) => classify(&e),
    }
}

/// Polls `check` until it holds, or panics after `secs` seconds saying `what`.
pub fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
