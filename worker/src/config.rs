//! The worker's configuration: plain data with every default in one place (`Default` impls below),
//! layered defaults < `worker.toml` < `T2V_…` environment (`__` nests: `T2V_KAFKA__BROKERS`) < flags,
//! and checked by [`WorkerConfig::validate`] before anything starts.
//!
//! The same structs generate `schemas/worker_config.schema.json` ([`json_schema`]); a unit test
//! keeps the committed file and `worker.example.toml` in step with them.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every setting of `t2v-worker`. Unknown keys are errors, so a typo never goes unnoticed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub storage: StorageConfig,
    pub model: ModelConfig,
    pub jobs: JobsConfig,
    pub media: MediaConfig,
    pub shutdown: ShutdownConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    pub telemetry: TelemetryConfig,
}

/// The single HTTP server: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// TCP port of the HTTP server; 0 picks a free port (logged at start).
    pub port: u16,
    /// Address to bind.
    pub address: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            port: 9090,
            address: "0.0.0.0".into(),
        }
    }
}

/// Kafka connection, consumer group and topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma-separated `host:port`.
    pub brokers: String,
    /// Consumer group of the fleet.
    pub group_id: String,
    /// Static membership (`group.instance.id`), usually the pod name; empty = dynamic membership.
    pub instance_id: String,
    /// `security.protocol`: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL; empty = PLAINTEXT.
    pub security_protocol: String,
    /// `sasl.mechanism`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* protocol).
    pub sasl_mechanism: String,
    /// SASL username; pass it as env `T2V_KAFKA__SASL_USERNAME`, never in a file.
    pub sasl_username: String,
    /// SASL password; pass it as env `T2V_KAFKA__SASL_PASSWORD`, never in a file.
    pub sasl_password: String,
    /// CA bundle that verifies the brokers (SSL, SASL_SSL); empty = system CAs.
    pub ssl_ca_location: String,
    /// Client certificate for mutual TLS; empty = none.
    pub ssl_certificate_location: String,
    /// Client private key for mutual TLS; empty = none.
    pub ssl_key_location: String,
    /// The request topics this fleet reads, its priority lanes highest first (schemas/topics.yaml
    /// `models`): the worker starts the next job from the first with a backlog on its partitions.
    /// Env: comma-separated, e.g. `T2V_KAFKA__REQUESTS_TOPICS=t2v.requests.high.v1,t2v.requests.v1`.
    pub requests_topics: Vec<String>,
    /// A lower lane that has waited this long behind higher ones gives the next job, so no lane
    /// starves: a lane waits at most this plus one job. 0 = strict priority.
    pub lane_aging_secs: u64,
    pub events_topic: String,
    pub control_topic: String,
    pub dlq_topic: String,
    /// `session.timeout.ms`: how long the group waits for a silent worker (crash detection).
    pub session_timeout_ms: u32,
    /// `max.poll.interval.ms`: a backstop only — the worker keeps polling while a job runs.
    pub max_poll_interval_ms: u32,
    /// `statistics.interval.ms` for the consumer-lag metric; 0 turns statistics off.
    pub statistics_interval_ms: u32,
    /// Extra librdkafka properties, applied last (e.g. `"fetch.wait.max.ms" = "100"`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "localhost:9092".into(),
            group_id: "t2v-workers".into(),
            instance_id: String::new(),
            security_protocol: String::new(),
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: String::new(),
            ssl_ca_location: String::new(),
            ssl_certificate_location: String::new(),
            ssl_key_location: String::new(),
            requests_topics: vec![
                "t2v.requests.high.v1".into(),
                "t2v.requests.v1".into(),
                "t2v.requests.batch.v1".into(),
            ],
            lane_aging_secs: 600,
            events_topic: "t2v.events.v1".into(),
            control_topic: "t2v.control.v1".into(),
            dlq_topic: "t2v.dlq.v1".into(),
            session_timeout_ms: 45_000,
            max_poll_interval_ms: 300_000,
            statistics_interval_ms: 15_000,
            properties: BTreeMap::new(),
        }
    }
}

/// Where videos, thumbnails, manifests and attempt markers go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix` (also `azure://`,
    /// `abfs://`, `abfss://`) or `file:///absolute/dir`; endpoint and credentials from the
    /// `AWS_*`, `GOOGLE_*` or `AZURE_*` environment. Outputs land under `<prefix>/<job_id>/`.
    pub url: String,
    /// Where requests' conditioning images may be read from (`image.uri`), as URI prefixes:
    /// `s3://bucket/dir/`, `gs://…`, `az://…` (read with the same credentials as `url`) or
    /// `file:///absolute/dir/` (local files under that directory, symlinks resolved). A URI
    /// under none of them is refused with INVALID_ARGUMENT before anything is read. Empty (the
    /// default) = no image URIs at all: images come inline (at most 48 KiB). Env:
    /// comma-separated, `T2V_STORAGE__IMAGE_URI_PREFIXES=s3://t2v-inputs/,file:///srv/images/`.
    pub image_uri_prefixes: Vec<String>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: "file:///tmp/t2v-outputs".into(),
            image_uri_prefixes: Vec::new(),
        }
    }
}

