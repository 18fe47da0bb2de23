//! The map keys and values shared by Switchyard's eBPF socket load balancer (`ebpf/programs`, built for
//! `bpfel-unknown-none`) and its userspace (`dataplanes/ebpf`).
//!
//! Every type is `#[repr(C)]` with its padding spelled out as `_pad` integer fields (always written as zero;
//! integers rather than byte arrays, which the BPF backend would zero with a `memset` call), so the
//! kernel and userspace agree on every byte, and hash keys never contain uninitialised bytes. Sizes and
//! alignments are checked at compile time below. Addresses are stored as four 32-bit words in network byte
//! order exactly as `struct bpf_sock_addr` has them (`user_ip6`); an IPv4 address uses the first word and
//! leaves the others zero. Ports are 16 bits in network byte order (the low half of `bpf_sock_addr.user_port`).
//!
//! The maps (all pinned by name under Switchyard's bpffs directory, `/sys/fs/bpf/switchyard/` by default):
//!
//! | map | kind | key → value | written by |
//! |---|---|---|---|
//! | [`SERVICES_MAP`] | hash (no prealloc) | [`ServiceKey`] → [`ServiceValue`] | userspace |
//! | [`SLOTS_MAP`] | hash (no prealloc) | [`SlotKey`] → backend id (`u32`) | userspace |
//! | [`BACKENDS_MAP`] | hash (no prealloc) | backend id (`u32`) → [`BackendValue`] | userspace |
//! | [`META_MAP`] | hash (no prealloc) | service id (`u32`) → [`ServiceMeta`] | userspace (read by `dump`) |
//! | [`RR_MAP`] | hash (no prealloc) | slot set (`u32`) → next pick (`u64`) | created by userspace, bumped by programs |
//! | [`CONNS_MAP`] | hash (no prealloc) | backend id (`u32`) → open connections (`u64`) | created by userspace, counted by programs |
//! | [`STATS_MAP`] | per-CPU hash | backend id (`u32`) → [`BackendStats`] | created by userspace, counted by programs |
//! | [`AFFINITY_MAP`] | LRU hash | [`AffinityKey`] → [`AffinityValue`] | programs |
//! | [`SOCKETS_MAP`] | hash (no prealloc) | socket cookie (`u64`) → [`SockValue`] | programs (connect, sock_release) |
//! | [`REVERSE_MAP`] | LRU hash | [`SockAddrKey`] (backend) → [`ReverseValue`] | programs (connect, sendmsg) |
//! | [`UDP_FLOWS_MAP`] | LRU hash | [`SockAddrKey`] (service) → backend id (`u32`) | programs (sendmsg) |
//!
//! A connect() to a Service address looks up [`SERVICES_MAP`], picks a slot of the value's slot set (or the
//! backend its client has affinity to), reads the backend from [`BACKENDS_MAP`] and rewrites the address.
//! Userspace never changes a slot set in place: it writes a new one, points the service entries at it and
//! then deletes the old one, so a connect() sees either the old or the new set, never a mix.

#![no_std]

/// Prefix of every map name: the layout version. A change to any type here that is not backwards
/// compatible bumps it, and the loader then treats maps of other versions as foreign.
pub const MAP_PREFIX: &str = "sy_v1_";
/// Frontends: where sockets connect to. See [`ServiceKey`].
pub const SERVICES_MAP: &str = "sy_v1_services";
/// The backend slots of each slot set. See [`SlotKey`].
pub const SLOTS_MAP: &str = "sy_v1_slots";
/// Backends by id. See [`BackendValue`].
pub const BACKENDS_MAP: &str = "sy_v1_backends";
/// What each service id is (names, fingerprint): read by userspace only. See [`ServiceMeta`].
pub const META_MAP: &str = "sy_v1_meta";
/// Round-robin position of each slot set.
pub const RR_MAP: &str = "sy_v1_rr";
/// Open connections per backend, for lc, wlc, sed and nq.
pub const CONNS_MAP: &str = "sy_v1_conns";
/// Per-CPU counters per backend. See [`BackendStats`].
pub const STATS_MAP: &str = "sy_v1_stats";
/// ClientIP session affinity. See [`AffinityKey`].
pub const AFFINITY_MAP: &str = "sy_v1_affinity";
/// Sockets connected through a Service. See [`SockValue`].
pub const SOCKETS_MAP: &str = "sy_v1_sockets";
/// Backend address seen by a socket → the Service address it asked for. See [`ReverseValue`].
pub const REVERSE_MAP: &str = "sy_v1_reverse";
/// The backend an unconnected UDP socket sends to for a Service address.
pub const UDP_FLOWS_MAP: &str = "sy_v1_udpflows";

