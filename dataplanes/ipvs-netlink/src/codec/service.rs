//! Virtual services: `IPVS_CMD_ATTR_SERVICE` and its `IPVS_SVC_ATTR_*` attributes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, Parseable};

use super::stats::{Stats, Stats64Attr, StatsAttr};
use super::value::{array_of, be16_of, emit_string, has_type_flags, nested, string_len, string_of, u16_of, u32_of};
use super::ConvertError;
use crate::constants::*;

/// An address as IPVS carries it: the 16 bytes of `union nf_inet_addr`, an IPv4 address in the first 4
/// (the rest zero). Which one it is comes from the address family next to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct InetAddr(pub [u8; 16]);

impl InetAddr {
    /// The address, read for this family.
    pub fn ip(&self, family: Family) -> IpAddr {
        match family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(self.0[0], self.0[1], self.0[2], self.0[3])),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(self.0)),
        }
    }
}

impl From<IpAddr> for InetAddr {
    fn from(ip: IpAddr) -> InetAddr {
        let mut b = [0; 16];
        match ip {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b = v6.octets(),
        }
        InetAddr(b)
    }
}

/// An address family IPVS supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `AF_INET`.
    Ipv4,
    /// `AF_INET6`.
    Ipv6,
}

impl Family {
    /// The `AF_*` number.
    pub fn af(self) -> u16 {
        match self {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        }
    }

    /// The family of an `AF_*` number.
    pub fn from_af(af: u16) -> Result<Family, ConvertError> {
        match af {
            AF_INET => Ok(Family::Ipv4),
            AF_INET6 => Ok(Family::Ipv6),
            other => Err(ConvertError::UnknownFamily(other)),
        }
    }

    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// The transport protocol of an address-based service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Protocol {
    /// `IPPROTO_TCP` (`ipvsadm -t`).
    Tcp,
    /// `IPPROTO_UDP` (`ipvsadm -u`).
    Udp,
    /// `IPPROTO_SCTP` (`ipvsadm --sctp-service`).
    Sctp,
    /// Another protocol number.
    Other(u16),
}

impl Protocol {
    /// The `IPPROTO_*` number.
    pub fn number(self) -> u16 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
            Protocol::Sctp => IPPROTO_SCTP,
            Protocol::Other(n) => n,
        }
    }

    /// The protocol of an `IPPROTO_*` number.
    pub fn from_number(n: u16) -> Protocol {
        match n {
            IPPROTO_TCP => Protocol::Tcp,
            IPPROTO_UDP => Protocol::Udp,
            IPPROTO_SCTP => Protocol::Sctp,
            n => Protocol::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("TCP"),
            Protocol::Udp => f.write_str("UDP"),
            Protocol::Sctp => f.write_str("SCTP"),
            Protocol::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// Virtual service flags (`IP_VS_SVC_F_*`). The kernel adds `HASHED` to every service it reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ServiceFlags(pub u32);

impl ServiceFlags {
    /// `IP_VS_SVC_F_PERSISTENT`: a client sticks to its destination for the service's timeout (`-p`).
    pub const PERSISTENT: ServiceFlags = ServiceFlags(IP_VS_SVC_F_PERSISTENT);
    /// `IP_VS_SVC_F_HASHED`: set by the kernel on every service in its table.
    pub const HASHED: ServiceFlags = ServiceFlags(IP_VS_SVC_F_HASHED);
    /// `IP_VS_SVC_F_ONEPACKET`: schedule every UDP datagram on its own (`-o`).
    pub const ONEPACKET: ServiceFlags = ServiceFlags(IP_VS_SVC_F_ONEPACKET);
    /// `IP_VS_SVC_F_SCHED1` (`sh`/`mh`: fall back to another destination when the chosen one is unavailable).
    pub const SCHED1: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED1);
    /// `IP_VS_SVC_F_SCHED2` (`sh`/`mh`: hash the source port too).
    pub const SCHED2: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED2);
    /// `IP_VS_SVC_F_SCHED3`.
    pub const SCHED3: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED3);
    /// `IP_VS_SVC_F_SCHED_SH_FALLBACK` (`sh-fallback`, `mh-fallback`), the same bit as `SCHED1`.
    pub const SH_FALLBACK: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED_SH_FALLBACK);
    /// `IP_VS_SVC_F_SCHED_SH_PORT` (`sh-port`, `mh-port`), the same bit as `SCHED2`.
    pub const SH_PORT: ServiceFlags = ServiceFlags(IP_VS_SVC_F_SCHED_SH_PORT);

    /// True if every bit of `other` is set here.
    pub fn contains(self, other: ServiceFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// These flags without the kernel's `HASHED` bit: what a caller sets.
    pub fn without_hashed(self) -> ServiceFlags {
        ServiceFlags(self.0 & !IP_VS_SVC_F_HASHED)
    }
}

