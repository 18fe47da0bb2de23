//! The HTTP endpoints: `/metrics` on the metrics address, `/healthz` and `/livez` on the health address.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use switchyard_model::dataplane::Dump;
use tracing::warn;

use crate::health::Health;
use crate::metrics::Metrics;

/// Reads the kernel's state for the per-backend metrics.
pub type DumpFn = Arc<dyn Fn() -> anyhow::Result<Dump> + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
    dump: DumpFn,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let dump = s.dump.clone();
    let dump = match tokio::task::spawn_blocking(move || dump()).await {
        Ok(Ok(d)) => Some(d),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read backend counters from the kernel");
            None
        }
        Err(e) => {
            warn!(error = %e, "backend counter reader failed");
            None
        }
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(dump.as_ref()))
}

fn health_response(s: &AppState, readiness: bool) -> impl IntoResponse {
    let report = s.health.report(readiness);
    let code = if report.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(report))
}

/// Serves both addresses (one listener when they are equal) until the process ends.
pub async fn serve(
    metrics_addr: SocketAddr,
    health_addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    dump: DumpFn,
) -> anyhow::Result<()> {
    let state = AppState { metrics, health, dump };
    let metrics_routes = Router::new().route("/metrics", get(self::metrics));
    let health_routes = Router::new()
        .route("/healthz", get(|State(s): State<AppState>| async move { health_response(&s, true) }))
        .route("/livez", get(|State(s): State<AppState>| async move { health_response(&s, false) }));
    let mut servers = Vec::new();
    if metrics_addr == health_addr {
        servers.push((metrics_addr, metrics_routes.merge(health_routes).with_state(state)));
    } else {
        servers.push((metrics_addr, metrics_routes.with_state(state.clone())));
        servers.push((health_addr, health_routes.with_state(state)));
    }
    let mut tasks = Vec::new();
    for (addr, app) in servers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        tasks.push(tokio::spawn(async move { axum::serve(listener, app).await }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
