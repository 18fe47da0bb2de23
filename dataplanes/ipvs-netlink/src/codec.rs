//! The IPVS generic netlink messages, parsed and emitted without any I/O.
//!
//! A message is an [`IpvsMessage`]: a command and its first-level attributes. Services, destinations and
//! sync daemons are nested attribute lists ([`ServiceAttr`], [`DestAttr`], [`DaemonAttr`]), and their
//! counters are nested again ([`StatsAttr`], [`Stats64Attr`]). Each attribute enum has an `Other` variant
//! holding any attribute this crate does not know (or whose value is not in the kernel's form) as raw
//! bytes, so parsing what a newer kernel sends and emitting it again gives back the same bytes.
//!
//! The wire forms follow the kernel's `net/netfilter/ipvs/ip_vs_ctl.c`: integers in host byte order
//! except ports (network order), addresses as the 16-byte `union nf_inet_addr`, strings with one trailing
//! NUL, nested attributes without `NLA_F_NESTED`.
//!
//! On top of the attribute lists sit plain structs for callers — [`Service`], [`Destination`], [`Stats`],
//! [`Daemon`], [`Timeouts`], [`Info`] — converted from attribute lists (`from_attrs`) and to them
//! (`to_attrs`).
//!
//! To parse a whole netlink datagram, use netlink-packet-core's `NetlinkMessage<GenlMessage<IpvsMessage>>`.

use netlink_packet_core::{DecodeError, DefaultNla, Emitable, ErrorContext, Nla, NlaBuffer, NlasIterator};
use netlink_packet_core::{Parseable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::constants::*;

mod daemon;
mod dest;
mod service;
mod stats;
mod value;

pub use daemon::{Daemon, DaemonAttr, DaemonState};
pub use dest::{DestAttr, Destination, ForwardMethod};
pub use service::{Family, InetAddr, Netmask, Protocol, Service, ServiceAttr, ServiceFlags, ServiceId};
pub use stats::{Stats, Stats64Attr, StatsAttr};

use value::{has_type_flags, nested, u32_of};

/// An attribute list could not be turned into one of the plain structs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// A required attribute is absent.
    #[error("{object} without the {attribute} attribute")]
    Missing {
        /// What was being read (`service`, `destination`, ...).
        object: &'static str,
        /// The missing attribute, as the kernel header names it.
        attribute: &'static str,
    },
    /// The address family is neither `AF_INET` nor `AF_INET6`.
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    /// A message of another command than expected.
    #[error("expected a {expected:?} message, got {got:?}")]
    UnexpectedCommand {
        /// The command looked for.
        expected: IpvsCmd,
        /// The command found.
        got: IpvsCmd,
    },
}

/// An IPVS command (`IPVS_CMD_*`): the `cmd` of the generic netlink header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IpvsCmd {
    /// `IPVS_CMD_NEW_SERVICE`: add a service; also the command of service dump replies.
    NewService,
    /// `IPVS_CMD_SET_SERVICE`: edit a service.
    SetService,
    /// `IPVS_CMD_DEL_SERVICE`: delete a service.
    DelService,
    /// `IPVS_CMD_GET_SERVICE`: get one service, or dump all.
    GetService,
    /// `IPVS_CMD_NEW_DEST`: add a destination; also the command of destination dump replies.
    NewDest,
    /// `IPVS_CMD_SET_DEST`: edit a destination.
    SetDest,
    /// `IPVS_CMD_DEL_DEST`: delete a destination.
    DelDest,
    /// `IPVS_CMD_GET_DEST`: dump the destinations of a service.
    GetDest,
    /// `IPVS_CMD_NEW_DAEMON`: start a sync daemon; also the command of daemon dump replies.
    NewDaemon,
    /// `IPVS_CMD_DEL_DAEMON`: stop a sync daemon.
    DelDaemon,
    /// `IPVS_CMD_GET_DAEMON`: dump the sync daemons.
    GetDaemon,
    /// `IPVS_CMD_SET_CONFIG`: set the timeouts; also the command of the `GET_CONFIG` reply.
    SetConfig,
    /// `IPVS_CMD_GET_CONFIG`: get the timeouts.
    GetConfig,
    /// `IPVS_CMD_SET_INFO`: only the command of the `GET_INFO` reply.
    SetInfo,
    /// `IPVS_CMD_GET_INFO`: get the version and the connection table size.
    GetInfo,
    /// `IPVS_CMD_ZERO`: zero the counters of one service, or of all.
    Zero,
    /// `IPVS_CMD_FLUSH`: delete every service and destination.
    Flush,
    /// A command this crate does not know.
    Other(u8),
}

