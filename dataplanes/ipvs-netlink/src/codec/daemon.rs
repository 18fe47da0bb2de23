//! Connection-synchronisation daemons: `IPVS_CMD_ATTR_DAEMON` and its `IPVS_DAEMON_ATTR_*` attributes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{DecodeError, DefaultNla, Nla, NlaBuffer, Parseable};

use super::value::{array_of, emit_string, has_type_flags, string_len, string_of, u16_of, u32_of, u8_of};
use super::ConvertError;
use crate::constants::*;

/// The role of a sync daemon (`IP_VS_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DaemonState {
    /// `IP_VS_STATE_MASTER`: sends connection state.
    Master,
    /// `IP_VS_STATE_BACKUP`: receives it.
    Backup,
    /// Another value.
    Other(u32),
}

impl DaemonState {
    /// The `IP_VS_STATE_*` value.
    pub fn value(self) -> u32 {
        match self {
            DaemonState::Master => IP_VS_STATE_MASTER,
            DaemonState::Backup => IP_VS_STATE_BACKUP,
            DaemonState::Other(v) => v,
        }
    }

    /// The state of an `IP_VS_STATE_*` value.
    pub fn from_value(v: u32) -> DaemonState {
        match v {
            IP_VS_STATE_MASTER => DaemonState::Master,
            IP_VS_STATE_BACKUP => DaemonState::Backup,
            v => DaemonState::Other(v),
        }
    }
}

/// A sync daemon (`ipvsadm --start-daemon`, `--list-daemon`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    /// Master or backup.
    pub state: DaemonState,
    /// The interface it sends or receives on.
    pub mcast_ifn: String,
    /// The sync ID.
    pub sync_id: u32,
    /// Largest sync message payload; `None` leaves the kernel's default.
    pub sync_maxlen: Option<u16>,
    /// Multicast group; `None` is the default 224.0.0.81.
    pub mcast_group: Option<IpAddr>,
    /// Base UDP port; `None` is the default 8848.
    pub mcast_port: Option<u16>,
    /// Multicast TTL; `None` is the default 1.
    pub mcast_ttl: Option<u8>,
}

impl Daemon {
    /// A daemon on this interface with the kernel's defaults.
    pub fn new(state: DaemonState, mcast_ifn: impl Into<String>, sync_id: u32) -> Daemon {
        Daemon {
            state,
            mcast_ifn: mcast_ifn.into(),
            sync_id,
            sync_maxlen: None,
            mcast_group: None,
            mcast_port: None,
            mcast_ttl: None,
        }
    }

    /// The attributes of a `NEW_DAEMON` request.
    pub fn to_attrs(&self) -> Vec<DaemonAttr> {
        let mut attrs = vec![
            DaemonAttr::State(self.state.value()),
            DaemonAttr::McastIfn(self.mcast_ifn.clone()),
            DaemonAttr::SyncId(self.sync_id),
        ];
        attrs.extend(self.sync_maxlen.map(DaemonAttr::SyncMaxLen));
        attrs.extend(self.mcast_group.map(|g| match g {
            IpAddr::V4(g) => DaemonAttr::McastGroup(g),
            IpAddr::V6(g) => DaemonAttr::McastGroup6(g),
        }));
        attrs.extend(self.mcast_port.map(DaemonAttr::McastPort));
        attrs.extend(self.mcast_ttl.map(DaemonAttr::McastTtl));
        attrs
    }

    /// Reads a daemon from its attributes (a dump reply).
    pub fn from_attrs(attrs: &[DaemonAttr]) -> Result<Daemon, ConvertError> {
        let missing = |attribute| ConvertError::Missing { object: "daemon", attribute };
        let (mut state, mut ifn, mut sync_id) = (None, None, None);
        let mut d = Daemon::new(DaemonState::Master, String::new(), 0);
        for a in attrs {
            match a {
                DaemonAttr::State(v) => state = Some(DaemonState::from_value(*v)),
                DaemonAttr::McastIfn(v) => ifn = Some(v.clone()),
                DaemonAttr::SyncId(v) => sync_id = Some(*v),
                DaemonAttr::SyncMaxLen(v) => d.sync_maxlen = Some(*v),
                DaemonAttr::McastGroup(v) => d.mcast_group = Some(IpAddr::V4(*v)),
                DaemonAttr::McastGroup6(v) => d.mcast_group = Some(IpAddr::V6(*v)),
                DaemonAttr::McastPort(v) => d.mcast_port = Some(*v),
                DaemonAttr::McastTtl(v) => d.mcast_ttl = Some(*v),
                DaemonAttr::Other(_) => {}
            }
        }
        d.state = state.ok_or_else(|| missing("IPVS_DAEMON_ATTR_STATE"))?;
        d.mcast_ifn = ifn.ok_or_else(|| missing("IPVS_DAEMON_ATTR_MCAST_IFN"))?;
        d.sync_id = sync_id.ok_or_else(|| missing("IPVS_DAEMON_ATTR_SYNC_ID"))?;
        Ok(d)
    }
}

