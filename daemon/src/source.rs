//! Sources of API objects. Each source sends [`switchyard_model::store::Event`]s into one channel that the
//! sync loop drains into the model; a source never touches the model or a dataplane itself.

pub mod kube;
pub mod manifests;

/// Where sources send what they learn.
pub type Sender = tokio::sync::mpsc::Sender<switchyard_model::store::Event>;
