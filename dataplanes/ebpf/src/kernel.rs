//! The one door to the kernel: the bpffs directory, loading and attaching the programs, the maps.
//!
//! Everything Switchyard owns is pinned in one bpffs directory (`/sys/fs/bpf/switchyard/` by default): the
//! maps under their versioned names (`sy_v1_services`, ...) and one link per program
//! (`sy_v1_link_connect4`, ...). A pinned link keeps its program attached to the cgroup after the daemon
//! exits, and pinned maps keep their contents, so a restarted daemon opens them ([`Kernel::open`]) and
//! changes nothing. [`Kernel::attach`] loads the object only for what is missing; [`remove`] unpins
//! everything, which detaches the programs and frees the maps.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError};
use aya::{EbpfLoader, Pod};
use switchyard_ebpf_common::{
    AffinityKey, AffinityValue, BackendStats, BackendValue, ReverseValue, ServiceKey, ServiceMeta, ServiceValue,
    SlotKey, SockAddrKey, SockValue, AFFINITY_MAP, BACKENDS_MAP, CONNS_MAP, MAP_PREFIX, META_MAP, REVERSE_MAP, RR_MAP,
    SERVICES_MAP, SLOTS_MAP, SOCKETS_MAP, STATS_MAP, UDP_FLOWS_MAP,
};

/// The kernel programs, built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/switchyard-ebpf-programs"));

/// The bpffs magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// The cgroup2 magic number.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// How a program attaches.
#[derive(Clone, Copy, Debug)]
enum Hook {
    SockAddr,
    Sock,
    Skb(CgroupSkbAttachType),
}

/// Every program: its name in the object, the name of its pinned link, how it attaches.
const PROGRAMS: [(&str, &str, Hook); 11] = [
    ("sy_connect4", "sy_v1_link_connect4", Hook::SockAddr),
    ("sy_connect6", "sy_v1_link_connect6", Hook::SockAddr),
    ("sy_sendmsg4", "sy_v1_link_sendmsg4", Hook::SockAddr),
    ("sy_sendmsg6", "sy_v1_link_sendmsg6", Hook::SockAddr),
    ("sy_recvmsg4", "sy_v1_link_recvmsg4", Hook::SockAddr),
    ("sy_recvmsg6", "sy_v1_link_recvmsg6", Hook::SockAddr),
    ("sy_getpeername4", "sy_v1_link_getpeername4", Hook::SockAddr),
    ("sy_getpeername6", "sy_v1_link_getpeername6", Hook::SockAddr),
    ("sy_sock_release", "sy_v1_link_sock_release", Hook::Sock),
    ("sy_skb_egress", "sy_v1_link_skb_egress", Hook::Skb(CgroupSkbAttachType::Egress)),
    ("sy_skb_ingress", "sy_v1_link_skb_ingress", Hook::Skb(CgroupSkbAttachType::Ingress)),
];

/// A kernel failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A bpf() call, a file operation or a program load failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something the dataplane needs is missing or wrong (no bpffs, no cgroup2, a foreign map).
    #[error("{0}")]
    Setup(String),
}

impl KernelError {
    fn io(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        // aya's errors keep the errno in their source: say all of it.
        let mut text = source.to_string();
        let mut cause = source.source();
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        KernelError::Io { what: what.into(), source: io::Error::other(text) }
    }
}

type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false)
}

/// Makes sure `pin_dir` can hold pins: mounts a bpffs on `/sys/fs/bpf` if `pin_dir` is under it and there
/// is none, then creates the directory.
pub fn prepare_pin_dir(pin_dir: &Path) -> Result<()> {
    let sys_bpf = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(sys_bpf) && !is_bpffs(sys_bpf) {
        std::fs::create_dir_all(sys_bpf).map_err(|e| KernelError::io("creating /sys/fs/bpf", e))?;
        // Two loaders starting at once must not both mount: the second bpffs would hide the pins made in the
        // first. Lock the mount point itself, then look again: a loader that opens it after the mount gets the
        // bpffs root (another inode, no wait) and finds it mounted.
        let dir = File::open(sys_bpf).map_err(|e| KernelError::io("opening /sys/fs/bpf", e))?;
        let _lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| KernelError::io("locking /sys/fs/bpf", e))?;
        if !is_bpffs(sys_bpf) {
            nix::mount::mount(Some("bpffs"), sys_bpf, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
                .map_err(|e| KernelError::io("mounting a bpffs on /sys/fs/bpf", e))?;
        }
    }
    std::fs::create_dir_all(pin_dir).map_err(|e| KernelError::io(format!("creating {}", pin_dir.display()), e))?;
    if !is_bpffs(pin_dir) {
        return Err(KernelError::Setup(format!(
            "{} is not on a bpffs: mount one (mount -t bpf bpffs /sys/fs/bpf) or choose another pin directory",
            pin_dir.display()
        )));
    }
    Ok(())
}

