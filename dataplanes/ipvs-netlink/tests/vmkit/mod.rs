//! The host side of the VM tests, shared by `tests/vm` (the dataplane's own cases) and `tests/scenarios_vm.rs`
//! (the dataplane-neutral scenarios against `switchyard run --dataplane ipvs`): installs what is missing,
//! finds Debian's stock kernel and its modules, packs executables (with their shared libraries), modules and
//! files into a `newc` initramfs, boots it under QEMU TCG and streams the serial console until the guest
//! prints [`EXIT_MARKER`] and its exit status.
//!
//! Included with `#[path]` by each test target (a directory with `mod.rs` is no test target of its own).

#![allow(dead_code)] // each test target uses part of it

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
    let secs = std::env::var("SWITCHYARD_VM_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    Duration::from_secs(secs)
}

/// What came out of a VM run.
pub struct Run {
    /// The guest's exit status after [`EXIT_MARKER`], if it printed one.
    pub exit: Option<i32>,
    /// Every console line.
    pub lines: Vec<String>,
}

/// Boots the VM (`memory_mb` of RAM, 2 CPUs) and streams its console to stdout, each line prefixed `vm| `,
/// until it powers off or `timeout` passes (then it is killed). QEMU's own exit status says nothing: the
/// verdict is the exit marker.
pub fn boot_vm(kernel: &Kernel, initramfs: &Path, timeout: Duration, memory_mb: u32) -> Run {
    let mut child = Command::new(which("qemu-system-x86_64").unwrap())
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", &format!("{memory_mb}M")])
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
