//! `switchyard-bench`: programs N Services × M endpoints with the release daemon in a network namespace and
//! reports, per dataplane, full and incremental sync times against the kernel's own loading cost, the
//! daemon's peak RSS, and connect() latency through a ClusterIP against a direct connect, with kube-proxy's
//! iptables-mode rules for the same N as the peer baseline in the same run. See bench/README.md.

mod daemon;
mod iptables;
mod manifests;
mod netns;
mod probe;
mod report;
mod vm;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::daemon::Daemon;
use crate::netns::{Netns, Topology};
use crate::probe::Latency;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard-bench",
    about = "Benchmark Switchyard's dataplanes against the kernel and kube-proxy's iptables rules"
)]
pub struct Args {
    /// Numbers of Services, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    sizes: Vec<usize>,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Timed connects per target and size (after 50 warm-up rounds).
    #[arg(long, default_value_t = 1000)]
    connects: usize,
    /// One-endpoint changes per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    changes: usize,
    /// No further one-endpoint change at a size once the changes there have taken this long (at least one
    /// is always made).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    changes_budget: Duration,
    /// Up to this many Services, also time `nft list table` (what the daemon's restore, `switchyard dump`
    /// and `/metrics` read) and `nft -f` of that listing. The kernel's dumps are quadratic in the number of
    /// objects: at 10,000 Services × 10 listing takes about 40 s, at 50,000 it would take many minutes.
    #[arg(long, default_value_t = 10_000)]
    list_max: usize,
    /// Dataplanes to run, comma-separated (nftables, ipvs, ebpf); empty (`''`) runs only the kube-proxy peer.
    #[arg(long, value_delimiter = ',', default_value = "nftables,ipvs,ebpf")]
    dataplanes: Vec<String>,
    /// Which iptables backend the kube-proxy peer baseline uses.
    #[arg(long, value_enum, default_value_t = iptables::Backend::Legacy)]
    iptables: iptables::Backend,
    /// Skip the kube-proxy iptables peer baseline.
    #[arg(long)]
    skip_iptables: bool,
    /// Measure the kube-proxy peer only up to this many Services (loading 1.6 million rules at 50,000 takes
    /// minutes on the host, far longer in the IPVS VM).
    #[arg(long)]
    peer_max: Option<usize>,
    /// The daemon binary. Default: `switchyard` next to this executable (target/release/switchyard).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Longest wait for a full sync, a one-endpoint change or a rules load.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Working directory for manifests, logs and dumps. Default: a fresh directory under /tmp, removed at
    /// the end unless --keep-workdir.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the working directory (daemon logs, dumped rulesets, generated rules).
    #[arg(long)]
    keep_workdir: bool,
    /// A note for the report's header (e.g. what else ran on the machine).
    #[arg(long)]
    note: Option<String>,
    /// Where this kernel has no IPVS, do not boot a VM for it (IPVS is then reported as not measured).
    #[arg(long)]
    no_vm: bool,
    /// The IPVS VM's memory in MiB (the daemon alone peaked at 1.3 GiB at 50,000 × 10 there).
    #[arg(long, default_value_t = 8192)]
    vm_memory: u32,
    /// The IPVS VM's CPUs.
    #[arg(long, default_value_t = 2)]
    vm_cpus: u32,
    /// Longest the IPVS VM may run, boot to power-off.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    vm_timeout: Duration,
    /// Inside the IPVS VM: print each measurement as a JSON line for the host instead of a report.
    #[arg(long, hide = true)]
    in_vm: bool,
    /// Only remove the namespaces (and their processes) left behind by runs that were killed, then exit
    /// (every run does this first).
    #[arg(long)]
    cleanup: bool,
}

/// What one size needs.
#[derive(Debug)]
pub struct Ctx {
    daemon: PathBuf,
    workdir: PathBuf,
    m: usize,
    connects: usize,
    changes: usize,
    changes_budget: Duration,
    list_max: usize,
    timeout: Duration,
    /// The real `nft`, for the recording wrapper.
    nft: PathBuf,
}

/// One one-endpoint change.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Change {
    #[serde(default)]
    pub kind: manifests::ChangeKind,
    /// From just before the rename to the `synced` line's timestamp.
    pub total: Duration,
    /// The dataplane's part of that sync.
    pub dataplane_ms: u64,
}

