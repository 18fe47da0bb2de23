//! Reading a table back: nft's JSON listing to a [`Listing`], and from there to the state the reconciler
//! adopts ([`restore`]) and to the dataplane-neutral [`Dump`] ([`dump`]).
//!
//! nft JSON is parsed with `serde_json::Value` rather than the `nftables` crate's schema types, which hold
//! counters in `u32` (a backend's byte count passes 4 GiB quickly) and cannot express `counter name … map`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde_json::Value;
use switchyard_model::dataplane::{Dump, DumpBackend, DumpFrontend, DumpService, Error};
use switchyard_model::{Family, FrontendKind, Scheduler};

use crate::names::{self, MapName};
use crate::translate::FINGERPRINT_PREFIX;

/// A rule as listed: its statements and its comment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListedRule {
    /// The `expr` array of the rule.
    pub expr: Vec<Value>,
    /// The rule's comment.
    pub comment: Option<String>,
}

/// One family's table as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listing {
    /// Rules per chain, in order (every chain is present, possibly empty).
    pub chains: BTreeMap<String, Vec<ListedRule>>,
    /// Named sets and their timeout in seconds (0 without one).
    pub sets: BTreeMap<String, u32>,
    /// Elements of named sets, as text (addresses; prefixes as `addr/len`).
    pub set_elements: BTreeMap<String, Vec<String>>,
    /// Per-element counters of the counted backend sets: set -> element key -> (packets, bytes).
    pub element_counters: BTreeMap<MapName, BTreeMap<String, (u64, u64)>>,
    /// Elements of Switchyard's shared maps as (key, value) in the syntax the translation writes.
    pub elements: BTreeMap<MapName, Vec<(String, String)>>,
    /// Names of the other (per-Service-port) maps.
    pub other_maps: BTreeSet<String>,
}

fn parse_err(message: impl Into<String>) -> Error {
    Error::Parse { dataplane: "nftables", message: message.into() }
}

/// Parses the output of `nft -j list table …` (or `list counters …`).
pub fn parse(json: &str) -> Result<Listing, Error> {
    let root: Value = serde_json::from_str(json).map_err(|e| parse_err(e.to_string()))?;
    let items = root.get("nftables").and_then(Value::as_array).ok_or_else(|| parse_err("no nftables array"))?;
    let mut l = Listing::default();
    for item in items {
        let Some((kind, obj)) = item.as_object().and_then(|o| o.iter().next()) else { continue };
        let name = obj.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        match kind.as_str() {
            "chain" => {
                l.chains.entry(name).or_default();
            }
            "rule" => {
                let chain = obj.get("chain").and_then(Value::as_str).unwrap_or_default().to_string();
                let expr = obj.get("expr").and_then(Value::as_array).cloned().unwrap_or_default();
                let comment = obj.get("comment").and_then(Value::as_str).map(str::to_string);
                l.chains.entry(chain).or_default().push(ListedRule { expr, comment });
            }
            "set" => {
                let timeout = obj.get("timeout").and_then(Value::as_u64).unwrap_or(0);
                let elems: Vec<&Value> = obj.get("elem").and_then(Value::as_array).into_iter().flatten().collect();
                let keys: Vec<String> = elems.iter().map(|e| key_text(e.get("elem").map_or(*e, |x| &x["val"]))).collect();
                if let Some(set) = MapName::parse(&name).filter(|m| m.is_backend_set()) {
                    let counters = l.element_counters.entry(set).or_default();
                    for (e, key) in elems.iter().zip(&keys) {
                        let c = e.get("elem").and_then(|x| x.get("counter"));
                        let n = |k: &str| c.and_then(|c| c.get(k)).and_then(Value::as_u64).unwrap_or(0);
                        counters.insert(key.clone(), (n("packets"), n("bytes")));
                    }
                    l.elements.entry(set).or_default().extend(keys.iter().map(|k| (k.clone(), String::new())));
                    continue;
                }
                if let Some(set) = MapName::parse(&name) {
                    l.elements.entry(set).or_default().extend(keys.into_iter().map(|k| (k, String::new())));
                    continue;
                }
                l.set_elements.insert(name.clone(), keys);
                l.sets.insert(name, u32::try_from(timeout).unwrap_or(u32::MAX));
            }
            "map" => {
                let Some(map) = MapName::parse(&name) else {
                    l.other_maps.insert(name);
                    continue;
                };
                let elems = l.elements.entry(map).or_default();
                for e in obj.get("elem").and_then(Value::as_array).into_iter().flatten() {
                    let pair = e.as_array().filter(|p| p.len() == 2).ok_or_else(|| parse_err("map element"))?;
                    let (key, comment) = match pair[0].get("elem") {
                        Some(el) => (&el["val"], el.get("comment").and_then(Value::as_str)),
                        None => (&pair[0], None),
                    };
                    let value = match (&pair[1], pair[1].get("goto")) {
                        (_, Some(g)) => format!("goto {}", g["target"].as_str().unwrap_or_default()),
                        (Value::String(s), None) => format!("\"{s}\""),
                        (other, None) => key_text(other),
                    };
                    let value = match comment {
                        Some(c) => format!("comment \"{c}\" : {value}"),
                        None => format!(": {value}"),
                    };
                    elems.push((key_text(key), value));
                }
            }
            _ => {}
        }
    }
    Ok(l)
}

