//! Request builders: the message of every request the client sends, without I/O. Each says whether the
//! kernel answers it as a dump ([`Kind::Dump`]) or with replies and an acknowledgement ([`Kind::Ack`]).

use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;

use crate::codec::{Daemon, DaemonAttr, DaemonState, Destination, IpvsAttr, IpvsCmd, IpvsMessage, Service};
use crate::codec::{ServiceId, Timeouts};

/// How the kernel answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sent with `NLM_F_ACK`: zero or more replies, then an acknowledgement or an error.
    Ack,
    /// Sent with `NLM_F_DUMP`: replies, then `NLMSG_DONE` (or an error).
    Dump,
}

/// One request: the message and how it is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The message.
    pub message: IpvsMessage,
    /// How it is answered.
    pub kind: Kind,
}

impl Request {
    fn ack(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> Request {
        Request { message: IpvsMessage::new(cmd, attrs), kind: Kind::Ack }
    }

    fn dump(cmd: IpvsCmd, attrs: Vec<IpvsAttr>) -> Request {
        Request { message: IpvsMessage::new(cmd, attrs), kind: Kind::Dump }
    }

    /// The netlink flags it is sent with.
    pub fn flags(&self) -> u16 {
        match self.kind {
            Kind::Ack => NLM_F_REQUEST | NLM_F_ACK,
            Kind::Dump => NLM_F_REQUEST | NLM_F_DUMP,
        }
    }

    /// The whole netlink datagram for the IPVS family `family_id`, with this sequence number (port id 0:
    /// the kernel fills in the socket's).
    pub fn to_bytes(&self, family_id: u16, sequence_number: u32) -> Vec<u8> {
        let mut genl = GenlMessage::from_payload(self.message.clone());
        genl.set_resolved_family_id(family_id);
        let mut msg = NetlinkMessage::from(genl);
        msg.header.flags = self.flags();
        msg.header.sequence_number = sequence_number;
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        buf
    }
}

/// Dump every service (`ipvsadm -Ln`).
pub fn get_services() -> Request {
    Request::dump(IpvsCmd::GetService, vec![])
}

/// Get one service; the kernel answers `ESRCH` if there is none.
pub fn get_service(id: &ServiceId) -> Request {
    Request::ack(IpvsCmd::GetService, vec![IpvsAttr::Service(id.to_attrs())])
}

/// Add a service (`ipvsadm -A`); `EEXIST` if it exists, `ENOENT` if the scheduler does not.
pub fn new_service(service: &Service) -> Request {
    Request::ack(IpvsCmd::NewService, vec![IpvsAttr::Service(service.to_attrs())])
}

/// Edit a service (`ipvsadm -E`): scheduler, flags, timeout, netmask, persistence engine; `ESRCH` if absent.
pub fn set_service(service: &Service) -> Request {
    Request::ack(IpvsCmd::SetService, vec![IpvsAttr::Service(service.to_attrs())])
}

/// Delete a service and its destinations (`ipvsadm -D`); `ESRCH` if absent.
pub fn del_service(id: &ServiceId) -> Request {
    Request::ack(IpvsCmd::DelService, vec![IpvsAttr::Service(id.to_attrs())])
}

/// Dump the destinations of a service. For a service that does not exist the kernel dumps nothing.
pub fn get_dests(id: &ServiceId) -> Request {
    Request::dump(IpvsCmd::GetDest, vec![IpvsAttr::Service(id.to_attrs())])
}

/// Add a destination (`ipvsadm -a`); `EEXIST` if it exists, `ESRCH` if the service does not.
pub fn new_dest(service: &ServiceId, dest: &Destination) -> Request {
    Request::ack(IpvsCmd::NewDest, vec![IpvsAttr::Service(service.to_attrs()), IpvsAttr::Dest(dest.to_attrs())])
}

/// Edit a destination (`ipvsadm -e`): forwarding method, weight, thresholds; `ENOENT` if absent.
pub fn set_dest(service: &ServiceId, dest: &Destination) -> Request {
    Request::ack(IpvsCmd::SetDest, vec![IpvsAttr::Service(service.to_attrs()), IpvsAttr::Dest(dest.to_attrs())])
}

/// Delete a destination (`ipvsadm -d`); `ENOENT` if absent, `ESRCH` if the service is.
pub fn del_dest(service: &ServiceId, dest: &Destination) -> Request {
    Request::ack(IpvsCmd::DelDest, vec![IpvsAttr::Service(service.to_attrs()), IpvsAttr::Dest(dest.id_attrs())])
}

/// Get the version and connection table size.
pub fn get_info() -> Request {
    Request::ack(IpvsCmd::GetInfo, vec![])
}

/// Get the timeouts.
pub fn get_config() -> Request {
    Request::ack(IpvsCmd::GetConfig, vec![])
}

/// Set the timeouts (`ipvsadm --set`); 0 leaves one unchanged.
pub fn set_config(timeouts: &Timeouts) -> Request {
    Request::ack(IpvsCmd::SetConfig, timeouts.to_attrs())
}

/// Delete every service and destination (`ipvsadm -C`). Connections already scheduled stay in the
/// connection table until they time out.
pub fn flush() -> Request {
    Request::ack(IpvsCmd::Flush, vec![])
}

/// Zero the counters of one service, or of all (`ipvsadm -Z`).
pub fn zero(id: Option<&ServiceId>) -> Request {
    Request::ack(IpvsCmd::Zero, id.map(|id| IpvsAttr::Service(id.to_attrs())).into_iter().collect())
}

/// Dump the sync daemons (`ipvsadm --list-daemon`).
pub fn get_daemons() -> Request {
    Request::dump(IpvsCmd::GetDaemon, vec![])
}

/// Start a sync daemon (`ipvsadm --start-daemon`).
pub fn new_daemon(daemon: &Daemon) -> Request {
    Request::ack(IpvsCmd::NewDaemon, vec![IpvsAttr::Daemon(daemon.to_attrs())])
}

/// Stop the sync daemon of this role (`ipvsadm --stop-daemon`).
pub fn del_daemon(state: DaemonState) -> Request {
    Request::ack(IpvsCmd::DelDaemon, vec![IpvsAttr::Daemon(vec![DaemonAttr::State(state.value())])])
}
