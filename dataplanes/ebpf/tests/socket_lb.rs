//! The socket load balancer against the real kernel: programs attached to a test cgroup, clients in it
//! inside pod network namespaces, backends in other pods, real TCP and UDP sockets.

#[path = "support/kit.rs"]
mod kit;

use std::net::IpAddr;

use kit::*;
use switchyard_model::dataplane::Dataplane;
use switchyard_model::{Protocol, Scheduler};

const VIP: &str = "10.96.0.10";

fn vip() -> IpAddr {
    VIP.parse().unwrap()
}

/// Not a test: the client process the other tests start (a no-op unless the client env var is set).
#[test]
fn client_process() {
    if let Ok(spec) = std::env::var(CLIENT_ENV) {
        client_main(&spec);
    }
}

/// Not a test: the daemon process the restart test starts (a no-op unless the daemon env var is set).
#[test]
fn daemon_process() {
    if let Ok(spec) = std::env::var(DAEMON_ENV) {
        daemon_main(&spec);
    }
}

/// A TCP connect() to a ClusterIP reaches the backend, and getpeername() shows the ClusterIP.
#[test]
fn clusterip_tcp_connect_is_rewritten() {
    let env = Env::new(2);
    let _servers = env.serve(&[1]);
    let mut dp = env.dataplane();
    sync(&mut dp, &[plan("web", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 1)], Scheduler::Random)]);
    let mut c = env.client(0);
    let (name, peer) = c.tcp(&format!("{VIP}:80"));
    assert_eq!(name, "pod1");
    assert_eq!(peer, format!("{VIP}:80"));
}

fn vip_port(port: u16) -> String {
    format!("{VIP}:{port}")
}

/// UDP: a connected socket reaches the backend (getpeername shows the ClusterIP); an unconnected socket's
/// replies come from the ClusterIP (recvmsg rewrite), through both sendmsg4 and sendmsg6 (IPv4-mapped), and
/// one socket keeps its backend for the Service address.
#[test]
fn clusterip_udp_connected_and_unconnected() {
    let env = Env::new(4);
    let _servers = env.serve(&[1, 2, 3]);
    let mut dp = env.dataplane();
    let backends = vec![pod_backend(&env, 1), pod_backend(&env, 2), pod_backend(&env, 3)];
    sync(&mut dp, &[plan("dns", Protocol::Udp, vip(), 53, backends, Scheduler::Random)]);
    let mut c = env.client(0);

    let a = c.cmd(&format!("udpc {}", vip_port(53)));
    let w: Vec<&str> = a.split_whitespace().collect();
    assert_eq!(w[0], "ok", "{a}");
    assert!(w[2].starts_with("pod"), "{a}");
    assert_eq!(w[3], vip_port(53), "getpeername of a connected UDP socket: {a}");

    let first = c.cmd(&format!("udpu {}", vip_port(53)));
    let w: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(w[0], "ok", "{first}");
    assert_eq!(w[2], vip_port(53), "the reply's source is the ClusterIP: {first}");
    for _ in 0..10 {
        assert_eq!(c.cmd(&format!("udpu {}", vip_port(53))), first, "an unconnected socket keeps its backend");
    }

    let a = c.cmd(&format!("udpu4 {}", vip_port(53)));
    let w: Vec<&str> = a.split_whitespace().collect();
    assert_eq!(w[0], "ok", "{a}");
    assert_eq!(w[2], vip_port(53), "sendmsg4/recvmsg4: {a}");
}

