//! Stale UDP conntrack entries (kube-proxy's cleanup, done over ctnetlink): a UDP client that keeps one
//! socket reaches a live backend with its next packet after its backend went away, and after its Service
//! went from no endpoints to some. Without the cleanup its conntrack entry would pin it (for 30 s and more
//! while it keeps sending) to the old backend or to the old rejection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_tests::daemon::{backends, Daemon, EndpointSlice, Service};
use switchyard_tests::netns::Cluster;
use switchyard_tests::traffic::{udp_server, Outcome, UdpClient};

const T: Duration = Duration::from_millis(300);
const SYNC: Duration = Duration::from_secs(10);
const TARGET: u16 = 5353;

fn dns() -> Service {
    Service::new("dns", "10.96.0.53").udp("dns", 53, u32::from(TARGET))
}

fn slice(c: &Cluster, pods: &[usize]) -> EndpointSlice {
    EndpointSlice::new("dns").udp("dns", u32::from(TARGET)).ready(pods.iter().map(|&i| c.pod(i).ip))
}

fn vip() -> SocketAddr {
    SocketAddr::from(([10, 96, 0, 53], 53))
}

/// Sends from the same socket until `want` answers (within a couple of seconds); returns what answered
/// before it, to show what the client saw meanwhile.
fn until_answered_by(client: &UdpClient, want: &str) -> Vec<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    loop {
        let o = client.request(T);
        if o.is_answered() && o.by() == want {
            return seen;
        }
        assert!(Instant::now() < deadline, "the client's socket never reached {want}; it saw: {seen:?}");
        seen.push(o);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A backend removed from the EndpointSlice: the client's next packets from the same socket reach the new
/// backend, although the old one is still up and would answer if its conntrack entry had been kept.
#[test]
fn removed_backend_releases_its_clients() {
    let c = Cluster::new(3);
    let _a = udp_server(&c.pod(1).ns, &c.pod(1).name, TARGET);
    let _b = udp_server(&c.pod(2).ns, &c.pod(2).name, TARGET);
    let mut d = Daemon::start(&c.node);
    d.write_documents("dns.yaml", &[dns().yaml(), slice(&c, &[1]).yaml()]);
    d.wait_until("dns has one backend", SYNC, |v| backends(v, "dns").len() == 1);

    let client = UdpClient::new(&c.pod(0).ns, vip());
    let first = client.request(T);
    assert!(first.is_answered() && first.by() == c.pod(1).name, "first packet: {first}");

    d.write_documents("dns.yaml", &[dns().yaml(), slice(&c, &[2]).yaml()]);
    let b = c.pod(2).ip.to_string();
    d.wait_until("dns moved to the second pod", SYNC, |v| backends(v, "dns").iter().all(|x| x.starts_with(&b)));
    until_answered_by(&client, &c.pod(2).name);
    // And it stays there: the old backend never answers this socket again.
    for _ in 0..5 {
        let o = client.request(T);
        assert!(o.is_answered() && o.by() == c.pod(2).name, "after the cleanup: {o}");
    }
}

/// A client that started sending before its Service existed: its flow went unNATed (towards the default
/// route) and conntrack cached that. Once the Service and an endpoint appear, the same socket's next
/// packets reach the endpoint. (A Service without endpoints rejects, and a rejected packet's entry is never
/// confirmed, so that case needs no cleanup; this one does.)
#[test]
fn service_created_while_a_client_sends() {
    let c = Cluster::new(2);
    let _a = udp_server(&c.pod(1).ns, &c.pod(1).name, TARGET);
    let mut d = Daemon::start(&c.node);

    let client = UdpClient::new(&c.pod(0).ns, vip());
    let before = client.request(T);
    assert!(!before.is_answered(), "no Service yet: {before}");

    d.write_documents("dns.yaml", &[dns().yaml(), slice(&c, &[1]).yaml()]);
    d.wait_until("dns has a backend", SYNC, |v| backends(v, "dns").len() == 1);
    until_answered_by(&client, &c.pod(1).name);
}

/// A Service with no endpoints refuses a client's socket; once an endpoint appears, the same socket's
/// next packet reaches it.
#[test]
fn service_from_no_endpoints_to_some() {
    let c = Cluster::new(2);
    let _a = udp_server(&c.pod(1).ns, &c.pod(1).name, TARGET);
    let mut d = Daemon::start(&c.node);
    d.write_documents("dns.yaml", &[dns().yaml(), slice(&c, &[]).yaml()]);
    d.wait_until("dns without backends", SYNC, |v| {
        switchyard_tests::daemon::find_service(v, "default", "dns").is_some() && backends(v, "dns").is_empty()
    });

    let client = UdpClient::new(&c.pod(0).ns, vip());
    let refused = client.request(T);
    assert!(matches!(refused, Outcome::Refused(_)), "no endpoints: {refused}");

    d.write_documents("dns.yaml", &[dns().yaml(), slice(&c, &[1]).yaml()]);
    d.wait_until("dns has a backend", SYNC, |v| backends(v, "dns").len() == 1);
    until_answered_by(&client, &c.pod(1).name);
}
