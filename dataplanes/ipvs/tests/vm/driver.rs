//! The host side: builds the initramfs, boots the VM, reads the verdict from the serial console.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{cases, Args, EXIT_MARKER};

/// Debian packages the VM needs, by the file that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("ip", "iproute2"),
    ("modprobe", "kmod"),
    ("nft", "nftables"),
];

/// Kernel modules loaded at boot: IPVS and every scheduler, dummy for the Service addresses, nf_tables and
/// the expressions the companion table uses, veth for the traffic tests. Their dependencies come from
/// `modprobe --show-depends`. (There is no modprobe in the guest: what is not here cannot be loaded.)
const MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_lblc",
    "ip_vs_lblcr",
    "ip_vs_dh",
    "ip_vs_sh",
    "ip_vs_sed",
    "ip_vs_nq",
    "ip_vs_fo",
    "ip_vs_ovf",
    "ip_vs_mh",
    "veth",
    "dummy",
    "nf_tables",
    "nft_ct",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_masq",
    "nft_nat",
    "nft_chain_nat",
    "nft_reject_ipv4",
    "nft_reject_ipv6",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
for m in /modules/*.ko; do
  insmod "$m" || echo "init: insmod $m failed"
done
ip link set lo up
echo "init: modules loaded, starting the tests"
SWITCHYARD_IPVS_DP_GUEST=1 /switchyard-ipvs-dp-vm
echo "SWITCHYARD-VM-EXIT=$?"
poweroff -f
"#;

pub fn main() {
    let args = Args::parse(std::env::args().skip(1));
    let selected: Vec<&str> = cases::CASES.iter().map(|(name, _)| *name).filter(|n| args.selects(n)).collect();
    if args.list {
        for name in &selected {
            println!("{name}: test");
        }
        return;
    }
    if selected.is_empty() {
        println!("\nrunning 0 tests (no VM case matches the filters)\n");
        return;
    }
    println!("\nrunning {} IPVS dataplane cases in a VM", selected.len());

    let started = Instant::now();
    ensure_packages();
    let kernel = find_kernel();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ipvs-dp-vm");
    std::fs::create_dir_all(&dir).unwrap();
    let initramfs = dir.join(format!("initramfs-{}.cpio", std::process::id()));
    build_initramfs(&kernel, &initramfs, &args);
    let prepared = started.elapsed();

    let timeout = std::env::var("SWITCHYARD_VM_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    let boot = Instant::now();
    let run = boot_vm(&kernel, &initramfs, Duration::from_secs(timeout));
    let wall = boot.elapsed();
    let _ = std::fs::remove_file(&initramfs);

    println!(
        "\nvm: kernel {} | initramfs ready in {:.1}s | VM wall time {:.1}s (boot to power-off)",
        kernel.version,
        prepared.as_secs_f64(),
        wall.as_secs_f64()
    );
    let Some(status) = run.exit else {
        panic!(
            "the VM did not report a result within {timeout}s (timed out, crashed, or /init failed); \
             the serial console is above"
        );
    };
    if status != 0 {
        eprintln!("vm: the guest test program exited with status {status}");
        std::process::exit(1);
    }
    println!("vm: all {} cases passed", selected.len());
}

/// Installs the packages that are missing (CI machines start clean).
fn ensure_packages() {
    let mut missing: Vec<&str> =
        PACKAGES.iter().filter(|(file, _)| which(file).is_none()).map(|(_, package)| *package).collect();
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

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file());
    found
}

struct Kernel {
    version: String,
    image: PathBuf,
    modules: PathBuf,
}

/// Installed kernels that have IPVS modules, oldest first.
fn find_kernels() -> Vec<Kernel> {
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
fn find_kernel() -> Kernel {
    find_kernels().pop().expect("no kernel with IPVS modules under /boot and /lib/modules (install linux-image-amd64)")
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(0)).collect()
}

/// The modules to load, dependencies first, each once.
fn module_files(kernel: &Kernel) -> Vec<PathBuf> {
    let out = Command::new(which("modprobe").expect("modprobe (kmod)"))
        .args(["--show-depends", "-S", &kernel.version, "-a"])
        .args(MODULES)
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
    for m in MODULES {
        assert!(
            files.iter().any(|f| f.file_stem().is_some_and(|s| s == *m)),
            "module {m} not found for {}",
            kernel.version
        );
    }
    files
}

/// The shared libraries an executable needs (with the dynamic loader), by `ldd`. None for a static one.
fn shared_libraries(exe: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(exe).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect()
}

fn build_initramfs(kernel: &Kernel, out: &Path, args: &Args) {
    let mut cpio = Cpio::default();
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "run", "modules", "etc"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.char_device("dev/null", 1, 3);
    cpio.file("init", 0o755, INIT.as_bytes().to_vec());

    let mut executables = vec![
        (which("busybox").unwrap(), "bin/busybox".to_string()),
        (which("ip").unwrap(), "sbin/ip".to_string()),
        (which("nft").unwrap(), "sbin/nft".to_string()),
        (std::env::current_exe().unwrap(), "switchyard-ipvs-dp-vm".to_string()),
    ];
    let mut libraries = BTreeSet::new();
    for (exe, _) in &executables {
        libraries.extend(shared_libraries(exe));
    }
    executables.extend(libraries.into_iter().map(|lib| {
        let name = lib.to_string_lossy().trim_start_matches('/').to_string();
        (lib, name)
    }));
    for (from, to) in executables {
        let canonical = std::fs::canonicalize(&from).unwrap();
        cpio.parents(&to);
        cpio.file(&to, 0o755, std::fs::read(&canonical).unwrap_or_else(|e| panic!("{}: {e}", canonical.display())));
    }
    for (i, module) in module_files(kernel).iter().enumerate() {
        let name = format!("modules/{i:02}-{}", module.file_name().unwrap().to_string_lossy());
        cpio.file(&name, 0o644, std::fs::read(module).unwrap());
    }
    // nft names protocols and services through these.
    for f in ["etc/protocols", "etc/services"] {
        cpio.file(f, 0o644, std::fs::read(Path::new("/").join(f)).unwrap_or_else(|e| panic!("/{f}: {e}")));
    }
    cpio.file("args", 0o644, args.to_lines().into_bytes());
    // `SWITCHYARD_VM_LOG=switchyard_ipvs=debug` on the host: the guest logs the dataplane with this filter.
    if let Ok(filter) = std::env::var("SWITCHYARD_VM_LOG") {
        cpio.file("log", 0o644, filter.into_bytes());
    }
    std::fs::write(out, cpio.finish()).unwrap();
}

struct Run {
    exit: Option<i32>,
    lines: Vec<String>,
}

/// Boots the VM and streams its console to stdout until it powers off or `timeout` passes (then it is
/// killed). QEMU's own exit status says nothing: the verdict is the exit marker.
fn boot_vm(kernel: &Kernel, initramfs: &Path, timeout: Duration) -> Run {
    let mut child = Command::new(which("qemu-system-x86_64").unwrap())
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1G"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-x86_64");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let line = printable(&String::from_utf8_lossy(&line));
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut deadline = Instant::now() + timeout;
    let mut run = Run { exit: None, lines: Vec::new() };
    let mut out = std::io::stdout().lock();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(out, "vm| {line}");
                if let Some(code) = line.strip_prefix(EXIT_MARKER) {
                    run.exit = code.trim().parse().ok().or(Some(-1));
                    // The verdict is in; give the power-off a little time, no more.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(30));
                }
                run.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if run.exit.is_none() {
                    let _ = writeln!(out, "vm: no verdict after {}s, killing QEMU", timeout.as_secs());
                }
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    run
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
struct Cpio {
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

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    /// Creates the directories above `path`.
    fn parents(&mut self, path: &str) {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            self.dir(&parts[..i].join("/"));
        }
    }

    fn file(&mut self, name: &str, perm: u32, body: Vec<u8>) {
        self.entry(name, 0o100000 | perm, (0, 0), &body);
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.data
    }
}
