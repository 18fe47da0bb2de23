//! An in-process fake Kubernetes API server speaking the real list/watch protocol over plain HTTP, for
//! v1 Services, discovery.k8s.io/v1 EndpointSlices and v1 Nodes, and taking Events as a controller posts them.
//!
//! What it implements, as the real API server does:
//! - `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`, `/api/v1/nodes` (and the namespaced
//!   forms `/api/v1/namespaces/{ns}/services`, `/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`):
//!   a JSON List whose `metadata.resourceVersion` is the current revision. Items carry no `kind`/`apiVersion`.
//! - `?watch=true` (or `watch=1`) with `resourceVersion=RV`: newline-delimited JSON watch events
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":..}` of every change after RV. Without RV (or
//!   `0`), or with `sendInitialEvents=true`, the current objects first arrive as ADDED (the latter closed by
//!   a BOOKMARK annotated `k8s.io/initial-events-end`).
//! - `allowWatchBookmarks=true`: a BOOKMARK with the latest resourceVersion every bookmark interval.
//! - `fieldSelector` on `metadata.name` and `metadata.namespace` (`=`, `==`, `!=`, comma-separated).
//! - `timeoutSeconds`: the watch stream ends after that long.
//! - A watch from a resourceVersion older than the last [`FakeApiServer::compact`]: one ERROR event carrying a
//!   Status with code 410, reason "Expired", then the end of the stream; clients must relist.
//! - Events, written as a controller writes them: `POST /api/v1/namespaces/{ns}/events` (v1 Event) and
//!   `POST /apis/events.k8s.io/v1/namespaces/{ns}/events` (events.k8s.io/v1 Event) create one (201; 409 if the
//!   name is taken; `metadata.generateName` is honoured); `PATCH .../events/{name}` with a JSON merge patch or
//!   a strategic merge patch (applied as a merge patch, which is the same for Event's fields) updates it (200;
//!   404 if absent). The server keeps them for [`FakeApiServer::events`]; they are not listed or watched.
//!
//! Every request is recorded with its method ([`FakeApiServer::requests`]), so a test can derive the RBAC
//! verbs a client needs from what it really did.
//!
//! One revision counter across all kinds, as etcd keeps. Ignored: `labelSelector`, `limit`/`continue` (a
//! list is always one page), and the `resourceVersion` of a list (always served at the latest revision).
//!
//! The server runs on its own thread with its own tokio runtime; the handle's methods are synchronous, so
//! plain `#[test]` functions can use it. Malformed test input panics with the reason.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// How often watches that allow bookmarks get one, unless changed with
/// [`FakeApiServer::set_bookmark_interval`].
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// A running fake API server. Dropping it stops the server and ends every open watch.
#[derive(Debug)]
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts serving on `listener` (created by the caller, e.g. inside a network namespace) on a new thread.
    pub fn start(listener: std::net::TcpListener) -> FakeApiServer {
        let addr = listener.local_addr().expect("fake API server: listener has no local address");
        listener.set_nonblocking(true).expect("fake API server: cannot make the listener non-blocking");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("fake API server: cannot build a tokio runtime");
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("fake API server: cannot register the listener")
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(Store { bookmark_interval: DEFAULT_BOOKMARK_INTERVAL, ..Store::default() }),
            changed: watch::Sender::new(()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            if let Err(error) = result {
                                eprintln!("fake API server stopped: {error}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime cancels the open watch streams.
            })
            .expect("fake API server: cannot spawn its thread");
        FakeApiServer { addr, shared, shutdown: Some(shutdown), thread: Some(thread) }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL, `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig file at `path` whose current context points at this server, without auth.
    pub fn kubeconfig(&self, path: &Path) {
        let config = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  cluster:\n    server: {url}\n\
             users:\n\
             - name: fake\n  user: {{}}\n\
             contexts:\n\
             - name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            url = self.url()
        );
        std::fs::write(path, config).unwrap_or_else(|e| panic!("writing kubeconfig {}: {e}", path.display()));
    }

    /// Creates or updates an object given as YAML or JSON (a Service, EndpointSlice or Node). A namespaced
    /// object without a namespace goes to "default". Returns the resourceVersion it was given.
    pub fn apply(&self, object: &str) -> u64 {
        let mut object: Value =
            serde_yaml::from_str(object).unwrap_or_else(|e| panic!("apply: not a YAML/JSON object: {e}\n{object}"));
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = Resource::from_kind(kind).unwrap_or_else(|| panic!("apply: unsupported kind {kind:?}"));
        assert_eq!(object["apiVersion"], resource.api_version(), "apply: wrong apiVersion for {kind}");
        resource.validate(&object);
        let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        assert!(!name.is_empty(), "apply: {kind} without metadata.name");
        let namespace = if resource.namespaced() {
            let ns = object["metadata"]["namespace"].as_str().filter(|ns| !ns.is_empty()).unwrap_or("default");
            ns.to_owned()
        } else {
            String::new()
        };

        let mut store = self.shared.lock();
        store.revision += 1;
        let revision = store.revision;
        let key = (resource, namespace.clone(), name);
        let old_uid = store.objects.get(&key).map(|old| old["metadata"]["uid"].clone());
        let meta = &mut object["metadata"];
        if resource.namespaced() {
            meta["namespace"] = json!(namespace);
        } else if let Some(meta) = meta.as_object_mut() {
            meta.remove("namespace");
        }
        meta["resourceVersion"] = json!(revision.to_string());
        meta["uid"] = old_uid.clone().unwrap_or_else(|| json!(format!("00000000-0000-0000-0000-{revision:012}")));
        let event = if old_uid.is_some() { "MODIFIED" } else { "ADDED" };
        store.history.push(Change { revision, resource, event, object: object.clone() });
        store.objects.insert(key, object);
        drop(store);
        self.shared.poke();
        revision
    }

    /// Deletes an object of `kind` ("Service", "EndpointSlice" or "Node"; `namespace` is ignored for Nodes).
    /// Returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        let resource = Resource::from_kind(kind).unwrap_or_else(|| panic!("delete: unsupported kind {kind:?}"));
        let namespace = if resource.namespaced() { namespace } else { "" };
        let mut store = self.shared.lock();
        let Some(mut object) = store.objects.remove(&(resource, namespace.to_owned(), name.to_owned())) else {
            return false;
        };
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        store.history.push(Change { revision, resource, event: "DELETED", object });
        drop(store);
        self.shared.poke();
        true
    }

    /// Compacts history as etcd does: every resourceVersion handed out so far becomes too old to watch from
    /// (a watch from one gets an ERROR 410 "Expired"), and open watch streams end, so clients reconnect,
    /// get the 410 and relist. Also ends a [`FakeApiServer::pause_watches`].
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.revision += 1;
        store.compacted = store.revision;
        store.history.clear();
        store.epoch += 1;
        store.paused = false;
        drop(store);
        self.shared.poke();
    }

    /// Holds back the change events and bookmarks of open and new watch streams, as if the connections were
    /// cut, until [`FakeApiServer::resume_watches`] or [`FakeApiServer::compact`].
    /// Together with `compact` this makes changes that clients only learn of by relisting.
    pub fn pause_watches(&self) {
        self.shared.lock().paused = true;
    }

    /// Delivers what [`FakeApiServer::pause_watches`] held back and carries on.
    pub fn resume_watches(&self) {
        self.shared.lock().paused = false;
        self.shared.poke();
    }

    /// Sets how often watches that allow bookmarks get one (from the next bookmark on).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.lock().bookmark_interval = interval;
        self.shared.poke();
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().revision
    }

    /// Every request received so far, as `METHOD path?query` (the query as the client encoded it).
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// How many BOOKMARK events have been sent, over all watches.
    pub fn bookmarks_sent(&self) -> u64 {
        self.shared.lock().bookmarks_sent
    }

    /// The Events created (and patched) so far, v1 and events.k8s.io/v1 alike, each as stored (with
    /// `apiVersion`, `kind`, and the namespace, name, uid and resourceVersion the server gave it), sorted by
    /// apiVersion, namespace and name.
    pub fn events(&self) -> Vec<Value> {
        self.shared.lock().events.values().cloned().collect()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the server thread and the handle share.
#[derive(Debug)]
struct Shared {
    state: Mutex<Store>,
    /// Poked after every change of `state`, to wake the watch streams.
    changed: watch::Sender<()>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking test must not make the server panic too.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poke(&self) {
        self.changed.send_replace(());
    }
}

/// The objects and their history ("etcd").
#[derive(Debug, Default)]
struct Store {
    /// The latest resourceVersion, one counter for all kinds.
    revision: u64,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    /// Bumped by a compaction: open watch streams of an older epoch end.
    epoch: u64,
    /// Whether watch streams hold back their events.
    paused: bool,
    objects: BTreeMap<(Resource, String, String), Value>,
    /// Every change after `compacted`, oldest first.
    history: Vec<Change>,
    requests: Vec<String>,
    bookmarks_sent: u64,
    /// Events by (apiVersion, namespace, name).
    events: BTreeMap<(&'static str, String, String), Value>,
    bookmark_interval: Duration,
}

#[derive(Debug)]
struct Change {
    revision: u64,
    resource: Resource,
    /// ADDED, MODIFIED or DELETED.
    event: &'static str,
    object: Value,
}

/// The API resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    Services,
    EndpointSlices,
    Nodes,
}

impl Resource {
    const ALL: [Resource; 3] = [Resource::Services, Resource::EndpointSlices, Resource::Nodes];

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    fn namespaced(self) -> bool {
        self != Resource::Nodes
    }

    fn from_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }

    /// Panics if `object` would not decode as this resource's type, so a bad test fixture fails where it is
    /// written rather than as a watch error in the client.
    fn validate(self, object: &Value) {
        let result = match self {
            Resource::Services => serde_json::from_value::<Service>(object.clone()).map(drop),
            Resource::EndpointSlices => serde_json::from_value::<EndpointSlice>(object.clone()).map(drop),
            Resource::Nodes => serde_json::from_value::<Node>(object.clone()).map(drop),
        };
        if let Err(e) = result {
            panic!("apply: not a valid {}: {e}\n{object}", self.kind());
        }
    }
}

/// The resource and optional namespace a request path names, e.g. `/api/v1/namespaces/web/services`.
fn route(path: &str) -> Option<(Resource, Option<String>)> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io/v1", rest),
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", namespace, plural] => (Some((*namespace).to_owned()), *plural),
        _ => return None,
    };
    let resource = Resource::ALL.into_iter().find(|r| r.api_version() == api_version && r.plural() == plural)?;
    if namespace.is_some() && !resource.namespaced() {
        return None;
    }
    Some((resource, namespace))
}

/// Which objects a request is about.
#[derive(Debug)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    /// (field, equal, value) from the field selector.
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn new(resource: Resource, namespace: Option<String>, selector: Option<&str>) -> Result<Filter, String> {
        let mut fields = Vec::new();
        for term in selector.unwrap_or_default().split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("field label not supported: {field}"));
            }
            fields.push((field.to_owned(), equal, value.to_owned()));
        }
        Ok(Filter { resource, namespace, fields })
    }

    fn matches(&self, resource: Resource, object: &Value) -> bool {
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str().unwrap_or_default();
        resource == self.resource
            && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.fields.iter().all(|(field, equal, value)| {
                let actual = match field.as_str() {
                    "metadata.name" => meta["name"].as_str().unwrap_or_default(),
                    _ => namespace,
                };
                (actual == value) == *equal
            })
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
}

fn error_response(code: StatusCode, reason: &str, message: String) -> Response {
    (code, axum::Json(status(code, reason, message))).into_response()
}

/// One line of a watch stream.
fn watch_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": event, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(resource: Resource, revision: u64, initial_events_end: bool) -> Bytes {
    let mut object = json!({
        "kind": resource.kind(),
        "apiVersion": resource.api_version(),
        "metadata": { "resourceVersion": revision.to_string() },
    });
    if initial_events_end {
        object["metadata"]["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    watch_line("BOOKMARK", &object)
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let uri = request.uri();
    let path_and_query = uri.path_and_query().map_or_else(|| uri.path().to_owned(), ToString::to_string);
    shared.lock().requests.push(format!("{} {path_and_query}", request.method()));

    if let Some(target) = EventTarget::route(uri.path()) {
        return handle_event(&shared, target, request).await;
    }
    if request.method() != Method::GET {
        return error_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "only GET is served".into());
    }
    let Some((resource, namespace)) = route(uri.path()) else {
        return error_response(StatusCode::NOT_FOUND, "NotFound", format!("the server could not find {}", uri.path()));
    };
    let query: HashMap<String, String> =
        form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
    let filter = match Filter::new(resource, namespace, query.get("fieldSelector").map(String::as_str)) {
        Ok(filter) => filter,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    match query.get("watch").map(String::as_str) {
        Some("1" | "true") => start_watch(shared, filter, &query),
        _ => list(&shared, &filter),
    }
}

/// The Event API versions served, with their paths' prefix.
const EVENT_APIS: [(&str, &str); 2] = [("v1", "/api/v1/"), ("events.k8s.io/v1", "/apis/events.k8s.io/v1/")];

/// An Events request's target: `{prefix}namespaces/{ns}/events[/{name}]`.
#[derive(Debug)]
struct EventTarget {
    api_version: &'static str,
    namespace: String,
    name: Option<String>,
}

impl EventTarget {
    fn route(path: &str) -> Option<EventTarget> {
        EVENT_APIS.into_iter().find_map(|(api_version, prefix)| {
            let rest = path.strip_prefix(prefix)?;
            let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
            let (namespace, name) = match segments.as_slice() {
                ["namespaces", ns, "events"] => (ns, None),
                ["namespaces", ns, "events", name] => (ns, Some((*name).to_owned())),
                _ => return None,
            };
            Some(EventTarget { api_version, namespace: (*namespace).to_owned(), name })
        })
    }

    /// Whether `object` decodes as this API version's Event.
    fn validate(&self, object: &Value) -> Result<(), String> {
        let result = match self.api_version {
            "v1" => serde_json::from_value::<k8s_openapi::api::core::v1::Event>(object.clone()).map(drop),
            _ => serde_json::from_value::<k8s_openapi::api::events::v1::Event>(object.clone()).map(drop),
        };
        result.map_err(|e| format!("not a valid {} Event: {e}", self.api_version))
    }
}

/// POST (create) or PATCH (merge) an Event.
async fn handle_event(shared: &Shared, target: EventTarget, request: Request) -> Response {
    let patch = match (request.method(), &target.name) {
        (&Method::POST, None) => false,
        (&Method::PATCH, Some(_)) => true,
        (method, _) => {
            let message = format!("{method} is not served on events (POST to the collection, PATCH a named Event)");
            return error_response(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message);
        }
    };
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    let served: &[&str] = if patch {
        &["application/merge-patch+json", "application/strategic-merge-patch+json"]
    } else {
        &["application/json"]
    };
    if !served.contains(&media_type) {
        let message = format!("content type {content_type:?} is not served here (only {served:?})");
        return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message);
    }
    let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(body) => body,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", format!("reading the body: {e}")),
    };
    let body: Value = match serde_json::from_slice(&body) {
        Ok(body @ Value::Object(_)) => body,
        Ok(_) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", "the body is not an object".into()),
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", format!("the body is not JSON: {e}")),
    };
    match &target.name {
        Some(name) => patch_event(shared, &target, name, &body),
        None => create_event(shared, &target, body),
    }
}

fn create_event(shared: &Shared, target: &EventTarget, mut event: Value) -> Response {
    if event["apiVersion"] != target.api_version || event["kind"] != "Event" {
        let message = format!("expected apiVersion {} and kind Event", target.api_version);
        return error_response(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    let namespace = event["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    if !namespace.is_empty() && namespace != target.namespace {
        let message = format!("the namespace of the object ({namespace}) does not match the request's");
        return error_response(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    if let Err(message) = target.validate(&event) {
        return error_response(StatusCode::BAD_REQUEST, "BadRequest", message);
    }
    let mut store = shared.lock();
    store.revision += 1;
    let revision = store.revision;
    let meta = &mut event["metadata"];
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(name), _) if !name.is_empty() => name.to_owned(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{revision:05}"),
        _ => return error_response(StatusCode::BAD_REQUEST, "BadRequest", "name or generateName is required".into()),
    };
    let key = (target.api_version, target.namespace.clone(), name.clone());
    if store.events.contains_key(&key) {
        let message = format!("events \"{name}\" already exists");
        return error_response(StatusCode::CONFLICT, "AlreadyExists", message);
    }
    meta["name"] = json!(name);
    meta["namespace"] = json!(target.namespace);
    meta["resourceVersion"] = json!(revision.to_string());
    meta["uid"] = json!(format!("00000000-0000-0000-0000-{revision:012}"));
    store.events.insert(key, event.clone());
    (StatusCode::CREATED, axum::Json(event)).into_response()
}

fn patch_event(shared: &Shared, target: &EventTarget, name: &str, patch: &Value) -> Response {
    let mut store = shared.lock();
    let key = (target.api_version, target.namespace.clone(), name.to_owned());
    let Some(current) = store.events.get(&key) else {
        return error_response(StatusCode::NOT_FOUND, "NotFound", format!("events \"{name}\" not found"));
    };
    let mut patched = current.clone();
    merge_patch(&mut patched, patch);
    // What the server owns stays as it was.
    for field in ["name", "namespace", "uid"] {
        patched["metadata"][field] = current["metadata"][field].clone();
    }
    patched["apiVersion"] = json!(target.api_version);
    patched["kind"] = json!("Event");
    if let Err(message) = target.validate(&patched) {
        return error_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message);
    }
    store.revision += 1;
    patched["metadata"]["resourceVersion"] = json!(store.revision.to_string());
    store.events.insert(key, patched.clone());
    axum::Json(patched).into_response()
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn list(shared: &Shared, filter: &Filter) -> Response {
    let store = shared.lock();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((resource, _, _), object)| filter.matches(*resource, object))
        .map(|(_, object)| {
            // As the real API server, list items carry no kind and apiVersion.
            let mut item = object.clone();
            if let Some(item) = item.as_object_mut() {
                item.remove("kind");
                item.remove("apiVersion");
            }
            item
        })
        .collect();
    let list = json!({
        "kind": format!("{}List", filter.resource.kind()),
        "apiVersion": filter.resource.api_version(),
        "metadata": { "resourceVersion": store.revision.to_string() },
        "items": items,
    });
    axum::Json(list).into_response()
}

/// Where a watch starts.
#[derive(Debug)]
enum Start {
    /// At the latest revision, after ADDED events for the current objects (no resourceVersion, or "0").
    Now,
    /// After this revision.
    After(u64),
}

/// A watch request's parameters.
#[derive(Debug)]
struct Watch {
    filter: Filter,
    start: Start,
    send_initial_events: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

fn start_watch(shared: Arc<Shared>, filter: Filter, query: &HashMap<String, String>) -> Response {
    let start = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => Start::Now,
        Some(rv) => match rv.parse() {
            Ok(rv) => Start::After(rv),
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "BadRequest", format!("invalid resourceVersion {rv:?}"))
            }
        },
    };
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let timeout = match query.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => None,
        Some(Ok(seconds)) => Some(Duration::from_secs(seconds)),
        Some(Err(_)) => return error_response(StatusCode::BAD_REQUEST, "BadRequest", "invalid timeoutSeconds".into()),
    };
    let watch = Watch {
        filter,
        start,
        send_initial_events: flag("sendInitialEvents"),
        bookmarks: flag("allowWatchBookmarks"),
        timeout,
    };
    let (lines, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(stream_watch(shared, watch, lines));
    let body =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx)) },
        );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

/// Feeds one watch stream until the client goes away, the timeout passes or a compaction ends it.
async fn stream_watch(shared: Arc<Shared>, watch: Watch, lines: mpsc::Sender<Bytes>) {
    let mut changed = shared.changed.subscribe();
    let deadline = watch.timeout.map(|t| Instant::now() + t);
    let resource = watch.filter.resource;

    // Where the stream starts, and what it sends first.
    let opening = {
        let store = shared.lock();
        let mut first = Vec::new();
        let sent = match watch.start {
            Start::After(rv) if rv < store.compacted => {
                let message = format!("too old resource version: {rv} ({})", store.compacted);
                Err(watch_line("ERROR", &status(StatusCode::GONE, "Expired", message)))
            }
            Start::After(rv) => Ok(rv),
            Start::Now => Ok(store.revision),
        };
        if matches!(watch.start, Start::Now) || watch.send_initial_events {
            for ((r, _, _), object) in &store.objects {
                if watch.filter.matches(*r, object) {
                    first.push(watch_line("ADDED", object));
                }
            }
        }
        sent.map(|sent| {
            let sent = if watch.send_initial_events {
                first.push(bookmark(resource, store.revision, true));
                store.revision
            } else {
                sent
            };
            (sent, store.epoch, first, Instant::now() + store.bookmark_interval)
        })
    };
    let (mut sent, epoch, first, mut next_bookmark) = match opening {
        Ok(opening) => opening,
        Err(gone) => {
            let _ = lines.send(gone).await;
            return;
        }
    };
    for line in first {
        if lines.send(line).await.is_err() {
            return;
        }
    }

    loop {
        changed.borrow_and_update();
        let batch = {
            let mut store = shared.lock();
            if store.epoch != epoch {
                return;
            }
            let mut batch = Vec::new();
            if store.paused {
                next_bookmark = Instant::now() + store.bookmark_interval;
            } else {
                let changes = store.history.iter().filter(|c| c.revision > sent);
                for change in changes.filter(|c| watch.filter.matches(c.resource, &c.object)) {
                    batch.push(watch_line(change.event, &change.object));
                }
                sent = store.revision;
                if watch.bookmarks && Instant::now() >= next_bookmark {
                    batch.push(bookmark(resource, store.revision, false));
                    store.bookmarks_sent += 1;
                    next_bookmark = Instant::now() + store.bookmark_interval;
                }
            }
            batch
        };
        for line in batch {
            if lines.send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            result = changed.changed() => if result.is_err() { return },
            _ = tokio::time::sleep_until(next_bookmark), if watch.bookmarks => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => return,
            _ = lines.closed() => return,
        }
    }
}
