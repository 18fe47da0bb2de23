//! The VM tests' machinery, shared by `switchyard-ipvs-netlink`'s `tests/vm` (the netlink client's cases) and
//! `switchyard-ipvs`'s `tests/vm` (the dataplane's cases) and `tests/scenarios_vm.rs` (the dataplane-neutral
//! scenarios against `switchyard run --dataplane ipvs`). Host side: installs what is missing, finds Debian's
//! stock kernel and its modules, packs executables (with their shared libraries), modules and files into a
//! `newc` initramfs, boots it under QEMU TCG and streams its two serial ports until the guest prints
//! [`EXIT_MARKER`] and its exit status. Guest side: [`run_cases`]. Both: [`Args`].
//!
//! Included with `#[path]` by each test target (a directory with `mod.rs` is no test target of its own).

#![allow(dead_code)] // each test target uses part of it

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The guest prints this, then its exit status, as its last word.
pub const EXIT_MARKER: &str = "SWITCHYARD-VM-EXIT=";

/// Debian packages every VM needs, by the file that shows each is installed.
pub const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("ip", "iproute2"),
    ("modprobe", "kmod"),
    ("nft", "nftables"),
];

/// Installs the packages of `packages` that are missing, and a kernel with IPVS if there is none (CI machines
/// start clean). Panics if something is missing and this is not root.
pub fn ensure_packages(packages: &[(&str, &str)]) {
    let mut missing: Vec<&str> =
        packages.iter().filter(|(file, _)| which(file).is_none()).map(|(_, package)| *package).collect();
    if find_kernels().is_empty() {
        missing.push("linux-image-amd64");
    }
    if missing.is_empty() {
        return;
    }
    let is_root = nix::unistd::geteuid().is_root();
    assert!(is_root, "the IPVS VM tests need these packages, and root to install them: {}", missing.join(" "));
    println!("vm: installing {}", missing.join(" "));
    let update = Command::new("apt-get").args(["update", "-qq"]).status().expect("apt-get");
    assert!(update.success(), "apt-get update failed");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("apt-get");
    assert!(status.success(), "apt-get install {} failed", missing.join(" "));
}

/// An executable on `$PATH` or in the usual system directories.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

/// An installed kernel: its version, image and modules directory.
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    pub modules: PathBuf,
}

/// Installed kernels that have IPVS modules, oldest first.
pub fn find_kernels() -> Vec<Kernel> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/lib/modules")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().into_owned();
            let image = PathBuf::from(format!("/boot/vmlinuz-{version}"));
            let modules = e.path();
            (image.is_file() && modules.join("kernel/net/netfilter/ipvs/ip_vs.ko").is_file()).then_some(Kernel {
                version,
                image,
                modules,
            })
        })
        .collect();
    found.sort_by_key(|k| version_key(&k.version));
    found
}

/// The newest installed kernel with IPVS (Debian's linux-image-amd64).
pub fn find_kernel() -> Kernel {
    find_kernels().pop().expect("no kernel with IPVS modules under /boot and /lib/modules (install linux-image-amd64)")
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0)).collect()
}

/// The module files to load for `modules`, dependencies first, each once (`modprobe --show-depends`). Panics
/// if one of `modules` is not found for the kernel. (There is no modprobe in the guest: what is not here
/// cannot be loaded.)
pub fn module_files(kernel: &Kernel, modules: &[&str]) -> Vec<PathBuf> {
    let out = Command::new(which("modprobe").expect("modprobe (kmod)"))
        .args(["--show-depends", "-S", &kernel.version, "-a"])
        .args(modules)
        .output()
        .expect("modprobe");
    assert!(out.status.success(), "modprobe --show-depends failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut seen = BTreeSet::new();
    let mut files = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("insmod") {
            let path = PathBuf::from(words.next().expect("insmod line without a path"));
            assert!(path.starts_with(&kernel.modules), "{} is outside {}", path.display(), kernel.modules.display());
            if seen.insert(path.clone()) {
                files.push(path);
            }
        }
    }
    for m in modules {
        assert!(
            files.iter().any(|f| f.file_stem().is_some_and(|s| s == *m)),
            "module {m} not found for {}",
            kernel.version
        );
    }
    files
}

/// Packs the module files as `modules/NN-name.ko`, in load order (the guest's `/init` loads `/modules/*.ko`).
pub fn pack_modules(cpio: &mut Cpio, kernel: &Kernel, modules: &[&str]) {
    for (i, module) in module_files(kernel, modules).iter().enumerate() {
        let name = format!("modules/{i:02}-{}", module.file_name().unwrap().to_string_lossy());
        cpio.file(&name, 0o644, std::fs::read(module).unwrap());
    }
}