/// A dataplane's measurements at one size.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub n: usize,
    /// Daemon start to `/healthz` 200.
    pub full: Duration,
    /// Daemon start to the first sync's start (manifests read, model built).
    pub before_sync: Duration,
    /// The first sync's dataplane part (the daemon's `elapsed_ms`).
    pub sync_ms: u64,
    /// CPU time until the full sync was done: the daemon's own, and its `nft` children's.
    pub full_cpu: (Duration, Duration),
    /// How the kernel baseline loads the state, e.g. "nft -f".
    pub kernel_how: String,
    /// The kernel baseline: loading the same state in one go into a fresh namespace.
    pub kernel: Duration,
    /// The baseline's parts, when it has several: how, and how long.
    #[serde(default)]
    pub kernel_parts: Vec<(String, Duration)>,
    /// Size of what the baseline loads: (lines, bytes).
    pub kernel_input: (usize, u64),
    /// The state as the kernel lists it, when measured: listing time, its size (lines, bytes), and loading it.
    pub listing: Option<Listing>,
    pub changes: Vec<Change>,
    /// Peak RSS of the daemon (VmHWM), and its RSS at the end (VmRSS).
    pub rss_kib: u64,
    pub rss_end_kib: u64,
    pub latency: Latency,
    /// Bytes of generated manifests.
    pub manifest_bytes: u64,
    /// Warnings and errors the daemon logged.
    pub problems: Vec<String>,
}

/// What running a dataplane at one size gave.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    Measured(Box<Row>),
    Unavailable(String),
    Failed(String),
}

/// The kube-proxy iptables peer at one size.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub n: usize,
    pub rules: usize,
    pub load: Duration,
    pub latency: Latency,
}

/// `nft list table` of the programmed state, and `nft -f` of that listing into a fresh namespace.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    pub list: Duration,
    pub size: (usize, u64),
    pub load: Duration,
}

/// Every size's outcome for one dataplane.
#[derive(Debug)]
pub struct Results {
    pub name: &'static str,
    pub title: &'static str,
    pub rows: Vec<(usize, Outcome)>,
    /// Where the measurements were taken, when not on this machine's kernel (the IPVS VM).
    pub place: Option<String>,
    /// The kube-proxy peer measured with these rows, when not the run's own (in the IPVS VM).
    pub peers: Option<Vec<(usize, Result<Peer, String>)>>,
}

type Runner = fn(&Ctx, usize) -> anyhow::Result<Outcome>;

