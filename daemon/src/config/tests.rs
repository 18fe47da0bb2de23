use super::*;

fn flags(args: &[&str]) -> RunFlags {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunFlags,
    }
    let mut all = vec!["switchyard"];
    all.extend_from_slice(args);
    <Cli as clap::Parser>::parse_from(all).run
}

/// Defaults match kube-proxy's where the concept is shared.
#[test]
fn defaults() {
    let c = Config::load(&flags(&["--node-name", "n1"])).unwrap();
    assert_eq!(c.node_name, "n1");
    assert_eq!(c.source, SourceConfig::Kube(None));
    assert_eq!(c.metrics_bind_address.to_string(), "127.0.0.1:10249");
    assert_eq!(c.healthz_bind_address.to_string(), "0.0.0.0:10256");
    assert_eq!(c.min_sync_period, Duration::from_secs(1));
    assert_eq!(c.sync_period, Duration::from_secs(30));
    assert_eq!(c.scheduler, Scheduler::Random);
}

/// The config file sets everything; a flag overrides the file.
#[test]
fn file_then_flags() {
    let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(
        &path,
        "nodeName: from-file\nmanifests: /m\nscheduler: rr\nclusterCIDR: 10.244.0.0/16, fd00::/48\n\
         masqueradeAll: true\nminSyncPeriod: 250ms\nsyncPeriod: 1m\nmetricsBindAddress: 0.0.0.0:9999\n",
    )
    .unwrap();
    let c = Config::load(&flags(&["--config", path.to_str().unwrap(), "--scheduler", "sh"])).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(c.node_name, "from-file");
    assert_eq!(c.source, SourceConfig::Manifests("/m".into()));
    assert_eq!(c.scheduler, Scheduler::Sh);
    assert_eq!(c.cluster_cidrs.len(), 2);
    assert!(c.masquerade_all);
    assert_eq!(c.min_sync_period, Duration::from_millis(250));
    assert_eq!(c.sync_period, Duration::from_secs(60));
    assert_eq!(c.metrics_bind_address.to_string(), "0.0.0.0:9999");
}

/// Unknown keys and unknown dataplanes are refused, not ignored.
#[test]
fn refuses_unknown() {
    let dir = std::env::temp_dir().join(format!("sy-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.yaml");
    std::fs::write(&path, "nodeName: x\nbogus: 1\n").unwrap();
    let err = Config::load(&flags(&["--config", path.to_str().unwrap()])).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(format!("{err:#}").contains("bogus"), "{err:#}");
    assert!(Config::load(&flags(&["--node-name", "n", "--dataplane", "xdp"])).is_err());
}
