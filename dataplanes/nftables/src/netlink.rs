//! Element-only transactions straight over nf_tables netlink, without `nft`.
//!
//! `nft -f` builds a cache of the whole table before it runs even a script of `add element` / `delete
//! element` commands: it dumps every chain (and rule) of the table, about 0.2 s with 50,000 chains. An
//! endpoint that moves is such a script. [`ElementBatch::parse`] recognises the scripts this crate writes for
//! the shared backend maps and sets and the `cluster-ips` set, whose key and value types are fixed by the
//! skeleton ([`crate::translate::skeleton`]) and encoded here exactly; [`ElementBatch::apply`] sends them as
//! one nfnetlink batch (atomic, as `nft -f` is). Any other line (other maps, comments, chains) makes the
//! whole script go through `nft`, unchanged.
//!
//! Encoding, as nft does it: `mark` is host-endian u32, addresses and `inet_service` are network order, and
//! each part of a concatenation is padded to 4 bytes. None of these elements carries a comment (nft keeps
//! those as `NFTA_SET_ELEM_USERDATA`), so none is written.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use switchyard_model::dataplane::Error;

use crate::names::{MapName, TABLE};
use crate::translate::CLUSTER_IPS;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// The most commands and bytes a batch sent here may have (see [`ElementBatch::parse`]).
const MAX_COMMANDS: usize = 128;
const MAX_DATAGRAM: usize = 64 * 1024;

/// One `add element` / `delete element` command: one netlink message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementCommand {
    /// `add` (true) or `delete`.
    pub add: bool,
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
    pub family: u8,
    /// The map or set.
    pub set: &'static str,
    /// Each element's key and, in maps when adding, its value, encoded.
    pub elements: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// A script made only of element commands on the maps and sets encoded here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElementBatch {
    /// The commands, in the script's order.
    pub commands: Vec<ElementCommand>,
}

/// What a key or value is made of.
#[derive(Clone, Copy)]
enum Part {
    Mark,
    Addr,
    Port,
}

/// The key and value types of the sets and maps taken here (see the skeleton); `None` for the others.
fn layout(set: &str) -> Option<(&'static str, &'static [Part], &'static [Part])> {
    let (name, key, value): (_, &[Part], &[Part]) = match MapName::parse(set) {
        Some(MapName::BackendSlots) => (MapName::BackendSlots.as_str(), &[Part::Mark], &[Part::Mark]),
        Some(MapName::BackendAddrs) => (MapName::BackendAddrs.as_str(), &[Part::Mark], &[Part::Addr, Part::Port]),
        Some(MapName::Hairpin) => (MapName::Hairpin.as_str(), &[Part::Addr, Part::Mark], &[]),
        Some(m @ (MapName::BackendTraffic | MapName::BackendConnections)) => (m.as_str(), &[Part::Mark], &[]),
        None if set == CLUSTER_IPS => (CLUSTER_IPS, &[Part::Addr], &[]),
        _ => return None,
    };
    Some((name, key, value))
}

/// Encodes `a . b . …` in nft syntax as the concatenation of `parts`, each padded to 4 bytes.
fn encode(text: &str, parts: &[Part], family: u8) -> Option<Vec<u8>> {
    let words: Vec<&str> = text.split(" . ").collect();
    if words.len() != parts.len() {
        return None;
    }
    let mut out = Vec::new();
    for (word, part) in words.iter().zip(parts) {
        match part {
            Part::Mark => out.extend_from_slice(&word.parse::<u32>().ok()?.to_ne_bytes()),
            Part::Port => out.extend_from_slice(&[word.parse::<u16>().ok()?.to_be_bytes().as_slice(), &[0, 0]].concat()),
            Part::Addr => match (word.parse::<IpAddr>().ok()?, family) {
                (IpAddr::V4(a), NFPROTO_IPV4) => out.extend_from_slice(&a.octets()),
                (IpAddr::V6(a), NFPROTO_IPV6) => out.extend_from_slice(&a.octets()),
                _ => return None,
            },
        }
    }
    Some(out)
}

