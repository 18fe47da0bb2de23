//! Real traffic for the netns tests: backend servers inside pod namespaces and clients in any namespace.
//!
//! Servers are threads, not processes. Each one answers every TCP connection (at once, on accept) and every
//! UDP datagram with one line, `<name> <source ip>:<source port>`, so a test can tell which backend answered
//! and which source address the backend saw (masqueraded or not). On a TCP connection, each line the client
//! sends later is answered with `<name> <source> <line>`.
//!
//! Clients report an [`Outcome`]: answered (by whom, seen source), refused (ECONNREFUSED, with how long it
//! took, so "refused at once" can be told from a timeout), or timed out. Every wait is bounded.

use std::fmt;
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;

/// How long clients wait by default, for the connection and then for the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(2);

/// What a server said: who it is and the source it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The server's name (a pod name by default).
    pub by: String,
    /// The client address the server saw (after any NAT).
    pub source: SocketAddr,
    /// Anything after the source on the answer line (the echoed message, for [`HeldConnection::exchange`]).
    pub rest: String,
}

impl Answer {
    fn parse(line: &str) -> Option<Answer> {
        let mut parts = line.trim_end().splitn(3, ' ');
        let by = parts.next()?.to_string();
        let source = parts.next()?.parse().ok()?;
        let rest = parts.next().unwrap_or("").to_string();
        Some(Answer { by, source, rest })
    }
}

/// What one client attempt came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A server answered.
    Answered(Answer),
    /// The connection was refused (ECONNREFUSED: a TCP RST or an ICMP unreachable) after this long.
    Refused(Duration),
    /// Nothing came back within the timeout.
    Timeout,
    /// Anything else (another socket error, a malformed answer).
    Error(String),
}

impl Outcome {
    /// The answering server's name; panics with the outcome otherwise.
    pub fn by(&self) -> &str {
        match self {
            Outcome::Answered(a) => &a.by,
            other => panic!("expected an answer, got {other}"),
        }
    }

    /// The answer; panics with the outcome otherwise.
    pub fn answer(&self) -> &Answer {
        match self {
            Outcome::Answered(a) => a,
            other => panic!("expected an answer, got {other}"),
        }
    }

    /// Whether a server answered.
    pub fn is_answered(&self) -> bool {
        matches!(self, Outcome::Answered(_))
    }

