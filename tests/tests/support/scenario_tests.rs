// The scenario tests, one per file under `tests/scenarios/`, shared by the test targets `scenarios` and
// `scenarios_ebpf` (`include!`d at their root, so test names are the bare file names). The including target
// defines `fn dataplane() -> String`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use switchyard_tests::scenario;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

/// One `#[test]` per scenario file, named after it.
/// A scenario that shows a known daemon bug carries `#[ignore = "daemon bug: ..."]`, so the suite stays green
/// while the bug is open and `cargo test -- --ignored` shows it; remove the attribute with the fix.
macro_rules! scenarios {
    ($($(#[$attr:meta])* $test:ident => $file:literal,)*) => {
        const FILES: &[&str] = &[$($file),*];
        $(
            #[doc = concat!("Scenario `tests/scenarios/", $file, "`: what its `description` says, with real packets.")]
            #[test]
            $(#[$attr])*
            fn $test() {
                scenario::run_file(&dir().join($file), &dataplane());
            }
        )*
    };
}

scenarios! {
    bad_objects => "bad-objects.yaml",
    bad_objects_unknown_port => "bad-objects-unknown-port.yaml",
    etp_local => "etp-local.yaml",
    etp_local_health_check_dual_stack => "etp-local-health-check-dual-stack.yaml",
    etp_local_health_check_ipv6 => "etp-local-health-check-ipv6.yaml",
    etp_local_no_local_endpoints => "etp-local-no-local-endpoints.yaml",
    ipv6_tcp_rejects => "ipv6-tcp-rejects.yaml",
    itp_local => "itp-local.yaml",
    lb_ingress_and_external_ips => "lb-ingress-and-external-ips.yaml",
    lb_source_ranges => "lb-source-ranges.yaml",
    masquerade_all => "masquerade-all.yaml",
    masquerade_cluster_cidr => "masquerade-cluster-cidr.yaml",
    nodeport_addresses_cidr => "nodeport-addresses-cidr.yaml",
    nodeport_addresses_primary => "nodeport-addresses-primary.yaml",
    nodeport_localhost => "nodeport-localhost.yaml",
    protocols_dual_stack => "protocols-dual-stack.yaml",
    rejects_and_drops => "rejects-and-drops.yaml",
    service_cidr_unset => "service-cidr-unset.yaml",
    terminating_endpoints => "terminating-endpoints.yaml",
    topology_nodes => "topology-nodes.yaml",
    topology_zones => "topology-zones.yaml",
}

/// Every file under `tests/scenarios/` has a test above (none is silently skipped), every one of them
/// parses as a scenario, and every excluded `source` check names a flow that has one.
#[test]
fn every_scenario_file_has_a_test() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir())
        .expect("tests/scenarios")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    let listed: BTreeSet<String> = FILES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "add each scenario file to the scenarios! list in tests/tests/support/scenario_tests.rs"
    );
    for f in &on_disk {
        scenario::Scenario::load(&dir().join(f));
    }
    scenario::check_exclusions(&dir());
}