impl ElementBatch {
    /// The batch a script stands for, if every line of it is an element command of a set or map encoded
    /// here, in the form this crate writes (`add element ip switchyard backend-slots { 1 : 7, 2 : 8 }`).
    pub fn parse(script: &str) -> Option<ElementBatch> {
        let mut batch = ElementBatch::default();
        for line in script.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.splitn(5, ' ');
            let add = match (words.next()?, words.next()?) {
                ("add", "element") => true,
                ("delete", "element") => false,
                _ => return None,
            };
            let family = match words.next()? {
                "ip" => NFPROTO_IPV4,
                "ip6" => NFPROTO_IPV6,
                _ => return None,
            };
            if words.next()? != TABLE {
                return None;
            }
            let (set, rest) = words.next()?.split_once(' ')?;
            let (set, key, value) = layout(set)?;
            let list = rest.strip_prefix("{ ")?.strip_suffix(" }")?;
            let mut elements = Vec::new();
            for e in list.split(", ") {
                let (k, v) = match (value.is_empty() || !add, e.split_once(" : ")) {
                    (true, None) => (e, None),
                    (false, Some((k, v))) => (k, Some(encode(v, value, family)?)),
                    _ => return None,
                };
                elements.push((encode(k, key, family)?, v));
            }
            batch.commands.push(ElementCommand { add, family, set, elements });
        }
        // The kernel queues every answer before `send` returns, so all must fit in the socket's default
        // receive buffer (an ACK takes about 1 KiB of it), and the batch in one datagram of the default send
        // buffer. Larger scripts go to nft, which amortises its cache over them anyway.
        let fits = batch.commands.len() <= MAX_COMMANDS && batch.encode(0).len() <= MAX_DATAGRAM;
        (!batch.commands.is_empty() && fits).then_some(batch)
    }

    /// The batch as netlink messages (one datagram), with sequence numbers from `seq` on: begin, one message
    /// per command (each asking for an ACK), end.
    pub fn encode(&self, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        message(&mut out, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        for (i, c) in (1..).zip(&self.commands) {
            let (kind, flags) = match c.add {
                true => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
                false => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
            };
            message(&mut out, NFNL_SUBSYS_NFTABLES << 8 | kind, flags, seq + i, c.family, 0, |m| {
                attr(m, NFTA_SET_ELEM_LIST_TABLE, &[TABLE.as_bytes(), &[0]].concat());
                attr(m, NFTA_SET_ELEM_LIST_SET, &[c.set.as_bytes(), &[0]].concat());
                nest(m, NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                    for (key, value) in &c.elements {
                        nest(m, NFTA_LIST_ELEM, |m| {
                            nest(m, NFTA_SET_ELEM_KEY, |m| attr(m, NFTA_DATA_VALUE, key));
                            if let Some(value) = value {
                                nest(m, NFTA_SET_ELEM_DATA, |m| attr(m, NFTA_DATA_VALUE, value));
                            }
                        });
                    }
                });
            });
        }
        let end = seq + u32::try_from(self.commands.len()).expect("a script's lines fit in u32") + 1;
        message(&mut out, NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0, NFNL_SUBSYS_NFTABLES, |_| {});
        out
    }

    /// Sends the batch to the kernel of the calling thread's network namespace (on a socket the thread keeps)
    /// and checks that the kernel acknowledged every command. The kernel applies all of it or, if any command fails, none.
    pub fn apply(&self) -> Result<(), Error> {
        self.talk().map_err(|e| match e {
            Talk::Io(what, source) => Error::Io { dataplane: "nftables", what: format!("nf_tables netlink: {what}"), source },
            Talk::Rejected(message) => Error::Rejected { dataplane: "nftables", message },
        })
    }

    fn talk(&self) -> Result<(), Talk> {
        let ns = netns_id().map_err(|e| Talk::Io("reading the thread's network namespace", e))?;
        SOCKET.with_borrow_mut(|cached| {
            let socket = match cached {
                Some((id, socket)) if *id == ns => socket,
                _ => &cached.insert((ns, open()?)).1,
            };
            let result = self.exchange(socket);
            if matches!(result, Err(Talk::Io(..))) {
                *cached = None;
            }
            result
        })
    }

    fn exchange(&self, socket: &Socket) -> Result<(), Talk> {
        let io = |what: &'static str| move |e: io::Error| Talk::Io(what, e);
        // Whatever an earlier exchange left unread (answers after an error) is not for this batch.
        let _ = drain(socket, |_| {});
        let seq = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.subsec_nanos() | 1);
        let datagram = self.encode(seq);
        let sent = socket.send(&datagram, 0).map_err(io("send"))?;
        if sent != datagram.len() {
            return Err(Talk::Io("send", io::Error::other(format!("sent {sent} of {} bytes", datagram.len()))));
        }
        // The answers: an ACK (error 0) or an error per command.
        let mut acked = vec![false; self.commands.len()];
        let mut errors = Vec::new();
        drain(socket, |buf| {
            for (kind, reply_seq, payload) in messages(buf) {
                if kind != NLMSG_ERROR || payload.len() < 4 {
                    continue;
                }
                let code = i32::from_ne_bytes(payload[..4].try_into().expect("4 bytes"));
                let command = reply_seq.checked_sub(seq + 1).and_then(|i| usize::try_from(i).ok()).filter(|&i| i < acked.len());
                match (code, command) {
                    (0, Some(i)) => acked[i] = true,
                    (0, None) => {}
                    (code, command) => {
                        let what = command.map(|i| &self.commands[i]).map_or("batch".to_string(), |c| {
                            format!("{} element {}", if c.add { "add" } else { "delete" }, c.set)
                        });
                        errors.push(format!("{what}: {}", io::Error::from_raw_os_error(-code)));
                    }
                }
            }
        })
        .map_err(io("receiving the kernel's answer"))?;
        if !errors.is_empty() {
            return Err(Talk::Rejected(errors.join("; ")));
        }
        if let Some(i) = acked.iter().position(|a| !a) {
            return Err(Talk::Rejected(format!("no acknowledgement for command {} of {}", i + 1, acked.len())));
        }
        Ok(())
    }
}

