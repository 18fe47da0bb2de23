//! Switchyard's socket load balancer: kernel programs attached to a cgroup2 (the root by default).
//!
//! - `sy_connect4` / `sy_connect6` (cgroup `connect4`/`connect6`): a TCP or UDP connect() to a Service address
//!   is rewritten to a backend address before the kernel acts on it, so no packet of the connection is ever
//!   NATed. The socket is remembered (cookie → backend) for connection counting, getpeername and UDP
//!   re-steering.
//! - `sy_sendmsg4` / `sy_sendmsg6`: the same for each datagram of an unconnected UDP socket; a socket keeps
//!   the backend it got for a Service address (as a conntrack flow would) while that backend lives.
//! - `sy_recvmsg4` / `sy_recvmsg6`: a datagram's source is rewritten from the backend back to the Service
//!   address the socket sent to. `sy_getpeername4` / `sy_getpeername6`: applications see the Service address.
//! - `sy_sock_release` (cgroup `sock_release`): forgets the socket and releases its connection count.
//! - `sy_skb_egress` / `sy_skb_ingress` (cgroup_skb): count packets and bytes of sockets sent through a
//!   Service, per backend.
//!
//! Map layouts are in `switchyard-ebpf-common`.

#![no_std]
#![no_main]
// atomic_xadd: the BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist; the
// intrinsic compiles to the BPF atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Kernel programs read and write the kernel's context structs through raw pointers and call BPF helpers:
// both are `unsafe` by nature. Every pointer dereferenced is one the kernel hands the program (the context)
// or a map value the verifier has checked for null.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::bindings::{__sk_buff, bpf_sock_addr, BPF_F_NO_PREALLOC};
use aya_ebpf::helpers::generated as helpers;
use aya_ebpf::macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, map};
use aya_ebpf::maps::{HashMap, LruHashMap, PerCpuHashMap};
use aya_ebpf::programs::{SkBuffContext, SockAddrContext, SockContext};
use aya_ebpf::EbpfContext;
use switchyard_ebpf_common::{
    client, route, scheduler, AffinityKey, AffinityValue, BackendStats, BackendValue, ReverseValue, ServiceKey,
    ServiceMeta, ServiceValue, SlotKey, SockAddrKey, SockValue, FAMILY_V4, FAMILY_V6, MAX_AFFINITY, MAX_BACKENDS,
    MAX_REVERSE, MAX_SCAN, MAX_SERVICES, MAX_SLOTS, MAX_SOCKETS, PROTO_TCP, PROTO_UDP,
};

const NO_PREALLOC: u32 = BPF_F_NO_PREALLOC;

#[map(name = "sy_v1_services")]
static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(MAX_SERVICES, NO_PREALLOC);
#[map(name = "sy_v1_slots")]
static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(MAX_SLOTS, NO_PREALLOC);
#[map(name = "sy_v1_backends")]
static BACKENDS: HashMap<u32, BackendValue> = HashMap::pinned(MAX_BACKENDS, NO_PREALLOC);
#[map(name = "sy_v1_meta")]
static META: HashMap<u32, ServiceMeta> = HashMap::pinned(MAX_SERVICES, NO_PREALLOC);
#[map(name = "sy_v1_rr")]
static RR: HashMap<u32, u64> = HashMap::pinned(2 * MAX_SERVICES, NO_PREALLOC);
#[map(name = "sy_v1_conns")]
static CONNS: HashMap<u32, u64> = HashMap::pinned(MAX_BACKENDS, NO_PREALLOC);
#[map(name = "sy_v1_stats")]
static STATS: PerCpuHashMap<u32, BackendStats> = PerCpuHashMap::pinned(MAX_BACKENDS, NO_PREALLOC);
#[map(name = "sy_v1_affinity")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(MAX_AFFINITY, 0);
#[map(name = "sy_v1_sockets")]
static SOCKETS: HashMap<u64, SockValue> = HashMap::pinned(MAX_SOCKETS, NO_PREALLOC);
#[map(name = "sy_v1_reverse")]
static REVERSE: LruHashMap<SockAddrKey, ReverseValue> = LruHashMap::pinned(MAX_REVERSE, 0);
#[map(name = "sy_v1_udpflows")]
static UDP_FLOWS: LruHashMap<SockAddrKey, u32> = LruHashMap::pinned(MAX_REVERSE, 0);

