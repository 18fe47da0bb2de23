//! Unit tests of the reconciler against a fake `nft`, and golden scripts for the scenarios in
//! `tests/golden/` (regenerate with `SWITCHYARD_BLESS=1 cargo test -p switchyard-nftables`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use switchyard_model::manifest;
use switchyard_model::store::{Event, Store};
use switchyard_model::PlanOptions;

use super::*;

/// A fake `nft` that records scripts and rejects those containing a chosen text.
#[derive(Debug, Clone, Default)]
struct FakeNft {
    scripts: Arc<Mutex<Vec<String>>>,
    reject_if_contains: Arc<Mutex<Option<String>>>,
}

impl Nft for FakeNft {
    fn apply(&self, script: &str) -> Result<(), Error> {
        if let Some(bad) = self.reject_if_contains.lock().unwrap().as_deref() {
            if script.contains(bad) {
                return Err(Error::Rejected { dataplane: "nftables", message: format!("fake rejects {bad}") });
            }
        }
        self.scripts.lock().unwrap().push(script.to_string());
        Ok(())
    }
    fn list(&self, _: &str, _: &str, _: &str) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

impl FakeNft {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.scripts.lock().unwrap())
    }
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Reads a scenario: settings from its `# settings:` line, plans from its objects.
fn scenario(path: &Path) -> (Settings, Store) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut settings = Settings::default();
    if let Some(line) = text.lines().find_map(|l| l.strip_prefix("# settings:")) {
        for word in line.split_whitespace() {
            match word.split_once('=') {
                None if word == "masquerade-all" => settings.masquerade_all = true,
                Some(("cluster-cidr", v)) => settings.cluster_cidrs = v.split(',').map(|c| c.parse().unwrap()).collect(),
                _ => panic!("{}: unknown setting {word}", path.display()),
            }
        }
    }
    let (objects, skipped) = manifest::parse(&text);
    assert!(skipped.is_empty(), "{}: {skipped:?}", path.display());
    let mut store = Store::new(PlanOptions::new("node-a"));
    for o in objects {
        store.handle(Event::Apply(o));
    }
    store.handle(Event::Synced);
    let (_, problems) = store.recompute();
    assert!(problems.is_empty(), "{}: {problems:?}", path.display());
    (settings, store)
}

fn dataplane(settings: Settings) -> (NftablesDataplane, FakeNft) {
    let fake = FakeNft::default();
    let mut dp = NftablesDataplane::new(settings, Box::new(fake.clone()));
    dp.restore().unwrap();
    (dp, fake)
}

/// The script of a first full sync of each scenario matches its golden file.
#[test]
fn golden_scripts() {
    let bless = std::env::var_os("SWITCHYARD_BLESS").is_some();
    let mut checked = 0;
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let (settings, store) = scenario(&path);
        let (mut dp, fake) = dataplane(settings);
        let report = dp.sync(&store.node_plan(), store.plans(), None).unwrap();
        assert!(report.failed.is_empty());
        let got = fake.take().join("# --- next transaction ---\n");
        let golden = path.with_extension("nft");
        if bless {
            std::fs::write(&golden, &got).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden)
                .unwrap_or_else(|_| panic!("{} missing: run with SWITCHYARD_BLESS=1", golden.display()));
            assert!(want == got, "{} differs from the translation; diff it or bless it.\n--- got ---\n{got}", golden.display());
        }
        checked += 1;
    }
    assert!(checked >= 3, "golden scenarios found: {checked}");
}

