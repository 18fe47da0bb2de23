//! Test cgroups and bpffs pin directories: the places a daemon with `--dataplane ebpf` attaches its socket
//! programs and pins its maps, one of each per test, so tests run in parallel without seeing each other.
//!
//! The eBPF dataplane's cgroup programs see only the sockets of processes in the cgroup they are attached to
//! (and its descendants). On a node that is the cgroup2 root: every process, pods included. A test gives the
//! daemon a [`TestCgroup`] of its own instead (`--ebpf-cgroup`) and puts the processes that stand for pods and
//! the node into it; everything else on the machine, the test process included, stays outside. Its maps and
//! links go under a [`PinDir`] of its own (`--bpffs-dir`).
//!
//! Both are RAII guards: dropping a [`PinDir`] unpins everything in it (which detaches the programs) and
//! removes it; dropping a [`TestCgroup`] kills the processes still in it and removes it. Both happen when a
//! test panics too.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The cgroup2 mount point (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid one),
/// from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// A cgroup2 directory directly under the cgroup2 root, removed (with every process in it killed) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/<name>` (keep `name` unique, e.g. from [`crate::netns::unique_prefix`]).
    /// Panics with the reason if there is no cgroup2 mount or the directory cannot be made.
    pub fn new(name: &str) -> TestCgroup {
        crate::netns::require_root();
        let root = cgroup2_root().unwrap_or_else(|| panic!("no cgroup2 mount in /proc/self/mountinfo"));
        let path = root.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// The cgroup's directory (what `--ebpf-cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its `cgroup.procs` file: writing a pid there moves that process into the cgroup.
    pub fn procs(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// The pids of the processes in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let procs = std::fs::read_to_string(self.procs()).unwrap_or_default();
        procs.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }

    /// Moves the calling process into `dir` (a cgroup directory). Sockets the process opens from then on belong
    /// to that cgroup.
    pub fn join(dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once it has no process; killed processes leave it a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    if !thread::panicking() {
                        eprintln!("warning: cannot remove cgroup {}: {e}", self.path.display());
                    }
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// The bpffs mount every pin directory lives under.
pub const BPFFS: &str = "/sys/fs/bpf";

/// A directory for eBPF pins, `/sys/fs/bpf/<name>`, that the code under test creates (the eBPF dataplane
/// mounts the bpffs if there is none). On drop every pin in it is removed, detaching pinned links' programs
/// and freeing pinned maps nothing else holds, and then the directory.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/<name>`; nothing is created (keep `name` unique).
    pub fn new(name: &str) -> PinDir {
        PinDir { path: Path::new(BPFFS).join(name) }
    }

    /// The directory (what `--bpffs-dir` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the pins in it, sorted (empty if the directory does not exist).
    pub fn pins(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.path)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Links first, so no program runs against maps that are going away.
        let mut pins = self.pins();
        pins.sort_by_key(|n| !n.contains("link"));
        for pin in pins {
            let _ = std::fs::remove_file(self.path.join(pin));
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                if !thread::panicking() {
                    eprintln!("warning: cannot remove {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// The pid in a name that [`crate::netns::unique_prefix`] (`sy<pid>c<n>...`) or the eBPF dataplane's own
/// tests (`sye<pid>c<n>...`) made.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sye").or_else(|| name.strip_prefix("sy"))?;
    let (pid, after) = rest.split_once('c')?;
    after.starts_with(|c: char| c.is_ascii_digit()).then(|| pid.parse().ok()).flatten()
}

/// Removes the test cgroups under the cgroup2 root and the pin directories under `/sys/fs/bpf` that test
/// processes no longer alive left behind (killed before their guards could run, e.g. by a timeout). Entries
/// of live processes, other tests running now included, are left alone. Once per process.
pub fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str| owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        if let Some(root) = cgroup2_root() {
            for name in names(&root).into_iter().filter(|n| dead(n)) {
                drop(TestCgroup { path: root.join(name) });
            }
        }
        for name in names(Path::new(BPFFS)).into_iter().filter(|n| dead(n)) {
            drop(PinDir::new(&name));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Leftovers are recognised by the pid in their name only.
    #[test]
    fn owner_pids() {
        assert_eq!(owner_pid("sy123c4-scenario"), Some(123));
        assert_eq!(owner_pid("sy123c4"), Some(123));
        assert_eq!(owner_pid("sye77c0-clients"), Some(77));
        assert_eq!(owner_pid("system.slice"), None);
        assert_eq!(owner_pid("switchyard"), None);
        assert_eq!(owner_pid("sy12cx"), None);
    }
}