/// `::ffff:0:0/96`, the third word of an IPv4-mapped IPv6 address, in network order.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const NS_PER_SEC: u64 = 1_000_000_000;
const ETH_P_IP_BE: u32 = 0x0008; // htons(0x0800) as __sk_buff.protocol holds it
const ETH_P_IPV6_BE: u32 = 0xdd86; // htons(0x86dd)

// The map that userspace reads alone must still be in the object: mention it once.
#[inline(always)]
fn keep_meta() {
    let _ = &META;
}

#[inline(always)]
fn get<K, V: Copy>(map: &HashMap<K, V>, key: &K) -> Option<V> {
    // SAFETY: a non-null pointer from bpf_map_lookup_elem points at a value of type V.
    map.get_ptr(key).map(|p| unsafe { *p })
}

#[inline(always)]
fn get_lru<K, V: Copy>(map: &LruHashMap<K, V>, key: &K) -> Option<V> {
    // SAFETY: as in `get`.
    map.get_ptr(key).map(|p| unsafe { *p })
}

/// Adds `delta` (two's complement for a decrement) to a shared counter and returns the old value.
/// Sequentially consistent: with relaxed ordering this LLVM emits the plain `lock add` (no fetch) even when
/// the old value is used, and the "old value" is then the operand.
#[inline(always)]
fn add(p: *mut u64, delta: u64) -> u64 {
    // SAFETY: `p` is a map value pointer checked by the verifier.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, delta) }
}

#[inline(always)]
fn conns_add(backend_id: u32, delta: u64) {
    if let Some(p) = CONNS.get_ptr_mut(&backend_id) {
        add(p, delta);
    }
}

#[inline(always)]
fn conns_of(backend_id: u32) -> u64 {
    match get(&CONNS, &backend_id) {
        // A count that went below zero (it cannot by design) reads as zero.
        Some(n) if n < (1 << 63) => n,
        _ => 0,
    }
}

#[inline(always)]
fn stats_connection(backend_id: u32) {
    if let Some(p) = STATS.get_ptr_mut(&backend_id) {
        // SAFETY: this CPU's slot of a per-CPU map value.
        unsafe { (*p).connections += 1 };
    }
}

/// 64-bit finaliser of MurmurHash3: good spread for the hashing schedulers.
#[inline(always)]
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[inline(always)]
fn hash_words(w: &[u32; 4], extra: u32) -> u64 {
    let a = (w[0] as u64) | ((w[1] as u64) << 32);
    let b = (w[2] as u64) | ((w[3] as u64) << 32);
    mix(a ^ mix(b ^ mix(extra as u64)))
}

/// Who the client is, for sh and affinity.
#[derive(Clone, Copy)]
struct Client {
    words: [u32; 4],
    kind: u8,
}

fn netns_client<C: EbpfContext>(ctx: &C) -> Client {
    // SAFETY: bpf_get_netns_cookie takes the program's context.
    let cookie = unsafe { helpers::bpf_get_netns_cookie(ctx.as_ptr()) };
    Client { words: [cookie as u32, (cookie >> 32) as u32, 0, 0], kind: client::NETNS }
}