impl From<IpvsCmd> for u8 {
    fn from(cmd: IpvsCmd) -> u8 {
        use IpvsCmd::*;
        match cmd {
            NewService => IPVS_CMD_NEW_SERVICE,
            SetService => IPVS_CMD_SET_SERVICE,
            DelService => IPVS_CMD_DEL_SERVICE,
            GetService => IPVS_CMD_GET_SERVICE,
            NewDest => IPVS_CMD_NEW_DEST,
            SetDest => IPVS_CMD_SET_DEST,
            DelDest => IPVS_CMD_DEL_DEST,
            GetDest => IPVS_CMD_GET_DEST,
            NewDaemon => IPVS_CMD_NEW_DAEMON,
            DelDaemon => IPVS_CMD_DEL_DAEMON,
            GetDaemon => IPVS_CMD_GET_DAEMON,
            SetConfig => IPVS_CMD_SET_CONFIG,
            GetConfig => IPVS_CMD_GET_CONFIG,
            SetInfo => IPVS_CMD_SET_INFO,
            GetInfo => IPVS_CMD_GET_INFO,
            Zero => IPVS_CMD_ZERO,
            Flush => IPVS_CMD_FLUSH,
            Other(n) => n,
        }
    }
}

impl From<u8> for IpvsCmd {
    fn from(n: u8) -> IpvsCmd {
        use IpvsCmd::*;
        match n {
            IPVS_CMD_NEW_SERVICE => NewService,
            IPVS_CMD_SET_SERVICE => SetService,
            IPVS_CMD_DEL_SERVICE => DelService,
            IPVS_CMD_GET_SERVICE => GetService,
            IPVS_CMD_NEW_DEST => NewDest,
            IPVS_CMD_SET_DEST => SetDest,
            IPVS_CMD_DEL_DEST => DelDest,
            IPVS_CMD_GET_DEST => GetDest,
            IPVS_CMD_NEW_DAEMON => NewDaemon,
            IPVS_CMD_DEL_DAEMON => DelDaemon,
            IPVS_CMD_GET_DAEMON => GetDaemon,
            IPVS_CMD_SET_CONFIG => SetConfig,
            IPVS_CMD_GET_CONFIG => GetConfig,
            IPVS_CMD_SET_INFO => SetInfo,
            IPVS_CMD_GET_INFO => GetInfo,
            IPVS_CMD_ZERO => Zero,
            IPVS_CMD_FLUSH => Flush,
            n => Other(n),
        }
    }
}

impl IpvsCmd {
    /// True for the commands whose first-level attributes are `IPVS_INFO_ATTR_*` instead of
    /// `IPVS_CMD_ATTR_*` (the two sets reuse the numbers 1 and 2).
    pub fn has_info_attrs(self) -> bool {
        matches!(self, IpvsCmd::GetInfo | IpvsCmd::SetInfo)
    }

    /// The kernel header's name (`IPVS_CMD_NEW_SERVICE`), or `IPVS_CMD_<n>` for an unknown one.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        use IpvsCmd::*;
        let name = match self {
            NewService => "IPVS_CMD_NEW_SERVICE",
            SetService => "IPVS_CMD_SET_SERVICE",
            DelService => "IPVS_CMD_DEL_SERVICE",
            GetService => "IPVS_CMD_GET_SERVICE",
            NewDest => "IPVS_CMD_NEW_DEST",
            SetDest => "IPVS_CMD_SET_DEST",
            DelDest => "IPVS_CMD_DEL_DEST",
            GetDest => "IPVS_CMD_GET_DEST",
            NewDaemon => "IPVS_CMD_NEW_DAEMON",
            DelDaemon => "IPVS_CMD_DEL_DAEMON",
            GetDaemon => "IPVS_CMD_GET_DAEMON",
            SetConfig => "IPVS_CMD_SET_CONFIG",
            GetConfig => "IPVS_CMD_GET_CONFIG",
            SetInfo => "IPVS_CMD_SET_INFO",
            GetInfo => "IPVS_CMD_GET_INFO",
            Zero => "IPVS_CMD_ZERO",
            Flush => "IPVS_CMD_FLUSH",
            Other(n) => return format!("IPVS_CMD_{n}").into(),
        };
        name.into()
    }
}