/// Which generator runs the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// The Wan2.2 pipeline on libtorch (`[model] dir` holds the diffusers-format checkpoint).
    Wan,
    /// TEST/DEMO ONLY: deterministic moving gradients from the seed, no model at all.
    Synthetic,
}

/// The model this worker serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Diffusers-format checkpoint directory (model_index.json, transformer/, vae/, …).
    pub dir: String,
    /// Model id requests must name (GenerationRequest.model); others fail with MODEL_NOT_FOUND.
    pub name: String,
    pub backend: Backend,
    /// Synthetic backend only: sleep per denoising step, so tests can run long jobs.
    pub synthetic_step_ms: u64,
    /// Synthetic backend only, fault injection: a prompt containing this text hangs at its
    /// first step, as a stuck CUDA call would. Empty = never.
    pub synthetic_hang_marker: String,
    /// Synthetic backend only, fault injection: after this many jobs every generation fails
    /// with an internal error, as after a CUDA error that poisoned the context. 0 = never.
    pub synthetic_fail_after_jobs: u32,
    /// Synthetic backend only: the kind of model it pretends to be — `text_image_to_video`
    /// (default: requests with and without an image), `text_to_video` (an image is refused)
    /// or `image_to_video` (a request without an image is refused).
    pub synthetic_kind: crate::generate::ModelKind,
    /// Wan backend: `cpu`, `cuda`, or `auto` (CUDA when available, else the CPU).
    pub device: DeviceChoice,
    /// Wan backend: weight dtype; `auto` = bf16 on CUDA, f32 on the CPU. The VAE stays in f32.
    pub dtype: DtypeChoice,
    /// Wan backend: `resident` (everything on the device, fastest) or `low-memory` (one expert
    /// on the device at a time, text encoder parked after use, tiled VAE decode).
    pub memory_policy: MemoryPolicyChoice,
    /// Wan backend: device memory (GiB) a job's estimated peak must fit, checked before any
    /// work; a job that cannot fit fails with RESOURCE_EXHAUSTED naming settings that fit.
    /// 0 = the GPU's total memory (no check on the CPU). Lower it to keep headroom for other
    /// processes on the GPU.
    pub memory_budget_gib: f64,
    /// Wan backend on CUDA: the GPUs one job runs on — `"all"` (every GPU the worker sees) or
    /// CUDA ordinals, `[0, 1]` (env: `T2V_MODEL__DEVICES=0,1`). With several, the job splits
    /// CFG × Ulysses over them (the layout follows from the count) and the VAE decode spreads
    /// its tiles; CUDA device 0 must be among them.
    pub devices: DevicesChoice,
    /// Wan backend, a job on several GPUs: what moves the ranks' tensors — `auto` (NCCL when
    /// the ranks are on two or more distinct GPUs, else the in-process copies; a multi-GPU
    /// worker whose NCCL cannot load warns once and uses the copies), `nccl` (NCCL or the load
    /// fails) or `copy` (device-to-device copies through the ranks' threads). Env:
    /// `T2V_MODEL__COLLECTIVES`; NCCL is loaded from `libnccl.so.2` or `T2V_NCCL_LIBRARY`.
    pub collectives: CollectivesChoice,
    /// The sampling preset of the variant this fleet serves, which a request's zero fields take:
    /// `base` (the base model's own defaults) or `lightning` (Wan2.2-Lightning's 4-step recipe:
    /// 4 steps, guidance 1.0 on both experts, the Euler flow sampler, shift 5.0). Pair it with
    /// the variant's LoRAs in `loras` and its name in `name`.
    pub preset: PresetChoice,
    /// Per-field replacements of the preset's values; 0 keeps the preset's.
    pub sampling: SamplingConfig,
    /// Wan backend: LoRA files fused into the experts' weights at load (no cost per step).
    /// TOML: `[[model.loras]]` tables; env: `T2V_MODEL__LORAS=expert:strength:file,…`, e.g.
    /// `transformer:1.0:/loras/high.safetensors,transformer_2:1.0:/loras/low.safetensors`.
    pub loras: Vec<LoraConfig>,
    /// Wan backend: step caching of the variant's jobs (`[model.cache]`: kind, threshold, MagCache
    /// settings); refused for step-distilled variants. A request's `cache_threshold` overrides
    /// the threshold.
    pub cache: crate::generate::variant::CacheConfig,
}

/// `[model] preset`: the sampling defaults of a variant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresetChoice {
    /// The base model's defaults (Wan2.2 T2V-A14B: 40 steps, guidance 4.0 / 3.0, the model
    /// directory's scheduler and shift).
    #[default]
    Base,
    /// Wan2.2-Lightning, the 4-step distilled LoRAs of `wan2.2-t2v-a14b-lightning`.
    Lightning,
}

/// `[model.sampling]`: what a request's zero fields take instead of the preset's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Denoising steps, 1..=200; 0 = the preset's.
    pub steps: u32,
    /// Guidance of the high-noise expert (the only one of single-expert models), 0.0..=30.0;
    /// 0 = the preset's. At most 1.0 turns the unconditional pass off.
    pub guidance_scale: f32,
    /// Guidance of the low-noise expert, 0.0..=30.0; 0 = the preset's.
    pub guidance_scale_2: f32,
    /// `default` (the preset's), `unipc` or `euler` (the flow-matching Euler sampler).
    pub sampler: SamplerChoice,
    /// Flow shift, 0.1..=50.0; 0 = the preset's (base: the model directory's scheduler config).
    pub shift: f32,
}