/// IPv6 ClusterIPs: TCP through connect6 and getpeername6, UDP through sendmsg6 and recvmsg6.
#[test]
fn clusterip_ipv6() {
    let env = Env::new(2);
    let _servers = env.serve(&[1]);
    let mut dp = env.dataplane();
    let vip6: IpAddr = "fd00:96::10".parse().unwrap();
    let be = backend(IpAddr::V6(env.pods[1].ip6), 8080, 1);
    sync(
        &mut dp,
        &[
            plan("web6", Protocol::Tcp, vip6, 80, vec![be.clone()], Scheduler::Random),
            plan("dns6", Protocol::Udp, vip6, 53, vec![be], Scheduler::Random),
        ],
    );
    let mut c = env.client(0);
    let (name, peer) = c.tcp("[fd00:96::10]:80");
    assert_eq!((name.as_str(), peer.as_str()), ("pod1", "[fd00:96::10]:80"));
    let a = c.cmd("udpu [fd00:96::10]:53");
    assert_eq!(a, "ok pod1 [fd00:96::10]:53");
}

fn names(c: &mut Client, addr: &str, n: usize) -> Vec<String> {
    (0..n).map(|_| c.tcp(addr).0).collect()
}

fn count(names: &[String], name: &str) -> usize {
    names.iter().filter(|n| *n == name).count()
}

/// rr takes the backends in turn; wrr in proportion to their weights, interleaved.
#[test]
fn scheduler_rr_and_wrr() {
    let env = Env::new(4);
    let _servers = env.serve(&[1, 2, 3]);
    let mut dp = env.dataplane();
    let b = |i: usize, w: u32| backend(IpAddr::V4(env.pods[i].ip), 8080, w);
    sync(
        &mut dp,
        &[
            plan("rr", Protocol::Tcp, vip(), 80, vec![b(1, 1), b(2, 1), b(3, 1)], Scheduler::Rr),
            plan("wrr", Protocol::Tcp, vip(), 81, vec![b(1, 1), b(2, 2), b(3, 3)], Scheduler::Wrr),
        ],
    );
    let mut c = env.client(0);
    let rr = names(&mut c, &vip_port(80), 9);
    for w in rr.chunks(3) {
        let mut w = w.to_vec();
        w.sort();
        assert_eq!(w, ["pod1", "pod2", "pod3"], "every round of rr sees each backend once: {rr:?}");
    }
    let wrr = names(&mut c, &vip_port(81), 12);
    assert_eq!((count(&wrr, "pod1"), count(&wrr, "pod2"), count(&wrr, "pod3")), (2, 4, 6), "{wrr:?}");
    assert!(wrr.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])), "wrr interleaves: {wrr:?}");
}

/// random reaches every backend; dh sends every connection to a Service address to one backend; sh keeps
/// a client (its network namespace, or its bound source address) on one backend.
#[test]
fn scheduler_random_dh_sh() {
    let env = Env::new(5);
    let _servers = env.serve(&[2, 3, 4]);
    let mut dp = env.dataplane();
    let bs = vec![pod_backend(&env, 2), pod_backend(&env, 3), pod_backend(&env, 4)];
    sync(
        &mut dp,
        &[
            plan("random", Protocol::Tcp, vip(), 80, bs.clone(), Scheduler::Random),
            plan("dh", Protocol::Tcp, vip(), 81, bs.clone(), Scheduler::Dh),
            plan("sh", Protocol::Tcp, vip(), 82, bs, Scheduler::Sh),
        ],
    );
    let mut c0 = env.client(0);
    let mut c1 = env.client(1);
    let random = names(&mut c0, &vip_port(80), 60);
    for p in ["pod2", "pod3", "pod4"] {
        assert!(count(&random, p) > 0, "random reaches {p}: {random:?}");
    }
    let dh: Vec<String> =
        names(&mut c0, &vip_port(81), 5).into_iter().chain(names(&mut c1, &vip_port(81), 5)).collect();
    assert!(dh.iter().all(|n| *n == dh[0]), "dh: one backend for the address: {dh:?}");
    for c in [&mut c0, &mut c1] {
        let sh = names(c, &vip_port(82), 8);
        assert!(sh.iter().all(|n| *n == sh[0]), "sh: one backend per client: {sh:?}");
    }
    // Bound to its own address, a client is identified by it: the same for every connection.
    let src = env.pods[0].ip.to_string();
    let bound: Vec<String> = (0..6)
        .map(|_| {
            let a = c0.cmd(&format!("tcpfrom {src} {}", vip_port(82)));
            a.split_whitespace().nth(1).unwrap().to_string()
        })
        .collect();
    assert!(bound.iter().all(|n| *n == bound[0]), "sh by bound source: {bound:?}");
}

