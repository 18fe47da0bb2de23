use super::*;
use crate::manifest;
use crate::store::Object;

fn objects(yaml: &str) -> (Vec<Service>, Vec<EndpointSlice>) {
    let (objs, skipped) = manifest::parse(yaml);
    assert!(skipped.is_empty(), "{skipped:?}");
    let mut svcs = Vec::new();
    let mut slices = Vec::new();
    for o in objs {
        match o {
            Object::Service(s) => svcs.push(*s),
            Object::EndpointSlice(s) => slices.push(*s),
            Object::Node(_) => {}
        }
    }
    (svcs, slices)
}

fn plan(yaml: &str, opts: &PlanOptions) -> (Vec<ServicePlan>, Vec<Problem>) {
    let (svcs, slices) = objects(yaml);
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    plan_service(&svcs[0], &refs, None, opts)
}

fn opts() -> PlanOptions {
    PlanOptions::new("node-a")
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, annotations: {switchyard.io/scheduler: rr}}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  externalIPs: [192.0.2.7]
  ports:
  - {name: http, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.0.3], conditions: {ready: true}, nodeName: node-a, zone: z1}
- {addresses: [10.244.0.2]}
- {addresses: [10.244.0.4], conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.0.5], conditions: {ready: false, serving: false}}
"#;

/// A NodePort Service gets ClusterIP, externalIP and NodePort frontends, and only ready backends, sorted.
#[test]
fn frontends_and_ready_backends() {
    let (plans, problems) = plan(WEB, &opts());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(plans.len(), 1);
    let p = &plans[0];
    assert_eq!(p.name.to_string(), "demo/web:http/tcp");
    assert_eq!(p.scheduler, Scheduler::Rr);
    let fe: Vec<String> = p.frontends.iter().map(|f| format!("{} {}:{}", f.kind.as_str(), f.ip, f.port)).collect();
    assert_eq!(fe, ["ClusterIP 10.96.0.10:80", "NodePort 0.0.0.0:30080", "ExternalIP 192.0.2.7:80"]);
    let be: Vec<String> = p.cluster.backends.iter().map(Backend::addr).collect();
    assert_eq!(be, ["10.244.0.2:8080", "10.244.0.3:8080"]);
    assert_eq!(p.cluster, p.external);
    assert_eq!(p.cluster.backends[1].zone.as_deref(), Some("z1"));
    assert!(!p.external_local);
}

/// With no ready endpoint, serving terminating ones are used (kube-proxy's fallback); not-serving never.
#[test]
fn terminating_fallback() {
    let yaml = WEB.replace("conditions: {ready: true}, ", "conditions: {ready: false, serving: false}, ").replace(
        "- {addresses: [10.244.0.2]}",
        "- {addresses: [10.244.0.2], conditions: {ready: false}}",
    );
    let (plans, _) = plan(&yaml, &opts());
    let be: Vec<String> = plans[0].cluster.backends.iter().map(Backend::addr).collect();
    assert_eq!(be, ["10.244.0.4:8080"]);
}

/// Services kube-proxy ignores produce no plans.
#[test]
fn ignored_services() {
    for (from, to) in [
        ("namespace: demo,", "namespace: demo, labels: {service.kubernetes.io/service-proxy-name: other},"),
        ("namespace: demo,", "namespace: demo, labels: {service.kubernetes.io/headless: \"\"},"),
        ("clusterIP: 10.96.0.10", "clusterIP: None"),
        ("type: NodePort", "type: ExternalName"),
    ] {
        let (plans, _) = plan(&WEB.replacen(from, to, 1), &opts());
        assert!(plans.is_empty(), "{to}");
    }
}

/// Dual-stack Services give one plan per family, each with its family's addresses and endpoints only.
#[test]
fn dual_stack() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: ds, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00:96::20"]
  ipFamilies: [IPv4, IPv6]
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ds-v4, namespace: demo, labels: {kubernetes.io/service-name: ds}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [10.244.0.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ds-v6, namespace: demo, labels: {kubernetes.io/service-name: ds}}
addressType: IPv6
ports: [{port: 8080}]
endpoints: [{addresses: ["fd00:244::2"]}]
"#;
    let (plans, problems) = plan(yaml, &opts());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(plans.len(), 2);
    assert_eq!((plans[0].family, plans[1].family), (Family::V4, Family::V6));
    assert_eq!(plans[1].frontends[0].ip.to_string(), "fd00:96::20");
    assert_eq!(plans[1].cluster.backends[0].addr(), "[fd00:244::2]:8080");
    assert_eq!(plans[0].cluster.backends[0].addr(), "10.244.0.2:8080");
}

