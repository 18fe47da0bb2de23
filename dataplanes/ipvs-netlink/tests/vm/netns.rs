//! Guest helpers: network namespaces per thread, a backend namespace linked by veth, tiny servers and
//! clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};

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

type Job = Box<dyn FnOnce() + Send>;

/// The calling thread's fresh namespace (the director, 10.1.0.1 on `sy-d`, with a route to 10.96.0.0/16
/// through it) linked by a veth pair to a backend namespace holding `backends` on `sy-b`. Work for the
/// backend side runs on a thread that lives in it ([`Lab::in_backend`]).
pub struct Lab {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lab {
    pub fn new(backends: &[Ipv4Addr]) -> Lab {
        enter_new_netns();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let thread = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
            for job in job_rx {
                job();
            }
        });
        let tid = tid_rx.recv().unwrap();
        ip("link add sy-d type veth peer name sy-b");
        ip(&format!("link set sy-b netns {tid}"));
        ip("addr add 10.1.0.1/24 dev sy-d");
        ip("link set sy-d up");
        ip("route add 10.96.0.0/16 dev sy-d");
        let lab = Lab { jobs: Some(jobs), thread: Some(thread) };
        let backends = backends.to_vec();
        lab.in_backend(move || {
            ip("link set lo up");
            for b in backends {
                ip(&format!("addr add {b}/24 dev sy-b"));
            }
            ip("link set sy-b up");
            ip("route add default via 10.1.0.1");
        });
        lab
    }

    /// Runs `f` in the backend namespace (sockets it opens stay there) and returns its result.
    pub fn in_backend<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        self.jobs.as_ref().unwrap().send(Box::new(move || tx.send(f()).unwrap())).unwrap();
        rx.recv().expect("the backend job panicked")
    }

    /// A TCP server in the backend namespace answering every connection with `name`.
    pub fn tcp_backend(&self, addr: SocketAddr, name: &'static str) {
        let listener = self.in_backend(move || TcpListener::bind(addr).expect("bind the TCP backend"));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let _ = BufReader::new(&stream).read_line(&mut line);
                let _ = stream.write_all(format!("{name}\n").as_bytes());
            }
        });
    }

    /// A UDP server in the backend namespace answering every datagram with `name`.
    pub fn udp_backend(&self, addr: SocketAddr, name: &'static str) {
        let socket = self.in_backend(move || UdpSocket::bind(addr).expect("bind the UDP backend"));
        std::thread::spawn(move || {
            let mut buf = [0; 1500];
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), from);
            }
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects over TCP, says hello, returns the answer line.
pub fn ask_tcp(to: SocketAddr) -> String {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap_or_else(|e| panic!("read from {to}: {e}"));
    answer.trim().to_string()
}

/// Sends one UDP datagram, returns the answer.
pub fn ask_udp(to: SocketAddr) -> String {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.send_to(b"hello", to).unwrap();
    let mut buf = [0; 1500];
    let (n, _) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("no UDP answer from {to}: {e}"));
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Polls `check` until it holds, or panics after `secs` seconds saying `what`.
pub fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
