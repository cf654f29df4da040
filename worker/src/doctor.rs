//! `t2v-worker doctor`: the classic deployment failures, one line each with the cause and the fix.
//! Checks: Kafka brokers reachable and the four topics present, the object store writable,
//! readable and deletable (a probe object), /dev/shm size, and the model directory. GPU checks
//! (memory for the model and settings, CUDA driver vs libtorch) arrive with the pipeline.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;

use crate::config::{Backend, WorkerConfig};
use crate::events::client_config;
use crate::storage::Storage;

/// Smallest /dev/shm the worker wants (libtorch and ffmpeg pipes use it).
pub const MIN_SHM_BYTES: u64 = 1 << 30;

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub ok: bool,
    /// What was found; for failures, the cause and the fix.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{status} {:<8} {}", self.check, self.message)
    }
}

fn finding(check: &'static str, ok: bool, message: impl Into<String>) -> Finding {
    Finding {
        check,
        ok,
        message: message.into(),
    }
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
    for topic in [
        &k.requests_topic,
        &k.events_topic,
        &k.control_topic,
        &k.dlq_topic,
    ] {
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

async fn storage(cfg: &WorkerConfig) -> Finding {
    let storage = match Storage::from_url(&cfg.storage.url, &cfg.jobs) {
        Ok(s) => s,
        Err(e) => return finding("storage", false, e.to_string()),
    };
    let key = storage.path(&format!(".t2v-doctor-{}", std::process::id()));
    let probe = Bytes::from_static(b"t2v-worker doctor probe");
    let result = async {
        storage
            .put(&key, probe.clone(), "text/plain", false)
            .await?;
        let back = storage.get(&key).await?;
        storage.delete(&key).await?;
        Ok::<_, crate::storage::StorageError>(back)
    };
    match tokio::time::timeout(Duration::from_secs(60), result).await {
        Ok(Ok(Some(back))) if back == probe => finding(
            "storage",
            true,
            format!("{} is writable, readable and deletable", cfg.storage.url),
        ),
        Ok(Ok(_)) => finding(
            "storage",
            false,
            format!("{}: the probe object read back differently — check the endpoint is a consistent object store", cfg.storage.url),
        ),
        Ok(Err(e)) => finding("storage", false, format!("{}: {e}", cfg.storage.url)),
        Err(_) => finding(
            "storage",
            false,
            format!("{}: no answer within 60 s — check AWS_ENDPOINT_URL and the network path", cfg.storage.url),
        ),
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
        finding(
            "model",
            true,
            format!("{} looks like a diffusers checkpoint", cfg.model.dir),
        )
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

/// Runs every check. The caller prints one line per finding and fails on any failure.
pub async fn run(cfg: &WorkerConfig) -> Vec<Finding> {
    let kafka_cfg = cfg.clone();
    let mut findings = tokio::task::spawn_blocking(move || kafka(&kafka_cfg))
        .await
        .unwrap_or_else(|e| vec![finding("kafka", false, format!("the check crashed: {e}"))]);
    findings.push(storage(cfg).await);
    findings.push(shm());
    findings.push(model(cfg));
    findings
}