/// The shared libraries an executable needs (with the dynamic loader), by `ldd`. None for a static one.
pub fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(exe).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect()
}

/// Packs executables (host path, path in the guest without the leading `/`) and every shared library they
/// need, at the library's own path.
pub fn pack_executables(cpio: &mut Cpio, executables: &[(PathBuf, String)]) {
    let mut all: Vec<(PathBuf, String)> = executables.to_vec();
    let mut libraries = BTreeSet::new();
    for (exe, _) in executables {
        libraries.extend(shared_libraries(exe));
    }
    all.extend(libraries.into_iter().map(|lib| {
        let name = lib.to_string_lossy().trim_start_matches('/').to_string();
        (lib, name)
    }));
    for (from, to) in all {
        let canonical = std::fs::canonicalize(&from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        cpio.parents(&to);
        cpio.file(&to, 0o755, std::fs::read(&canonical).unwrap_or_else(|e| panic!("{}: {e}", canonical.display())));
    }
}

/// The VM's wall-time bound: `SWITCHYARD_VM_TIMEOUT_SECS`, else `default` seconds.
pub fn timeout(default: u64) -> Duration {
    env_secs("SWITCHYARD_VM_TIMEOUT_SECS", default)
}

/// `var` as a number of seconds, else `default`.
pub fn env_secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default))
}

/// The first lines of every guest's `/init`: the usual mounts, busybox's applets, and the init's own output
/// moved to the first serial port (`/dev/ttyS0`, the host's pipe), away from the kernel's console on the
/// second one (see [`boot_vm`]). Kernel messages and the tests' output then never share a line.
pub const INIT_PREAMBLE: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/null >/dev/ttyS0 2>&1
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
"#;

/// Kernel modules the IPVS dataplane (`switchyard run --dataplane ipvs`) needs: IPVS and the schedulers
/// Switchyard offers, dummy (the Service addresses), veth (the kit's links), nf_tables and the expressions the
/// companion table uses, and ctnetlink (stale UDP conntrack cleanup). Dependencies (nf_conntrack, nf_nat,
/// nf_reject_*, ...) come from `modprobe --show-depends`.
pub const DATAPLANE_MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_mh",
    "veth",
    "dummy",
    "nf_tables",
    "nft_ct",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_fib_inet",
    "nft_masq",
    "nft_nat",
    "nft_chain_nat",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
    "nft_reject_inet",
    "nf_conntrack_netlink",
];

