//! Switchyard: a kube-proxy replacement. The per-node daemon as a library, so tests can drive its parts.
//!
//! [`source`]s send API objects to the [`sync`] loop, which keeps the model ([`switchyard_model::store`])
//! and hands changed plans to a dataplane. [`http`] serves [`metrics`] and [`health`]. [`config`] holds the
//! settings; `main.rs` wires it all and implements the CLI.

pub mod config;
pub mod events;
pub mod health;
pub mod healthcheck;
pub mod http;
pub mod metrics;
pub mod source;
pub mod sync;