impl std::ops::BitOr for ServiceFlags {
    type Output = ServiceFlags;
    fn bitor(self, rhs: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for ServiceFlags {
    fn bitor_assign(&mut self, rhs: ServiceFlags) {
        self.0 |= rhs.0
    }
}

/// The persistence netmask (`ipvsadm -M`), as the kernel keeps it in `__be32 netmask`: for IPv4 the mask in
/// network byte order, for IPv6 the prefix length as a host-order integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Netmask(pub [u8; 4]);

impl Netmask {
    /// The netmask of a prefix length (0..=32 for IPv4, 0..=128 for IPv6; longer ones are clamped).
    pub fn from_prefix(family: Family, len: u8) -> Netmask {
        match family {
            Family::Ipv4 => {
                let len = u32::from(len.min(32));
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                Netmask(mask.to_be_bytes())
            }
            Family::Ipv6 => Netmask(u32::from(len.min(128)).to_ne_bytes()),
        }
    }

    /// The netmask that keeps the whole address: /32 or /128 (ipvsadm's default).
    pub fn full(family: Family) -> Netmask {
        match family {
            Family::Ipv4 => Netmask::from_prefix(family, 32),
            Family::Ipv6 => Netmask::from_prefix(family, 128),
        }
    }

    /// The prefix length, if this is a valid netmask for the family.
    pub fn prefix_len(&self, family: Family) -> Option<u8> {
        match family {
            Family::Ipv4 => {
                let mask = u32::from_be_bytes(self.0);
                (mask.leading_ones() + mask.trailing_zeros() == 32).then_some(mask.leading_ones() as u8)
            }
            Family::Ipv6 => u8::try_from(u32::from_ne_bytes(self.0)).ok().filter(|l| *l <= 128),
        }
    }
}

/// What identifies a virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceId {
    /// A virtual address, protocol and port (`ipvsadm -t/-u/--sctp-service ADDR:PORT`).
    Inet {
        /// The transport protocol.
        protocol: Protocol,
        /// The virtual address.
        addr: IpAddr,
        /// The virtual port; 0 with the `PERSISTENT` flag means every port.
        port: u16,
    },
    /// A firewall mark (`ipvsadm -f MARK`), in one address family.
    Fwmark {
        /// The address family of the packets it takes.
        family: Family,
        /// The mark, not 0.
        mark: u32,
    },
}

impl ServiceId {
    /// A TCP service.
    pub fn tcp(addr: IpAddr, port: u16) -> ServiceId {
        ServiceId::Inet { protocol: Protocol::Tcp, addr, port }
    }

    /// A UDP service.
    pub fn udp(addr: IpAddr, port: u16) -> ServiceId {
        ServiceId::Inet { protocol: Protocol::Udp, addr, port }
    }

    /// An SCTP service.
    pub fn sctp(addr: IpAddr, port: u16) -> ServiceId {
        ServiceId::Inet { protocol: Protocol::Sctp, addr, port }
    }

    /// A firewall-mark service.
    pub fn fwmark(family: Family, mark: u32) -> ServiceId {
        ServiceId::Fwmark { family, mark }
    }

