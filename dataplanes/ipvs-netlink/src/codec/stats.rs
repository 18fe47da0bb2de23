//! Counters of a service or destination: `IPVS_*_ATTR_STATS` (32-bit counters, 64-bit byte counts) and
//! `IPVS_*_ATTR_STATS64` (all 64-bit).

use netlink_packet_core::{DecodeError, DefaultNla, Nla, NlaBuffer, Parseable};

use super::value::{has_type_flags, u32_of, u64_of};
use crate::constants::*;

/// An attribute of `IPVS_SVC_ATTR_STATS` / `IPVS_DEST_ATTR_STATS`: the legacy layout, where only the byte
/// counts are 64-bit (`struct ip_vs_stats_user`). Rates are per second, averaged by the kernel's estimator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatsAttr {
    /// `IPVS_STATS_ATTR_CONNS`: connections scheduled.
    Conns(u32),
    /// `IPVS_STATS_ATTR_INPKTS`: packets in.
    InPkts(u32),
    /// `IPVS_STATS_ATTR_OUTPKTS`: packets out.
    OutPkts(u32),
    /// `IPVS_STATS_ATTR_INBYTES`: bytes in.
    InBytes(u64),
    /// `IPVS_STATS_ATTR_OUTBYTES`: bytes out.
    OutBytes(u64),
    /// `IPVS_STATS_ATTR_CPS`: connections per second.
    Cps(u32),
    /// `IPVS_STATS_ATTR_INPPS`: packets in per second.
    InPps(u32),
    /// `IPVS_STATS_ATTR_OUTPPS`: packets out per second.
    OutPps(u32),
    /// `IPVS_STATS_ATTR_INBPS`: bytes in per second.
    InBps(u32),
    /// `IPVS_STATS_ATTR_OUTBPS`: bytes out per second.
    OutBps(u32),
    /// Any other attribute (`IPVS_STATS_ATTR_PAD` on architectures that align 64-bit values), kept as it came.
    Other(DefaultNla),
}

/// An attribute of `IPVS_SVC_ATTR_STATS64` / `IPVS_DEST_ATTR_STATS64`: every counter and rate 64-bit.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stats64Attr {
    /// `IPVS_STATS_ATTR_CONNS`: connections scheduled.
    Conns(u64),
    /// `IPVS_STATS_ATTR_INPKTS`: packets in.
    InPkts(u64),
    /// `IPVS_STATS_ATTR_OUTPKTS`: packets out.
    OutPkts(u64),
    /// `IPVS_STATS_ATTR_INBYTES`: bytes in.
    InBytes(u64),
    /// `IPVS_STATS_ATTR_OUTBYTES`: bytes out.
    OutBytes(u64),
    /// `IPVS_STATS_ATTR_CPS`: connections per second.
    Cps(u64),
    /// `IPVS_STATS_ATTR_INPPS`: packets in per second.
    InPps(u64),
    /// `IPVS_STATS_ATTR_OUTPPS`: packets out per second.
    OutPps(u64),
    /// `IPVS_STATS_ATTR_INBPS`: bytes in per second.
    InBps(u64),
    /// `IPVS_STATS_ATTR_OUTBPS`: bytes out per second.
    OutBps(u64),
    /// Any other attribute, kept as it came.
    Other(DefaultNla),
}