/// Every dataplane the benchmark knows: its name in `--dataplane`, its title and how to measure it. Adding
/// a dataplane is one function here.
const DATAPLANES: &[(&str, &str, Runner)] =
    &[("nftables", "nftables", run_nftables), ("ipvs", "IPVS", run_ipvs), ("ebpf", "eBPF", run_ebpf)];

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        eprintln!("switchyard-bench: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    require_root()?;
    netns::install_signal_cleanup()?;
    let swept = netns::sweep();
    if !swept.is_empty() {
        eprintln!("removed {} namespaces left by earlier runs: {}", swept.len(), swept.join(" "));
    }
    sweep_ebpf();
    if args.cleanup {
        return Ok(());
    }
    if args.endpoints == 0 || args.endpoints > 1000 {
        bail!("--endpoints must be between 1 and 1000");
    }
    if args.sizes.iter().any(|&n| n == 0 || n > 1_000_000) {
        bail!("--sizes must be between 1 and 1,000,000");
    }
    for d in args.dataplanes.iter().filter(|d| !d.is_empty()) {
        if !DATAPLANES.iter().any(|(name, _, _)| name == d) {
            bail!("unknown dataplane {d:?}; known: nftables, ipvs, ebpf");
        }
    }
    let daemon = daemon_binary(args.daemon.as_deref())?;
    require_tool("ip", "iproute2")?;
    require_tool("nft", "nftables")?;
    if !args.skip_iptables {
        require_tool(args.iptables.restore_binary(), "iptables")?;
    }

    // Without IPVS in this kernel, IPVS is measured in a VM after the rest.
    let ipvs_in_vm = !args.in_vm && args.dataplanes.iter().any(|d| d == "ipvs") && !host_has_ipvs();
    let machine = if args.in_vm { None } else { Some(report::Machine::probe(&daemon)) };
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("sybench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let keep = args.keep_workdir || args.workdir.is_some();
    if !keep {
        netns::register_dir(&workdir);
    }
    let _workdir_guard = RemoveDir { path: workdir.clone(), keep };
    let ctx = Ctx {
        daemon,
        workdir: workdir.clone(),
        m: args.endpoints,
        connects: args.connects,
        changes: args.changes,
        changes_budget: args.changes_budget,
        list_max: args.list_max,
        timeout: args.timeout,
        nft: find_tool("nft").context("nft")?,
    };

    let mut results: Vec<Results> = DATAPLANES
        .iter()
        .filter(|(name, _, _)| args.dataplanes.iter().any(|d| d == name))
        .map(|(name, title, _)| Results { name, title, rows: Vec::new(), place: None, peers: None })
        .collect();
    let mut peers: Vec<(usize, Result<Peer, String>)> = Vec::new();
    let started = Instant::now();
    for &n in &args.sizes {
        for Results { name, title, rows, .. } in &mut results {
            if *name == "ipvs" && ipvs_in_vm {
                continue;
            }
            let run = DATAPLANES.iter().find(|(d, _, _)| d == name).expect("filtered above").2;
            eprintln!("== {title}: {n} Services × {} endpoints", ctx.m);
            let outcome = run(&ctx, n).unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
            match &outcome {
                Outcome::Measured(r) => eprintln!("   {}", report::summary(r)),
                Outcome::Unavailable(why) => eprintln!("   {why}"),
                Outcome::Failed(e) => eprintln!("   FAILED: {e}"),
            }
            if args.in_vm {
                vm::emit(&vm::GuestLine::Row(n, outcome));
                continue;
            }
            rows.push((n, outcome));
        }
        if !args.skip_iptables && args.peer_max.is_none_or(|max| n <= max) {
            eprintln!("== kube-proxy iptables ({}): {n} Services × {} endpoints", args.iptables.name(), ctx.m);
            let peer = run_iptables_peer(&ctx, n, args.iptables).map_err(|e| format!("{e:#}"));
            match &peer {
                Ok(p) => eprintln!(
                    "   {} rules loaded in {:.2} s; ClusterIP connect {:.0} µs vs direct {:.0} µs ({:.2}×)",
                    p.rules,
                    p.load.as_secs_f64(),
                    p.latency.cluster_ip.median(),
                    p.latency.bare.median(),
                    p.latency.ratio()
                ),
                Err(e) => eprintln!("   FAILED: {e}"),
            }
            if args.in_vm {
                vm::emit(&vm::GuestLine::Peer(n, peer));
                continue;
            }
            peers.push((n, peer));
        }
    }
    let Some(machine) = machine else {
        // In the VM: the host reads the lines printed above and writes the report.
        return Ok(());
    };
    if ipvs_in_vm {
        let ipvs = results.iter_mut().find(|r| r.name == "ipvs").expect("selected");
        if args.no_vm {
            let why = "not measured: this kernel has no IPVS and --no-vm was given";
            ipvs.rows = args.sizes.iter().map(|&n| (n, Outcome::Unavailable(why.into()))).collect();
        } else {
            match vm::run(&args, &ctx.daemon, &workdir) {
                Ok(g) => {
                    ipvs.rows = g.rows;
                    ipvs.place = Some(g.about);
                    ipvs.peers = (!args.skip_iptables).then_some(g.peers);
                }
                Err(e) => {
                    eprintln!("   IPVS in the VM FAILED: {e:#}");
                    ipvs.rows = args.sizes.iter().map(|&n| (n, Outcome::Failed(format!("{e:#}")))).collect();
                }
            }
        }
    }

    let text = report::render(&report::Report {
        machine: &machine,
        args: &args,
        command: std::env::args().map(|a| report::shell_quote(&a)).collect::<Vec<_>>().join(" "),
        results: &results,
        peers: &peers,
        elapsed: started.elapsed(),
        load_end: report::loadavg(),
    });
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    let failed = results.iter().flat_map(|r| &r.rows).any(|(_, o)| matches!(o, Outcome::Failed(_)))
        || peers.iter().chain(results.iter().flat_map(|r| r.peers.iter().flatten())).any(|(_, p)| p.is_err());
    if failed {
        bail!("some measurements failed (see above)");
    }
    Ok(())
}

/// Removes the working directory on the way out.
struct RemoveDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the working directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn require_root() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2));
    if euid != Some("0") {
        bail!("needs root (network namespaces, nftables, iptables): run it with sudo");
    }
    Ok(())
}

fn find_tool(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(binary)).find(|p| p.is_file()))
}

fn require_tool(binary: &str, package: &str) -> anyhow::Result<()> {
    if find_tool(binary).is_none() {
        bail!("{binary} is missing: install it with `apt-get install -y {package}`");
    }
    Ok(())
}

