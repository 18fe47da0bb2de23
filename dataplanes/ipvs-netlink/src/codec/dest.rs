//! Destinations (real servers): `IPVS_CMD_ATTR_DEST` and its `IPVS_DEST_ATTR_*` attributes.

use std::net::IpAddr;

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, Parseable};

use super::service::{Family, InetAddr};
use super::stats::{Stats, Stats64Attr, StatsAttr};
use super::value::{array_of, be16_of, has_type_flags, nested, u16_of, u32_of, u8_of};
use super::ConvertError;
use crate::constants::*;

/// How packets reach a destination (the low bits of `IP_VS_CONN_F_*`; ipvsadm `-m/-g/-i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardMethod {
    /// `IP_VS_CONN_F_MASQ`: NAT (`-m`). What a kube-proxy replacement uses.
    Masq,
    /// `IP_VS_CONN_F_LOCALNODE`: the destination is this host; the kernel picks it for local addresses.
    Local,
    /// `IP_VS_CONN_F_TUNNEL`: IP-in-IP / GUE / GRE tunnel (`-i`).
    Tunnel,
    /// `IP_VS_CONN_F_DROUTE`: direct routing (`-g`).
    Route,
    /// `IP_VS_CONN_F_BYPASS`: cache bypass.
    Bypass,
    /// Another value.
    Other(u32),
}

impl ForwardMethod {
    /// The `IP_VS_CONN_F_*` value.
    pub fn value(self) -> u32 {
        match self {
            ForwardMethod::Masq => IP_VS_CONN_F_MASQ,
            ForwardMethod::Local => IP_VS_CONN_F_LOCALNODE,
            ForwardMethod::Tunnel => IP_VS_CONN_F_TUNNEL,
            ForwardMethod::Route => IP_VS_CONN_F_DROUTE,
            ForwardMethod::Bypass => IP_VS_CONN_F_BYPASS,
            ForwardMethod::Other(v) => v,
        }
    }

    /// The method of an `IP_VS_CONN_F_*` value.
    pub fn from_value(v: u32) -> ForwardMethod {
        match v {
            IP_VS_CONN_F_MASQ => ForwardMethod::Masq,
            IP_VS_CONN_F_LOCALNODE => ForwardMethod::Local,
            IP_VS_CONN_F_TUNNEL => ForwardMethod::Tunnel,
            IP_VS_CONN_F_DROUTE => ForwardMethod::Route,
            IP_VS_CONN_F_BYPASS => ForwardMethod::Bypass,
            v => ForwardMethod::Other(v),
        }
    }
}

/// A destination of a service: what `ipvsadm -a` creates and `ipvsadm -Ln --stats` lists under its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Its address; its family may differ from the service's only for tunnels.
    pub addr: IpAddr,
    /// Its port (for a fwmark service, 0 keeps the packet's port).
    pub port: u16,
    /// How packets reach it.
    pub fwd_method: ForwardMethod,
    /// Weight; 0 takes no new connections (drains), existing ones continue.
    pub weight: u32,
    /// Upper connection threshold; 0 is none.
    pub u_threshold: u32,
    /// Lower connection threshold; 0 is none.
    pub l_threshold: u32,
    /// Tunnel type for [`ForwardMethod::Tunnel`] (0 IPIP, 1 GUE, 2 GRE).
    pub tun_type: u8,
    /// Tunnel (GUE) port.
    pub tun_port: u16,
    /// Tunnel flags (`IP_VS_TUNNEL_ENCAP_FLAG_*`).
    pub tun_flags: u16,
    /// Active connections (`ActiveConn`); read from the kernel, never sent.
    pub active_conns: u32,
    /// Inactive connections (`InActConn`); read only.
    pub inact_conns: u32,
    /// Persistence templates pointing here (`PersistConn`); read only.
    pub persist_conns: u32,
    /// Counters; read only.
    pub stats: Stats,
}

impl Destination {
    /// A NAT destination of weight 1 without thresholds.
    pub fn new(addr: IpAddr, port: u16) -> Destination {
        Destination {
            addr,
            port,
            fwd_method: ForwardMethod::Masq,
            weight: 1,
            u_threshold: 0,
            l_threshold: 0,
            tun_type: 0,
            tun_port: 0,
            tun_flags: 0,
            active_conns: 0,
            inact_conns: 0,
            persist_conns: 0,
            stats: Stats::default(),
        }
    }

    /// The same destination with this weight.
    pub fn weight(mut self, weight: u32) -> Destination {
        self.weight = weight;
        self
    }