    /// The address family.
    pub fn family(&self) -> Family {
        match self {
            ServiceId::Inet { addr, .. } => Family::of(*addr),
            ServiceId::Fwmark { family, .. } => *family,
        }
    }

    /// The attributes that name this service (all a delete or a destination request needs), in the order
    /// ipvsadm sends them.
    pub fn to_attrs(&self) -> Vec<ServiceAttr> {
        let mut attrs = vec![ServiceAttr::AddressFamily(self.family().af())];
        match *self {
            ServiceId::Inet { protocol, addr, port } => {
                attrs.push(ServiceAttr::Protocol(protocol.number()));
                attrs.push(ServiceAttr::Addr(addr.into()));
                attrs.push(ServiceAttr::Port(port));
            }
            ServiceId::Fwmark { mark, .. } => attrs.push(ServiceAttr::Fwmark(mark)),
        }
        attrs
    }

    /// Reads the identity of a service from its attributes.
    pub fn from_attrs(attrs: &[ServiceAttr]) -> Result<ServiceId, ConvertError> {
        let missing = |attribute| ConvertError::Missing { object: "service", attribute };
        let mut af = None;
        let (mut protocol, mut addr, mut port, mut fwmark) = (None, None, None, None);
        for a in attrs {
            match a {
                ServiceAttr::AddressFamily(v) => af = Some(*v),
                ServiceAttr::Protocol(v) => protocol = Some(*v),
                ServiceAttr::Addr(v) => addr = Some(*v),
                ServiceAttr::Port(v) => port = Some(*v),
                ServiceAttr::Fwmark(v) => fwmark = Some(*v),
                _ => {}
            }
        }
        let family = Family::from_af(af.ok_or_else(|| missing("IPVS_SVC_ATTR_AF"))?)?;
        if let Some(mark) = fwmark.filter(|m| *m != 0) {
            return Ok(ServiceId::Fwmark { family, mark });
        }
        Ok(ServiceId::Inet {
            protocol: Protocol::from_number(protocol.ok_or_else(|| missing("IPVS_SVC_ATTR_PROTOCOL"))?),
            addr: addr.ok_or_else(|| missing("IPVS_SVC_ATTR_ADDR"))?.ip(family),
            port: port.ok_or_else(|| missing("IPVS_SVC_ATTR_PORT"))?,
        })
    }
}

/// As ipvsadm lists it: `TCP 10.96.0.1:80`, `UDP [fd00::1]:53`, `FWM 7 IPv6`.
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceId::Inet { protocol, addr, port } => write!(f, "{protocol} {}", SocketAddr::new(*addr, *port)),
            ServiceId::Fwmark { family: Family::Ipv4, mark } => write!(f, "FWM {mark}"),
            ServiceId::Fwmark { family: Family::Ipv6, mark } => write!(f, "FWM {mark} IPv6"),
        }
    }
}

/// A virtual service: what `ipvsadm -A` creates and `ipvsadm -Ln --stats` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// What identifies it.
    pub id: ServiceId,
    /// The scheduler's name (`rr`, `wrr`, `lc`, `wlc`, `lblc`, `lblcr`, `dh`, `sh`, `sed`, `nq`, `fo`, `ovf`,
    /// `mh`; the kernel loads module `ip_vs_NAME`). The kernel reports `none` for a service without one.
    pub scheduler: String,
    /// Flags. The kernel reports `HASHED` on top of what was set.
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (meaningful with [`ServiceFlags::PERSISTENT`]).
    pub timeout: u32,
    /// Persistence granularity: clients in one netmask share a destination.
    pub netmask: Netmask,
    /// Persistence engine (`sip`), if any.
    pub pe_name: Option<String>,
    /// Counters; read from the kernel, never sent.
    pub stats: Stats,
}

impl Service {
    /// A service with this scheduler, no flags, no persistence, the full netmask.
    pub fn new(id: ServiceId, scheduler: impl Into<String>) -> Service {
        Service {
            id,
            scheduler: scheduler.into(),
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: Netmask::full(id.family()),
            pe_name: None,
            stats: Stats::default(),
        }
    }

