//! `t2v-gateway`: the HTTP front door of a t2v-fleet. App teams submit and follow videos over
//! HTTPS with a bearer JWT instead of speaking Kafka; the gateway checks who they are, holds each
//! tenant to its rate limit and daily quota, publishes requests with `t2v-producer`'s
//! `Submitter`, and answers "where is my video?" from PostgreSQL, which it keeps in step with
//! `t2v.events.v1`.
//!
//! Replicas share nothing but the database and Kafka: job rows, the events reader's offsets,
//! rate buckets and daily usage are all rows, so any replica answers any request and a restart
//! loses nothing.
//!
//! # Layout
//! - [`config`]: settings from `T2V_GATEWAY_CONFIG` (TOML) and `T2V_GATEWAY__*`; secrets redacted.
//! - [`auth`]: bearer JWT verification (JWKS or PEM keys; HS256 only for development) → [`auth::Caller`].
//! - [`api`]: the router, the `/v1` handlers, errors, access log and metrics layer.
//! - [`db`]: job rows and migrations; [`limits`]: token buckets and daily quotas.
//! - [`events`]: the events reader — exactly-once application with offsets in the same transaction.
//! - [`links`]: signed download links (S3/GCS/Azure) or gateway-streamed `file://` artifacts.
//! - [`metrics`]: Prometheus metrics.
//! - [`webhooks`]: where callbacks may go, their signature, and the delivery worker.
//! - [`console`]: the web console at `/` (embedded HTML/CSS/JS) and its OIDC sign-in.
//!
//! docs/design.md ("The gateway") describes the API and the reasoning.

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod db;
pub mod events;
pub mod limits;
pub mod links;
pub mod metrics;
pub mod webhooks;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;

/// Runs the gateway until `shutdown` resolves: migrates the database, starts the events reader
/// and serves HTTP; in-flight requests finish before it returns. `on_bound` gets the bound
/// address (useful with port 0).
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let pool = db::connect(cfg.database.url.expose(), cfg.database.max_connections).await?;
    let verifier = auth::Verifier::new(&cfg.auth)?;
    verifier.warm_up().await;
    let submitter = Arc::new(t2v_producer::Submitter::new(cfg.submitter_config()?)?);
    let state = api::AppState {
        cfg: cfg.clone(),
        pool: pool.clone(),
        verifier,
        submitter: submitter.clone(),
        links: Arc::new(links::Links::new(cfg.link_ttl())),
        metrics: Arc::new(metrics::Metrics::new()),
        ready: Arc::new(AtomicBool::new(false)),
        oidc: if cfg.console.oidc.is_enabled() {
            let provider = console::oidc::Provider::new(&cfg.console.oidc, &cfg.auth.issuer)?;
            Some(Arc::new(provider))
        } else {
            None
        },
    };
    let stop = CancellationToken::new();
    let reader = tokio::spawn(start_reader(state.clone(), submitter, stop.clone()));
    let deliveries = Arc::new(webhooks::delivery::DeliveryWorker::new(
        pool.clone(),
        &cfg.webhooks,
        state.links.clone(),
        state.metrics.clone(),
    )?);
    let deliveries = tokio::spawn(deliveries.run(stop.clone()));

    let address = format!("{}:{}", cfg.http.address, cfg.http.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| {
            format!("binding {address} — choose another http.port or stop what uses it")
        })?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "gateway listening");
    on_bound(bound);
    let graceful = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(graceful)
        .await?;
    stop.cancel();
    reader.await.context("events reader")??;
    deliveries.await.context("webhook deliveries")?;
    pool.close().await;
    Ok(())
}

/// Checks the brokers, assigns the events reader and applies events until `stop`; the gateway
/// is ready once the reader is assigned.
async fn start_reader(
    state: api::AppState,
    submitter: Arc<t2v_producer::Submitter>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let attempt = async {
            submitter.check_brokers().await?;
            let reader =
                events::EventsReader::start(state.pool.clone(), submitter.config()).await?;
            anyhow::Ok(reader)
        };
        let result = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            result = attempt => result,
        };
        match result {
            Ok(reader) => {
                state.ready.store(true, Ordering::Relaxed);
                let refresh =
                    std::time::Duration::from_secs(state.cfg.kafka.partition_refresh_secs.max(1));
                reader.run(stop, refresh).await;
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "events reader not started; retrying in 2 s");
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                }
            }
        }
    }
}