/// lc sends a new connection to the backend with the fewest open ones (counted by connect and
/// sock_release); nq to an idle one; wlc and sed by connections per weight.
#[test]
fn scheduler_least_connections() {
    let env = Env::new(4);
    let _servers = env.serve(&[1, 2, 3]);
    let mut dp = env.dataplane();
    let b = |i: usize, w: u32| backend(IpAddr::V4(env.pods[i].ip), 8080, w);
    sync(
        &mut dp,
        &[
            plan("lc", Protocol::Tcp, vip(), 80, vec![b(1, 1), b(2, 1), b(3, 1)], Scheduler::Lc),
            plan("nq", Protocol::Tcp, vip(), 81, vec![b(1, 1), b(2, 1), b(3, 1)], Scheduler::Nq),
            plan("wlc", Protocol::Tcp, vip(), 82, vec![b(1, 1), b(2, 3)], Scheduler::Wlc),
            plan("sed", Protocol::Tcp, vip(), 83, vec![b(1, 1), b(2, 3)], Scheduler::Sed),
        ],
    );
    let mut c = env.client(0);
    let hold = |c: &mut Client, port: u16| -> (String, String) {
        let a = c.cmd(&format!("hold {}", vip_port(port)));
        let w: Vec<&str> = a.split_whitespace().collect();
        assert_eq!(w[0], "ok", "{a}");
        (w[1].to_string(), w[2].to_string())
    };

    // lc: three held connections spread over the three backends.
    let held: Vec<(String, String)> = (0..3).map(|_| hold(&mut c, 80)).collect();
    let mut got: Vec<&str> = held.iter().map(|h| h.1.as_str()).collect();
    got.sort();
    assert_eq!(got, ["pod1", "pod2", "pod3"], "lc spreads held connections");
    // Close the one on pod2: it is now the least loaded, and takes the next two... one of them.
    let (id2, _) = held.iter().find(|h| h.1 == "pod2").unwrap();
    assert_eq!(c.cmd(&format!("close {id2}")), "ok");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let key = (
        switchyard_model::ServicePortName {
            namespace: "default".into(),
            name: "lc".into(),
            port: "p".into(),
            protocol: Protocol::Tcp,
        },
        switchyard_model::Family::V4,
    );
    loop {
        let counts = dp.connection_counts(&key).unwrap();
        if counts.values().sum::<u64>() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sock_release did not release the count: {counts:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(hold(&mut c, 80).1, "pod2", "lc picks the backend whose connection closed");

    // nq: an idle backend first, whatever else.
    let first: Vec<String> = (0..3).map(|_| hold(&mut c, 81).1).collect();
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, ["pod1", "pod2", "pod3"], "nq takes idle backends first: {first:?}");

    // wlc with weights 1 and 3: of four held connections, pod2 gets three.
    let wlc: Vec<String> = (0..4).map(|_| hold(&mut c, 82).1).collect();
    assert_eq!((count(&wlc, "pod1"), count(&wlc, "pod2")), (1, 3), "wlc: {wlc:?}");
    // sed with weights 1 and 3: (c+1)/w picks pod2, pod2, pod1 or pod2 ... 4 connections: pod2 x3, pod1 x1.
    let sed: Vec<String> = (0..4).map(|_| hold(&mut c, 83).1).collect();
    assert_eq!((count(&sed, "pod1"), count(&sed, "pod2")), (1, 3), "sed: {sed:?}");
    assert_eq!(sed[0], "pod2", "sed sends the first connection to the heavier backend: {sed:?}");
}

/// ClientIP affinity: a client keeps its backend while it connects within the timeout, another client is
/// scheduled on its own, and after the timeout without traffic the client is scheduled anew.
#[test]
fn affinity_holds_and_expires() {
    let env = Env::new(5);
    let _servers = env.serve(&[2, 3, 4]);
    let mut dp = env.dataplane();
    let mut p = plan(
        "sticky",
        Protocol::Tcp,
        vip(),
        80,
        vec![pod_backend(&env, 2), pod_backend(&env, 3), pod_backend(&env, 4)],
        Scheduler::Rr,
    );
    p.affinity_timeout = Some(2);
    sync(&mut dp, &[p]);
    let mut c0 = env.client(0);
    let mut c1 = env.client(1);
    let first = names(&mut c0, &vip_port(80), 5);
    assert!(first.iter().all(|n| *n == first[0]), "affinity holds: {first:?}");
    let other = c1.tcp(&vip_port(80)).0;
    assert_ne!(other, first[0], "another client is scheduled by rr, not given the first one's backend");
    // Traffic within the timeout keeps it.
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(c0.tcp(&vip_port(80)).0, first[0]);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert_eq!(c0.tcp(&vip_port(80)).0, first[0], "each connection renews the affinity");
    // No traffic for longer than the timeout: rr picks the next backend.
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let after = c0.tcp(&vip_port(80)).0;
    assert_ne!(after, first[0], "affinity expired after the timeout");
    assert_eq!(names(&mut c0, &vip_port(80), 3), vec![after.clone(); 3], "and holds to the new backend");
}

/// A client holding a connected UDP socket to a backend that leaves: the socket is destroyed
/// (ECONNABORTED) within a second of the sync, and connecting again reaches a live backend.
#[test]
fn connected_udp_socket_of_removed_backend_is_destroyed() {
    let env = Env::new(3);
    let _servers = env.serve(&[1, 2]);
    let mut dp = env.dataplane();
    let both = plan("dns", Protocol::Udp, vip(), 53, vec![pod_backend(&env, 1), pod_backend(&env, 2)], Scheduler::Rr);
    sync(&mut dp, std::slice::from_ref(&both));
    let mut c = env.client(0);
    let a = c.cmd(&format!("udpc {}", vip_port(53)));
    let w: Vec<&str> = a.split_whitespace().collect();
    assert_eq!(w[0], "ok", "{a}");
    let (id, first) = (w[1].to_string(), w[2].to_string());
    assert_eq!(c.cmd(&format!("udpsend {id}")), format!("ok {first}"));

    let keep = if first == "pod1" { 2 } else { 1 };
    let only = plan("dns", Protocol::Udp, vip(), 53, vec![pod_backend(&env, keep)], Scheduler::Rr);
    let started = std::time::Instant::now();
    sync(&mut dp, &[only]);
    let answer = c.cmd(&format!("udpsend {id}"));
    let elapsed = started.elapsed();
    assert!(
        answer.starts_with("err ECONNABORTED") || answer.starts_with("err EDESTADDRREQ"),
        "the socket pinned to {first} must be destroyed: {answer}"
    );
    assert!(elapsed < std::time::Duration::from_secs(1), "destroyed within a second: {elapsed:?}");
    let again = c.cmd(&format!("udpc {}", vip_port(53)));
    assert!(
        again.starts_with("ok ") && again.split_whitespace().nth(2) == Some(&format!("pod{keep}")),
        "connecting again reaches the live backend: {again}"
    );
}

/// Every connect() during a burst of rewrites of a Service's backends reaches a backend of the old or the
/// new set: the maps are never seen half-written. (nftables lives elsewhere here, so a connect() the socket
/// hooks let through unrewritten would fail.)
#[test]
fn updates_never_show_a_half_written_service() {
    let env = Env::new(5);
    let _servers = env.serve(&[1, 2, 3, 4]);
    let elsewhere = switchyard_tests::netns::Netns::new(&format!("{}x", env.prefix));
    let mut dp = env.dataplane_nft_in(elsewhere.name());
    let a = plan("flip", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 1), pod_backend(&env, 2)], Scheduler::Rr);
    let b = plan("flip", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 3), pod_backend(&env, 4)], Scheduler::Rr);
    sync(&mut dp, std::slice::from_ref(&a));
    let mut c = env.client(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flips = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flipper = {
        let (stop, flips) = (stop.clone(), flips.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let p = if n % 2 == 0 { &b } else { &a };
                let key = (p.name.clone(), p.family);
                let desired = desired(std::slice::from_ref(p));
                let report = dp
                    .sync(&switchyard_model::NodePlan::default(), &desired, Some(&[key].into_iter().collect()))
                    .unwrap();
                assert!(report.failed.is_empty() && report.written == 1, "{report:?}");
                n += 1;
                flips.store(n, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // Connect in rounds until the backends have been rewritten at least 20 times (bounded).
    let mut names: Vec<String> = Vec::new();
    for _ in 0..50 {
        let answer = c.cmd(&format!("tcpmany {} 50", vip_port(80)));
        let mut w = answer.split_whitespace();
        assert_eq!(w.next(), Some("ok"), "{answer}");
        assert_eq!(w.next(), Some("0"), "connections failed while the backends were rewritten: {answer}");
        names.extend(w.next().unwrap().split(',').map(String::from));
        if flips.load(std::sync::atomic::Ordering::Relaxed) >= 20 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert!(flips.load(std::sync::atomic::Ordering::Relaxed) >= 20, "the backends were rewritten while connecting");
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for p in ["pod1", "pod2", "pod3", "pod4"] {
        assert!(names.contains(&p), "both sets served: {p} missing");
    }
}

/// A localhost NodePort (`127.0.0.1` in the node plan) is served by the socket hooks; the same NodePort on
/// the node's address, from a socket outside the cgroup, is served by nftables; so are the ClusterIP for
/// such a socket (the fallback) and a Service without endpoints (refused).
#[test]
fn nodeport_localhost_by_hooks_external_by_nftables() {
    let env = Env::new(2);
    let _servers = env.serve(&[1]);
    let mut dp = env.dataplane();
    let mut p = plan("np", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 1)], Scheduler::Random);
    p.frontends.push(switchyard_model::Frontend {
        kind: switchyard_model::FrontendKind::NodePort,
        ip: "0.0.0.0".parse().unwrap(),
        port: 30080,
    });
    let mut empty = plan("empty", Protocol::Tcp, vip(), 81, vec![], Scheduler::Random);
    empty.external.backends.clear();
    let mut node = switchyard_model::NodePlan::default();
    node.nodeport_ips
        .insert(switchyard_model::Family::V4, Some(vec!["10.244.0.1".parse().unwrap(), "127.0.0.1".parse().unwrap()]));
    sync_node(&mut dp, &node, &[p, empty]);

    let mut c = env.client(0);
    assert_eq!(c.tcp("127.0.0.1:30080").0, "pod1", "localhost NodePort through the socket hooks");
    let refused = c.cmd(&format!("tcp {}", vip_port(81)));
    assert_eq!(refused, "err ECONNREFUSED", "a Service without endpoints is refused (by nftables)");

    // A socket of this test process (not in the cgroup) in pod0's namespace: only nftables serves it.
    let outside = |addr: &'static str| {
        env.pods[0].ns.run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), std::time::Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            s.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 16];
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).trim().to_string()
        })
    };
    assert_eq!(outside("10.244.0.1:30080"), "pod1", "NodePort on the node address, by nftables");
    assert_eq!(outside("10.96.0.10:80"), "pod1", "ClusterIP from an unhooked socket, by nftables");
}

