//! `t2v-worker doctor`: the classic deployment failures, one line each with the cause and the fix.
//! Checks: Kafka brokers reachable and the four topics present, the object store writable,
//! readable and deletable (a probe object, and whether it refuses a create-only overwrite), the
//! OTLP collector when one is configured, /dev/shm size, the model directory, the variant's LoRA
//! files (they exist, and each fits its expert of the base: `lora_checks.rs`), and for the Wan
//! backend the GPU and whether the model fits it (`gpu_checks.rs`).

mod gpu_checks;
mod lora_checks;

use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;

pub use gpu_checks::{
    checked_sizes, cuda_findings, memory_findings, CudaFacts, DriverFacts, JobSize,
};

use crate::config::{Backend, WorkerConfig};
use crate::kafka::client_config;
use crate::storage::{Storage, StorageError};
use gpu_checks::gpu;

/// Smallest /dev/shm the worker wants (libtorch and ffmpeg pipes use it).
pub const MIN_SHM_BYTES: u64 = 1 << 30;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    /// Passes, but something will bite later (printed `WARN`; the exit status stays 0).
    pub warning: bool,
    /// What was found; for failures and warnings, the cause and the fix.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match (self.ok, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "WARN",
            (true, false) => "ok  ",
        };
        write!(f, "{status} {:<8} {}", self.check, self.message)
    }
}

fn finding(check: &'static str, ok: bool, message: impl Into<String>) -> Finding {
    Finding {
        check,
        ok,
        warning: false,
        message: message.into(),
    }
}

fn warning(check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        warning: true,
        ..finding(check, true, message)
    }
}

/// The topics the worker needs that the brokers say do not exist, one line each (nothing when
/// the brokers cannot be reached: that is an outage, not a missing topic).
pub fn missing_topics(cfg: &WorkerConfig) -> Vec<String> {
    kafka(cfg)
        .into_iter()
        .filter(|f| !f.ok && f.message.starts_with("topic "))
        .map(|f| f.message)
        .collect()
}

fn kafka(cfg: &WorkerConfig) -> Vec<Finding> {
    let k = &cfg.kafka;
    let consumer: BaseConsumer = match client_config(k, "t2v-worker-doctor")
        .set("socket.connection.setup.timeout.ms", "5000")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            return vec![finding(
                "kafka",
                false,
                format!("invalid Kafka client settings: {e} — check [kafka]"),
            )]
        }
    };
    let metadata = match consumer.fetch_metadata(None, Timeout::After(Duration::from_secs(10))) {
        Ok(m) => m,
        Err(e) => {
            return vec![finding(
                "kafka",
                false,
                format!(
                    "brokers {} unreachable ({e}) — check kafka.brokers, the network path and the security settings",
                    k.brokers
                ),
            )]
        }
    };
    let mut out = vec![finding(
        "kafka",
        true,
        format!(
            "brokers {} answer ({} brokers)",
            k.brokers,
            metadata.brokers().len()
        ),
    )];
    let others = [&k.events_topic, &k.control_topic, &k.dlq_topic];
    for topic in k.requests_topics.iter().chain(others) {
        let present = metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        out.push(if present {
            finding("kafka", true, format!("topic {topic} exists"))
        } else {
            finding(
                "kafka",
                false,
                format!("topic {topic} is missing — create the topics with `t2v topics apply`"),
            )
        });
    }
    out
}

/// The write/read/delete probe, then whether create-only writes are enforced: the manifest
/// (the commit point) and the attempt markers rely on them, and some S3-compatible servers
/// (Garage 2.5, for one) accept `If-None-Match: *` and overwrite anyway.
async fn storage(cfg: &WorkerConfig) -> Vec<Finding> {
    let url = &cfg.storage.url;
    let storage = match Storage::from_url(url, &cfg.jobs) {
        Ok(s) => s,
        Err(e) => return vec![finding("storage", false, e.to_string())],
    };
    let key = storage.path(&format!(".t2v-doctor-{}", std::process::id()));
    let probe = Bytes::from_static(b"t2v-worker doctor probe");
    let result = async {
        storage
            .put(&key, probe.clone(), "text/plain", false)
            .await?;
        let back = storage.get(&key).await?;
        let second = storage
            .put(&key, Bytes::from_static(b"second"), "text/plain", true)
            .await;
        storage.delete(&key).await?;
        let create_only = match second {
            Ok(()) => false,
            Err(StorageError::AlreadyExists(_)) => true,
            Err(e) => return Err(e),
        };
        Ok::<_, StorageError>((back, create_only))
    };
    match tokio::time::timeout(Duration::from_secs(60), result).await {
        Ok(Ok((Some(back), create_only))) if back == probe => vec![
            finding(
                "storage",
                true,
                format!("{url} is writable, readable and deletable"),
            ),
            create_only_finding(url, create_only),
        ],
        Ok(Ok(_)) => vec![finding(
            "storage",
            false,
            format!("{url}: the probe object read back differently — check the endpoint is a consistent object store"),
        )],
        Ok(Err(e)) => vec![finding("storage", false, format!("{url}: {e}"))],
        Err(_) => vec![finding(
            "storage",
            false,
            format!("{url}: no answer within 60 s — check the endpoint settings (e.g. AWS_ENDPOINT_URL, GOOGLE_/AZURE_ variables) and the network path"),
        )],
    }
}