/// `[model.sampling] sampler`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SamplerChoice {
    /// The preset's sampler.
    #[default]
    Default,
    Unipc,
    Euler,
}

/// One `[[model.loras]]` entry: a LoRA safetensors file for one expert or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Path of the LoRA safetensors file (diffusers/PEFT, Wan/ComfyUI/kohya or diff formats).
    pub file: String,
    /// Multiplier of the adapter: 1.0 as trained, 0.0 no change.
    #[serde(default = "full_strength")]
    pub strength: f64,
    /// `transformer` (the high-noise expert, or the only one), `transformer_2` (the low-noise
    /// expert) or `both`.
    pub expert: LoraExpert,
}

fn full_strength() -> f64 {
    1.0
}

/// Which expert a LoRA file is fused into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoraExpert {
    /// The high-noise expert (or the only transformer of single-expert models).
    #[serde(rename = "transformer")]
    Transformer,
    /// The low-noise expert of two-expert models.
    #[serde(rename = "transformer_2")]
    Transformer2,
    /// Both experts.
    #[serde(rename = "both")]
    Both,
}

impl LoraExpert {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "transformer" => Some(Self::Transformer),
            "transformer_2" => Some(Self::Transformer2),
            "both" => Some(Self::Both),
            _ => None,
        }
    }
}

impl LoraConfig {
    /// One entry of `T2V_MODEL__LORAS`: `expert:strength:file` (the file last, so it may hold
    /// colons).
    fn parse_env(entry: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError::Invalid(format!(
                "model.loras entry {entry:?}: {why} — write expert:strength:file, e.g. transformer_2:1.0:/loras/low.safetensors (expert: transformer, transformer_2 or both)"
            ))
        };
        let mut parts = entry.trim().splitn(3, ':');
        let (Some(expert), Some(strength), Some(file)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not three fields"));
        };
        Ok(Self {
            expert: LoraExpert::parse(expert.trim()).ok_or_else(|| bad("unknown expert"))?,
            strength: strength
                .trim()
                .parse()
                .map_err(|_| bad("the strength is not a number"))?,
            file: file.trim().to_string(),
        })
    }
}

/// `[model] devices`: `"all"`, a comma-separated list of CUDA ordinals (`"0,1"`), or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DevicesChoice {
    /// `"all"` or ordinals as text, `"0,1"`.
    Text(String),
    /// CUDA ordinals.
    Ordinals(Vec<u32>),
}

impl Default for DevicesChoice {
    fn default() -> Self {
        Self::Text("all".into())
    }
}

/// `[model] collectives`: what moves the tensors between the GPUs of one job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CollectivesChoice {
    /// NCCL when the job's ranks are on two or more distinct GPUs, the in-process copies
    /// otherwise.
    #[default]
    Auto,
    /// NCCL; a worker whose NCCL cannot be loaded fails its load.
    Nccl,
    /// Device-to-device copies through the ranks' threads, no NCCL.
    Copy,
}

impl From<CollectivesChoice> for t2v_pipeline::parallel::CollectivesChoice {
    fn from(choice: CollectivesChoice) -> Self {
        match choice {
            CollectivesChoice::Auto => Self::Auto,
            CollectivesChoice::Nccl => Self::Nccl,
            CollectivesChoice::Copy => Self::Copy,
        }
    }
}

/// Where the Wan pipeline runs.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch sees one, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The transformer and text-encoder weight dtype.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// bf16 on CUDA, f32 on the CPU.
    #[default]
    Auto,
    Bf16,
    Fp16,
    F32,
    /// The transformer blocks' linear weights in FP8 (e4m3, per-channel scales, `_scaled_mm`),
    /// the rest in bf16: half the expert memory. CUDA GPUs of compute capability 8.9 or later
    /// (Ada, Hopper) only.
    Fp8,
}

/// How the Wan pipeline uses device memory.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryPolicyChoice {
    /// Both experts, the text encoder and the VAE stay on the device.
    #[default]
    Resident,
    /// One expert on the device at a time, the text encoder parked after use, tiled decode.
    LowMemory,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            dir: String::new(),
            name: "wan2.2-t2v-a14b".into(),
            backend: Backend::Wan,
            synthetic_step_ms: 0,
            synthetic_hang_marker: String::new(),
            synthetic_fail_after_jobs: 0,
            synthetic_kind: crate::generate::ModelKind::default(),
            device: DeviceChoice::Auto,
            dtype: DtypeChoice::Auto,
            memory_policy: MemoryPolicyChoice::Resident,
            memory_budget_gib: 0.0,
            devices: DevicesChoice::default(),
            collectives: CollectivesChoice::Auto,
            preset: PresetChoice::Base,
            sampling: SamplingConfig::default(),
            loras: Vec::new(),
            cache: Default::default(),
        }
    }
}

