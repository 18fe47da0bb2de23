//! The kube-rs source against the fake API server: what the real list/watch protocol turns into store events.
//! No kernel and no root needed.

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use switchyard::source::kube;
use switchyard_model::store::{Event, Kind, Object, ObjectKey};
use switchyard_tests::fake_apiserver::FakeApiServer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a whole test may take.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for one expected event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The node the source runs on.
const NODE: &str = "node-a";

fn service(namespace: &str, name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         spec:\n  clusterIP: 10.96.0.10\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n"
    )
}

fn slice(namespace: &str, name: &str, service: &str, ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {namespace}\n\
         \x20 labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
         endpoints:\n- addresses: [\"{ip}\"]\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n"
    )
}

fn node(name: &str, zone: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    topology.kubernetes.io/zone: {zone}\n"
    )
}

/// A fake API server with a Service, an EndpointSlice and two Nodes, and the source running against it.
struct Harness {
    server: FakeApiServer,
    events: mpsc::Receiver<Event>,
    source: JoinHandle<()>,
}

impl Harness {
    async fn start() -> Harness {
        let server = FakeApiServer::start(TcpListener::bind("127.0.0.1:0").expect("binding a local port"));
        server.apply(&service("web", "frontend", 80));
        server.apply(&slice("web", "frontend-abc", "frontend", "10.0.0.1"));
        server.apply(&node(NODE, "a"));
        server.apply(&node("node-b", "b"));

        let kubeconfig = std::env::temp_dir().join(format!("switchyard-kube-source-{}.yaml", server.addr().port()));
        server.kubeconfig(&kubeconfig);
        let client = kube::client(Some(&kubeconfig)).await.expect("a client from the fake API server's kubeconfig");
        let _ = std::fs::remove_file(&kubeconfig);

        let (tx, events) = mpsc::channel(64);
        let source = tokio::spawn(kube::run(client, NODE.to_owned(), tx));
        Harness { server, events, source }
    }

    /// Starts and consumes the initial Replace of each kind and the Synced that follows.
    async fn synced() -> Harness {
        let mut h = Harness::start().await;
        for _ in 0..3 {
            assert!(matches!(h.next().await, Event::Replace(..)));
        }
        assert_eq!(h.next().await, Event::Synced);
        h
    }

    async fn next(&mut self) -> Event {
        match tokio::time::timeout(EVENT_TIMEOUT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the source closed its channel"),
            Err(_) => panic!("no event from the source within {EVENT_TIMEOUT:?}"),
        }
    }

    /// Panics if the source sends anything within `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(event) = tokio::time::timeout(quiet, self.events.recv()).await {
            panic!("expected no event, got {event:?}");
        }
    }

    /// Requests for `plural` that were lists (not watches).
    fn lists_of(&self, plural: &str) -> usize {
        let collection = format!("/{plural}?");
        let requests = self.server.requests();
        requests.iter().filter(|r| r.contains(&collection) && !r.contains("watch=")).count()
    }
}