/// A first-level attribute of an IPVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IpvsAttr {
    /// `IPVS_CMD_ATTR_SERVICE`: a service (nested).
    Service(Vec<ServiceAttr>),
    /// `IPVS_CMD_ATTR_DEST`: a destination (nested).
    Dest(Vec<DestAttr>),
    /// `IPVS_CMD_ATTR_DAEMON`: a sync daemon (nested).
    Daemon(Vec<DaemonAttr>),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP`: established TCP timeout, seconds.
    TimeoutTcp(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`: TCP FIN_WAIT timeout, seconds.
    TimeoutTcpFin(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_UDP`: UDP timeout, seconds.
    TimeoutUdp(u32),
    /// `IPVS_INFO_ATTR_VERSION` (only in `GET_INFO`/`SET_INFO` messages): IPVS version, `0x010201` is 1.2.1.
    Version(u32),
    /// `IPVS_INFO_ATTR_CONN_TAB_SIZE` (only in `GET_INFO`/`SET_INFO` messages): connection hash table size.
    ConnTabSize(u32),
    /// Any other attribute, kept as it came.
    Other(DefaultNla),
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        use IpvsAttr::*;
        match self {
            Service(attrs) => attrs.as_slice().buffer_len(),
            Dest(attrs) => attrs.as_slice().buffer_len(),
            Daemon(attrs) => attrs.as_slice().buffer_len(),
            TimeoutTcp(_) | TimeoutTcpFin(_) | TimeoutUdp(_) | Version(_) | ConnTabSize(_) => 4,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use IpvsAttr::*;
        match self {
            Service(_) => IPVS_CMD_ATTR_SERVICE,
            Dest(_) => IPVS_CMD_ATTR_DEST,
            Daemon(_) => IPVS_CMD_ATTR_DAEMON,
            TimeoutTcp(_) => IPVS_CMD_ATTR_TIMEOUT_TCP,
            TimeoutTcpFin(_) => IPVS_CMD_ATTR_TIMEOUT_TCP_FIN,
            TimeoutUdp(_) => IPVS_CMD_ATTR_TIMEOUT_UDP,
            Version(_) => IPVS_INFO_ATTR_VERSION,
            ConnTabSize(_) => IPVS_INFO_ATTR_CONN_TAB_SIZE,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use IpvsAttr::*;
        match self {
            Service(attrs) => attrs.as_slice().emit(buf),
            Dest(attrs) => attrs.as_slice().emit(buf),
            Daemon(attrs) => attrs.as_slice().emit(buf),
            TimeoutTcp(v) | TimeoutTcpFin(v) | TimeoutUdp(v) | Version(v) | ConnTabSize(v) => {
                buf[..4].copy_from_slice(&v.to_ne_bytes())
            }
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> ParseableParametrized<NlaBuffer<&'a T>, IpvsCmd> for IpvsAttr {
    fn parse_with_param(buf: &NlaBuffer<&'a T>, cmd: IpvsCmd) -> Result<Self, DecodeError> {
        use IpvsAttr::*;
        let v = buf.value();
        let typed = if has_type_flags(buf) {
            None
        } else if cmd.has_info_attrs() {
            match buf.kind() {
                IPVS_INFO_ATTR_VERSION => u32_of(v).map(Version),
                IPVS_INFO_ATTR_CONN_TAB_SIZE => u32_of(v).map(ConnTabSize),
                _ => None,
            }
        } else {
            match buf.kind() {
                IPVS_CMD_ATTR_SERVICE => Some(Service(nested(v).context("in IPVS_CMD_ATTR_SERVICE")?)),
                IPVS_CMD_ATTR_DEST => Some(Dest(nested(v).context("in IPVS_CMD_ATTR_DEST")?)),
                IPVS_CMD_ATTR_DAEMON => Some(Daemon(nested(v).context("in IPVS_CMD_ATTR_DAEMON")?)),
                IPVS_CMD_ATTR_TIMEOUT_TCP => u32_of(v).map(TimeoutTcp),
                IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => u32_of(v).map(TimeoutTcpFin),
                IPVS_CMD_ATTR_TIMEOUT_UDP => u32_of(v).map(TimeoutUdp),
                _ => None,
            }
        };
        match typed {
            Some(attr) => Ok(attr),
            None => Ok(Other(DefaultNla::parse(buf)?)),
        }
    }
}

/// One IPVS generic netlink message: the command and its first-level attributes. The payload type of
/// `GenlMessage<IpvsMessage>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// The command.
    pub cmd: IpvsCmd,
    /// The first-level attributes, in wire order.
    pub attrs: Vec<IpvsAttr>,
}