/// The client of a sock_addr program: the address the socket is bound to (or, for sendmsg, the source the
/// application chose), else its network namespace.
#[inline(always)]
fn client_of(ctx: &SockAddrContext, family: u8, sendmsg: bool) -> Client {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context; `sk` is a full socket in every sock_addr program.
    unsafe {
        if family == FAMILY_V4 {
            let mut src = if sendmsg { (*sa).msg_src_ip4 } else { 0 };
            if src == 0 {
                src = (*(*sa).__bindgen_anon_1.sk).src_ip4;
            }
            if src != 0 {
                return Client { words: [src, 0, 0, 0], kind: client::ADDR4 };
            }
        } else {
            let sk = (*sa).__bindgen_anon_1.sk;
            let mut w = [(*sk).src_ip6[0], (*sk).src_ip6[1], (*sk).src_ip6[2], (*sk).src_ip6[3]];
            if sendmsg {
                let m = [(*sa).msg_src_ip6[0], (*sa).msg_src_ip6[1], (*sa).msg_src_ip6[2], (*sa).msg_src_ip6[3]];
                if m[0] | m[1] | m[2] | m[3] != 0 {
                    w = m;
                }
            }
            if w[0] | w[1] | w[2] | w[3] != 0 {
                if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED {
                    return Client { words: [w[3], 0, 0, 0], kind: client::ADDR4 };
                }
                return Client { words: w, kind: client::ADDR6 };
            }
        }
    }
    netns_client(ctx)
}

/// The destination of a sock_addr call as a map key, IPv4-mapped IPv6 addresses as IPv4. The bool says
/// whether the address was IPv4-mapped (and must be written back so).
#[inline(always)]
fn dest_of(sa: *mut bpf_sock_addr, family: u8, proto: u8) -> (ServiceKey, bool) {
    // SAFETY: `sa` is the context.
    unsafe {
        let port = (*sa).user_port as u16;
        if family == FAMILY_V4 {
            return (ServiceKey { addr: [(*sa).user_ip4, 0, 0, 0], port, proto, family: FAMILY_V4 }, false);
        }
        let w = [(*sa).user_ip6[0], (*sa).user_ip6[1], (*sa).user_ip6[2], (*sa).user_ip6[3]];
        if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED {
            return (ServiceKey { addr: [w[3], 0, 0, 0], port, proto, family: FAMILY_V4 }, true);
        }
        (ServiceKey { addr: w, port, proto, family: FAMILY_V6 }, false)
    }
}

/// Writes an address and port into the sock_addr context (`mapped`: as an IPv4-mapped IPv6 address).
#[inline(always)]
fn set_dest(sa: *mut bpf_sock_addr, family: u8, mapped: bool, addr: &[u32; 4], port: u16) {
    // SAFETY: `sa` is the context; these fields are writable in connect, sendmsg, recvmsg and getpeername.
    unsafe {
        if family == FAMILY_V4 {
            (*sa).user_ip4 = addr[0];
        } else if mapped {
            (*sa).user_ip6[0] = 0;
            (*sa).user_ip6[1] = 0;
            (*sa).user_ip6[2] = V4_MAPPED;
            (*sa).user_ip6[3] = addr[0];
        } else {
            (*sa).user_ip6[0] = addr[0];
            (*sa).user_ip6[1] = addr[1];
            (*sa).user_ip6[2] = addr[2];
            (*sa).user_ip6[3] = addr[3];
        }
        (*sa).user_port = port as u32;
    }
}

/// A backend that may take this frontend's traffic: it exists, belongs to the Service port and is in the
/// frontend's route.
#[inline(always)]
fn live_backend(id: u32, svc: &ServiceValue) -> Option<BackendValue> {
    let be = get(&BACKENDS, &id)?;
    if be.service_id != svc.service_id || be.routes & (1 << svc.route) == 0 {
        return None;
    }
    Some(be)
}

#[inline(always)]
fn slot(svc: &ServiceValue, index: u32) -> Option<(u32, BackendValue)> {
    let id = get(&SLOTS, &SlotKey { slot_set: svc.slot_set, index })?;
    let be = get(&BACKENDS, &id)?;
    Some((id, be))
}

/// The state of a least-loaded scan, on the caller's stack, handed to [`scan_slot`] by `bpf_loop`.
#[repr(C)]
struct Scan {
    slot_set: u32,
    scheduler: u32,
    best_id: u32,
    found: u32,
    best_conns: u64,
    best_weight: u64,
}

