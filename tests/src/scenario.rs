//! Scenarios: Kubernetes objects in, the expected outcome of each flow of real packets out, for any dataplane.
//!
//! A scenario is one YAML file (under `tests/scenarios/`). The runner builds a dual-stack [`Cluster`] with
//! the scenario's pods, starts the daemon with the objects already in its manifests directory (so `/healthz`
//! answering 200 means they are programmed, whatever the dataplane), sends each flow's packets and checks
//! where they arrived. Nothing here reads the dataplane's own state: the same file proves the same
//! behaviour for nftables, IPVS or eBPF; only the `dataplane` argument changes.
//!
//! ```yaml
//! description: What the scenario proves, in a sentence or two.
//! flags: [--masquerade-all]             # extra flags for `switchyard run` (optional)
//! node:                                 # extras of this node's Node object (optional); its addresses are
//!   labels: {topology.kubernetes.io/zone: zone-a}   # always InternalIP ${node.ip} and ${node.ip6}
//! pods:                                 # in order: the i-th pod is 10.244.0.(10+i) and fd00:244::(10+i)
//!   - name: a
//!     serves: [tcp/8080, udp/5353]       # servers answering with the pod's name, IPv4 and IPv6
//!   - name: client                       # a pod that only sends
//! external:                             # the external client 192.168.50.2 / fd00:50::2 (optional)
//!   addresses: [203.0.113.99/32]         # more addresses of its own
//!   routes: [203.0.113.0/24]             # destinations it routes via the node (LB IPs, externalIPs)
//!   serves: [tcp/80]                     # servers answering as `external`
//! objects: |                            # Services and EndpointSlices, multi-document YAML
//!   ...  addresses: ["${a.ip}"]  ...      # ${NAME.ip}, ${NAME.ip6}: a pod's addresses; ${node.ip},
//!                                         # ${node.ip6}, ${node.name}, ${external.ip}, ${external.ip6}
//! flows:
//!   - name: a label for the report       # optional
//!     from: pod:client                    # pod:NAME | node | external
//!     bind: 192.168.50.3                  # source address to send from (optional)
//!     to: 10.96.0.10:80                   # ip:port ([v6]:port), ${...} allowed
//!     protocol: tcp                       # tcp (default) | udp | http
//!     path: /                             # http only (default /)
//!     tries: 10                           # optional; defaults below
//!     timeout_ms: 400                     # per try; default 1000, 400 for `dropped`
//!     expect:                             # exactly one of answered_by / all_of / refused / dropped / status
//!       answered_by: [a, b]               # every try answered, each by one of these
//!       all_of: [a, b]                    # the same, and every one of these reached at least once
//!       source: client                    # with answered_by/all_of: the source the backend saw:
//!                                         # client (the sender's own address) | node (a node address)
//!       refused: true                     # every try refused at once (< 500 ms: TCP RST / ICMP unreachable)
//!       dropped: true                     # every try timed out: no answer, no refusal
//!       status: 200                       # http: the status code ...
//!       json: {localEndpoints: 1}         # ... and these fields of the JSON body (a subset match)
//! logs:                                  # lines the daemon must have logged (optional): each entry's
//!   - default/bad-ip InvalidClusterIP     # words must all appear on one line
//! settle_ms: 1000                        # wait this long after /healthz before the flows (optional): only
//!                                        # to work around a known daemon bug, named in a comment
//! ```
//!
//! Default tries: 4 for `answered_by`, 10 per listed backend for `all_of` (a miss with random scheduling
//! is then below 1 in 10⁴), 2 for `refused`, 1 for `dropped` and `status`.
//!
//! # Where packets come from
//!
//! Senders mirror a real node. For nftables and IPVS, which decide by packet, every sender is a thread of
//! the test process inside its namespace. The eBPF dataplane decides at the socket, for the processes of
//! the cgroup its programs are attached to, which on a node is every process, pods included. So for
//! `ebpf` each scenario gets a cgroup and a bpffs pin directory of its own (`--ebpf-cgroup`,
//! `--bpffs-dir`; removed afterwards, also on panic), and `pod:NAME` and `node` flows are sent by a
//! process of their own inside that cgroup and the namespace (`switchyard-test-sender`, see
//! [`crate::sender`]); `external` flows come from outside the cgroup, as from another machine.
//!
//! For `ebpf` the runner also checks the socket hooks' part, from the kernel's socket table in the
//! sender's namespace: every answered try from a pod or the node to a ClusterIP (or a loopback address,
//! `--localhost-nodeports`) must have had its socket connected straight to the backend that answered,
//! and every answered try to any other address (NodePorts on node addresses, LB IPs, externalIPs, plain
//! routing: what nftables serves) to the address asked for. So a scenario cannot pass on eBPF through the
//! nftables table's ClusterIP fallback alone.
//!
//! A `source` expectation that cannot apply to a dataplane by design is listed in
//! [`EXCLUDED_SOURCE_CHECKS`] with the reason; the flow still runs with every other check, and the reason is
//! printed on every run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use crate::cgroup::{PinDir, TestCgroup};
use crate::daemon::{self, Daemon, Options};
use crate::netns::{Cluster, EXTERNAL_IP, EXTERNAL_IP6, NODE_IP, NODE_IP6};
use crate::sender::{Reply, Request, Sender};
use crate::traffic::{self, Outcome, Server};

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario proves.
    pub description: String,
    /// Extra flags for `switchyard run`.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Extras of the Node object.
    #[serde(default)]
    pub node: NodeSpec,
    /// The pods, in order.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// The external client's extras.
    #[serde(default)]
    pub external: ExternalSpec,
    /// Kubernetes objects (multi-document YAML), before substitution.
    pub objects: String,
    /// The flows and what each must come to.
    pub flows: Vec<Flow>,
    /// Log lines the daemon must have written.
    #[serde(default)]
    pub logs: Vec<String>,
    /// How long to wait after `/healthz` before the flows, in milliseconds (a known bug's workaround).
    #[serde(default)]
    pub settle_ms: Option<u64>,
}