/// A map key in nft syntax: `10.96.0.1 . tcp . 80`, `tcp . 30080`, `7`.
fn key_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("concat") => {
            o["concat"].as_array().into_iter().flatten().map(key_text).collect::<Vec<_>>().join(" . ")
        }
        other => other.to_string(),
    }
}

/// The objects one Service port owns in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    /// The fingerprint found on the `service-` chain, if any.
    pub fingerprint: Option<u64>,
    /// Chain names.
    pub chains: BTreeSet<String>,
    /// A hash of each chain's rules (`translate::rules_hash`), for the chains written in this run.
    /// A restored chain has none: its rules are unknown (the listing does not spell rules as the translation
    /// does), so the first change to its Service port rewrites it once.
    pub rules: BTreeMap<String, u64>,
    /// Affinity sets and their timeouts.
    pub sets: BTreeMap<String, u32>,
    /// Scheduler verdict maps.
    pub maps: BTreeSet<String>,
    /// Map elements: (map, key) -> value.
    pub elements: BTreeMap<(MapName, String), String>,
    /// The backends (by [`names::endpoint`] name) whose conntrack marks it holds.
    pub endpoints: BTreeSet<String>,
    /// Its routes' blocks of `backend-slots`: route -> (first slot, count).
    pub slot_blocks: BTreeMap<String, (u32, u32)>,
}

/// What a restore finds: the objects of each Service port (by key) and the conntrack mark of each backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Per Service key.
    pub services: HashMap<String, Programmed>,
    /// Backend ([`names::endpoint`] name) -> its conntrack mark.
    pub marks: HashMap<String, u32>,
}