/// The cgroup2 mount point of this host (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one), from `/proc/self/mountinfo`.
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

/// The maps, opened from their pins.
pub struct Maps {
    /// [`SERVICES_MAP`].
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    /// [`SLOTS_MAP`].
    pub slots: HashMap<MapData, SlotKey, u32>,
    /// [`BACKENDS_MAP`].
    pub backends: HashMap<MapData, u32, BackendValue>,
    /// [`META_MAP`].
    pub meta: HashMap<MapData, u32, ServiceMeta>,
    /// [`RR_MAP`].
    pub rr: HashMap<MapData, u32, u64>,
    /// [`CONNS_MAP`].
    pub conns: HashMap<MapData, u32, u64>,
    /// [`STATS_MAP`].
    pub stats: PerCpuHashMap<MapData, u32, BackendStats>,
    /// [`AFFINITY_MAP`].
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// [`SOCKETS_MAP`].
    pub sockets: HashMap<MapData, u64, SockValue>,
    /// [`REVERSE_MAP`].
    pub reverse: HashMap<MapData, SockAddrKey, ReverseValue>,
    /// [`UDP_FLOWS_MAP`].
    pub udp_flows: HashMap<MapData, SockAddrKey, u32>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| KernelError::io(format!("opening {}", path.display()), e))?;
    Map::from_map_data(data).map_err(|e| KernelError::io(format!("opening {}", path.display()), e))
}

fn typed<T: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> Result<T> {
    let map = open_map(dir, name)?;
    T::try_from(map).map_err(|e| KernelError::Setup(format!("{}/{name} is not Switchyard's map: {e}", dir.display())))
}

impl Maps {
    /// Opens every map from its pin in `dir`.
    pub fn open(dir: &Path) -> Result<Maps> {
        Ok(Maps {
            services: typed(dir, SERVICES_MAP)?,
            slots: typed(dir, SLOTS_MAP)?,
            backends: typed(dir, BACKENDS_MAP)?,
            meta: typed(dir, META_MAP)?,
            rr: typed(dir, RR_MAP)?,
            conns: typed(dir, CONNS_MAP)?,
            stats: typed(dir, STATS_MAP)?,
            affinity: typed(dir, AFFINITY_MAP)?,
            sockets: typed(dir, SOCKETS_MAP)?,
            reverse: typed(dir, REVERSE_MAP)?,
            udp_flows: typed(dir, UDP_FLOWS_MAP)?,
        })
    }

    /// Whether every map is pinned in `dir`.
    pub fn pinned(dir: &Path) -> bool {
        switchyard_ebpf_common::ALL_MAPS.iter().all(|m| dir.join(m).exists())
    }
}

/// Every entry of a hash map (entries that vanish while iterating are skipped).
pub fn entries<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>) -> Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    for item in map.iter() {
        match item {
            Ok(kv) => out.push(kv),
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(KernelError::io("reading a map", e)),
        }
    }
    Ok(out)
}

/// The value under `key`, if any.
pub fn lookup<K: Pod, V: Pod>(map: &HashMap<MapData, K, V>, key: &K) -> Result<Option<V>> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(KernelError::io("looking up a map entry", e)),
    }
}

/// Inserts or replaces an entry.
pub fn put<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, name: &str, key: &K, value: &V) -> Result<()> {
    retry_enomem(|| map.insert(key, value, 0)).map_err(|e| KernelError::io(format!("writing {name}"), e))
}

/// Runs a map insert again while it fails with ENOMEM, a few times with growing pauses. Hash maps without
/// preallocation take their elements from per-CPU caches that the kernel refills asynchronously
/// (bpf_mem_alloc): a burst of inserts (a full sync of 10,000 Services) can find them empty.
fn retry_enomem(mut insert: impl FnMut() -> std::result::Result<(), MapError>) -> std::result::Result<(), MapError> {
    let mut wait = std::time::Duration::from_millis(1);
    for _ in 0..8 {
        match insert() {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::ENOMEM) => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    insert()
}

/// Deletes an entry; an entry already gone is success.
pub fn delete<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, name: &str, key: &K) -> Result<()> {
    match map.remove(key) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(e) => Err(KernelError::io(format!("deleting from {name}"), e)),
    }
}