/// `dump` reads the maps: frontends, scheduler, affinity, and per-backend connections, packets and bytes
/// counted by the programs (merged with the nftables table's view of the same Service port).
#[test]
fn dump_reads_counters_from_the_maps() {
    let env = Env::new(3);
    let _servers = env.serve(&[1, 2]);
    let mut dp = env.dataplane();
    let mut p = plan("web", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 1), pod_backend(&env, 2)], Scheduler::Rr);
    p.affinity_timeout = Some(30);
    sync(&mut dp, &[p]);
    let mut c0 = env.client(0);
    let mut c1 = env.client(1);
    for _ in 0..3 {
        c0.tcp(&vip_port(80));
        c1.tcp(&vip_port(80));
    }
    let dump = dp.dump().unwrap();
    let s = dump.services.iter().find(|s| s.name == "web").unwrap_or_else(|| panic!("{dump:?}"));
    assert_eq!(s.scheduler, Scheduler::Rr);
    assert_eq!(s.affinity_timeout_seconds, Some(30));
    assert!(s.frontends.iter().any(|f| f.ip == vip() && f.port == 80), "{s:?}");
    assert_eq!(s.backends.len(), 2, "{s:?}");
    let total: u64 = s.backends.iter().map(|b| b.connections).sum();
    assert_eq!(total, 6, "six connections: {s:?}");
    for b in &s.backends {
        assert_eq!(b.connections, 3, "affinity: each client stays on one backend, rr gives them different ones: {s:?}");
        assert!(b.packets >= 3 * 4 && b.bytes > 3 * 200, "packets and bytes of both directions: {b:?}");
    }
}

