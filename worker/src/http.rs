//! The worker's one HTTP port: `/healthz` (the process is alive — answers while weights load),
//! `/readyz` (model loaded and Kafka partitions assigned) and `/metrics` (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::config::HttpConfig;
use crate::metrics::Metrics;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    pub model_loaded: AtomicBool,
    pub partitions_assigned: AtomicBool,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.model_loaded.load(Ordering::Relaxed)
            && self.partitions_assigned.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let h = &state.health;
    if h.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: model_loaded={} partitions_assigned={}\n",
                h.model_loaded.load(Ordering::Relaxed),
                h.partitions_assigned.load(Ordering::Relaxed)
            ),
        )
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// Binds the port and serves in the background; returns the bound address.
pub async fn serve(
    cfg: &HttpConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind((cfg.address.as_str(), cfg.port)).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(self::metrics))
        .with_state(AppState { metrics, health });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok((addr, task))
}
