//! Switchyard's real-kernel test kit: network namespaces, the real daemon, real packets, and a fake
//! Kubernetes API server that speaks the list/watch protocol. Used by the tests under `tests/tests/`.
//!
//! Everything here needs root (network namespaces, nftables). A test that cannot get what it needs panics
//! with the reason: it never passes silently.

pub mod cgroup;
pub mod daemon;
pub mod fake_apiserver;
pub mod netns;
pub mod scenario;
pub mod sender;
pub mod traffic;