/// Job handling policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Started attempts (markers next to the outputs) after which a job goes to the DLQ.
    pub max_attempts: u32,
    /// Minimum time between two Progress events of a job.
    pub progress_interval_ms: u64,
    /// Retries in place of a transient Kafka or object-store error before re-queueing the job.
    pub retry_times: usize,
    /// First retry delay; doubles (with jitter) up to `retry_max_delay_ms`.
    pub retry_min_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// Characters of the prompt shown in the per-job summary log line; 0 hides it.
    pub log_prompt_chars: usize,
    /// Watchdog: a denoising step (the first one includes text encoding) that takes longer than
    /// this means a stuck GPU call — the job is re-queued and the worker leaves and exits
    /// non-zero, so Kubernetes replaces it. 0 turns the watchdog off.
    pub step_timeout_secs: u64,
    /// Watchdog for ffmpeg: an encode that takes longer is treated as a stuck worker, as above.
    /// 0 turns it off.
    pub encode_timeout_secs: u64,
    /// After this many jobs in a row failed with an internal error (e.g. a CUDA error that
    /// poisoned the context), the worker re-queues the last one, marks itself unhealthy, leaves
    /// the group and exits non-zero. 0 turns the limit off.
    pub max_consecutive_failures: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            progress_interval_ms: 1000,
            retry_times: 8,
            retry_min_delay_ms: 200,
            retry_max_delay_ms: 5000,
            log_prompt_chars: 64,
            step_timeout_secs: 900,
            encode_timeout_secs: 600,
            max_consecutive_failures: 3,
        }
    }
}

/// MP4 and thumbnail encoding (ffmpeg).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// The ffmpeg executable.
    pub ffmpeg: String,
    /// x264 constant rate factor, 0..=51 (lower = better, larger).
    pub crf: u8,
    /// x264 preset.
    pub preset: String,
    /// Scratch directory for encoding; empty = the system temp dir.
    pub work_dir: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            ffmpeg: "ffmpeg".into(),
            crf: 20,
            preset: "veryfast".into(),
            work_dir: String::new(),
        }
    }
}

/// Graceful shutdown on SIGTERM / SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds a running job gets to reach a step boundary before the worker exits anyway.
    pub drain_deadline_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_deadline_secs: 45,
        }
    }
}

/// Denoising checkpoints under `<prefix>/<job_id>/checkpoint/`: written periodically and on
/// shutdown, resumed from by the next worker that takes the job, deleted after the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Upper bound in seconds for writing one checkpoint (a shutdown waits at most this long).
    pub max_write_secs: u64,
    /// Checkpoint every this many denoising steps; 0 = not by step count. At most one write is
    /// in flight: a due checkpoint is skipped while the previous one is still uploading.
    pub every_steps: u32,
    /// Checkpoint when this many seconds passed since the last one; 0 = not by time.
    pub every_secs: u64,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            max_write_secs: 30,
            every_steps: 1,
            every_secs: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging (the filter comes from `RUST_LOG`, default `info`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `json` for log pipelines, `text` for humans (env `T2V_LOG__FORMAT`).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}

/// OpenTelemetry traces: a span per job and per phase, exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP collector, e.g. `http://otel-collector:4318` (`/v1/traces` is
    /// appended); empty = the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variables, and no export when those are unset too.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (requests without a `traceparent`) that are sampled, 0.0..=1.0;
    /// requests with a `traceparent` follow its sampled flag.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "t2v-worker".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Keys whose env and flag values are comma-separated lists.
const LIST_KEYS: [&str; 3] = [
    "kafka.requests_topics",
    LORAS_KEY,
    "storage.image_uri_prefixes",
];

/// The list key whose items are `expert:strength:file` LoRA entries ([`LoraConfig::parse_env`]).
const LORAS_KEY: &str = "model.loras";

/// `T2V_MODEL__LORAS` as the list of tables `[[model.loras]]` would give; empty = no LoRAs.
fn lora_overrides(value: &str) -> Result<Vec<config::Map<String, config::Value>>, ConfigError> {
    value
        .split(',')
        .filter(|entry| !entry.trim().is_empty())
        .map(|entry| {
            let lora = LoraConfig::parse_env(entry)?;
            let expert = match lora.expert {
                LoraExpert::Transformer => "transformer",
                LoraExpert::Transformer2 => "transformer_2",
                LoraExpert::Both => "both",
            };
            let mut table = config::Map::new();
            table.insert("file".into(), config::Value::from(lora.file));
            table.insert("strength".into(), config::Value::from(lora.strength));
            table.insert("expert".into(), config::Value::from(expert));
            Ok(table)
        })
        .collect()
}

/// The environment variable of a dotted key: `kafka.requests_topics` → `T2V_KAFKA__REQUESTS_TOPICS`.
fn env_name(key: &str) -> String {
    format!("T2V_{}", key.replace('.', "__").to_uppercase())
}

/// The top-level sections, for picking `T2V_<SECTION>__<KEY>` variables out of the environment
/// (other `T2V_*` variables such as `T2V_POD_NAME` belong to other tools).
const SECTIONS: &[&str] = &[
    "http",
    "kafka",
    "storage",
    "model",
    "jobs",
    "media",
    "shutdown",
    "checkpoint",
    "log",
    "telemetry",
];

