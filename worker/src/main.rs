//! The `t2v-worker` binary: `run` (the consumer loop), `doctor` (deployment checks) and
//! `generate` (one video from the command line, no Kafka).
//! Flags override the config file and the `T2V_…` environment.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use t2v_worker::config::{LogFormat, WorkerConfig};
use t2v_worker::trace::Telemetry;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "t2v-worker",
    version,
    about = "Kafka-driven text-to-video worker of the t2v fleet"
)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

/// Flags that override worker.toml and the environment.
#[derive(Args)]
struct Overrides {
    /// worker.toml to load (defaults < file < T2V_* env < flags).
    #[arg(long, global = true, env = "T2V_CONFIG")]
    config: Option<PathBuf>,
    /// kafka.brokers
    #[arg(long, global = true)]
    brokers: Option<String>,
    /// kafka.group_id
    #[arg(long, global = true)]
    group_id: Option<String>,
    /// kafka.requests_topics: comma-separated, highest priority lane first
    #[arg(long, global = true)]
    requests_topics: Option<String>,
    /// kafka.events_topic
    #[arg(long, global = true)]
    events_topic: Option<String>,
    /// kafka.control_topic
    #[arg(long, global = true)]
    control_topic: Option<String>,
    /// kafka.dlq_topic
    #[arg(long, global = true)]
    dlq_topic: Option<String>,
    /// storage.url
    #[arg(long, global = true)]
    storage_url: Option<String>,
    /// model.dir
    #[arg(long, global = true)]
    model_dir: Option<String>,
    /// http.port
    #[arg(long, global = true)]
    http_port: Option<u16>,
}

#[derive(Subcommand)]
enum Command {
    /// Join the consumer group and process jobs until SIGTERM/SIGINT.
    Run,
    /// Check the deployment (Kafka, topics, object store incl. create-only writes, OTLP collector,
    /// /dev/shm, model dir, GPU, driver vs libtorch CUDA, memory); one line per finding with its
    /// fix, non-zero exit on any FAIL.
    Doctor,
    /// Print the JSON Schema of worker.toml.
    Schema,
    /// Generate one video from the command line (no Kafka, no worker.toml): progress, a summary
    /// with the seed and timings, optional .npy frames and MP4.
    Generate(Box<t2v_worker::generate_command::GenerateArgs>),
}

impl Overrides {
    fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |key: &'static str, value: &Option<String>| {
            if let Some(v) = value {
                out.push((key, v.clone()));
            }
        };
        add("kafka.brokers", &self.brokers);
        add("kafka.group_id", &self.group_id);
        add("kafka.requests_topics", &self.requests_topics);
        add("kafka.events_topic", &self.events_topic);
        add("kafka.control_topic", &self.control_topic);
        add("kafka.dlq_topic", &self.dlq_topic);
        add("storage.url", &self.storage_url);
        add("model.dir", &self.model_dir);
        add("http.port", &self.http_port.map(|p| p.to_string()));
        out
    }
}

/// Logs to stderr; `RUST_LOG` overrides `default_filter`. With `telemetry`, the job and phase
/// spans also become OpenTelemetry spans (src/trace.rs), whatever `RUST_LOG` says.
fn init_logs_with(format: LogFormat, default_filter: &str, telemetry: Option<&Telemetry>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Spans are logged when they close (with busy/idle times): the job and phase spans with
    // their trace ids (src/trace.rs).
    let fmt = tracing_subscriber::fmt::layer()
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_current_span(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(telemetry.map(Telemetry::layer))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    // Before the runtime's threads exist: setting the environment races with them.
    t2v_pipeline::parallel::nccl_group::keep_nvlink_multicast_off();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run_command()),
        Err(e) => {
            eprintln!("error: the async runtime did not start: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_command() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Schema => {
            println!("{:#}", t2v_worker::config::json_schema());
            ExitCode::SUCCESS
        }
        Command::Generate(args) => generate(*args).await,
        Command::Run => match load_config(&cli.overrides) {
            Ok(cfg) => run(cfg).await,
            Err(code) => code,
        },
        Command::Doctor => match load_config(&cli.overrides) {
            Ok(cfg) => doctor(&cfg).await,
            Err(code) => code,
        },
    }
}

/// `generate`: no worker.toml; the error is one line.
async fn generate(args: t2v_worker::generate_command::GenerateArgs) -> ExitCode {
    // The pipeline's warnings reach the user as `warning:` lines; RUST_LOG shows more.
    init_logs_with(LogFormat::Text, "error", None);
    match t2v_worker::generate_command::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("t2v-worker generate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration of `run` and `doctor` (defaults < file < env < flags); exit code 2 when it
/// cannot be used.
fn load_config(overrides: &Overrides) -> Result<WorkerConfig, ExitCode> {
    WorkerConfig::load(
        overrides.config.as_deref(),
        std::env::vars(),
        &overrides.pairs(),
    )
    .map_err(|e| {
        eprintln!("t2v-worker: {e}");
        ExitCode::from(2)
    })
}

/// `run`: telemetry and logs, the consumer loop until a signal has drained it, then the last
/// spans flushed.
async fn run(cfg: WorkerConfig) -> ExitCode {
    let telemetry = match start_telemetry(&cfg) {
        Ok(telemetry) => telemetry,
        Err(code) => return code,
    };
    let result = t2v_worker::kafka::consumer::run(cfg, shutdown_signal()).await;
    if let Err(e) = &result {
        tracing::error!("{e:#}");
    }
    // After the drain, so the last job's spans are in the queue; blocking, bounded.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Starts the tracer provider and the logs of `run`, and says where spans go; exit code 2 when
/// the telemetry settings cannot be used.
fn start_telemetry(cfg: &WorkerConfig) -> Result<Telemetry, ExitCode> {
    let instance = t2v_worker::kafka::consumer::worker_id(cfg);
    let telemetry = Telemetry::start(&cfg.telemetry, &instance).map_err(|e| {
        eprintln!("t2v-worker: {e}");
        ExitCode::from(2)
    })?;
    init_logs_with(cfg.log.format, "info", Some(&telemetry));
    match telemetry.endpoint() {
        Some(endpoint) => tracing::info!(endpoint, "exporting spans over OTLP/HTTP"),
        None => tracing::info!(
            "no OTLP endpoint (telemetry.otlp_endpoint, OTEL_EXPORTER_OTLP_ENDPOINT): trace ids go to the logs only"
        ),
    }
    Ok(telemetry)
}

/// `doctor`: one line per finding; failure when any finding fails.
async fn doctor(cfg: &WorkerConfig) -> ExitCode {
    init_logs_with(cfg.log.format, "info", None);
    let findings = t2v_worker::doctor::run(cfg).await;
    for f in &findings {
        println!("{f}");
    }
    if findings.iter().all(|f| f.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
