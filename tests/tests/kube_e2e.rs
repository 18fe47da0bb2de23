//! The kube-rs path end to end: an in-process fake API server speaking the real list/watch protocol, the
//! real daemon with `--kubeconfig`, and the real kernel's rules, all inside a network namespace.

use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard_tests::daemon::binary;
use switchyard_tests::fake_apiserver::FakeApiServer;
use switchyard_tests::netns::{unique_prefix, Netns};

/// Kills the daemon and prints its log if the test fails.
struct Running {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn dump(node: &Netns) -> Value {
    let out = node.exec(&[binary().to_str().unwrap(), "dump", "-o", "json"]);
    assert!(out.status.success(), "dump failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("dump prints JSON")
}

/// `ip:port` of every backend of demo/web, or `None` when the Service port is not in the kernel.
fn web_backends(d: &Value) -> Option<Vec<String>> {
    let svc = d["services"].as_array()?.iter().find(|s| s["namespace"] == "demo" && s["name"] == "web")?;
    Some(svc["backends"].as_array()?.iter().map(|b| format!("{}:{}", b["ip"].as_str().unwrap(), b["port"])).collect())
}

fn web_port(d: &Value) -> Option<u64> {
    let svc = d["services"].as_array()?.iter().find(|s| s["namespace"] == "demo" && s["name"] == "web")?;
    svc["frontends"].as_array()?.iter().find(|f| f["kind"] == "ClusterIP")?["port"].as_u64()
}

fn wait_for(node: &Netns, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = dump(node);
        if f(&d) {
            return d;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last dump: {d:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn service(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{name: http, port: {port}, targetPort: 8080}}]\n"
    )
}

fn slice(ips: &[&str]) -> String {
    let eps: Vec<String> = ips.iter().map(|ip| format!("{{addresses: [{ip}]}}")).collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    )
}

/// A Service and an EndpointSlice created, changed and deleted in the API server show up in, change in and
/// leave the kernel's rules; a watch that expires (410 Gone) relists, and a deletion missed meanwhile is
/// applied to the kernel.
#[test]
fn api_changes_reach_the_kernel() {
    let node = Netns::new(&format!("{}k", unique_prefix()));
    let listener = node.run(|| TcpListener::bind("127.0.0.1:0").expect("listen in the node namespace"));
    let api = FakeApiServer::start(listener);
    let dir = std::env::temp_dir().join(format!("{}-kube", node.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    api.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n");
    api.apply(&service(80));
    api.apply(&slice(&["10.244.0.2"]));

    let log = dir.join("daemon.log");
    let child = node
        .command(binary())
        .args(["run", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "node-a"])
        .args(["--min-sync-period", "50ms", "--healthz-bind-address", "127.0.0.1:10256"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the daemon");
    let _running = Running { child, log };

    wait_for(&node, "the initial list in the kernel", |d| web_backends(d) == Some(vec!["10.244.0.2:8080".into()]));

    api.apply(&slice(&["10.244.0.2", "10.244.0.3"]));
    wait_for(&node, "a second endpoint", |d| web_backends(d).is_some_and(|b| b.len() == 2));

    api.apply(&service(81));
    wait_for(&node, "the port change", |d| web_port(d) == Some(81));

    api.delete("EndpointSlice", "demo", "web-1");
    wait_for(&node, "no backends (reject)", |d| web_backends(d) == Some(vec![]));

    api.apply(&slice(&["10.244.0.4"]));
    wait_for(&node, "the new slice", |d| web_backends(d) == Some(vec!["10.244.0.4:8080".into()]));

    // The watch expires while the Service is deleted: only a relist can tell the daemon.
    api.pause_watches();
    api.delete("Service", "demo", "web");
    api.compact();
    api.resume_watches();
    wait_for(&node, "the Service gone after the relist", |d| web_backends(d).is_none());
    let relists = api.requests().iter().filter(|r| r.starts_with("GET /api/v1/services") && !r.contains("watch")).count();
    assert!(relists >= 2, "expected an initial list and a relist of Services: {:?}", api.requests());
    std::fs::remove_dir_all(&dir).ok();
}