/// A configuration that cannot be used, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load the configuration: {0} — check the file's TOML and the T2V_* variables against worker.example.toml")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl WorkerConfig {
    /// Loads defaults < `file` (when given) < `env` (`T2V_SECTION__KEY=value`) < `overrides`
    /// (dotted keys such as `kafka.brokers`, from command-line flags), then validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let (lists, ours): (Vec<_>, Vec<_>) = env
            .into_iter()
            .filter(|(key, _)| {
                key.strip_prefix("T2V_")
                    .and_then(|rest| rest.split_once("__"))
                    .is_some_and(|(section, _)| SECTIONS.contains(&section.to_lowercase().as_str()))
            })
            .partition(|(key, _)| LIST_KEYS.iter().any(|list| env_name(list) == *key));
        builder = builder.add_source(
            config::Environment::with_prefix("T2V")
                .prefix_separator("_")
                .separator("__")
                .source(Some(ours.into_iter().collect())),
        );
        // Lists arrive comma-separated (env and flags alike); flags come last and win.
        let lists = lists.into_iter().filter_map(|(name, value)| {
            let key = LIST_KEYS.iter().find(|list| env_name(list) == name)?;
            Some((*key, value))
        });
        let overrides = overrides.iter().map(|(key, value)| (*key, value.clone()));
        for (key, value) in lists.chain(overrides) {
            builder = if key == LORAS_KEY {
                builder.set_override(key, lora_overrides(&value)?)?
            } else if LIST_KEYS.contains(&key) {
                let items: Vec<String> = value.split(',').map(|v| v.trim().to_string()).collect();
                builder.set_override(key, items)?
            } else {
                builder.set_override(key, value)?
            };
        }
        let cfg: WorkerConfig = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: cross-field bounds, the drain deadline against the consumer's
    /// timeouts, and the SASL settings. The first problem found is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate_membership()?;
        self.validate_drain_deadline()?;
        self.kafka.validate_security()?;
        self.validate_storage()?;
        self.model.validate()?;
        self.jobs.validate()?;
        self.media.validate()?;
        self.telemetry.validate()
    }

    /// The drain deadline plus a checkpoint write must end before the group evicts a silent
    /// consumer.
    fn validate_drain_deadline(&self) -> Result<(), ConfigError> {
        let shutdown = self.shutdown.drain_deadline_secs + self.checkpoint.max_write_secs;
        if self.shutdown.drain_deadline_secs == 0 {
            return Err(ConfigError::Invalid(
                "shutdown.drain_deadline_secs must be at least 1".into(),
            ));
        }
        let max_poll_interval_ms = self.kafka.max_poll_interval_ms;
        if shutdown * 1000 >= u64::from(max_poll_interval_ms) {
            return Err(ConfigError::Invalid(format!(
                "shutdown.drain_deadline_secs + checkpoint.max_write_secs = {shutdown} s is not below kafka.max_poll_interval_ms ({max_poll_interval_ms} ms): a draining worker could be evicted from the group mid-drain — lower the deadline or raise max_poll_interval_ms"
            )));
        }
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        crate::storage::check_url(&self.storage.url).map_err(|reason| {
            ConfigError::Invalid(format!("storage.url {:?}: {reason}", self.storage.url))
        })?;
        for prefix in &self.storage.image_uri_prefixes {
            crate::job::image::check_prefix(prefix).map_err(|reason| {
                ConfigError::Invalid(format!("storage.image_uri_prefixes {prefix:?}: {reason}"))
            })?;
        }
        Ok(())
    }
}

impl KafkaConfig {
    /// Brokers, the group, and the group's timeouts.
    fn validate_membership(&self) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "kafka.brokers is empty — set it to host:port[,host:port] (env T2V_KAFKA__BROKERS)"
                    .into(),
            ));
        }
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "kafka.group_id is empty — every worker of a fleet needs the same group id".into(),
            ));
        }
        let topics = &self.requests_topics;
        let distinct: std::collections::BTreeSet<&str> = topics.iter().map(|t| t.trim()).collect();
        if topics.is_empty() || distinct.contains("") || distinct.len() != topics.len() {
            return Err(ConfigError::Invalid(format!(
                "kafka.requests_topics {topics:?} must name one or more distinct topics, highest lane first (schemas/topics.yaml `models`; env T2V_KAFKA__REQUESTS_TOPICS=a,b,c)"
            )));
        }
        if self.session_timeout_ms > self.max_poll_interval_ms {
            return Err(ConfigError::Invalid(format!(
                "kafka.session_timeout_ms ({}) exceeds kafka.max_poll_interval_ms ({}) — librdkafka requires session <= max poll interval",
                self.session_timeout_ms, self.max_poll_interval_ms
            )));
        }
        Ok(())
    }

    /// The security protocol, and the SASL settings it needs.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let protocol = self.security_protocol.to_ascii_uppercase();
        if !matches!(
            protocol.as_str(),
            "" | "PLAINTEXT" | "SSL" | "SASL_PLAINTEXT" | "SASL_SSL"
        ) {
            return Err(ConfigError::Invalid(format!(
                "kafka.security_protocol {:?} is not one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
                self.security_protocol
            )));
        }
        if protocol.starts_with("SASL")
            && (self.sasl_mechanism.is_empty()
                || self.sasl_username.is_empty()
                || self.sasl_password.is_empty())
        {
            return Err(ConfigError::Invalid(format!(
                "kafka.security_protocol is {protocol} but sasl_mechanism, T2V_KAFKA__SASL_USERNAME or T2V_KAFKA__SASL_PASSWORD is empty — set all three"
            )));
        }
        Ok(())
    }
}