fn create_only_finding(url: &str, enforced: bool) -> Finding {
    if enforced {
        finding(
            "storage",
            true,
            format!("{url} refuses a second create-only write (the manifest commit is exclusive)"),
        )
    } else {
        warning(
            "storage",
            format!(
                "{url} accepted a create-only write over an existing object: two workers racing on one job (after a rebalance) could both commit it and announce two different Completed events, and attempt counting is approximate — use a store that honours If-None-Match (AWS S3, GCS, Azure Blob, MinIO, Cloudflare R2) in production"
            ),
        )
    }
}

fn shm() -> Finding {
    match shm_bytes() {
        Some(bytes) if bytes >= MIN_SHM_BYTES => finding("shm", true, format!("/dev/shm has {} MiB", bytes >> 20)),
        Some(bytes) => finding(
            "shm",
            false,
            format!(
                "/dev/shm has {} MiB, fewer than {} MiB — mount a larger memory-backed emptyDir at /dev/shm (chart value `shm.sizeLimit`)",
                bytes >> 20,
                MIN_SHM_BYTES >> 20
            ),
        ),
        None => finding("shm", false, "/dev/shm is not mounted — mount a memory-backed emptyDir there"),
    }
}

/// Total size of /dev/shm, from `df`.
fn shm_bytes() -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-k", "--output=size", "/dev/shm"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn model(cfg: &WorkerConfig) -> Finding {
    if cfg.model.backend == Backend::Synthetic {
        return finding(
            "model",
            true,
            "backend synthetic (TEST/DEMO, no weights needed)",
        );
    }
    let dir = std::path::Path::new(&cfg.model.dir);
    let missing: Vec<&str> = [
        "model_index.json",
        "transformer",
        "text_encoder",
        "tokenizer",
        "vae",
        "scheduler",
    ]
    .into_iter()
    .filter(|entry| !dir.join(entry).exists())
    .collect();
    if cfg.model.dir.is_empty() {
        finding(
            "model",
            false,
            "model.dir is empty — point it at a diffusers-format Wan2.2 checkpoint",
        )
    } else if missing.is_empty() {
        model_kind(&cfg.model.dir)
    } else {
        finding(
            "model",
            false,
            format!(
                "{} is incomplete, missing {} — download the whole checkpoint (huggingface-cli download … --local-dir) or fix model.dir",
                cfg.model.dir,
                missing.join(", ")
            ),
        )
    }
}

/// What a complete-looking model directory is (e.g. "Wan2.2 I2V-A14B (two experts,
/// image-to-video)"), or why its index and configs fit no Wan pipeline.
fn model_kind(dir: &str) -> Finding {
    let kind = t2v_pipeline::model_dir::ModelDir::open(dir).and_then(|model| model.kind());
    match kind {
        Ok(kind) => finding("model", true, format!("{dir} is {kind}")),
        Err(e) => finding("model", false, format!("{dir}: {e}")),
    }
}

/// The checks `t2v-worker run` makes before it loads anything: this host and its configuration
/// (/dev/shm, the model directory, the GPU). A failure there never fixes itself, so the worker
/// stops at once. Kafka and storage are left out: an outage there is retried, not a reason to
/// crash-loop.
pub fn startup(cfg: &WorkerConfig) -> Vec<Finding> {
    let mut findings = vec![shm(), model(cfg)];
    // Existence only: the load itself refuses a LoRA that does not fit, in the same words.
    findings.extend(lora_checks::lora_files(cfg));
    // A job size that does not fit is refused per job (RESOURCE_EXHAUSTED, with what fits);
    // the worker still serves smaller requests, so at start that is a warning.
    findings.extend(gpu(cfg).into_iter().map(|f| {
        if f.check == "memory" && !f.ok {
            warning("memory", f.message)
        } else {
            f
        }
    }));
    findings
}

/// `host:port` of an http(s) URL (the scheme's port when none is given).
fn authority(url: &str) -> Option<String> {
    let (default_port, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (80, rest)
    } else {
        (443, url.strip_prefix("https://")?)
    };
    let host = rest.split(['/', '?']).next().filter(|h| !h.is_empty())?;
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    })
}

