//! IPVS where this machine's kernel has none: the benchmark runs itself again inside Debian's stock kernel
//! under QEMU (software emulation), with the VM machinery of the IPVS tests (`vmkit`), and reads the
//! guest's measurements back as JSON lines.
//!
//! The host packs an initramfs with busybox, `ip`, `nft`, `ipvsadm`, `iptables-legacy-restore` (with its
//! extensions), this executable, the daemon, their shared libraries and the kernel modules, and boots it.
//! The guest's `/init` runs `switchyard-bench --in-vm --dataplanes ipvs …`, which measures IPVS at each size
//! and the kube-proxy iptables peer in the same kernel (connect latencies in an emulated CPU compare only
//! with each other), and prints one [`LINE`] per outcome. Everything in the guest runs about an order of
//! magnitude slower than on the host: compare the IPVS table's ratios, not its absolute times, with the
//! other tables.

#[path = "../../dataplanes/ipvs-netlink/tests/vmkit/mod.rs"]
mod vmkit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::{Args, Outcome, Peer};

/// The guest prints each measurement as this prefix and one JSON [`GuestLine`].
pub const LINE: &str = "SWITCHYARD-BENCH-JSON ";

/// One measurement the guest hands to the host.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum GuestLine {
    Row(usize, Outcome),
    Peer(usize, Result<Peer, String>),
}

/// Prints a measurement for the host (guest side).
pub fn emit(line: &GuestLine) {
    match serde_json::to_string(line) {
        Ok(json) => println!("{LINE}{json}"),
        Err(e) => eprintln!("switchyard-bench: cannot encode a measurement: {e}"),
    }
}

/// What the VM measured.
pub struct Guest {
    pub rows: Vec<(usize, Outcome)>,
    pub peers: Vec<(usize, Result<Peer, String>)>,
    /// The VM: kernel, CPUs, memory, wall time.
    pub about: String,
}

/// Kernel modules besides [`vmkit::DATAPLANE_MODULES`]: x_tables with the matches and targets of
/// kube-proxy's iptables rules (the peer).
const PEER_MODULES: &[&str] = &[
    "ip_tables",
    "iptable_nat",
    "iptable_filter",
    "xt_statistic",
    "xt_comment",
    "xt_mark",
    "xt_MASQUERADE",
    "xt_nat",
    "xt_conntrack",
    "xt_addrtype",
    "xt_tcpudp",
];

/// Where iptables looks for its extensions (Debian's `XTABLES_LIBDIR`).
const XTABLES_LIBDIR: &str = "usr/lib/x86_64-linux-gnu/xtables";

const GUEST_DIR: &str = "opt/switchyard";

/// The rest of `/init` after [`vmkit::INIT_PREAMBLE`] and [`vmkit::INIT_DAEMON_SETUP`].
const INIT: &str = r#"
export HOME=/tmp RUST_BACKTRACE=1
cd /tmp
echo "init: $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB; running switchyard-bench $(cat /args)"
/opt/switchyard/switchyard-bench $(cat /args)
echo "SWITCHYARD-VM-EXIT=$?"
poweroff -f
"#;

/// Runs the IPVS part of the benchmark in a VM and returns what it measured.
pub fn run(args: &Args, daemon: &Path, workdir: &Path) -> anyhow::Result<Guest> {
    let bench = std::env::current_exe().context("this executable")?;
    // vmkit is the tests' machinery and says what is wrong by panicking.
    let prepared = std::panic::catch_unwind(|| -> anyhow::Result<(vmkit::Kernel, PathBuf)> {
        let mut packages = vmkit::PACKAGES.to_vec();
        packages.extend([("ipvsadm", "ipvsadm"), ("xtables-legacy-multi", "iptables"), ("strip", "binutils")]);
        vmkit::ensure_packages(&packages);
        let kernel = vmkit::find_kernel();
        let dir = workdir.join("vm");
        std::fs::create_dir_all(&dir)?;
        let initramfs = dir.join("initramfs.cpio");
        build_initramfs(&kernel, &bench, daemon, &dir, &initramfs, &guest_args(args))?;
        Ok((kernel, initramfs))
    });
    let (kernel, initramfs) = match prepared {
        Ok(r) => r?,
        Err(p) => bail!("preparing the VM failed: {}", panic_text(&p)),
    };
    let vm = vmkit::Vm {
        memory_mb: args.vm_memory,
        cpus: args.vm_cpus,
        timeout: args.vm_timeout,
        // Each wait in the guest is bounded by --timeout; its progress lines come between them.
        silence: args.timeout + Duration::from_secs(600),
        hide: Some(LINE),
    };
    eprintln!(
        "== IPVS: in a VM (kernel {}, {} CPUs, {} MiB, software emulation); its output follows",
        kernel.version, args.vm_cpus, args.vm_memory
    );
    let started = std::time::Instant::now();
    let run = std::panic::catch_unwind(|| vmkit::boot_vm(&kernel, &initramfs, &vm))
        .map_err(|p| anyhow::anyhow!("booting the VM failed: {}", panic_text(&p)))?;
    let wall = started.elapsed();
    let _ = std::fs::remove_file(&initramfs);

    let mut guest = Guest {
        rows: Vec::new(),
        peers: Vec::new(),
        about: format!(
            "Debian's stock kernel {} in QEMU (TCG software emulation, {} vCPUs, {} MiB) on this machine; VM wall time {:.0} s",
            kernel.version,
            args.vm_cpus,
            args.vm_memory,
            wall.as_secs_f64()
        ),
    };
    for line in &run.lines {
        let Some(json) = line.strip_prefix(LINE) else { continue };
        match serde_json::from_str::<GuestLine>(json) {
            Ok(GuestLine::Row(n, o)) => guest.rows.push((n, o)),
            Ok(GuestLine::Peer(n, p)) => guest.peers.push((n, p)),
            Err(e) => bail!("the VM printed a measurement this executable cannot read ({e}): {json:.200}"),
        }
    }
    match (run.exit, run.killed) {
        (_, Some(why)) => bail!("the VM was stopped: {why} (its output is above)"),
        (None, None) => bail!("the VM reported no exit status: the guest crashed (its output is above)"),
        // Failed measurements are in the lines; a non-zero exit says so, and the rows tell which.
        (Some(_), None) => {}
    }
    for &n in &args.sizes {
        if !guest.rows.iter().any(|(m, _)| *m == n) {
            guest.rows.push((n, Outcome::Failed("the VM reported nothing for this size (its output is above)".into())));
        }
    }
    Ok(guest)
}

