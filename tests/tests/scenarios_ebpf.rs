//! Every scenario file under `tests/scenarios/` run against `switchyard run --dataplane ebpf` with real
//! packets: the same files and expectations as `scenarios` (nftables), so a plain `cargo test` checks both.
//! Each scenario's daemon attaches its socket programs to a cgroup of its own and pins under a bpffs
//! directory of its own; the pods' and the node's clients are processes in that cgroup, the external client
//! is not (see `switchyard_tests::scenario`). Needs root, `cargo build -p switchyard` first, and the kernel
//! features of the eBPF dataplane (dataplanes/ebpf/README.md).

/// The dataplane under test.
fn dataplane() -> String {
    "ebpf".into()
}

include!("support/scenario_tests.rs");
