use std::io::Write as _;
use std::process::{Command, Stdio};

use switchyard_model::dataplane::{DumpBackend, DumpService};
use switchyard_model::{Protocol, Scheduler};

use super::*;

fn dump() -> Dump {
    Dump {
        services: vec![DumpService {
            namespace: "demo".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
            frontends: vec![],
            scheduler: Scheduler::Rr,
            affinity_timeout_seconds: None,
            backends: vec![
                DumpBackend { ip: "10.244.0.2".parse().unwrap(), port: 8080, packets: 10, bytes: 5000, connections: 2 },
                DumpBackend { ip: "fd00::2".parse().unwrap(), port: 8080, packets: 1, bytes: 60, connections: 1 },
            ],
        }],
    }
}

/// The kube-proxy names are exposed and the per-backend counters carry the documented labels.
#[test]
fn names_and_labels() {
    let m = Metrics::new();
    m.service_changes.inc();
    m.sync_duration.observe(0.01);
    let text = m.render(Some(&dump()));
    for name in [
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
        "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
        "kubeproxy_network_programming_duration_seconds_bucket",
        "kubeproxy_sync_proxy_rules_service_changes_total 1",
        "kubeproxy_sync_proxy_rules_endpoint_changes_total 0",
    ] {
        assert!(text.contains(name), "missing {name}:\n{text}");
    }
    assert!(text.contains(
        r#"switchyard_backend_bytes_total{namespace="demo",service="web",port="http",protocol="TCP",backend="10.244.0.2:8080"} 5000"#
    ));
    assert!(text.contains(r#"backend="[fd00::2]:8080"} 1"#));
}

/// The whole exposition passes `promtool check metrics` (Debian package `prometheus`).
#[test]
fn promtool_accepts_exposition() {
    let m = Metrics::new();
    m.problems.with_label_values(&["Service", "InvalidPort"]).inc();
    m.sync_failures.with_label_values(&["nftables"]).inc();
    let text = m.render(Some(&dump()));
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed for this test: apt-get install prometheus (the README's test command does)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
