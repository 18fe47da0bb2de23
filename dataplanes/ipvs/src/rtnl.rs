//! A small blocking rtnetlink client: the links and addresses the IPVS dataplane needs (its dummy
//! interface, the addresses on it, and the node's own addresses for NodePorts).
//!
//! Built on rust-netlink's `netlink-packet-route` and `netlink-sys`, as the IPVS client is on
//! `netlink-packet-generic`. A client talks to the network namespace its thread was in when it was opened.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// What can go wrong talking rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened, or sending or receiving failed. Retryable.
    #[error("rtnetlink I/O failed during {op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("the kernel refused {op}: {source}")]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// The positive errno.
        errno: i32,
        /// The errno as an I/O error, for its message.
        #[source]
        source: io::Error,
    },
    /// A reply could not be decoded.
    #[error("cannot decode the kernel's reply to {op}: {message}")]
    Decode {
        /// What was being done.
        op: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl Error {
    /// The kernel's errno, if it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An address of an interface, as `RTM_GETADDR` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    /// The interface's index.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Whether its scope is global (not host or link).
    pub global: bool,
}

/// A `NETLINK_ROUTE` socket and a sequence number.
#[derive(Debug)]
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    /// Opens a client on the calling thread's network namespace.
    pub fn open() -> Result<Rtnl> {
        let io = |source| Error::Io { op: "opening a NETLINK_ROUTE socket", source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Rtnl { socket, sequence: 0 })
    }

    /// Sends one request and returns the reply messages (all of a dump), or the kernel's error.
    fn request(
        &mut self,
        op: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let io = |source| Error::Io { op, source };
        self.socket.send(&bytes, 0).map_err(io)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let mut buf = Vec::with_capacity(64 * 1024);
            self.socket.recv(&mut buf, 0).map_err(io)?;
            let mut rest = buf.as_slice();
            while !rest.is_empty() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| Error::Decode { op, message: e.to_string() })?;
                let len = (msg.header.length as usize).max(16);
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if msg.header.sequence_number != self.sequence {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            let errno = -code.get();
                            return Err(Error::Kernel { op, errno, source: io::Error::from_raw_os_error(errno) });
                        }
                    },
                    NetlinkPayload::Done(_) if dump => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// The index of the link with this name, if there is one.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request("RTM_GETLINK", RouteNetlinkMessage::GetLink(msg), NLM_F_ACK) {
            Ok(replies) => Ok(replies.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a dummy link with this name (`EEXIST` if there is one).
    pub fn add_dummy(&mut self, name: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Dummy)]));
        self.request("RTM_NEWLINK dummy", RouteNetlinkMessage::NewLink(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Sets a link up.
    pub fn set_up(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request("RTM_NEWLINK up", RouteNetlinkMessage::SetLink(msg), NLM_F_ACK).map(drop)
    }

    /// Deletes a link.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request("RTM_DELLINK", RouteNetlinkMessage::DelLink(msg), NLM_F_ACK).map(drop)
    }

    /// Every address of every interface.
    pub fn addresses(&mut self) -> Result<Vec<InterfaceAddress>> {
        let replies =
            self.request("RTM_GETADDR", RouteNetlinkMessage::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Some(a),
                _ => None,
            })
            .filter_map(|a| {
                // IFA_LOCAL is the address itself on point-to-point links; IFA_ADDRESS otherwise.
                let local = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                Some(InterfaceAddress {
                    index: a.header.index,
                    ip: local.or(address)?,
                    prefix_len: a.header.prefix_len,
                    global: a.header.scope == AddressScope::Universe,
                })
            })
            .collect())
    }

    fn address_message(index: u32, ip: IpAddr) -> AddressMessage {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        match ip {
            IpAddr::V4(_) => {
                msg.header.family = AddressFamily::Inet;
                msg.header.prefix_len = 32;
                msg.attributes.push(AddressAttribute::Local(ip));
                msg.attributes.push(AddressAttribute::Address(ip));
            }
            IpAddr::V6(_) => {
                msg.header.family = AddressFamily::Inet6;
                msg.header.prefix_len = 128;
                // No duplicate address detection: the address is usable at once, and is never on a wire.
                msg.header.flags = AddressHeaderFlags::Nodad;
                msg.attributes.push(AddressAttribute::Address(ip));
                msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        msg
    }

    /// Adds a host address (/32, /128) to a link (`EEXIST` if it is there).
    pub fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let msg = Self::address_message(index, ip);
        self.request("RTM_NEWADDR", RouteNetlinkMessage::NewAddress(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Removes a host address from a link (`EADDRNOTAVAIL` if it is not there).
    pub fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let msg = Self::address_message(index, ip);
        self.request("RTM_DELADDR", RouteNetlinkMessage::DelAddress(msg), NLM_F_ACK).map(drop)
    }
}
