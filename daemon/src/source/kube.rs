//! The Kubernetes source: kube-rs watchers on Services, EndpointSlices and this node's Node, translated into
//! store [`Event`]s.
//!
//! Each watcher's initial list (and every relist, e.g. after a `410 Gone`) arrives as `Init`, `InitApply`..,
//! `InitDone` and becomes one [`Event::Replace`] of the complete set, so objects deleted while the watch was
//! down disappear. [`Event::Synced`] follows the first `Replace` of every kind. Watcher errors are logged and
//! retried with backoff; the source never ends while the receiver lives.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;

use anyhow::Context as _;
use futures::stream::{self, BoxStream};
use futures::{future, StreamExt as _};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use switchyard_model::store::{Event, Kind, Object};

/// A client for the API server: from the kubeconfig file at `kubeconfig` if given, otherwise inferred
/// (in-cluster service account first, then `$KUBECONFIG` / `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("inferring the Kubernetes client configuration")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// Watches v1 Services and discovery.k8s.io/v1 EndpointSlices in all namespaces and the v1 Node named
/// `node_name`, sending what changes into `tx`. Returns only when the receiver of `tx` is dropped.
pub async fn run(client: Client, node_name: String, tx: super::Sender) {
    let node_config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut events = stream::select_all([
        watch(Api::<Service>::all(client.clone()), watcher::Config::default(), Kind::Service, |s| {
            Object::Service(Box::new(s))
        }),
        watch(Api::<EndpointSlice>::all(client.clone()), watcher::Config::default(), Kind::EndpointSlice, |s| {
            Object::EndpointSlice(Box::new(s))
        }),
        watch(Api::<Node>::all(client), node_config, Kind::Node, |n| Object::Node(Box::new(n))),
    ]);
    let mut listed = BTreeSet::new();
    let mut synced = false;
    loop {
        let event = tokio::select! {
            _ = tx.closed() => return,
            event = events.next() => match event {
                Some(event) => event,
                // The watcher streams are endless; this is unreachable but harmless.
                None => return,
            },
        };
        let replaced = match &event {
            Event::Replace(kind, _) => Some(*kind),
            _ => None,
        };
        if tx.send(event).await.is_err() {
            return;
        }
        if let Some(kind) = replaced {
            listed.insert(kind);
            if !synced && listed.len() == 3 {
                synced = true;
                if tx.send(Event::Synced).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// One endless stream of store events from a kube-rs watcher on `api`, with backoff on errors.
fn watch<K>(api: Api<K>, config: watcher::Config, kind: Kind, wrap: fn(K) -> Object) -> BoxStream<'static, Event>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    // The objects of a list in progress (between `Init` and `InitDone`).
    let mut listing = Vec::new();
    let object = move |k: K| with_namespace(wrap(k));
    watcher(api, config)
        .default_backoff()
        .filter_map(move |result| {
            let event = match result {
                Ok(watcher::Event::Init) => {
                    listing.clear();
                    None
                }
                Ok(watcher::Event::InitApply(k)) => {
                    listing.push(object(k));
                    None
                }
                Ok(watcher::Event::InitDone) => Some(Event::Replace(kind, std::mem::take(&mut listing))),
                Ok(watcher::Event::Apply(k)) => Some(Event::Apply(object(k))),
                Ok(watcher::Event::Delete(k)) => Some(Event::Delete(object(k).key())),
                Err(error) => {
                    tracing::warn!(?kind, %error, "Kubernetes watch failed; retrying with backoff");
                    None
                }
            };
            future::ready(event)
        })
        .boxed()
}

/// Puts a namespaced object without a namespace in "default", where the API server keeps it.
fn with_namespace(mut object: Object) -> Object {
    let meta: &mut ObjectMeta = match &mut object {
        Object::Service(s) => &mut s.metadata,
        Object::EndpointSlice(s) => &mut s.metadata,
        Object::Node(_) => return object,
    };
    if meta.namespace.as_deref().unwrap_or_default().is_empty() {
        meta.namespace = Some("default".to_owned());
    }
    object
}