/// Every map, in the order userspace opens them.
pub const ALL_MAPS: [&str; 11] = [
    SERVICES_MAP,
    SLOTS_MAP,
    BACKENDS_MAP,
    META_MAP,
    RR_MAP,
    CONNS_MAP,
    STATS_MAP,
    AFFINITY_MAP,
    SOCKETS_MAP,
    REVERSE_MAP,
    UDP_FLOWS_MAP,
];

// The maps below are not preallocated (except the LRU ones), so a large capacity costs kernel memory only
// as entries are written. Sized for 50,000 Services × 10 endpoints with room for a full rewrite of slots.
/// Capacity of [`SERVICES_MAP`] (frontends).
pub const MAX_SERVICES: u32 = 1 << 18;
/// Capacity of [`SLOTS_MAP`].
pub const MAX_SLOTS: u32 = 1 << 22;
/// Capacity of [`BACKENDS_MAP`], [`CONNS_MAP`] and [`STATS_MAP`].
pub const MAX_BACKENDS: u32 = 1 << 20;
/// Capacity of [`AFFINITY_MAP`].
pub const MAX_AFFINITY: u32 = 65_536;
/// Capacity of [`SOCKETS_MAP`].
pub const MAX_SOCKETS: u32 = 262_144;
/// Capacity of [`REVERSE_MAP`] and [`UDP_FLOWS_MAP`].
pub const MAX_REVERSE: u32 = 65_536;
/// The most backends the least-connection schedulers (lc, wlc, sed, nq) look at: the programs scan them
/// in a bounded loop. Userspace programs at most this many slots for them.
pub const MAX_SCAN: u32 = 128;
/// The most slots a weighted round robin expands to (userspace scales weights down to fit).
pub const MAX_WRR_SLOTS: u32 = 4096;

/// `family` value of an IPv4 address (`AF_INET`).
pub const FAMILY_V4: u8 = 2;
/// `family` value of an IPv6 address (`AF_INET6`).
pub const FAMILY_V6: u8 = 10;
/// `proto` value of TCP.
pub const PROTO_TCP: u8 = 6;
/// `proto` value of UDP.
pub const PROTO_UDP: u8 = 17;

/// Scheduler numbers in [`ServiceValue::scheduler`].
pub mod scheduler {
    /// Uniformly random.
    pub const RANDOM: u8 = 0;
    /// Round robin over the slots.
    pub const RR: u8 = 1;
    /// Weighted round robin: round robin over slots that repeat each backend by its weight.
    pub const WRR: u8 = 2;
    /// Least open connections.
    pub const LC: u8 = 3;
    /// Least open connections per weight.
    pub const WLC: u8 = 4;
    /// Destination hashing: by the Service address and port.
    pub const DH: u8 = 5;
    /// Source hashing: by the client (its bound source address, else its network namespace).
    pub const SH: u8 = 6;
    /// Shortest expected delay: least (connections + 1) per weight.
    pub const SED: u8 = 7;
    /// Never queue: an idle backend if there is one, else as sed.
    pub const NQ: u8 = 8;
}

/// [`ServiceValue::route`] and bits of [`BackendValue::routes`]: which of a Service port's traffic classes a
/// frontend takes.
pub mod route {
    /// ClusterIP traffic: the plan's cluster route.
    pub const CLUSTER: u8 = 0;
    /// NodePorts on loopback addresses (localhost NodePorts), reached by local sockets only: the external
    /// route, or the cluster route for `externalTrafficPolicy: Local` (the node short-circuits, as with
    /// kube-proxy).
    pub const NODEPORT: u8 = 1;
}

/// [`AffinityKey::client_kind`]: what identifies the client.
pub mod client {
    /// The network namespace cookie (`bpf_get_netns_cookie`) in the first two words: a pod.
    pub const NETNS: u8 = 1;
    /// The socket's bound IPv4 source address in the first word.
    pub const ADDR4: u8 = 2;
    /// The socket's bound IPv6 source address.
    pub const ADDR6: u8 = 3;
}