/// What a guest that runs the daemon does after [`INIT_PREAMBLE`]: a writable `/run` for `ip netns`, the
/// packed modules loaded (see [`pack_modules`]), loopback up.
pub const INIT_DAEMON_SETUP: &str = r#"
mount -t tmpfs tmpfs /run
mkdir -p /run/netns /var
ln -s /run /var/run
for m in /modules/*.ko; do
  insmod "$m" || echo "init: insmod $m failed"
done
ip link set lo up
"#;

/// How to run a VM.
pub struct Vm {
    /// RAM in MiB.
    pub memory_mb: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The whole run's bound (boot to power-off).
    pub timeout: Duration,
    /// The longest the guest may stay silent on its output port (kernel messages do not count): a guest
    /// whose kernel is stuck writes nothing, and is killed after this long rather than at `timeout`.
    pub silence: Duration,
    /// Guest lines starting with this are kept in [`Run::lines`] but not printed (bulk data).
    pub hide: Option<&'static str>,
}

/// What came out of a VM run.
pub struct Run {
    /// The guest's exit status after [`EXIT_MARKER`], if it printed one.
    pub exit: Option<i32>,
    /// Every line of the guest's output port (ttyS0).
    pub lines: Vec<String>,
    /// Every line of the kernel's console (ttyS1).
    pub kernel_lines: Vec<String>,
    /// Why the host stopped the VM, if it did.
    pub killed: Option<String>,
}

/// Boots the VM and streams what it writes to stdout: the guest's output port (ttyS0, where [`INIT_PREAMBLE`]
/// sends `/init`'s output) prefixed `vm| `, and the kernel's console (ttyS1, `console=ttyS1`) prefixed
/// `vm-kernel| `. Stops when the guest powers off, or kills QEMU when `vm.timeout` passes or the guest's
/// output port stays silent for `vm.silence`. QEMU's own exit status says nothing: the verdict is the exit
/// marker. `SWITCHYARD_VM_APPEND` adds to the kernel command line (e.g. `loglevel=7` while debugging).
pub fn boot_vm(kernel: &Kernel, initramfs: &Path, vm: &Vm) -> Run {
    let console = initramfs.with_extension("console.log");
    let _ = std::fs::remove_file(&console);
    // loglevel=5: warnings and stack traces (KERN_DEFAULT) reach the console, so a soft lockup or RCU stall
    // shows where the CPU was.
    let append = format!(
        "console=ttyS1 loglevel=5 panic=-1 mitigations=off edd=off {}",
        std::env::var("SWITCHYARD_VM_APPEND").unwrap_or_default()
    );
    let cpus = std::env::var("SWITCHYARD_VM_CPUS").ok().and_then(|s| s.parse().ok()).unwrap_or(vm.cpus);
    let mut child = Command::new(which("qemu-system-x86_64").unwrap())
        .args(["-accel", "tcg", "-cpu", "max", "-smp", &cpus.to_string(), "-m", &format!("{}M", vm.memory_mb)])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(append.trim())
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-serial"])
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let guest_tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            if guest_tx.send((Port::Guest, printable(&String::from_utf8_lossy(&line)))).is_err() {
                break;
            }
        }
        let _ = guest_tx.send((Port::Closed, String::new()));
    });
    let stop_tailing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tail = {
        let stop = stop_tailing.clone();
        let console = console.clone();
        std::thread::spawn(move || tail_file(&console, &stop, |line| tx.send((Port::Kernel, line)).is_ok()))
    };

    let started = Instant::now();
    let mut deadline = started + vm.timeout;
    let mut last_output = started;
    let mut run = Run { exit: None, lines: Vec::new(), kernel_lines: Vec::new(), killed: None };
    let mut out = std::io::stdout().lock();
    loop {
        let now = Instant::now();
        let wake = if run.exit.is_some() { deadline } else { deadline.min(last_output + vm.silence) };
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok((Port::Guest, line)) => {
                if !vm.hide.is_some_and(|h| line.starts_with(h)) {
                    let _ = writeln!(out, "vm| {line}");
                }
                last_output = Instant::now();
                if let Some(code) = line.strip_prefix(EXIT_MARKER) {
                    run.exit = code.trim().parse().ok().or(Some(-1));
                    // The verdict is in; give the power-off a little time, no more.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(30));
                }
                run.lines.push(line);
            }
            Ok((Port::Kernel, line)) => {
                let _ = writeln!(out, "vm-kernel| {line}");
                run.kernel_lines.push(line);
            }
            Ok((Port::Closed, _)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if now < deadline && now < last_output + vm.silence && run.exit.is_none() {
                    continue;
                }
                if run.exit.is_none() {
                    let why = if now >= deadline {
                        format!("no verdict within {}s", vm.timeout.as_secs())
                    } else {
                        format!("the guest wrote nothing for {}s", vm.silence.as_secs())
                    };
                    let _ = writeln!(out, "vm: {why}, killing QEMU");
                    run.killed = Some(why);
                }
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    // The kernel's last words, if the tail has not printed them yet.
    stop_tailing.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = tail.join();
    while let Ok((port, line)) = rx.try_recv() {
        match port {
            Port::Guest => {
                if !vm.hide.is_some_and(|h| line.starts_with(h)) {
                    let _ = writeln!(out, "vm| {line}");
                }
                run.lines.push(line);
            }
            Port::Kernel => {
                let _ = writeln!(out, "vm-kernel| {line}");
                run.kernel_lines.push(line);
            }
            Port::Closed => {}
        }
    }
    let _ = std::fs::remove_file(&console);
    run
}

/// Where a console line came from.
enum Port {
    /// ttyS0: `/init` and the tests.
    Guest,
    /// ttyS1: the kernel's console.
    Kernel,
    /// ttyS0 reached its end (QEMU exited).
    Closed,
}

/// Follows `path` as QEMU writes it, giving `each` every complete line, until `stop` is set (then the rest,
/// complete or not) or `each` returns false.
fn tail_file(path: &Path, stop: &std::sync::atomic::AtomicBool, mut each: impl FnMut(String) -> bool) {
    use std::io::Read;
    let mut file = None;
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let stopping = stop.load(std::sync::atomic::Ordering::SeqCst);
        if file.is_none() {
            file = std::fs::File::open(path).ok();
        }
        let mut read_any = false;
        if let Some(f) = file.as_mut() {
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                read_any = true;
                pending.extend_from_slice(&buf[..n]);
            }
        }
        while let Some(at) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            if !each(printable(&String::from_utf8_lossy(&line))) {
                return;
            }
        }
        if stopping {
            if !pending.is_empty() {
                each(printable(&String::from_utf8_lossy(&pending)));
            }
            return;
        }
        if !read_any {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The line without the firmware's terminal escapes and other control characters.
fn printable(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte; other escapes: ESC and one character.
            if chars.next_if_eq(&'[').is_some() {
                while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
            } else {
                chars.next();
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// A `newc` cpio archive, as the kernel unpacks an initramfs.
#[derive(Default)]
pub struct Cpio {
    data: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.inode += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }

    /// A directory (once).
    pub fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    /// Creates the directories above `path`.
    pub fn parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"));
        }
    }

    /// A regular file (its directories must be there: see [`Cpio::parents`]).
    pub fn file(&mut self, name: &str, perm: u32, body: Vec<u8>) {
        self.entry(name, 0o100000 | perm, (0, 0), &body);
    }

    /// A symbolic link `name` -> `target`.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    /// A character device node.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    /// The archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}

/// libtest-like command-line arguments: filters, `--skip`, `--exact`, `--list`; other flags are accepted and
/// ignored (cargo passes `--test-threads`, `--nocapture`, ...).
#[derive(Debug, Default, Clone)]
pub struct Args {
    pub filters: Vec<String>,
    pub skip: Vec<String>,
    pub exact: bool,
    pub list: bool,
}

impl Args {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Args {
        let mut out = Args::default();
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--list" => out.list = true,
                "--exact" => out.exact = true,
                "--skip" => out.skip.extend(args.next()),
                "--test-threads" | "--color" | "--format" | "--logfile" | "-Z" | "--shuffle-seed" => {
                    args.next();
                }
                _ if a.starts_with("--skip=") => out.skip.push(a["--skip=".len()..].to_string()),
                _ if a.starts_with('-') => {}
                _ => out.filters.push(a),
            }
        }
        out
    }

    /// Whether the test `name` is selected.
    pub fn selects(&self, name: &str) -> bool {
        let matches = |f: &String| if self.exact { name == f } else { name.contains(f.as_str()) };
        (self.filters.is_empty() || self.filters.iter().any(matches)) && !self.skip.iter().any(matches)
    }

    /// One argument a line, for the guest to [`parse`](Args::parse) again.
    pub fn to_lines(&self) -> String {
        let mut lines = Vec::new();
        if self.exact {
            lines.push("--exact".to_string());
        }
        for s in &self.skip {
            lines.push(format!("--skip={s}"));
        }
        lines.extend(self.filters.iter().cloned());
        lines.join("\n")
    }
}

/// A guest's test case: its name and its body (which panics to fail).
pub type Case = (&'static str, fn());

/// In the guest: runs `cases`, each in a thread of its own named after it (so that each can enter network
/// namespaces of its own), `workers` at a time, then those named in `alone` one by one. Prints libtest's
/// `test NAME ... ok` / `FAILED` lines and a summary, and exits non-zero if a case failed, or as soon as the
/// run has taken longer than `deadline` (naming the cases still running).
pub fn run_cases(cases: Vec<Case>, alone: &[&str], workers: usize, deadline: Duration) {
    let total = cases.len();
    let (alone, together): (Vec<_>, Vec<_>) = cases.into_iter().partition(|(name, _)| alone.contains(name));
    println!("guest: running {total} cases");
    let started = Instant::now();
    let failed: Names = Arc::default();
    let running: Running = Arc::default();
    let watched = running.clone();
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        println!("guest: still running after {}s: {:?}", deadline.as_secs(), watched.lock().unwrap());
        println!("guest: test result: FAILED (deadline)");
        std::process::exit(1);
    });
    run_on_workers(together, workers, &failed, &running);
    run_on_workers(alone, 1, &failed, &running);
    let failed = failed.lock().unwrap();
    println!(
        "\nguest: test result: {}. {} passed; {} failed; finished in {:.1}s",
        if failed.is_empty() { "ok" } else { "FAILED" },
        total - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        println!("guest: failures: {}", failed.join(", "));
        std::process::exit(1);
    }
}

type Names = Arc<Mutex<Vec<&'static str>>>;
type Running = Arc<Mutex<BTreeSet<&'static str>>>;

/// Runs the cases on `workers` threads, each case in a thread of its own; records the failed ones.
fn run_on_workers(cases: Vec<Case>, workers: usize, failed: &Names, running: &Running) {
    let queue = Arc::new(Mutex::new(VecDeque::from(cases)));
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let (queue, failed, running) = (queue.clone(), failed.clone(), running.clone());
            std::thread::spawn(move || loop {
                let Some((name, case)) = queue.lock().unwrap().pop_front() else { break };
                let t = Instant::now();
                running.lock().unwrap().insert(name);
                let outcome = std::thread::Builder::new().name(name.to_string()).spawn(case).unwrap().join();
                running.lock().unwrap().remove(name);
                let secs = t.elapsed().as_secs_f64();
                match outcome {
                    Ok(()) => println!("test {name} ... ok ({secs:.1}s)"),
                    Err(_) => {
                        println!("test {name} ... FAILED ({secs:.1}s)");
                        failed.lock().unwrap().push(name);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}
