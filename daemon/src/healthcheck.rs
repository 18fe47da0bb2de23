//! Per-Service health-check servers for `externalTrafficPolicy: Local` LoadBalancer Services, as kube-proxy
//! runs them: an HTTP server on the Service's `healthCheckNodePort` that load balancers probe, answering 200
//! while this node has a local endpoint (and the proxy is healthy) and 503 otherwise, with
//! `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":bool}`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::health::Health;

/// What one health-check port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Endpoints of the Service on this node that external traffic may use.
    pub local_endpoints: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceRef<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

#[derive(Serialize)]
struct ServiceRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

type Shared = Arc<RwLock<HashMap<u16, Entry>>>;

/// The running servers, one per port.
#[derive(Debug)]
pub struct HealthChecks {
    health: Health,
    entries: Shared,
    servers: HashMap<u16, JoinHandle<()>>,
}

impl HealthChecks {
    /// No servers yet.
    pub fn new(health: Health) -> Self {
        HealthChecks { health, entries: Shared::default(), servers: HashMap::new() }
    }

    /// Serves exactly the ports of `desired` (starting and stopping servers as needed). A port that cannot
    /// be bound is logged and tried again at the next update.
    pub fn update(&mut self, desired: BTreeMap<u16, Entry>) {
        *self.entries.write().expect("health-check lock") = desired.iter().map(|(p, e)| (*p, e.clone())).collect();
        self.servers.retain(|port, task| {
            let keep = desired.contains_key(port);
            if !keep {
                info!(port, "health-check server stopped");
                task.abort();
            }
            keep
        });
        for (&port, entry) in &desired {
            if self.servers.contains_key(&port) {
                continue;
            }
            // `[::]` takes IPv4 too (Linux's default bindv6only=0), so load balancers of either family can
            // probe; without IPv6 in this namespace, IPv4 alone.
            let listener = match std::net::TcpListener::bind(("::", port))
                .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)))
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
            {
                Ok(l) => l,
                Err(e) => {
                    warn!(port, service = %format!("{}/{}", entry.namespace, entry.name), error = %e,
                        "cannot serve the health-check node port");
                    continue;
                }
            };
            info!(port, service = %format!("{}/{}", entry.namespace, entry.name), "health-check server started");
            let app = Router::new().fallback(answer).with_state((port, self.entries.clone(), self.health.clone()));
            self.servers.insert(
                port,
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        warn!(port, error = %e, "health-check server ended");
                    }
                }),
            );
        }
    }
}

async fn answer(State((port, entries, health)): State<(u16, Shared, Health)>) -> impl IntoResponse {
    let entries = entries.read().expect("health-check lock");
    let Some(e) = entries.get(&port) else {
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], "{}".to_string());
    };
    let healthy = health.report(true).healthy;
    let body = Body {
        service: ServiceRef { namespace: &e.namespace, name: &e.name },
        local_endpoints: e.local_endpoints,
        service_proxy_healthy: healthy,
    };
    let code = if e.local_endpoints > 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&body).unwrap_or_default())
}