/// A frontend: an address, port and protocol that sockets connect or send to. 20 bytes, align 4.
///
/// ```text
/// 0  addr[4]  u32 x4, network order (IPv4: addr[0], rest 0)
/// 16 port     u16, network order
/// 18 proto    u8   PROTO_TCP / PROTO_UDP
/// 19 family   u8   FAMILY_V4 / FAMILY_V6
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The address.
    pub addr: [u32; 4],
    /// The port, network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// How a frontend is served. 20 bytes, align 4.
///
/// ```text
/// 0  service_id        u32  stable per Service port and family (META_MAP, AFFINITY_MAP)
/// 4  slot_set          u32  key prefix in SLOTS_MAP; never reused while referenced
/// 8  count             u32  slots in the set; 0: no backend, the socket is left alone (nftables decides)
/// 12 affinity_timeout  u32  seconds; 0: no ClientIP affinity
/// 16 scheduler         u8   `scheduler::*`
/// 17 route             u8   `route::*`
/// 18 _pad              u16
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceValue {
    /// The Service port's id (stable across syncs and restarts).
    pub service_id: u32,
    /// The slot set to pick from.
    pub slot_set: u32,
    /// How many slots the set has (indices `0..count`).
    pub count: u32,
    /// ClientIP affinity timeout in seconds, 0 without affinity.
    pub affinity_timeout: u32,
    /// One of [`scheduler`].
    pub scheduler: u8,
    /// One of [`route`].
    pub route: u8,
    /// Zero.
    pub _pad: u16,
}

/// One slot of a slot set. 8 bytes, align 4. The value is a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// The slot set ([`ServiceValue::slot_set`]).
    pub slot_set: u32,
    /// The index, `0..count`.
    pub index: u32,
}

/// A backend of one Service port. 28 bytes, align 4.
///
/// ```text
/// 0  addr[4]     u32 x4, network order
/// 16 port        u16, network order
/// 18 family      u8
/// 19 routes      u8   bit (1 << route::*) for each route the backend is in (affinity checks it)
/// 20 service_id  u32  the Service port it belongs to
/// 24 weight      u32  for wrr (userspace), wlc, sed, nq; 0: takes no new connections
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendValue {
    /// The address.
    pub addr: [u32; 4],
    /// The port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Bit `1 << r` for each [`route`] `r` this backend is in.
    pub routes: u8,
    /// The Service port this backend belongs to.
    pub service_id: u32,
    /// Relative weight.
    pub weight: u32,
}

/// Per-CPU counters of one backend (userspace sums the CPUs). 24 bytes, align 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendStats {
    /// Connections sent to the backend: connect() calls, and new unconnected-UDP flows.
    pub connections: u64,
    /// Packets both ways on sockets connected through the Service (a GSO buffer counts its segments).
    pub packets: u64,
    /// Bytes (IP packets, headers included) both ways.
    pub bytes: u64,
}

/// A client's affinity to a backend of one route of a Service port. 24 bytes, align 4.
///
/// ```text
/// 0  client[4]    u32 x4  netns cookie (words 0-1, native order) or bound source address (network order)
/// 16 service_id   u32
/// 20 route        u8
/// 21 client_kind  u8   `client::*`
/// 22 _pad         u16
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    /// The client's identity.
    pub client: [u32; 4],
    /// The Service port.
    pub service_id: u32,
    /// One of [`route`].
    pub route: u8,
    /// One of [`client`].
    pub client_kind: u8,
    /// Zero.
    pub _pad: u16,
}

/// Where an affinity points and when it was last used. 16 bytes, align 8.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the last connection that used it.
    pub last_seen_ns: u64,
    /// The backend.
    pub backend_id: u32,
    /// Zero.
    pub _pad: u32,
}

/// A socket connected (TCP, or connected UDP) through a Service. 32 bytes, align 8.
///
/// ```text
/// 0  netns_cookie  u64  the socket's network namespace (userspace finds sockets to destroy with it)
/// 8  addr[4]       u32 x4  the backend address (network order)
/// 24 port          u16  the backend port (network order)
/// 26 family        u8
/// 27 proto         u8
/// 28 backend_id    u32  whose CONNS_MAP count this socket holds
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockValue {
    /// `bpf_get_netns_cookie` of the socket.
    pub netns_cookie: u64,
    /// The backend's address.
    pub addr: [u32; 4],
    /// The backend's port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    /// The backend.
    pub backend_id: u32,
}

