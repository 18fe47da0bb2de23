//! The dataplane-neutral scenarios (`tests/scenarios/*.yaml`, runner `switchyard_tests::scenario`) against
//! `switchyard run --dataplane ipvs`, inside Debian's stock kernel booted under QEMU (the host's kernel may
//! have no IPVS), with the VM machinery of `switchyard-ipvs-netlink`'s `tests/vmkit`.
//!
//! On the host this builds the daemon (`cargo build -p switchyard`), the scenarios test executable of
//! `switchyard-tests` (`cargo test -p switchyard-tests --test scenarios --no-run`) and the `ipvs-list` example
//! of `switchyard-ipvs-netlink` (printed in the node namespace when a scenario fails), strips their debug
//! info, and packs them with busybox, `ip`, `nft`, their libraries, the kernel modules and the scenario files
//! (at the absolute path the scenarios executable reads them from, its `CARGO_MANIFEST_DIR`) into an
//! initramfs. The daemon sits next to the scenarios executable, where `switchyard_tests::daemon::binary()`
//! looks. The guest's `/init` runs the scenarios executable once per scenario test (`--exact NAME`, with
//! `SWITCHYARD_DATAPLANE=ipvs`), each under a deadline (see [`INIT`]); the host reads libtest's
//! `test NAME ... ok` lines from the guest's output port (the kernel's console is a port of its own, so its
//! messages never split those lines), prints one line per scenario and fails unless every selected scenario
//! passed and the guest reported.
//!
//! Usage: `cargo test -p switchyard-ipvs --test scenarios_vm [-- FILTER...]` (filters select scenario tests
//! by substring, `--skip` leaves some out, as libtest does). Env: `SWITCHYARD_VM_TIMEOUT_SECS` (default 1500)
//! bounds the VM; `SWITCHYARD_VM_SCENARIO_DEADLINE_SECS` (default 180) bounds each scenario test in the guest;
//! `SWITCHYARD_VM_TIME_SCALE` (default 3) multiplies the scenarios' per-try timeouts inside the emulated VM;
//! `RUST_LOG` is passed to the daemon in the guest; `SWITCHYARD_VM_CPUS` and `SWITCHYARD_VM_APPEND` change the
//! VM's CPUs and kernel command line. Needs root (to install missing packages and read /boot); fails, never
//! skips, when the VM does not report.

#[path = "../../ipvs-netlink/tests/vmkit/mod.rs"]
mod vmkit;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmkit::{Args, Cpio, Kernel};

/// Scenario tests that cannot apply to IPVS, with the reason (printed on every run). Keep it empty unless a
/// scenario asks for something IPVS cannot do by design; a dataplane bug is a failure, not an exclusion.
const EXCLUDED: &[(&str, &str)] = &[(
    "nodeport_localhost",
    "IPVS serves no NodePorts on loopback (as kube-proxy's IPVS mode): --localhost-nodeports is an nftables/eBPF feature",
)];

/// Kernel modules besides [`vmkit::DATAPLANE_MODULES`]: sctp, so that SCTP sockets work when a scenario has
/// SCTP flows (none has yet: the runner sends TCP, UDP and HTTP).
const EXTRA_MODULES: &[&str] = &["sctp"];

/// Where the scenarios executable and the daemon go in the guest (side by side: `daemon::binary()`).
const GUEST_DIR: &str = "opt/switchyard";

/// Run in the node namespace when a scenario fails (`SWITCHYARD_SCENARIO_DIAGNOSE`, see the runner).
const DIAGNOSE: &str = "echo '## ipvs-list'; ipvs-list 2>&1; echo '## ip addr show dev switchyard-ipvs'; \
                        ip addr show dev switchyard-ipvs 2>&1; echo '## sysctls'; \
                        for s in /proc/sys/net/ipv4/vs/conntrack /proc/sys/net/ipv4/ip_forward \
                        /proc/sys/net/ipv4/conf/all/route_localnet; do echo \"$s=$(cat $s)\"; done";

