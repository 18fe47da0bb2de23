//! Helpers to read and write attribute values exactly as the kernel's `nla_put_*` writes them.
//!
//! Every reader returns `None` when the value is not in the kernel's canonical form (wrong length, a string
//! without its single trailing NUL, ...); the attribute is then kept as raw bytes, so emitting it again
//! gives back the same bytes.

use netlink_packet_core::{DecodeError, NlaBuffer, NlasIterator, Parseable};

pub(crate) fn u8_of(v: &[u8]) -> Option<u8> {
    <[u8; 1]>::try_from(v).ok().map(|b| b[0])
}

/// `nla_put_u16`: host byte order.
pub(crate) fn u16_of(v: &[u8]) -> Option<u16> {
    <[u8; 2]>::try_from(v).ok().map(u16::from_ne_bytes)
}

/// `nla_put_be16`: network byte order (ports).
pub(crate) fn be16_of(v: &[u8]) -> Option<u16> {
    <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes)
}

/// `nla_put_u32`: host byte order.
pub(crate) fn u32_of(v: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(v).ok().map(u32::from_ne_bytes)
}

/// `nla_put_u64_64bit`: host byte order.
pub(crate) fn u64_of(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_ne_bytes)
}

pub(crate) fn array_of<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    <[u8; N]>::try_from(v).ok()
}

/// `nla_put_string`: the bytes and one NUL.
pub(crate) fn string_of(v: &[u8]) -> Option<String> {
    let (last, text) = v.split_last()?;
    if *last != 0 || text.contains(&0) {
        return None;
    }
    String::from_utf8(text.to_vec()).ok()
}

/// Length of a string written as `nla_put_string` writes it.
pub(crate) fn string_len(s: &str) -> usize {
    s.len() + 1
}

pub(crate) fn emit_string(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

/// True if the attribute's type carries `NLA_F_NESTED` or `NLA_F_NET_BYTEORDER`. IPVS never sets them; an
/// attribute that has them is kept raw so that it is emitted again with them.
pub(crate) fn has_type_flags<T: AsRef<[u8]> + ?Sized>(buf: &NlaBuffer<&T>) -> bool {
    buf.nested_flag() || buf.network_byte_order_flag()
}

/// Parses a nested attribute's value as a list of attributes.
pub(crate) fn nested<A>(v: &[u8]) -> Result<Vec<A>, DecodeError>
where
    A: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    NlasIterator::new(v).map(|nla| nla.and_then(|nla| A::parse(&nla))).collect()
}