/// The release daemon: `--daemon`, else `switchyard` next to this executable.
fn daemon_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.parent().context("executable has no directory")?.join("switchyard"),
    };
    if !path.is_file() {
        bail!(
            "the daemon binary {} is missing: build it with `cargo build --release -p switchyard -p switchyard-bench` \
             (or give its path with --daemon)",
            path.display()
        );
    }
    if given.is_none() && !path.parent().is_some_and(|d| d.ends_with("release")) {
        bail!("{} is not a release build: run target/release/switchyard-bench (built with --release)", path.display());
    }
    Ok(path.canonicalize()?)
}

/// nftables: the daemon programs the state from manifests. The kernel baseline is `nft -f`, into a fresh
/// namespace, of the very transaction the daemon sent for its full sync (recorded by an `nft` wrapper put
/// first on the daemon's PATH until the full sync is done, then removed); up to `--list-max` Services also of
/// the table as `nft list table` prints it.
fn run_nftables(ctx: &Ctx, n: usize) -> anyhow::Result<Outcome> {
    run_daemon(ctx, n, Dp::Nftables)
}

/// eBPF socket-LB: the same measurements as [`run_nftables`], with the daemon's programs attached to a cgroup
/// of the benchmark's own (and maps pinned in a bpffs directory of its own) and the client's connects made
/// from inside that cgroup, so the connect() hook rewrites them. Its kernel baseline is `nft -f` of the
/// nftables part of its full sync (the table it keeps for north-south traffic), so the ratio shows what the
/// BPF map writes and the daemon add to it; the one-endpoint check reads that table too.
fn run_ebpf(ctx: &Ctx, n: usize) -> anyhow::Result<Outcome> {
    let Some(root) = cgroup2_root() else {
        return Ok(Outcome::Unavailable("no cgroup2 mount on this machine".into()));
    };
    let cgroup = root.join(format!("sybench-{}", std::process::id()));
    let pins = PathBuf::from(format!("/sys/fs/bpf/sybench-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).with_context(|| format!("creating the cgroup {}", cgroup.display()))?;
    let _cleanup = EbpfCleanup { cgroup: cgroup.clone(), root, pins: pins.clone() };
    run_daemon(ctx, n, Dp::Ebpf(Ebpf { cgroup, pins }))
}

/// Where the eBPF dataplane attaches and pins in a benchmark run.
struct Ebpf {
    cgroup: PathBuf,
    pins: PathBuf,
}

/// Puts this process back in the cgroup2 root and removes the benchmark's cgroup and pins.
struct EbpfCleanup {
    cgroup: PathBuf,
    root: PathBuf,
    pins: PathBuf,
}

impl Drop for EbpfCleanup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// Removes the cgroups and bpffs pins (programs, links, maps) of eBPF runs whose process is gone.
fn sweep_ebpf() {
    let dead = |name: &str| {
        name.strip_prefix("sybench-")
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    let dirs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| dead(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect()
    };
    for pins in dirs(Path::new("/sys/fs/bpf")) {
        eprintln!("removing {} left by an earlier run", pins.display());
        let _ = std::fs::remove_dir_all(&pins);
    }
    if let Some(root) = cgroup2_root() {
        for cgroup in dirs(&root) {
            let _ = std::fs::remove_dir(&cgroup);
        }
    }
}

/// The cgroup2 mount point.
fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Which dataplane [`run_daemon`] runs, and what it needs.
enum Dp {
    Nftables,
    Ebpf(Ebpf),
    Ipvs,
}

impl Dp {
    fn name(&self) -> &'static str {
        match self {
            Dp::Nftables => "nftables",
            Dp::Ebpf(_) => "ebpf",
            Dp::Ipvs => "ipvs",
        }
    }
}

/// The daemon with one dataplane at one size: full sync, one-endpoint changes, RSS, connect() latency and the
/// kernel baseline.
fn run_daemon(ctx: &Ctx, n: usize, dp: Dp) -> anyhow::Result<Outcome> {
    let name = dp.name();
    let work = ctx.workdir.join(format!("{name}-{n}"));
    std::fs::create_dir_all(&work)?;
    let manifests = manifests::Manifests::write(&work.join("manifests"), n, ctx.m)?;
    let recorded = work.join("full-sync.nft");
    let _ = std::fs::remove_file(&recorded);
    let wrapper_dir = work.join("bin");
    let wrapper = write_nft_wrapper(&wrapper_dir, &ctx.nft, &recorded)?;
    let topo = Topology::new(&format!("{}{n}", &name[..4]), ctx.m + 1)?;
    let _listener = probe::Listener::start(&topo)?;

    // Full sync: from starting the process to /healthz 200.
    let t0 = SystemTime::now();
    let i0 = Instant::now();
    let extra: Vec<std::ffi::OsString> = match &dp {
        Dp::Ebpf(e) => vec![
            "--dataplane".into(),
            "ebpf".into(),
            "--ebpf-cgroup".into(),
            e.cgroup.clone().into(),
            "--bpffs-dir".into(),
            e.pins.clone().into(),
        ],
        Dp::Ipvs => vec!["--dataplane".into(), "ipvs".into()],
        Dp::Nftables => Vec::new(),
    };
    let ebpf = match &dp {
        Dp::Ebpf(e) => Some(e),
        _ => None,
    };
    let mut d =
        Daemon::start(&ctx.daemon, &topo.node, &manifests.dir, &work.join("daemon.log"), Some(&wrapper_dir), &extra)?;
    let ready = d.wait_healthy(&topo.node, ctx.timeout)?;
    let full = ready - i0;
    let full_cpu = d.cpu()?;
    std::fs::remove_file(&wrapper).context("removing the nft wrapper")?;
    let first = d.wait_synced(t0, Duration::from_secs(10)).context("the first sync's log line")?;
    let sync_start = first.at - Duration::from_millis(first.elapsed_ms);
    let before_sync = sync_start.duration_since(t0).unwrap_or_default();
    if std::fs::metadata(&recorded).map_or(true, |m| m.len() == 0) {
        bail!("the daemon's full sync was not recorded: it did not run `nft -f -` found through PATH");
    }

    // One-endpoint changes, `ctx.changes` of each kind: Service 0's last endpoint moves to a spare address of
    // the backend and back; then that address is added as an endpoint and removed again. After each kind the
    // kernel must send Service 0 to exactly the endpoints of its last change.
    let mut changes = Vec::new();
    for kind in [manifests::ChangeKind::Move, manifests::ChangeKind::Scale] {
        let budget = Instant::now();
        let mut expected = None;
        for k in 0..ctx.changes {
            if k > 0 && budget.elapsed() > ctx.changes_budget {
                eprintln!(
                    "   {k} one-endpoint changes ({kind:?}) took {:.0} s: no more at this size",
                    budget.elapsed().as_secs_f64()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            let eps = manifests.service0_after(kind, k);
            let t = SystemTime::now();
            manifests.set_service0(&eps)?;
            let s = d.wait_synced(t, ctx.timeout).with_context(|| format!("one-endpoint change {} ({kind:?})", k + 1))?;
            changes.push(Change { kind, total: s.at.duration_since(t).unwrap_or_default(), dataplane_ms: s.elapsed_ms });
            expected = Some(eps);
        }
        if let Some(eps) = expected {
            let mut sent_to = match dp {
                Dp::Ipvs => ipvs_service0_backends(&topo.node)?,
                _ => service0_backends(&topo.node)?,
            };
            let mut want: Vec<String> = eps.iter().map(|a| format!("{a} . {}", manifests::TARGET_PORT)).collect();
            sent_to.sort();
            want.sort();
            if sent_to != want {
                bail!("after the {kind:?} changes the kernel sends Service 0 to {sent_to:?}, not to {want:?}");
            }
        }
    }

    // With eBPF the client's connects come from inside the hooked cgroup (this whole process, for the
    // measurement: a thread cannot be moved alone).
    if let Some(e) = &ebpf {
        std::fs::write(e.cgroup.join("cgroup.procs"), std::process::id().to_string())
            .context("moving the benchmark into its cgroup")?;
    }
    let latency = probe::measure(&topo, ctx.connects);
    if ebpf.is_some() {
        let root = cgroup2_root().context("cgroup2")?;
        std::fs::write(root.join("cgroup.procs"), std::process::id().to_string())
            .context("moving the benchmark back to the cgroup2 root")?;
    }
    let latency = latency?;
    if ebpf.is_some() {
        // The socket hooks rewrote the connects, or the nftables fallback DNATed them: the node's conntrack
        // table tells (a socket-LB connection is never NATed).
        let natted = netns::check(topo.node.command("conntrack").args(["-L", "--dst-nat"]))?;
        let count = natted.lines().filter(|l| l.contains("dst=10.96.")).count();
        if count > 0 {
            bail!("{count} connections to a ClusterIP were DNATed by the node's nftables table, not rewritten by the socket hooks");
        }
    }
    let rss_kib = d.peak_rss_kib()?;
    let rss_end_kib = d.rss_kib()?;
    d.stop();
    let problems = std::mem::take(&mut d.problems);
    drop(d);

    // The kernel baseline (while the proxy node still exists: tearing a big table down would compete with
    // the load for the CPU).
    let Baseline { took: kernel, input: kernel_input, how: kernel_how, parts: kernel_parts } = match dp {
        Dp::Ipvs => ipvs_baseline(ctx, n, &topo.node, &work, &recorded)?,
        _ => {
            let input = file_size(&recorded)?;
            let fresh = Netns::new(&format!("nft{n}-fresh"))?;
            let took = timed_load(&fresh, Command::new(&ctx.nft).arg("-f").arg(&recorded), None, ctx.timeout)?;
            drop(fresh);
            let how = if ebpf.is_some() { "nft -f of its nftables part" } else { "nft -f" };
            Baseline { took, input, how: how.to_string(), parts: Vec::new() }
        }
    };

    // `nft list table` is the nftables dataplane's state (the others keep only a small table there).
    let listing = if n <= ctx.list_max && matches!(dp, Dp::Nftables) {
        let dump = work.join("listed.nft");
        let file = std::fs::File::create(&dump)?;
        let start = Instant::now();
        for fam in ["ip", "ip6"] {
            let out = topo
                .node
                .command(&ctx.nft)
                .args(["list", "table", fam, "switchyard"])
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(Stdio::piped())
                .output()?;
            if !out.status.success() {
                bail!("nft list table {fam} switchyard: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        let list = start.elapsed();
        let fresh = Netns::new(&format!("nft{n}-fresh2"))?;
        let load = timed_load(&fresh, Command::new(&ctx.nft).arg("-f").arg(&dump), None, ctx.timeout)?;
        drop(fresh);
        Some(Listing { list, size: file_size(&dump)?, load })
    } else {
        None
    };
    drop(topo);

    Ok(Outcome::Measured(Box::new(Row {
        n,
        full,
        before_sync,
        sync_ms: first.elapsed_ms,
        full_cpu,
        kernel_how,
        kernel_parts,
        kernel,
        kernel_input,
        listing,
        changes,
        rss_kib,
        rss_end_kib,
        latency,
        manifest_bytes: manifests.bytes,
        problems,
    })))
}

/// The backends (`ip . port`) the kernel's rules send Service 0's ClusterIP connections to: its chain names
/// its block of `backend-slots` (`mod N offset B`), whose marks `backend-addrs` maps to addresses. Each
/// command reads one chain or named elements, so it is cheap at any size.
fn service0_backends(node: &Netns) -> anyhow::Result<Vec<String>> {
    let chain = format!("service-{}/svc-0/tcp/{}", manifests::NAMESPACE, manifests::PORT_NAME);
    let rules = netns::check(node.command("nft").args(["list", "chain", "ip", "switchyard", &chain]))?;
    let word_after = |w: &str| -> Option<u32> {
        let mut words = rules.split_whitespace();
        words.find(|x| *x == w)?;
        words.next()?.parse().ok()
    };
    // nft leaves out `offset 0`.
    let (Some(n), base) = (word_after("mod"), word_after("offset").unwrap_or(0)) else {
        bail!("no scheduler rule with `mod N [offset B]` in {chain}:\n{rules}");
    };
    // `nft get element` prints `elements = { KEY : VALUE, ... }`: the values after each ` : `.
    let values = |out: String| -> Vec<String> {
        let inner = out.split_once("elements = {").map_or("", |(_, r)| r.split('}').next().unwrap_or(""));
        inner.split(',').filter_map(|e| e.split_once(" : ").map(|(_, v)| v.trim().to_string())).collect()
    };
    let get = |map: &str, keys: &[String]| {
        netns::check(node.command("nft").args(["get", "element", "ip", "switchyard", map, &format!("{{ {} }}", keys.join(", "))]))
            .map(values)
    };
    let slots: Vec<String> = (base..base + n).map(|s| s.to_string()).collect();
    let marks = get("backend-slots", &slots)?;
    get("backend-addrs", &marks)
}

/// Lines and bytes of a text file.
fn file_size(path: &Path) -> anyhow::Result<(usize, u64)> {
    use std::io::BufRead as _;
    let f = std::fs::File::open(path)?;
    let bytes = f.metadata()?.len();
    let lines = std::io::BufReader::new(f).split(b'\n').count();
    Ok((lines, bytes))
}

/// Writes `dir/nft`, which appends every script given as `nft -f -` to `record` and runs the real `nft`.
fn write_nft_wrapper(dir: &Path, nft: &Path, record: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("nft");
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    let script = format!(
        "#!/bin/sh\n# switchyard-bench: records the scripts the daemon applies during its full sync.\n\
         if [ \"$1\" = -f ] && [ \"$2\" = - ] && [ $# -eq 2 ]; then\n  tee -a {rec} | {nft} -f -\n  exit $?\nfi\n\
         exec {nft} \"$@\"\n",
        rec = q(record),
        nft = q(nft)
    );
    std::fs::write(&path, script)?;
    let mut perms = std::fs::metadata(&path)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms)?;
    Ok(path)
}

/// IPVS: the same measurements as [`run_nftables`] with `--dataplane ipvs`, where the kernel has IPVS (this
/// process's kernel, or the VM's: without IPVS here, [`vm`] runs the benchmark again inside Debian's stock
/// kernel under QEMU and this runner is called there). The kernel baseline loads the same state in one go
/// into a fresh namespace: the dummy interface's addresses (`ip -batch`), the virtual services and their
/// destinations as `ipvsadm -S -n` saved them (`ipvsadm -R`), and the nftables part of the full sync (the
/// companion table, `nft -f`).
fn run_ipvs(ctx: &Ctx, n: usize) -> anyhow::Result<Outcome> {
    if !host_has_ipvs() {
        bail!("this kernel has no IPVS (no /proc/net/ip_vs after `modprobe ip_vs`); the benchmark runs IPVS in a VM unless --no-vm");
    }
    run_daemon(ctx, n, Dp::Ipvs)
}

/// Whether this kernel has IPVS (loading the module if it is one).
fn host_has_ipvs() -> bool {
    let _ = Command::new("modprobe").args(["-q", "ip_vs"]).stderr(Stdio::null()).status();
    Path::new("/proc/net/ip_vs").exists()
}

/// The IPVS dataplane's dummy interface (holds the Service addresses).
const IPVS_DEVICE: &str = "switchyard-ipvs";

/// The destinations (`ip . port`, as [`service0_backends`] prints them) IPVS sends Service 0's ClusterIP
/// connections to, with a weight above 0 (a removed endpoint drains at weight 0).
fn ipvs_service0_backends(node: &Netns) -> anyhow::Result<Vec<String>> {
    let service = format!("{}:{}", manifests::cluster_ip(0), manifests::PORT);
    Ok(ipvsadm_destinations(&netns::check(node.command("ipvsadm").args(["-L", "-n", "-t", &service]))?))
}

/// The destinations with a weight above 0 in `ipvsadm -L -n` output, as `ip . port`.
fn ipvsadm_destinations(out: &str) -> Vec<String> {
    // `  -> 10.250.0.3:8080   Masq    1      0          0`
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "->").then_some(())?;
            let (addr, port) = w.next()?.rsplit_once(':')?;
            let weight: u32 = w.nth(1)?.parse().ok()?;
            (weight > 0).then(|| format!("{addr} . {port}"))
        })
        .collect()
}

/// A kernel baseline: how long, the input's (lines, bytes), how, and each part's time when it has several.
struct Baseline {
    took: Duration,
    input: (usize, u64),
    how: String,
    parts: Vec<(String, Duration)>,
}

/// IPVS's kernel baseline: what the daemon programmed in `node`, loaded in one go into a fresh namespace.
fn ipvs_baseline(
    ctx: &Ctx,
    n: usize,
    node: &Netns,
    work: &Path,
    recorded: &Path,
) -> anyhow::Result<Baseline> {
    let saved = work.join("ipvsadm.save");
    let out = node.command("ipvsadm").args(["-S", "-n"]).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("ipvsadm -S -n: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    std::fs::write(&saved, &out.stdout)?;
    let batch = work.join("addresses.ip");
    let mut text = format!("link add {IPVS_DEVICE} type dummy\n");
    for fam in ["-4", "-6"] {
        for line in node.ip(&[fam, "-o", "addr", "show", "dev", IPVS_DEVICE])?.lines() {
            let mut w = line.split_whitespace();
            if w.any(|x| x == "inet" || x == "inet6") {
                if let Some(addr) = w.next() {
                    text.push_str(&format!("addr add {addr} dev {IPVS_DEVICE}\n"));
                }
            }
        }
    }
    std::fs::write(&batch, text)?;

    let fresh = Netns::new(&format!("ipvs{n}-fresh"))?;
    let addresses = timed_load(&fresh, Command::new("ip").arg("-batch").arg(&batch), None, ctx.timeout)?;
    let services =
        timed_load(&fresh, Command::new("ipvsadm").arg("-R"), Some(std::fs::File::open(&saved)?), ctx.timeout)?;
    let table = timed_load(&fresh, Command::new(&ctx.nft).arg("-f").arg(recorded), None, ctx.timeout)?;
    drop(fresh);
    let sizes = [file_size(&batch)?, file_size(&saved)?, file_size(recorded)?];
    let input = sizes.iter().fold((0, 0), |(l, b), (l2, b2)| (l + l2, b + b2));
    let parts =
        vec![("ip -batch".to_string(), addresses), ("ipvsadm -R".to_string(), services), ("nft -f".to_string(), table)];
    Ok(Baseline { took: addresses + services + table, input, how: "ip -batch + ipvsadm -R + nft -f".into(), parts })
}

/// kube-proxy's iptables-mode rules for the same Services, loaded with iptables-restore in a proxy node of
/// its own, and the same connect() measurement.
fn run_iptables_peer(ctx: &Ctx, n: usize, backend: iptables::Backend) -> anyhow::Result<Peer> {
    let work = ctx.workdir.join(format!("iptables-{n}"));
    std::fs::create_dir_all(&work)?;
    let rules_path = work.join("rules");
    let rules = iptables::write(&rules_path, n, ctx.m)?;
    let topo = Topology::new(&format!("ipt{n}"), ctx.m + 1)?;
    let _listener = probe::Listener::start(&topo)?;
    let file = std::fs::File::open(&rules_path)?;
    let load = timed_load(&topo.node, Command::new(backend.restore_binary()).arg("-w"), Some(file), ctx.timeout)?;
    let latency = probe::measure(&topo, ctx.connects)?;
    Ok(Peer { n, rules, load, latency })
}

/// Runs `cmd` inside `ns` (optionally with a file as stdin) and times it; fails if it fails or takes longer
/// than `timeout` (then it is killed).
fn timed_load(
    ns: &Netns,
    cmd: &mut Command,
    stdin: Option<std::fs::File>,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    cmd.stdin(stdin.map_or_else(Stdio::null, Stdio::from)).stdout(Stdio::null()).stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let (took, status, stderr) = ns.run(move || -> anyhow::Result<_> {
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        netns::register_pid(child.id() as i32);
        // Drain stderr as it comes, so a verbose failure cannot block the child.
        let mut stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            err
        });
        let deadline = start + timeout;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                netns::unregister_pid(child.id() as i32);
                bail!("{what} took longer than {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let took = start.elapsed();
        netns::unregister_pid(child.id() as i32);
        Ok((took, status, errors.join().unwrap_or_default()))
    })??;
    if !status.success() {
        bail!("loading failed ({status}): {}", stderr.lines().take(5).collect::<Vec<_>>().join("; "));
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ipvsadm_destinations() {
        let out = "IP Virtual Server version 1.2.1 (size=4096)\n\
                   Prot LocalAddress:Port Scheduler Flags\n\
                   \x20 -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
                   TCP  10.96.0.1:80 rr\n\
                   \x20 -> 10.250.0.1:8080              Masq    1      0          0\n\
                   \x20 -> 10.250.0.11:8080             Masq    0      3          0\n\
                   \x20 -> 10.250.0.2:8080              Masq    1      0          0\n";
        assert_eq!(ipvsadm_destinations(out), ["10.250.0.1 . 8080", "10.250.0.2 . 8080"]);
    }

    /// The host builds the guest's command line; the guest parses it with the same `Args`.
    #[test]
    fn the_vm_parses_the_command_line_the_host_gives_it() {
        let host = Args::parse_from([
            "switchyard-bench",
            "--sizes",
            "1000,50000",
            "--endpoints",
            "7",
            "--changes-budget",
            "90s",
            "--timeout",
            "1h",
            "--iptables",
            "nft",
            "--skip-iptables",
            "--peer-max",
            "10000",
        ]);
        let guest = Args::parse_from(std::iter::once("switchyard-bench".to_string()).chain(vm::guest_args(&host)));
        assert!(guest.in_vm);
        assert_eq!(guest.dataplanes, ["ipvs"]);
        assert_eq!(guest.sizes, [1000, 50000]);
        assert_eq!(guest.endpoints, 7);
        assert_eq!(guest.changes_budget, Duration::from_secs(90));
        assert_eq!(guest.timeout, Duration::from_secs(3600));
        assert_eq!(guest.iptables, iptables::Backend::Nft);
        assert!(guest.skip_iptables);
        assert_eq!(guest.peer_max, Some(10000));
        assert_eq!(guest.daemon.as_deref(), Some(Path::new("/opt/switchyard/switchyard")));
    }
}