/// The rest of the guest's `/init` (after [`vmkit::INIT_PREAMBLE`] and [`vmkit::INIT_DAEMON_SETUP`]). Each
/// scenario test runs in a process (session) of its own under a deadline: one that is still running after
/// `/deadline` seconds is reported (`SWITCHYARD-SCENARIO-TIMEOUT NAME`) with the kernel stacks of its threads
/// and a backtrace of every CPU (sysrq `l` and `w`, on the kernel's console), killed with everything it
/// started, and the next one runs. If even SIGKILL cannot end it (a task stuck in the kernel), the guest
/// reports failure and powers off. So a run always ends with a verdict per scenario.
///
/// `/tmp` stays the initramfs's own (writable) directory: the scenario files are packed at their host path,
/// which is under `/tmp` when the workspace is (a CI clone), and a tmpfs mounted there would hide them.
const INIT: &str = r##"
cd /
export SWITCHYARD_DATAPLANE=ipvs RUST_BACKTRACE=1 HOME=/tmp
export SWITCHYARD_SCENARIO_TIME_SCALE="$(cat /time-scale)"
export SWITCHYARD_SCENARIO_DIAGNOSE="$(cat /diagnose)"
[ -f /rust-log ] && export RUST_LOG="$(cat /rust-log)"
deadline="$(cat /deadline)"

# The threads of every process in session $1: state, wait channel, kernel stack.
stacks() {
  for d in /proc/[0-9]*; do
    [ "$(awk '{print $6}' "$d/stat" 2>/dev/null)" = "$1" ] || continue
    for t in "$d"/task/[0-9]*; do
      echo "-- thread ${t#/proc/} $(cat "$t/comm" 2>/dev/null) state $(awk '{print $3}' "$t/stat" 2>/dev/null) wchan $(cat "$t/wchan" 2>/dev/null)"
      cat "$t/stack" 2>/dev/null
    done
  done
}

# Every CPU's backtrace and the blocked tasks, on the kernel's console (ttyS1).
sysrq() {
  old="$(cat /proc/sys/kernel/printk)"
  echo 7 > /proc/sys/kernel/printk
  echo l > /proc/sysrq-trigger
  echo w > /proc/sysrq-trigger
  sleep 2
  echo "$old" > /proc/sys/kernel/printk
}

echo "init: modules loaded, running the scenarios on ipvs (time scale $SWITCHYARD_SCENARIO_TIME_SCALE, at most ${deadline}s each)"
status=0
for t in $(cat /tests); do
  setsid /opt/switchyard/scenarios --test-threads=1 --show-output --exact "$t" &
  pid=$!
  (
    sleep "$deadline"
    kill -0 "$pid" 2>/dev/null || exit 0
    echo "SWITCHYARD-SCENARIO-TIMEOUT $t"
    echo "init: $t still running after ${deadline}s; load $(cat /proc/loadavg); its threads:"
    stacks "$pid"
    echo "init: backtraces of every CPU and the blocked tasks are on the kernel's console"
    sysrq
    kill -9 -"$pid"
    sleep 30
    echo "init: $t (session $pid) survived SIGKILL for 30s:"
    stacks "$pid"
    echo "SWITCHYARD-VM-EXIT=124"
    poweroff -f
  ) &
  watchdog=$!
  wait "$pid"
  rc=$?
  kill "$watchdog" 2>/dev/null
  echo "init: $t exited with status $rc"
  [ "$rc" -eq 0 ] || status=1
done
echo "SWITCHYARD-VM-EXIT=$status"
poweroff -f
"##;

/// A scenario test still running after this long in the guest is reported, killed and counted as failed
/// (`SWITCHYARD_VM_SCENARIO_DEADLINE_SECS`). Each takes 10-35 s in the VM on a busy 2-core machine.
const SCENARIO_DEADLINE_SECS: u64 = 180;

/// The guest prints this and the scenario's name when it stopped a scenario at its deadline.
const TIMEOUT_MARKER: &str = "SWITCHYARD-SCENARIO-TIMEOUT ";

fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root");

    let started = Instant::now();
    let built = build(&root);
    let all = list_tests(&built.scenarios);
    for (name, why) in EXCLUDED {
        assert!(all.iter().any(|n| n == name), "EXCLUDED names {name}, which is no scenario test");
        if args.selects(name) {
            println!("scenarios_vm: EXCLUDED {name}: {why}");
        }
    }
    let selected: Vec<String> =
        all.iter().filter(|n| args.selects(n) && !EXCLUDED.iter().any(|(e, _)| e == n)).cloned().collect();
    if args.list {
        for name in &selected {
            println!("{name}: test");
        }
        return;
    }
    if selected.is_empty() {
        println!("\nrunning 0 tests (no scenario matches the filters)\n");
        return;
    }
    println!("\nrunning {} scenario tests on the IPVS dataplane in a VM", selected.len());

    let mut packages = vmkit::PACKAGES.to_vec();
    packages.push(("strip", "binutils"));
    vmkit::ensure_packages(&packages);
    let kernel = vmkit::find_kernel();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ipvs-scenarios-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join("initramfs.cpio");
    let deadline = vmkit::env_secs("SWITCHYARD_VM_SCENARIO_DEADLINE_SECS", SCENARIO_DEADLINE_SECS);
    build_initramfs(&kernel, &built, &dir, &initramfs, &selected, deadline);
    let prepared = started.elapsed();

    let vm = vmkit::Vm {
        memory_mb: 2048,
        cpus: 2,
        timeout: vmkit::timeout(1500),
        // The guest stops a stuck scenario at its deadline and says so: silence longer than that is the
        // guest itself stuck.
        silence: deadline + Duration::from_secs(120),
        hide: None,
    };
    let boot = Instant::now();
    let run = vmkit::boot_vm(&kernel, &initramfs, &vm);
    let wall = boot.elapsed();
    let _ = std::fs::remove_dir_all(&dir);

    // libtest's verdict lines: `test NAME ... ok` (`FAILED`, `ignored[, reason]`), and the guest's deadline.
    let mut results: BTreeMap<String, String> = BTreeMap::new();
    let mut timed_out = Vec::new();
    for line in &run.lines {
        if let Some((name, verdict)) = line.strip_prefix("test ").and_then(|l| l.split_once(" ... ")) {
            if selected.iter().any(|s| s == name) {
                results.insert(name.to_string(), verdict.trim().to_string());
            }
        } else if let Some(name) = line.strip_prefix(TIMEOUT_MARKER) {
            timed_out.push(name.trim().to_string());
        }
    }
    for name in &timed_out {
        results.insert(name.clone(), format!("TIMEOUT, still running after {}s", deadline.as_secs()));
    }
    println!(
        "\nvm: kernel {} | built and packed in {:.1}s | VM wall time {:.1}s (boot to power-off)",
        kernel.version,
        prepared.as_secs_f64(),
        wall.as_secs_f64()
    );
    println!("scenarios on ipvs:");
    let mut bad = Vec::new();
    for name in &selected {
        let verdict = results.get(name).map(String::as_str).unwrap_or("NO RESULT");
        println!("  {:<10} {name}", verdict.split(',').next().unwrap_or(verdict));
        if verdict != "ok" && !verdict.starts_with("ignored") {
            bad.push(name.as_str());
        }
    }
    for (name, why) in EXCLUDED {
        if args.selects(name) {
            println!("  {:<10} {name}: {why}", "EXCLUDED");
        }
    }
    let Some(status) = run.exit else {
        panic!(
            "the VM did not report a result ({}); the guest's output (vm|) and the kernel's console \
             (vm-kernel|) are above",
            run.killed.as_deref().unwrap_or("QEMU exited: the guest crashed or /init failed")
        );
    };
    if !bad.is_empty() || status != 0 {
        eprintln!(
            "vm: the scenarios executable exited with status {status}; not passed: {} (their output, with the \
             daemon's log, nft ruleset and IPVS table, is in the console above)",
            bad.join(", ")
        );
        std::process::exit(1);
    }
    println!("vm: all {} selected scenario tests passed on ipvs", selected.len());
}

/// Host paths of what the guest runs.
struct Built {
    daemon: PathBuf,
    scenarios: PathBuf,
    /// The scenario files' directory, as the scenarios executable knows it (its `CARGO_MANIFEST_DIR`).
    scenario_dir: PathBuf,
    ipvs_list: PathBuf,
}

/// Builds (or finds up to date) the daemon, the scenarios test executable and the `ipvs-list` example.
fn build(root: &Path) -> Built {
    let daemon = cargo_executable(root, &["build", "-p", "switchyard", "--bin", "switchyard"], "switchyard");
    let (scenarios, manifest) =
        cargo_artifact(root, &["test", "-p", "switchyard-tests", "--test", "scenarios", "--no-run"], "scenarios");
    let ipvs_list =
        cargo_executable(root, &["build", "-p", "switchyard-ipvs-netlink", "--example", "ipvs-list"], "ipvs-list");
    let scenario_dir = manifest.parent().expect("a manifest's directory").join("scenarios");
    assert!(scenario_dir.is_dir(), "no scenario directory at {}", scenario_dir.display());
    Built { daemon, scenarios, scenario_dir, ipvs_list }
}

fn cargo_executable(root: &Path, args: &[&str], target: &str) -> PathBuf {
    cargo_artifact(root, args, target).0
}