/// One step of a least-loaded scan: looks at slot `index`. A `bpf_loop` callback (verified once, whatever
/// the number of backends), so it must stay a function of its own.
#[inline(never)]
extern "C" fn scan_slot(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `least_loaded` passed to bpf_loop.
    let s = unsafe { &mut *(ctx as *mut Scan) };
    let Some(id) = get(&SLOTS, &SlotKey { slot_set: s.slot_set, index: index as u32 }) else { return 0 };
    let Some(be) = get(&BACKENDS, &id) else { return 0 };
    let w = be.weight as u64;
    if w == 0 {
        return 0;
    }
    let c = conns_of(id);
    let better = if s.scheduler == scheduler::NQ as u32 && c == 0 {
        // An idle backend: never queue.
        s.found = 1;
        s.best_id = id;
        return 1;
    } else if s.found == 0 {
        true
    } else if s.scheduler == scheduler::LC as u32 {
        c < s.best_conns
    } else if s.scheduler == scheduler::WLC as u32 {
        c * s.best_weight < s.best_conns * w
    } else {
        // sed and nq
        (c + 1) * s.best_weight < (s.best_conns + 1) * w
    };
    if better {
        s.found = 1;
        s.best_id = id;
        s.best_conns = c;
        s.best_weight = w;
    }
    0
}

/// lc, wlc, sed and nq: scan the slots (one per backend) for the least loaded backend.
#[inline(always)]
fn least_loaded(svc: &ServiceValue) -> Option<(u32, BackendValue)> {
    let mut scan = Scan { slot_set: svc.slot_set, scheduler: svc.scheduler as u32, best_id: 0, found: 0, best_conns: 0, best_weight: 0 };
    let n = if svc.count < MAX_SCAN { svc.count } else { MAX_SCAN };
    // SAFETY: bpf_loop calls `scan_slot` n times with a pointer to `scan`, which outlives the call.
    unsafe {
        helpers::bpf_loop(n, scan_slot as *const () as *mut core::ffi::c_void, &mut scan as *mut Scan as *mut core::ffi::c_void, 0);
    }
    if scan.found == 0 {
        return None;
    }
    let be = get(&BACKENDS, &scan.best_id)?;
    Some((scan.best_id, be))
}

/// Picks a backend by the frontend's scheduler.
#[inline(always)]
fn schedule(svc: &ServiceValue, key: &ServiceKey, who: &Client) -> Option<(u32, BackendValue)> {
    let count = svc.count as u64;
    if count == 0 {
        return None;
    }
    let index = match svc.scheduler {
        scheduler::RR | scheduler::WRR => {
            let p = RR.get_ptr_mut(&svc.slot_set)?;
            add(p, 1) % count
        }
        scheduler::SH => hash_words(&who.words, who.kind as u32) % count,
        scheduler::DH => hash_words(&key.addr, key.port as u32) % count,
        scheduler::LC | scheduler::WLC | scheduler::SED | scheduler::NQ => return least_loaded(svc),
        // SAFETY: a helper without arguments.
        _ => (unsafe { helpers::bpf_get_prandom_u32() } as u64) % count,
    };
    slot(svc, index as u32)
}

/// Picks a backend: the client's affinity if it has one that has not expired, else the scheduler's choice
/// (recorded as the client's affinity when the Service has one).
#[inline(always)]
fn select(svc: &ServiceValue, key: &ServiceKey, who: &Client) -> Option<(u32, BackendValue)> {
    if svc.affinity_timeout == 0 {
        return schedule(svc, key, who);
    }
    let akey = AffinityKey { client: who.words, service_id: svc.service_id, route: svc.route, client_kind: who.kind, _pad: 0 };
    // SAFETY: a helper without arguments.
    let now = unsafe { helpers::bpf_ktime_get_ns() };
    if let Some(a) = get_lru(&AFFINITY, &akey) {
        if now.wrapping_sub(a.last_seen_ns) <= svc.affinity_timeout as u64 * NS_PER_SEC {
            if let Some(be) = live_backend(a.backend_id, svc) {
                let _ = AFFINITY.insert(&akey, &AffinityValue { last_seen_ns: now, backend_id: a.backend_id, _pad: 0 }, 0);
                return Some((a.backend_id, be));
            }
        }
    }
    let (id, be) = schedule(svc, key, who)?;
    let _ = AFFINITY.insert(&akey, &AffinityValue { last_seen_ns: now, backend_id: id, _pad: 0 }, 0);
    Some((id, be))
}

