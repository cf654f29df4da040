//! `t2v-worker doctor`: the classic deployment failures, one line each with the cause and the fix.
//! Checks: Kafka brokers reachable and the four topics present, the object store writable,
//! readable and deletable (a probe object, and whether it refuses a create-only overwrite), the
//! OTLP collector when one is configured, /dev/shm size, the model directory, and for the Wan
//! backend the GPU:
//! - [`cuda_findings`]: libtorch sees the CUDA device the config asks for (else why not: no
//!   driver, a CPU-only libtorch, libtorch_cuda not linked), and the driver supports the CUDA
//!   version libtorch was built for;
//! - [`memory_findings`]: the configured model, dtype and memory policy fit the GPU (or
//!   `memory_budget_gib`) at the default job size (FAIL otherwise) and at the largest request the
//!   fleet accepts (WARN otherwise), by t2v-pipeline's estimate, with the settings that fit.
//!
//! The decisions are plain functions of the facts gathered ([`CudaFacts`]), unit-tested without
//! a GPU.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::util::Timeout;
use t2v_pipeline::memory::{estimate, EstimateRequest, ModelConfigs};
use t2v_pipeline::wan::prompt::MAX_SEQUENCE_LENGTH;
use tch::{Device, Kind};

use crate::config::{Backend, DeviceChoice, WorkerConfig};
use crate::events::client_config;
use crate::generator::WAN_DEFAULTS;
use crate::gpu::{human, CudaVersion, Gpu, GpuMemory, TorchCuda};
use crate::preflight::{fit_hint, MemoryLimit};
use crate::storage::{Storage, StorageError};
use crate::wan::{memory_policy, resolve_dtype};

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

/// What the driver says about the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverFacts {
    pub gpu_name: String,
    pub version: String,
    /// The newest CUDA version the driver supports.
    pub cuda: CudaVersion,
    pub memory: GpuMemory,
}

/// Everything the CUDA checks decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaFacts {
    /// `tch::Cuda::is_available()`.
    pub torch_sees_cuda: bool,
    pub torch_cuda: TorchCuda,
    /// `libtorch_cuda.so` is mapped into the process.
    pub libtorch_cuda_loaded: bool,
    /// NVML's answer, or why there is none.
    pub driver: Result<DriverFacts, String>,
}

impl CudaFacts {
    /// Reads the facts of this process and host.
    pub fn gather() -> Self {
        // The bare NVML error: the findings say the cause and the fix in their own words.
        let bare = |e: crate::gpu::GpuError| match e {
            crate::gpu::GpuError::NoDriver(m) | crate::gpu::GpuError::Nvml(m) => m,
        };
        let driver = Gpu::open().map_err(bare).and_then(|gpu| {
            Ok(DriverFacts {
                gpu_name: gpu.name().map_err(bare)?,
                version: gpu.driver_version().map_err(bare)?,
                cuda: gpu.driver_cuda().map_err(bare)?,
                memory: gpu.memory().map_err(bare)?,
            })
        });
        Self {
            torch_sees_cuda: tch::Cuda::is_available(),
            torch_cuda: crate::gpu::torch_cuda(),
            libtorch_cuda_loaded: crate::gpu::libtorch_cuda_loaded(),
            driver,
        }
    }
}

