//! Stale conntrack entries, deleted over ctnetlink. See the crate README.

pub mod codec;

use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use switchyard_model::conntrack::StaleFlows;
use switchyard_model::Family;
use tracing::debug;

use codec::{Entry, Reply};

/// A ctnetlink failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be opened, or sending or receiving failed.
    #[error("ctnetlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel answered a request with an error.
    #[error("ctnetlink: the kernel answered errno {0}")]
    Kernel(i32),
    /// The kernel's answer could not be parsed.
    #[error("ctnetlink: malformed answer: {0}")]
    Malformed(&'static str),
}

/// A ctnetlink socket of the current network namespace.
#[derive(Debug)]
pub struct Conntrack {
    socket: Socket,
    seq: u32,
}

const ENOENT: i32 = 2;

impl Conntrack {
    /// Opens a socket.
    pub fn open() -> Result<Self, Error> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Conntrack { socket, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Every UDP entry of a family.
    pub fn udp_entries(&mut self, family: Family) -> Result<Vec<Entry>, Error> {
        let seq = self.next_seq();
        self.socket.send(&codec::dump_request(family, seq), 0)?;
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            for reply in codec::parse(&buf[..n]).map_err(Error::Malformed)? {
                match reply {
                    Reply::Entry(e) if e.protocol == codec::IPPROTO_UDP => entries.push(e),
                    Reply::Entry(_) | Reply::Ack => {}
                    Reply::Done => return Ok(entries),
                    Reply::Error(errno) => return Err(Error::Kernel(errno)),
                }
            }
        }
    }

    /// Deletes one entry (by its original tuple). An entry that is already gone is not an error.
    pub fn delete(&mut self, entry: &Entry) -> Result<(), Error> {
        let seq = self.next_seq();
        self.socket.send(&codec::delete_request(entry, seq), 0)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.socket.recv(&mut &mut buf[..], 0)?;
            for reply in codec::parse(&buf[..n]).map_err(Error::Malformed)? {
                match reply {
                    Reply::Ack | Reply::Done => return Ok(()),
                    Reply::Error(errno) if errno == ENOENT => return Ok(()),
                    Reply::Error(errno) => return Err(Error::Kernel(errno)),
                    Reply::Entry(_) => {}
                }
            }
        }
    }

    /// Deletes the UDP entries any filter matches. Returns how many were deleted.
    pub fn delete_stale(&mut self, filters: &[StaleFlows]) -> Result<usize, Error> {
        let mut deleted = 0;
        for family in [Family::V4, Family::V6] {
            let mine: Vec<&StaleFlows> = filters.iter().filter(|f| Family::of(&f.dst) == family).collect();
            if mine.is_empty() {
                continue;
            }
            for e in self.udp_entries(family)? {
                let (dst, reply_src): ((IpAddr, u16), (IpAddr, u16)) = (e.orig_dst(), e.reply_src());
                if mine.iter().any(|f| f.matches(dst, reply_src)) {
                    debug!(orig_src = ?e.orig.src, orig_dst = ?dst, reply_src = ?reply_src, "deleting stale UDP conntrack entry");
                    self.delete(&e)?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }
}
