use super::*;

/// /healthz needs a first sync; /livez does not; both fail once a queued change is older than the timeout.
#[test]
fn kube_proxy_semantics() {
    let h = Health::new(Duration::from_millis(50));
    assert!(!h.report(true).healthy, "healthz: no sync yet");
    assert!(h.report(false).healthy, "livez: start-up is a fresh queued change");
    h.updated();
    assert!(h.report(true).healthy && h.report(false).healthy);
    assert!(!h.report(true).last_updated.is_empty());
    h.queued();
    assert!(h.report(true).healthy, "a fresh queued change is fine");
    std::thread::sleep(Duration::from_millis(80));
    assert!(!h.report(true).healthy && !h.report(false).healthy, "a stale queued change is not");
    h.updated();
    assert!(h.report(true).healthy);
}

/// A Node being deleted or drained by the autoscaler fails /healthz but not /livez.
#[test]
fn node_eligibility() {
    let h = Health::new(Duration::from_secs(60));
    h.updated();
    h.set_node_eligible(false);
    let r = h.report(true);
    assert!(!r.healthy && !r.node_eligible);
    assert!(h.report(false).healthy);
    h.set_node_eligible(true);
    assert!(h.report(true).healthy);
}