/// Groups a listing's objects by the Service port that owns them. Objects of no Service port (the static
/// skeleton, anything unknown) are left out.
pub fn restore(l: &Listing) -> Restored {
    let mut r = Restored::default();
    for (chain, rules) in &l.chains {
        let Some(key) = names::owner_key(chain) else { continue };
        let p = r.services.entry(key.to_string()).or_default();
        p.chains.insert(chain.clone());
        if chain.starts_with("service-") {
            p.fingerprint = rules.iter().filter_map(|x| x.comment.as_deref()).find_map(parse_fingerprint);
        }
    }
    for (set, timeout) in &l.sets {
        if let Some(key) = names::owner_key(set) {
            r.services.entry(key.to_string()).or_default().sets.insert(set.clone(), *timeout);
        }
    }
    for map in &l.other_maps {
        if let Some(key) = names::owner_key(map) {
            r.services.entry(key.to_string()).or_default().maps.insert(map.clone());
        }
    }
    // Each backend's conntrack mark: from its endpoint chain's DNAT rule (affinity), or from the slots of
    // the route blocks the Service port's scheduler rules name and the address the mark DNATs to.
    let mut by_mark: HashMap<String, String> = HashMap::new();
    for (chain, rules) in l.chains.iter().filter(|(c, _)| c.starts_with("endpoint-")) {
        if let Some(mark) = rules.iter().find_map(|x| x.expr.iter().find_map(mark_of)) {
            r.marks.insert(chain.clone(), mark);
            by_mark.insert(mark.to_string(), chain.clone());
        }
    }
    let mut blocks: BTreeMap<u32, (u32, String)> = BTreeMap::new();
    for (chain, rules) in &l.chains {
        let (key, external) = match (chain.strip_prefix("service-"), chain.strip_prefix("external-")) {
            (Some(k), _) => (k, false),
            (_, Some(k)) => (k, true),
            _ => continue,
        };
        let Some(range) = rules.iter().find_map(|x| x.expr.iter().find_map(slot_range)) else { continue };
        if names::parse_service_key(key).is_some() {
            blocks.insert(range.0, (range.1, key.to_string()));
            r.services.entry(key.to_string()).or_default().slot_blocks.insert(names::balance_map(key, external), range);
        }
    }
    let addrs = backend_addrs(l);
    for (slot, mark) in l.elements.get(&MapName::BackendSlots).into_iter().flatten() {
        let (Ok(slot), Some(mark)) = (slot.parse::<u32>(), mark.strip_prefix(": ")) else { continue };
        let owner = blocks.range(..=slot).next_back().filter(|(base, (n, _))| slot - **base < *n).map(|(_, (_, k))| k);
        if let (Some(key), Some((ip, port)), Ok(m)) = (owner, addrs.get(mark), mark.parse::<u32>()) {
            let ep = names::endpoint(key, *ip, *port);
            r.marks.insert(ep.clone(), m);
            by_mark.insert(mark.to_string(), ep);
        }
    }
    for ep in r.marks.keys() {
        if let Some(key) = names::owner_key(ep) {
            r.services.entry(key.to_string()).or_default().endpoints.insert(ep.clone());
        }
    }
    for (&map, elems) in &l.elements {
        for (k, v) in elems {
            let target = match map {
                MapName::BackendTraffic | MapName::BackendConnections | MapName::BackendAddrs => by_mark.get(k),
                MapName::Hairpin => k.rsplit(" . ").next().and_then(|m| by_mark.get(m)),
                MapName::BackendSlots => v.strip_prefix(": ").and_then(|m| by_mark.get(m)),
                _ => None,
            };
            let target = match target {
                Some(ep) => ep.as_str(),
                None if map.is_backend_map() => continue,
                None => v.rsplit(' ').next().unwrap_or_default().trim_matches('"'),
            };
            let Some(owner) = names::owner_key(target) else { continue };
            r.services.entry(owner.to_string()).or_default().elements.insert((map, k.clone()), v.clone());
        }
    }
    r
}

/// `backend-addrs`: mark -> the address and port it DNATs to.
fn backend_addrs(l: &Listing) -> HashMap<&str, (IpAddr, u16)> {
    let mut out = HashMap::new();
    for (mark, v) in l.elements.get(&MapName::BackendAddrs).into_iter().flatten() {
        let Some((ip, port)) = v.strip_prefix(": ").and_then(|v| v.split_once(" . ")) else { continue };
        if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
            out.insert(mark.as_str(), (ip, port));
        }
    }
    out
}

/// The block of `backend-slots` a scheduler's rule picks from: `ct mark set numgen|jhash … mod N offset B`
/// -> (B, N).
fn slot_range(stmt: &Value) -> Option<(u32, u32)> {
    let value = stmt.get("mangle")?.get("value")?;
    let pick = value.get("numgen").or_else(|| value.get("jhash"))?;
    let n = |k: &str| pick.get(k).and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
    Some((n("offset").unwrap_or(0), n("mod")?))
}

fn parse_fingerprint(comment: &str) -> Option<u64> {
    let hex = comment.strip_prefix(FINGERPRINT_PREFIX)?.split(' ').next()?;
    u64::from_str_radix(hex, 16).ok()
}

/// A `key=value` field of the fingerprint comment.
fn note_field<'a>(comment: &'a str, field: &str) -> Option<&'a str> {
    comment.split(' ').find_map(|kv| kv.strip_prefix(field)?.strip_prefix('='))
}

