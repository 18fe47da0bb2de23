//! The reconciler against a fake kernel: what it asks of IPVS, rtnetlink and nft, incremental syncs,
//! draining, restore and failures. (The real kernel is exercised in the VM: `tests/vm`.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_ipvs_netlink::{Destination, Service, ServiceFlags, ServiceId};
use switchyard_model::dataplane::Dataplane;
use switchyard_model::{
    Backend, Family, Frontend, FrontendKind, NodePlan, PlanKey, Protocol, Route, Scheduler, SchedulerFlags,
    ServicePlan, ServicePortName, WhenEmpty,
};

use crate::kernel::{Error, Kernel, Result};
use crate::rtnl::InterfaceAddress;
use crate::translate::{self, OWNER_FLAG};
use crate::{IpvsDataplane, Settings};

/// A fake virtual service: the service and its destinations by address and port.
type FakeService = (Service, BTreeMap<(IpAddr, u16), Destination>);

/// What the fake kernel holds, shared with the test.
#[derive(Debug, Default)]
struct World {
    services: BTreeMap<ServiceId, FakeService>,
    links: BTreeMap<String, u32>,
    addresses: BTreeSet<(u32, IpAddr)>,
    sysctls: BTreeMap<String, String>,
    scripts: Vec<String>,
    /// Every mutating call, in order (`add-service TCP 10.96.0.10:80`, ...).
    log: Vec<String>,
    /// Calls whose log line starts with this fail with this errno.
    fail: Option<(String, i32)>,
    /// nft scripts containing this are rejected.
    nft_reject: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Fake(Arc<Mutex<World>>);

fn kernel_error(op: &str, errno: i32) -> Error {
    Error::Ipvs {
        op: op.to_string(),
        source: switchyard_ipvs_netlink::Error::Kernel {
            request: "fake".into(),
            errno,
            source: std::io::Error::from_raw_os_error(errno),
        },
    }
}

impl Fake {
    fn new() -> Fake {
        let f = Fake::default();
        {
            let mut w = f.world();
            for (k, v) in [
                ("kernel.osrelease", "6.1.0-56-amd64"),
                ("net.ipv4.vs.conntrack", "0"),
                ("net.ipv4.vs.expire_nodest_conn", "0"),
                ("net.ipv4.vs.expire_quiescent_template", "0"),
                ("net.ipv4.vs.conn_reuse_mode", "1"),
                ("net.ipv4.ip_forward", "0"),
                ("net.ipv4.conf.all.arp_ignore", "0"),
                ("net.ipv4.conf.all.arp_announce", "0"),
            ] {
                w.sysctls.insert(k.into(), v.into());
            }
            w.links.insert("eth0".into(), 2);
            w.addresses.insert((2, "192.168.50.1".parse().unwrap()));
        }
        f
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    fn op(&self, line: String) -> Result<()> {
        let mut w = self.world();
        if let Some((prefix, errno)) = &w.fail {
            if line.starts_with(prefix.as_str()) {
                return Err(kernel_error(&line, *errno));
            }
        }
        w.log.push(line);
        Ok(())
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.world().log)
    }

    fn weights(&self, id: &ServiceId) -> BTreeMap<IpAddr, u32> {
        self.world().services.get(id).map(|(_, d)| d.values().map(|d| (d.addr, d.weight)).collect()).unwrap_or_default()
    }