/// Whether libtorch can use the GPU `device` asks for, and whether the driver is new enough for
/// libtorch's CUDA; each finding one line with the cause and the fix.
pub fn cuda_findings(device: DeviceChoice, facts: &CudaFacts) -> Vec<Finding> {
    if device == DeviceChoice::Cpu {
        return vec![finding(
            "gpu",
            true,
            "model.device = cpu: the pipeline runs on the CPU (no GPU checks)",
        )];
    }
    let setting = match device {
        DeviceChoice::Cuda => "model.device = cuda",
        _ => "model.device = auto",
    };
    let or_cpu = "or set model.device = cpu to run on the CPU on purpose";
    let mut out = Vec::new();
    let version_mismatch = match (&facts.driver, facts.torch_cuda) {
        (Ok(driver), TorchCuda::Cuda(built)) if driver.cuda < built => Some((driver, built)),
        _ => None,
    };
    if let Some((driver, built)) = version_mismatch {
        let cause = format!(
            "the NVIDIA driver {} supports CUDA up to {}, older than the CUDA {built} libtorch was built for",
            driver.version, driver.cuda
        );
        let fix = format!(
            "upgrade the node's driver to one that supports CUDA {built}, or build t2v-worker against a torch for CUDA {} or older (e.g. torch 2.11.0+cu{}{})",
            driver.cuda, driver.cuda.major, driver.cuda.minor
        );
        out.push(if driver.cuda.major < built.major || !facts.torch_sees_cuda {
            finding("gpu", false, format!("{cause} — {fix}"))
        } else {
            warning(
                "gpu",
                format!("{cause}: CUDA minor-version compatibility runs it, but kernels that need PTX JIT fail — {fix}"),
            )
        });
    }
    if facts.torch_sees_cuda {
        let Ok(driver) = &facts.driver else {
            out.push(warning(
                "gpu",
                format!("libtorch sees a CUDA device but NVML does not answer ({}): no GPU memory checks or metrics — mount the driver's libnvidia-ml.so.1 (NVIDIA container toolkit)",
                    facts.driver.as_ref().err().map_or("", String::as_str)),
            ));
            return out;
        };
        let built = match facts.torch_cuda {
            TorchCuda::Cuda(v) => format!("libtorch built for CUDA {v}"),
            _ => "libtorch's CUDA version unknown".into(),
        };
        out.push(finding(
            "gpu",
            true,
            format!(
                "{}, {} of memory, driver {} (CUDA {}), {built}",
                driver.gpu_name,
                human(driver.memory.total),
                driver.version,
                driver.cuda
            ),
        ));
        return out;
    }
    // libtorch sees no CUDA device: say why.
    let cause = match (&facts.driver, facts.torch_cuda, facts.libtorch_cuda_loaded) {
        (Err(e), _, _) => format!(
            "there is no NVIDIA driver here ({e}) — run on a GPU node with the NVIDIA driver and container toolkit, with an nvidia.com/gpu limit on the pod"
        ),
        (Ok(_), _, _) if version_mismatch.is_some() => return out,
        (Ok(d), TorchCuda::CpuOnly, _) => format!(
            "the driver shows {} but this t2v-worker was built against a CPU-only libtorch — install torch 2.11.0 with CUDA (cu130) and rebuild with LIBTORCH_USE_PYTORCH=1",
            d.gpu_name
        ),
        (Ok(d), _, false) => format!(
            "the driver shows {} but libtorch_cuda.so is not loaded (a CPU-only libtorch, or the linker's --as-needed dropped it) — build with worker/build.rs's `-Wl,--no-as-needed -ltorch_cuda` against a torch whose lib/ has libtorch_cuda.so, and put that lib/ on LD_LIBRARY_PATH",
            d.gpu_name
        ),
        (Ok(d), _, true) => format!(
            "the driver shows {} but CUDA reports no usable device — check CUDA_VISIBLE_DEVICES ({:?}), that /dev/nvidia* is mounted and the GPU is not in an exclusive mode held by another process",
            d.gpu_name,
            std::env::var("CUDA_VISIBLE_DEVICES").unwrap_or_default()
        ),
    };
    out.push(if device == DeviceChoice::Auto {
        // `auto` means "CUDA when there is one": the CPU is a legal, if slow, fallback.
        warning(
            "gpu",
            format!("{setting} falls back to the CPU (very slow for real models) because libtorch sees no CUDA device: {cause}, {or_cpu}"),
        )
    } else {
        finding(
            "gpu",
            false,
            format!("{setting} but libtorch sees no CUDA device: {cause}, {or_cpu}"),
        )
    });
    out
}

/// A job size: width × height × frames.
pub type JobSize = (i64, i64, i64);

/// The default job size (the model's defaults) and the largest request the fleet accepts.
pub fn checked_sizes() -> [JobSize; 2] {
    use t2v_producer::validate::{MAX_FRAMES, MAX_SIDE};
    [
        (
            i64::from(WAN_DEFAULTS.width),
            i64::from(WAN_DEFAULTS.height),
            i64::from(WAN_DEFAULTS.num_frames),
        ),
        (
            i64::from(MAX_SIDE),
            i64::from(MAX_SIDE),
            i64::from(MAX_FRAMES),
        ),
    ]
}