/// Extras of the Node object.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// metadata.labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A pod.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// Its name: what its servers answer with, and how objects and flows refer to it.
    pub name: String,
    /// `tcp/PORT` or `udp/PORT`: servers on IPv4 and IPv6.
    #[serde(default)]
    pub serves: Vec<String>,
}

/// The external client's extras.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSpec {
    /// More addresses (CIDR notation) on its interface.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Destinations (CIDRs) routed via the node.
    #[serde(default)]
    pub routes: Vec<String>,
    /// `tcp/PORT` or `udp/PORT`: servers answering as `external`.
    #[serde(default)]
    pub serves: Vec<String>,
}

/// One flow: packets from one place to one address, and what they must come to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// A label for the report.
    #[serde(default)]
    pub name: Option<String>,
    /// `pod:NAME`, `node` or `external`.
    pub from: String,
    /// Source address to send from.
    #[serde(default)]
    pub bind: Option<String>,
    /// Destination `ip:port`.
    pub to: String,
    /// `tcp`, `udp` or `http`.
    #[serde(default = "tcp")]
    pub protocol: String,
    /// The HTTP path.
    #[serde(default)]
    pub path: Option<String>,
    /// How many tries.
    #[serde(default)]
    pub tries: Option<usize>,
    /// Timeout of one try, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The expected outcome.
    pub expect: Expect,
}

fn tcp() -> String {
    "tcp".into()
}

/// The expected outcome of a flow.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Every try answered by one of these.
    #[serde(default)]
    pub answered_by: Option<Vec<String>>,
    /// Every try answered by one of these, and each reached.
    #[serde(default)]
    pub all_of: Option<Vec<String>>,
    /// The source the backend saw: `client` or `node`.
    #[serde(default)]
    pub source: Option<String>,
    /// Every try refused at once.
    #[serde(default)]
    pub refused: bool,
    /// Every try timed out.
    #[serde(default)]
    pub dropped: bool,
    /// HTTP status.
    #[serde(default)]
    pub status: Option<u16>,
    /// Fields of the HTTP JSON body.
    #[serde(default)]
    pub json: Option<Value>,
}

/// A `source` expectation that cannot apply to a dataplane by design. The flow still runs and every other
/// expectation of it is checked; the runner reports the sources the backend saw instead and says why, on every
/// run (past libtest's output capture). A dataplane bug is a failure to fix, never an entry here.
#[derive(Debug, Clone, Copy)]
pub struct Exclusion {
    /// The dataplane (`--dataplane`).
    pub dataplane: &'static str,
    /// The scenario: its file name without `.yaml`.
    pub scenario: &'static str,
    /// The flow's `name`.
    pub flow: &'static str,
    /// Why it cannot apply.
    pub reason: &'static str,
}