    fn from_io(e: io::Error, started: Instant) -> Outcome {
        match e.kind() {
            ErrorKind::ConnectionRefused => Outcome::Refused(started.elapsed()),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
            _ => Outcome::Error(e.to_string()),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Answered(a) => write!(f, "answered by {} (saw source {})", a.by, a.source),
            Outcome::Refused(d) => write!(f, "refused after {d:?}"),
            Outcome::Timeout => write!(f, "timed out"),
            Outcome::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// A running backend server (TCP or UDP). Stops, and closes its sockets, when dropped.
#[derive(Debug)]
pub struct Server {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// The name the server answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many TCP connections or UDP datagrams it has answered.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a TCP server named `name` inside `ns`, listening on `0.0.0.0:port`. Returns once it listens.
pub fn tcp_server(ns: &Netns, name: &str, port: u16) -> Server {
    tcp_server_on(ns, name, SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Starts a TCP server named `name` inside `ns`, listening on `addr`. An IPv6 address listens for IPv6 only
/// (`IPV6_V6ONLY`), so `[::]:port` and `0.0.0.0:port` can both be served, each seeing plain source addresses.
pub fn tcp_server_on(ns: &Netns, name: &str, addr: SocketAddr) -> Server {
    let listener = ns
        .run(|| -> io::Result<TcpListener> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(128)?;
            Ok(socket.into())
        })
        .unwrap_or_else(|e| panic!("{name}: cannot listen on TCP {addr} in {}: {e}", ns.name()));
    listener.set_nonblocking(true).expect("set_nonblocking");
    let addr = listener.local_addr().expect("local_addr");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (n, st, sv) = (name.to_string(), stop.clone(), served.clone());
    let thread = thread::Builder::new()
        .name(format!("tcp-{name}"))
        .spawn(move || {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        sv.fetch_add(1, Ordering::Relaxed);
                        let (n, st) = (n.clone(), st.clone());
                        conns.push(thread::spawn(move || serve_tcp_conn(stream, peer, &n, &st)));
                        conns.retain(|c| !c.is_finished());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        eprintln!("{n}: accept failed: {e}");
                        thread::sleep(POLL);
                    }
                }
            }
            for c in conns {
                let _ = c.join();
            }
        })
        .expect("cannot spawn a server thread");
    Server { name: name.to_string(), addr, stop, served, thread: Some(thread) }
}

fn serve_tcp_conn(stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    if writeln!(writer, "{name} {peer}").is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with('\n') => {
                if writeln!(writer, "{name} {peer} {}", line.trim_end()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

/// Starts a UDP server named `name` inside `ns`, bound to `0.0.0.0:port`. Returns once it is bound.
pub fn udp_server(ns: &Netns, name: &str, port: u16) -> Server {
    udp_server_on(ns, name, SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Starts a UDP server named `name` inside `ns`, bound to `addr` (IPv6 only for an IPv6 address, as
/// [`tcp_server_on`]). Returns once it is bound.
pub fn udp_server_on(ns: &Netns, name: &str, addr: SocketAddr) -> Server {
    let socket = ns
        .run(|| -> io::Result<UdpSocket> {
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if addr.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&addr.into())?;
            Ok(socket.into())
        })
        .unwrap_or_else(|e| panic!("{name}: cannot bind UDP {addr} in {}: {e}", ns.name()));
    socket.set_read_timeout(Some(Duration::from_millis(50))).expect("set_read_timeout");
    let addr = socket.local_addr().expect("local_addr");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (n, st, sv) = (name.to_string(), stop.clone(), served.clone());
    let thread = thread::Builder::new()
        .name(format!("udp-{name}"))
        .spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                // Errors are read timeouts (to look at the stop flag) or ICMP errors of earlier answers.
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    sv.fetch_add(1, Ordering::Relaxed);
                    let _ = socket.send_to(format!("{n} {peer}\n").as_bytes(), peer);
                }
            }
        })
        .expect("cannot spawn a server thread");
    Server { name: name.to_string(), addr, stop, served, thread: Some(thread) }
}

/// In the calling thread's namespace: connects to `addr` over TCP and reads the server's first line.
pub fn tcp_request_here(addr: SocketAddr, timeout: Duration) -> Outcome {
    tcp_request_from_here(None, addr, timeout)
}

/// In the calling thread's namespace: connects to `addr` over TCP from source address `bind` (any port; the
/// kernel's choice when `None`) and reads the server's first line.
pub fn tcp_request_from_here(bind: Option<IpAddr>, addr: SocketAddr, timeout: Duration) -> Outcome {
    tcp_try_from_here(bind, addr, timeout, false).outcome
}

/// One client attempt, and (if asked for) the address the kernel connected the client's socket to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Try {
    /// What the attempt came to.
    pub outcome: Outcome,
    /// The socket's remote address in the kernel's socket table ([`kernel_peer`]) once it was connected, if
    /// it was looked up and found. A cgroup `connect` hook that rewrote the destination shows here, where
    /// `getpeername()` may show the address the application asked for.
    pub kernel_peer: Option<SocketAddr>,
}

/// [`tcp_request_from_here`], and with `look_up_peer` the address the kernel connected the socket to
/// ([`kernel_peer`], read once the connection is up).
pub fn tcp_try_from_here(bind: Option<IpAddr>, addr: SocketAddr, timeout: Duration, look_up_peer: bool) -> Try {
    let started = Instant::now();
    let connected = match bind {
        None => TcpStream::connect_timeout(&addr, timeout),
        Some(ip) => Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).and_then(|s| {
            s.bind(&SocketAddr::new(ip, 0).into())?;
            s.connect_timeout(&addr.into(), timeout)?;
            Ok(s.into())
        }),
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => return Try { outcome: Outcome::from_io(e, started), kernel_peer: None },
    };
    let kernel_peer = if look_up_peer { stream.local_addr().ok().and_then(|l| kernel_peer(false, l)) } else { None };
    let remaining = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(10));
    Try { outcome: read_answer(&stream, remaining, started), kernel_peer }
}