/// Whether `base` (model dtype and memory policy) fits `limit` at the default job size (FAIL if
/// not) and at the largest request the fleet accepts (WARN if not: such requests are refused by
/// the preflight); `gpu_total` adds a WARN when a budget exceeds the GPU.
pub fn memory_findings(
    configs: &ModelConfigs,
    base: &EstimateRequest,
    limit: MemoryLimit,
    gpu_total: Option<u64>,
    [default, largest]: [JobSize; 2],
) -> Vec<Finding> {
    let mut out = Vec::new();
    let what = if limit.configured {
        format!("model.memory_budget_gib ({})", human(limit.bytes))
    } else {
        format!("the GPU's {}", human(limit.bytes))
    };
    if let Some(total) = gpu_total.filter(|&t| limit.configured && limit.bytes > t) {
        out.push(warning(
            "memory",
            format!(
                "model.memory_budget_gib ({}) exceeds the GPU's {}: the preflight lets through jobs that run out of memory — lower it, or set 0 for the GPU's total",
                human(limit.bytes),
                human(total)
            ),
        ));
    }
    let overhead = if limit.overhead > 0 {
        format!(" + {} CUDA context", human(limit.overhead))
    } else {
        String::new()
    };
    for (i, (width, height, num_frames)) in [default, largest].into_iter().enumerate() {
        let request = EstimateRequest {
            width,
            height,
            num_frames,
            ..*base
        };
        let label = if i == 0 {
            "the default job"
        } else {
            "the largest request the fleet accepts,"
        };
        let peak = match estimate(configs, &request) {
            Ok(e) => e.peak,
            Err(e) => {
                out.push(finding(
                    "memory",
                    false,
                    format!("no memory estimate: {e} — check the model's config.json files"),
                ));
                return out;
            }
        };
        let sized = format!(
            "{label} {width}×{height}×{num_frames} needs an estimated {}{overhead}",
            human(peak)
        );
        if peak <= limit.room() {
            out.push(finding("memory", true, format!("{sized}, within {what}")));
            continue;
        }
        let fix = fit_hint(configs, &request, limit.room());
        out.push(if i == 0 {
            finding(
                "memory",
                false,
                format!("{sized}, more than {what} — {fix}"),
            )
        } else {
            warning(
                "memory",
                format!("{sized}, more than {what}: jobs over it are refused with RESOURCE_EXHAUSTED before they start — {fix}"),
            )
        });
    }
    out
}

/// The GPU checks of the Wan backend.
fn gpu(cfg: &WorkerConfig) -> Vec<Finding> {
    if cfg.model.backend != Backend::Wan {
        return Vec::new();
    }
    let facts = CudaFacts::gather();
    let mut out = cuda_findings(cfg.model.device, &facts);
    let device = match cfg.model.device {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => Device::Cuda(0),
        DeviceChoice::Auto if facts.torch_sees_cuda => Device::Cuda(0),
        DeviceChoice::Auto => Device::Cpu,
    };
    let gpu_total = facts.driver.as_ref().ok().map(|d| d.memory.total);
    let limit = MemoryLimit::new(cfg.model.memory_budget_gib, device, gpu_total);
    // An empty model.dir is the model check's failure already.
    let Some(limit) = limit.filter(|_| !cfg.model.dir.is_empty()) else {
        return out;
    };
    let configs = match ModelConfigs::from_dir(std::path::Path::new(&cfg.model.dir)) {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(
                "memory",
                false,
                format!(
                    "cannot read the model's configs for a memory estimate: {e} — fix model.dir"
                ),
            ));
            return out;
        }
    };
    let base = EstimateRequest {
        width: 0,
        height: 0,
        num_frames: 0,
        dtype: resolve_dtype(cfg.model.dtype, device),
        vae_dtype: Kind::Float,
        text_len: MAX_SEQUENCE_LENGTH as i64,
        policy: memory_policy(cfg.model.memory_policy),
    };
    out.extend(memory_findings(
        &configs,
        &base,
        limit,
        gpu_total,
        checked_sizes(),
    ));
    out
}