thread_local! {
    /// This thread's socket and the network namespace it was opened in, kept open: closing a netfilter
    /// netlink socket makes the kernel (`nft_rcv_nl_event`) wait, under the nf_tables commit lock, until the
    /// previous transaction's objects are released after an RCU grace period (30-130 ms measured on a
    /// loaded 2-core machine, ten times the batch itself).
    static SOCKET: RefCell<Option<(NetnsId, Socket)>> = const { RefCell::new(None) };
}

/// A network namespace's identity: device and inode of its nsfs file.
type NetnsId = (u64, u64);

fn netns_id() -> io::Result<NetnsId> {
    let m = std::fs::metadata("/proc/thread-self/ns/net")?;
    Ok((m.dev(), m.ino()))
}

/// A netlink socket for nf_tables in the calling thread's network namespace.
fn open() -> Result<Socket, Talk> {
    let io = |what: &'static str| move |e: io::Error| Talk::Io(what, e);
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(io("socket"))?;
    socket.bind_auto().map_err(io("bind"))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io("connect"))?;
    // ACKs carry only the request's header, not the request.
    socket.set_cap_ack(true).map_err(io("NETLINK_CAP_ACK"))?;
    Ok(socket)
}

/// Hands every datagram queued on the socket to `f`, without waiting for more. The kernel has queued all
/// answers to a batch before `send` returns (it runs the batch in the sender's context); a batch that fails
/// may leave later commands unanswered, so waiting could hang.
fn drain(socket: &Socket, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    loop {
        let mut buf = Vec::with_capacity(65536);
        match socket.recv_from(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => f(&buf),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

enum Talk {
    Io(&'static str, io::Error),
    Rejected(String),
}

/// Appends a netlink message with an nfgenmsg header (`res_id` in network order) and the attributes `body`
/// writes.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    body(out);
    let len = u32::try_from(out.len() - start).expect("a message fits in u32");
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends an attribute, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("an attribute fits in u16");
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Appends a nested attribute holding what `body` writes.
fn nest(out: &mut Vec<u8>, kind: u16, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    body(out);
    let len = u16::try_from(out.len() - start).expect("an attribute fits in u16");
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// The messages of a datagram: (type, sequence number, payload).
fn messages(mut buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        out.push((kind, seq, &buf[16..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `backend-addrs` element (mark 7 -> 10.0.0.1 . 8080) encodes to exactly these bytes: mark
    /// host-endian, address and port network order, the port padded to 4 bytes.
    #[test]
    fn encodes_a_backend_addrs_element() {
        let batch = ElementBatch::parse("add element ip switchyard backend-addrs { 7 : 10.0.0.1 . 8080 }\n").unwrap();
        let bytes = batch.encode(100);
        let ne16 = |v: u16| v.to_ne_bytes().to_vec();
        let ne32 = |v: u32| v.to_ne_bytes().to_vec();
        let mut want = Vec::new();
        // Batch begin: header, nfgenmsg (AF_UNSPEC, v0, res_id NFNL_SUBSYS_NFTABLES big-endian).
        want.extend([ne32(20), ne16(0x10), ne16(1), ne32(100), ne32(0), vec![0, 0, 0, 10]].concat());
        // NEWSETELEM: 20 + table 16 + set 20 + elements 4 + list elem 4 + key 12 + data 16 = 92 bytes.
        want.extend([ne32(92), ne16(0x0a0c), ne16(0x405), ne32(101), ne32(0), vec![2, 0, 0, 0]].concat());
        want.extend([ne16(15), ne16(1), b"switchyard\0".to_vec(), vec![0]].concat());
        want.extend([ne16(18), ne16(2), b"backend-addrs\0".to_vec(), vec![0, 0]].concat());
        want.extend([ne16(36), ne16(0x8003), ne16(32), ne16(0x8001)].concat());
        want.extend([ne16(12), ne16(0x8001), ne16(8), ne16(1), ne32(7)].concat());
        want.extend([ne16(16), ne16(0x8002), ne16(12), ne16(1), vec![10, 0, 0, 1, 0x1f, 0x90, 0, 0]].concat());
        want.extend([ne32(20), ne16(0x11), ne16(1), ne32(102), ne32(0), vec![0, 0, 0, 10]].concat());
        assert_eq!(bytes, want);
    }

    /// IPv6 concatenations: address then mark; a delete carries keys only.
    #[test]
    fn encodes_ipv6_and_deletes() {
        let batch = ElementBatch::parse(
            "delete element ip6 switchyard hairpin { fd00::1 . 3, fd00::2 . 4 }\ndelete element ip6 switchyard backend-slots { 5 }\n",
        )
        .unwrap();
        let c = &batch.commands[0];
        assert_eq!((c.add, c.family, c.set), (false, NFPROTO_IPV6, "hairpin"));
        let mut key = "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
        key.extend(3u32.to_ne_bytes());
        assert_eq!(c.elements[0], (key, None));
        assert_eq!(batch.commands[1].elements, vec![(5u32.to_ne_bytes().to_vec(), None)]);
    }

    /// Anything else goes to nft: other maps, elements with comments, chains, the wrong family, other tables.
    #[test]
    fn leaves_other_scripts_to_nft() {
        for script in [
            "add element ip switchyard service-ips { 10.96.0.1 . tcp . 80 comment \"ClusterIP\" : goto service-a/b/tcp/- }\n",
            "add element ip switchyard backend-slots { 1 : 2 }\nflush chain ip switchyard service-a/b/tcp/-\n",
            "add element ip switchyard cluster-ips { fd00::1 }\n",
            "add element ip other backend-slots { 1 : 2 }\n",
            "add element ip switchyard backend-slots { 1 }\n",
            "add element ip switchyard backend-addrs { 1 : 10.0.0.1 . 99999 }\n",
            "",
        ] {
            assert_eq!(ElementBatch::parse(script), None, "{script}");
        }
        assert!(ElementBatch::parse("add element ip switchyard cluster-ips { 10.96.0.1 }\ndelete element ip switchyard backend-traffic { 4 }\n").is_some());
    }
}