/// Creates a backend's per-CPU counters at zero.
pub fn zero_stats(map: &mut PerCpuHashMap<MapData, u32, BackendStats>, id: u32) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| KernelError::io(what, e))?;
    let values = PerCpuValues::try_from(vec![BackendStats::default(); cpus])
        .map_err(|e| KernelError::io("per-CPU values", e))?;
    stats_map_insert(map, id, values)
}

fn stats_map_insert(
    map: &mut PerCpuHashMap<MapData, u32, BackendStats>,
    id: u32,
    values: PerCpuValues<BackendStats>,
) -> Result<()> {
    retry_enomem(|| {
        let copy = PerCpuValues::try_from(values.iter().copied().collect::<Vec<_>>())?;
        map.insert(id, copy, 0)
    })
    .map_err(|e| KernelError::io(format!("writing {STATS_MAP}"), e))
}

/// A backend's counters summed over the CPUs (zero if it has none).
pub fn stats_sum(map: &PerCpuHashMap<MapData, u32, BackendStats>, id: u32) -> Result<BackendStats> {
    match map.get(&id, 0) {
        Ok(values) => Ok(values.iter().fold(BackendStats::default(), |a, v| BackendStats {
            connections: a.connections + v.connections,
            packets: a.packets + v.packets,
            bytes: a.bytes + v.bytes,
        })),
        Err(MapError::KeyNotFound) => Ok(BackendStats::default()),
        Err(e) => Err(KernelError::io(format!("reading {STATS_MAP}"), e)),
    }
}

/// Deletes a backend's per-CPU counters; already gone is success.
pub fn delete_stats(map: &mut PerCpuHashMap<MapData, u32, BackendStats>, id: u32) -> Result<()> {
    match map.remove(&id) {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(e) => Err(KernelError::io(format!("deleting from {STATS_MAP}"), e)),
    }
}

/// The programs to attach: all of them, or all but the packet counters.
fn wanted(count_packets: bool) -> impl Iterator<Item = &'static (&'static str, &'static str, Hook)> {
    PROGRAMS.iter().filter(move |(_, _, hook)| count_packets || !matches!(hook, Hook::Skb(_)))
}

/// Makes sure the maps exist in `pin_dir` and every program (the packet counters only if `count_packets`)
/// is attached to `cgroup` through a link pinned there. What is already pinned is kept as it is (a restart
/// changes nothing); the object is loaded only if something is missing. Packet counters attached earlier
/// are detached when `count_packets` is off. Returns how many programs were attached now.
pub fn attach(pin_dir: &Path, cgroup: &Path, count_packets: bool) -> Result<usize> {
    prepare_pin_dir(pin_dir)?;
    if !count_packets {
        for (_, link, _) in PROGRAMS.iter().filter(|(_, _, hook)| matches!(hook, Hook::Skb(_))) {
            match std::fs::remove_file(pin_dir.join(link)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(KernelError::io(format!("unpinning {link}"), e)),
            }
        }
    }
    let missing: Vec<_> = wanted(count_packets).filter(|(_, link, _)| !pin_dir.join(link).exists()).collect();
    if missing.is_empty() && Maps::pinned(pin_dir) {
        return Ok(0);
    }
    let cg = File::open(cgroup).map_err(|e| KernelError::io(format!("opening cgroup {}", cgroup.display()), e))?;
    if nix::sys::statfs::fstatfs(&cg).map(|s| s.filesystem_type().0 != CGROUP2_SUPER_MAGIC).unwrap_or(true) {
        return Err(KernelError::Setup(format!("{} is not a cgroup2 directory", cgroup.display())));
    }
    // Maps pinned by name: reused if they are there (a restart or an upgrade), created and pinned if not.
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(OBJECT)
        .map_err(|e| KernelError::io("loading the eBPF object", e))?;
    let mut attached = 0;
    for (name, link_name, hook) in missing {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| KernelError::Setup(format!("program {name} is missing from the object")))?;
        let load_err = |e| KernelError::io(format!("loading program {name}"), e);
        let attach_err = |e| KernelError::io(format!("attaching program {name} to {}", cgroup.display()), e);
        // A bpf_link on a cgroup always allows other programs beside it (flags must be 0): other tools'
        // programs on the same hook keep running, and ours survive in the cgroups below.
        let link: FdLink = match hook {
            Hook::SockAddr => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(load_err)?;
                load_retrying(|| p.load()).map_err(load_err)?;
                let id = p.attach(&cg, CgroupAttachMode::Single).map_err(attach_err)?;
                p.take_link(id).map_err(attach_err)?.try_into().map_err(|e| KernelError::io("link", e))?
            }
            Hook::Sock => {
                let p: &mut CgroupSock = program.try_into().map_err(load_err)?;
                load_retrying(|| p.load()).map_err(load_err)?;
                let id = p.attach(&cg, CgroupAttachMode::Single).map_err(attach_err)?;
                p.take_link(id).map_err(attach_err)?.try_into().map_err(|e| KernelError::io("link", e))?
            }
            Hook::Skb(kind) => {
                let p: &mut CgroupSkb = program.try_into().map_err(load_err)?;
                load_retrying(|| p.load()).map_err(load_err)?;
                let id = p.attach(&cg, *kind, CgroupAttachMode::Single).map_err(attach_err)?;
                p.take_link(id).map_err(attach_err)?.try_into().map_err(|e| KernelError::io("link", e))?
            }
        };
        let path = pin_dir.join(link_name);
        let _pinned: PinnedLink =
            link.pin(&path).map_err(|e| KernelError::io(format!("pinning {}", path.display()), e))?;
        attached += 1;
    }
    Ok(attached)
}

