//! Reading the kernel back: the companion table's listing grouped by Service port (for restore and dump),
//! and the dataplane-neutral [`DumpService`]s made from it and the IPVS table.
//!
//! The IPVS table has no names; the companion table does: its `service-ips` map sends each frontend
//! (address . protocol . port) to a chain named after the Service port, and the first rule of `service-K`
//! carries the firewall mark of the Service port's short-circuit service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use switchyard_ipvs_netlink::{Destination, Service, ServiceFlags, ServiceId};
use switchyard_model::dataplane::{DumpBackend, DumpFrontend, DumpService, Error};
use switchyard_model::{Family, FrontendKind, Scheduler};
use switchyard_nftables::listing as nft_listing;
use switchyard_nftables::names::{self, MapName};

use crate::translate::{self, CLUSTER_IPS, HAIRPIN};

/// What one Service port owns in a family's companion table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyObjects {
    /// Its chains.
    pub chains: BTreeSet<String>,
    /// The fingerprint on the first rule of `service-K`.
    pub fingerprint: Option<u64>,
    /// The firewall mark of its short-circuit service.
    pub fwmark: Option<u32>,
    /// Its `service-ips` elements: the frontend's virtual service and the element's value.
    pub elements: BTreeMap<ServiceId, String>,
}

/// A family's companion table as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// Per Service key.
    pub keys: BTreeMap<String, KeyObjects>,
    /// The `cluster-ips` set.
    pub cluster_ips: BTreeSet<IpAddr>,
    /// The backends in the `hairpin` set.
    pub hairpin: BTreeSet<IpAddr>,
}

/// Parses `nft -j list table ip|ip6 switchyard-ipvs`.
pub fn parse(json: &str) -> Result<Table, Error> {
    let l = nft_listing::parse(json).map_err(|e| match e {
        Error::Parse { message, .. } => Error::Parse { dataplane: "ipvs", message },
        other => other,
    })?;
    let mut t = Table::default();
    for (chain, rules) in &l.chains {
        let Some(key) = names::owner_key(chain) else { continue };
        let k = t.keys.entry(key.to_string()).or_default();
        k.chains.insert(chain.clone());
        if chain.starts_with("service-") {
            if let Some((fp, mark)) = rules.first().and_then(|r| r.comment.as_deref()).and_then(translate::parse_note) {
                k.fingerprint = Some(fp);
                k.fwmark = mark;
            }
        }
    }
    for (key, value) in l.elements.get(&MapName::ServiceIps).into_iter().flatten() {
        let Some(id) = translate::parse_element_key(key) else { continue };
        let target = value.rsplit(' ').next().unwrap_or_default();
        let Some(owner) = names::owner_key(target) else { continue };
        t.keys.entry(owner.to_string()).or_default().elements.insert(id, value.clone());
    }
    // nftables' listing files a set named like one of its own shared maps (`hairpin`) under `elements`.
    let ips = |set: &str| -> BTreeSet<IpAddr> {
        let shared = MapName::parse(set).and_then(|m| l.elements.get(&m)).into_iter().flatten().map(|(k, _)| k);
        l.set_elements
            .get(set)
            .into_iter()
            .flatten()
            .chain(shared)
            .filter_map(|e| e.split(" . ").next()?.parse().ok())
            .collect()
    };
    t.cluster_ips = ips(CLUSTER_IPS);
    t.hairpin = ips(HAIRPIN);
    Ok(t)
}

/// The frontend kind of a `service-ips` element's value (`comment "ClusterIP" : goto ...`).
pub fn kind_of(value: &str) -> Option<FrontendKind> {
    let comment = value.strip_prefix("comment \"")?.split('"').next()?;
    comment.parse().ok()
}

/// The Service ports of one family: the companion table's names over the IPVS table's services and
/// counters. `ipvs` holds Switchyard's virtual services of the family with their destinations.
pub fn dump(
    table: &Table,
    family: Family,
    ipvs: &BTreeMap<ServiceId, (Service, Vec<Destination>)>,
) -> Vec<DumpService> {
    let mut out = Vec::new();
    for (key, objects) in &table.keys {
        let Some(name) = names::parse_service_key(key) else { continue };
        let mut ids: Vec<ServiceId> = objects.elements.keys().copied().collect();
        if let Some(mark) = objects.fwmark {
            ids.push(ServiceId::fwmark(translate::ipvs_family(family), mark));
        }
        let programmed: Vec<&(Service, Vec<Destination>)> = ids.iter().filter_map(|id| ipvs.get(id)).collect();
        if programmed.is_empty() && objects.elements.is_empty() {
            continue;
        }
        let mut frontends: Vec<DumpFrontend> = objects
            .elements
            .iter()
            .filter_map(|(id, value)| match id {
                ServiceId::Inet { addr, port, .. } if ipvs.contains_key(id) => {
                    Some(DumpFrontend { kind: kind_of(value)?, ip: *addr, port: *port })
                }
                _ => None,
            })
            .collect();
        frontends.sort();
        let first = programmed.first().map(|(s, _)| s);
        let scheduler = first.and_then(|s| translate::parse_scheduler(&s.scheduler)).unwrap_or(Scheduler::Rr);
        let affinity = first.filter(|s| s.flags.contains(ServiceFlags::PERSISTENT)).map(|s| s.timeout);
        let mut backends: BTreeMap<(IpAddr, u16), DumpBackend> = BTreeMap::new();
        for (_, dests) in &programmed {
            for d in dests {
                let b = backends.entry((d.addr, d.port)).or_insert(DumpBackend {
                    ip: d.addr,
                    port: d.port,
                    packets: 0,
                    bytes: 0,
                    connections: 0,
                });
                b.packets += d.stats.inpkts + d.stats.outpkts;
                b.bytes += d.stats.inbytes + d.stats.outbytes;
                b.connections += d.stats.conns;
            }
        }
        out.push(DumpService {
            namespace: name.namespace,
            name: name.name,
            port: name.port,
            protocol: name.protocol,
            frontends,
            scheduler,
            affinity_timeout_seconds: affinity,
            backends: backends.into_values().collect(),
        });
    }
    out
}