impl ModelConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let budget = self.memory_budget_gib;
        if !(budget.is_finite() && budget >= 0.0) {
            return Err(ConfigError::Invalid(format!(
                "model.memory_budget_gib must be a number >= 0 (0 = the GPU's total memory), got {budget}"
            )));
        }
        self.sampling.validate()?;
        self.cache.validate(self).map_err(ConfigError::Invalid)?;
        self.validate_loras()
    }

    /// Every LoRA names a file and a finite strength, and only the Wan backend takes LoRAs
    /// (the synthetic one would ignore them silently).
    fn validate_loras(&self) -> Result<(), ConfigError> {
        if !self.loras.is_empty() && self.backend != Backend::Wan {
            return Err(ConfigError::Invalid(
                "model.loras is set but model.backend is not wan — only the Wan pipeline fuses LoRAs; remove the LoRAs or set backend = \"wan\"".into(),
            ));
        }
        for (i, lora) in self.loras.iter().enumerate() {
            if lora.file.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "model.loras[{i}].file is empty — set it to the LoRA's safetensors file"
                )));
            }
            if !lora.strength.is_finite() {
                return Err(ConfigError::Invalid(format!(
                    "model.loras[{i}].strength ({}) for {} is not a finite number — use 1.0 for the LoRA as trained",
                    lora.strength, lora.file
                )));
            }
        }
        Ok(())
    }
}

impl SamplingConfig {
    /// The request bounds (contract/src/validate.rs), with 0 meaning the preset's value.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.steps > 200 {
            return Err(ConfigError::Invalid(format!(
                "model.sampling.steps must be 0 (the preset's) or 1..=200, got {}",
                self.steps
            )));
        }
        for (key, value) in [
            ("guidance_scale", self.guidance_scale),
            ("guidance_scale_2", self.guidance_scale_2),
        ] {
            if !(0.0..=30.0).contains(&value) {
                return Err(ConfigError::Invalid(format!(
                    "model.sampling.{key} must be 0 (the preset's) or up to 30.0, got {value}"
                )));
            }
        }
        let shift = self.shift;
        if !(shift == 0.0 || (0.1..=50.0).contains(&shift)) {
            return Err(ConfigError::Invalid(format!(
                "model.sampling.shift must be 0 (the preset's) or 0.1..=50.0, got {shift}"
            )));
        }
        Ok(())
    }
}

impl JobsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid(
                "jobs.max_attempts must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

impl MediaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.crf > 51 {
            return Err(ConfigError::Invalid(format!(
                "media.crf must be 0..=51, got {}",
                self.crf
            )));
        }
        Ok(())
    }
}

