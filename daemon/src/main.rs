//! `switchyard`: the daemon (`run`) and the per-node CLI (`dump`, `cleanup`).

use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard::config::{Config, RunFlags, SourceConfig};
use switchyard::health::Health;
use switchyard::metrics::Metrics;
use switchyard::source;
use switchyard::sync::SyncLoop;
use switchyard_model::dataplane::{Dataplane, Dump};
use switchyard_model::store::Store;
use switchyard_model::{PlanOptions, Scheduler};
use switchyard_nftables::kernel::NftCommand;
use switchyard_nftables::translate::Settings;
use switchyard_nftables::NftablesDataplane;
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(name = "switchyard", version, about = "A kube-proxy replacement: Service load balancing for this node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: watch Services and EndpointSlices and program this node's kernel.
    Run(Box<RunFlags>),
    /// Print what is programmed in the kernel of this network namespace, with counters.
    Dump {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Which dataplane's state to read: nftables, ipvs or ebpf.
        #[arg(long, default_value = "nftables")]
        dataplane: String,
        /// eBPF: the pin directory to read (default /sys/fs/bpf/switchyard).
        #[arg(long)]
        bpffs_dir: Option<std::path::PathBuf>,
    },
    /// Remove everything Switchyard programmed in this network namespace.
    Cleanup {
        /// Which dataplane's state to remove: nftables, ipvs or ebpf.
        #[arg(long, default_value = "nftables")]
        dataplane: String,
        /// eBPF: the pin directory to remove (default /sys/fs/bpf/switchyard).
        #[arg(long)]
        bpffs_dir: Option<std::path::PathBuf>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Format {
    Table,
    Json,
}

/// Where the eBPF dataplane attaches and pins (only it reads these).
#[derive(Clone, Debug, Default)]
struct EbpfPlaces {
    cgroup: Option<std::path::PathBuf>,
    bpffs_dir: Option<std::path::PathBuf>,
}

fn dataplane(name: &str, settings: Settings, ebpf: &EbpfPlaces) -> anyhow::Result<Box<dyn Dataplane>> {
    match name {
        "nftables" => Ok(Box::new(NftablesDataplane::new(settings, Box::new(NftCommand::default())))),
        "ipvs" => Ok(Box::new(switchyard_ipvs::IpvsDataplane::new(switchyard_ipvs::Settings::new(settings)))),
        // Socket hooks for traffic from this node's sockets; an nftables table from the same plans for the rest.
        "ebpf" => {
            let mut s = switchyard_ebpf::EbpfSettings::new(settings);
            if let Some(c) = &ebpf.cgroup {
                s.cgroup = c.clone();
            }
            if let Some(d) = &ebpf.bpffs_dir {
                s.pin_dir = d.clone();
            }
            Ok(Box::new(switchyard_ebpf::EbpfDataplane::new(s, Box::new(NftCommand::default()))))
        }
        other => bail!("unknown dataplane {other:?}: this build has {}", DATAPLANES.join(", ")),
    }
}

/// The dataplanes this build has.
const DATAPLANES: [&str; 3] = ["nftables", "ipvs", "ebpf"];

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(flags) => run(Config::load(&flags)?),
        Command::Dump { output, dataplane: name, bpffs_dir } => {
            let places = EbpfPlaces { cgroup: None, bpffs_dir };
            let dump = dataplane(&name, Settings::default(), &places)?.dump().context("reading the kernel")?;
            match output {
                Format::Json => println!("{}", serde_json::to_string_pretty(&dump)?),
                Format::Table => print!("{}", table(&dump)),
            }
            Ok(())
        }
        Command::Cleanup { dataplane: name, bpffs_dir } => {
            let places = EbpfPlaces { cgroup: None, bpffs_dir };
            dataplane(&name, Settings::default(), &places)?.cleanup().context("removing Switchyard's kernel state")?;
            println!("removed Switchyard's {name} state");
            Ok(())
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    info!(?config, "starting");
    let settings = Settings { masquerade_all: config.masquerade_all, cluster_cidrs: config.cluster_cidrs.clone() };
    let places = EbpfPlaces { cgroup: config.ebpf_cgroup.clone(), bpffs_dir: config.bpffs_dir.clone() };
    let dp = dataplane(&config.dataplane, settings.clone(), &places)?;
    if !dp.supports(config.scheduler) {
        bail!("the {} dataplane cannot honour scheduler {}", dp.name(), config.scheduler);
    }
    let options = PlanOptions {
        node_name: config.node_name.clone(),
        default_scheduler: config.scheduler,
        supported_schedulers: Scheduler::ALL.into_iter().filter(|s| dp.supports(*s)).collect(),
        nodeport_addresses: config.nodeport_addresses.clone(),
        localhost_nodeports: config.localhost_nodeports,
        service_cidrs: config.service_cidrs.clone(),
    };
    if config.localhost_nodeports {
        // DNAT of traffic to 127.0.0.1 towards another host needs the kernel to route loopback addresses.
        let knob = "/proc/sys/net/ipv4/conf/all/route_localnet";
        match std::fs::write(knob, "1") {
            Ok(()) => info!(sysctl = "net.ipv4.conf.all.route_localnet", value = 1, "set for --localhost-nodeports"),
            Err(e) => bail!("--localhost-nodeports needs {knob} = 1: {e}"),
        }
    }
    // A second instance only reads the kernel, for the per-backend metrics.
    let reader = dataplane(&config.dataplane, settings, &places)?;
    let reader: Arc<std::sync::Mutex<Box<dyn Dataplane>>> = Arc::new(std::sync::Mutex::new(reader));

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let metrics = Metrics::new();
        let health = Health::new(config.sync_period * 2);
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let mut events = None;
        match config.source.clone() {
            SourceConfig::Manifests(dir) => {
                info!(dir = %dir.display(), "reading manifests");
                tokio::spawn(source::manifests::run(dir, tx));
            }
            SourceConfig::Kube(kubeconfig) => {
                let client = source::kube::client(kubeconfig.as_deref()).await?;
                events = Some(switchyard::events::spawn_recorder(client.clone(), config.node_name.clone()));
                tokio::spawn(source::kube::run(client, config.node_name.clone(), tx));
            }
        }
        let dump: switchyard::http::DumpFn = Arc::new(move || -> anyhow::Result<Dump> {
            Ok(reader.lock().map_err(|_| anyhow::anyhow!("reader lock poisoned"))?.dump()?)
        });
        let server = switchyard::http::serve(
            config.metrics_bind_address,
            config.healthz_bind_address,
            metrics.clone(),
            health.clone(),
            dump,
        );
        let conntrack: switchyard::sync::ConntrackCleaner = Box::new(|filters| {
            switchyard_conntrack::Conntrack::open()
                .and_then(|mut ct| ct.delete_stale(filters))
                .map_err(|e| e.to_string())
        });
        let sync = SyncLoop::new(
            Store::new(options),
            dp,
            metrics,
            health,
            config.min_sync_period,
            Box::new(interface_addresses),
            conntrack,
        );
        let sync = match events {
            Some(sink) => sync.with_events(sink),
            None => sync,
        }
        .run(rx);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = server => { r.context("HTTP server")?; }
            () = sync => error!("all sources ended"),
            _ = tokio::signal::ctrl_c() => info!("interrupted; leaving the kernel's rules in place"),
            _ = term.recv() => info!("terminated; leaving the kernel's rules in place"),
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // Do not wait for blocked tasks (a source may be mid-request): the rules stay as they are.
    std::process::exit(0)
}

/// This node's interface addresses, loopback and link-local excluded.
fn interface_addresses() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| {
            let sa = a.address?;
            let ip: std::net::IpAddr = match (sa.as_sockaddr_in(), sa.as_sockaddr_in6()) {
                (Some(v4), _) => v4.ip().into(),
                (_, Some(v6)) => v6.ip().into(),
                _ => return None,
            };
            let link_local = matches!(ip, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            (!ip.is_loopback() && !link_local).then_some(ip)
        })
        .collect()
}

/// The human-readable dump.
fn table(dump: &Dump) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for s in &dump.services {
        let port = if s.port.is_empty() { "-" } else { s.port.as_str() };
        let affinity = s.affinity_timeout_seconds.map_or("-".to_string(), |t| format!("ClientIP {t}s"));
        let _ = writeln!(
            out,
            "{}/{} port={port} {} scheduler={} affinity={affinity}",
            s.namespace, s.name, s.protocol.as_str().to_uppercase(), s.scheduler
        );
        for f in &s.frontends {
            let _ = writeln!(out, "  frontend {:<12} {}", f.kind.as_str(), std::net::SocketAddr::new(f.ip, f.port));
        }
        if s.backends.is_empty() {
            let _ = writeln!(out, "  (no backends: new connections are rejected)");
        }
        for b in &s.backends {
            let _ = writeln!(
                out,
                "  backend  {:<24} connections={} packets={} bytes={}",
                std::net::SocketAddr::new(b.ip, b.port).to_string(),
                b.connections,
                b.packets,
                b.bytes
            );
        }
    }
    if dump.services.is_empty() {
        out.push_str("no Service ports programmed\n");
    }
    out
}