/// A daemon restart: the programs stay attached and the maps keep their entries while no daemon runs (a
/// connection opened then is balanced), an open connection keeps working across the restart, the restarted
/// daemon rewrites nothing (its sync finds everything programmed) and the live connection count survives;
/// `cleanup` then detaches the programs and removes every pin.
#[test]
fn daemon_restart_keeps_connections_and_maps() {
    let env = Env::new(2);
    let _servers = env.serve(&[1]);
    let backend_ip = IpAddr::V4(env.pods[1].ip);
    assert_eq!(env.run_daemon(backend_ip), "written=1 unchanged=0 removed=0 failed=0");
    // No daemon runs now.
    let mut c = env.client(0);
    let a = c.cmd(&format!("hold {}", vip_port(80)));
    assert!(a.starts_with("ok 0 pod1 10.96.0.10:80"), "balanced with no daemon running: {a}");
    assert_eq!(
        env.run_daemon(backend_ip),
        "written=0 unchanged=1 removed=0 failed=0",
        "the restarted daemon changes nothing"
    );
    assert_eq!(c.cmd("talk 0"), "ok pod1", "the connection opened before the restart still works");
    assert_eq!(c.tcp(&vip_port(80)).0, "pod1");

    let mut dp = env.dataplane();
    dp.restore().unwrap();
    let key = (restart_plan(backend_ip).name, switchyard_model::Family::V4);
    let counts = dp.connection_counts(&key).unwrap();
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![1],
        "the held connection is still counted: {counts:?}"
    );
    let dump = dp.dump().unwrap();
    assert!(
        dump.services.iter().any(|s| s.name == "restart" && s.backends.iter().any(|b| b.connections >= 2)),
        "{dump:?}"
    );

    dp.cleanup().unwrap();
    assert!(!env.pin_dir.exists(), "cleanup removes the pins");
    // The kernel releases an unpinned link from a work queue: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let after = c.cmd(&format!("tcp {}", vip_port(80)));
        if after.starts_with("err") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "after cleanup nothing rewrites the ClusterIP: {after}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(c.cmd("talk 0"), "ok pod1", "established connections are never NATed, so cleanup does not break them");
}