/// Bad parts are skipped and reported; the rest of the Service is still planned.
#[test]
fn bad_input_is_reported_and_skipped() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: demo, annotations: {switchyard.io/scheduler: fastest}}
spec:
  clusterIP: 10.96.0.30
  clusterIPs: [10.96.0.30, 10.96.0.300]
  externalIPs: [" 192.0.2.9 ", not-an-ip]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}
  ports:
  - {name: a, port: 70000}
  - {name: b, port: 81}
  - {name: b, port: 82}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bad-1, namespace: demo, labels: {kubernetes.io/service-name: bad}}
addressType: IPv4
ports: [{name: b, port: 8081}]
endpoints: [{addresses: [10.244.0.2]}, {addresses: [999.1.1.1]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: bad-2, namespace: demo, labels: {kubernetes.io/service-name: bad}}
addressType: IPv4
ports: [{name: b, port: 8081}, {name: unknown, port: 9}]
endpoints: [{addresses: [10.244.0.2]}, {addresses: [10.244.0.3]}]
"#;
    let (plans, problems) = plan(yaml, &opts());
    let reasons: Vec<&str> = problems.iter().map(|p| p.reason).collect();
    for r in [
        "InvalidClusterIP",
        "InvalidExternalIP",
        "InvalidScheduler",
        "InvalidAffinityTimeout",
        "InvalidPort",
        "DuplicatePort",
        "InvalidEndpointAddress",
        "DuplicateEndpoint",
    ] {
        assert!(reasons.contains(&r), "missing {r} in {reasons:?}");
    }
    assert_eq!(plans.len(), 1, "port b survives");
    let p = &plans[0];
    assert_eq!(p.frontends.iter().map(|f| f.ip.to_string()).collect::<Vec<_>>(), ["10.96.0.30", "192.0.2.9"]);
    assert_eq!(p.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
    assert_eq!(p.scheduler, Scheduler::Random);
    let be: Vec<String> = p.cluster.backends.iter().map(Backend::addr).collect();
    assert_eq!(be, ["10.244.0.2:8081", "10.244.0.3:8081"]);
}

/// A scheduler the dataplane cannot honour falls back to random, with a problem saying so.
#[test]
fn unsupported_scheduler_falls_back() {
    let mut o = opts();
    o.supported_schedulers = [Scheduler::Random, Scheduler::Sh].into_iter().collect();
    let (plans, problems) = plan(WEB, &o);
    assert_eq!(plans[0].scheduler, Scheduler::Random);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, "SchedulerRefused");
}

/// ClientIP affinity defaults to 10800 s and takes the configured timeout.
#[test]
fn affinity_timeouts() {
    let with = WEB.replace("type: NodePort", "type: NodePort\n  sessionAffinity: ClientIP");
    assert_eq!(plan(&with, &opts()).0[0].affinity_timeout, Some(10_800));
    let custom = with.replace("sessionAffinity: ClientIP", "sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}");
    assert_eq!(plan(&custom, &opts()).0[0].affinity_timeout, Some(5));
    assert_eq!(plan(WEB, &opts()).0[0].affinity_timeout, None);
}

/// LoadBalancer ingress IPs are frontends, except those with ipMode Proxy.
#[test]
fn load_balancer_ingress() {
    let yaml = WEB.replace("type: NodePort", "type: LoadBalancer")
        + "---\n"
        + "";
    let (svcs, _) = objects(&yaml);
    let mut svc = svcs[0].clone();
    svc.status = Some(serde_json::from_value(serde_json::json!({"loadBalancer": {"ingress": [
        {"ip": "203.0.113.1"}, {"ip": "203.0.113.2", "ipMode": "Proxy"}, {"hostname": "lb.example"}]}})).unwrap());
    let (plans, _) = plan_service(&svc, &[], None, &opts());
    let lbs: Vec<String> = plans[0]
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::LoadBalancer)
        .map(|f| f.ip.to_string())
        .collect();
    assert_eq!(lbs, ["203.0.113.1"]);
    assert!(plans[0].cluster.backends.is_empty(), "no slices given");
    assert_eq!(plans[0].cluster.when_empty, WhenEmpty::Reject, "no endpoint anywhere: reject");
}

