//! The one door to the kernel: IPVS over generic netlink, links and addresses over rtnetlink, sysctls
//! under `/proc/sys`, and `nft` for the companion table.
//!
//! Everything the dataplane does to the kernel goes through [`Kernel`], so tests can put a fake behind it
//! and inject failures. [`System`] is the real thing; it opens its sockets on first use, in the network
//! namespace of the thread that first uses it.

use std::io;
use std::net::IpAddr;

use switchyard_ipvs_netlink::{Client, Destination, Service, ServiceId};
use switchyard_model::dataplane;
use switchyard_nftables::kernel::{Nft, NftCommand};

use crate::rtnl::{self, InterfaceAddress, Rtnl};

const DATAPLANE: &str = "ipvs";

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// IPVS refused a request or could not be reached.
    #[error("IPVS: {op}")]
    Ipvs {
        /// What was being done (`add service TCP 10.96.0.10:80`).
        op: String,
        /// The client's error, with the kernel's errno.
        #[source]
        source: switchyard_ipvs_netlink::Error,
    },
    /// rtnetlink refused a request or could not be reached.
    #[error("rtnetlink: {op}")]
    Rtnl {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: rtnl::Error,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {name}")]
    Sysctl {
        /// The sysctl (`net.ipv4.vs.conntrack`).
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `nft` failed (see the nftables dataplane's error).
    #[error(transparent)]
    Nft(#[from] dataplane::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The object the request named is already gone: no such service or destination, address or link.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::Ipvs { source, .. } => source.is_not_found(),
            Error::Rtnl { source, .. } => {
                matches!(source.errno(), Some(e) if e == libc::ENODEV || e == libc::EADDRNOTAVAIL || e == libc::ENOENT)
            }
            _ => false,
        }
    }

    /// The object the request adds is already there.
    pub fn is_exists(&self) -> bool {
        match self {
            Error::Ipvs { source, .. } => source.is_exists(),
            Error::Rtnl { source, .. } => source.errno() == Some(libc::EEXIST),
            _ => false,
        }
    }

    /// Whether the same request may succeed later: I/O failures and a busy kernel, not refusals.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Ipvs { source, .. } => source.is_retryable(),
            Error::Rtnl { source, .. } => matches!(source, rtnl::Error::Io { .. }),
            Error::Sysctl { .. } => false,
            Error::Nft(e) => e.is_retryable(),
        }
    }

    /// The dataplane-neutral error the daemon handles: refusals become `Rejected` (retried after a restore),
    /// unreachable kernels `Io`.
    pub fn into_dataplane(self) -> dataplane::Error {
        let message = error_chain(&self);
        match self {
            Error::Nft(e) => e,
            Error::Ipvs { source: switchyard_ipvs_netlink::Error::Kernel { .. }, .. }
            | Error::Rtnl { source: rtnl::Error::Kernel { .. }, .. } => {
                dataplane::Error::Rejected { dataplane: DATAPLANE, message }
            }
            Error::Sysctl { name, source } => {
                dataplane::Error::Io { dataplane: DATAPLANE, what: format!("sysctl {name}"), source }
            }
            other => dataplane::Error::Io {
                dataplane: DATAPLANE,
                what: message,
                source: io::Error::other(other.to_string()),
            },
        }
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Access to the kernel.
pub trait Kernel: Send + std::fmt::Debug {
    /// Every IPVS service of the namespace, with counters.
    fn ipvs_services(&mut self) -> Result<Vec<Service>>;
    /// The destinations of a service, with counters (empty if the service is gone).
    fn ipvs_destinations(&mut self, id: &ServiceId) -> Result<Vec<Destination>>;
    /// Adds a service.
    fn ipvs_add_service(&mut self, service: &Service) -> Result<()>;
    /// Changes a service's scheduler, flags and persistence.
    fn ipvs_edit_service(&mut self, service: &Service) -> Result<()>;
    /// Deletes a service with its destinations.
    fn ipvs_delete_service(&mut self, id: &ServiceId) -> Result<()>;
    /// Adds a destination.
    fn ipvs_add_destination(&mut self, id: &ServiceId, dest: &Destination) -> Result<()>;
    /// Changes a destination's weight.
    fn ipvs_edit_destination(&mut self, id: &ServiceId, dest: &Destination) -> Result<()>;
    /// Deletes a destination.
    fn ipvs_delete_destination(&mut self, id: &ServiceId, dest: &Destination) -> Result<()>;

    /// The index of a link, if it exists.
    fn link_index(&mut self, name: &str) -> Result<Option<u32>>;
    /// Creates a dummy link (up) and returns its index; returns the existing one's if there is one.
    fn ensure_dummy(&mut self, name: &str) -> Result<u32>;
    /// Deletes a link.
    fn delete_link(&mut self, index: u32) -> Result<()>;
    /// Every address of every interface.
    fn addresses(&mut self) -> Result<Vec<InterfaceAddress>>;
    /// Adds a host address to a link.
    fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()>;
    /// Removes a host address from a link.
    fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()>;

    /// Reads a sysctl (`net.ipv4.vs.conntrack`); `None` if it does not exist.
    fn read_sysctl(&mut self, name: &str) -> Result<Option<String>>;
    /// Writes a sysctl.
    fn write_sysctl(&mut self, name: &str, value: &str) -> Result<()>;

    /// Applies an nft script as one transaction.
    fn nft_apply(&mut self, script: &str) -> Result<()>;
    /// Lists a table as nft JSON (`None` if there is no such table).
    fn nft_list(&mut self, family: &str, table: &str) -> Result<Option<String>>;
}

/// The real kernel, through netlink sockets opened on first use, `/proc/sys` and the `nft` binary.
#[derive(Debug, Default)]
pub struct System {
    ipvs: Option<Client>,
    rtnl: Option<Rtnl>,
    nft: NftCommand,
}

impl System {
    /// A kernel handle that has not opened anything yet.
    pub fn new() -> System {
        System::default()
    }

    /// The same, running `nft` as this command (a path, for a binary outside `PATH`).
    pub fn with_nft(nft: NftCommand) -> System {
        System { nft, ..System::default() }
    }

    fn ipvs(&mut self, op: impl FnOnce() -> String) -> Result<&mut Client> {
        if self.ipvs.is_none() {
            let client =
                Client::new().map_err(|source| Error::Ipvs { op: format!("opening IPVS ({})", op()), source })?;
            self.ipvs = Some(client);
        }
        Ok(self.ipvs.as_mut().expect("just opened"))
    }

    fn rtnl(&mut self, op: &str) -> Result<&mut Rtnl> {
        if self.rtnl.is_none() {
            self.rtnl = Some(Rtnl::open().map_err(|source| Error::Rtnl { op: op.to_string(), source })?);
        }
        Ok(self.rtnl.as_mut().expect("just opened"))
    }

    /// Runs an IPVS request; after an I/O failure the socket is dropped, so the next request opens a new one.
    fn with_ipvs<T>(
        &mut self,
        op: impl Fn() -> String,
        f: impl FnOnce(&mut Client) -> switchyard_ipvs_netlink::client::Result<T>,
    ) -> Result<T> {
        let result = f(self.ipvs(&op)?);
        if let Err(e) = &result {
            if e.is_retryable() {
                self.ipvs = None;
            }
        }
        result.map_err(|source| Error::Ipvs { op: op(), source })
    }

    fn with_rtnl<T>(&mut self, op: impl Fn() -> String, f: impl FnOnce(&mut Rtnl) -> rtnl::Result<T>) -> Result<T> {
        let result = f(self.rtnl(&op())?);
        if let Err(rtnl::Error::Io { .. }) = &result {
            self.rtnl = None;
        }
        result.map_err(|source| Error::Rtnl { op: op(), source })
    }
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

impl Kernel for System {
    fn ipvs_services(&mut self) -> Result<Vec<Service>> {
        self.with_ipvs(|| "list services".into(), |c| c.services())
    }

    fn ipvs_destinations(&mut self, id: &ServiceId) -> Result<Vec<Destination>> {
        self.with_ipvs(|| format!("list destinations of {id}"), |c| c.destinations(id))
    }

    fn ipvs_add_service(&mut self, service: &Service) -> Result<()> {
        self.with_ipvs(|| format!("add service {} ({})", service.id, service.scheduler), |c| c.add_service(service))
    }

    fn ipvs_edit_service(&mut self, service: &Service) -> Result<()> {
        self.with_ipvs(|| format!("edit service {} ({})", service.id, service.scheduler), |c| c.edit_service(service))
    }

    fn ipvs_delete_service(&mut self, id: &ServiceId) -> Result<()> {
        self.with_ipvs(|| format!("delete service {id}"), |c| c.delete_service(id))
    }

    fn ipvs_add_destination(&mut self, id: &ServiceId, dest: &Destination) -> Result<()> {
        let op = || format!("add destination {} to {id}", std::net::SocketAddr::new(dest.addr, dest.port));
        self.with_ipvs(op, |c| c.add_destination(id, dest))
    }

    fn ipvs_edit_destination(&mut self, id: &ServiceId, dest: &Destination) -> Result<()> {
        let op =
            || format!("set weight {} of {} in {id}", dest.weight, std::net::SocketAddr::new(dest.addr, dest.port));
        self.with_ipvs(op, |c| c.edit_destination(id, dest))
    }

    fn ipvs_delete_destination(&mut self, id: &ServiceId, dest: &Destination) -> Result<()> {
        let op = || format!("delete destination {} of {id}", std::net::SocketAddr::new(dest.addr, dest.port));
        self.with_ipvs(op, |c| c.delete_destination(id, dest))
    }

    fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        self.with_rtnl(|| format!("find link {name}"), |r| r.link_index(name))
    }

    fn ensure_dummy(&mut self, name: &str) -> Result<u32> {
        let index = match self.link_index(name)? {
            Some(i) => i,
            None => {
                match self.with_rtnl(|| format!("create dummy link {name}"), |r| r.add_dummy(name)) {
                    Err(e) if e.is_exists() => {}
                    other => other?,
                }
                self.link_index(name)?.ok_or_else(|| Error::Rtnl {
                    op: format!("find link {name} just created"),
                    source: rtnl::Error::Kernel {
                        op: "RTM_GETLINK",
                        errno: libc::ENODEV,
                        source: io::Error::from_raw_os_error(libc::ENODEV),
                    },
                })?
            }
        };
        self.with_rtnl(|| format!("set link {name} up"), |r| r.set_up(index))?;
        Ok(index)
    }

    fn delete_link(&mut self, index: u32) -> Result<()> {
        self.with_rtnl(|| format!("delete link {index}"), |r| r.delete_link(index))
    }

    fn addresses(&mut self) -> Result<Vec<InterfaceAddress>> {
        self.with_rtnl(|| "list addresses".into(), |r| r.addresses())
    }

    fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.with_rtnl(|| format!("add address {ip} to link {index}"), |r| r.add_address(index, ip))
    }

    fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.with_rtnl(|| format!("delete address {ip} from link {index}"), |r| r.delete_address(index, ip))
    }

    fn read_sysctl(&mut self, name: &str) -> Result<Option<String>> {
        match std::fs::read_to_string(sysctl_path(name)) {
            Ok(v) => Ok(Some(v.trim().to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Sysctl { name: name.into(), source }),
        }
    }

    fn write_sysctl(&mut self, name: &str, value: &str) -> Result<()> {
        std::fs::write(sysctl_path(name), value).map_err(|source| Error::Sysctl { name: name.into(), source })
    }

    fn nft_apply(&mut self, script: &str) -> Result<()> {
        Ok(self.nft.apply(script)?)
    }

    fn nft_list(&mut self, family: &str, table: &str) -> Result<Option<String>> {
        Ok(self.nft.list("table", family, table)?)
    }
}
