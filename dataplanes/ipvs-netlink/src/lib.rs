//! IPVS (the kernel's IP Virtual Server) over generic netlink, the interface `ipvsadm` uses.
//!
//! - [`codec`] is pure: the messages, parsed and emitted, with every unknown attribute kept; plain structs
//!   ([`codec::Service`], [`codec::Destination`], ...) on top.
//! - [`client`] does the I/O: a blocking [`client::Client`] that resolves the `IPVS` family, builds
//!   requests ([`client::request`]) and returns the kernel's answers, with the kernel's errno in errors.
//!
//! Built on rust-netlink's `netlink-packet-core`, `netlink-packet-generic` and `netlink-sys`, as
//! `netlink-packet-route` and `rtnetlink` are.

#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod constants;

pub use client::{Client, Error};
pub use codec::{Destination, Family, ForwardMethod, IpvsMessage, Protocol, Service, ServiceFlags, ServiceId};
pub use codec::{Stats, Timeouts};
