//! The dataplane against the real kernel, in a network namespace each test creates and removes.
//! Needs root and `nft`; without them the tests fail saying so.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use switchyard_model::dataplane::Dataplane;
use switchyard_model::manifest;
use switchyard_model::store::{Event, Store};
use switchyard_model::{NodePlan, PlanKey, PlanOptions, ServicePlan};
use switchyard_nftables::kernel::NftCommand;
use switchyard_nftables::translate::Settings;
use switchyard_nftables::NftablesDataplane;

/// A network namespace that is removed when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("synft-{tag}-{}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("the ip command (iproute2) is needed");
        assert!(out.status.success(), "cannot create a network namespace (root needed): {}", String::from_utf8_lossy(&out.stderr));
        Netns(name)
    }
    fn dataplane(&self) -> NftablesDataplane {
        let nft = NftCommand { netns: Some(self.0.clone()), ..NftCommand::default() };
        NftablesDataplane::new(Settings::default(), Box::new(nft))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn plans(file: &str) -> BTreeMap<PlanKey, ServicePlan> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(file);
    let (objects, _) = manifest::parse(&std::fs::read_to_string(path).unwrap());
    let mut store = Store::new(PlanOptions::new("node-a"));
    for o in objects {
        store.handle(Event::Apply(o));
    }
    store.recompute();
    store.plans().clone()
}

/// The kernel accepts every golden scenario; a fresh dataplane restoring from it finds every Service port
/// already programmed (nothing rewritten), and the dump read back from the kernel matches the plans.
#[test]
fn program_restore_dump_round_trip() {
    for file in ["basic.yaml", "hashing-masquerade.yaml", "masquerade-all.yaml", "local-policies.yaml"] {
        let ns = Netns::new("rt");
        let desired = plans(file);
        let mut dp = ns.dataplane();
        dp.restore().unwrap();
        let report = dp.sync(&NodePlan::default(), &desired, None).unwrap();
        assert!(report.failed.is_empty(), "{file}: {report:?}");
        assert_eq!(report.written, desired.len(), "{file}");

        let mut again = ns.dataplane();
        again.restore().unwrap();
        let report = again.sync(&NodePlan::default(), &desired, None).unwrap();
        assert_eq!((report.written, report.removed, report.unchanged), (0, 0, desired.len()), "{file}: {report:?}");

        let dump = again.dump().unwrap();
        assert_eq!(dump.services.len(), desired.len(), "{file}");
        for (s, p) in dump.services.iter().zip(desired.values()) {
            assert_eq!((&s.namespace, &s.name, &s.port, s.protocol), (&p.name.namespace, &p.name.name, &p.name.port, p.name.protocol));
            assert_eq!(s.scheduler, p.scheduler, "{file}: {}", p.name);
            assert_eq!(s.affinity_timeout_seconds, p.affinity_timeout, "{file}: {}", p.name);
            let fe: Vec<_> = s.frontends.iter().map(|f| (f.kind, f.ip, f.port)).collect();
            let mut want: Vec<_> = p.frontends.iter().map(|f| (f.kind, f.ip, f.port)).collect();
            want.sort();
            assert_eq!(fe, want, "{file}: {}", p.name);
            let be: Vec<_> = s.backends.iter().map(|b| (b.ip, b.port)).collect();
            let want: Vec<_> = p.all_backends().iter().map(|b| (b.ip, b.port)).collect();
            assert_eq!(be, want, "{file}: {}", p.name);
        }
    }
}

/// Removing Service ports removes all of their objects and nothing else; cleanup removes the tables.
#[test]
fn prune_and_cleanup() {
    let ns = Netns::new("prune");
    let desired = plans("basic.yaml");
    let mut dp = ns.dataplane();
    dp.restore().unwrap();
    dp.sync(&NodePlan::default(), &desired, None).unwrap();

    // A restarted daemon that no longer has demo/web prunes it on its first (full) sync.
    let fewer: BTreeMap<_, _> = desired.iter().filter(|(k, _)| k.0.name != "web").map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut again = ns.dataplane();
    again.restore().unwrap();
    let report = again.sync(&NodePlan::default(), &fewer, None).unwrap();
    assert_eq!((report.removed, report.written), (1, 0), "{report:?}");
    let listing = Command::new("ip").args(["netns", "exec", &ns.0, "nft", "list", "table", "ip", "switchyard"]).output().unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(!text.contains("demo/web"), "{text}");
    assert!(text.contains("kube-system/dns") && text.contains("nat-prerouting"), "{text}");

    again.cleanup().unwrap();
    let listing = Command::new("ip").args(["netns", "exec", &ns.0, "nft", "list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listing.stdout).contains("switchyard"));
    // Cleaning up twice is fine.
    again.cleanup().unwrap();
}