fn node(zone: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": zone}}
    }))
    .unwrap()
}

fn addrs(r: &Route) -> Vec<String> {
    r.backends.iter().map(Backend::addr).collect()
}

const POLICY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: pol, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.40
  externalTrafficPolicy: Local
  internalTrafficPolicy: Cluster
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [" 192.0.2.0/24 ", "2001:db8::/32", "nonsense"]
  ports: [{port: 80, nodePort: 30040}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: pol-1, namespace: demo, labels: {kubernetes.io/service-name: pol}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.2], nodeName: node-a}
- {addresses: [10.244.1.2], nodeName: node-b}
- {addresses: [10.244.0.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
"#;

/// externalTrafficPolicy Local: external traffic only to this node's ready endpoints, no masquerade, a
/// health check port; cluster traffic to every ready endpoint; source ranges trimmed and per family.
#[test]
fn external_traffic_policy_local() {
    let (plans, problems) = plan(POLICY, &opts());
    assert_eq!(problems.iter().map(|p| p.reason).collect::<Vec<_>>(), ["InvalidSourceRange"]);
    let p = &plans[0];
    assert!(p.external_local);
    assert_eq!(addrs(&p.external), ["10.244.0.2:8080"]);
    assert_eq!(addrs(&p.cluster), ["10.244.0.2:8080", "10.244.1.2:8080"]);
    assert_eq!(p.health_check_node_port, Some(32000));
    assert_eq!(p.source_ranges, Some(vec!["192.0.2.0/24".parse().unwrap()]));
}

/// With no local ready endpoint, Local policies fall back to local serving-terminating ones; with none
/// at all locally, the class drops (others still have endpoints) rather than rejects.
#[test]
fn local_fallbacks_and_drop() {
    let yaml = POLICY.replace("- {addresses: [10.244.0.2], nodeName: node-a}\n", "");
    let (plans, _) = plan(&yaml, &opts());
    assert_eq!(addrs(&plans[0].external), ["10.244.0.3:8080"], "local serving-terminating");
    let yaml = yaml.replace("nodeName: node-a, conditions", "nodeName: node-c, conditions");
    let (plans, _) = plan(&yaml, &opts());
    assert!(plans[0].external.backends.is_empty());
    assert_eq!(plans[0].external.when_empty, WhenEmpty::Drop);
    assert_eq!(addrs(&plans[0].cluster), ["10.244.1.2:8080"]);

    let itp = POLICY.replace("externalTrafficPolicy: Local", "externalTrafficPolicy: Cluster").replace(
        "internalTrafficPolicy: Cluster",
        "internalTrafficPolicy: Local",
    );
    let (plans, _) = plan(&itp.replace("nodeName: node-a", "nodeName: node-z"), &opts());
    assert!(plans[0].cluster.backends.is_empty());
    assert_eq!(plans[0].cluster.when_empty, WhenEmpty::Drop);
    assert_eq!(addrs(&plans[0].external), ["10.244.0.2:8080", "10.244.1.2:8080"]);
    assert_eq!(plans[0].health_check_node_port, None, "only for externalTrafficPolicy Local");
}

const HINTED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: topo, namespace: demo}
spec:
  clusterIP: 10.96.0.50
  trafficDistribution: PreferClose
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: topo-1, namespace: demo, labels: {kubernetes.io/service-name: topo}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.2], zone: z1, hints: {forZones: [{name: z1}], forNodes: [{name: node-a}]}}
- {addresses: [10.244.0.3], zone: z1, hints: {forZones: [{name: z1}], forNodes: [{name: node-b}]}}
- {addresses: [10.244.1.2], zone: z2, hints: {forZones: [{name: z2}], forNodes: [{name: node-c}]}}
"#;

fn plan_on(yaml: &str, node_obj: &Node) -> ServicePlan {
    let (svcs, slices) = objects(yaml);
    let refs: Vec<&EndpointSlice> = slices.iter().collect();
    plan_service(&svcs[0], &refs, Some(node_obj), &opts()).0.remove(0)
}