/// Runs a test body under [`TEST_TIMEOUT`].
async fn within_timeout(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// "namespace/name" of each object, sorted.
fn names(objects: &[Object]) -> Vec<String> {
    let mut names: Vec<String> = objects.iter().map(|o| format!("{}/{}", o.key().namespace, o.key().name)).collect();
    names.sort();
    names
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey { kind, namespace: namespace.into(), name: name.into() }
}

/// Applied object's "namespace/name" and kind, or a panic naming what came instead.
fn applied(event: Event) -> (Kind, String) {
    match event {
        Event::Apply(object) => (object.kind(), format!("{}/{}", object.key().namespace, object.key().name)),
        other => panic!("expected Apply, got {other:?}"),
    }
}

/// The initial lists arrive as one Replace per kind with every object (and only the own Node), then Synced,
/// once.
#[tokio::test]
async fn initial_lists_become_replace_per_kind_then_synced() {
    within_timeout(async {
        let mut h = Harness::start().await;
        let mut replaced = Vec::new();
        for _ in 0..3 {
            match h.next().await {
                Event::Replace(kind, objects) => replaced.push((kind, names(&objects))),
                other => panic!("expected Replace before Synced, got {other:?}"),
            }
        }
        replaced.sort();
        assert_eq!(
            replaced,
            [
                (Kind::Service, vec!["web/frontend".to_owned()]),
                (Kind::EndpointSlice, vec!["web/frontend-abc".to_owned()]),
                (Kind::Node, vec!["/node-a".to_owned()]),
            ]
        );
        assert_eq!(h.next().await, Event::Synced);
        h.assert_quiet(Duration::from_secs(1)).await;
    })
    .await;
}

/// A Service and an EndpointSlice created, changed and deleted arrive as Apply, Apply, Delete; a namespaced
/// object applied without a namespace arrives in "default".
#[tokio::test]
async fn service_and_slice_changes_become_apply_and_delete() {
    within_timeout(async {
        let mut h = Harness::synced().await;

        h.server.apply(&service("web", "backend", 80));
        assert_eq!(applied(h.next().await), (Kind::Service, "web/backend".into()));
        h.server.apply(&service("web", "backend", 8080));
        match h.next().await {
            Event::Apply(Object::Service(svc)) => {
                let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
                assert_eq!(ports.first().map(|p| p.port), Some(8080), "the changed Service");
            }
            other => panic!("expected the changed Service, got {other:?}"),
        }
        assert!(h.server.delete("Service", "web", "backend"));
        assert_eq!(h.next().await, Event::Delete(key(Kind::Service, "web", "backend")));

        h.server.apply(&slice("web", "backend-xyz", "backend", "10.0.0.2"));
        assert_eq!(applied(h.next().await), (Kind::EndpointSlice, "web/backend-xyz".into()));
        h.server.apply(&slice("web", "backend-xyz", "backend", "10.0.0.3"));
        match h.next().await {
            Event::Apply(Object::EndpointSlice(slice)) => {
                let addresses: Vec<String> = slice.endpoints.into_iter().flatten().flat_map(|e| e.addresses).collect();
                assert_eq!(addresses, ["10.0.0.3"], "the changed EndpointSlice");
            }
            other => panic!("expected the changed EndpointSlice, got {other:?}"),
        }
        assert!(h.server.delete("EndpointSlice", "web", "backend-xyz"));
        assert_eq!(h.next().await, Event::Delete(key(Kind::EndpointSlice, "web", "backend-xyz")));

        h.server.apply(&service("", "plain", 80).replace("  namespace: \n", ""));
        assert_eq!(applied(h.next().await), (Kind::Service, "default/plain".into()));
        h.assert_quiet(Duration::from_millis(500)).await;
    })
    .await;
}

/// Watch bookmarks move the watchers' resourceVersion on but produce no events.
#[tokio::test]
async fn bookmarks_produce_no_events() {
    within_timeout(async {
        let mut h = Harness::synced().await;
        h.server.set_bookmark_interval(Duration::from_millis(100));
        let before = h.server.bookmarks_sent();
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        // Several bookmarks on each of the three watches.
        while h.server.bookmarks_sent() < before + 9 {
            assert!(tokio::time::Instant::now() < deadline, "the fake API server sent no bookmarks");
            h.assert_quiet(Duration::from_millis(100)).await;
        }
        let watches = h.server.requests().iter().filter(|r| r.contains("watch=")).count();
        assert_eq!(watches, 3, "bookmarks must not restart watches: {:#?}", h.server.requests());

        // The watch still delivers after the bookmarks.
        h.server.apply(&node(NODE, "c"));
        assert_eq!(applied(h.next().await), (Kind::Node, "/node-a".into()));
    })
    .await;
}

/// After a compaction (watch gets 410 Gone) the source relists, and the relist arrives as a Replace without
/// the object deleted while the watch was cut, and with the one created meanwhile; Synced is not repeated.
#[tokio::test]
async fn compaction_relists_as_replace_dropping_objects_deleted_in_the_gap() {
    within_timeout(async {
        let mut h = Harness::synced().await;
        assert_eq!(h.lists_of("endpointslices"), 1);

        h.server.pause_watches();
        assert!(h.server.delete("EndpointSlice", "web", "frontend-abc"));
        h.server.apply(&service("web", "backend", 80));
        h.server.compact();

        let mut replaced = Vec::new();
        for _ in 0..3 {
            match h.next().await {
                Event::Replace(kind, objects) => replaced.push((kind, names(&objects))),
                other => panic!("expected only Replaces after the compaction, got {other:?}"),
            }
        }
        replaced.sort();
        assert_eq!(
            replaced,
            [
                (Kind::Service, vec!["web/backend".to_owned(), "web/frontend".to_owned()]),
                (Kind::EndpointSlice, vec![]),
                (Kind::Node, vec!["/node-a".to_owned()]),
            ]
        );
        for plural in ["services", "endpointslices", "nodes"] {
            assert_eq!(h.lists_of(plural), 2, "one relist of {plural}: {:#?}", h.server.requests());
        }
        h.assert_quiet(Duration::from_secs(1)).await;

        // Watching carries on after the relist.
        assert!(h.server.delete("Service", "web", "backend"));
        assert_eq!(h.next().await, Event::Delete(key(Kind::Service, "web", "backend")));
    })
    .await;
}

/// The Node watch selects the own Node by name: other Nodes' changes never arrive.
#[tokio::test]
async fn node_watch_sees_only_the_own_node() {
    within_timeout(async {
        let mut h = Harness::synced().await;
        let node_requests: Vec<String> = h.server.requests().into_iter().filter(|r| r.contains("/nodes?")).collect();
        assert!(
            node_requests.iter().all(|r| r.contains("fieldSelector=metadata.name%3Dnode-a")),
            "every Node request selects the own Node: {node_requests:#?}"
        );

        h.server.apply(&node("node-b", "c"));
        h.server.apply(&node("node-c", "c"));
        assert!(h.server.delete("Node", "", "node-b"));
        h.assert_quiet(Duration::from_millis(500)).await;

        h.server.apply(&node(NODE, "c"));
        match h.next().await {
            Event::Apply(Object::Node(node)) => {
                let zone = node.metadata.labels.unwrap_or_default().remove("topology.kubernetes.io/zone");
                assert_eq!(zone.as_deref(), Some("c"));
            }
            other => panic!("expected the own Node, got {other:?}"),
        }
        assert!(h.server.delete("Node", "", NODE));
        assert_eq!(h.next().await, Event::Delete(key(Kind::Node, "", NODE)));
    })
    .await;
}

/// The source returns when the receiver is dropped, even with no events flowing.
#[tokio::test]
async fn source_ends_when_the_receiver_is_dropped() {
    within_timeout(async {
        let h = Harness::synced().await;
        drop(h.events);
        tokio::time::timeout(EVENT_TIMEOUT, h.source)
            .await
            .expect("the source still runs")
            .expect("the source panicked");
    })
    .await;
}
