//! The daemon's settings: command-line flags over a YAML config file (`--config`) over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use ipnet::IpNet;
use serde::Deserialize;
use switchyard_model::{NodePortAddresses, Scheduler};

/// Flags of `switchyard run`. Each may also be set in the `--config` file under the name in brackets;
/// a flag given on the command line wins.
#[derive(Args, Debug, Default, Clone)]
pub struct RunFlags {
    /// YAML file with the same settings as the flags (camelCase keys, e.g. `minSyncPeriod: 1s`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Name of this node [nodeName]. Default: $NODE_NAME, then the hostname.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Read Services, EndpointSlices and Nodes from the YAML files in this directory instead of the API
    /// server; changes are applied live [manifests].
    #[arg(long, conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// kubeconfig file for the API server [kubeconfig]. Default: in-cluster config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Dataplane: nftables, ipvs or ebpf [dataplane].
    #[arg(long)]
    pub dataplane: Option<String>,
    /// Scheduler for Services without the switchyard.io/scheduler annotation [scheduler].
    #[arg(long)]
    pub scheduler: Option<Scheduler>,
    /// Pod CIDRs of the cluster, comma-separated: traffic to a ClusterIP from outside them is masqueraded
    /// [clusterCIDR].
    #[arg(long, value_delimiter = ',')]
    pub cluster_cidr: Option<Vec<IpNet>>,
    /// Masquerade all traffic sent to Services [masqueradeAll].
    #[arg(long)]
    pub masquerade_all: bool,
    /// Where NodePorts are served: `primary` (the node's InternalIP of each family, kube-proxy's default)
    /// or comma-separated CIDRs matched against the node's addresses (`0.0.0.0/0`: all) [nodePortAddresses].
    #[arg(long, value_delimiter = ',')]
    pub nodeport_addresses: Option<Vec<String>>,
    /// Also serve IPv4 NodePorts on 127.0.0.1 (sets net.ipv4.conf.all.route_localnet=1) [localhostNodePorts].
    #[arg(long)]
    pub localhost_nodeports: bool,
    /// The Service IP ranges, comma-separated: traffic to an address in them that no Service has is
    /// dropped [serviceCIDR].
    #[arg(long, value_delimiter = ',')]
    pub service_cidr: Option<Vec<IpNet>>,
    /// Least time between two syncs; changes arriving faster are batched [minSyncPeriod]. Default 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub min_sync_period: Option<Duration>,
    /// Sync period; /healthz fails when a change has waited more than twice this [syncPeriod]. Default 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub sync_period: Option<Duration>,
    /// eBPF dataplane: the cgroup2 directory its socket programs attach to [ebpfCgroup]. Default: the cgroup2
    /// root (every process on the node).
    #[arg(long)]
    pub ebpf_cgroup: Option<PathBuf>,
    /// eBPF dataplane: the bpffs directory its maps and links are pinned in [bpffsDir]. Default
    /// /sys/fs/bpf/switchyard.
    #[arg(long)]
    pub bpffs_dir: Option<PathBuf>,
    /// Address for /metrics [metricsBindAddress]. Default 127.0.0.1:10249.
    #[arg(long)]
    pub metrics_bind_address: Option<SocketAddr>,
    /// Address for /healthz and /livez [healthzBindAddress]. Default 0.0.0.0:10256.
    #[arg(long)]
    pub healthz_bind_address: Option<SocketAddr>,
}

/// The same settings as a config file holds them.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    manifests: Option<PathBuf>,
    kubeconfig: Option<PathBuf>,
    dataplane: Option<String>,
    scheduler: Option<Scheduler>,
    #[serde(rename = "clusterCIDR", default, deserialize_with = "cidrs")]
    cluster_cidr: Option<Vec<IpNet>>,
    masquerade_all: Option<bool>,
    #[serde(rename = "nodePortAddresses")]
    nodeport_addresses: Option<Vec<String>>,
    #[serde(rename = "localhostNodePorts")]
    localhost_nodeports: Option<bool>,
    #[serde(rename = "serviceCIDR", default, deserialize_with = "cidrs")]
    service_cidr: Option<Vec<IpNet>>,
    #[serde(default, with = "humantime_serde_opt")]
    min_sync_period: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    sync_period: Option<Duration>,
    ebpf_cgroup: Option<PathBuf>,
    bpffs_dir: Option<PathBuf>,
    metrics_bind_address: Option<SocketAddr>,
    healthz_bind_address: Option<SocketAddr>,
}