/// Node hints win when complete and one names this node; then zone hints; then all endpoints.
#[test]
fn topology_hints_and_fallbacks() {
    assert_eq!(addrs(&plan_on(HINTED, &node("z1")).cluster), ["10.244.0.2:8080"], "PreferSameNode");
    let no_node_hint = HINTED.replace(", forNodes: [{name: node-a}]", "");
    assert_eq!(addrs(&plan_on(&no_node_hint, &node("z1")).cluster), ["10.244.0.2:8080", "10.244.0.3:8080"], "zone");
    assert_eq!(addrs(&plan_on(&no_node_hint, &node("z2")).cluster), ["10.244.1.2:8080"]);
    assert_eq!(addrs(&plan_on(&no_node_hint, &node("z9")).cluster).len(), 3, "no endpoint for the zone: all");
    let missing = no_node_hint.replace(", hints: {forZones: [{name: z2}], forNodes: [{name: node-c}]}", "");
    assert_eq!(addrs(&plan_on(&missing, &node("z1")).cluster).len(), 3, "a ready endpoint without hints: all");
}

/// A Service port with more endpoints than the cap is programmed with the first ones and reported.
#[test]
fn too_many_endpoints_are_capped() {
    let n = MAX_ENDPOINTS_PER_PORT + 5;
    let eps: Vec<String> =
        (0..n).map(|i| format!("{{addresses: [10.{}.{}.{}]}}", 100 + i / 65536, (i / 256) % 256, i % 256)).collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: demo}}\nspec:\n  clusterIP: 10.96.0.60\n  ports: [{{port: 80}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: demo, labels: {{kubernetes.io/service-name: big}}}}\n\
         addressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{}]\n",
        eps.join(", ")
    );
    let (plans, problems) = plan(&yaml, &opts());
    assert_eq!(plans[0].cluster.backends.len(), MAX_ENDPOINTS_PER_PORT);
    assert_eq!(problems.iter().filter(|p| p.reason == "TooManyEndpoints").count(), 1, "{:?}", problems.len());
}

fn with_annotations(scheduler: &str, flags: Option<&str>) -> String {
    let flags = flags.map_or(String::new(), |f| format!(", switchyard.io/scheduler-flags: \"{f}\""));
    WEB.replace("{switchyard.io/scheduler: rr}", &format!("{{switchyard.io/scheduler: {scheduler}{flags}}}"))
}

/// `switchyard.io/scheduler-flags` sets the sh and mh flags, in any order and with whitespace.
#[test]
fn scheduler_flags_for_sh_and_mh() {
    let (plans, problems) = plan(&with_annotations("sh", Some("sh-port, sh-fallback")), &opts());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!((plans[0].scheduler, plans[0].scheduler_flags), (Scheduler::Sh, SchedulerFlags { fallback: true, port: true }));
    let (plans, problems) = plan(&with_annotations("mh", Some("mh-port")), &opts());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(plans[0].scheduler_flags, SchedulerFlags { fallback: false, port: true });
    assert_eq!(plans[0].scheduler_flags.to_annotation(Scheduler::Mh), "mh-port");
    let (plans, _) = plan(&with_annotations("mh", None), &opts());
    assert_eq!(plans[0].scheduler_flags, SchedulerFlags::default(), "no annotation: no flags");
}

/// Flags of another scheduler, unknown flags, and flags on a scheduler without any are reported and ignored;
/// so are flags when the requested scheduler is refused and random is used instead.
#[test]
fn bad_scheduler_flags_are_reported_and_ignored() {
    for (scheduler, flags) in [("sh", "mh-port"), ("mh", "mh-bogus"), ("rr", "sh-port"), ("sh", "port")] {
        let (plans, problems) = plan(&with_annotations(scheduler, Some(flags)), &opts());
        assert_eq!(plans[0].scheduler_flags, SchedulerFlags::default(), "{scheduler} {flags}");
        let reasons: Vec<&str> = problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, ["InvalidSchedulerFlags"], "{scheduler} {flags}");
    }
    let mut o = opts();
    o.supported_schedulers = [Scheduler::Random].into_iter().collect();
    let (plans, problems) = plan(&with_annotations("sh", Some("sh-port")), &o);
    assert_eq!((plans[0].scheduler, plans[0].scheduler_flags), (Scheduler::Random, SchedulerFlags::default()));
    let reasons: Vec<&str> = problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, ["SchedulerRefused", "InvalidSchedulerFlags"]);
}
