//! A blocking IPVS client: resolves the `IPVS` generic netlink family, sends the requests of [`request`]
//! and reads the answers into the plain structs of [`crate::codec`].
//!
//! Everything goes through one [`Transport`] (send a datagram, receive a datagram), so tests can replay
//! captured kernel answers or inject failures; [`NetlinkTransport`] is the real socket. A client talks to the
//! IPVS of the network namespace its socket was opened in.
//!
//! Dump consistency: the kernel's IPVS dumps are not atomic and IPVS never flags them as interrupted. A
//! dump resumes by counting entries of the kernel's table of services of *all* network namespaces, so a
//! service added or deleted anywhere on the host between two parts of a dump makes the kernel repeat an
//! entry or, when the entries span several datagrams, skip one. The client drops repeats
//! ([`Client::services`], [`Client::destinations`]) and reads with 32 KiB buffers so that the kernel packs
//! about a hundred services into one datagram (then nothing can be skipped). A larger dump can still miss
//! an entry changed meanwhile; it shows up in the next dump, so a reconciler should treat an add answered
//! with `EEXIST` ([`Error::is_exists`]) as done and resync periodically.
//!
//! Errors from the kernel keep their errno ([`Error::errno`]); [`Error::is_not_found`] and
//! [`Error::is_exists`] tell "already gone" and "already there" apart, so a reconciler can treat deleting
//! what is gone, or adding what is there, as done.

use std::borrow::Cow;
use std::collections::hash_map::{Entry, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::io;

use netlink_packet_core::{
    DecodeError, NetlinkBuffer, NetlinkDeserializable, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use crate::codec::{ConvertError, Daemon, Destination, Info, IpvsMessage, Service, ServiceId, Timeouts};
use crate::constants::IPVS_GENL_NAME;

pub mod request;

use request::{Kind, Request};

/// What can go wrong talking to IPVS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The generic netlink socket could not be opened or bound.
    #[error("cannot open a generic netlink socket")]
    Socket(#[source] io::Error),
    /// Sending or receiving failed.
    #[error("netlink I/O failed during {request}")]
    Io {
        /// The request (`IPVS_CMD_NEW_SERVICE`, `CTRL_CMD_GETFAMILY`).
        request: Cow<'static, str>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel has no `IPVS` generic netlink family: the `ip_vs` module is not loaded (or not built).
    #[error("the kernel has no IPVS generic netlink family (is the ip_vs module loaded?)")]
    FamilyNotFound,
    /// The kernel refused a request.
    #[error("the kernel refused {request}: {source}")]
    Kernel {
        /// The request.
        request: Cow<'static, str>,
        /// The positive errno (`ENOENT`, `ESRCH`, `EEXIST`, `EINVAL`, ...).
        errno: i32,
        /// The same errno as an I/O error, for its message.
        #[source]
        source: io::Error,
    },
    /// A reply could not be decoded.
    #[error("cannot decode the kernel's reply to {request}")]
    Decode {
        /// The request.
        request: Cow<'static, str>,
        /// The cause.
        #[source]
        source: DecodeError,
    },
    /// A reply decoded, but lacked what the request asks for.
    #[error("unexpected reply to {request}")]
    Reply {
        /// The request.
        request: Cow<'static, str>,
        /// What was wrong.
        #[source]
        source: ConvertError,
    },
    /// The kernel's table changed while it was being dumped (`NLM_F_DUMP_INTR`); the dump may be
    /// inconsistent. Retryable.
    #[error("the dump of {request} was interrupted by a change; retry it")]
    DumpInterrupted {
        /// The request.
        request: Cow<'static, str>,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno: the kernel's for [`Error::Kernel`], the system call's for socket and I/O errors.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Socket(e) | Error::Io { source: e, .. } => e.raw_os_error(),
            _ => None,
        }
    }

    /// The kernel said the object the request names does not exist: `ESRCH` (no such service) or `ENOENT`
    /// (no such destination). For a delete this means "already gone". (`ENOENT` also answers an add or edit
    /// naming a scheduler or persistence engine the kernel cannot load.)
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kernel { errno, .. } if *errno == libc::ESRCH || *errno == libc::ENOENT)
    }

    /// The kernel said the object the request adds exists already (`EEXIST`).
    pub fn is_exists(&self) -> bool {
        matches!(self, Error::Kernel { errno, .. } if *errno == libc::EEXIST)
    }

    /// Worth retrying unchanged later: I/O failures, interrupted dumps, and the kernel being short of memory
    /// or busy. Refusals of the request itself (`EINVAL`, `ENOENT`, `EEXIST`, ...) and a missing IPVS are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { .. } | Error::DumpInterrupted { .. } => true,
            Error::Kernel { errno, .. } => {
                [libc::EAGAIN, libc::EBUSY, libc::ENOMEM, libc::ENOBUFS, libc::EINTR].contains(errno)
            }
            _ => false,
        }
    }
}