/// In the calling thread's network namespace: the remote address of the connected TCP (or, with `udp`, UDP)
/// socket whose local address is `local`, as the kernel's socket table has it (`/proc/thread-self/net/tcp`
/// and the like: established sockets only). `None` if there is no such socket.
pub fn kernel_peer(udp: bool, local: SocketAddr) -> Option<SocketAddr> {
    let table = match (udp, local.is_ipv4()) {
        (false, true) => "tcp",
        (false, false) => "tcp6",
        (true, true) => "udp",
        (true, false) => "udp6",
    };
    // thread-self: this thread may have entered another network namespace than the process.
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).ok()?;
    text.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace().skip(1);
        let (l, r, state) = (fields.next()?, fields.next()?, fields.next()?);
        // 01: TCP_ESTABLISHED, also what a connected UDP socket shows.
        (state == "01" && proc_net_addr(l)? == local).then(|| proc_net_addr(r)).flatten()
    })
}

/// Parses an address of `/proc/net/{tcp,udp}[6]`: `0100007F:1F90` (the address words as the kernel holds them,
/// in native byte order, then the port).
fn proc_net_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn read_answer(stream: &TcpStream, timeout: Duration, started: Instant) -> Outcome {
    if let Err(e) = stream.set_read_timeout(Some(timeout)) {
        return Outcome::Error(e.to_string());
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(0) => Outcome::Error("connection closed before any answer".into()),
        Ok(_) => match Answer::parse(&line) {
            Some(a) => Outcome::Answered(a),
            None => Outcome::Error(format!("malformed answer {line:?}")),
        },
        Err(e) => Outcome::from_io(e, started),
    }
}

/// From `ns`: connects to `addr` over TCP and reads the server's first line.
pub fn tcp_request(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Outcome {
    ns.run(|| tcp_request_here(addr, timeout))
}

/// From `ns`: `count` TCP requests, one after the other, each a new connection.
pub fn tcp_requests(ns: &Netns, addr: SocketAddr, count: usize, timeout: Duration) -> Vec<Outcome> {
    ns.run(|| (0..count).map(|_| tcp_request_here(addr, timeout)).collect())
}

/// In the calling thread's namespace: sends one datagram to `addr` from a fresh socket and waits for an answer.
pub fn udp_request_here(addr: SocketAddr, timeout: Duration) -> Outcome {
    udp_request_from_here(None, addr, timeout)
}

/// In the calling thread's namespace: sends one datagram to `addr` from a fresh socket bound to source
/// address `bind` (the kernel's choice when `None`) and waits for an answer.
pub fn udp_request_from_here(bind: Option<IpAddr>, addr: SocketAddr, timeout: Duration) -> Outcome {
    udp_try_from_here(bind, addr, timeout, false).outcome
}

/// [`udp_request_from_here`], and with `look_up_peer` the address the kernel connected the socket to
/// ([`kernel_peer`]).
pub fn udp_try_from_here(bind: Option<IpAddr>, addr: SocketAddr, timeout: Duration, look_up_peer: bool) -> Try {
    match UdpClient::connect_from_here(bind, addr) {
        Ok(c) => {
            let kernel_peer = if look_up_peer { kernel_peer(true, c.local_addr()) } else { None };
            Try { outcome: c.request(timeout), kernel_peer }
        }
        Err(e) => Try { outcome: Outcome::Error(e.to_string()), kernel_peer: None },
    }
}

/// From `ns`: sends one datagram to `addr` from a fresh socket and waits for an answer.
pub fn udp_request(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Outcome {
    ns.run(|| udp_request_here(addr, timeout))
}

/// A UDP client that keeps one connected socket (one source port), to send to the same address repeatedly.
#[derive(Debug)]
pub struct UdpClient {
    socket: UdpSocket,
}

impl UdpClient {
    /// Opens the socket inside `ns` and connects it to `addr`.
    pub fn new(ns: &Netns, addr: SocketAddr) -> UdpClient {
        ns.run(|| UdpClient::connect_here(addr))
            .unwrap_or_else(|e| panic!("cannot open a UDP socket to {addr} in {}: {e}", ns.name()))
    }

    fn connect_here(addr: SocketAddr) -> io::Result<UdpClient> {
        UdpClient::connect_from_here(None, addr)
    }

    fn connect_from_here(bind: Option<IpAddr>, addr: SocketAddr) -> io::Result<UdpClient> {
        let local = match (bind, addr) {
            (Some(ip), _) => SocketAddr::new(ip, 0),
            (None, SocketAddr::V4(_)) => SocketAddr::from(([0, 0, 0, 0], 0)),
            (None, SocketAddr::V6(_)) => SocketAddr::from(([0u16; 8], 0)),
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(addr)?;
        Ok(UdpClient { socket })
    }

    /// The local address (source port) of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local_addr")
    }

    /// Sends one datagram and waits up to `timeout` for the answer. An ICMP unreachable gives `Refused`.
    pub fn request(&self, timeout: Duration) -> Outcome {
        let started = Instant::now();
        if let Err(e) = self.socket.send(b"ping\n") {
            return Outcome::from_io(e, started);
        }
        let mut buf = [0u8; 2048];
        loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return Outcome::Timeout;
            }
            if let Err(e) = self.socket.set_read_timeout(Some(remaining)) {
                return Outcome::Error(e.to_string());
            }
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    return match Answer::parse(&text) {
                        Some(a) => Outcome::Answered(a),
                        None => Outcome::Error(format!("malformed answer {text:?}")),
                    };
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Outcome::from_io(e, started),
            }
        }
    }
}

