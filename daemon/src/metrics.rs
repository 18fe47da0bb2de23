//! Prometheus metrics: kube-proxy's names for the concepts Switchyard shares with it, so existing
//! dashboards and alerts keep working, plus Switchyard's per-backend counters read from the kernel.

use std::fmt::Write as _;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Gauge, Opts, Registry, TextEncoder};
use switchyard_model::dataplane::{Dump, DumpBackend};

/// The daemon's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// `kubeproxy_sync_proxy_rules_duration_seconds`.
    pub sync_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`.
    pub last_sync: Gauge,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`.
    pub last_queued: Gauge,
    /// `kubeproxy_network_programming_duration_seconds`.
    pub programming_duration: Histogram,
    /// `kubeproxy_sync_proxy_rules_service_changes_total`.
    pub service_changes: IntCounter,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total`.
    pub endpoint_changes: IntCounter,
    /// `switchyard_object_problems_total{kind,reason}`.
    pub problems: IntCounterVec,
    /// `switchyard_sync_failures_total{dataplane}`.
    pub sync_failures: IntCounterVec,
    /// `switchyard_conntrack_deleted_total`.
    pub conntrack_deleted: IntCounter,
    /// `switchyard_conntrack_errors_total`.
    pub conntrack_errors: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let exp = prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets");
        let mut programming = vec![0.25, 0.5];
        programming.extend((1..60).map(f64::from));
        programming.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
        programming.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
        let m = Metrics {
            sync_duration: Histogram::with_opts(
                HistogramOpts::new("kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds")
                    .buckets(exp),
            )
            .expect("valid metric"),
            last_sync: Gauge::new(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
            )
            .expect("valid metric"),
            last_queued: Gauge::new(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
            )
            .expect("valid metric"),
            programming_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "kubeproxy_network_programming_duration_seconds",
                    "In Cluster Network Programming Latency in seconds",
                )
                .buckets(programming),
            )
            .expect("valid metric"),
            service_changes: IntCounter::new(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )
            .expect("valid metric"),
            endpoint_changes: IntCounter::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )
            .expect("valid metric"),
            problems: IntCounterVec::new(
                Opts::new("switchyard_object_problems_total", "Problems found in API objects, by kind and reason"),
                &["kind", "reason"],
            )
            .expect("valid metric"),
            sync_failures: IntCounterVec::new(
                Opts::new("switchyard_sync_failures_total", "Service ports the kernel refused to program"),
                &["dataplane"],
            )
            .expect("valid metric"),
            conntrack_deleted: IntCounter::new(
                "switchyard_conntrack_deleted_total",
                "Stale UDP conntrack entries deleted after Service changes",
            )
            .expect("valid metric"),
            conntrack_errors: IntCounter::new(
                "switchyard_conntrack_errors_total",
                "Failed attempts to delete stale UDP conntrack entries",
            )
            .expect("valid metric"),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.sync_duration.clone())).expect("unique metric");
        r.register(Box::new(m.last_sync.clone())).expect("unique metric");
        r.register(Box::new(m.last_queued.clone())).expect("unique metric");
        r.register(Box::new(m.programming_duration.clone())).expect("unique metric");
        r.register(Box::new(m.service_changes.clone())).expect("unique metric");
        r.register(Box::new(m.endpoint_changes.clone())).expect("unique metric");
        r.register(Box::new(m.problems.clone())).expect("unique metric");
        r.register(Box::new(m.sync_failures.clone())).expect("unique metric");
        r.register(Box::new(m.conntrack_deleted.clone())).expect("unique metric");
        r.register(Box::new(m.conntrack_errors.clone())).expect("unique metric");
        m
    }

    /// The exposition text: the registry, then per-backend counters from `dump` (read from the kernel).
    pub fn render(&self, dump: Option<&Dump>) -> String {
        let mut out = TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default();
        if let Some(dump) = dump {
            out.push_str(&backend_metrics(dump));
        }
        out
    }
}

/// `switchyard_backend_{packets,bytes,connections}_total` for every backend in the dump.
pub fn backend_metrics(dump: &Dump) -> String {
    let mut out = String::new();
    type Field = fn(&DumpBackend) -> u64;
    let families: [(&str, &str, Field); 3] = [
        ("switchyard_backend_packets_total", "Packets to and from a backend through a Service port", |b| b.packets),
        ("switchyard_backend_bytes_total", "Bytes to and from a backend through a Service port", |b| b.bytes),
        ("switchyard_backend_connections_total", "Connections sent to a backend through a Service port", |b| {
            b.connections
        }),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in &dump.services {
            for b in &s.backends {
                let backend = std::net::SocketAddr::new(b.ip, b.port).to_string();
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"{}\",service=\"{}\",port=\"{}\",protocol=\"{}\",backend=\"{}\"}} {}",
                    escape(&s.namespace),
                    escape(&s.name),
                    escape(&s.port),
                    s.protocol.as_str().to_uppercase(),
                    escape(&backend),
                    value(b)
                );
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