/// Syncs are incremental and leave nothing behind: an unchanged plan is not rewritten, a changed one gets a
/// new slot set and the old one (and the removed backend) is deleted, a removed plan leaves no entry in any
/// map; a restored dataplane sees the same state and a full sync prunes entries that belong to no plan.
#[test]
fn syncs_are_incremental_and_leave_nothing_behind() {
    use switchyard_ebpf::kernel::{entries, Maps};
    let env = Env::new(3);
    let mut dp = env.dataplane();
    let two = plan("inc", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 1), pod_backend(&env, 2)], Scheduler::Rr);
    let r = sync(&mut dp, std::slice::from_ref(&two));
    assert_eq!((r.written, r.unchanged), (1, 0));
    let r = sync(&mut dp, std::slice::from_ref(&two));
    assert_eq!((r.written, r.unchanged), (0, 1), "unchanged plans are not rewritten");

    let maps = Maps::open(&env.pin_dir).unwrap();
    let slot_sets = |m: &Maps| {
        entries(&m.slots).unwrap().into_iter().map(|(k, _)| k.slot_set).collect::<std::collections::BTreeSet<_>>()
    };
    let before = slot_sets(&maps);
    assert_eq!(entries(&maps.slots).unwrap().len(), 2);

    let one = plan("inc", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 2)], Scheduler::Rr);
    let r = sync(&mut dp, std::slice::from_ref(&one));
    assert_eq!(r.written, 1);
    let after = slot_sets(&maps);
    assert_eq!(after.len(), 1, "the old slot set is gone");
    assert!(after.is_disjoint(&before), "a changed route gets a new slot set");
    assert_eq!(entries(&maps.backends).unwrap().len(), 1, "the removed backend is gone");
    assert_eq!(entries(&maps.conns).unwrap().len(), 1);

    // A stray entry, as an interrupted run could leave: pruned by the next full sync after a restore.
    let mut maps = maps;
    switchyard_ebpf::kernel::put(
        &mut maps.slots,
        "slots",
        &switchyard_ebpf_common::SlotKey { slot_set: 9999, index: 0 },
        &42,
    )
    .unwrap();
    let mut restarted = env.dataplane();
    restarted.restore().unwrap();
    let r = sync(&mut restarted, std::slice::from_ref(&one));
    assert_eq!((r.written, r.unchanged), (0, 1), "the restored dataplane recognises what is programmed");
    assert_eq!(entries(&maps.slots).unwrap().len(), 1, "the stray slot is pruned");

    let r = sync(&mut restarted, &[]);
    assert_eq!(r.removed, 1);
    for (name, n) in [
        ("services", entries(&maps.services).unwrap().len()),
        ("slots", entries(&maps.slots).unwrap().len()),
        ("backends", entries(&maps.backends).unwrap().len()),
        ("meta", entries(&maps.meta).unwrap().len()),
        ("rr", entries(&maps.rr).unwrap().len()),
        ("conns", entries(&maps.conns).unwrap().len()),
    ] {
        assert_eq!(n, 0, "{name} is empty once the plan is removed");
    }
}