    /// The attributes of an add or edit request (every setting: the kernel requires them), in the order
    /// ipvsadm sends them. The tunnel settings are sent only for tunnels.
    pub fn to_attrs(&self) -> Vec<DestAttr> {
        let mut attrs = vec![
            DestAttr::Addr(self.addr.into()),
            DestAttr::Port(self.port),
            DestAttr::FwdMethod(self.fwd_method.value()),
            DestAttr::Weight(self.weight),
        ];
        if self.fwd_method == ForwardMethod::Tunnel {
            attrs.extend([
                DestAttr::TunType(self.tun_type),
                DestAttr::TunPort(self.tun_port),
                DestAttr::TunFlags(self.tun_flags),
            ]);
        }
        attrs.extend([
            DestAttr::UThreshold(self.u_threshold),
            DestAttr::LThreshold(self.l_threshold),
            DestAttr::AddrFamily(Family::of(self.addr).af()),
        ]);
        attrs
    }

    /// The attributes that name this destination (all a delete needs).
    pub fn id_attrs(&self) -> Vec<DestAttr> {
        vec![
            DestAttr::Addr(self.addr.into()),
            DestAttr::Port(self.port),
            DestAttr::AddrFamily(Family::of(self.addr).af()),
        ]
    }

    /// Reads a destination from its attributes (a dump reply). Kernels before 4.2 send no address family:
    /// then `service_family` (the service's) is used.
    pub fn from_attrs(attrs: &[DestAttr], service_family: Family) -> Result<Destination, ConvertError> {
        let missing = |attribute| ConvertError::Missing { object: "destination", attribute };
        let (mut addr, mut port, mut af) = (None, None, None);
        let mut d = Destination::new(IpAddr::from([0, 0, 0, 0]), 0);
        let (mut stats, mut stats64) = (None, None);
        for a in attrs {
            match a {
                DestAttr::Addr(v) => addr = Some(*v),
                DestAttr::Port(v) => port = Some(*v),
                DestAttr::AddrFamily(v) => af = Some(*v),
                DestAttr::FwdMethod(v) => d.fwd_method = ForwardMethod::from_value(v & IP_VS_CONN_F_FWD_MASK),
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::UThreshold(v) => d.u_threshold = *v,
                DestAttr::LThreshold(v) => d.l_threshold = *v,
                DestAttr::ActiveConns(v) => d.active_conns = *v,
                DestAttr::InactConns(v) => d.inact_conns = *v,
                DestAttr::PersistConns(v) => d.persist_conns = *v,
                DestAttr::TunType(v) => d.tun_type = *v,
                DestAttr::TunPort(v) => d.tun_port = *v,
                DestAttr::TunFlags(v) => d.tun_flags = *v,
                DestAttr::Stats(s) => stats = Some(Stats::from_attrs(s)),
                DestAttr::Stats64(s) => stats64 = Some(Stats::from_attrs64(s)),
                DestAttr::Other(_) => {}
            }
        }
        let family = match af {
            Some(af) => Family::from_af(af)?,
            None => service_family,
        };
        d.addr = addr.ok_or_else(|| missing("IPVS_DEST_ATTR_ADDR"))?.ip(family);
        d.port = port.ok_or_else(|| missing("IPVS_DEST_ATTR_PORT"))?;
        d.stats = stats64.or(stats).unwrap_or_default();
        Ok(d)
    }
}