impl Nla for StatsAttr {
    fn value_len(&self) -> usize {
        use StatsAttr::*;
        match self {
            InBytes(_) | OutBytes(_) => 8,
            Conns(_) | InPkts(_) | OutPkts(_) | Cps(_) | InPps(_) | OutPps(_) | InBps(_) | OutBps(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use StatsAttr::*;
        match self {
            Conns(_) => IPVS_STATS_ATTR_CONNS,
            InPkts(_) => IPVS_STATS_ATTR_INPKTS,
            OutPkts(_) => IPVS_STATS_ATTR_OUTPKTS,
            InBytes(_) => IPVS_STATS_ATTR_INBYTES,
            OutBytes(_) => IPVS_STATS_ATTR_OUTBYTES,
            Cps(_) => IPVS_STATS_ATTR_CPS,
            InPps(_) => IPVS_STATS_ATTR_INPPS,
            OutPps(_) => IPVS_STATS_ATTR_OUTPPS,
            InBps(_) => IPVS_STATS_ATTR_INBPS,
            OutBps(_) => IPVS_STATS_ATTR_OUTBPS,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use StatsAttr::*;
        match self {
            InBytes(v) | OutBytes(v) => buf[..8].copy_from_slice(&v.to_ne_bytes()),
            Conns(v) | InPkts(v) | OutPkts(v) | Cps(v) | InPps(v) | OutPps(v) | InBps(v) | OutBps(v) => {
                buf[..4].copy_from_slice(&v.to_ne_bytes())
            }
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for StatsAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use StatsAttr::*;
        let v = buf.value();
        let typed = if has_type_flags(buf) {
            None
        } else {
            match buf.kind() {
                IPVS_STATS_ATTR_CONNS => u32_of(v).map(Conns),
                IPVS_STATS_ATTR_INPKTS => u32_of(v).map(InPkts),
                IPVS_STATS_ATTR_OUTPKTS => u32_of(v).map(OutPkts),
                IPVS_STATS_ATTR_INBYTES => u64_of(v).map(InBytes),
                IPVS_STATS_ATTR_OUTBYTES => u64_of(v).map(OutBytes),
                IPVS_STATS_ATTR_CPS => u32_of(v).map(Cps),
                IPVS_STATS_ATTR_INPPS => u32_of(v).map(InPps),
                IPVS_STATS_ATTR_OUTPPS => u32_of(v).map(OutPps),
                IPVS_STATS_ATTR_INBPS => u32_of(v).map(InBps),
                IPVS_STATS_ATTR_OUTBPS => u32_of(v).map(OutBps),
                _ => None,
            }
        };
        match typed {
            Some(a) => Ok(a),
            None => Ok(Other(DefaultNla::parse(buf)?)),
        }
    }
}

impl Nla for Stats64Attr {
    fn value_len(&self) -> usize {
        match self {
            Stats64Attr::Other(nla) => nla.value_len(),
            _ => 8,
        }
    }

    fn kind(&self) -> u16 {
        use Stats64Attr::*;
        match self {
            Conns(_) => IPVS_STATS_ATTR_CONNS,
            InPkts(_) => IPVS_STATS_ATTR_INPKTS,
            OutPkts(_) => IPVS_STATS_ATTR_OUTPKTS,
            InBytes(_) => IPVS_STATS_ATTR_INBYTES,
            OutBytes(_) => IPVS_STATS_ATTR_OUTBYTES,
            Cps(_) => IPVS_STATS_ATTR_CPS,
            InPps(_) => IPVS_STATS_ATTR_INPPS,
            OutPps(_) => IPVS_STATS_ATTR_OUTPPS,
            InBps(_) => IPVS_STATS_ATTR_INBPS,
            OutBps(_) => IPVS_STATS_ATTR_OUTBPS,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use Stats64Attr::*;
        match self {
            Conns(v) | InPkts(v) | OutPkts(v) | InBytes(v) | OutBytes(v) | Cps(v) | InPps(v) | OutPps(v) | InBps(v)
            | OutBps(v) => buf[..8].copy_from_slice(&v.to_ne_bytes()),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Stats64Attr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use Stats64Attr::*;
        let v = buf.value();
        let typed = if has_type_flags(buf) {
            None
        } else {
            let make: Option<fn(u64) -> Stats64Attr> = match buf.kind() {
                IPVS_STATS_ATTR_CONNS => Some(Conns),
                IPVS_STATS_ATTR_INPKTS => Some(InPkts),
                IPVS_STATS_ATTR_OUTPKTS => Some(OutPkts),
                IPVS_STATS_ATTR_INBYTES => Some(InBytes),
                IPVS_STATS_ATTR_OUTBYTES => Some(OutBytes),
                IPVS_STATS_ATTR_CPS => Some(Cps),
                IPVS_STATS_ATTR_INPPS => Some(InPps),
                IPVS_STATS_ATTR_OUTPPS => Some(OutPps),
                IPVS_STATS_ATTR_INBPS => Some(InBps),
                IPVS_STATS_ATTR_OUTBPS => Some(OutBps),
                _ => None,
            };
            make.zip(u64_of(v)).map(|(make, n)| make(n))
        };
        match typed {
            Some(a) => Ok(a),
            None => Ok(Other(DefaultNla::parse(buf)?)),
        }
    }
}

/// The counters of a service or destination, as `ipvsadm --stats --rate` shows them. Counts are since the
/// object was created or last zeroed; the kernel folds them in from per-CPU counters about every 2 s, so a
/// packet shows up in them with that delay. Rates are per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets in (client to destination).
    pub inpkts: u64,
    /// Packets out (destination to client; only seen with NAT).
    pub outpkts: u64,
    /// Bytes in.
    pub inbytes: u64,
    /// Bytes out.
    pub outbytes: u64,
    /// Connections per second.
    pub cps: u64,
    /// Packets in per second.
    pub inpps: u64,
    /// Packets out per second.
    pub outpps: u64,
    /// Bytes in per second.
    pub inbps: u64,
    /// Bytes out per second.
    pub outbps: u64,
}

impl Stats {
    /// Reads the legacy (`*_ATTR_STATS`) counters.
    pub fn from_attrs(attrs: &[StatsAttr]) -> Stats {
        use StatsAttr::*;
        let mut s = Stats::default();
        for a in attrs {
            match *a {
                Conns(v) => s.conns = v.into(),
                InPkts(v) => s.inpkts = v.into(),
                OutPkts(v) => s.outpkts = v.into(),
                InBytes(v) => s.inbytes = v,
                OutBytes(v) => s.outbytes = v,
                Cps(v) => s.cps = v.into(),
                InPps(v) => s.inpps = v.into(),
                OutPps(v) => s.outpps = v.into(),
                InBps(v) => s.inbps = v.into(),
                OutBps(v) => s.outbps = v.into(),
                Other(_) => {}
            }
        }
        s
    }

    /// Reads the 64-bit (`*_ATTR_STATS64`) counters.
    pub fn from_attrs64(attrs: &[Stats64Attr]) -> Stats {
        use Stats64Attr::*;
        let mut s = Stats::default();
        for a in attrs {
            match *a {
                Conns(v) => s.conns = v,
                InPkts(v) => s.inpkts = v,
                OutPkts(v) => s.outpkts = v,
                InBytes(v) => s.inbytes = v,
                OutBytes(v) => s.outbytes = v,
                Cps(v) => s.cps = v,
                InPps(v) => s.inpps = v,
                OutPps(v) => s.outpps = v,
                InBps(v) => s.inbps = v,
                OutBps(v) => s.outbps = v,
                Other(_) => {}
            }
        }
        s
    }

    /// The 64-bit attribute list of these counters.
    pub fn to_attrs64(&self) -> Vec<Stats64Attr> {
        use Stats64Attr::*;
        vec![
            Conns(self.conns),
            InPkts(self.inpkts),
            OutPkts(self.outpkts),
            InBytes(self.inbytes),
            OutBytes(self.outbytes),
            Cps(self.cps),
            InPps(self.inpps),
            OutPps(self.outpps),
            InBps(self.inbps),
            OutBps(self.outbps),
        ]
    }
}