#[inline(always)]
fn cookie_of<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: bpf_get_socket_cookie takes the program's context.
    unsafe { helpers::bpf_get_socket_cookie(ctx.as_ptr()) }
}

#[inline(always)]
fn protocol_of(sa: *mut bpf_sock_addr) -> u8 {
    // SAFETY: `sa` is the context.
    unsafe { (*sa).protocol as u8 }
}

/// connect4 / connect6: rewrite a connect() to a Service address into a backend address.
#[inline(always)]
fn connect(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    let proto = protocol_of(sa);
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return 1;
    }
    let (key, mapped) = dest_of(sa, family, proto);
    let Some(svc) = get(&SERVICES, &key) else { return 1 };
    if svc.count == 0 {
        // No backend: leave the socket alone; the nftables rules reject or drop its packets.
        return 1;
    }
    let who = client_of(ctx, family, false);
    let Some((id, be)) = select(&svc, &key, &who) else { return 1 };
    if be.family != key.family {
        return 1;
    }
    set_dest(sa, family, mapped, &be.addr, be.port);

    let cookie = cookie_of(ctx);
    let rkey = SockAddrKey { cookie, addr: be.addr, port: be.port, family: be.family, _pad8: 0, _pad32: 0 };
    let rval = ReverseValue { addr: key.addr, port: key.port, family: key.family, _pad: 0, backend_id: id };
    let _ = REVERSE.insert(&rkey, &rval, 0);

    // SAFETY: bpf_get_netns_cookie takes the program's context.
    let netns_cookie = unsafe { helpers::bpf_get_netns_cookie(ctx.as_ptr()) };
    let old = get(&SOCKETS, &cookie);
    let sock = SockValue { netns_cookie, addr: be.addr, port: be.port, family: be.family, proto, backend_id: id };
    if SOCKETS.insert(&cookie, &sock, 0).is_ok() {
        // A UDP socket connected again: it no longer holds its old backend.
        if let Some(old) = old {
            conns_add(old.backend_id, u64::MAX);
        }
        conns_add(id, 1);
    }
    stats_connection(id);
    keep_meta();
    1
}

/// sendmsg4 / sendmsg6: an unconnected UDP datagram to a Service address goes to a backend; the socket keeps
/// that backend for the address while it lives.
#[inline(always)]
fn sendmsg(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    let proto = protocol_of(sa);
    if proto != PROTO_UDP {
        return 1;
    }
    let (key, mapped) = dest_of(sa, family, proto);
    let Some(svc) = get(&SERVICES, &key) else { return 1 };
    if svc.count == 0 {
        return 1;
    }
    let cookie = cookie_of(ctx);
    let fkey = SockAddrKey { cookie, addr: key.addr, port: key.port, family: key.family, _pad8: 0, _pad32: 0 };
    let mut chosen = None;
    if let Some(id) = get_lru(&UDP_FLOWS, &fkey) {
        if let Some(be) = live_backend(id, &svc) {
            chosen = Some((id, be));
        }
    }
    let (id, be) = match chosen {
        Some(c) => c,
        None => {
            let who = client_of(ctx, family, true);
            let Some((id, be)) = select(&svc, &key, &who) else { return 1 };
            let _ = UDP_FLOWS.insert(&fkey, &id, 0);
            stats_connection(id);
            (id, be)
        }
    };
    if be.family != key.family {
        return 1;
    }
    set_dest(sa, family, mapped, &be.addr, be.port);
    let rkey = SockAddrKey { cookie, addr: be.addr, port: be.port, family: be.family, _pad8: 0, _pad32: 0 };
    let rval = ReverseValue { addr: key.addr, port: key.port, family: key.family, _pad: 0, backend_id: id };
    let _ = REVERSE.insert(&rkey, &rval, 0);
    1
}

