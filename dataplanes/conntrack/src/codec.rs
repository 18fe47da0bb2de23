//! ctnetlink messages: the dump request, the delete request, and parsing what the kernel sends back.
//! Pure: bytes in, bytes out. Constants are those of `linux/netfilter/nfnetlink_conntrack.h`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use switchyard_model::Family;

/// The UDP protocol number.
pub const IPPROTO_UDP: u8 = 17;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// One direction of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// Source address and port.
    pub src: (IpAddr, u16),
    /// Destination address and port.
    pub dst: (IpAddr, u16),
}

/// A conntrack entry, as much of it as deleting needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// L4 protocol number.
    pub protocol: u8,
    /// The original direction.
    pub orig: Tuple,
    /// The reply direction (its source is where a DNATed flow really went).
    pub reply: Tuple,
    /// The conntrack zone.
    pub zone: u16,
}

impl Entry {
    /// Original destination.
    pub fn orig_dst(&self) -> (IpAddr, u16) {
        self.orig.dst
    }
    /// Reply source.
    pub fn reply_src(&self) -> (IpAddr, u16) {
        self.reply.src
    }
}

/// A parsed kernel message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A conntrack entry (from a dump).
    Entry(Entry),
    /// A positive acknowledgement.
    Ack,
    /// End of a dump.
    Done,
    /// An error, as a positive errno.
    Error(i32),
}

fn header(buf: &mut Vec<u8>, msg_type: u16, flags: u16, seq: u32, family: u8) {
    buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched by finish()
    buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg_type).to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian)
    buf.extend_from_slice(&[family, 0, 0, 0]);
}

fn finish(mut buf: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(buf.len()).expect("small message");
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

fn family_byte(family: Family) -> u8 {
    match family {
        Family::V4 => AF_INET,
        Family::V6 => AF_INET6,
    }
}

/// A request to dump every entry of a family.
pub fn dump_request(family: Family, seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    header(&mut buf, IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, family_byte(family));
    finish(buf)
}

fn attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = u16::try_from(4 + payload.len()).expect("small attribute");
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn nested(buf: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let mut body = Vec::new();
    inner(&mut body);
    attr(buf, ty | NLA_F_NESTED, &body);
}

fn tuple_attrs(buf: &mut Vec<u8>, ty: u16, protocol: u8, t: &Tuple) {
    nested(buf, ty, |b| {
        nested(b, CTA_TUPLE_IP, |b| match (t.src.0, t.dst.0) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(b, CTA_IP_V4_SRC, &s.octets());
                attr(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                attr(b, CTA_IP_V6_SRC, &v6(s).octets());
                attr(b, CTA_IP_V6_DST, &v6(d).octets());
            }
        });
        nested(b, CTA_TUPLE_PROTO, |b| {
            attr(b, CTA_PROTO_NUM, &[protocol]);
            attr(b, CTA_PROTO_SRC_PORT, &t.src.1.to_be_bytes());
            attr(b, CTA_PROTO_DST_PORT, &t.dst.1.to_be_bytes());
        });
    });
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// A request to delete the entry with `entry`'s original tuple (and zone).
pub fn delete_request(entry: &Entry, seq: u32) -> Vec<u8> {
    let family = if entry.orig.src.0.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut buf = Vec::new();
    header(&mut buf, IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, seq, family);
    tuple_attrs(&mut buf, CTA_TUPLE_ORIG, entry.protocol, &entry.orig);
    if entry.zone != 0 {
        attr(&mut buf, CTA_ZONE, &entry.zone.to_be_bytes());
    }
    finish(buf)
}

/// Iterates over the attributes in `buf`: (type without flags, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((ty, payload))
    })
}

fn parse_tuple(buf: &[u8]) -> Option<(u8, Tuple)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in attrs(p) {
                    let ip = match a.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(a).ok()?)),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?)),
                        _ => continue,
                    };
                    match ty {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, a) in attrs(p) {
                    match (ty, a) {
                        (CTA_PROTO_NUM, [n, ..]) => proto = Some(*n),
                        (CTA_PROTO_SRC_PORT, [a, b, ..]) => sport = u16::from_be_bytes([*a, *b]),
                        (CTA_PROTO_DST_PORT, [a, b, ..]) => dport = u16::from_be_bytes([*a, *b]),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((proto?, Tuple { src: (src?, sport), dst: (dst?, dport) }))
}

/// Parses every netlink message in a datagram.
pub fn parse(mut buf: &[u8]) -> Result<Vec<Reply>, &'static str> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return Err("message length");
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let body = &buf[16..len];
        match ty {
            NLMSG_DONE => out.push(Reply::Done),
            NLMSG_ERROR => {
                let code = body.get(..4).ok_or("error message")?;
                let errno = -i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
                out.push(if errno == 0 { Reply::Ack } else { Reply::Error(errno) });
            }
            _ if ty >> 8 == NFNL_SUBSYS_CTNETLINK => {
                let attrs_buf = body.get(4..).ok_or("nfgenmsg")?;
                let (mut orig, mut reply, mut zone) = (None, None, 0);
                for (ty, p) in attrs(attrs_buf) {
                    match ty {
                        CTA_TUPLE_ORIG => orig = parse_tuple(p),
                        CTA_TUPLE_REPLY => reply = parse_tuple(p),
                        CTA_ZONE if p.len() >= 2 => zone = u16::from_be_bytes([p[0], p[1]]),
                        _ => {}
                    }
                }
                if let (Some((protocol, orig)), Some((_, reply))) = (orig, reply) {
                    out.push(Reply::Entry(Entry { protocol, orig, reply, zone }));
                }
            }
            _ => {}
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
