//! Kubernetes Events for bad objects: each [`Problem`] the model reports becomes a Warning Event on the
//! object at fault (events.k8s.io/v1, repeated ones as a series), so `kubectl describe service` shows why
//! part of a Service is not programmed. Only with the API server source; with manifests, the log line and
//! the metric are all there is.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use switchyard_model::Problem;
use tokio::sync::mpsc;
use tracing::warn;

/// Where the sync loop sends problems to be published.
pub type ProblemSink = mpsc::Sender<Problem>;

/// How many problems may wait to be published; more are dropped (they are still logged and counted).
const BACKLOG: usize = 1024;

/// Starts a task that publishes the problems sent to the returned sink as Events.
pub fn spawn_recorder(client: kube::Client, node_name: String) -> ProblemSink {
    let (tx, mut rx) = mpsc::channel::<Problem>(BACKLOG);
    let recorder = Recorder::new(client, Reporter { controller: "switchyard".into(), instance: Some(node_name) });
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            let Some(reference) = reference(&p) else { continue };
            let event = Event {
                type_: EventType::Warning,
                reason: p.reason.to_string(),
                note: Some(p.message.chars().take(1000).collect()),
                action: "Program".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(object = %p.object, reason = p.reason, error = %e, "cannot publish an Event");
            }
        }
    });
    tx
}

/// The object a problem is about.
fn reference(p: &Problem) -> Option<ObjectReference> {
    let api_version = match p.kind {
        "Service" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => return None,
    };
    let (namespace, name) = p.object.split_once('/')?;
    Some(ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(p.kind.into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectReference::default()
    })
}