/// The one door to the kernel: datagrams out and in. Implemented by [`NetlinkTransport`], and by fakes in
/// tests.
pub trait Transport {
    /// Sends one datagram (one or more netlink messages).
    fn send(&mut self, datagram: &[u8]) -> io::Result<()>;
    /// Receives one datagram, whole.
    fn recv(&mut self) -> io::Result<Vec<u8>>;
}

/// Receive buffer: what iproute2 uses, and the largest dump datagram the kernel makes.
const RECV_BUFFER: usize = 32 * 1024;

/// A `NETLINK_GENERIC` socket of the current network namespace (of the calling thread).
#[derive(Debug)]
pub struct NetlinkTransport {
    socket: Socket,
}

impl NetlinkTransport {
    /// Opens the socket, bound to a kernel-assigned port and connected to the kernel.
    pub fn open() -> io::Result<NetlinkTransport> {
        let mut socket = Socket::new(NETLINK_GENERIC)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry only the request's header, not the whole request.
        socket.set_cap_ack(true)?;
        Ok(NetlinkTransport { socket })
    }
}

impl Transport for NetlinkTransport {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        let sent = self.socket.send(datagram, 0)?;
        if sent != datagram.len() {
            return Err(io::Error::other(format!("sent {sent} of {} bytes", datagram.len())));
        }
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Vec<u8>> {
        let retry = |r: &io::Result<(usize, SocketAddr)>| matches!(r, Err(e) if e.kind() == io::ErrorKind::Interrupted);
        // Peek with a large buffer: the kernel sizes later dump datagrams after the largest buffer a
        // `recvmsg` offered (up to 32 KiB), and a dump that fits in one datagram cannot skip entries.
        let size = loop {
            let mut peek = Vec::with_capacity(RECV_BUFFER);
            let r = self.socket.recv_from(&mut peek, libc::MSG_PEEK | libc::MSG_TRUNC);
            if !retry(&r) {
                break r?.0;
            }
        };
        loop {
            let mut datagram = Vec::with_capacity(size.max(RECV_BUFFER));
            let r = self.socket.recv_from(&mut datagram, 0);
            if !retry(&r) {
                r?;
                return Ok(datagram);
            }
        }
    }
}

/// A transport that keeps a copy of every datagram received, to capture the kernel's answers.
#[derive(Debug)]
pub struct Recording<T> {
    /// The transport recorded.
    pub inner: T,
    /// Every datagram received, in order.
    pub received: Vec<Vec<u8>>,
}

impl<T> Recording<T> {
    /// Records what `inner` receives.
    pub fn new(inner: T) -> Recording<T> {
        Recording { inner, received: Vec::new() }
    }
}

impl<T: Transport> Transport for Recording<T> {
    fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        self.inner.send(datagram)
    }

    fn recv(&mut self) -> io::Result<Vec<u8>> {
        let datagram = self.inner.recv()?;
        self.received.push(datagram.clone());
        Ok(datagram)
    }
}

/// An IPVS client. Blocking; one request at a time.
#[derive(Debug)]
pub struct Client<T: Transport = NetlinkTransport> {
    transport: T,
    family_id: u16,
    sequence_number: u32,
}

impl Client<NetlinkTransport> {
    /// Opens a client on the IPVS of the calling thread's network namespace.
    pub fn new() -> Result<Client> {
        Client::with_transport(NetlinkTransport::open().map_err(Error::Socket)?)
    }
}

impl<T: Transport> Client<T> {
    /// A client over this transport; resolves the `IPVS` family first.
    pub fn with_transport(transport: T) -> Result<Client<T>> {
        let mut client = Client { transport, family_id: 0, sequence_number: 0 };
        client.family_id = client.resolve_family()?;
        Ok(client)
    }