/// An attribute of a sync daemon (`IPVS_DAEMON_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonAttr {
    /// `IPVS_DAEMON_ATTR_STATE`: `IP_VS_STATE_*`.
    State(u32),
    /// `IPVS_DAEMON_ATTR_MCAST_IFN`: interface name.
    McastIfn(String),
    /// `IPVS_DAEMON_ATTR_SYNC_ID`.
    SyncId(u32),
    /// `IPVS_DAEMON_ATTR_SYNC_MAXLEN`: UDP payload size.
    SyncMaxLen(u16),
    /// `IPVS_DAEMON_ATTR_MCAST_GROUP`: IPv4 multicast group.
    McastGroup(Ipv4Addr),
    /// `IPVS_DAEMON_ATTR_MCAST_GROUP6`: IPv6 multicast group.
    McastGroup6(Ipv6Addr),
    /// `IPVS_DAEMON_ATTR_MCAST_PORT`: base port (host byte order, as the kernel's `nla_put_u16`).
    McastPort(u16),
    /// `IPVS_DAEMON_ATTR_MCAST_TTL`.
    McastTtl(u8),
    /// Any other attribute, kept as it came.
    Other(DefaultNla),
}

impl Nla for DaemonAttr {
    fn value_len(&self) -> usize {
        use DaemonAttr::*;
        match self {
            State(_) | SyncId(_) | McastGroup(_) => 4,
            McastIfn(s) => string_len(s),
            SyncMaxLen(_) | McastPort(_) => 2,
            McastGroup6(_) => 16,
            McastTtl(_) => 1,
            Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        use DaemonAttr::*;
        match self {
            State(_) => IPVS_DAEMON_ATTR_STATE,
            McastIfn(_) => IPVS_DAEMON_ATTR_MCAST_IFN,
            SyncId(_) => IPVS_DAEMON_ATTR_SYNC_ID,
            SyncMaxLen(_) => IPVS_DAEMON_ATTR_SYNC_MAXLEN,
            McastGroup(_) => IPVS_DAEMON_ATTR_MCAST_GROUP,
            McastGroup6(_) => IPVS_DAEMON_ATTR_MCAST_GROUP6,
            McastPort(_) => IPVS_DAEMON_ATTR_MCAST_PORT,
            McastTtl(_) => IPVS_DAEMON_ATTR_MCAST_TTL,
            Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        use DaemonAttr::*;
        match self {
            State(v) | SyncId(v) => buf[..4].copy_from_slice(&v.to_ne_bytes()),
            McastIfn(s) => emit_string(buf, s),
            SyncMaxLen(v) | McastPort(v) => buf[..2].copy_from_slice(&v.to_ne_bytes()),
            McastGroup(g) => buf[..4].copy_from_slice(&g.octets()),
            McastGroup6(g) => buf[..16].copy_from_slice(&g.octets()),
            McastTtl(v) => buf[0] = *v,
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DaemonAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        use DaemonAttr::*;
        let v = buf.value();
        let typed = if has_type_flags(buf) {
            None
        } else {
            match buf.kind() {
                IPVS_DAEMON_ATTR_STATE => u32_of(v).map(State),
                IPVS_DAEMON_ATTR_MCAST_IFN => string_of(v).map(McastIfn),
                IPVS_DAEMON_ATTR_SYNC_ID => u32_of(v).map(SyncId),
                IPVS_DAEMON_ATTR_SYNC_MAXLEN => u16_of(v).map(SyncMaxLen),
                IPVS_DAEMON_ATTR_MCAST_GROUP => array_of::<4>(v).map(|a| McastGroup(Ipv4Addr::from(a))),
                IPVS_DAEMON_ATTR_MCAST_GROUP6 => array_of::<16>(v).map(|a| McastGroup6(Ipv6Addr::from(a))),
                IPVS_DAEMON_ATTR_MCAST_PORT => u16_of(v).map(McastPort),
                IPVS_DAEMON_ATTR_MCAST_TTL => u8_of(v).map(McastTtl),
                _ => None,
            }
        };
        match typed {
            Some(a) => Ok(a),
            None => Ok(Other(DefaultNla::parse(buf)?)),
        }
    }
}