/// A socket and a remote address. 32 bytes, align 8.
///
/// ```text
/// 0  cookie   u64  socket cookie (bpf_get_socket_cookie)
/// 8  addr[4]  u32 x4, network order
/// 24 port     u16, network order
/// 26 family   u8
/// 27 _pad8    u8
/// 28 _pad32   u32
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockAddrKey {
    /// The socket.
    pub cookie: u64,
    /// The remote address.
    pub addr: [u32; 4],
    /// The remote port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad8: u8,
    /// Zero.
    pub _pad32: u32,
}

/// The Service address a socket asked for, for a backend it was sent to. 24 bytes, align 4.
///
/// ```text
/// 0  addr[4]     u32 x4  Service address (network order)
/// 16 port        u16     Service port (network order)
/// 18 family      u8
/// 19 _pad        u8
/// 20 backend_id  u32     for the packet and byte counters
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReverseValue {
    /// The Service address.
    pub addr: [u32; 4],
    /// The Service port, network byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: u8,
    /// The backend.
    pub backend_id: u32,
}

/// Length of [`ServiceMeta::namespace`] and [`ServiceMeta::name`] (Kubernetes names are at most 63 bytes).
pub const NAME_LEN: usize = 64;

/// What a service id stands for, so that `dump` and a restarted daemon can read everything from the
/// kernel. Read by userspace only. 208 bytes, align 8.
///
/// ```text
/// 0   fingerprint       u64       hash of what userspace programmed for the plan
/// 8   namespace         [u8; 64]  NUL-padded
/// 72  name              [u8; 64]
/// 136 port              [u8; 64]  the port's name (IANA service names are at most 15 bytes)
/// 200 affinity_timeout  u32
/// 204 protocol          u8   PROTO_TCP / PROTO_UDP
/// 205 family            u8
/// 206 scheduler         u8
/// 207 _pad              u8
/// ```
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceMeta {
    /// Fingerprint of the programmed translation.
    pub fingerprint: u64,
    /// The Service's namespace.
    pub namespace: [u8; NAME_LEN],
    /// The Service's name.
    pub name: [u8; NAME_LEN],
    /// The port's name.
    pub port: [u8; NAME_LEN],
    /// Affinity timeout in seconds, 0 without affinity.
    pub affinity_timeout: u32,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// One of [`scheduler`].
    pub scheduler: u8,
    /// Zero.
    pub _pad: u8,
}

impl Default for ServiceMeta {
    fn default() -> Self {
        ServiceMeta {
            fingerprint: 0,
            namespace: [0; NAME_LEN],
            name: [0; NAME_LEN],
            port: [0; NAME_LEN],
            affinity_timeout: 0,
            protocol: 0,
            family: 0,
            scheduler: 0,
            _pad: 0,
        }
    }
}

// The layouts documented above, checked.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<ServiceKey>() == 20 && align_of::<ServiceKey>() == 4);
    assert!(size_of::<ServiceValue>() == 20 && align_of::<ServiceValue>() == 4);
    assert!(size_of::<SlotKey>() == 8);
    assert!(size_of::<BackendValue>() == 28 && align_of::<BackendValue>() == 4);
    assert!(size_of::<BackendStats>() == 24 && align_of::<BackendStats>() == 8);
    assert!(size_of::<AffinityKey>() == 24 && align_of::<AffinityKey>() == 4);
    assert!(size_of::<AffinityValue>() == 16 && align_of::<AffinityValue>() == 8);
    assert!(size_of::<SockValue>() == 32 && align_of::<SockValue>() == 8);
    assert!(size_of::<SockAddrKey>() == 32 && align_of::<SockAddrKey>() == 8);
    assert!(size_of::<ReverseValue>() == 24 && align_of::<ReverseValue>() == 4);
    assert!(size_of::<ServiceMeta>() == 208 && align_of::<ServiceMeta>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `#[repr(C)]`, `Copy`, made only of integers and integer arrays, and has no
    // implicit padding (sizes are checked above), so any byte pattern is a valid value: what `aya::Pod`
    // requires to copy them to and from the kernel.
    #![allow(unsafe_code)]
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SockValue {}
    unsafe impl aya::Pod for SockAddrKey {}
    unsafe impl aya::Pod for ReverseValue {}
    unsafe impl aya::Pod for ServiceMeta {}
}