/// What the kernel does for each Service port of one family's table.
pub fn dump(l: &Listing, family: Family) -> Result<Dump, Error> {
    let r = restore(l);
    let addrs = backend_addrs(l);
    let mut services = Vec::new();
    let mut keys: Vec<&String> = r.services.keys().collect();
    keys.sort();
    for key in keys {
        let p = &r.services[key];
        let name = names::parse_service_key(key).ok_or_else(|| parse_err(format!("service key {key}")))?;
        let svc_chain = names::service_chain(key);
        let rules = l.chains.get(&svc_chain).map(Vec::as_slice).unwrap_or_default();
        let note = rules.iter().filter_map(|x| x.comment.as_deref()).find(|c| c.starts_with(FINGERPRINT_PREFIX));

        let mut frontends = Vec::new();
        for ((map, k), v) in &p.elements {
            let kind = v.strip_prefix("comment \"").and_then(|s| s.split('"').next()).and_then(|c| c.parse::<FrontendKind>().ok());
            let parts: Vec<&str> = k.split(" . ").collect();
            let (ip, port) = match map {
                MapName::ServiceIps | MapName::NoEndpointServices if parts.len() == 3 => {
                    (parts[0].parse::<IpAddr>().ok(), parts[2].parse::<u16>().ok())
                }
                MapName::ServiceNodeports | MapName::NoEndpointNodeports if parts.len() == 2 => {
                    (Some(family.unspecified()), parts[1].parse::<u16>().ok())
                }
                _ => continue,
            };
            if let (Some(kind), Some(ip), Some(port)) = (kind, ip, port) {
                frontends.push(DumpFrontend { kind, ip, port });
            }
        }
        frontends.sort();

        // The scheduler from the rule that applies it; the comment only when there is no such rule.
        let scheduler = rules
            .iter()
            .find_map(|x| x.expr.iter().find_map(scheduler_of))
            .or_else(|| note.and_then(|n| note_field(n, "scheduler")).and_then(|s| s.parse().ok()))
            .unwrap_or(Scheduler::Random);
        let affinity_timeout_seconds =
            p.sets.values().next().copied().or_else(|| note.and_then(|n| note_field(n, "affinity")?.parse().ok()));

        let mut backends = Vec::new();
        for ep in &p.endpoints {
            let Some(mark) = r.marks.get(ep) else { continue };
            let target = match l.chains.get(ep) {
                Some(rules) => rules.iter().find_map(|x| x.expr.iter().find_map(dnat_of)),
                None => addrs.get(mark.to_string().as_str()).copied(),
            };
            let Some((ip, port)) = target else { continue };
            let mark = mark.to_string();
            let counter = |set: MapName| l.element_counters.get(&set).and_then(|c| c.get(&mark)).copied().unwrap_or_default();
            let (packets, bytes) = counter(MapName::BackendTraffic);
            let connections = counter(MapName::BackendConnections).0;
            backends.push(DumpBackend { ip, port, packets, bytes, connections });
        }
        backends.sort();
        services.push(DumpService {
            namespace: name.namespace,
            name: name.name,
            port: name.port,
            protocol: name.protocol,
            frontends,
            scheduler,
            affinity_timeout_seconds,
            backends,
        });
    }
    Ok(Dump { services })
}

/// The scheduler a statement applies, if it is a scheduler's pick (a slot into the mark, or with affinity
/// a vmap).
fn scheduler_of(stmt: &Value) -> Option<Scheduler> {
    let key = match stmt.get("vmap") {
        Some(vmap) => vmap.get("key")?,
        None => stmt.get("mangle")?.get("value")?,
    };
    if let Some(ng) = key.get("numgen") {
        return Some(if ng.get("mode")?.as_str()? == "inc" { Scheduler::Rr } else { Scheduler::Random });
    }
    let field = key.get("jhash")?.get("expr")?.get("payload")?.get("field")?.as_str()?;
    Some(if field == "daddr" { Scheduler::Dh } else { Scheduler::Sh })
}

/// The conntrack mark a statement sets, if it sets one.
fn mark_of(stmt: &Value) -> Option<u32> {
    let m = stmt.get("mangle")?;
    (m.get("key")?.get("ct")?.get("key")?.as_str()? == "mark").then_some(())?;
    u32::try_from(m.get("value")?.as_u64()?).ok()
}

/// The address and port a statement DNATs to, if it is a DNAT.
fn dnat_of(stmt: &Value) -> Option<(IpAddr, u16)> {
    let d = stmt.get("dnat")?;
    let ip = d.get("addr")?.as_str()?.parse().ok()?;
    let port = u16::try_from(d.get("port")?.as_u64()?).ok()?;
    Some((ip, port))
}