/// A TCP connection held open, to exchange messages on it later (e.g. across a daemon restart).
#[derive(Debug)]
pub struct HeldConnection {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The server's greeting: who answered and the source it saw.
    pub greeting: Answer,
}

impl HeldConnection {
    /// Connects from `ns` to `addr` and reads the greeting; panics (with the outcome) if no server answers.
    pub fn open(ns: &Netns, addr: SocketAddr, timeout: Duration) -> HeldConnection {
        let started = Instant::now();
        let stream = ns.run(|| TcpStream::connect_timeout(&addr, timeout)).unwrap_or_else(|e| {
            panic!("cannot connect to {addr} from {}: {}", ns.name(), Outcome::from_io(e, started))
        });
        stream.set_read_timeout(Some(timeout)).expect("set_read_timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("try_clone"));
        let mut line = String::new();
        reader.read_line(&mut line).unwrap_or_else(|e| panic!("no greeting from {addr}: {e}"));
        let greeting = Answer::parse(&line).unwrap_or_else(|| panic!("malformed greeting {line:?} from {addr}"));
        HeldConnection { stream, reader, greeting }
    }

    /// Sends `msg` (one line) and waits up to `timeout` for the server's answer to it.
    pub fn exchange(&mut self, msg: &str, timeout: Duration) -> io::Result<Answer> {
        assert!(!msg.contains('\n'), "one line only");
        self.stream.set_read_timeout(Some(timeout))?;
        writeln!(self.stream, "{msg}")?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
        Answer::parse(&line).ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("malformed answer {line:?}")))
    }

    /// The local (client) address of the connection.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }
}

/// Counts outcomes by answering server (`"refused"`, `"timeout"`, `"error"` for the others), sorted by name.
pub fn tally(outcomes: &[Outcome]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for o in outcomes {
        let k = match o {
            Outcome::Answered(a) => a.by.clone(),
            Outcome::Refused(_) => "refused".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Error(_) => "error".into(),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------------------
// SCTP by hand. Where the kernel has no SCTP sockets (no `sctp` module) but conntrack and NAT handle SCTP,
// a Service's SCTP path can still be proven: an INIT chunk is built here and sent on a raw IPPROTO_SCTP
// socket, and a raw socket in the backend's namespace sees what arrived (addresses, ports, checksum).

/// The IP protocol number of SCTP.
pub const IPPROTO_SCTP: i32 = 132;

/// CRC32c (Castagnoli, reflected polynomial 0x82F63B78): SCTP's checksum (RFC 9260 appendix A).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// An SCTP packet from `src_port` to `dst_port` holding one INIT chunk (verification tag 0, as an INIT
/// must have), with its checksum filled in.
pub fn sctp_init_packet(src_port: u16, dst_port: u16, initiate_tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled in below
    p.push(1); // chunk type INIT
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&initiate_tag.to_be_bytes());
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&10u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&10u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&initiate_tag.to_be_bytes()); // initial TSN
    let sum = crc32c(&p);
    // The CRC goes on the wire least significant byte first (the kernel's `sctp_compute_cksum`).
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// Whether an SCTP packet's checksum is right.
pub fn sctp_checksum_ok(packet: &[u8]) -> bool {
    if packet.len() < 12 {
        return false;
    }
    let mut copy = packet.to_vec();
    copy[8..12].copy_from_slice(&[0; 4]);
    crc32c(&copy).to_le_bytes() == packet[8..12]
}

/// In the calling thread's namespace: sends an SCTP INIT with initiate tag `tag` from source port
/// `src_port` to `dst` on a raw socket (the kernel adds the IPv4 header and picks the source address).
pub fn send_sctp_init_here(dst: SocketAddrV4, src_port: u16, tag: u32) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_SCTP)))?;
    let packet = sctp_init_packet(src_port, dst.port(), tag);
    socket.send_to(&packet, &SocketAddr::V4(SocketAddrV4::new(*dst.ip(), 0)).into())?;
    Ok(())
}

