use super::*;
use crate::manifest;
use crate::Family;

fn objs(yaml: &str) -> Vec<Object> {
    let (o, skipped) = manifest::parse(yaml);
    assert!(skipped.is_empty(), "{skipped:?}");
    o
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80}]\n";

fn slice(name: &str, svc: &str, ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: demo, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{ip}]}}]\n"
    )
}

fn store() -> Store {
    Store::new(PlanOptions::new("node-a"))
}

fn backends(s: &Store) -> Vec<String> {
    s.plans().values().flat_map(|p| p.cluster.backends.iter().map(|b| b.addr())).collect()
}

/// Applying objects marks the Service dirty; recompute reports exactly the changed plan keys, once.
#[test]
fn apply_and_recompute() {
    let mut s = store();
    for o in objs(&format!("{SVC}---\n{}", slice("web-1", "web", "10.244.0.2"))) {
        s.handle(Event::Apply(o));
    }
    let (changed, problems) = s.recompute();
    assert!(problems.is_empty());
    assert_eq!(changed.len(), 1);
    assert_eq!(changed.iter().next().unwrap().1, Family::V4);
    assert_eq!(backends(&s), ["10.244.0.2:8080"]);
    // The same objects again change nothing.
    for o in objs(SVC) {
        assert_eq!(s.handle(Event::Apply(o)), Changes::default());
    }
    assert!(s.recompute().0.is_empty());
}

/// Deleting an EndpointSlice or the Service changes or removes the plan.
#[test]
fn deletes() {
    let mut s = store();
    for o in objs(&format!("{SVC}---\n{}", slice("web-1", "web", "10.244.0.2"))) {
        s.handle(Event::Apply(o));
    }
    s.recompute();
    let key = |kind, name: &str| ObjectKey { kind, namespace: "demo".into(), name: name.into() };
    s.handle(Event::Delete(key(Kind::EndpointSlice, "web-1")));
    assert_eq!(s.recompute().0.len(), 1);
    assert!(backends(&s).is_empty());
    s.handle(Event::Delete(key(Kind::Service, "web")));
    assert_eq!(s.recompute().0.len(), 1);
    assert!(s.plans().is_empty());
    // Deleting what is gone is no change.
    assert_eq!(s.handle(Event::Delete(key(Kind::Service, "web"))), Changes::default());
}

/// Replace drops objects missing from the new list (a relist after objects were deleted unseen).
#[test]
fn replace_drops_missing() {
    let mut s = store();
    let all = objs(&format!("{SVC}---\n{}---\n{}", slice("web-1", "web", "10.244.0.2"), slice("web-2", "web", "10.244.0.3")));
    let (svcs, slices): (Vec<_>, Vec<_>) = all.into_iter().partition(|o| o.kind() == Kind::Service);
    s.handle(Event::Replace(Kind::Service, svcs));
    s.handle(Event::Replace(Kind::EndpointSlice, slices.clone()));
    s.recompute();
    assert_eq!(backends(&s).len(), 2);
    s.handle(Event::Replace(Kind::EndpointSlice, slices[..1].to_vec()));
    s.recompute();
    assert_eq!(backends(&s), ["10.244.0.2:8080"]);
}

/// A slice relabelled to another Service leaves the first one and joins the second.
#[test]
fn slice_moves_between_services() {
    let mut s = store();
    let other = SVC.replace("name: web", "name: api").replace("10.96.0.10", "10.96.0.11");
    for o in objs(&format!("{SVC}---\n{other}---\n{}", slice("s1", "web", "10.244.0.2"))) {
        s.handle(Event::Apply(o));
    }
    s.recompute();
    for o in objs(&slice("s1", "api", "10.244.0.2")) {
        s.handle(Event::Apply(o));
    }
    let (changed, _) = s.recompute();
    assert_eq!(changed.len(), 2, "both Services' plans change");
    let by_name: Vec<(String, usize)> =
        s.plans().values().map(|p| (p.name.name.clone(), p.cluster.backends.len())).collect();
    assert_eq!(by_name, [("api".to_string(), 1), ("web".to_string(), 0)]);
}

/// Only this node's Node counts; Synced is remembered.
#[test]
fn node_and_synced() {
    let mut s = store();
    assert!(!s.is_synced());
    let other = "apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\n";
    assert!(!s.handle(Event::Apply(objs(other).remove(0))).node);
    assert!(s.handle(Event::Apply(objs(&other.replace("node-b", "node-a")).remove(0))).node);
    s.handle(Event::Synced);
    assert!(s.is_synced());
}

/// A change to a part of an object that planning does not read still counts as a change (the store keeps
/// only a fingerprint of the whole object), though no plan changes.
#[test]
fn unplanned_changes_count() {
    let mut s = store();
    for o in objs(SVC) {
        s.handle(Event::Apply(o));
    }
    s.recompute();
    let labelled = SVC.replace("namespace: demo}", "namespace: demo, labels: {team: a}}");
    let changes = s.handle(Event::Apply(objs(&labelled).remove(0)));
    assert_eq!(changes.services, 1);
    assert!(s.has_pending());
    assert!(s.recompute().0.is_empty());
    assert_eq!(s.handle(Event::Apply(objs(&labelled).remove(0))), Changes::default());
}

/// Every plan of a Service (each port, protocol and family) goes with it; only UDP ones are kept as
/// replaced, for the conntrack cleanup.
#[test]
fn all_plans_of_a_service_go() {
    let mut s = store();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: demo}\nspec:\n  clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10, fd00::10]\n  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}, {name: a, port: 54, protocol: SCTP}]\n";
    let other = SVC.replace("name: web", "name: dns-2").replace("10.96.0.10", "10.96.0.11");
    for o in objs(&format!("{svc}---\n{other}")) {
        s.handle(Event::Apply(o));
    }
    assert_eq!(s.recompute().0.len(), 7);
    let replaced = s.take_replaced();
    assert_eq!(replaced.keys().map(|k| (k.0.port.as_str(), k.1)).collect::<Vec<_>>(), [("dns", Family::V4), ("dns", Family::V6)]);
    s.handle(Event::Delete(ObjectKey { kind: Kind::Service, namespace: "demo".into(), name: "dns".into() }));
    assert_eq!(s.recompute().0.len(), 6);
    assert_eq!(s.plans().keys().map(|k| k.0.name.as_str()).collect::<Vec<_>>(), ["dns-2"]);
    assert!(s.take_replaced().values().all(|old| old.is_some()));
}