/// The guest's command line: IPVS only, the host's measurement settings, durations in seconds.
pub(crate) fn guest_args(a: &Args) -> Vec<String> {
    let sizes = a.sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",");
    let mut v: Vec<String> = vec![
        "--in-vm".into(),
        "--dataplanes".into(),
        "ipvs".into(),
        "--sizes".into(),
        sizes,
        "--endpoints".into(),
        a.endpoints.to_string(),
        "--connects".into(),
        a.connects.to_string(),
        "--changes".into(),
        a.changes.to_string(),
        "--changes-budget".into(),
        format!("{}s", a.changes_budget.as_secs()),
        "--timeout".into(),
        format!("{}s", a.timeout.as_secs()),
        "--iptables".into(),
        match a.iptables {
            crate::iptables::Backend::Legacy => "legacy".into(),
            crate::iptables::Backend::Nft => "nft".into(),
        },
        "--daemon".into(),
        format!("/{GUEST_DIR}/switchyard"),
    ];
    if a.skip_iptables {
        v.push("--skip-iptables".into());
    }
    if let Some(max) = a.peer_max {
        v.extend(["--peer-max".into(), max.to_string()]);
    }
    v
}

fn build_initramfs(
    kernel: &vmkit::Kernel,
    bench: &Path,
    daemon: &Path,
    dir: &Path,
    out: &Path,
    guest_args: &[String],
) -> anyhow::Result<()> {
    let mut cpio = vmkit::Cpio::default();
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "modules", "etc"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.char_device("dev/null", 1, 3);
    cpio.file("init", 0o755, format!("{}{}{INIT}", vmkit::INIT_PREAMBLE, vmkit::INIT_DAEMON_SETUP).into_bytes());
    cpio.file("args", 0o644, guest_args.join(" ").into_bytes());
    let which = |name: &str| vmkit::which(name).with_context(|| format!("{name} is not installed"));
    let executables: Vec<(PathBuf, String)> = vec![
        (which("busybox")?, "bin/busybox".into()),
        (which("ip")?, "sbin/ip".into()),
        (which("nft")?, "sbin/nft".into()),
        (which("ipvsadm")?, "sbin/ipvsadm".into()),
        (which("xtables-legacy-multi")?, "sbin/xtables-legacy-multi".into()),
        (stripped(bench, dir)?, format!("{GUEST_DIR}/switchyard-bench")),
        (stripped(daemon, dir)?, format!("{GUEST_DIR}/switchyard")),
    ];
    vmkit::pack_executables(&mut cpio, &executables);
    // The multi-call binary picks its personality from its name.
    for name in ["iptables-legacy-restore", "iptables-legacy", "iptables-legacy-save"] {
        cpio.symlink(&format!("sbin/{name}"), "xtables-legacy-multi");
    }
    let libdir = Path::new("/").join(XTABLES_LIBDIR);
    cpio.parents(&format!("{XTABLES_LIBDIR}/x"));
    for entry in std::fs::read_dir(&libdir).with_context(|| format!("reading {}", libdir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if name.ends_with(".so") {
            let body = std::fs::read(std::fs::canonicalize(&path)?)?;
            cpio.file(&format!("{XTABLES_LIBDIR}/{name}"), 0o755, body);
        }
    }
    vmkit::pack_modules(&mut cpio, kernel, &[vmkit::DATAPLANE_MODULES, PEER_MODULES].concat());
    // nft and iptables name protocols and services through these.
    for f in ["etc/protocols", "etc/services"] {
        cpio.file(f, 0o644, std::fs::read(Path::new("/").join(f)).with_context(|| format!("/{f}"))?);
    }
    std::fs::write(out, cpio.finish())?;
    Ok(())
}

/// A copy of `exe` without debug info.
fn stripped(exe: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let out = dir.join(exe.file_name().context("an executable's name")?);
    let status = Command::new("strip").arg("--strip-debug").arg("-o").arg(&out).arg(exe).status()?;
    if !status.success() {
        bail!("strip {} failed", exe.display());
    }
    Ok(out)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}