impl IpvsMessage {
    /// A message with these attributes.
    pub fn new(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> IpvsMessage {
        IpvsMessage { cmd, attrs }
    }

    /// The first `IPVS_CMD_ATTR_SERVICE` attribute's list.
    pub fn service_attrs(&self) -> Option<&[ServiceAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(attrs) => Some(attrs.as_slice()),
            _ => None,
        })
    }

    /// The first `IPVS_CMD_ATTR_DEST` attribute's list.
    pub fn dest_attrs(&self) -> Option<&[DestAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Dest(attrs) => Some(attrs.as_slice()),
            _ => None,
        })
    }

    /// The first `IPVS_CMD_ATTR_DAEMON` attribute's list.
    pub fn daemon_attrs(&self) -> Option<&[DaemonAttr]> {
        self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Daemon(attrs) => Some(attrs.as_slice()),
            _ => None,
        })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }

    fn command(&self) -> u8 {
        self.cmd.into()
    }

    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let cmd = IpvsCmd::from(header.cmd);
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| IpvsAttr::parse_with_param(&nla, cmd)))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("in an IPVS {cmd:?} message"))?;
        Ok(IpvsMessage { cmd, attrs })
    }
}

/// The connection timeouts (`ipvsadm --set`), in seconds. In a request, 0 leaves a timeout unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// Established TCP connections.
    pub tcp: u32,
    /// TCP connections after a FIN.
    pub tcp_fin: u32,
    /// UDP "connections".
    pub udp: u32,
}

impl Timeouts {
    /// Reads the timeouts of a `SET_CONFIG` message (the reply to `GET_CONFIG`). Absent ones are 0.
    pub fn from_attrs(attrs: &[IpvsAttr]) -> Timeouts {
        let mut t = Timeouts::default();
        for a in attrs {
            match a {
                IpvsAttr::TimeoutTcp(v) => t.tcp = *v,
                IpvsAttr::TimeoutTcpFin(v) => t.tcp_fin = *v,
                IpvsAttr::TimeoutUdp(v) => t.udp = *v,
                _ => {}
            }
        }
        t
    }

    /// The attributes of a `SET_CONFIG` request.
    pub fn to_attrs(&self) -> Vec<IpvsAttr> {
        vec![IpvsAttr::TimeoutTcp(self.tcp), IpvsAttr::TimeoutTcpFin(self.tcp_fin), IpvsAttr::TimeoutUdp(self.udp)]
    }
}

/// What `GET_INFO` tells (`ipvsadm` prints it as its first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Info {
    /// `IP_VS_VERSION_CODE`: `0x010201` is 1.2.1.
    pub version: u32,
    /// Size of the connection hash table (`2^CONFIG_IP_VS_TAB_BITS`).
    pub conn_tab_size: u32,
}

impl Info {
    /// Reads a `SET_INFO` message (the reply to `GET_INFO`).
    pub fn from_attrs(attrs: &[IpvsAttr]) -> Result<Info, ConvertError> {
        let version = attrs.iter().find_map(|a| match a {
            IpvsAttr::Version(v) => Some(*v),
            _ => None,
        });
        let conn_tab_size = attrs.iter().find_map(|a| match a {
            IpvsAttr::ConnTabSize(v) => Some(*v),
            _ => None,
        });
        Ok(Info {
            version: version.ok_or(ConvertError::Missing { object: "info", attribute: "IPVS_INFO_ATTR_VERSION" })?,
            conn_tab_size: conn_tab_size
                .ok_or(ConvertError::Missing { object: "info", attribute: "IPVS_INFO_ATTR_CONN_TAB_SIZE" })?,
        })
    }

    /// The version as `major.minor.patch`, as ipvsadm prints it.
    pub fn version_string(&self) -> String {
        format!("{}.{}.{}", (self.version >> 16) & 0xff, (self.version >> 8) & 0xff, self.version & 0xff)
    }
}

#[cfg(test)]
mod tests;