/// Whether the OTLP collector (when one is configured) accepts connections. An unreachable one
/// only costs the spans, never a job: a warning, not a failure.
async fn telemetry(cfg: &WorkerConfig) -> Option<Finding> {
    let endpoint =
        crate::trace::traces_endpoint(&cfg.telemetry.otlp_endpoint, |k| std::env::var(k).ok())?;
    let Some(address) = authority(&endpoint) else {
        return Some(finding(
            "otlp",
            false,
            format!("{endpoint} is not an http(s) URL — set telemetry.otlp_endpoint to e.g. http://otel-collector:4318"),
        ));
    };
    let connect = tokio::net::TcpStream::connect(address.as_str());
    Some(match tokio::time::timeout(Duration::from_secs(3), connect).await {
        Ok(Ok(_)) => finding("otlp", true, format!("spans go to {endpoint} (collector reachable)")),
        Ok(Err(e)) => warning(
            "otlp",
            format!("the collector at {endpoint} is unreachable ({e}): spans will be dropped, jobs are unaffected — check telemetry.otlp_endpoint / OTEL_EXPORTER_OTLP_ENDPOINT and the network path"),
        ),
        Err(_) => warning(
            "otlp",
            format!("the collector at {endpoint} did not accept a connection within 3 s: spans will be dropped, jobs are unaffected — check telemetry.otlp_endpoint / OTEL_EXPORTER_OTLP_ENDPOINT and the network path"),
        ),
    })
}

/// The storage probe alone (write, read, create-only, delete), for the worker's start-up log.
pub async fn storage_probe(cfg: &WorkerConfig) -> Vec<Finding> {
    storage(cfg).await
}

/// Runs every check. The caller prints one line per finding and fails on any failure.
pub async fn run(cfg: &WorkerConfig) -> Vec<Finding> {
    let kafka_cfg = cfg.clone();
    let mut findings = tokio::task::spawn_blocking(move || kafka(&kafka_cfg))
        .await
        .unwrap_or_else(|e| vec![finding("kafka", false, format!("the check crashed: {e}"))]);
    findings.extend(storage(cfg).await);
    findings.extend(telemetry(cfg).await);
    findings.push(shm());
    findings.push(model(cfg));
    let lora_cfg = cfg.clone();
    findings.extend(
        tokio::task::spawn_blocking(move || lora_checks::loras(&lora_cfg))
            .await
            .unwrap_or_else(|e| vec![finding("lora", false, format!("the check crashed: {e}"))]),
    );
    let gpu_cfg = cfg.clone();
    findings.extend(
        tokio::task::spawn_blocking(move || gpu(&gpu_cfg))
            .await
            .unwrap_or_else(|e| vec![finding("gpu", false, format!("the check crashed: {e}"))]),
    );
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_directory_is_named_by_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        write(
            "model_index.json",
            r#"{"_class_name": "WanImageToVideoPipeline", "boundary_ratio": 0.9,
                "transformer": ["diffusers", "WanTransformer3DModel"],
                "transformer_2": ["diffusers", "WanTransformer3DModel"],
                "vae": ["diffusers", "AutoencoderKLWan"]}"#,
        );
        write(
            "transformer/config.json",
            r#"{"in_channels": 36, "out_channels": 16}"#,
        );
        write("vae/config.json", r#"{"z_dim": 16}"#);
        let finding = model_kind(dir.path().to_str().unwrap());
        assert!(finding.ok, "{}", finding.message);
        assert!(
            finding
                .message
                .ends_with("is Wan2.2 I2V-A14B (two experts, image-to-video)"),
            "{}",
            finding.message
        );
        write("vae/config.json", r#"{"z_dim": 48}"#);
        let finding = model_kind(dir.path().to_str().unwrap());
        assert!(
            !finding.ok && finding.message.contains("fits no Wan pipeline"),
            "{}",
            finding.message
        );
    }

    #[test]
    fn authority_takes_the_port_or_the_schemes() {
        assert_eq!(
            authority("http://otel-collector:4318/v1/traces").as_deref(),
            Some("otel-collector:4318")
        );
        assert_eq!(
            authority("https://otlp.example.com/v1/traces").as_deref(),
            Some("otlp.example.com:443")
        );
        assert_eq!(authority("http://10.0.0.7").as_deref(), Some("10.0.0.7:80"));
        assert_eq!(authority("grpc://collector:4317"), None);
    }

    #[tokio::test]
    async fn a_configured_collector_is_probed_and_an_unreachable_one_only_warns() {
        let mut cfg = WorkerConfig::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let up = listener.local_addr().unwrap().port();
        cfg.telemetry.otlp_endpoint = format!("http://127.0.0.1:{up}");
        let found = telemetry(&cfg).await.unwrap();
        assert!(found.ok && !found.warning, "{found}");
        assert!(
            found.message.contains(&format!("127.0.0.1:{up}/v1/traces")),
            "{found}"
        );

        drop(listener);
        let found = telemetry(&cfg).await.unwrap();
        assert!(found.ok && found.warning, "{found}");
        assert!(
            found.message.contains("unreachable") && found.message.contains("jobs are unaffected"),
            "{found}"
        );
    }
}