impl TelemetryConfig {
    /// An http(s) endpoint (or none), a sampling ratio, and a service name.
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.otlp_endpoint.is_empty()
            || self.otlp_endpoint.starts_with("http://")
            || self.otlp_endpoint.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(format!(
                "telemetry.otlp_endpoint {:?} is not an http(s) URL — use the collector's OTLP/HTTP base URL, e.g. http://otel-collector:4318, or leave it empty",
                self.otlp_endpoint
            )));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::Invalid(format!(
                "telemetry.sample_ratio must be 0.0..=1.0 (the share of new traces sampled), got {}",
                self.sample_ratio
            )));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "telemetry.service_name is empty — name the service the spans belong to, e.g. t2v-worker"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The JSON Schema of `worker.toml` (committed as schemas/worker_config.schema.json).
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(WorkerConfig);
    serde_json::to_value(&schema).expect("a schema serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn request_topics_are_lanes_from_toml_env_or_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[kafka]\nrequests_topics = [\"f.high\", \"f.low\"]\n",
        )
        .unwrap();
        let from_file = WorkerConfig::load(Some(&file), env(&[]), &[]).unwrap();
        assert_eq!(from_file.kafka.requests_topics, ["f.high", "f.low"]);
        let from_env = WorkerConfig::load(
            Some(&file),
            env(&[("T2V_KAFKA__REQUESTS_TOPICS", "e.high, e.normal,e.batch")]),
            &[],
        )
        .unwrap();
        assert_eq!(
            from_env.kafka.requests_topics,
            ["e.high", "e.normal", "e.batch"]
        );
        let from_flag = WorkerConfig::load(
            Some(&file),
            env(&[("T2V_KAFKA__REQUESTS_TOPICS", "e.high")]),
            &[("kafka.requests_topics", "only".to_string())],
        )
        .unwrap();
        assert_eq!(from_flag.kafka.requests_topics, ["only"]);
        let defaults = WorkerConfig::load(None, env(&[]), &[]).unwrap();
        assert_eq!(
            defaults.kafka.requests_topics.len(),
            3,
            "the default model's lanes"
        );
        for bad in ["", "a,a", "a,,b"] {
            let err = WorkerConfig::load(None, env(&[("T2V_KAFKA__REQUESTS_TOPICS", bad)]), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("distinct topics"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = \"file:1\"\ngroup_id = \"from-file\"\n[http]\nport = 1234\n",
        )
        .unwrap();
        let cfg = WorkerConfig::load(
            Some(&file),
            env(&[
                ("T2V_KAFKA__GROUP_ID", "from-env"),
                ("T2V_KAFKA__INSTANCE_ID", "pod-7"),
                ("T2V_KAFKA__SASL_PASSWORD", "12345"),
                ("T2V_POD_NAME", "ignored"),
                ("T2V_BROKERS", "ignored-too"),
                ("T2V_LOG__FORMAT", "json"),
            ]),
            &[("http.port", "4321".into())],
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "file:1");
        assert_eq!(cfg.kafka.group_id, "from-env");
        assert_eq!(cfg.kafka.instance_id, "pod-7");
        assert_eq!(cfg.kafka.sasl_password, "12345");
        assert_eq!(cfg.http.port, 4321);
        assert_eq!(cfg.log.format, LogFormat::Json);
        assert_eq!(cfg.shutdown, ShutdownConfig::default());
    }

    #[test]
    fn a_variant_loads_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            r#"
[model]
name = "wan2.2-t2v-a14b-lightning"
preset = "lightning"

[model.sampling]
steps = 6
shift = 3.5
sampler = "unipc"

[[model.loras]]
file = "/loras/high.safetensors"
expert = "transformer"

[[model.loras]]
file = "/loras/low.safetensors"
strength = 0.75
expert = "transformer_2"
"#,
        )
        .unwrap();
        let cfg = WorkerConfig::load(Some(&file), env(&[]), &[]).unwrap();
        let model = &cfg.model;
        assert_eq!(model.name, "wan2.2-t2v-a14b-lightning");
        assert_eq!(model.preset, PresetChoice::Lightning);
        assert_eq!(
            model.sampling,
            SamplingConfig {
                steps: 6,
                shift: 3.5,
                sampler: SamplerChoice::Unipc,
                ..SamplingConfig::default()
            }
        );
        assert_eq!(
            model.loras,
            [
                LoraConfig {
                    file: "/loras/high.safetensors".into(),
                    strength: 1.0,
                    expert: LoraExpert::Transformer,
                },
                LoraConfig {
                    file: "/loras/low.safetensors".into(),
                    strength: 0.75,
                    expert: LoraExpert::Transformer2,
                },
            ]
        );
        std::fs::write(
            &file,
            "[[model.loras]]\nfile = \"/l.safetensors\"\nexpert = \"transformer_3\"\n",
        )
        .unwrap();
        let err = WorkerConfig::load(Some(&file), env(&[]), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("transformer_3"), "{err}");
    }

    #[test]
    fn a_variant_loads_from_env_and_env_replaces_the_files_loras() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            "[[model.loras]]\nfile = \"/from-file.safetensors\"\nexpert = \"both\"\n",
        )
        .unwrap();
        let cfg = WorkerConfig::load(
            Some(&file),
            env(&[
                ("T2V_MODEL__NAME", "wan2.2-t2v-a14b-lightning"),
                ("T2V_MODEL__PRESET", "lightning"),
                ("T2V_MODEL__SAMPLING__GUIDANCE_SCALE", "2.5"),
                ("T2V_MODEL__SAMPLING__STEPS", "8"),
                (
                    "T2V_MODEL__LORAS",
                    "transformer:1.0:/l/high.safetensors, transformer_2:0.5:C:/l/low.safetensors",
                ),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.model.preset, PresetChoice::Lightning);
        assert_eq!(cfg.model.sampling.guidance_scale, 2.5);
        assert_eq!(cfg.model.sampling.steps, 8);
        assert_eq!(
            cfg.model.loras,
            [
                LoraConfig {
                    file: "/l/high.safetensors".into(),
                    strength: 1.0,
                    expert: LoraExpert::Transformer,
                },
                LoraConfig {
                    file: "C:/l/low.safetensors".into(),
                    strength: 0.5,
                    expert: LoraExpert::Transformer2,
                },
            ]
        );
        let cleared =
            WorkerConfig::load(Some(&file), env(&[("T2V_MODEL__LORAS", "")]), &[]).unwrap();
        assert!(cleared.model.loras.is_empty(), "{:?}", cleared.model.loras);
        for (bad, names) in [
            ("transformer:/l.safetensors", "expert:strength:file"),
            ("high:1.0:/l.safetensors", "unknown expert"),
            ("both:strong:/l.safetensors", "not a number"),
        ] {
            let err = WorkerConfig::load(None, env(&[("T2V_MODEL__LORAS", bad)]), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(names) && err.contains(bad), "{bad:?}: {err}");
        }
    }

    #[test]
    fn variant_settings_are_checked() {
        let lora = LoraConfig {
            file: "/l.safetensors".into(),
            strength: 1.0,
            expert: LoraExpert::Both,
        };
        type Edit = fn(&mut ModelConfig);
        let cases: [(Edit, &str); 6] = [
            (|m| m.sampling.steps = 201, "model.sampling.steps"),
            (
                |m| m.sampling.guidance_scale = 31.0,
                "model.sampling.guidance_scale",
            ),
            (
                |m| m.sampling.guidance_scale_2 = -1.0,
                "model.sampling.guidance_scale_2",
            ),
            (|m| m.sampling.shift = 0.05, "model.sampling.shift"),
            (
                |m| m.loras[0].file = " ".into(),
                "model.loras[0].file is empty",
            ),
            (
                |m| m.loras[0].strength = f64::NAN,
                "model.loras[0].strength",
            ),
        ];
        for (edit, names) in cases {
            let mut cfg = WorkerConfig::default();
            cfg.model.loras = vec![lora.clone()];
            cfg.validate().unwrap();
            edit(&mut cfg.model);
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(names), "{names}: {err}");
        }
        let mut cfg = WorkerConfig::default();
        cfg.model.loras = vec![lora];
        cfg.model.backend = Backend::Synthetic;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("backend"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(&file, "[kafka]\nbrokerz = \"x\"\n").unwrap();
        let err = WorkerConfig::load(Some(&file), env(&[]), &[]).unwrap_err();
        assert!(err.to_string().contains("brokerz"), "{err}");
    }

    #[test]
    fn drain_deadline_must_fit_the_poll_interval() {
        let mut cfg = WorkerConfig::default();
        cfg.kafka.max_poll_interval_ms = 60_000;
        cfg.shutdown.drain_deadline_secs = 45;
        cfg.checkpoint.max_write_secs = 30;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("drain_deadline_secs"), "{err}");
        cfg.checkpoint.max_write_secs = 10;
        cfg.validate().unwrap();
    }

    #[test]
    fn sasl_needs_credentials() {
        let mut cfg = WorkerConfig::default();
        cfg.kafka.security_protocol = "SASL_SSL".into();
        cfg.kafka.sasl_mechanism = "SCRAM-SHA-512".into();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("SASL_USERNAME"));
        cfg.kafka.sasl_username = "u".into();
        cfg.kafka.sasl_password = "p".into();
        cfg.validate().unwrap();
    }

    #[test]
    fn telemetry_needs_an_http_endpoint_and_a_ratio() {
        let mut cfg = WorkerConfig::default();
        cfg.telemetry.otlp_endpoint = "otel-collector:4317".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
        cfg.telemetry.otlp_endpoint = "http://otel-collector:4318".into();
        cfg.telemetry.sample_ratio = 1.5;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("telemetry.sample_ratio"), "{err}");
        cfg.telemetry.sample_ratio = 0.25;
        cfg.validate().unwrap();
        let cfg = WorkerConfig::load(
            None,
            env(&[("T2V_TELEMETRY__OTLP_ENDPOINT", "https://collector:4318")]),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.telemetry.otlp_endpoint, "https://collector:4318");
    }

    /// The keys the Helm chart renders (helm/t2v-worker/templates/configmap.yaml) must load.
    #[test]
    fn the_charts_worker_toml_loads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        std::fs::write(
            &file,
            r#"
[http]
port = 9090

[kafka]
brokers = "kafka-bootstrap.kafka.svc:9092"
group_id = "t2v-workers"
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
ssl_ca_location = "/etc/kafka-tls/ca.crt"
ssl_certificate_location = "/etc/kafka-tls/tls.crt"
ssl_key_location = "/etc/kafka-tls/tls.key"

[storage]
url = "s3://t2v-videos/outputs"

[model]
dir = "/models/Wan2.2-T2V-A14B-Diffusers"
memory_budget_gib = 70.50

[shutdown]
drain_deadline_secs = 45

[checkpoint]
max_write_secs = 30

[telemetry]
otlp_endpoint = "http://otel-collector.observability.svc:4318"
service_name = "t2v-worker"
sample_ratio = 0.2500
"#,
        )
        .unwrap();
        let cfg = WorkerConfig::load(
            Some(&file),
            env(&[
                ("T2V_KAFKA__SASL_USERNAME", "user"),
                ("T2V_KAFKA__SASL_PASSWORD", "secret"),
                ("T2V_KAFKA__INSTANCE_ID", "t2v-worker-abc"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.kafka.ssl_key_location, "/etc/kafka-tls/tls.key");
        assert_eq!(cfg.model.dir, "/models/Wan2.2-T2V-A14B-Diffusers");
        assert_eq!(cfg.model.memory_budget_gib, 70.5);
        assert_eq!(cfg.telemetry.sample_ratio, 0.25);
    }

    /// `worker.example.toml` loads and states every default exactly (so the annotated example
    /// cannot drift from the code).
    #[test]
    fn the_example_file_states_the_defaults() {
        let cfg =
            WorkerConfig::load(Some(&root().join("worker.example.toml")), env(&[]), &[]).unwrap();
        let mut expected = WorkerConfig::default();
        // The example shows a local S3 bucket and the synthetic backend, so it runs as is.
        expected.storage.url = "s3://t2v/outputs".into();
        expected.model.backend = Backend::Synthetic;
        assert_eq!(cfg, expected);
    }

    /// schemas/worker_config.schema.json is generated from these structs; regenerate with
    /// `T2V_WRITE_SCHEMAS=1 cargo test -p t2v-worker config`.
    #[test]
    fn the_committed_json_schema_is_current() {
        let path = root().join("schemas/worker_config.schema.json");
        let mut generated = serde_json::to_string_pretty(&json_schema()).unwrap();
        generated.push('\n');
        if std::env::var_os("T2V_WRITE_SCHEMAS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale — regenerate it with `T2V_WRITE_SCHEMAS=1 cargo test -p t2v-worker config`",
            path.display()
        );
    }
}