    fn set_conns(&self, id: &ServiceId, ip: IpAddr, active: u32) {
        let mut w = self.world();
        for d in w.services.get_mut(id).unwrap().1.values_mut().filter(|d| d.addr == ip) {
            d.active_conns = active;
        }
    }
}

impl Kernel for Fake {
    fn ipvs_services(&mut self) -> Result<Vec<Service>> {
        Ok(self.world().services.values().map(|(s, _)| s.clone()).collect())
    }
    fn ipvs_destinations(&mut self, id: &ServiceId) -> Result<Vec<Destination>> {
        Ok(self.world().services.get(id).map(|(_, d)| d.values().cloned().collect()).unwrap_or_default())
    }
    fn ipvs_add_service(&mut self, s: &Service) -> Result<()> {
        self.op(format!("add-service {} {}", s.id, s.scheduler))?;
        let mut w = self.world();
        if w.services.contains_key(&s.id) {
            return Err(kernel_error("add", libc::EEXIST));
        }
        let mut s = s.clone();
        s.flags |= ServiceFlags::HASHED;
        w.services.insert(s.id, (s, BTreeMap::new()));
        Ok(())
    }
    fn ipvs_edit_service(&mut self, s: &Service) -> Result<()> {
        self.op(format!("edit-service {} {}", s.id, s.scheduler))?;
        let mut w = self.world();
        let entry = w.services.get_mut(&s.id).ok_or_else(|| kernel_error("edit", libc::ESRCH))?;
        entry.0 = s.clone();
        entry.0.flags |= ServiceFlags::HASHED;
        Ok(())
    }
    fn ipvs_delete_service(&mut self, id: &ServiceId) -> Result<()> {
        self.op(format!("delete-service {id}"))?;
        self.world().services.remove(id).map(drop).ok_or_else(|| kernel_error("delete", libc::ESRCH))
    }
    fn ipvs_add_destination(&mut self, id: &ServiceId, d: &Destination) -> Result<()> {
        self.op(format!("add-dest {id} {} w{}", d.addr, d.weight))?;
        let mut w = self.world();
        let dests = &mut w.services.get_mut(id).ok_or_else(|| kernel_error("add dest", libc::ESRCH))?.1;
        if dests.contains_key(&(d.addr, d.port)) {
            return Err(kernel_error("add dest", libc::EEXIST));
        }
        dests.insert((d.addr, d.port), d.clone());
        Ok(())
    }
    fn ipvs_edit_destination(&mut self, id: &ServiceId, d: &Destination) -> Result<()> {
        self.op(format!("edit-dest {id} {} w{}", d.addr, d.weight))?;
        let mut w = self.world();
        let dests = &mut w.services.get_mut(id).ok_or_else(|| kernel_error("edit dest", libc::ESRCH))?.1;
        let have = dests.get_mut(&(d.addr, d.port)).ok_or_else(|| kernel_error("edit dest", libc::ENOENT))?;
        have.weight = d.weight;
        Ok(())
    }
    fn ipvs_delete_destination(&mut self, id: &ServiceId, d: &Destination) -> Result<()> {
        self.op(format!("delete-dest {id} {}", d.addr))?;
        let mut w = self.world();
        let dests = &mut w.services.get_mut(id).ok_or_else(|| kernel_error("delete dest", libc::ESRCH))?.1;
        dests.remove(&(d.addr, d.port)).map(drop).ok_or_else(|| kernel_error("delete dest", libc::ENOENT))
    }
    fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        Ok(self.world().links.get(name).copied())
    }
    fn ensure_dummy(&mut self, name: &str) -> Result<u32> {
        let mut w = self.world();
        let next = w.links.values().max().copied().unwrap_or(1) + 1;
        Ok(*w.links.entry(name.to_string()).or_insert(next))
    }
    fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut w = self.world();
        w.links.retain(|_, i| *i != index);
        w.addresses.retain(|(i, _)| *i != index);
        Ok(())
    }
    fn addresses(&mut self) -> Result<Vec<InterfaceAddress>> {
        Ok(self
            .world()
            .addresses
            .iter()
            .map(|(index, ip)| InterfaceAddress { index: *index, ip: *ip, prefix_len: 32, global: true })
            .collect())
    }
    fn add_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.op(format!("add-address {ip}"))?;
        self.world().addresses.insert((index, ip));
        Ok(())
    }
    fn delete_address(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        self.op(format!("delete-address {ip}"))?;
        self.world().addresses.remove(&(index, ip));
        Ok(())
    }
    fn read_sysctl(&mut self, name: &str) -> Result<Option<String>> {
        Ok(self.world().sysctls.get(name).cloned())
    }
    fn write_sysctl(&mut self, name: &str, value: &str) -> Result<()> {
        self.op(format!("sysctl {name}={value}"))?;
        self.world().sysctls.insert(name.into(), value.into());
        Ok(())
    }
    fn nft_apply(&mut self, script: &str) -> Result<()> {
        let mut w = self.world();
        if let Some(bad) = &w.nft_reject {
            if script.contains(bad.as_str()) {
                return Err(Error::Nft(switchyard_model::dataplane::Error::Rejected {
                    dataplane: "nftables",
                    message: "fake rejection".into(),
                }));
            }
        }
        w.scripts.push(script.to_string());
        Ok(())
    }
    fn nft_list(&mut self, _family: &str, _table: &str) -> Result<Option<String>> {
        Ok(None)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn backend(addr: &str) -> Backend {
    Backend {
        ip: ip(addr),
        port: 8080,
        node_name: Some("node-a".into()),
        zone: None,
        ready: true,
        serving: true,
        terminating: false,
        weight: 1,
        zone_hints: vec![],
        node_hints: vec![],
    }
}

fn plan(name: &str, protocol: Protocol, vip: &str, node_port: Option<u16>, backends: &[&str]) -> ServicePlan {
    let route = Route { backends: backends.iter().map(|b| backend(b)).collect(), when_empty: WhenEmpty::Reject };
    let mut frontends = vec![Frontend { kind: FrontendKind::ClusterIp, ip: ip(vip), port: 80 }];
    if let Some(np) = node_port {
        frontends.push(Frontend { kind: FrontendKind::NodePort, ip: Family::V4.unspecified(), port: np });
    }
    ServicePlan {
        name: ServicePortName { namespace: "default".into(), name: name.into(), port: "http".into(), protocol },
        family: Family::V4,
        frontends,
        scheduler: Scheduler::Rr,
        scheduler_flags: SchedulerFlags::default(),
        affinity_timeout: None,
        cluster: route.clone(),
        external: route,
        external_local: false,
        source_ranges: None,
        health_check_node_port: None,
    }
}

fn desired(plans: &[ServicePlan]) -> BTreeMap<PlanKey, ServicePlan> {
    plans.iter().map(|p| ((p.name.clone(), p.family), p.clone())).collect()
}

fn node() -> NodePlan {
    let mut n = NodePlan::default();
    n.nodeport_ips.insert(Family::V4, Some(vec![ip("192.168.50.1")]));
    n.nodeport_ips.insert(Family::V6, Some(vec![]));
    n
}

fn dataplane(fake: &Fake) -> IpvsDataplane {
    let s = Settings { drain_interval: Duration::from_secs(3600), ..Settings::default() };
    IpvsDataplane::with_kernel(s, Box::new(fake.clone()))
}

fn tcp(vip: &str, port: u16) -> ServiceId {
    ServiceId::tcp(ip(vip), port)
}

/// The first sync sets the sysctls IPVS needs, makes the dummy interface, binds the ClusterIP, creates a
/// virtual service per frontend (NodePort on each node address) with NAT destinations, and applies the
/// skeleton and the Service port's chains in one nft transaction.
#[test]
fn first_sync_programs_everything() {
    let fake = Fake::new();
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    let d = desired(&[plan("web", Protocol::Tcp, "10.96.0.10", Some(30080), &["10.244.0.2", "10.244.0.3"])]);
    let report = dp.sync(&node(), &d, None).unwrap();
    assert_eq!((report.written, report.unchanged, report.removed), (1, 0, 0), "{report:?}");
    let log = fake.take_log();
    for s in [
        "net.ipv4.vs.conntrack=1",
        "net.ipv4.vs.expire_nodest_conn=1",
        "net.ipv4.vs.expire_quiescent_template=1",
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.arp_ignore=1",
        "net.ipv4.conf.all.arp_announce=2",
    ] {
        assert!(log.contains(&format!("sysctl {s}")), "{s}: {log:?}");
    }
    assert!(!log.iter().any(|l| l.contains("conn_reuse_mode")), "left alone on 6.1");
    let ipvs: Vec<&String> = log.iter().filter(|l| !l.starts_with("sysctl")).collect();
    assert_eq!(
        ipvs,
        [
            "add-address 10.96.0.10",
            "add-service TCP 10.96.0.10:80 rr",
            "add-dest TCP 10.96.0.10:80 10.244.0.2 w1",
            "add-dest TCP 10.96.0.10:80 10.244.0.3 w1",
            "add-service TCP 192.168.50.1:30080 rr",
            "add-dest TCP 192.168.50.1:30080 10.244.0.2 w1",
            "add-dest TCP 192.168.50.1:30080 10.244.0.3 w1",
        ]
    );
    let w = fake.world();
    assert!(w.services.values().all(|(s, _)| s.flags.contains(OWNER_FLAG)));
    assert_eq!(w.scripts.len(), 2, "one transaction per family (the IPv6 one only its skeleton)");
    let script = &w.scripts[0];
    assert!(script.contains("add table ip switchyard-ipvs"), "{script}");
    assert!(script.contains("add element ip switchyard-ipvs service-ips { 10.96.0.10 . tcp . 80 comment \"ClusterIP\" : goto service-default/web/tcp/http }"), "{script}");
    assert!(script.contains("add element ip switchyard-ipvs service-ips { 192.168.50.1 . tcp . 30080 comment \"NodePort\" : goto external-default/web/tcp/http }"), "{script}");
    assert!(script.contains("add element ip switchyard-ipvs cluster-ips { 10.96.0.10 }"), "{script}");
    assert!(script.contains("add element ip switchyard-ipvs hairpin { 10.244.0.2 . 10.244.0.2 }"), "{script}");
}

/// A second identical sync changes nothing; a changed Service port touches only its own objects, and
/// a scheduler change edits the virtual service in place.
#[test]
fn incremental_and_unchanged_syncs() {
    let fake = Fake::new();
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    let mut one = plan("one", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2"]);
    let two = plan("two", Protocol::Tcp, "10.96.0.11", None, &["10.244.0.3"]);
    let mut d = desired(&[one.clone(), two.clone()]);
    dp.sync(&node(), &d, None).unwrap();
    fake.take_log();
    let scripts = fake.world().scripts.len();
    let report = dp.sync(&node(), &d, None).unwrap();
    assert_eq!((report.written, report.unchanged), (0, 2), "{report:?}");
    assert_eq!(fake.take_log(), Vec::<String>::new());
    assert_eq!(fake.world().scripts.len(), scripts, "no nft transaction either");

    one.cluster.backends.push(backend("10.244.0.4"));
    // (external left as it was: no external frontend)
    d = desired(&[one.clone(), two.clone()]);
    let key = (one.name.clone(), Family::V4);
    let report = dp.sync(&node(), &d, Some(&BTreeSet::from([key.clone()]))).unwrap();
    assert_eq!((report.written, report.unchanged), (1, 0), "{report:?}");
    assert_eq!(fake.take_log(), ["add-dest TCP 10.96.0.10:80 10.244.0.4 w1"]);

    one.scheduler = Scheduler::Wlc;
    d = desired(&[one.clone(), two.clone()]);
    dp.sync(&node(), &d, Some(&BTreeSet::from([key]))).unwrap();
    assert_eq!(fake.take_log(), ["edit-service TCP 10.96.0.10:80 wlc"]);
    let report = dp.sync(&node(), &d, None).unwrap();
    assert_eq!((report.written, report.unchanged), (0, 2), "{report:?}");
    assert_eq!(fake.take_log(), Vec::<String>::new());
}

/// A TCP destination that leaves its plan gets weight 0 and drains: it is deleted when its connections are
/// gone; coming back before that restores its weight. A UDP one is deleted at once.
#[test]
fn leaving_destinations_drain() {
    let fake = Fake::new();
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    let web = plan("web", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2", "10.244.0.3"]);
    let dns = plan("dns", Protocol::Udp, "10.96.0.53", None, &["10.244.0.2", "10.244.0.3"]);
    dp.sync(&node(), &desired(&[web.clone(), dns.clone()]), None).unwrap();
    let id = tcp("10.96.0.10", 80);
    fake.set_conns(&id, ip("10.244.0.3"), 2);
    fake.take_log();

    let mut web2 = web.clone();
    web2.cluster.backends.truncate(1);
    web2.external.backends.truncate(1);
    let mut dns2 = dns.clone();
    dns2.cluster.backends.truncate(1);
    dns2.external.backends.truncate(1);
    dp.sync(&node(), &desired(&[web2.clone(), dns2.clone()]), None).unwrap();
    assert_eq!(
        fake.take_log(),
        ["delete-dest UDP 10.96.0.53:80 10.244.0.3", "edit-dest TCP 10.96.0.10:80 10.244.0.3 w0"]
    );
    assert_eq!(dp.draining(), [(id, ip("10.244.0.3"), 8080)]);
    assert_eq!(dp.drain().unwrap(), 1, "still has connections");
    assert_eq!(fake.weights(&id)[&ip("10.244.0.3")], 0);

    // It comes back: weight restored, no longer draining.
    dp.sync(&node(), &desired(&[web.clone(), dns2.clone()]), None).unwrap();
    assert_eq!(fake.take_log(), ["edit-dest TCP 10.96.0.10:80 10.244.0.3 w1"]);
    assert!(dp.draining().is_empty());

    // It leaves again, and its connections end.
    dp.sync(&node(), &desired(&[web2.clone(), dns2.clone()]), None).unwrap();
    fake.set_conns(&id, ip("10.244.0.3"), 0);
    assert_eq!(dp.drain().unwrap(), 0);
    assert!(fake.take_log().contains(&"delete-dest TCP 10.96.0.10:80 10.244.0.3".to_string()));
    assert_eq!(fake.weights(&id).len(), 1);
}

/// The grace period ends a drain whatever the connections.
#[test]
fn grace_period_deletes_a_busy_draining_destination() {
    let fake = Fake::new();
    let s = Settings { grace_period: Duration::ZERO, drain_interval: Duration::from_secs(3600), ..Settings::default() };
    let mut dp = IpvsDataplane::with_kernel(s, Box::new(fake.clone()));
    dp.restore().unwrap();
    let web = plan("web", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2", "10.244.0.3"]);
    dp.sync(&node(), &desired(std::slice::from_ref(&web)), None).unwrap();
    let id = tcp("10.96.0.10", 80);
    fake.set_conns(&id, ip("10.244.0.3"), 5);
    let mut web2 = web;
    web2.cluster.backends.truncate(1);
    // The sync itself checks the draining destinations after applying.
    dp.sync(&node(), &desired(&[web2]), None).unwrap();
    assert_eq!(fake.weights(&id).keys().copied().collect::<Vec<_>>(), [ip("10.244.0.2")]);
}

/// Restore finds weight-0 destinations of Switchyard's virtual services and drains them (no leftovers
/// after a restart, kube-proxy #92019/#108319); a full sync prunes Switchyard's virtual services no plan has
/// and never touches another's.
#[test]
fn restore_drains_leftovers_and_prunes_only_ours() {
    let fake = Fake::new();
    {
        let mut w = fake.world();
        let mine = |vip: &str| {
            let mut s = Service::new(tcp(vip, 80), "rr");
            s.flags = OWNER_FLAG | ServiceFlags::HASHED;
            s
        };
        let d = |addr: &str, weight| ((ip(addr), 8080), Destination::new(ip(addr), 8080).weight(weight));
        w.services.insert(
            tcp("10.96.0.10", 80),
            (mine("10.96.0.10"), BTreeMap::from([d("10.244.0.2", 1), d("10.244.0.9", 0)])),
        );
        w.services.insert(tcp("10.96.0.99", 80), (mine("10.96.0.99"), BTreeMap::new()));
        w.services.insert(tcp("10.200.0.1", 80), (Service::new(tcp("10.200.0.1", 80), "rr"), BTreeMap::new()));
    }
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    assert_eq!(dp.draining(), [(tcp("10.96.0.10", 80), ip("10.244.0.9"), 8080)]);
    let web = plan("web", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2"]);
    dp.sync(&node(), &desired(&[web]), None).unwrap();
    let log = fake.take_log();
    assert!(log.contains(&"delete-service TCP 10.96.0.99:80".to_string()), "{log:?}");
    assert!(log.contains(&"delete-dest TCP 10.96.0.10:80 10.244.0.9".to_string()), "drained at once: {log:?}");
    assert!(!log.iter().any(|l| l.contains("10.200.0.1")), "another's service is left alone: {log:?}");
    assert!(!log.iter().any(|l| l.starts_with("add-service") || l.starts_with("add-dest")), "adopted: {log:?}");
    assert!(dp.draining().is_empty());
}

/// A Service port whose IPVS change the kernel refuses is reported failed; the others are programmed.
#[test]
fn one_refused_service_does_not_block_the_rest() {
    let fake = Fake::new();
    fake.world().fail = Some(("add-service TCP 10.96.0.11".into(), libc::ENOENT));
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    let d = desired(&[
        plan("one", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2"]),
        plan("two", Protocol::Tcp, "10.96.0.11", None, &["10.244.0.3"]),
    ]);
    let report = dp.sync(&node(), &d, None).unwrap();
    assert_eq!(report.written, 1, "{report:?}");
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0 .0.name, "two");
    assert!(fake.world().services.contains_key(&tcp("10.96.0.10", 80)));
    fake.world().fail = None;
    let report = dp.sync(&node(), &d, None).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(fake.world().services.contains_key(&tcp("10.96.0.11", 80)));
}

/// When nft rejects a batch, each Service port is applied alone; the rejected one is reported.
#[test]
fn rejected_nft_batch_is_retried_per_service_port() {
    let fake = Fake::new();
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    fake.world().nft_reject = Some("service-default/two/".into());
    let d = desired(&[
        plan("one", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2"]),
        plan("two", Protocol::Tcp, "10.96.0.11", None, &["10.244.0.3"]),
    ]);
    let report = dp.sync(&node(), &d, None).unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0 .0.name, "two");
    let scripts = fake.world().scripts.clone();
    assert!(scripts.iter().any(|s| s.contains("service-default/one/")), "one was applied alone");
}

/// Two Services claiming one address and port: the first keeps it, the second is reported by a log line
/// and gets it once the first lets go.
#[test]
fn a_frontend_belongs_to_one_service_port() {
    let fake = Fake::new();
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    let a = plan("a", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2"]);
    let b = plan("b", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.3"]);
    dp.sync(&node(), &desired(&[a.clone(), b.clone()]), None).unwrap();
    assert_eq!(fake.weights(&tcp("10.96.0.10", 80)).keys().copied().collect::<Vec<_>>(), [ip("10.244.0.2")]);
    dp.sync(&node(), &desired(&[b]), Some(&BTreeSet::from([(a.name.clone(), Family::V4)]))).unwrap();
    assert_eq!(fake.weights(&tcp("10.96.0.10", 80)).keys().copied().collect::<Vec<_>>(), [ip("10.244.0.3")]);
}

/// Cleanup removes Switchyard's virtual services, the dummy interface and both tables, and nothing else.
#[test]
fn cleanup_removes_only_ours() {
    let fake = Fake::new();
    fake.world().services.insert(tcp("10.200.0.1", 80), (Service::new(tcp("10.200.0.1", 80), "rr"), BTreeMap::new()));
    let mut dp = dataplane(&fake);
    dp.restore().unwrap();
    dp.sync(&node(), &desired(&[plan("web", Protocol::Tcp, "10.96.0.10", None, &["10.244.0.2"])]), None).unwrap();
    dp.cleanup().unwrap();
    let w = fake.world();
    assert_eq!(w.services.keys().copied().collect::<Vec<_>>(), [tcp("10.200.0.1", 80)]);
    assert!(!w.links.contains_key(translate::DUMMY_INTERFACE));
    assert!(w.scripts.last().unwrap().contains("delete table ip6 switchyard-ipvs"));
}

/// Translation of an `externalTrafficPolicy: Local` LoadBalancer with source ranges, ClientIP affinity and
/// sh flags: the LB IP goes through its firewall chain, external frontends hold the local backends, a
/// firewall-mark service holds the cluster route for pods and the node, and the settings reach IPVS.
#[test]
fn translation_of_local_policy_source_ranges_affinity_and_flags() {
    let mut p = plan("lb", Protocol::Tcp, "10.96.0.10", Some(30080), &["10.244.0.2", "10.244.1.2"]);
    p.frontends.push(Frontend { kind: FrontendKind::LoadBalancer, ip: ip("203.0.113.1"), port: 80 });
    p.external.backends.truncate(1);
    p.external_local = true;
    p.source_ranges = Some(vec!["192.0.2.0/24".parse().unwrap()]);
    p.affinity_timeout = Some(600);
    p.scheduler = Scheduler::Sh;
    p.scheduler_flags = SchedulerFlags { fallback: true, port: true };
    let settings = switchyard_nftables::translate::Settings {
        masquerade_all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
    };
    let o = translate::service(&p, &settings, &[ip("192.168.50.1")], &mut || 0x5359_0001);
    let ids: Vec<String> = o.ipvs.keys().map(|id| id.to_string()).collect();
    assert_eq!(ids, ["TCP 10.96.0.10:80", "TCP 192.168.50.1:30080", "TCP 203.0.113.1:80", "FWM 1398341633"]);
    let lb = &o.ipvs[&tcp("203.0.113.1", 80)];
    assert_eq!(lb.destinations.keys().map(|d| d.0).collect::<Vec<_>>(), [ip("10.244.0.2")], "local only");
    let fwm = &o.ipvs[&ServiceId::fwmark(switchyard_ipvs_netlink::Family::Ipv4, 0x5359_0001)];
    assert_eq!(fwm.destinations.len(), 2, "the short-circuit holds every endpoint");
    assert_eq!(lb.flags, OWNER_FLAG | ServiceFlags::PERSISTENT | ServiceFlags::SH_FALLBACK | ServiceFlags::SH_PORT);
    assert_eq!((lb.scheduler.as_str(), lb.timeout), ("sh", 600));
    assert_eq!(o.elements[&tcp("203.0.113.1", 80)], "comment \"LoadBalancer\" : goto firewall-default/lb/tcp/http");
    assert_eq!(
        o.chains["firewall-default/lb/tcp/http"],
        ["ip saddr != { 192.0.2.0/24 } drop", "goto external-default/lb/tcp/http"]
    );
    assert_eq!(
        o.chains["external-default/lb/tcp/http"],
        [
            "ip saddr @cluster-cidrs meta mark set 0x53590001 accept",
            "fib saddr type local ct mark set ct mark or 0x4000 meta mark set 0x53590001 accept",
        ]
    );
    let svc = &o.chains["service-default/lb/tcp/http"];
    assert!(svc[0].starts_with("counter comment \"sy fp=") && svc[0].ends_with(" mark=0x53590001\""), "{svc:?}");
    assert_eq!(svc[1], "ip saddr != @cluster-cidrs ct mark set ct mark or 0x4000");
    assert_eq!(o.addresses, BTreeSet::from([ip("10.96.0.10"), ip("203.0.113.1")]), "NodePort addresses are the node's");
    assert_eq!(translate::parse_note(svc[0].split('"').nth(1).unwrap()), Some((o.fingerprint, Some(0x5359_0001))));
}

/// `random` is served by `rr`; an empty route rejects or drops in its chain; without external frontends
/// there is no external chain.
#[test]
fn translation_of_random_and_empty_routes() {
    let mut p = plan("empty", Protocol::Udp, "10.96.0.53", None, &[]);
    p.scheduler = Scheduler::Random;
    let o = translate::service(&p, &Default::default(), &[], &mut || unreachable!("no mark"));
    assert_eq!(o.ipvs[&ServiceId::udp(ip("10.96.0.53"), 80)].scheduler, "rr");
    assert_eq!(o.chains.keys().collect::<Vec<_>>(), ["service-default/empty/udp/http"]);
    assert_eq!(o.chains["service-default/empty/udp/http"][1], "reject");
    p.cluster.when_empty = WhenEmpty::Drop;
    let o = translate::service(&p, &Default::default(), &[], &mut || unreachable!("no mark"));
    assert_eq!(o.chains["service-default/empty/udp/http"][1], "drop");
    assert_eq!(translate::parse_element_key("fd00::1 . sctp . 9"), Some(ServiceId::sctp(ip("fd00::1"), 9)));
}

/// The companion table's shared sets come back from `nft -j list table`, including `hairpin`, whose name
/// nftables' listing also knows as one of its own shared maps (it files it under `elements`, not
/// `set_elements`; reading only the latter lost the set on restore and made every restart rewrite it).
#[test]
fn listing_reads_the_cluster_ips_and_hairpin_sets() {
    let json = r#"{"nftables": [
        {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "switchyard-ipvs", "handle": 1}},
        {"set": {"family": "ip", "name": "cluster-ips", "table": "switchyard-ipvs", "type": "ipv4_addr",
                 "handle": 2, "elem": ["10.96.0.10", "10.96.0.11"]}},
        {"set": {"family": "ip", "name": "hairpin", "table": "switchyard-ipvs", "type": ["ipv4_addr", "ipv4_addr"],
                 "handle": 3, "elem": [{"concat": ["10.244.0.10", "10.244.0.10"]},
                                       {"concat": ["10.244.0.11", "10.244.0.11"]}]}}
    ]}"#;
    let t = crate::listing::parse(json).unwrap();
    assert_eq!(t.cluster_ips, [ip("10.96.0.10"), ip("10.96.0.11")].into());
    assert_eq!(t.hairpin, [ip("10.244.0.10"), ip("10.244.0.11")].into());
}
