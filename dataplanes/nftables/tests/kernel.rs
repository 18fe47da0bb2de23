//! The dataplane against the real kernel, in a network namespace each test creates and removes.
//! Needs root and `nft`; without them the tests fail saying so.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use switchyard_model::dataplane::{Dataplane, Error};
use switchyard_model::manifest;
use switchyard_model::store::{Event, Store};
use switchyard_model::{NodePlan, PlanKey, PlanOptions, ServicePlan};
use switchyard_nftables::kernel::{Nft, NftCommand};
use switchyard_nftables::netlink::ElementBatch;
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

/// Runs `f` on a thread inside the named network namespace: a netlink socket it opens, an `nft` it starts
/// and a TCP socket it makes all belong there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("ip netns keeps namespaces here");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns (root needed)");
            f()
        })
        .join()
        .expect("no panic in the namespace")
    })
}

/// The daemon's own `nft` (no `netns`, so element-only scripts go over netlink), run from inside a test's
/// namespace, recording the scripts it is given.
#[derive(Debug)]
struct OwnNamespace {
    ns: String,
    scripts: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Nft for OwnNamespace {
    fn apply(&self, script: &str) -> Result<(), Error> {
        self.scripts.lock().unwrap().push(script.to_string());
        in_netns(&self.ns, || NftCommand::default().apply(script))
    }
    fn list(&self, what: &str, family: &str, table: &str) -> Result<Option<String>, Error> {
        in_netns(&self.ns, || NftCommand::default().list(what, family, table))
    }
}

fn list_table(ns: &str, family: &str) -> String {
    let out = Command::new("ip").args(["netns", "exec", ns, "nft", "list", "table", family, "switchyard"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// An endpoint that moves is an element-only transaction, which the daemon's own `nft` sends over netlink:
/// the table is then exactly what `nft -f` of the same change makes, and connections reach the new address.
#[test]
fn element_changes_over_netlink_match_nft() {
    let (fast, slow) = (Netns::new("nl-fast"), Netns::new("nl-slow"));
    let own = OwnNamespace { ns: fast.0.clone(), scripts: Default::default() };
    let scripts = own.scripts.clone();
    let mut dp_fast = NftablesDataplane::new(Settings::default(), Box::new(own));
    let mut dp_slow = slow.dataplane();
    let first = one_endpoint("10.244.0.3", "fd00:244::3");
    assert_eq!(first.len(), 2, "one Service port per family");
    let moved = one_endpoint("10.244.0.4", "fd00:244::4");
    for dp in [&mut dp_fast, &mut dp_slow] {
        dp.restore().unwrap();
        assert!(dp.sync(&NodePlan::default(), &first, None).unwrap().failed.is_empty());
        let report = dp.sync(&NodePlan::default(), &moved, None).unwrap();
        assert_eq!((report.written, report.failed.len()), (2, 0), "{report:?}");
    }
    let recorded = scripts.lock().unwrap().clone();
    let changes = &recorded[recorded.len() - 2..];
    for script in changes {
        assert!(ElementBatch::parse(script).is_some(), "an element-only transaction:\n{script}");
    }
    // `cluster-ips`, both families in one batch.
    let ips = "add element ip switchyard cluster-ips { 10.96.0.77 }\nadd element ip6 switchyard cluster-ips { fd00:96::77 }\n";
    assert!(ElementBatch::parse(ips).is_some());
    in_netns(&fast.0, || NftCommand::default().apply(ips)).unwrap();
    NftCommand { netns: Some(slow.0.clone()), ..NftCommand::default() }.apply(ips).unwrap();
    for family in ["ip", "ip6"] {
        let (got, want) = (list_table(&fast.0, family), list_table(&slow.0, family));
        assert_eq!(got, want, "{family}: netlink and nft leave the same table");
        assert!(got.contains("10.244.0.4 . 8080") || got.contains("fd00:244::4 . 8080"), "{got}");
        assert!(got.contains("10.96.0.77") || got.contains("fd00:96::77"), "{got}");
    }

    // Traffic to the ClusterIP from inside the namespace reaches the new address.
    let sh = |cmd: &str| {
        let out = Command::new("ip").args(["netns", "exec", &fast.0, "sh", "-ec", cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    sh("ip link set lo up; for a in 10.244.0.3 10.244.0.4 10.244.0.9; do ip addr add $a/32 dev lo; done; \
        ip route add 10.96.0.0/16 dev lo src 10.244.0.9");
    let reached = in_netns(&fast.0, || {
        let listener = std::net::TcpListener::bind("0.0.0.0:8080").unwrap();
        let addr = "10.96.0.10:80".parse().unwrap();
        let _client = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5)).expect("connect to the ClusterIP");
        let (conn, _) = listener.accept().unwrap();
        conn.local_addr().unwrap()
    });
    assert_eq!(reached, "10.244.0.4:8080".parse().unwrap());
}

/// A netlink batch the kernel refuses changes nothing (one bad command undoes the good ones before it) and
/// is an error, after which the thread's socket still works; a batch for a table that does not exist is an
/// error too.
#[test]
fn failed_netlink_batch_changes_nothing() {
    let ns = Netns::new("nl-fail");
    let mut dp = ns.dataplane();
    dp.restore().unwrap();
    dp.sync(&NodePlan::default(), &plans("basic.yaml"), None).unwrap();
    let before = list_table(&ns.0, "ip");
    let batch = ElementBatch::parse(
        "add element ip switchyard backend-slots { 999 : 1 }\ndelete element ip switchyard backend-addrs { 12345 }\n",
    )
    .unwrap();
    let good = ElementBatch::parse("add element ip switchyard backend-slots { 999 : 1 }\n").unwrap();
    let undo = ElementBatch::parse("delete element ip switchyard backend-slots { 999 }\n").unwrap();
    // One thread, so one kept socket: a failure leaves it usable for the next batches.
    let (err, added) = in_netns(&ns.0, || {
        let err = batch.apply().expect_err("no element 12345");
        assert_eq!(list_table(&ns.0, "ip"), before, "nothing changed");
        good.apply().unwrap();
        let added = list_table(&ns.0, "ip");
        undo.apply().unwrap();
        (err, added)
    });
    assert!(matches!(&err, Error::Rejected { message, .. } if message.contains("delete element backend-addrs")), "{err}");
    assert!(added.contains("0x000003e7 : 0x00000001"), "{added}");
    assert_eq!(list_table(&ns.0, "ip"), before, "back as it was");

    let empty = Netns::new("nl-none");
    let err = in_netns(&empty.0, || batch.apply()).expect_err("no table");
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
}
