//! The GPU findings of `t2v-worker doctor` for the Wan backend:
//! - [`cuda_findings`]: libtorch sees the CUDA device the config asks for (else why not: no
//!   driver, a CPU-only libtorch, libtorch_cuda not linked), and the driver supports the CUDA
//!   version libtorch was built for;
//! - [`memory_findings`]: the configured model, dtype and memory policy fit the GPU (or
//!   `memory_budget_gib`) at the default job size (FAIL otherwise) and at the largest request the
//!   fleet accepts (WARN otherwise), by t2v-pipeline's estimate, with the settings that fit;
//! - [`fp8_finding`]: with `model.dtype = "fp8"`, the device runs FP8 matrix products.
//!
//! The decisions are plain functions of the facts gathered ([`CudaFacts`]), unit-tested without
//! a GPU.

use t2v_pipeline::memory::{estimate, EstimateRequest, ImageEncode, ModelConfigs};
use t2v_pipeline::model_dir::ModelDir;
use t2v_pipeline::wan::prompt::MAX_SEQUENCE_LENGTH;
use tch::{Device, Kind};

use super::{finding, warning, Finding};
use crate::config::{Backend, DeviceChoice, DtypeChoice, WorkerConfig};
use crate::generate::preflight::{check_dtype, fit_hint, MemoryLimit};
use crate::generate::wan::{memory_policy, published_defaults, resolve_dtype};
use crate::gpu::{human, CudaVersion, Gpu, GpuError, GpuMemory, TorchCuda};
use t2v_contract::defaults::ModelDefaults;

mod devices;

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
    /// NVML's answer, or why there is none (the findings quote [`GpuError::nvml_message`] and
    /// say the fix in their own words).
    pub driver: Result<DriverFacts, GpuError>,
}