/// How often a program load interrupted by a signal is tried (libbpf's number).
const LOAD_ATTEMPTS: usize = 5;

/// Runs `load` (a program's `load`) again while the verifier gives up with `EAGAIN`, which it does when a
/// signal is pending for the loading thread (e.g. a SIGCHLD of a child that another thread spawned, routed
/// to this one): the program is fine, its verification was only interrupted. libbpf retries the same way;
/// aya 0.14 does not.
fn load_retrying(load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    retry_while(
        LOAD_ATTEMPTS,
        load,
        |e| matches!(e, ProgramError::LoadError { io_error, .. } if io_error.raw_os_error() == Some(nix::libc::EAGAIN)),
    )
}

/// Calls `f` up to `attempts` times while it fails with an error that `again` accepts.
fn retry_while<T, E>(attempts: usize, mut f: impl FnMut() -> Result<T, E>, again: impl Fn(&E) -> bool) -> Result<T, E> {
    let mut attempt = 1;
    loop {
        match f() {
            Err(e) if attempt < attempts && again(&e) => attempt += 1,
            other => return other,
        }
    }
}

/// Whether exactly the programs wanted (see [`attach`]) have their links pinned in `pin_dir`.
pub fn attached(pin_dir: &Path, count_packets: bool) -> bool {
    PROGRAMS.iter().all(|p| pin_dir.join(p.1).exists() == wanted(count_packets).any(|w| w.1 == p.1))
}

/// Unpins every link and map of this layout version in `pin_dir` (detaching the programs and freeing the
/// maps once nothing else holds them), then removes the directory if it is empty. Nothing pinned is success.
pub fn remove(pin_dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(KernelError::io(format!("reading {}", pin_dir.display()), e)),
    };
    // Links first, so no program runs against maps that are going away.
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(MAP_PREFIX))
        .collect();
    names.sort_by_key(|n| !n.starts_with("sy_v1_link_"));
    for n in names {
        let path = pin_dir.join(&n);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(KernelError::io(format!("unpinning {}", path.display()), e)),
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Interrupted loads are tried again, up to the limit; other failures and successes end at once.
    #[test]
    fn interrupted_loads_are_retried() {
        let run = |results: Vec<Result<u8, i32>>| {
            let mut calls = 0;
            let mut it = results.into_iter();
            let r = retry_while(
                LOAD_ATTEMPTS,
                || {
                    calls += 1;
                    it.next().expect("a result")
                },
                |e| *e == nix::libc::EAGAIN,
            );
            (r, calls)
        };
        let eagain = Err(nix::libc::EAGAIN);
        assert_eq!(run(vec![eagain, eagain, Ok(7)]), (Ok(7), 3));
        assert_eq!(run(vec![eagain; 5]), (eagain, 5));
        assert_eq!(run(vec![Err(nix::libc::EPERM), Ok(7)]), (Err(nix::libc::EPERM), 1));
        assert_eq!(run(vec![Ok(1)]), (Ok(1), 1));
    }
}