    /// The IPVS generic netlink family id.
    pub fn family_id(&self) -> u16 {
        self.family_id
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutable.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Every service, with counters, each once (see the module doc on dump consistency).
    pub fn services(&mut self) -> Result<Vec<Service>> {
        let request = request::get_services();
        let name = request.message.cmd.name();
        let replies = self.send(&request)?;
        let services = replies
            .iter()
            .filter_map(|m| m.service_attrs())
            .map(|attrs| Service::from_attrs(attrs).map_err(|source| Error::Reply { request: name.clone(), source }))
            .collect::<Result<Vec<_>>>()?;
        Ok(last_of_each(services, |s| s.id))
    }

    /// One service, with counters; [`Error::is_not_found`] if there is none.
    pub fn service(&mut self, id: &ServiceId) -> Result<Service> {
        let request = request::get_service(id);
        let name = request.message.cmd.name();
        let replies = self.send(&request)?;
        let attrs = replies.iter().find_map(|m| m.service_attrs()).ok_or_else(|| Error::Reply {
            request: name.clone(),
            source: ConvertError::Missing { object: "reply", attribute: "IPVS_CMD_ATTR_SERVICE" },
        })?;
        Service::from_attrs(attrs).map_err(|source| Error::Reply { request: name, source })
    }

    /// The destinations of a service, with counters, each once. Empty if the service does not exist (the
    /// kernel's answer).
    pub fn destinations(&mut self, id: &ServiceId) -> Result<Vec<Destination>> {
        let request = request::get_dests(id);
        let name = request.message.cmd.name();
        let replies = self.send(&request)?;
        let dests = replies
            .iter()
            .filter_map(|m| m.dest_attrs())
            .map(|attrs| {
                Destination::from_attrs(attrs, id.family())
                    .map_err(|source| Error::Reply { request: name.clone(), source })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(last_of_each(dests, |d| (d.addr, d.port)))
    }

    /// Adds a service; [`Error::is_exists`] if it exists.
    pub fn add_service(&mut self, service: &Service) -> Result<()> {
        self.send(&request::new_service(service)).map(drop)
    }

    /// Changes a service's scheduler, flags, timeout, netmask and persistence engine.
    pub fn edit_service(&mut self, service: &Service) -> Result<()> {
        self.send(&request::set_service(service)).map(drop)
    }

    /// Deletes a service and its destinations; [`Error::is_not_found`] if it does not exist.
    pub fn delete_service(&mut self, id: &ServiceId) -> Result<()> {
        self.send(&request::del_service(id)).map(drop)
    }

    /// Adds a destination to a service; [`Error::is_exists`] if it exists.
    pub fn add_destination(&mut self, service: &ServiceId, dest: &Destination) -> Result<()> {
        self.send(&request::new_dest(service, dest)).map(drop)
    }

    /// Changes a destination's forwarding method, weight and thresholds.
    pub fn edit_destination(&mut self, service: &ServiceId, dest: &Destination) -> Result<()> {
        self.send(&request::set_dest(service, dest)).map(drop)
    }

    /// Deletes a destination (only its address and port are used); [`Error::is_not_found`] if it, or its
    /// service, does not exist.
    pub fn delete_destination(&mut self, service: &ServiceId, dest: &Destination) -> Result<()> {
        self.send(&request::del_dest(service, dest)).map(drop)
    }

    /// The IPVS version and connection table size.
    pub fn info(&mut self) -> Result<Info> {
        let request = request::get_info();
        let name = request.message.cmd.name();
        let replies = self.send(&request)?;
        let reply = replies.first().ok_or_else(|| Error::Reply {
            request: name.clone(),
            source: ConvertError::Missing { object: "reply", attribute: "IPVS_INFO_ATTR_VERSION" },
        })?;
        Info::from_attrs(&reply.attrs).map_err(|source| Error::Reply { request: name, source })
    }

    /// The connection timeouts.
    pub fn timeouts(&mut self) -> Result<Timeouts> {
        let request = request::get_config();
        let name = request.message.cmd.name();
        let replies = self.send(&request)?;
        let reply = replies.first().ok_or(Error::Reply {
            request: name,
            source: ConvertError::Missing { object: "reply", attribute: "IPVS_CMD_ATTR_TIMEOUT_TCP" },
        })?;
        Ok(Timeouts::from_attrs(&reply.attrs))
    }

    /// Sets the connection timeouts; 0 leaves one unchanged.
    pub fn set_timeouts(&mut self, timeouts: &Timeouts) -> Result<()> {
        self.send(&request::set_config(timeouts)).map(drop)
    }

    /// Deletes every service and destination.
    pub fn flush(&mut self) -> Result<()> {
        self.send(&request::flush()).map(drop)
    }

    /// Zeroes the counters of one service (and its destinations), or of everything.
    pub fn zero(&mut self, id: Option<&ServiceId>) -> Result<()> {
        self.send(&request::zero(id)).map(drop)
    }

    /// The running sync daemons.
    pub fn daemons(&mut self) -> Result<Vec<Daemon>> {
        let request = request::get_daemons();
        let name = request.message.cmd.name();
        let replies = self.send(&request)?;
        replies
            .iter()
            .filter_map(|m| m.daemon_attrs())
            .map(|attrs| Daemon::from_attrs(attrs).map_err(|source| Error::Reply { request: name.clone(), source }))
            .collect()
    }

    /// Sends any request and returns the kernel's reply messages (for a dump, every entry).
    pub fn send(&mut self, request: &Request) -> Result<Vec<IpvsMessage>> {
        let name = request.message.cmd.name();
        let sequence_number = self.next_sequence_number();
        let bytes = request.to_bytes(self.family_id, sequence_number);
        let replies = self.exchange::<GenlMessage<IpvsMessage>>(name, &bytes, sequence_number, request.kind)?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }

    fn next_sequence_number(&mut self) -> u32 {
        self.sequence_number = self.sequence_number.wrapping_add(1);
        self.sequence_number
    }

    fn resolve_family(&mut self) -> Result<u16> {
        let name: Cow<'static, str> = "CTRL_CMD_GETFAMILY".into();
        let sequence_number = self.next_sequence_number();
        let mut msg = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.to_string())],
        }));
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        msg.header.sequence_number = sequence_number;
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        let replies = match self.exchange::<GenlMessage<GenlCtrl>>(name, &bytes, sequence_number, Kind::Ack) {
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => return Err(Error::FamilyNotFound),
            other => other?,
        };
        replies
            .iter()
            .flat_map(|m| &m.payload.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(Error::FamilyNotFound)
    }

    /// Sends one request datagram and reads answers until its acknowledgement, error or end of dump.
    /// Messages of other sequence numbers (answers to an earlier request given up on) are skipped.
    fn exchange<P>(&mut self, name: Cow<'static, str>, bytes: &[u8], sequence_number: u32, kind: Kind) -> Result<Vec<P>>
    where
        P: NetlinkDeserializable + Debug,
    {
        let io_error = |source| Error::Io { request: name.clone(), source };
        let decode_error = |source| Error::Decode { request: name.clone(), source };
        self.transport.send(bytes).map_err(io_error)?;
        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let datagram = self.transport.recv().map_err(io_error)?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let len = NetlinkBuffer::new_checked(rest).map_err(decode_error)?.length() as usize;
                let msg = NetlinkMessage::<P>::deserialize(&rest[..len]).map_err(decode_error)?;
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if msg.header.sequence_number != sequence_number {
                    continue;
                }
                interrupted |= msg.header.flags & NLM_F_DUMP_INTR != 0;
                match msg.payload {
                    NetlinkPayload::InnerMessage(reply) => replies.push(reply),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => return Err(kernel_error(name, -code.get())),
                    },
                    NetlinkPayload::Done(done) if kind == Kind::Dump => {
                        if done.code < 0 {
                            return Err(kernel_error(name, -done.code));
                        }
                        if interrupted {
                            return Err(Error::DumpInterrupted { request: name.clone() });
                        }
                        return Ok(replies);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The entries in the order first seen, each key once, holding its last copy (the kernel may repeat an
/// entry within a dump).
fn last_of_each<T, K: Eq + Hash>(entries: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut index = HashMap::new();
    let mut out: Vec<T> = Vec::with_capacity(entries.len());
    for e in entries {
        match index.entry(key(&e)) {
            Entry::Occupied(at) => out[*at.get()] = e,
            Entry::Vacant(slot) => {
                slot.insert(out.len());
                out.push(e);
            }
        }
    }
    out
}

fn kernel_error(name: Cow<'static, str>, errno: i32) -> Error {
    Error::Kernel { request: name, errno, source: io::Error::from_raw_os_error(errno) }
}

#[cfg(test)]
mod tests;