    /// The same service with persistence (`ipvsadm -p TIMEOUT`).
    pub fn persistent(mut self, timeout: u32) -> Service {
        self.flags |= ServiceFlags::PERSISTENT;
        self.timeout = timeout;
        self
    }

    /// The attributes of an add or edit request: the identity, then every setting (the kernel requires all
    /// of them), in the order ipvsadm sends them. The flags are sent with an all-ones mask, so they replace
    /// the service's flags.
    pub fn to_attrs(&self) -> Vec<ServiceAttr> {
        let mut attrs = self.id.to_attrs();
        attrs.push(ServiceAttr::SchedName(self.scheduler.clone()));
        if let Some(pe) = &self.pe_name {
            attrs.push(ServiceAttr::PeName(pe.clone()));
        }
        attrs.push(ServiceAttr::Flags { flags: self.flags.0, mask: u32::MAX });
        attrs.push(ServiceAttr::Timeout(self.timeout));
        attrs.push(ServiceAttr::Netmask(self.netmask));
        attrs
    }

    /// Reads a service from its attributes (a dump reply). The 64-bit counters are used when present.
    pub fn from_attrs(attrs: &[ServiceAttr]) -> Result<Service, ConvertError> {
        let id = ServiceId::from_attrs(attrs)?;
        let mut service = Service::new(id, String::new());
        let (mut sched, mut stats, mut stats64) = (None, None, None);
        for a in attrs {
            match a {
                ServiceAttr::SchedName(s) => sched = Some(s.clone()),
                ServiceAttr::Flags { flags, .. } => service.flags = ServiceFlags(*flags),
                ServiceAttr::Timeout(t) => service.timeout = *t,
                ServiceAttr::Netmask(m) => service.netmask = *m,
                ServiceAttr::PeName(pe) => service.pe_name = Some(pe.clone()),
                ServiceAttr::Stats(s) => stats = Some(Stats::from_attrs(s)),
                ServiceAttr::Stats64(s) => stats64 = Some(Stats::from_attrs64(s)),
                _ => {}
            }
        }
        service.scheduler =
            sched.ok_or(ConvertError::Missing { object: "service", attribute: "IPVS_SVC_ATTR_SCHED_NAME" })?;
        service.stats = stats64.or(stats).unwrap_or_default();
        Ok(service)
    }
}

/// An attribute of a service (`IPVS_SVC_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceAttr {
    /// `IPVS_SVC_ATTR_AF`: address family (`AF_INET`, `AF_INET6`).
    AddressFamily(u16),
    /// `IPVS_SVC_ATTR_PROTOCOL`: `IPPROTO_*`.
    Protocol(u16),
    /// `IPVS_SVC_ATTR_ADDR`: the virtual address.
    Addr(InetAddr),
    /// `IPVS_SVC_ATTR_PORT`: the virtual port (network byte order on the wire).
    Port(u16),
    /// `IPVS_SVC_ATTR_FWMARK`: the firewall mark.
    Fwmark(u32),
    /// `IPVS_SVC_ATTR_SCHED_NAME`: the scheduler.
    SchedName(String),
    /// `IPVS_SVC_ATTR_FLAGS`: `struct ip_vs_flags`; in a request only the bits in `mask` are changed.
    Flags {
        /// `IP_VS_SVC_F_*` bits.
        flags: u32,
        /// Which bits to change.
        mask: u32,
    },
    /// `IPVS_SVC_ATTR_TIMEOUT`: persistence timeout, seconds.
    Timeout(u32),
    /// `IPVS_SVC_ATTR_NETMASK`: persistence netmask.
    Netmask(Netmask),
    /// `IPVS_SVC_ATTR_STATS`: counters, legacy layout.
    Stats(Vec<StatsAttr>),
    /// `IPVS_SVC_ATTR_PE_NAME`: persistence engine.
    PeName(String),
    /// `IPVS_SVC_ATTR_STATS64`: counters, 64-bit.
    Stats64(Vec<Stats64Attr>),
    /// Any other attribute, kept as it came.
    Other(DefaultNla),
}

