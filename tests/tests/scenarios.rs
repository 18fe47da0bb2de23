//! Every scenario file under `tests/scenarios/` run against a dataplane with real packets (see
//! `switchyard_tests::scenario` for the format). The dataplane is `$SWITCHYARD_DATAPLANE` (default
//! `nftables`), so each dataplane runs the same files unchanged (`scenarios_ebpf` runs them on eBPF under a
//! plain `cargo test`; the IPVS VM runs this executable with `SWITCHYARD_DATAPLANE=ipvs`). Needs root and
//! `cargo build -p switchyard` first. Each scenario has its own namespaces, so they run in parallel.

/// The dataplane under test.
fn dataplane() -> String {
    std::env::var("SWITCHYARD_DATAPLANE").unwrap_or_else(|_| "nftables".into())
}

include!("support/scenario_tests.rs");
