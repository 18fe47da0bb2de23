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
    plans_of(&std::fs::read_to_string(path).unwrap())
}

fn plans_of(yaml: &str) -> BTreeMap<PlanKey, ServicePlan> {
    let (objects, _) = manifest::parse(yaml);
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

/// Every backend's dump entry matches the plans (backends are found through the slots their route owns, so
/// two routes sharing a slot would show here).
fn assert_dump_matches(dp: &NftablesDataplane, desired: &BTreeMap<PlanKey, ServicePlan>, what: &str) {
    let dump = dp.dump().unwrap();
    let got: Vec<_> = dump.services.iter().map(|s| (s.name.clone(), s.backends.iter().map(|b| (b.ip, b.port)).collect::<Vec<_>>())).collect();
    let want: Vec<_> =
        desired.values().map(|p| (p.name.name.clone(), p.all_backends().iter().map(|b| (b.ip, b.port)).collect::<Vec<_>>())).collect();
    assert_eq!(got, want, "{what}");
}

/// After a restart the slot blocks and marks in the kernel are known: a route that grows moves to a new
/// block, a new Service gets one of its own, and neither takes slots or marks that are in use.
#[test]
fn restart_keeps_slots_and_marks_apart() {
    let ns = Netns::new("slots");
    let service = |name: &str, ip: &str, eps: &[&str]| {
        let eps: Vec<String> = eps.iter().map(|e| format!("{{addresses: [{e}]}}")).collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: demo, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{port: 80}}]\nendpoints: [{}]\n---\n",
            eps.join(", ")
        )
    };
    let first = plans_of(&(service("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]) + &service("b", "10.96.0.2", &["10.0.0.3"])));
    let mut dp = ns.dataplane();
    dp.restore().unwrap();
    assert!(dp.sync(&NodePlan::default(), &first, None).unwrap().failed.is_empty());

    let second = plans_of(
        &(service("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2", "10.0.0.4"])
            + &service("b", "10.96.0.2", &["10.0.0.3"])
            + &service("c", "10.96.0.3", &["10.0.0.5", "10.0.0.6"])),
    );
    let mut again = ns.dataplane();
    again.restore().unwrap();
    let report = again.sync(&NodePlan::default(), &second, None).unwrap();
    assert_eq!((report.written, report.unchanged, report.failed.len()), (2, 1, 0), "{report:?}");
    assert_dump_matches(&again, &second, "after growing a and adding c");

    // A third start recognises everything, and one more change still lands where it should.
    let mut third = ns.dataplane();
    third.restore().unwrap();
    let report = third.sync(&NodePlan::default(), &second, None).unwrap();
    assert_eq!((report.written, report.unchanged), (0, 3), "{report:?}");
    let fourth = plans_of(&(service("a", "10.96.0.1", &["10.0.0.1"]) + &service("c", "10.96.0.3", &["10.0.0.5", "10.0.0.6", "10.0.0.7"])));
    let report = third.sync(&NodePlan::default(), &fourth, None).unwrap();
    assert_eq!((report.written, report.removed, report.failed.len()), (2, 1, 0), "{report:?}");
    assert_dump_matches(&third, &fourth, "after shrinking a, removing b and growing c");
    let listing = Command::new("ip").args(["netns", "exec", &ns.0, "nft", "list", "map", "ip", "switchyard", "backend-slots"]).output().unwrap();
    let text = String::from_utf8_lossy(&listing.stdout);
    assert_eq!(text.matches(" : 0x").count(), 4, "one slot per backend of a and c, none left over:\n{text}");
}

/// A ClusterIP in the kernel's `cluster-ips` set that no Service port has (left by an earlier run) is
/// removed once, and later changes still apply.
#[test]
fn stray_cluster_ip_is_removed_once() {
    let ns = Netns::new("stray");
    let desired = plans("basic.yaml");
    let mut dp = ns.dataplane();
    dp.restore().unwrap();
    dp.sync(&NodePlan::default(), &desired, None).unwrap();
    let nft = |args: &[&str]| {
        let out = Command::new("ip").args(["netns", "exec", &ns.0, "nft"]).args(args).output().unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    nft(&["add", "element", "ip", "switchyard", "cluster-ips", "{ 10.96.9.9 }"]);

    let mut again = ns.dataplane();
    again.restore().unwrap();
    let fewer: BTreeMap<_, _> = desired.iter().filter(|(k, _)| k.0.name != "web").map(|(k, v)| (k.clone(), v.clone())).collect();
    let report = again.sync(&NodePlan::default(), &fewer, None).unwrap();
    assert_eq!((report.removed, report.failed.len()), (1, 0), "{report:?}");
    assert!(!nft(&["list", "set", "ip", "switchyard", "cluster-ips"]).contains("10.96.9.9"));
    let report = again.sync(&NodePlan::default(), &desired, None).unwrap();
    assert_eq!((report.written, report.failed.len()), (1, 0), "{report:?}");
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

/// A Service with one endpoint per family, for moving it.
fn one_endpoint(v4: &str, v6: &str) -> BTreeMap<PlanKey, ServicePlan> {
    plans_of(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: demo, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [{v4}]}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: demo}}\nspec:\n  clusterIP: fd00:96::10\n  ipFamilies: [IPv6]\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web6-1, namespace: demo, labels: {{kubernetes.io/service-name: web6}}}}\n\
         addressType: IPv6\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [\"{v6}\"]}}]\n"
    ))
}

/// An endpoint that moves (the number of backends stays) changes elements only, so the fingerprint in the
/// kernel is not rewritten; a restarted daemon still recognises the Service port: the backend elements read
/// back equal the translated ones, in both families.
#[test]
fn moved_endpoint_is_recognised_after_restart() {
    let ns = Netns::new("moved");
    let mut dp = ns.dataplane();
    dp.restore().unwrap();
    let first = one_endpoint("10.244.0.3", "fd00:244::3");
    assert_eq!(first.len(), 2, "one Service port per family");
    assert!(dp.sync(&NodePlan::default(), &first, None).unwrap().failed.is_empty());
    let moved = one_endpoint("10.244.0.4", "fd00:244::4");
    let report = dp.sync(&NodePlan::default(), &moved, None).unwrap();
    assert_eq!((report.written, report.failed.len()), (2, 0), "{report:?}");

    let mut again = ns.dataplane();
    again.restore().unwrap();
    let report = again.sync(&NodePlan::default(), &moved, None).unwrap();
    assert_eq!((report.written, report.unchanged), (0, 2), "{report:?}");
    assert_dump_matches(&again, &moved, "after the move");
}
