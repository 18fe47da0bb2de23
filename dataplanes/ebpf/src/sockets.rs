//! Destroying connected UDP sockets that point at a removed backend, so no client stays pinned to it.
//!
//! A connected UDP socket has its backend fixed at connect() time; the socket hooks never see its datagrams
//! again. When a backend leaves, the dataplane finds the sockets connected to it through a Service (their
//! cookies are in `sy_v1_sockets`) and destroys them with the kernel's `SOCK_DESTROY` (sock_diag netlink,
//! `CONFIG_INET_DIAG_DESTROY`): the application gets `ECONNABORTED` on its next call and connects again, to a
//! live backend. Sockets live in the network namespaces of their pods, so every namespace that has a process
//! (`/proc/*/ns/net`) or a name (`/run/netns`) is visited, each on a thread of its own that has entered it.
//!
//! The netlink messages (`struct nlmsghdr`, `struct inet_diag_req_v2`, `struct inet_diag_msg`) are encoded
//! and decoded here by hand: they are small and fixed.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const IPPROTO_UDP: u8 = 17;
const TCP_ESTABLISHED: u32 = 1;
/// `sizeof(struct inet_diag_sockid)`.
const SOCKID_LEN: usize = 48;
/// `sizeof(struct inet_diag_msg)`.
const DIAG_MSG_LEN: usize = 72;

/// One UDP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DiagSocket {
    family: u8,
    /// `struct inet_diag_sockid` as the kernel sent it: passed back unchanged to destroy the socket.
    id: [u8; SOCKID_LEN],
}

impl DiagSocket {
    fn cookie(&self) -> u64 {
        let lo = u32::from_ne_bytes(self.id[40..44].try_into().expect("4 bytes"));
        let hi = u32::from_ne_bytes(self.id[44..48].try_into().expect("4 bytes"));
        (hi as u64) << 32 | lo as u64
    }
}

/// `nlmsghdr` + `inet_diag_req_v2`.
fn request(kind: u16, flags: u16, seq: u32, family: u8, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = 16 + 8 + SOCKID_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, IPPROTO_UDP, 0, 0]);
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(id);
    b
}

/// Splits a netlink datagram into (type, payload) messages.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
        if len < 16 || off + len > buf.len() {
            break;
        }
        out.push((kind, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn error_of(payload: &[u8]) -> i32 {
    payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes"))).unwrap_or(0)
}

fn diag_socket() -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_SOCK_DIAG)?;
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    Ok(s)
}

/// The connected UDP sockets of one family in the current network namespace.
fn dump(sock: &Socket, family: u8) -> io::Result<Vec<DiagSocket>> {
    sock.send(
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, family, 1 << TCP_ESTABLISHED, &[0; SOCKID_LEN]),
        0,
    )?;
    let mut out = Vec::new();
    loop {
        let (buf, _) = sock.recv_from_full()?;
        for (kind, payload) in messages(&buf) {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = error_of(payload);
                    if e != 0 {
                        return Err(io::Error::from_raw_os_error(-e));
                    }
                }
                SOCK_DIAG_BY_FAMILY if payload.len() >= DIAG_MSG_LEN => {
                    let mut id = [0u8; SOCKID_LEN];
                    id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
                    out.push(DiagSocket { family: payload[0], id });
                }
                _ => {}
            }
        }
    }
}

fn destroy(sock: &Socket, s: &DiagSocket) -> io::Result<()> {
    sock.send(&request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 2, s.family, u32::MAX, &s.id), 0)?;
    let (buf, _) = sock.recv_from_full()?;
    for (kind, payload) in messages(&buf) {
        if kind == NLMSG_ERROR {
            let e = error_of(payload);
            // ENOENT: the socket went away meanwhile.
            if e != 0 && e != -nix::libc::ENOENT {
                return Err(io::Error::from_raw_os_error(-e));
            }
        }
    }
    Ok(())
}

/// Destroys the sockets with these cookies in the current network namespace. Returns how many.
fn destroy_here(cookies: &BTreeSet<u64>) -> io::Result<usize> {
    let sock = diag_socket()?;
    let mut n = 0;
    for family in [nix::libc::AF_INET as u8, nix::libc::AF_INET6 as u8] {
        for s in dump(&sock, family)? {
            if cookies.contains(&s.cookie()) {
                destroy(&sock, &s)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Every network namespace of this host that a process is in or that has a name: one path per namespace.
fn namespaces() -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut candidates: Vec<PathBuf> = vec![PathBuf::from("/proc/self/ns/net")];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        candidates.extend(
            dir.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
                .map(|e| e.path().join("ns/net")),
        );
    }
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        candidates.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    for path in candidates {
        if let Ok(meta) = std::fs::metadata(&path) {
            if seen.insert((meta.dev(), meta.ino())) {
                out.push(path);
            }
        }
    }
    out
}

/// Destroys the UDP sockets with these cookies, in whatever network namespace they are. Returns how many
/// were destroyed. A namespace that vanishes meanwhile is skipped.
pub fn destroy_udp(cookies: &BTreeSet<u64>) -> io::Result<usize> {
    if cookies.is_empty() {
        return Ok(0);
    }
    let mut total = 0;
    for ns in namespaces() {
        let Ok(file) = File::open(&ns) else { continue };
        let result = std::thread::scope(|s| {
            s.spawn(move || -> io::Result<usize> {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                destroy_here(cookies)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("socket destroyer thread panicked")))
        });
        match result {
            Ok(n) => total += n,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request is a 16-byte netlink header followed by the 56-byte `inet_diag_req_v2`.
    #[test]
    fn request_layout() {
        let mut id = [0u8; SOCKID_LEN];
        id[40] = 7;
        let b = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 9, 2, u32::MAX, &id);
        assert_eq!(b.len(), 72);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(b[4..6].try_into().unwrap()), SOCK_DESTROY);
        assert_eq!(&b[16..20], &[2, IPPROTO_UDP, 0, 0]);
        assert_eq!(DiagSocket { family: 2, id }.cookie(), 7);
    }

    /// Messages are split at their (4-aligned) lengths; a truncated one ends the list.
    #[test]
    fn split_messages() {
        let mut buf = request(SOCK_DIAG_BY_FAMILY, 0, 1, 2, 0, &[0; SOCKID_LEN]);
        buf.extend(request(NLMSG_DONE, 0, 1, 2, 0, &[0; SOCKID_LEN]));
        buf.extend([1, 2, 3]);
        let m = messages(&buf);
        assert_eq!(m.iter().map(|m| m.0).collect::<Vec<_>>(), vec![SOCK_DIAG_BY_FAMILY, NLMSG_DONE]);
        assert_eq!(m[0].1.len(), 56);
    }
}