/// Every [`Exclusion`]. [`check_exclusions`] keeps it honest (each names a flow with a `source` expectation).
pub const EXCLUDED_SOURCE_CHECKS: &[Exclusion] = &[
    Exclusion {
        dataplane: "ebpf",
        scenario: "masquerade-all",
        flow: "pod to ClusterIP is masqueraded",
        reason: SOCKET_LB_MASQUERADE,
    },
    Exclusion {
        dataplane: "ebpf",
        scenario: "masquerade-all",
        flow: "pod to ClusterIP over UDP is masqueraded",
        reason: SOCKET_LB_MASQUERADE,
    },
    Exclusion {
        dataplane: "ebpf",
        scenario: "masquerade-all",
        flow: "pod to IPv6 ClusterIP is masqueraded",
        reason: SOCKET_LB_MASQUERADE,
    },
    Exclusion {
        dataplane: "ebpf",
        scenario: "masquerade-cluster-cidr",
        flow: "hairpin is masqueraded",
        reason: SOCKET_LB_HAIRPIN,
    },
    Exclusion {
        dataplane: "ebpf",
        scenario: "masquerade-cluster-cidr",
        flow: "IPv6 hairpin is masqueraded",
        reason: SOCKET_LB_HAIRPIN,
    },
];

const SOCKET_LB_MASQUERADE: &str =
    "the socket hooks connect the pod's socket straight to the backend, so no packet of \
    the connection is NATed and the backend sees the pod's own address. --masquerade-all exists so that replies to \
    DNATed packets come back through the node that translated them; a socket-LB connection has no translation to \
    undo. Traffic nftables serves (from outside the node or the cgroup) is still masqueraded";

const SOCKET_LB_HAIRPIN: &str = "the socket hooks connect the pod straight to its own address, inside its own \
    namespace: the packets never reach the node, so there is no DNATed reply to fix by masquerading, and the \
    backend sees its own address (kube-proxy masquerades hairpin traffic only because it DNATs it on the node)";

/// Panics unless every [`EXCLUDED_SOURCE_CHECKS`] entry names a scenario file in `dir` and a flow of it that
/// has a `source` expectation.
pub fn check_exclusions(dir: &Path) {
    for x in EXCLUDED_SOURCE_CHECKS {
        let s = Scenario::load(&dir.join(format!("{}.yaml", x.scenario)));
        let flow = s.flows.iter().find(|f| f.name.as_deref() == Some(x.flow));
        let flow = flow.unwrap_or_else(|| panic!("exclusion {x:?}: scenario {} has no flow {:?}", x.scenario, x.flow));
        assert!(flow.expect.source.is_some(), "exclusion {x:?}: the flow has no `source` expectation");
    }
}

/// A refusal slower than this is not "at once".
const AT_ONCE: Duration = Duration::from_millis(500);

/// `SWITCHYARD_SCENARIO_TIME_SCALE` (default 1): multiplies every try's timeout, [`AT_ONCE`] and the daemon's
/// start timeout, for slow machines (an emulated VM). Set only there: the defaults are what the scenarios are written for.
pub fn time_scale() -> f64 {
    std::env::var("SWITCHYARD_SCENARIO_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

/// `SWITCHYARD_SCENARIO_DIAGNOSE`: a shell command run (`sh -c`) in the node namespace when a scenario fails,
/// before the daemon stops, its output printed; e.g. a dataplane's own listing of its kernel state.
const DIAGNOSE_ENV: &str = "SWITCHYARD_SCENARIO_DIAGNOSE";

impl Scenario {
    /// Reads and checks a scenario file; panics (naming the file) if it is malformed.
    pub fn load(path: &Path) -> Scenario {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let s: Scenario =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: not a valid scenario: {e}", path.display()));
        let names: BTreeSet<&str> = s.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), s.pods.len(), "{}: pod names must be unique", path.display());
        for (i, f) in s.flows.iter().enumerate() {
            let e = &f.expect;
            let kinds = [e.answered_by.is_some(), e.all_of.is_some(), e.refused, e.dropped, e.status.is_some()];
            assert_eq!(
                kinds.iter().filter(|k| **k).count(),
                1,
                "{}: flow {i}: expect exactly one of answered_by, all_of, refused, dropped, status",
                path.display()
            );
            assert!(
                ["tcp", "udp", "http"].contains(&f.protocol.as_str()),
                "{}: flow {i}: protocol {:?}",
                path.display(),
                f.protocol
            );
            assert_eq!(f.protocol == "http", e.status.is_some(), "{}: flow {i}: http goes with status", path.display());
            for n in e.answered_by.iter().chain(e.all_of.iter()).flatten() {
                assert!(
                    names.contains(n.as_str()) || n == "external",
                    "{}: flow {i}: unknown backend {n:?}",
                    path.display()
                );
            }
        }
        s
    }
}