/// recvmsg and getpeername: show the Service address instead of the backend's.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, family: u8) -> i32 {
    let sa = ctx.sock_addr;
    let proto = protocol_of(sa);
    let (peer, mapped) = dest_of(sa, family, proto);
    let rkey = SockAddrKey { cookie: cookie_of(ctx), addr: peer.addr, port: peer.port, family: peer.family, _pad8: 0, _pad32: 0 };
    if let Some(v) = get_lru(&REVERSE, &rkey) {
        if v.family == peer.family {
            set_dest(sa, family, mapped, &v.addr, v.port);
        }
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn sy_connect4(ctx: SockAddrContext) -> i32 {
    connect(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(connect6)]
pub fn sy_connect6(ctx: SockAddrContext) -> i32 {
    connect(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sy_sendmsg4(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sy_sendmsg6(ctx: SockAddrContext) -> i32 {
    sendmsg(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sy_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sy_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V6)
}

#[cgroup_sock_addr(getpeername4)]
pub fn sy_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V4)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sy_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, FAMILY_V6)
}

/// sock_release: the socket is gone; release its connection count.
#[cgroup_sock(sock_release)]
pub fn sy_sock_release(ctx: SockContext) -> i32 {
    let cookie = cookie_of(&ctx);
    if let Some(v) = get(&SOCKETS, &cookie) {
        // Only the call that removes the entry releases the count.
        if SOCKETS.remove(&cookie).is_ok() {
            conns_add(v.backend_id, u64::MAX);
            let rkey = SockAddrKey { cookie, addr: v.addr, port: v.port, family: v.family, _pad8: 0, _pad32: 0 };
            let _ = REVERSE.remove(&rkey);
        }
    }
    1
}

/// Counts a packet of a socket sent through a Service, by its backend (remote address and port).
#[inline(always)]
fn count_packet(ctx: &SkBuffContext, egress: bool) {
    let cookie = cookie_of(ctx);
    if cookie == 0 {
        return;
    }
    let skb: *mut __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the context.
    let (protocol, len, segs) = unsafe { ((*skb).protocol, (*skb).len, (*skb).gso_segs) };
    let mut key = SockAddrKey { cookie, ..SockAddrKey::default() };
    if protocol == ETH_P_IP_BE {
        let Ok(vihl) = ctx.load::<u8>(0) else { return };
        let Ok(proto) = ctx.load::<u8>(9) else { return };
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return;
        }
        let Ok(addr) = ctx.load::<u32>(if egress { 16 } else { 12 }) else { return };
        let l4 = ((vihl & 0x0f) as usize) * 4;
        let Ok(port) = ctx.load::<u16>(l4 + if egress { 2 } else { 0 }) else { return };
        key.addr = [addr, 0, 0, 0];
        key.port = port;
        key.family = FAMILY_V4;
    } else if protocol == ETH_P_IPV6_BE {
        let Ok(next) = ctx.load::<u8>(6) else { return };
        if next != PROTO_TCP && next != PROTO_UDP {
            return;
        }
        let off = if egress { 24 } else { 8 };
        let Ok(a0) = ctx.load::<u32>(off) else { return };
        let Ok(a1) = ctx.load::<u32>(off + 4) else { return };
        let Ok(a2) = ctx.load::<u32>(off + 8) else { return };
        let Ok(a3) = ctx.load::<u32>(off + 12) else { return };
        let Ok(port) = ctx.load::<u16>(40 + if egress { 2 } else { 0 }) else { return };
        key.addr = [a0, a1, a2, a3];
        key.port = port;
        key.family = FAMILY_V6;
    } else {
        return;
    }
    let Some(v) = get_lru(&REVERSE, &key) else { return };
    if let Some(p) = STATS.get_ptr_mut(&v.backend_id) {
        let segs = if segs == 0 { 1 } else { segs as u64 };
        // SAFETY: this CPU's slot of a per-CPU map value.
        unsafe {
            (*p).packets += segs;
            (*p).bytes += len as u64;
        }
    }
}

#[cgroup_skb(egress)]
pub fn sy_skb_egress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn sy_skb_ingress(ctx: SkBuffContext) -> i32 {
    count_packet(&ctx, false);
    1
}

// Referenced so that the route constants stay in sync with what userspace writes.
const _: u8 = route::CLUSTER;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
