//! `t2v-gateway`: the HTTP front door of a t2v-fleet (see the library's docs). Configured only
//! through `T2V_GATEWAY_CONFIG` (a TOML file) and `T2V_GATEWAY__*` variables — no flags, so no
//! secret ever appears in the process list. Logs are JSON lines on stderr (`RUST_LOG` filters).

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().len() > 1 {
        anyhow::bail!("t2v-gateway takes no arguments — configure it with T2V_GATEWAY_CONFIG and T2V_GATEWAY__* variables");
    }
    let cfg = t2v_gateway::GatewayConfig::load().context("loading the configuration")?;
    t2v_gateway::run(cfg, shutdown_signal(), |_| {}).await
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