/// Where a flow's packets come from.
enum Source<'c> {
    Pod(&'c crate::netns::Pod),
    Node,
    External,
}

/// Runs the scenario in file `path` on `dataplane` and panics, naming the scenario and listing every flow that
/// did not come out as expected, if any did not. Prints one line per flow either way.
pub fn run_file(path: &Path, dataplane: &str) {
    let scenario = Scenario::load(path);
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    run(&name, &scenario, dataplane);
}

/// Runs a scenario (see [`run_file`]).
pub fn run(name: &str, s: &Scenario, dataplane: &str) {
    let started = Instant::now();
    let c = Cluster::dual_stack(s.pods.len());
    // Socket hooks: the daemon's own cgroup (pods' and the node's senders go into it) and pin directory.
    let hooks = (dataplane == "ebpf").then(|| SocketHooks::new(&c.prefix));
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let opts = Options {
        dataplane: dataplane.into(),
        write_node: false,
        ebpf_cgroup: hooks.as_ref().map(|h| h.cgroup.path().to_path_buf()),
        bpffs_dir: hooks.as_ref().map(|h| h.pins.path().to_path_buf()),
        ..Options::default()
    };
    vars.insert("node.name".into(), opts.node_name.clone());
    vars.insert("node.ip".into(), NODE_IP.to_string());
    vars.insert("node.ip6".into(), NODE_IP6.to_string());
    vars.insert("external.ip".into(), EXTERNAL_IP.to_string());
    vars.insert("external.ip6".into(), EXTERNAL_IP6.to_string());
    let mut pods = BTreeMap::new();
    for (spec, pod) in s.pods.iter().zip(&c.pods) {
        vars.insert(format!("{}.ip", spec.name), pod.ip.to_string());
        vars.insert(format!("{}.ip6", spec.name), pod.ip6.expect("a dual-stack cluster").to_string());
        pods.insert(spec.name.as_str(), pod);
    }
    let subst = |text: &str| substitute(text, &vars).unwrap_or_else(|e| panic!("scenario {name}: {e}"));
    let pod_addresses: BTreeMap<&str, Vec<IpAddr>> =
        pods.iter().map(|(n, p)| (*n, vec![p.ip.into(), p.ip6.expect("dual stack").into()])).collect();

    // Servers, and the external client's extras.
    let mut servers: Vec<Server> = Vec::new();
    for (spec, pod) in s.pods.iter().zip(&c.pods) {
        for what in &spec.serves {
            servers.extend(start_servers(&pod.ns, &spec.name, what, name));
        }
    }
    for cidr in &s.external.addresses {
        let cidr = subst(cidr);
        if cidr.contains(':') {
            c.external.add_addr6("eth0", &cidr);
        } else {
            c.external.add_addr("eth0", &cidr);
        }
    }
    for dst in &s.external.routes {
        let dst = subst(dst);
        if dst.contains(':') {
            c.external.add_route6(&[&dst, "via", &NODE_IP6.to_string()]);
        } else {
            c.external.add_route(&[&dst, "via", &NODE_IP.to_string()]);
        }
    }
    for what in &s.external.serves {
        servers.extend(start_servers(&c.external, "external", what, name));
    }

    // The daemon, with every object in place before it starts.
    let mut node = daemon::Node::new(&opts.node_name).internal_ip(NODE_IP).internal_ip(NODE_IP6);
    for (k, v) in &s.node.labels {
        node = node.label(k, v);
    }
    let mut opts = opts;
    if s.flags.iter().any(|f| f.starts_with("--cluster-cidr")) {
        opts.cluster_cidr = None;
    }
    opts.extra_args = s.flags.iter().map(|f| subst(f)).collect();
    let objects = subst(&s.objects);
    let cluster_ips = cluster_ips(&objects);
    let d = Daemon::start_with_manifests(
        &c.node,
        opts,
        &[("node.yaml", &daemon::documents(&[node.yaml()])), ("objects.yaml", &objects)],
    );

    if let Some(ms) = s.settle_ms {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let mut failures = Vec::new();
    let mut report = String::new();
    for (i, flow) in s.flows.iter().enumerate() {
        let label = format!(
            "flow {i}{} ({}{} -> {} {})",
            flow.name.as_deref().map(|n| format!(" {n:?}")).unwrap_or_default(),
            flow.from,
            flow.bind.as_deref().map(|b| format!(" from {}", subst(b))).unwrap_or_default(),
            subst(&flow.to),
            flow.protocol
        );
        let from = match flow.from.as_str() {
            "node" => Source::Node,
            "external" => Source::External,
            other => match other.strip_prefix("pod:").and_then(|p| pods.get(p)) {
                Some(pod) => Source::Pod(pod),
                None => panic!("scenario {name}: {label}: unknown source {other:?} (pod:NAME, node, external)"),
            },
        };
        // Pods and the node are on the node, in the hooked cgroup; the external client is another machine.
        let hooked = hooks.as_ref().map(|h| h.cgroup.path());
        let sender = match (&from, hooked) {
            (Source::Pod(p), Some(cgroup)) => Sender::in_cgroup(&p.ns, cgroup),
            (Source::Node, Some(cgroup)) => Sender::in_cgroup(&c.node, cgroup),
            (Source::Pod(p), None) => Sender::thread(&p.ns),
            (Source::Node, None) => Sender::thread(&c.node),
            (Source::External, _) => Sender::thread(&c.external),
        };
        let excluded = EXCLUDED_SOURCE_CHECKS
            .iter()
            .find(|e| e.dataplane == dataplane && e.scenario == name && flow.name.as_deref() == Some(e.flow));
        let checks = Checks {
            socket_hooks: sender.cgroup().is_some().then_some(&cluster_ips),
            pod_addresses: &pod_addresses,
            source_excluded: excluded,
        };
        let result = run_flow(&c, &from, &sender, flow, &subst, &checks);
        if let Some(e) = excluded {
            announce(&format!(
                "scenario {name} on {dataplane}: flow {i} {:?}: its `source` expectation is not checked: {}",
                e.flow, e.reason
            ));
        }
        match &result {
            Ok(summary) => writeln!(report, "  ok    {label}: {summary}"),
            Err(why) => {
                failures.push(format!("{label}: {why}"));
                writeln!(report, "  FAIL  {label}: {why}")
            }
        }
        .expect("write to String");
    }
    let log = d.logs();
    for want in &s.logs {
        let words: Vec<&str> = want.split_whitespace().collect();
        if !log.lines().any(|l| words.iter().all(|w| l.contains(w))) {
            failures.push(format!("no log line holds all of {words:?}"));
            writeln!(report, "  FAIL  log: no line holds all of {words:?}").expect("write to String");
        } else {
            writeln!(report, "  ok    log: a line holds all of {words:?}").expect("write to String");
        }
    }
    println!("scenario {name} on {dataplane} ({:.1?}): {}\n{report}", started.elapsed(), s.description.trim());
    if !failures.is_empty() {
        if hooks.is_some() {
            match d.try_dump() {
                Ok(v) => eprintln!("----- switchyard dump --dataplane {dataplane} -----\n{v:#}"),
                Err(e) => eprintln!("----- switchyard dump --dataplane {dataplane} -----\n{e}"),
            }
        }
        if let Ok(cmd) = std::env::var(DIAGNOSE_ENV) {
            let out = c.node.exec(&["sh", "-c", &cmd]);
            eprintln!(
                "----- {DIAGNOSE_ENV}: {cmd} (in {}) -----\n{}{}",
                c.node.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        panic!(
            "scenario {name} on {dataplane}: {} of {} checks failed:\n  {}\n(all flows:)\n{report}",
            failures.len(),
            s.flows.len() + s.logs.len(),
            failures.join("\n  ")
        );
    }
    drop(d);
    drop(servers);
    if let Some(h) = hooks {
        let (pins, cgroup) = (h.pins.path().to_path_buf(), h.cgroup.path().to_path_buf());
        drop(h);
        assert!(!pins.exists() && !cgroup.exists(), "scenario {name}: {pins:?} or {cgroup:?} is left over");
    }
}

/// Servers for `tcp/PORT` or `udp/PORT` on both families, answering as `name`.
fn start_servers(ns: &crate::netns::Netns, name: &str, what: &str, scenario: &str) -> Vec<Server> {
    let (proto, port) = what
        .split_once('/')
        .and_then(|(p, n)| Some((p, n.parse::<u16>().ok()?)))
        .unwrap_or_else(|| panic!("scenario {scenario}: {name} serves {what:?}: want tcp/PORT or udp/PORT"));
    let v4 = SocketAddr::from(([0, 0, 0, 0], port));
    let v6 = SocketAddr::from(([0u16; 8], port));
    match proto {
        "tcp" => vec![traffic::tcp_server_on(ns, name, v4), traffic::tcp_server_on(ns, name, v6)],
        "udp" => vec![traffic::udp_server_on(ns, name, v4), traffic::udp_server_on(ns, name, v6)],
        other => panic!("scenario {scenario}: {name} serves {other:?}: tcp or udp"),
    }
}

/// Replaces every `${var}`; an unknown variable is an error.
fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
        let var = &after[..end];
        let value = vars.get(var).ok_or_else(|| {
            format!("unknown variable ${{{var}}} (known: {})", vars.keys().cloned().collect::<Vec<_>>().join(", "))
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the runner checks of a flow besides its `expect`.
struct Checks<'a> {
    /// The sender's sockets are seen by the eBPF dataplane's socket hooks: the Services' ClusterIPs, the
    /// addresses whose connections the hooks must have rewritten (see [`check_socket_hooks`]).
    socket_hooks: Option<&'a BTreeSet<IpAddr>>,
    /// Each pod's addresses, by name.
    pod_addresses: &'a BTreeMap<&'a str, Vec<IpAddr>>,
    /// This flow's `source` expectation does not apply to this dataplane.
    source_excluded: Option<&'a Exclusion>,
}

/// Sends one flow's tries from `sender` and checks them. `Ok` with a summary, or `Err` with what went wrong.
fn run_flow(
    c: &Cluster,
    from: &Source<'_>,
    sender: &Sender<'_>,
    flow: &Flow,
    subst: &dyn Fn(&str) -> String,
    checks: &Checks<'_>,
) -> Result<String, String> {
    let to: SocketAddr = subst(&flow.to).parse().map_err(|e| format!("`to` is not ip:port: {e}"))?;
    let bind: Option<IpAddr> = match &flow.bind {
        None => None,
        Some(b) => Some(subst(b).parse().map_err(|e| format!("`bind` is not an address: {e}"))?),
    };
    let e = &flow.expect;
    let timeout =
        Duration::from_millis(flow.timeout_ms.unwrap_or(if e.dropped { 400 } else { 1000 })).mul_f64(time_scale());
    let at_once = AT_ONCE.mul_f64(time_scale());
    let names: Vec<String> = e.answered_by.clone().or_else(|| e.all_of.clone()).unwrap_or_default();
    let tries = flow.tries.unwrap_or(if e.all_of.is_some() {
        10 * names.len().max(1)
    } else if e.answered_by.is_some() {
        4
    } else if e.refused {
        2
    } else {
        1
    });
    let request = Request {
        protocol: flow.protocol.clone(),
        bind,
        to,
        tries,
        timeout,
        path: flow.path.clone().unwrap_or_else(|| "/".into()),
        look_up_peers: checks.socket_hooks.is_some(),
    };
    let started = Instant::now();
    let tries = match sender.send(&request)? {
        Reply::Http(got) => {
            let Some((status, body)) = got else { return Err(format!("no HTTP answer within {timeout:?}")) };
            let want = e.status.expect("checked at load");
            if status != want {
                return Err(format!("HTTP {status} (want {want}), body {body}"));
            }
            if let Some(fields) = &e.json {
                let v: Value =
                    serde_json::from_str(&body).map_err(|err| format!("body is not JSON ({err}): {body}"))?;
                if !json_contains(&v, fields) {
                    return Err(format!("body {body} does not hold {fields}"));
                }
            }
            return Ok(format!("HTTP {status} {body}"));
        }
        Reply::Tries(t) => t,
    };
    let outcomes: Vec<Outcome> = tries.iter().map(|t| t.outcome.clone()).collect();
    let tally = traffic::tally(&outcomes);
    let mut summary = format!("{tally:?} in {:?}", started.elapsed());
    if let Some(cluster_ips) = checks.socket_hooks {
        summary.push_str(&check_socket_hooks(&tries, to, cluster_ips, checks.pod_addresses)?);
    }

    if e.refused {
        for o in &outcomes {
            match o {
                Outcome::Refused(after) if *after < at_once => {}
                other => return Err(format!("want refused at once, got {other}; all: {summary}")),
            }
        }
        return Ok(summary);
    }
    if e.dropped {
        for o in &outcomes {
            if *o != Outcome::Timeout {
                return Err(format!("want dropped (a timeout), got {o}; all: {summary}"));
            }
        }
        return Ok(summary);
    }
    for o in &outcomes {
        match o {
            Outcome::Answered(a) if names.contains(&a.by) => {}
            other => return Err(format!("want an answer from one of {names:?}, got {other}; all: {summary}")),
        }
    }
    if let Some(all) = &e.all_of {
        let missing: Vec<&String> = all.iter().filter(|n| !tally.contains_key(*n)).collect();
        if !missing.is_empty() {
            return Err(format!("{missing:?} never answered in {} tries; all: {summary}", outcomes.len()));
        }
    }
    if let Some(want) = &e.source {
        let seen: BTreeSet<IpAddr> = outcomes.iter().map(|o| o.answer().source.ip()).collect();
        if let Some(x) = checks.source_excluded {
            return Ok(format!(
                "{summary}, sources {seen:?}; `source: {want}` NOT CHECKED on {}: {}",
                x.dataplane, x.reason
            ));
        }
        let allowed: Vec<IpAddr> = match (want.as_str(), from) {
            ("client", Source::Pod(p)) => vec![p.ip.into(), p.ip6.expect("dual stack").into()],
            ("client", Source::External) => {
                bind.map_or_else(|| vec![EXTERNAL_IP.into(), EXTERNAL_IP6.into()], |b| vec![b])
            }
            ("client", Source::Node) | ("node", _) => c.node_addresses_all(),
            (other, _) => return Err(format!("unknown source expectation {other:?} (client or node)")),
        };
        for o in &outcomes {
            let seen = o.answer().source.ip();
            if !allowed.contains(&seen) {
                return Err(format!("the backend saw source {seen}, want {want} ({allowed:?}); all: {summary}"));
            }
        }
        return Ok(format!("{summary}, sources {seen:?}"));
    }
    Ok(summary)
}

/// The socket hooks' part of the job, from the kernel's own socket table: every answered try to a ClusterIP
/// (or a loopback address: `--localhost-nodeports`) had its socket connected straight to the backend that
/// answered — rewritten at `connect()`, never NATed — and every answered try to any other address (NodePorts
/// on node addresses, LB IPs, externalIPs, plain routing: nftables' part) had its socket connected to the
/// address asked for. A summary, or what went wrong.
fn check_socket_hooks(
    tries: &[traffic::Try],
    to: SocketAddr,
    cluster_ips: &BTreeSet<IpAddr>,
    pod_addresses: &BTreeMap<&str, Vec<IpAddr>>,
) -> Result<String, String> {
    let hooked = cluster_ips.contains(&to.ip()) || to.ip().is_loopback();
    let mut rewritten = 0;
    let mut answered = 0;
    for t in tries {
        let Outcome::Answered(a) = &t.outcome else { continue };
        answered += 1;
        let Some(peer) = t.kernel_peer else {
            return Err(format!("the socket answered by {} is not in the kernel's socket table", a.by));
        };
        match (hooked, peer == to) {
            (true, true) => {
                return Err(format!(
                    "answered by {}, but the socket was connected to {to} itself: the socket hooks did not serve                      this ClusterIP (nftables did)",
                    a.by
                ))
            }
            (false, false) => {
                return Err(format!(
                    "answered by {}, but the socket was connected to {peer}: the socket hooks rewrote {to}, which                      is no ClusterIP (nftables' part)",
                    a.by
                ))
            }
            (true, false) => {
                if let Some(addrs) = pod_addresses.get(a.by.as_str()) {
                    if !addrs.contains(&peer.ip()) {
                        return Err(format!("the socket hooks connected to {peer}, but {} answered", a.by));
                    }
                }
                rewritten += 1;
            }
            (false, true) => {}
        }
    }
    Ok(if answered == 0 {
        String::new()
    } else if hooked {
        format!(", {rewritten} of {answered} connected to the backend at connect()")
    } else {
        format!(", {answered} of {answered} left to nftables")
    })
}

/// Every address in `spec.clusterIP` and `spec.clusterIPs` of the Services among `objects` (multi-document
/// YAML); what does not parse is skipped.
fn cluster_ips(objects: &str) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(objects) {
        let Ok(v) = Value::deserialize(doc) else { continue };
        if v["kind"] != "Service" {
            continue;
        }
        let spec = &v["spec"];
        let listed = spec["clusterIPs"].as_array().into_iter().flatten();
        for ip in listed.chain(std::iter::once(&spec["clusterIP"])).filter_map(|ip| ip.as_str()) {
            if let Ok(ip) = ip.trim().parse() {
                out.insert(ip);
            }
        }
    }
    out
}

/// Writes one line to the test's stderr past libtest's output capture (`print!` and `eprint!` are captured
/// for passing tests), so that it shows on every run.
fn announce(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The eBPF dataplane's places in one scenario: a cgroup its programs attach to (`--ebpf-cgroup`), where the
/// pods' and the node's senders run, and a pin directory of its own (`--bpffs-dir`). Dropped after the
/// daemon: unpins everything (detaching the programs), then removes the cgroup.
#[derive(Debug)]
struct SocketHooks {
    // Drop order: the pins (and with them the programs) first, then the cgroup.
    pins: PinDir,
    cgroup: TestCgroup,
}

impl SocketHooks {
    fn new(prefix: &str) -> SocketHooks {
        crate::cgroup::sweep_leftovers();
        SocketHooks { pins: PinDir::new(prefix), cgroup: TestCgroup::new(&format!("{prefix}-scenario")) }
    }
}

/// Whether every field of `want` is in `v` with the same value (recursively for objects).
fn json_contains(v: &Value, want: &Value) -> bool {
    match (v, want) {
        (Value::Object(have), Value::Object(want)) => {
            want.iter().all(|(k, w)| have.get(k).is_some_and(|h| json_contains(h, w)))
        }
        (have, want) => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Substitution replaces known variables and refuses unknown ones.
    #[test]
    fn substitution() {
        let vars: BTreeMap<String, String> = [("a.ip".to_string(), "10.244.0.10".to_string())].into();
        assert_eq!(substitute("x ${a.ip}:80 y", &vars).unwrap(), "x 10.244.0.10:80 y");
        assert!(substitute("${b.ip}", &vars).unwrap_err().contains("unknown variable ${b.ip}"));
        assert!(substitute("${a.ip", &vars).is_err());
    }

    fn answered(by: &str, peer: Option<&str>) -> traffic::Try {
        traffic::Try {
            outcome: Outcome::Answered(traffic::Answer {
                by: by.into(),
                source: "10.244.0.12:40000".parse().unwrap(),
                rest: String::new(),
            }),
            kernel_peer: peer.map(|p| p.parse().unwrap()),
        }
    }

    /// The socket-hooks check holds a ClusterIP try to a socket connected straight to the answering backend,
    /// and any other try to a socket connected where it was asked to; it fails a ClusterIP try that reached the
    /// ClusterIP itself (nftables' fallback), a rewritten try to another address, a rewritten try that went to
    /// another backend than the one answering, and an answered try whose socket is not found.
    #[test]
    fn socket_hooks_check() {
        let cluster_ips: BTreeSet<IpAddr> = ["10.96.0.10".parse().unwrap()].into();
        let a: IpAddr = "10.244.0.10".parse().unwrap();
        let pods: BTreeMap<&str, Vec<IpAddr>> = [("a", vec![a])].into();
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let nodeport: SocketAddr = "192.168.50.1:30080".parse().unwrap();
        let check = |tries: &[traffic::Try], to| check_socket_hooks(tries, to, &cluster_ips, &pods);

        let ok = check(
            &[answered("a", Some("10.244.0.10:8080")), traffic::Try { outcome: Outcome::Timeout, kernel_peer: None }],
            vip,
        );
        assert_eq!(ok.unwrap(), ", 1 of 1 connected to the backend at connect()");
        assert!(check(&[answered("a", Some("192.168.50.1:30080"))], nodeport).is_ok());
        assert!(check(&[answered("a", Some("10.244.0.10:8080"))], "127.0.0.1:30080".parse().unwrap()).is_ok());

        assert!(check(&[answered("a", Some("10.96.0.10:80"))], vip).unwrap_err().contains("did not serve"));
        assert!(check(&[answered("a", Some("10.244.0.10:8080"))], nodeport).unwrap_err().contains("no ClusterIP"));
        assert!(check(&[answered("a", Some("10.244.0.11:8080"))], vip).unwrap_err().contains("but a answered"));
        assert!(check(&[answered("a", None)], vip).unwrap_err().contains("not in the kernel's socket table"));
    }

    /// ClusterIPs come from Services only, both fields, skipping what does not parse.
    #[test]
    fn cluster_ips_of_objects() {
        let objects = "kind: Service\nspec: {clusterIP: 10.96.0.1, clusterIPs: [10.96.0.1, \"fd00:96::1\"]}\n---\n\
                       kind: Service\nspec: {clusterIP: 10.96.0.999}\n---\n\
                       kind: EndpointSlice\nspec: {clusterIP: 10.96.0.2}\n";
        let want: BTreeSet<IpAddr> = ["10.96.0.1".parse().unwrap(), "fd00:96::1".parse().unwrap()].into();
        assert_eq!(cluster_ips(objects), want);
    }

    /// A JSON subset match ignores fields not asked for and compares nested objects.
    #[test]
    fn json_subset() {
        let v = serde_json::json!({"service": {"namespace": "d", "name": "w"}, "localEndpoints": 1, "x": true});
        assert!(json_contains(&v, &serde_json::json!({"localEndpoints": 1, "service": {"name": "w"}})));
        assert!(!json_contains(&v, &serde_json::json!({"localEndpoints": 2})));
    }
}