/// A sync with nothing changed sends nothing to the kernel; a change to one Service port rewrites only it.
#[test]
fn incremental_touches_only_the_changed_service() {
    let (settings, mut store) = scenario(&golden_dir().join("basic.yaml"));
    let (mut dp, fake) = dataplane(settings);
    dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    fake.take();

    let report = dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    assert!(fake.take().is_empty(), "a full sync of an unchanged model writes nothing");
    assert_eq!(report.unchanged, 3, "{report:?}");

    // Remove one endpoint of demo/web.
    let (objects, _) = manifest::parse(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.0.2]}]\n",
    );
    store.handle(Event::Apply(objects.into_iter().next().unwrap()));
    let (changed, _) = store.recompute();
    let report = dp.sync(&store.node_plan(), store.plans(), Some(&changed)).unwrap();
    assert_eq!(report.written, 1);
    let scripts = fake.take();
    assert_eq!(scripts.len(), 1, "one transaction");
    let s = &scripts[0];
    assert!(!s.contains("kube-system") && !s.contains("demo/empty"), "other Services untouched:\n{s}");
    assert!(!s.contains("hook"), "the skeleton is not rewritten:\n{s}");
    // The removed backend's elements go (web's backends have marks 1 and 2); the route keeps its block of
    // slots, one shorter.
    for gone in ["backend-traffic { 2 }", "backend-connections { 2 }", "backend-addrs { 2 }", "hairpin { 10.244.0.3 . 2 }", "backend-slots { 1 }"] {
        assert!(s.contains(&format!("delete element ip switchyard {gone}")), "{gone}:\n{s}");
    }
    assert!(s.contains("ct mark set numgen inc mod 1 offset 0 goto backend-pick"), "{s}");
    assert!(!s.contains("add chain") && !s.contains("delete chain") && !s.contains(" map ip "), "no objects, only elements:\n{s}");
    assert!(
        !s.contains("backend-traffic { 1") && !s.contains("backend-connections { 1") && !s.contains("backend-slots { 0"),
        "the kept backend's elements are not touched, so its counters keep counting:\n{s}"
    );

    // Delete the Service altogether.
    let key = switchyard_model::store::ObjectKey {
        kind: switchyard_model::store::Kind::Service,
        namespace: "demo".into(),
        name: "web".into(),
    };
    store.handle(Event::Delete(key));
    let (changed, _) = store.recompute();
    let report = dp.sync(&store.node_plan(), store.plans(), Some(&changed)).unwrap();
    assert_eq!(report.removed, 1);
    let s = fake.take().join("");
    assert!(s.contains("delete element ip switchyard service-ips { 10.96.0.10 . tcp . 80 }"), "{s}");
    assert!(s.contains("delete chain ip switchyard service-demo/web/tcp/http"), "{s}");
    assert!(!s.contains("add "), "{s}");
}

/// An endpoint that moves to another address while the number of backends stays changes elements only: no
/// chain is flushed or refilled, and the fingerprint (left in the kernel) still recognises the Service port
/// after a restart.
#[test]
fn moved_endpoint_changes_elements_only() {
    let (settings, mut store) = scenario(&golden_dir().join("basic.yaml"));
    let (mut dp, fake) = dataplane(settings);
    dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    fake.take();

    let (objects, _) = manifest::parse(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.0.2]}, {addresses: [10.244.0.4]}]\n",
    );
    store.handle(Event::Apply(objects.into_iter().next().unwrap()));
    let (changed, _) = store.recompute();
    let report = dp.sync(&store.node_plan(), store.plans(), Some(&changed)).unwrap();
    assert_eq!((report.written, report.unchanged), (1, 0), "{report:?}");
    let scripts = fake.take();
    assert_eq!(scripts.len(), 1, "one transaction");
    let s = &scripts[0];
    assert!(s.lines().all(|l| l.starts_with("add element ") || l.starts_with("delete element ")), "elements only:\n{s}");
    assert!(s.contains(" : 10.244.0.4 . 8080 }") && s.contains("add element ip switchyard hairpin { 10.244.0.4 . "), "{s}");

    // The same plans again: nothing to do.
    let report = dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    assert_eq!(report.unchanged, 3, "{report:?}");
    assert!(fake.take().is_empty());

    // Back to the first address: still elements only (the chains were written in this run, so are known).
    let (_, first) = scenario(&golden_dir().join("basic.yaml"));
    dp.sync(&first.node_plan(), first.plans(), None).unwrap();
    let s = fake.take().join("");
    assert!(!s.is_empty() && s.lines().all(|l| l.contains(" element ")), "elements only:\n{s}");
}

