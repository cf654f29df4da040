//! The HTTP surface: the router, shared state, the caller extractor (bearer JWT → tenant, then
//! one token of the tenant's rate limit), errors as JSON, and the access log + metrics layer.
//!
//! # Layout
//! - [`videos`]: the `/v1/videos` handlers and `/v1/usage`.
//! - [`resource`]: the job resource a client sees, built from a job row.
//! - [`image`]: the conditioning image's JSON form, checked with the contract's bounds, and
//!   named by digest instead of bytes in what the gateway stores and shows.

pub mod image;
pub mod resource;
pub mod videos;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRef, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::auth::{AuthError, Caller, Verifier};
use crate::config::GatewayConfig;
use crate::limits::{self, RateState};
use crate::links::Links;
use crate::metrics::{Metrics, RouteLabels};

/// Everything a handler needs; cheap to clone. Nothing in it is state that matters across
/// replicas: jobs, offsets, buckets and usage live in PostgreSQL.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<GatewayConfig>,
    pub pool: PgPool,
    pub verifier: Arc<Verifier>,
    pub submitter: Arc<t2v_producer::Submitter>,
    pub links: Arc<Links>,
    pub metrics: Arc<Metrics>,
    /// Set once the events reader is assigned and the brokers answered.
    pub ready: Arc<AtomicBool>,
    /// The console's sign-in through `auth.issuer`, when `console.oidc` is configured.
    pub oidc: Option<Arc<crate::console::oidc::Provider>>,
}

/// The OpenAPI 3.1 description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the gateway.
pub fn router(state: AppState) -> Router {
    let max_body = state.cfg.http.max_body_bytes;
    Router::new()
        .route("/v1/videos", get(videos::list).post(videos::create))
        .route(
            "/v1/videos/{id}",
            get(videos::get_one).delete(videos::cancel),
        )
        .route("/v1/videos/{id}/events", get(videos::events))
        .route("/v1/videos/{id}/files/{name}", get(videos::file))
        .route("/v1/usage", get(videos::usage))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::console::routes())
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access_log,
        ))
        .with_state(state)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let db = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    if db && state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready").into_response()
    } else {
        let why = if db {
            "events reader not assigned yet"
        } else {
            "database unreachable"
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .set_placement_fallbacks(state.submitter.placement_fallbacks());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Tenant and job id of a request, left in the response's extensions by handlers for the
/// access log.
#[derive(Debug, Clone, Default)]
pub struct LogFields {
    pub tenant: Option<String>,
    pub job_id: Option<String>,
}

/// One JSON access-log line and the route metrics per request.
async fn access_log(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let labels = RouteLabels {
        method: method.clone(),
        route: route.clone(),
        status,
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .latency
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    let fields = response
        .extensions()
        .get::<LogFields>()
        .cloned()
        .unwrap_or_default();
    if route != "/metrics" && route != "/healthz" && route != "/readyz" {
        tracing::info!(
            target: "access",
            method,
            route,
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            tenant = fields.tenant.as_deref().unwrap_or(""),
            job_id = fields.job_id.as_deref().unwrap_or(""),
        );
    }
    response
}

/// An error answer: a status, a machine-readable code and one line naming the cause and the fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The request field at fault (its proto name), for 400s.
    pub field: Option<&'static str>,
    pub headers: Vec<(&'static str, HeaderValue)>,
    /// The caller's tenant, for the access log.
    pub tenant: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            headers: Vec::new(),
            tenant: None,
        }
    }

    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no video {id} for this caller — check the id (jobs are visible to their own tenant only)"),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn for_caller(mut self, caller: &Caller) -> Self {
        self.tenant = Some(caller.tenant.clone());
        self
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the job database did not answer — retry shortly",
        )
        .with_header("retry-after", 1)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = json!(field);
        }
        let body = Json(json!({ "error": error }));
        let mut response = (self.status, body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response.extensions_mut().insert(LogFields {
            tenant: self.tenant,
            job_id: None,
        });
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match e {
            AuthError::KeySetUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable")
            }
            _ => (StatusCode::UNAUTHORIZED, "unauthorized"),
        };
        // Header values are visible ASCII: the description drops the message's dashes and quotes.
        let description: String = e
            .to_string()
            .replace('—', "-")
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .map(|c| if c == '"' { '\'' } else { c })
            .collect();
        let challenge =
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
        Self::new(status, code, e.to_string()).with_header("www-authenticate", challenge)
    }
}

/// An authenticated caller who has spent one token of its rate limit. Extracting it is the
/// first thing every `/v1` handler does.
#[derive(Debug, Clone)]
pub struct Authorized {
    pub caller: Caller,
    pub plan: crate::config::Plan,
    pub rate: RateState,
}

impl<S> FromRequestParts<S> for Authorized
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let token = crate::auth::bearer(header)?;
        let caller = state.verifier.verify(token).await?;
        let plan = state
            .cfg
            .limits
            .plan_for(&caller.tenant, caller.plan.as_deref());
        match limits::take_token(&state.pool, &caller.tenant, &plan).await? {
            Ok(rate) => Ok(Self { caller, plan, rate }),
            Err(limited) => {
                state.metrics.reject("rate");
                Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "rate limit of {} requests/s (burst {}) reached — retry after {} s",
                        plan.requests_per_sec, plan.burst, limited.retry_after_secs
                    ),
                )
                .with_header("retry-after", limited.retry_after_secs)
                .with_header("ratelimit-limit", limited.limit)
                .with_header("ratelimit-remaining", 0)
                .with_header("ratelimit-reset", limited.retry_after_secs)
                .for_caller(&caller))
            }
        }
    }
}

impl Authorized {
    /// The `RateLimit-*` headers of a request that was let through.
    pub fn rate_headers(&self) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", self.rate.limit.to_string()),
            ("ratelimit-remaining", self.rate.remaining.to_string()),
            ("ratelimit-reset", self.rate.reset_secs.to_string()),
        ]
    }

    pub fn log(&self, job_id: Option<&str>) -> LogFields {
        LogFields {
            tenant: Some(self.caller.tenant.clone()),
            job_id: job_id.map(str::to_string),
        }
    }
}
