//! Switchyard's dataplane-neutral model.
//!
//! Sources (the Kubernetes API, a directory of manifests) feed [`store::Store`], the one writer of the model.
//! The store turns Services, EndpointSlices and the own Node into [`ServicePlan`]s: for each Service port, the
//! frontends this node answers on and the backends each kind of traffic goes to. Every decision about which
//! endpoints serve which traffic is made here, once, so that every dataplane inherits it. Dataplanes implement
//! [`dataplane::Dataplane`]: a reconciler that programs plans into the kernel and reads the kernel back.
#![deny(missing_docs)]

pub mod conntrack;
pub mod dataplane;
pub mod manifest;
pub mod plan;
mod reduced;
pub mod store;
mod types;

pub use plan::{node_eligible, plan_node, plan_service, NodePortAddresses, PlanOptions, Problem};
pub use types::*;