/// A batch the kernel rejects is retried Service port by Service port: the good ones land, the bad one is
/// reported failed, and nothing is flushed.
#[test]
fn rejected_batch_falls_back_to_one_by_one() {
    let (settings, store) = scenario(&golden_dir().join("basic.yaml"));
    let (mut dp, fake) = dataplane(settings);
    *fake.reject_if_contains.lock().unwrap() = Some("kube-system/dns".into());
    let report = dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0 .0.name, "dns");
    assert_eq!(report.written, 2);
    let scripts = fake.take();
    assert!(scripts.iter().all(|s| !s.contains("flush table") && !s.contains("delete table")));

    // Once the kernel accepts it, only the failed one is written.
    *fake.reject_if_contains.lock().unwrap() = None;
    let keys: BTreeSet<PlanKey> = report.failed.iter().map(|(k, _)| k.clone()).collect();
    let report = dp.sync(&store.node_plan(), store.plans(), Some(&keys)).unwrap();
    assert_eq!((report.written, report.failed.len()), (1, 0));
    let s = fake.take().join("");
    assert!(s.contains("kube-system/dns") && !s.contains("demo/web"), "{s}");
}

/// Two Services claiming one address and port: the first keeps it, the second is programmed without that
/// frontend and gets it once the first goes away.
#[test]
fn conflicting_frontends_do_not_block_others() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: demo}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: demo}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n";
    let mut store = Store::new(PlanOptions::new("node-a"));
    for o in manifest::parse(yaml).0 {
        store.handle(Event::Apply(o));
    }
    store.recompute();
    let (mut dp, fake) = dataplane(Settings::default());
    let report = dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    let s = fake.take().join("");
    assert_eq!(s.matches("add element ip switchyard no-endpoint-services { 10.96.0.10 . tcp . 80").count(), 1, "{s}");
    assert!(s.contains("goto service-demo/a/tcp/-"), "{s}");

    store.handle(Event::Delete(switchyard_model::store::ObjectKey {
        kind: switchyard_model::store::Kind::Service,
        namespace: "demo".into(),
        name: "a".into(),
    }));
    let (changed, _) = store.recompute();
    dp.sync(&store.node_plan(), store.plans(), Some(&changed)).unwrap();
    let s = fake.take().join("");
    assert!(s.contains("add element ip switchyard no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"ClusterIP\" : goto service-demo/b/tcp/- }"), "{s}");
}

/// A Service port that takes over an address another one gives up in the same batch is written after the
/// other's removal, whatever their names' order: the kernel refuses a second element for one key.
#[test]
fn removals_of_a_batch_come_before_its_additions() {
    let svc = |name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{{port: 80}}]\n")
    };
    let mut store = Store::new(PlanOptions::new("node-a"));
    for o in manifest::parse(&svc("z")).0 {
        store.handle(Event::Apply(o));
    }
    store.recompute();
    let (mut dp, fake) = dataplane(Settings::default());
    dp.sync(&store.node_plan(), store.plans(), None).unwrap();
    fake.take();

    let key = |name: &str| switchyard_model::store::ObjectKey {
        kind: switchyard_model::store::Kind::Service,
        namespace: "demo".into(),
        name: name.into(),
    };
    store.handle(Event::Delete(key("z")));
    for o in manifest::parse(&svc("a")).0 {
        store.handle(Event::Apply(o));
    }
    let (changed, _) = store.recompute();
    let report = dp.sync(&store.node_plan(), store.plans(), Some(&changed)).unwrap();
    assert_eq!((report.written, report.removed), (1, 1), "{report:?}");
    let s = fake.take().join("");
    let gone = s.find("delete element ip switchyard no-endpoint-services { 10.96.0.10 . tcp . 80 }").expect(&s);
    let added = s.find("add element ip switchyard no-endpoint-services { 10.96.0.10 . tcp . 80").expect(&s);
    assert!(gone < added, "{s}");
}

/// Names parse back to the Service port they were made from, for every protocol and unnamed ports.
#[test]
fn names_round_trip() {
    for (port, proto) in [("http", switchyard_model::Protocol::Tcp), ("", switchyard_model::Protocol::Sctp)] {
        let n = switchyard_model::ServicePortName {
            namespace: "ns".into(),
            name: "svc".into(),
            port: port.into(),
            protocol: proto,
        };
        let key = names::service_key(&n);
        assert_eq!(names::parse_service_key(&key), Some(n));
        let ep = names::endpoint(&key, "fd00::1".parse().unwrap(), 80);
        assert_eq!(names::owner_key(&ep), Some(key.as_str()));
        assert_eq!(names::owner_key(&names::affinity_set(&ep)), Some(key.as_str()));
    }
    assert_eq!(names::owner_key("services"), None);
    assert_eq!(names::owner_key("nat-prerouting"), None);
}
