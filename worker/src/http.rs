//! The worker's one HTTP port: `/healthz` (the process is alive — answers while weights load),
//! `/readyz` (model loaded, Kafka partitions assigned, control topic caught up) and `/metrics` (Prometheus text).

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
    /// The control topic was read to the end it had at start: cancels are honoured.
    pub cancels_caught_up: AtomicBool,
    /// Set when the worker found itself sick (a stuck GPU call or encoder, or internal failures
    /// in a row): `/healthz` fails from then on, and the worker leaves.
    sick: std::sync::Mutex<Option<String>>,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.model_loaded.load(Ordering::Relaxed)
            && self.partitions_assigned.load(Ordering::Relaxed)
            && self.cancels_caught_up.load(Ordering::Relaxed)
            && self.sick_reason().is_none()
    }

    /// Marks the worker sick, for good; the first reason stays.
    pub fn mark_sick(&self, reason: &str) {
        let mut sick = self
            .sick
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sick.is_none() {
            tracing::error!(
                reason,
                "this worker is sick: leaving the group and exiting so it is replaced"
            );
            *sick = Some(reason.to_string());
        }
    }

    /// Why the worker is sick, if it is.
    pub fn sick_reason(&self) -> Option<String> {
        self.sick
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    match state.health.sick_reason() {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("sick: {reason}\n")),
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let h = &state.health;
    if h.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: model_loaded={} partitions_assigned={} cancels_caught_up={}\n",
                h.model_loaded.load(Ordering::Relaxed),
                h.partitions_assigned.load(Ordering::Relaxed),
                h.cancels_caught_up.load(Ordering::Relaxed)
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