impl CudaFacts {
    /// Reads the facts of this process and host.
    pub fn gather() -> Self {
        let driver = Gpu::open().and_then(|gpu| {
            Ok(DriverFacts {
                gpu_name: gpu.name()?,
                version: gpu.driver_version()?,
                cuda: gpu.driver_cuda()?,
                memory: gpu.memory()?,
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
    let mismatch = version_mismatch(facts);
    let mut out: Vec<Finding> = mismatch
        .map(|(driver, built)| driver_too_old(driver, built, facts.torch_sees_cuda))
        .into_iter()
        .collect();
    if facts.torch_sees_cuda {
        out.push(cuda_device_seen(facts));
    } else if mismatch.is_none() {
        // A too-old driver is the cause already said; otherwise say why libtorch sees no device.
        out.push(no_cuda_device(device, &no_cuda_cause(facts)));
    }
    out
}

/// The driver and libtorch's CUDA version when the driver supports only an older CUDA than
/// libtorch was built for.
fn version_mismatch(facts: &CudaFacts) -> Option<(&DriverFacts, CudaVersion)> {
    match (&facts.driver, facts.torch_cuda) {
        (Ok(driver), TorchCuda::Cuda(built)) if driver.cuda < built => Some((driver, built)),
        _ => None,
    }
}

/// The driver is older than libtorch's CUDA: a failure when that stops libtorch (an older major
/// version, or no device seen), else a warning (minor-version compatibility runs it).
fn driver_too_old(driver: &DriverFacts, built: CudaVersion, torch_sees_cuda: bool) -> Finding {
    let cause = format!(
        "the NVIDIA driver {} supports CUDA up to {}, older than the CUDA {built} libtorch was built for",
        driver.version, driver.cuda
    );
    let fix = format!(
        "upgrade the node's driver to one that supports CUDA {built}, or build t2v-worker against a torch for CUDA {} or older (e.g. torch 2.11.0+cu{}{})",
        driver.cuda, driver.cuda.major, driver.cuda.minor
    );
    if driver.cuda.major < built.major || !torch_sees_cuda {
        finding("gpu", false, format!("{cause} — {fix}"))
    } else {
        warning(
            "gpu",
            format!("{cause}: CUDA minor-version compatibility runs it, but kernels that need PTX JIT fail — {fix}"),
        )
    }
}

/// libtorch sees a CUDA device: the GPU, its memory and the CUDA versions, or a warning when
/// NVML does not answer.
fn cuda_device_seen(facts: &CudaFacts) -> Finding {
    let driver = match &facts.driver {
        Ok(driver) => driver,
        Err(e) => {
            return warning(
                "gpu",
                format!("libtorch sees a CUDA device but NVML does not answer ({}): no GPU memory checks or metrics — mount the driver's libnvidia-ml.so.1 (NVIDIA container toolkit)", e.nvml_message()),
            )
        }
    };
    let built = match facts.torch_cuda {
        TorchCuda::Cuda(v) => format!("libtorch built for CUDA {v}"),
        _ => "libtorch's CUDA version unknown".into(),
    };
    finding(
        "gpu",
        true,
        format!(
            "{}, {} of memory, driver {} (CUDA {}), {built}",
            driver.gpu_name,
            human(driver.memory.total),
            driver.version,
            driver.cuda
        ),
    )
}

/// Why libtorch sees no CUDA device (when the driver is not too old), with the fix.
fn no_cuda_cause(facts: &CudaFacts) -> String {
    match (&facts.driver, facts.torch_cuda, facts.libtorch_cuda_loaded) {
        (Err(e), _, _) => format!(
            "there is no NVIDIA driver here ({}) — run on a GPU node with the NVIDIA driver and container toolkit, with an nvidia.com/gpu limit on the pod",
            e.nvml_message()
        ),
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
    }
}

/// libtorch sees no CUDA device for `device` (`cuda` or `auto`): a failure for `cuda`, a warning
/// for `auto`, which falls back to the CPU.
fn no_cuda_device(device: DeviceChoice, cause: &str) -> Finding {
    let setting = match device {
        DeviceChoice::Cuda => "model.device = cuda",
        _ => "model.device = auto",
    };
    let or_cpu = "or set model.device = cpu to run on the CPU on purpose";
    if device == DeviceChoice::Auto {
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
    }
}

/// A job size: width × height × frames.
pub type JobSize = (i64, i64, i64);

/// The default job size of a model with these published `defaults` (a TI2V-5B fleet's default
/// job is 1280x704 with 121 frames, a T2V-A14B fleet's 1280x720 with 81) and the largest request
/// the fleet accepts.
pub fn checked_sizes(defaults: &ModelDefaults) -> [JobSize; 2] {
    use t2v_contract::validate::{MAX_FRAMES, MAX_SIDE};
    [
        (
            i64::from(defaults.width),
            i64::from(defaults.height),
            i64::from(defaults.num_frames),
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
    let mut out: Vec<Finding> = budget_above_gpu(limit, gpu_total).into_iter().collect();
    for (size, is_default) in [(default, true), (largest, false)] {
        match size_fits(configs, base, limit, size, is_default) {
            Ok(found) => out.push(found),
            Err(no_estimate) => {
                out.push(no_estimate);
                break;
            }
        }
    }
    out
}

/// A WARN when `model.memory_budget_gib` is set above the GPU's memory.
fn budget_above_gpu(limit: MemoryLimit, gpu_total: Option<u64>) -> Option<Finding> {
    let total = gpu_total.filter(|&t| limit.configured && limit.bytes > t)?;
    Some(warning(
        "memory",
        format!(
            "model.memory_budget_gib ({}) exceeds the GPU's {}: the preflight lets through jobs that run out of memory — lower it, or set 0 for the GPU's total",
            human(limit.bytes),
            human(total)
        ),
    ))
}

/// Whether the job `size` fits `limit`: OK, or (with the settings that fit) a FAIL for the
/// default job and a WARN for the largest request; `Err` when there is no estimate at all.
fn size_fits(
    configs: &ModelConfigs,
    base: &EstimateRequest,
    limit: MemoryLimit,
    (width, height, num_frames): JobSize,
    is_default: bool,
) -> Result<Finding, Finding> {
    let request = EstimateRequest {
        width,
        height,
        num_frames,
        ..*base
    };
    let peak = estimate(configs, &request).map(|e| e.peak).map_err(|e| {
        finding(
            "memory",
            false,
            format!("no memory estimate: {e} — check the model's config.json files"),
        )
    })?;
    let label = if is_default {
        "the default job"
    } else {
        "the largest request the fleet accepts,"
    };
    let overhead = if limit.overhead > 0 {
        format!(" + {} CUDA context", human(limit.overhead))
    } else {
        String::new()
    };
    let sized = format!(
        "{label} {width}×{height}×{num_frames} needs an estimated {}{overhead}",
        human(peak)
    );
    let what = if limit.configured {
        format!("model.memory_budget_gib ({})", human(limit.bytes))
    } else {
        format!("the GPU's {}", human(limit.bytes))
    };
    if peak <= limit.room() {
        return Ok(finding("memory", true, format!("{sized}, within {what}")));
    }
    let fix = fit_hint(configs, &request, limit.room());
    Ok(if is_default {
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
    })
}

/// With `model.dtype = "fp8"`: whether `device` runs FP8 matrix products (the load refuses it
/// otherwise, in the same words).
fn fp8_finding(dtype: DtypeChoice, device: Device) -> Option<Finding> {
    if dtype != DtypeChoice::Fp8 {
        return None;
    }
    Some(match check_dtype(resolve_dtype(dtype, device), device) {
        Ok(()) => finding(
            "dtype",
            true,
            "model.dtype = fp8: this GPU runs row-wise FP8 _scaled_mm (block linears in e4m3, the rest in bf16)",
        ),
        Err(e) => finding("dtype", false, e.to_string()),
    })
}

/// The GPU checks of the Wan backend.
pub(super) fn gpu(cfg: &WorkerConfig) -> Vec<Finding> {
    if cfg.model.backend != Backend::Wan {
        return Vec::new();
    }
    let facts = CudaFacts::gather();
    let mut out = cuda_findings(cfg.model.device, &facts);
    out.extend(devices::findings(cfg, facts.torch_sees_cuda));
    let device = match cfg.model.device {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda => Device::Cuda(0),
        DeviceChoice::Auto if facts.torch_sees_cuda => Device::Cuda(0),
        DeviceChoice::Auto => Device::Cpu,
    };
    out.extend(fp8_finding(cfg.model.dtype, device));
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
        image: needed_image_encode(&cfg.model.dir),
    };
    out.extend(memory_findings(
        &configs,
        &base,
        limit,
        gpu_total,
        checked_sizes(&published_defaults(std::path::Path::new(&cfg.model.dir))),
    ));
    out
}

/// The image encode every job of the model in `dir` runs: an image-to-video model's jobs all
/// carry one, so its estimate counts that phase.
fn needed_image_encode(dir: &str) -> ImageEncode {
    ModelDir::open(std::path::Path::new(dir))
        .and_then(|dir| dir.kind())
        .map_or(ImageEncode::None, |kind| {
            ImageEncode::of(kind, kind.requires_image())
        })
}

#[cfg(test)]
mod tests {
    use t2v_pipeline::memory::MemoryPolicy;

    use super::*;
    use crate::gpu::GIB;

    const V13: CudaVersion = CudaVersion {
        major: 13,
        minor: 0,
    };

    fn driver(cuda: CudaVersion) -> Result<DriverFacts, GpuError> {
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
        drv: Result<DriverFacts, GpuError>,
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
            Err(GpuError::NoDriver(
                "libnvidia-ml.so.1: cannot open shared object file".into(),
            )),
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
    fn a_device_without_nvml_is_a_warning_quoting_nvml() {
        let found = cuda_findings(
            DeviceChoice::Cuda,
            &facts(
                true,
                TorchCuda::Cuda(V13),
                true,
                Err(GpuError::Nvml("Insufficient Permissions".into())),
            ),
        );
        assert!(
            found.len() == 1 && found[0].ok && found[0].warning,
            "{found:?}"
        );
        assert!(found[0].message.starts_with("libtorch sees a CUDA device but NVML does not answer (Insufficient Permissions): no GPU memory checks"), "{found:?}");
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

    fn base(policy: MemoryPolicy) -> EstimateRequest {
        EstimateRequest {
            width: 0,
            height: 0,
            num_frames: 0,
            dtype: Kind::BFloat16,
            vae_dtype: Kind::Float,
            text_len: 512,
            policy,
            image: ImageEncode::None,
        }
    }

    #[test]
    fn the_default_job_checked_is_the_models_own() {
        use t2v_contract::defaults::{WAN22_T2V_A14B, WAN22_TI2V_5B};
        assert_eq!(checked_sizes(&WAN22_TI2V_5B)[0], (1280, 704, 121));
        let a14b = &WAN22_T2V_A14B;
        assert_eq!(
            checked_sizes(a14b)[0],
            (
                i64::from(a14b.width),
                i64::from(a14b.height),
                i64::from(a14b.num_frames)
            )
        );
        assert_eq!(checked_sizes(&WAN22_TI2V_5B)[1], checked_sizes(a14b)[1]);
        // A directory whose kind cannot be read is checked at T2V-A14B's size (its load
        // fails with the reason).
        assert_eq!(
            published_defaults(std::path::Path::new("/nonexistent")),
            WAN22_T2V_A14B
        );
    }

    #[test]
    fn a14b_memory_on_an_h100_and_on_a_40gb_gpu() {
        let h100 = 81_559u64 << 20;
        let limit = MemoryLimit::new(0.0, Device::Cuda(0), Some(h100)).unwrap();
        let resident = base(MemoryPolicy::all_resident());
        let found = memory_findings(
            &ModelConfigs::wan22_t2v_a14b(),
            &resident,
            limit,
            Some(h100),
            checked_sizes(&t2v_contract::defaults::WAN22_T2V_A14B),
        );
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
        let found = memory_findings(
            &ModelConfigs::wan22_t2v_a14b(),
            &resident,
            limit,
            Some(a100),
            checked_sizes(&t2v_contract::defaults::WAN22_T2V_A14B),
        );
        assert!(!found[0].ok, "{found:?}");
        assert!(found[0].message.contains("more than the GPU's 40.00 GiB — settings that fit: 832×480×81 with [model] memory_policy = \"low-memory\""), "{found:?}");
        let low = memory_findings(
            &ModelConfigs::wan22_t2v_a14b(),
            &base(MemoryPolicy::low_memory()),
            limit,
            Some(a100),
            checked_sizes(&t2v_contract::defaults::WAN22_T2V_A14B),
        );
        assert!(low[0].ok, "{low:?}");
    }

    #[test]
    fn fp8_on_the_cpu_fails_the_doctor_with_the_fix() {
        assert!(fp8_finding(DtypeChoice::Bf16, Device::Cpu).is_none());
        let f = fp8_finding(DtypeChoice::Fp8, Device::Cpu).unwrap();
        assert!(!f.ok && f.check == "dtype", "{f:?}");
        assert!(f.message.contains("set model.dtype"), "{}", f.message);
    }

    #[test]
    fn a_budget_above_the_gpu_is_a_warning() {
        let gpu = 24 * GIB;
        let limit = MemoryLimit::new(100.0, Device::Cuda(0), Some(gpu)).unwrap();
        let found = memory_findings(
            &ModelConfigs::wan22_t2v_a14b(),
            &base(MemoryPolicy::low_memory()),
            limit,
            Some(gpu),
            checked_sizes(&t2v_contract::defaults::WAN22_T2V_A14B),
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