/// The checks `t2v-worker run` makes before it loads anything: this host and its configuration
/// (/dev/shm, the model directory, the GPU). A failure there never fixes itself, so the worker
/// stops at once. Kafka and storage are left out: an outage there is retried, not a reason to
/// crash-loop.
pub fn startup(cfg: &WorkerConfig) -> Vec<Finding> {
    let mut findings = vec![shm(), model(cfg)];
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
    use t2v_pipeline::memory::MemoryPolicy;
    use t2v_pipeline::wan::text_encoder::UMT5Config;
    use t2v_pipeline::wan::vae::VaeConfig;
    use t2v_pipeline::wan::TransformerConfig;

    use super::*;
    use crate::gpu::GIB;

    const V13: CudaVersion = CudaVersion {
        major: 13,
        minor: 0,
    };

    fn driver(cuda: CudaVersion) -> Result<DriverFacts, String> {
        Ok(DriverFacts {
            gpu_name: "NVIDIA H100 80GB HBM3".into(),
            version: "580.82.07".into(),
            cuda,
            memory: GpuMemory {
                used: GIB,
                total: 80 * GIB,
            },
        })
    }

    fn facts(
        sees: bool,
        torch: TorchCuda,
        loaded: bool,
        drv: Result<DriverFacts, String>,
    ) -> CudaFacts {
        CudaFacts {
            torch_sees_cuda: sees,
            torch_cuda: torch,
            libtorch_cuda_loaded: loaded,
            driver: drv,
        }
    }

    fn one_failure(found: &[Finding]) -> &str {
        let fails: Vec<&Finding> = found.iter().filter(|f| !f.ok).collect();
        assert_eq!(fails.len(), 1, "{found:?}");
        &fails[0].message
    }

    #[test]
    fn no_cuda_names_the_cause_and_the_fix() {
        let no_driver = facts(
            false,
            TorchCuda::Cuda(V13),
            false,
            Err("libnvidia-ml.so.1: cannot open shared object file".into()),
        );
        let found = cuda_findings(DeviceChoice::Cuda, &no_driver);
        let m = one_failure(&found);
        assert!(
            m.contains(
                "libtorch sees no CUDA device: there is no NVIDIA driver here (libnvidia-ml.so.1"
            ),
            "{m}"
        );
        assert!(
            m.contains("nvidia.com/gpu")
                && m.ends_with("or set model.device = cpu to run on the CPU on purpose"),
            "{m}"
        );
        // `auto` may fall back to the CPU: the same cause and fix, as a warning.
        let found = cuda_findings(DeviceChoice::Auto, &no_driver);
        assert!(
            found.len() == 1 && found[0].ok && found[0].warning,
            "{found:?}"
        );
        assert!(
            found[0]
                .message
                .starts_with("model.device = auto falls back to the CPU")
                && found[0].message.contains("there is no NVIDIA driver here"),
            "{found:?}"
        );
        let cpu_only = cuda_findings(
            DeviceChoice::Cuda,
            &facts(false, TorchCuda::CpuOnly, false, driver(V13)),
        );
        let m = one_failure(&cpu_only);
        assert!(m.contains("the driver shows NVIDIA H100 80GB HBM3 but this t2v-worker was built against a CPU-only libtorch — install torch 2.11.0 with CUDA"), "{m}");
        let unlinked = cuda_findings(
            DeviceChoice::Cuda,
            &facts(false, TorchCuda::Cuda(V13), false, driver(V13)),
        );
        let m = one_failure(&unlinked);
        assert!(
            m.contains("libtorch_cuda.so is not loaded")
                && m.contains("--no-as-needed -ltorch_cuda"),
            "{m}"
        );
        let hidden = cuda_findings(
            DeviceChoice::Cuda,
            &facts(false, TorchCuda::Cuda(V13), true, driver(V13)),
        );
        assert!(
            one_failure(&hidden).contains("CUDA_VISIBLE_DEVICES"),
            "{hidden:?}"
        );
        let cpu = cuda_findings(DeviceChoice::Cpu, &no_driver);
        assert!(cpu.len() == 1 && cpu[0].ok && !cpu[0].warning, "{cpu:?}");
    }

    #[test]
    fn a_driver_older_than_libtorchs_cuda_fails_naming_both() {
        let old = CudaVersion {
            major: 12,
            minor: 4,
        };
        let found = cuda_findings(
            DeviceChoice::Cuda,
            &facts(false, TorchCuda::Cuda(V13), true, driver(old)),
        );
        let m = one_failure(&found);
        assert!(m.starts_with("the NVIDIA driver 580.82.07 supports CUDA up to 12.4, older than the CUDA 13.0 libtorch was built for — upgrade the node's driver to one that supports CUDA 13.0, or build t2v-worker against a torch for CUDA 12.4 or older (e.g. torch 2.11.0+cu124)"), "{m}");
        // Same major, older minor, and libtorch still runs: a warning, not a failure.
        let newer = CudaVersion {
            major: 13,
            minor: 2,
        };
        let found = cuda_findings(
            DeviceChoice::Auto,
            &facts(true, TorchCuda::Cuda(newer), true, driver(V13)),
        );
        assert!(found.iter().all(|f| f.ok), "{found:?}");
        assert!(
            found[0].warning && found[0].message.contains("minor-version compatibility"),
            "{found:?}"
        );
        assert!(!found[1].warning && found[1].message.contains("NVIDIA H100 80GB HBM3, 80.00 GiB of memory, driver 580.82.07 (CUDA 13.0), libtorch built for CUDA 13.2"), "{found:?}");
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

    #[test]
    fn a_healthy_gpu_is_one_ok_line() {
        let found = cuda_findings(
            DeviceChoice::Cuda,
            &facts(true, TorchCuda::Cuda(V13), true, driver(V13)),
        );
        assert_eq!(found.len(), 1);
        assert!(found[0].ok && !found[0].warning);
        assert_eq!(
            format!("{}", found[0]).split_whitespace().next(),
            Some("ok")
        );
    }

    fn a14b() -> ModelConfigs {
        ModelConfigs {
            transformer: TransformerConfig::wan22_t2v_a14b(),
            transformer_2: Some(TransformerConfig::wan22_t2v_a14b()),
            text_encoder: UMT5Config::umt5_xxl(),
            vae: VaeConfig::default(),
        }
    }

    fn base(policy: MemoryPolicy) -> EstimateRequest {
        EstimateRequest {
            width: 0,
            height: 0,
            num_frames: 0,
            dtype: Kind::BFloat16,
            vae_dtype: Kind::Float,
            text_len: 512,
            policy,
        }
    }

    #[test]
    fn a14b_memory_on_an_h100_and_on_a_40gb_gpu() {
        let h100 = 81_559u64 << 20;
        let limit = MemoryLimit::new(0.0, Device::Cuda(0), Some(h100)).unwrap();
        let resident = base(MemoryPolicy::all_resident());
        let found = memory_findings(&a14b(), &resident, limit, Some(h100), checked_sizes());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].ok && !found[0].warning, "{found:?}");
        assert!(
            found[0]
                .message
                .starts_with("the default job 832×480×81 needs an estimated ")
                && found[0]
                    .message
                    .ends_with(" + 1.00 GiB CUDA context, within the GPU's 79.65 GiB"),
            "{found:?}"
        );
        assert!(found[1].ok && found[1].warning, "{found:?}");
        assert!(
            found[1].message.starts_with(
                "the largest request the fleet accepts, 1920×1920×241 needs an estimated "
            ),
            "{found:?}"
        );
        assert!(found[1].message.contains("jobs over it are refused with RESOURCE_EXHAUSTED before they start — settings that fit: "), "{found:?}");
        assert!(
            found[1].message.contains(" with 241 frames ("),
            "a smaller square size: {found:?}"
        );

        let a100 = 40_960u64 << 20;
        let limit = MemoryLimit::new(0.0, Device::Cuda(0), Some(a100)).unwrap();
        let found = memory_findings(&a14b(), &resident, limit, Some(a100), checked_sizes());
        assert!(!found[0].ok, "{found:?}");
        assert!(found[0].message.contains("more than the GPU's 40.00 GiB — settings that fit: 832×480×81 with [model] memory_policy = \"low-memory\""), "{found:?}");
        let low = memory_findings(
            &a14b(),
            &base(MemoryPolicy::low_memory()),
            limit,
            Some(a100),
            checked_sizes(),
        );
        assert!(low[0].ok, "{low:?}");
    }

    #[test]
    fn a_budget_above_the_gpu_is_a_warning() {
        let gpu = 24 * GIB;
        let limit = MemoryLimit::new(100.0, Device::Cuda(0), Some(gpu)).unwrap();
        let found = memory_findings(
            &a14b(),
            &base(MemoryPolicy::low_memory()),
            limit,
            Some(gpu),
            checked_sizes(),
        );
        assert!(
            found[0].warning
                && found[0].message.starts_with(
                    "model.memory_budget_gib (100.00 GiB) exceeds the GPU's 24.00 GiB"
                ),
            "{found:?}"
        );
        assert!(
            found[1].ok
                && found[1]
                    .message
                    .contains("within model.memory_budget_gib (100.00 GiB)"),
            "{found:?}"
        );
    }
}
