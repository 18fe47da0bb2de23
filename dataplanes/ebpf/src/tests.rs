use super::*;

fn service(frontends: Vec<DumpFrontend>, backends: Vec<DumpBackend>, scheduler: Scheduler) -> DumpService {
    DumpService {
        namespace: "ns".into(),
        name: "web".into(),
        port: "http".into(),
        protocol: Protocol::Tcp,
        frontends,
        scheduler,
        affinity_timeout_seconds: None,
        backends,
    }
}

fn fe(kind: FrontendKind, ip: &str, port: u16) -> DumpFrontend {
    DumpFrontend { kind, ip: ip.parse().unwrap(), port }
}

fn be(ip: &str, connections: u64) -> DumpBackend {
    DumpBackend {
        ip: ip.parse().unwrap(),
        port: 8080,
        packets: connections * 10,
        bytes: connections * 100,
        connections,
    }
}

/// The dump merges the socket hooks' entry into nftables' entry of the same Service port and family:
/// frontends of both, counters added up, the scheduler the hooks apply; other families stay apart.
#[test]
fn dump_merges_by_service_port_and_family() {
    let nft = Dump {
        services: vec![
            service(
                vec![fe(FrontendKind::ClusterIp, "10.96.0.1", 80), fe(FrontendKind::NodePort, "0.0.0.0", 30080)],
                vec![be("10.0.0.1", 1)],
                Scheduler::Random,
            ),
            service(vec![fe(FrontendKind::ClusterIp, "fd00::1", 80)], vec![be("fd00::a", 0)], Scheduler::Random),
        ],
    };
    let ebpf = vec![(
        Family::V4,
        service(
            vec![fe(FrontendKind::ClusterIp, "10.96.0.1", 80), fe(FrontendKind::NodePort, "127.0.0.1", 30080)],
            vec![be("10.0.0.1", 2), be("10.0.0.2", 3)],
            Scheduler::Lc,
        ),
    )];
    let d = merge(nft, ebpf);
    assert_eq!(d.services.len(), 2);
    let v4 = &d.services.iter().find(|s| s.frontends.iter().any(|f| f.ip.is_ipv4())).unwrap();
    assert_eq!(v4.scheduler, Scheduler::Lc);
    assert_eq!(v4.frontends.len(), 3);
    assert_eq!(v4.backends, vec![be("10.0.0.1", 3), be("10.0.0.2", 3)]);
    let v6 = &d.services.iter().find(|s| s.frontends.iter().any(|f| f.ip.is_ipv6())).unwrap();
    assert_eq!(v6.scheduler, Scheduler::Random);
}

/// Names survive the fixed-size meta fields; a plan key is recovered from them.
#[test]
fn meta_names_round_trip() {
    let key: PlanKey = (
        ServicePortName {
            namespace: "kube-system".into(),
            name: "kube-dns".into(),
            port: "dns-tcp".into(),
            protocol: Protocol::Udp,
        },
        Family::V6,
    );
    let t = Translation {
        scheduler: 0,
        affinity_timeout: 0,
        proto: PROTO_UDP,
        family: switchyard_ebpf_common::FAMILY_V6,
        frontends: BTreeMap::new(),
        routes: BTreeMap::new(),
        backends: vec![],
        fingerprint: 7,
    };
    let meta = meta_of(&key, &t, 7);
    assert_eq!(plan_key_of(&meta), Some(key));
}

/// The eBPF dataplane honours every scheduler but Maglev.
#[test]
fn supported_schedulers() {
    let dp = EbpfDataplane::new(
        EbpfSettings::new(Default::default()),
        Box::new(switchyard_nftables::kernel::NftCommand::default()),
    );
    let supported: Vec<Scheduler> = Scheduler::ALL.into_iter().filter(|s| dp.supports(*s)).collect();
    assert_eq!(supported.len(), 9);
    assert!(!dp.supports(Scheduler::Mh));
}

/// The daemon keeps dataplanes as `Box<dyn Dataplane>` (Send) and shares a reader across threads.
#[test]
fn dataplane_is_send() {
    fn boxed(d: EbpfDataplane) -> Box<dyn Dataplane> {
        Box::new(d)
    }
    let _ = boxed;
}