/// With packet counting off, the cgroup_skb programs are not attached (and detached if they were):
/// connections are still counted, packets and bytes are not.
#[test]
fn packet_counters_can_be_turned_off() {
    let env = Env::new(2);
    let _servers = env.serve(&[1]);
    let p = plan("quiet", Protocol::Tcp, vip(), 80, vec![pod_backend(&env, 1)], Scheduler::Rr);
    let mut dp = env.dataplane();
    sync(&mut dp, std::slice::from_ref(&p));
    assert!(env.pin_dir.join("sy_v1_link_skb_egress").exists());
    let mut settings = env.settings();
    settings.count_packets = false;
    let nft =
        switchyard_nftables::kernel::NftCommand { binary: "nft".into(), netns: Some(env.node.name().to_string()) };
    let mut quiet = switchyard_ebpf::EbpfDataplane::new(settings, Box::new(nft));
    quiet.restore().unwrap();
    sync(&mut quiet, std::slice::from_ref(&p));
    assert!(
        !env.pin_dir.join("sy_v1_link_skb_egress").exists() && !env.pin_dir.join("sy_v1_link_skb_ingress").exists()
    );
    // Let the kernel release the unpinned links.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut c = env.client(0);
    assert_eq!(c.tcp(&vip_port(80)).0, "pod1");
    let dump = quiet.dump().unwrap();
    let b = &dump.services.iter().find(|s| s.name == "quiet").unwrap().backends[0];
    assert_eq!((b.connections, b.packets, b.bytes), (1, 0, 0), "{b:?}");
}