impl Nla for ServiceAttr {
    fn value_len(&self) -> usize {
        use ServiceAttr::*;
        match self {
            AddressFamily(_) | Protocol(_) | Port(_) => 2,
            Fwmark(_) | Timeout(_) | Netmask(_) => 4,
            Addr(_) => 16,
            Flags { .. } => 8,
            SchedName(s) | PeName(s) => string_len(s),
            Stats(s) => s.as_slice().buffer_len(),
            Stats64(s) => s.as_slice().buffer_len(),
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use ServiceAttr::*;
        match self {
            AddressFamily(_) => IPVS_SVC_ATTR_AF,
            Protocol(_) => IPVS_SVC_ATTR_PROTOCOL,
            Addr(_) => IPVS_SVC_ATTR_ADDR,
            Port(_) => IPVS_SVC_ATTR_PORT,
            Fwmark(_) => IPVS_SVC_ATTR_FWMARK,
            SchedName(_) => IPVS_SVC_ATTR_SCHED_NAME,
            Flags { .. } => IPVS_SVC_ATTR_FLAGS,
            Timeout(_) => IPVS_SVC_ATTR_TIMEOUT,
            Netmask(_) => IPVS_SVC_ATTR_NETMASK,
            Stats(_) => IPVS_SVC_ATTR_STATS,
            PeName(_) => IPVS_SVC_ATTR_PE_NAME,
            Stats64(_) => IPVS_SVC_ATTR_STATS64,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use ServiceAttr::*;
        match self {
            AddressFamily(v) | Protocol(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            Port(v) => buf[..2].copy_from_slice(&v.to_be_bytes()),
            Fwmark(v) | Timeout(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            Netmask(m) => buf[..4].copy_from_slice(&m.0),
            Addr(a) => buf[..16].copy_from_slice(&a.0),
            Flags { flags, mask } => {
                buf[..4].copy_from_slice(&flags.to_ne_bytes());
                buf[4..8].copy_from_slice(&mask.to_ne_bytes());
            }
            SchedName(s) | PeName(s) => emit_string(buf, s),
            Stats(s) => s.as_slice().emit(buf),
            Stats64(s) => s.as_slice().emit(buf),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for ServiceAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use ServiceAttr::*;
        let v = buf.value();
        let typed = if has_type_flags(buf) {
            None
        } else {
            match buf.kind() {
                IPVS_SVC_ATTR_AF => u16_of(v).map(AddressFamily),
                IPVS_SVC_ATTR_PROTOCOL => u16_of(v).map(Protocol),
                IPVS_SVC_ATTR_ADDR => array_of(v).map(|a| Addr(InetAddr(a))),
                IPVS_SVC_ATTR_PORT => be16_of(v).map(Port),
                IPVS_SVC_ATTR_FWMARK => u32_of(v).map(Fwmark),
                IPVS_SVC_ATTR_SCHED_NAME => string_of(v).map(SchedName),
                IPVS_SVC_ATTR_FLAGS => array_of::<8>(v).map(|b| Flags {
                    flags: u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                    mask: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                }),
                IPVS_SVC_ATTR_TIMEOUT => u32_of(v).map(Timeout),
                IPVS_SVC_ATTR_NETMASK => array_of(v).map(|m| Netmask(self::Netmask(m))),
                IPVS_SVC_ATTR_STATS => Some(Stats(nested(v).context("in IPVS_SVC_ATTR_STATS")?)),
                IPVS_SVC_ATTR_PE_NAME => string_of(v).map(PeName),
                IPVS_SVC_ATTR_STATS64 => Some(Stats64(nested(v).context("in IPVS_SVC_ATTR_STATS64")?)),
                _ => None,
            }
        };
        match typed {
            Some(a) => Ok(a),
            None => Ok(Other(DefaultNla::parse(buf)?)),
        }
    }
}
