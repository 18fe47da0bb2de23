//! Kubernetes objects from YAML or JSON text (multi-document), as the manifests source and the scenario
//! tests read them.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize as _;

use crate::store::Object;

/// Why a document was not turned into an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// The document is not YAML; nothing after it in the text can be read.
    Syntax(String),
    /// A kind Switchyard does not read.
    OtherKind {
        /// `apiVersion`.
        api_version: String,
        /// `kind`.
        kind: String,
    },
    /// A known kind whose content does not fit its schema, or has no name.
    Invalid {
        /// `kind`.
        kind: String,
        /// What is wrong.
        error: String,
    },
}

/// Parses every document of `text`. Returns the objects (with a missing namespace defaulted to `default`)
/// and, per skipped document, its index and why.
pub fn parse(text: &str) -> (Vec<Object>, Vec<(usize, Skipped)>) {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                skipped.push((i, Skipped::Syntax(e.to_string())));
                break;
            }
        };
        let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let (api_version, kind) = (field("apiVersion"), field("kind"));
        let parsed = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Service") => serde_yaml::from_value::<Service>(value).map(|mut s| {
                default_namespace(&mut s.metadata);
                Object::Service(Box::new(s))
            }),
            ("discovery.k8s.io/v1", "EndpointSlice") => serde_yaml::from_value::<EndpointSlice>(value).map(|mut s| {
                default_namespace(&mut s.metadata);
                Object::EndpointSlice(Box::new(s))
            }),
            ("v1", "Node") => serde_yaml::from_value::<Node>(value).map(|n| Object::Node(Box::new(n))),
            _ => {
                skipped.push((i, Skipped::OtherKind { api_version, kind }));
                continue;
            }
        };
        match parsed {
            Ok(obj) if obj.key().name.is_empty() => {
                skipped.push((i, Skipped::Invalid { kind, error: "no metadata.name".into() }))
            }
            Ok(obj) => objects.push(obj),
            Err(e) => skipped.push((i, Skipped::Invalid { kind, error: e.to_string() })),
        }
    }
    (objects, skipped)
}

fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.as_deref().unwrap_or("").is_empty() {
        meta.namespace = Some("default".into());
    }
}