/// An attribute of a destination (`IPVS_DEST_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DestAttr {
    /// `IPVS_DEST_ATTR_ADDR`: the address.
    Addr(InetAddr),
    /// `IPVS_DEST_ATTR_PORT`: the port (network byte order on the wire).
    Port(u16),
    /// `IPVS_DEST_ATTR_FWD_METHOD`: `IP_VS_CONN_F_*` forwarding method.
    FwdMethod(u32),
    /// `IPVS_DEST_ATTR_WEIGHT`.
    Weight(u32),
    /// `IPVS_DEST_ATTR_U_THRESH`: upper connection threshold.
    UThreshold(u32),
    /// `IPVS_DEST_ATTR_L_THRESH`: lower connection threshold.
    LThreshold(u32),
    /// `IPVS_DEST_ATTR_ACTIVE_CONNS`.
    ActiveConns(u32),
    /// `IPVS_DEST_ATTR_INACT_CONNS`.
    InactConns(u32),
    /// `IPVS_DEST_ATTR_PERSIST_CONNS`.
    PersistConns(u32),
    /// `IPVS_DEST_ATTR_STATS`: counters, legacy layout.
    Stats(Vec<StatsAttr>),
    /// `IPVS_DEST_ATTR_ADDR_FAMILY`: the address's family.
    AddrFamily(u16),
    /// `IPVS_DEST_ATTR_STATS64`: counters, 64-bit.
    Stats64(Vec<Stats64Attr>),
    /// `IPVS_DEST_ATTR_TUN_TYPE`.
    TunType(u8),
    /// `IPVS_DEST_ATTR_TUN_PORT` (network byte order on the wire).
    TunPort(u16),
    /// `IPVS_DEST_ATTR_TUN_FLAGS`.
    TunFlags(u16),
    /// Any other attribute, kept as it came.
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        use DestAttr::*;
        match self {
            Addr(_) => 16,
            TunType(_) => 1,
            Port(_) | AddrFamily(_) | TunPort(_) | TunFlags(_) => 2,
            FwdMethod(_) | Weight(_) | UThreshold(_) | LThreshold(_) | ActiveConns(_) | InactConns(_)
            | PersistConns(_) => 4,
            Stats(s) => s.as_slice().buffer_len(),
            Stats64(s) => s.as_slice().buffer_len(),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use DestAttr::*;
        match self {
            Addr(_) => IPVS_DEST_ATTR_ADDR,
            Port(_) => IPVS_DEST_ATTR_PORT,
            FwdMethod(_) => IPVS_DEST_ATTR_FWD_METHOD,
            Weight(_) => IPVS_DEST_ATTR_WEIGHT,
            UThreshold(_) => IPVS_DEST_ATTR_U_THRESH,
            LThreshold(_) => IPVS_DEST_ATTR_L_THRESH,
            ActiveConns(_) => IPVS_DEST_ATTR_ACTIVE_CONNS,
            InactConns(_) => IPVS_DEST_ATTR_INACT_CONNS,
            PersistConns(_) => IPVS_DEST_ATTR_PERSIST_CONNS,
            Stats(_) => IPVS_DEST_ATTR_STATS,
            AddrFamily(_) => IPVS_DEST_ATTR_ADDR_FAMILY,
            Stats64(_) => IPVS_DEST_ATTR_STATS64,
            TunType(_) => IPVS_DEST_ATTR_TUN_TYPE,
            TunPort(_) => IPVS_DEST_ATTR_TUN_PORT,
            TunFlags(_) => IPVS_DEST_ATTR_TUN_FLAGS,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use DestAttr::*;
        match self {
            Addr(a) => buf[..16].copy_from_slice(&a.0),
            TunType(v) => buf[0] = *v,
            Port(v) | TunPort(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            AddrFamily(v) | TunFlags(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            FwdMethod(v) | Weight(v) | UThreshold(v) | LThreshold(v) | ActiveConns(v) | InactConns(v)
            | PersistConns(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Stats(s) => s.as_slice().emit(buf),
            Stats64(s) => s.as_slice().emit(buf),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use DestAttr::*;
        let v = buf.value();
        let typed = if has_type_flags(buf) {
            None
        } else {
            match buf.kind() {
                IPVS_DEST_ATTR_ADDR => array_of(v).map(|a| Addr(InetAddr(a))),
                IPVS_DEST_ATTR_PORT => be16_of(v).map(Port),
                IPVS_DEST_ATTR_FWD_METHOD => u32_of(v).map(FwdMethod),
                IPVS_DEST_ATTR_WEIGHT => u32_of(v).map(Weight),
                IPVS_DEST_ATTR_U_THRESH => u32_of(v).map(UThreshold),
                IPVS_DEST_ATTR_L_THRESH => u32_of(v).map(LThreshold),
                IPVS_DEST_ATTR_ACTIVE_CONNS => u32_of(v).map(ActiveConns),
                IPVS_DEST_ATTR_INACT_CONNS => u32_of(v).map(InactConns),
                IPVS_DEST_ATTR_PERSIST_CONNS => u32_of(v).map(PersistConns),
                IPVS_DEST_ATTR_STATS => Some(Stats(nested(v).context("in IPVS_DEST_ATTR_STATS")?)),
                IPVS_DEST_ATTR_ADDR_FAMILY => u16_of(v).map(AddrFamily),
                IPVS_DEST_ATTR_STATS64 => Some(Stats64(nested(v).context("in IPVS_DEST_ATTR_STATS64")?)),
                IPVS_DEST_ATTR_TUN_TYPE => u8_of(v).map(TunType),
                IPVS_DEST_ATTR_TUN_PORT => be16_of(v).map(TunPort),
                IPVS_DEST_ATTR_TUN_FLAGS => u16_of(v).map(TunFlags),
                _ => None,
            }
        };
        match typed {
            Some(a) => Ok(a),
            None => Ok(Other(DefaultNla::parse(buf)?)),
        }
    }
}