/// From `ns`: sends an SCTP INIT with initiate tag `tag` to `dst` from source port `src_port`.
pub fn send_sctp_init(ns: &Netns, dst: SocketAddrV4, src_port: u16, tag: u32) {
    ns.run(|| send_sctp_init_here(dst, src_port, tag))
        .unwrap_or_else(|e| panic!("cannot send an SCTP INIT to {dst} from {}: {e}", ns.name()));
}

/// An SCTP packet as it arrived in a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SctpSeen {
    /// Source address and port (after any NAT).
    pub src: SocketAddrV4,
    /// Destination address and port (after any NAT).
    pub dst: SocketAddrV4,
    /// The first chunk's type (1: INIT).
    pub chunk_type: u8,
    /// An INIT's initiate tag (0 for other chunks): tells the packets of one test apart whatever NAT did
    /// to their ports.
    pub initiate_tag: u32,
    /// Whether the SCTP checksum is right (NAT must fix it up after rewriting ports).
    pub checksum_ok: bool,
}

/// A raw IPPROTO_SCTP socket in a namespace: sees every IPv4 SCTP packet delivered there.
#[derive(Debug)]
pub struct SctpSniffer {
    socket: Socket,
}

impl SctpSniffer {
    /// Opens the raw socket inside `ns`.
    pub fn open(ns: &Netns) -> SctpSniffer {
        let socket = ns
            .run(|| Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_SCTP))))
            .unwrap_or_else(|e| panic!("cannot open a raw SCTP socket in {}: {e}", ns.name()));
        SctpSniffer { socket }
    }

    /// Waits up to `timeout` for an SCTP INIT with initiate tag `tag` (other packets are skipped).
    pub fn wait_for(&self, tag: u32, timeout: Duration) -> Option<SctpSeen> {
        let started = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                return None;
            }
            self.socket.set_read_timeout(Some(remaining)).ok()?;
            let n = match io::Read::read(&mut &self.socket, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
            };
            if let Some(seen) = parse_ipv4_sctp(&buf[..n]).filter(|s| s.chunk_type == 1 && s.initiate_tag == tag) {
                return Some(seen);
            }
        }
    }
}

/// Parses an IPv4 packet (header included, as raw IPv4 sockets deliver it) holding SCTP.
fn parse_ipv4_sctp(p: &[u8]) -> Option<SctpSeen> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    if p.len() < ihl + 20 || p[9] != IPPROTO_SCTP as u8 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let sctp = &p[ihl..];
    let port = |at: usize| u16::from_be_bytes([sctp[at], sctp[at + 1]]);
    Some(SctpSeen {
        src: SocketAddrV4::new(ip(12), port(0)),
        dst: SocketAddrV4::new(ip(16), port(2)),
        chunk_type: sctp[12],
        initiate_tag: if sctp[12] == 1 { u32::from_be_bytes([sctp[16], sctp[17], sctp[18], sctp[19]]) } else { 0 },
        checksum_ok: sctp_checksum_ok(sctp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Addresses of /proc/net/tcp and tcp6 parse as the kernel prints them (on a little-endian machine).
    #[test]
    fn proc_net_addresses() {
        if cfg!(target_endian = "little") {
            assert_eq!(proc_net_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
            assert_eq!(
                proc_net_addr("440200FD00000000000000000A000000:0050"),
                Some("[fd00:244::a]:80".parse().unwrap())
            );
        }
        assert_eq!(proc_net_addr("0100007F"), None);
    }

    /// CRC32c matches the standard check value, and a built INIT passes its own checksum test.
    #[test]
    fn crc32c_and_init_checksum() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        let p = sctp_init_packet(40000, 80, 7);
        assert_eq!(p.len(), 32);
        assert!(sctp_checksum_ok(&p));
        let mut bad = p.clone();
        bad[1] ^= 1;
        assert!(!sctp_checksum_ok(&bad));
    }
}