/// Runs cargo with `--message-format=json` in the workspace and returns the executable of target `target`
/// and its package's manifest path.
fn cargo_artifact(root: &Path, args: &[&str], target: &str) -> (PathBuf, PathBuf) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("scenarios_vm: cargo {}", args.join(" "));
    let mut cmd = Command::new(&cargo);
    // Cargo describes this test's package in the environment; build scripts that read those variables (ring's
    // reads CARGO_PKG_NAME, ...) would see them change and rebuild, then rebuild again in the next plain build.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || ["CARGO_CRATE_NAME", "CARGO_BIN_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*key)
        {
            cmd.env_remove(&*key);
        }
    }
    let out = cmd
        .args(args)
        .args(["--locked", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(out.status.success(), "cargo {} failed ({})", args.join(" "), out.status);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == target {
            if let (Some(exe), Some(manifest)) = (v["executable"].as_str(), v["manifest_path"].as_str()) {
                return (PathBuf::from(exe), PathBuf::from(manifest));
            }
        }
    }
    panic!("cargo {} named no executable for target {target}", args.join(" "))
}

/// The test names of the scenarios executable (`--list`; runs nothing).
fn list_tests(exe: &Path) -> Vec<String> {
    let out = Command::new(exe).args(["--list", "--format", "terse"]).output().expect("scenarios --list");
    assert!(out.status.success(), "{} --list failed", exe.display());
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_suffix(": test")).map(String::from).collect()
}

/// A copy of `exe` without debug info (the debug daemon is over 200 MB), or `exe` itself if strip fails.
fn stripped(exe: &Path, dir: &Path) -> PathBuf {
    let out = dir.join(exe.file_name().unwrap());
    let ok = vmkit::which("strip").is_some_and(|strip| {
        Command::new(strip).arg("--strip-debug").arg("-o").arg(&out).arg(exe).status().is_ok_and(|s| s.success())
    });
    if ok {
        out
    } else {
        println!("scenarios_vm: could not strip {}; packing it whole", exe.display());
        exe.to_path_buf()
    }
}

fn build_initramfs(kernel: &Kernel, built: &Built, dir: &Path, out: &Path, tests: &[String], deadline: Duration) {
    let mut cpio = Cpio::default();
    for d in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "modules", "etc"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.char_device("dev/null", 1, 3);
    cpio.file("init", 0o755, format!("{}{}{INIT}", vmkit::INIT_PREAMBLE, vmkit::INIT_DAEMON_SETUP).into_bytes());
    cpio.file("deadline", 0o644, deadline.as_secs().to_string().into_bytes());
    let which = |name: &str| vmkit::which(name).unwrap_or_else(|| panic!("{name} is not installed"));
    let executables: Vec<(PathBuf, String)> = vec![
        (which("busybox"), "bin/busybox".to_string()),
        (which("ip"), "sbin/ip".to_string()),
        (which("nft"), "sbin/nft".to_string()),
        (stripped(&built.ipvs_list, dir), "sbin/ipvs-list".to_string()),
        (stripped(&built.daemon, dir), format!("{GUEST_DIR}/switchyard")),
        (stripped(&built.scenarios, dir), format!("{GUEST_DIR}/scenarios")),
    ];
    vmkit::pack_executables(&mut cpio, &executables);
    vmkit::pack_modules(&mut cpio, kernel, &[vmkit::DATAPLANE_MODULES, EXTRA_MODULES].concat());
    // The scenario files, where the scenarios executable reads them.
    let guest_dir = built.scenario_dir.to_string_lossy().trim_start_matches('/').to_string();
    cpio.parents(&format!("{guest_dir}/x"));
    for entry in std::fs::read_dir(&built.scenario_dir).expect("the scenario directory") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = format!("{guest_dir}/{}", path.file_name().unwrap().to_string_lossy());
            cpio.file(&name, 0o644, std::fs::read(&path).unwrap());
        }
    }
    // nft names protocols and services through these.
    for f in ["etc/protocols", "etc/services"] {
        cpio.file(f, 0o644, std::fs::read(Path::new("/").join(f)).unwrap_or_else(|e| panic!("/{f}: {e}")));
    }
    cpio.file("tests", 0o644, tests.join("\n").into_bytes());
    let scale = std::env::var("SWITCHYARD_VM_TIME_SCALE").unwrap_or_else(|_| "3".into());
    cpio.file("time-scale", 0o644, scale.into_bytes());
    cpio.file("diagnose", 0o644, DIAGNOSE.as_bytes().to_vec());
    if let Ok(filter) = std::env::var("RUST_LOG") {
        cpio.file("rust-log", 0o644, filter.into_bytes());
    }
    std::fs::write(out, cpio.finish()).unwrap();
}
