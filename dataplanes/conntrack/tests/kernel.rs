//! ctnetlink against the real kernel, in a network namespace the test creates (root needed).

use std::net::IpAddr;
use std::process::Command;

use switchyard_conntrack::Conntrack;
use switchyard_model::conntrack::StaleFlows;
use switchyard_model::Family;

fn sh(ns: &str, args: &[&str]) {
    let out = Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip (iproute2) is needed");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// UDP flows DNATed to two backends: the filter for a removed backend deletes exactly its entries; an
/// entry already gone is not an error.
#[test]
fn deletes_exactly_the_stale_entries() {
    let ns = Ns(format!("syct-{}", std::process::id()));
    let out = Command::new("ip").args(["netns", "add", &ns.0]).output().unwrap();
    assert!(out.status.success(), "cannot create a network namespace (root needed)");
    sh(&ns.0, &["ip", "link", "set", "lo", "up"]);
    sh(&ns.0, &["ip", "addr", "add", "10.96.0.10/32", "dev", "lo"]);
    sh(&ns.0, &["ip", "addr", "add", "10.244.0.2/32", "dev", "lo"]);
    sh(&ns.0, &["ip", "addr", "add", "10.244.0.3/32", "dev", "lo"]);
    // Conntrack entries come from real packets: DNAT 10.96.0.10:53 alternately to two local "backends".
    sh(&ns.0, &["nft", "add table ip t"]);
    sh(&ns.0, &["nft", "add chain ip t out { type nat hook output priority -100; }"]);
    sh(&ns.0, &["nft", "add rule ip t out ip daddr 10.96.0.10 udp dport 53 dnat to numgen inc mod 2 map { 0 : 10.244.0.2, 1 : 10.244.0.3 }"]);
    for port in 40000..40004u16 {
        sh(&ns.0, &["socat", "-u", "-T1", "SYSTEM:echo x", &format!("UDP4-SENDTO:10.96.0.10:53,sourceport={port}")]);
    }
    // The rest runs in a child in the namespace, so the ctnetlink socket is the namespace's.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(exe)
        .args(["--exact", "child_deletes", "--nocapture", "--include-ignored"])
        .env("SY_CT_CHILD", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The part of [`deletes_exactly_the_stale_entries`] that runs inside its namespace.
#[test]
#[ignore = "runs inside the namespace that deletes_exactly_the_stale_entries creates, started by it"]
fn child_deletes() {
    assert!(std::env::var_os("SY_CT_CHILD").is_some(), "run by deletes_exactly_the_stale_entries only");
    let mut ct = Conntrack::open().unwrap();
    let entries = ct.udp_entries(Family::V4).unwrap();
    let to = |ip: &str| entries.iter().filter(|e| e.reply_src().0 == ip.parse::<IpAddr>().unwrap()).count();
    assert_eq!((to("10.244.0.2"), to("10.244.0.3")), (2, 2), "{entries:?}");

    let stale = StaleFlows { dst: "10.96.0.10".parse().unwrap(), port: 53, keep: vec![("10.244.0.3".parse().unwrap(), 53)] };
    assert_eq!(ct.delete_stale(std::slice::from_ref(&stale)).unwrap(), 2);
    let after = ct.udp_entries(Family::V4).unwrap();
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|e| e.reply_src().0 == "10.244.0.3".parse::<IpAddr>().unwrap()));
    assert_eq!(ct.delete_stale(&[stale]).unwrap(), 0);
    // Deleting an entry that is gone succeeds.
    ct.delete(&entries[0]).unwrap();
    ct.delete(&entries[0]).unwrap();
}