/// `clusterCIDR` as kube-proxy writes it: one comma-separated string, or a list.
fn cidrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let items = match Option::<OneOrMany>::deserialize(d)? {
        None => return Ok(None),
        Some(OneOrMany::One(s)) => s.split(',').map(str::to_string).collect(),
        Some(OneOrMany::Many(v)) => v,
    };
    items
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<IpNet>().map_err(serde::de::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Where API objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// A directory of manifests.
    Manifests(PathBuf),
    /// The API server, through this kubeconfig (`None`: in-cluster).
    Kube(Option<PathBuf>),
}

/// The daemon's effective settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// Where objects come from.
    pub source: SourceConfig,
    /// The dataplane's name.
    pub dataplane: String,
    /// Default scheduler.
    pub scheduler: Scheduler,
    /// Cluster pod CIDRs.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// `--localhost-nodeports`.
    pub localhost_nodeports: bool,
    /// `--service-cidr`.
    pub service_cidrs: Vec<IpNet>,
    /// Least time between syncs.
    pub min_sync_period: Duration,
    /// Sync period (health timeout is twice this).
    pub sync_period: Duration,
    /// eBPF: the attach cgroup (`None`: the cgroup2 root).
    pub ebpf_cgroup: Option<PathBuf>,
    /// eBPF: the pin directory (`None`: /sys/fs/bpf/switchyard).
    pub bpffs_dir: Option<PathBuf>,
    /// /metrics address.
    pub metrics_bind_address: SocketAddr,
    /// /healthz and /livez address.
    pub healthz_bind_address: SocketAddr,
}

impl Config {
    /// Merges flags over the config file (if any) over defaults, and checks the result.
    pub fn load(flags: &RunFlags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let node_name = match flags.node_name.clone().or(file.node_name) {
            Some(n) => n,
            None => match std::env::var("NODE_NAME") {
                Ok(n) if !n.is_empty() => n,
                _ => hostname()?,
            },
        };
        let source = match (flags.manifests.clone().or(file.manifests), flags.kubeconfig.clone().or(file.kubeconfig)) {
            (Some(_), Some(_)) => bail!("set either manifests or kubeconfig, not both"),
            (Some(dir), None) => SourceConfig::Manifests(dir),
            (None, kubeconfig) => SourceConfig::Kube(kubeconfig),
        };
        let dataplane = flags.dataplane.clone().or(file.dataplane).unwrap_or_else(|| "nftables".into());
        if !["nftables", "ipvs", "ebpf"].contains(&dataplane.as_str()) {
            bail!("unknown dataplane {dataplane:?}: this build has nftables, ipvs and ebpf");
        }
        let min_sync_period = flags.min_sync_period.or(file.min_sync_period).unwrap_or(Duration::from_secs(1));
        let sync_period = flags.sync_period.or(file.sync_period).unwrap_or(Duration::from_secs(30));
        if sync_period.is_zero() {
            bail!("syncPeriod must be positive");
        }
        let nodeport_addresses = match flags.nodeport_addresses.clone().or(file.nodeport_addresses) {
            None => NodePortAddresses::Primary,
            Some(v) if v.len() == 1 && v[0].trim() == "primary" => NodePortAddresses::Primary,
            Some(v) => NodePortAddresses::Cidrs(
                v.iter()
                    .map(|c| c.trim().parse::<IpNet>().with_context(|| format!("nodePortAddresses: {c:?} is not a CIDR")))
                    .collect::<anyhow::Result<_>>()?,
            ),
        };
        Ok(Config {
            node_name,
            nodeport_addresses,
            localhost_nodeports: flags.localhost_nodeports || file.localhost_nodeports.unwrap_or(false),
            service_cidrs: flags.service_cidr.clone().or(file.service_cidr).unwrap_or_default(),
            source,
            dataplane,
            scheduler: flags.scheduler.or(file.scheduler).unwrap_or(Scheduler::Random),
            cluster_cidrs: flags.cluster_cidr.clone().or(file.cluster_cidr).unwrap_or_default(),
            masquerade_all: flags.masquerade_all || file.masquerade_all.unwrap_or(false),
            min_sync_period,
            sync_period,
            ebpf_cgroup: flags.ebpf_cgroup.clone().or(file.ebpf_cgroup),
            bpffs_dir: flags.bpffs_dir.clone().or(file.bpffs_dir),
            metrics_bind_address: flags
                .metrics_bind_address
                .or(file.metrics_bind_address)
                .unwrap_or_else(|| "127.0.0.1:10249".parse().expect("valid address")),
            healthz_bind_address: flags
                .healthz_bind_address
                .or(file.healthz_bind_address)
                .unwrap_or_else(|| "0.0.0.0:10256".parse().expect("valid address")),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the hostname")?;
    Ok(name.trim().to_string())
}

#[cfg(test)]
mod tests;
