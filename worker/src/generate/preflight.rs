//! The memory preflight: before any work, a job's peak as t2v-pipeline's [`estimate`] predicts
//! it (plus [`CUDA_OVERHEAD`] on a GPU) must fit the [`MemoryLimit`] — `[model]
//! memory_budget_gib`, or the GPU's total memory. The estimate already counts the resident
//! weights, so it is compared with the device's *total*, not with what is free once they are
//! loaded. A job that cannot fit fails at once with `GenerateError::OutOfMemory` naming the
//! estimate, the limit and [`settings_that_fit`], instead of crashing minutes later; after a
//! real CUDA OOM, [`torch_oom_room`] reads from libtorch's message how much the process could
//! have used, so the hints fit that. [`check_dtype`] refuses a weight dtype the device cannot
//! run (FP8 on the CPU or on a GPU before compute capability 8.9) before anything loads.

use t2v_pipeline::memory::{estimate, EstimateRequest, MemoryPolicy, ModelConfigs};
use t2v_pipeline::wan::fp8;
use tch::{Device, Kind};

use crate::generate::GenerateError;
use crate::gpu::{human, GIB};

/// Device memory the estimate (tensors only) leaves out on a GPU: the CUDA context (about
/// 0.5 GiB), cuBLAS/cuDNN workspaces and the caching allocator's rounding.
pub const CUDA_OVERHEAD: u64 = GIB;

/// What a job's estimated peak must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// Added to the estimate before comparing: [`CUDA_OVERHEAD`] on a GPU, 0 on the CPU.
    pub overhead: u64,
    /// `true`: `[model] memory_budget_gib`; `false`: the GPU's total memory.
    pub configured: bool,
}

impl MemoryLimit {
    /// The limit of `[model] memory_budget_gib` (0 = `gpu_total`, the GPU's memory) on
    /// `device`; `None` when nothing is to be checked (the CPU without a budget, or a GPU
    /// whose size NVML cannot tell).
    pub fn new(budget_gib: f64, device: Device, gpu_total: Option<u64>) -> Option<Self> {
        let overhead = if device.is_cuda() { CUDA_OVERHEAD } else { 0 };
        if budget_gib > 0.0 {
            return Some(Self {
                bytes: (budget_gib * GIB as f64) as u64,
                overhead,
                configured: true,
            });
        }
        gpu_total.filter(|_| device.is_cuda()).map(|bytes| Self {
            bytes,
            overhead,
            configured: false,
        })
    }

    /// Room for the estimate: the limit less the overhead.
    pub fn room(&self) -> u64 {
        self.bytes.saturating_sub(self.overhead)
    }

    /// The limit in words: "the GPU has 79.65 GiB" or the budget and its key.
    pub fn describe(&self) -> String {
        if self.configured {
            format!(
                "the memory budget is {} (model.memory_budget_gib)",
                human(self.bytes)
            )
        } else {
            format!("the GPU has {}", human(self.bytes))
        }
    }
}

/// Refuses a weight `dtype` that `device` cannot run, in one line with the fix: FP8 needs a
/// CUDA GPU whose `_scaled_mm` runs row-wise FP8 products (compute capability 8.9 or later:
/// Ada, Hopper); the CPU and older GPUs are refused before anything loads.
pub fn check_dtype(dtype: Kind, device: Device) -> Result<(), GenerateError> {
    if dtype != fp8::FP8 {
        return Ok(());
    }
    if !device.is_cuda() {
        return Err(GenerateError::Load(
            "model.dtype = \"fp8\" needs a CUDA GPU of compute capability 8.9 or later (Ada, Hopper) and the model runs on the CPU — set model.dtype = \"auto\" (f32 on the CPU), or model.device = \"cuda\" on such a GPU".into(),
        ));
    }
    fp8::probe_scaled_mm(device).map_err(|e| {
        GenerateError::Load(format!(
            "model.dtype = \"fp8\": this GPU does not run FP8 matrix products (compute capability below 8.9; libtorch: {}) — set model.dtype = \"bf16\", or run on an Ada or Hopper GPU",
            e.to_string().lines().next().unwrap_or_default()
        ))
    })
}

/// Larger settings the request bounds still accept: no side below this.
const MIN_SIDE: i64 = t2v_contract::validate::MIN_SIDE as i64;

/// The settings near `request` whose estimated peak fits `room` bytes, each with that peak, in
/// the request's terms: the most frames at its size, the largest size of its aspect ratio at
/// its frame count, and the low-memory policy. Empty when none of these fit.
pub fn settings_that_fit(
    configs: &ModelConfigs,
    request: &EstimateRequest,
    room: u64,
) -> Vec<String> {
    let peak = |r: &EstimateRequest| estimate(configs, r).map(|e| e.peak).ok();
    let fits = |r: &EstimateRequest| peak(r).filter(|&p| p <= room);
    let (w, h, f) = (request.width, request.height, request.num_frames);
    let mut out = Vec::new();
    let fewer = (1..f).rev().filter(|n| n % 4 == 1).find_map(|n| {
        let r = EstimateRequest {
            num_frames: n,
            ..*request
        };
        fits(&r).map(|p| format!("{w}×{h} with {n} frames ({})", human(p)))
    });
    out.extend(fewer);
    let smaller = (1..)
        .map(|k| {
            let height = h - 16 * k;
            (height * w / h.max(1) / 16 * 16, height)
        })
        .take_while(|&(width, height)| width >= MIN_SIDE && height >= MIN_SIDE)
        .find_map(|(width, height)| {
            let r = EstimateRequest {
                width,
                height,
                ..*request
            };
            fits(&r).map(|p| format!("{width}×{height} with {f} frames ({})", human(p)))
        });
    out.extend(smaller);
    if request.policy != MemoryPolicy::low_memory() {
        let r = EstimateRequest {
            policy: MemoryPolicy::low_memory(),
            ..*request
        };
        if let Some(p) = fits(&r) {
            out.push(format!(
                "{w}×{h}×{f} with [model] memory_policy = \"low-memory\" ({})",
                human(p)
            ));
        }
    }
    out
}

/// The fix part of an out-of-memory message: the settings that fit `room`, or why none do.
pub fn fit_hint(configs: &ModelConfigs, request: &EstimateRequest, room: u64) -> String {
    let fits = settings_that_fit(configs, request, room);
    if !fits.is_empty() {
        return format!("settings that fit: {}", fits.join("; "));
    }
    let smallest = EstimateRequest {
        width: MIN_SIDE,
        height: MIN_SIDE,
        num_frames: 1,
        policy: MemoryPolicy::low_memory(),
        ..*request
    };
    let floor = estimate(configs, &smallest).map_or(0, |e| e.peak);
    format!(
        "no smaller size or frame count fits: even {MIN_SIDE}×{MIN_SIDE}×1 with the low-memory policy needs {}, more than the {} left for tensors — use a GPU with more memory (or a larger model.memory_budget_gib)",
        human(floor),
        human(room)
    )
}

/// The memory this process could have used when libtorch raised a CUDA OOM, from its message
/// ("… of which 1.2 GiB is free. Including non-PyTorch memory, this process has 77.9 GiB memory
/// in use …"): what the process held plus what was free. `None` when the message says neither.
pub fn torch_oom_room(message: &str) -> Option<u64> {
    let amount = |after: &str, before: &str| -> Option<u64> {
        let start = message.find(after)? + after.len();
        let text = &message[start..];
        let text = &text[..text.find(before)?];
        let (value, unit) = text.trim().split_once(' ')?;
        let value: f64 = value.parse().ok()?;
        let scale = match unit.trim() {
            "GiB" => GIB as f64,
            "MiB" => (1u64 << 20) as f64,
            "KiB" => 1024.0,
            "bytes" | "B" => 1.0,
            _ => return None,
        };
        Some((value * scale) as u64)
    };
    let free = amount("of which ", " is free")?;
    let held = amount("this process has ", " memory in use")?;
    Some(free + held)
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use t2v_pipeline::LoadOptions;
    use t2v_proto::v1::Sampler;

    use super::*;
    use crate::generate::wan::WanGenerator;
    use crate::generate::{JobSpec, StepInfo, VideoGenerator};

    fn request(width: i64, height: i64, num_frames: i64, policy: MemoryPolicy) -> EstimateRequest {
        EstimateRequest {
            width,
            height,
            num_frames,
            dtype: Kind::BFloat16,
            vae_dtype: Kind::Float,
            text_len: 512,
            policy,
            image: t2v_pipeline::memory::ImageEncode::None,
        }
    }

    /// What NVML reports for an H100 80GB and an A100 40GB.
    const H100: u64 = 81_559 << 20;
    const A100_40: u64 = 40_960 << 20;

    #[test]
    fn fp8_is_refused_on_the_cpu_with_the_fix() {
        let error = check_dtype(fp8::FP8, Device::Cpu).unwrap_err().to_string();
        assert!(
            error.contains("model.dtype = \"fp8\" needs a CUDA GPU of compute capability 8.9")
                && error.contains("set model.dtype = \"auto\""),
            "{error}"
        );
        assert!(!error.contains('\n'), "one line: {error}");
        let refused = crate::generate::wan::load_options(
            crate::config::DeviceChoice::Cpu,
            crate::config::DtypeChoice::Fp8,
            crate::config::MemoryPolicyChoice::Resident,
        );
        assert!(matches!(refused, Err(GenerateError::Load(_))));
        for dtype in [Kind::BFloat16, Kind::Float, Kind::Half] {
            assert!(check_dtype(dtype, Device::Cpu).is_ok());
        }
    }

    #[test]
    fn fp8_estimate_holds_both_a14b_experts_in_about_half() {
        let configs = ModelConfigs::wan22_t2v_a14b();
        let bf16 = estimate(
            &configs,
            &request(832, 480, 81, MemoryPolicy::all_resident()),
        )
        .unwrap();
        let mut fp8_request = request(832, 480, 81, MemoryPolicy::all_resident());
        fp8_request.dtype = fp8::FP8;
        let fp8_estimate = estimate(&configs, &fp8_request).unwrap();
        let ratio = fp8_estimate.transformer_weights as f64 / bf16.transformer_weights as f64;
        assert!(ratio > 0.5 && ratio < 0.52, "{ratio}");
        // Both experts resident on an 80 GB card, with room left that bf16 does not leave.
        assert!(
            fp8_estimate.peak + CUDA_OVERHEAD < 60 * GIB,
            "{fp8_estimate:?}"
        );
        assert!(bf16.peak > fp8_estimate.peak + 25 * GIB);
    }

    #[test]
    fn the_limit_is_the_budget_or_the_gpus_total() {
        assert_eq!(MemoryLimit::new(0.0, Device::Cpu, None), None);
        assert_eq!(MemoryLimit::new(0.0, Device::Cpu, Some(H100)), None);
        assert_eq!(MemoryLimit::new(0.0, Device::Cuda(0), None), None);
        let budget = MemoryLimit::new(0.5, Device::Cpu, None).unwrap();
        assert_eq!((budget.bytes, budget.room()), (GIB / 2, GIB / 2));
        assert!(budget.configured);
        let gpu = MemoryLimit::new(0.0, Device::Cuda(0), Some(H100)).unwrap();
        assert_eq!((gpu.bytes, gpu.room()), (H100, H100 - CUDA_OVERHEAD));
        assert!(!gpu.configured);
        let budget_on_gpu = MemoryLimit::new(70.0, Device::Cuda(0), Some(H100)).unwrap();
        assert_eq!(budget_on_gpu.room(), 69 * GIB);
    }

    #[test]
    fn a14b_at_480p_fits_an_h100_resident_and_an_a100_40gb_only_with_low_memory() {
        let configs = ModelConfigs::wan22_t2v_a14b();
        let resident = request(832, 480, 81, MemoryPolicy::all_resident());
        let peak = estimate(&configs, &resident).unwrap().peak;
        let h100 = MemoryLimit::new(0.0, Device::Cuda(0), Some(H100)).unwrap();
        assert!(peak <= h100.room(), "{} on an H100", human(peak));
        assert!(settings_that_fit(&configs, &resident, 0).is_empty());

        let a100 = MemoryLimit::new(0.0, Device::Cuda(0), Some(A100_40)).unwrap();
        assert!(peak > a100.room());
        let fits = settings_that_fit(&configs, &resident, a100.room());
        // Both experts and umT5 alone exceed 40 GB: no size or frame count helps, swapping does.
        assert_eq!(fits.len(), 1, "{fits:?}");
        assert!(
            fits[0].starts_with("832×480×81 with [model] memory_policy = \"low-memory\" ("),
            "{fits:?}"
        );
        let low = estimate(&configs, &request(832, 480, 81, MemoryPolicy::low_memory()))
            .unwrap()
            .peak;
        assert!(fits[0].contains(&human(low)), "{fits:?}");
    }

    #[test]
    fn every_setting_offered_fits_and_is_the_largest_of_its_kind() {
        let configs = ModelConfigs::wan22_t2v_a14b();
        let low = MemoryPolicy::low_memory();
        let big = request(1280, 720, 241, low);
        let peak = |r: &EstimateRequest| estimate(&configs, r).unwrap().peak;
        let room = 40 * GIB;
        assert!(peak(&big) > room);
        let fits = settings_that_fit(&configs, &big, room);
        assert_eq!(
            fits.len(),
            2,
            "frames and size (already low-memory): {fits:?}"
        );
        // The most frames (4k + 1) that fit at 1280×720: one more step would not.
        let frames: i64 = fits[0]
            .strip_prefix("1280×720 with ")
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{fits:?}"));
        assert_eq!(frames % 4, 1);
        assert!(peak(&request(1280, 720, frames, low)) <= room);
        assert!(peak(&request(1280, 720, frames + 4, low)) > room);
        // A smaller size of about the same aspect ratio, 241 frames.
        let (size, rest) = fits[1].split_once(" with ").unwrap();
        assert!(rest.starts_with("241 frames"), "{fits:?}");
        let (w, h) = size.split_once('×').unwrap();
        let (w, h): (i64, i64) = (w.parse().unwrap(), h.parse().unwrap());
        assert!(w % 16 == 0 && h % 16 == 0 && h < 720 && (w * 9 - h * 16).abs() <= 16 * 9);
        assert!(peak(&request(w, h, 241, low)) <= room);
        assert!(peak(&request(w + 32, h + 16, 241, low)) > room, "{fits:?}");
    }

    #[test]
    fn libtorchs_oom_message_tells_the_room() {
        let message = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.50 GiB is free. Including non-PyTorch memory, this process has 60.00 GiB memory in use. Of the allocated memory 58.1 GiB is allocated by PyTorch";
        assert_eq!(torch_oom_room(message), Some(61 * GIB + GIB / 2));
        let mib = "… of which 512.00 MiB is free. Including non-PyTorch memory, this process has 1.00 GiB memory in use.";
        assert_eq!(torch_oom_room(mib), Some(GIB + GIB / 2));
        assert_eq!(
            torch_oom_room("DefaultCPUAllocator: can't allocate memory"),
            None
        );
    }

    /// The tiny two-expert model of `make fixtures` on the CPU with a budget: a job over it is
    /// refused before any step runs, naming the estimate, the budget and settings that fit; the
    /// same generator then runs a job that fits.
    #[test]
    fn a_job_over_the_budget_is_refused_up_front_and_the_next_one_runs() {
        let root = std::env::var_os("T2V_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures")
            });
        let dir = root.join("wan_pipeline/two_experts");
        let options = LoadOptions::new(Device::Cpu, Kind::Float);
        let mut generator = WanGenerator::load(&dir, "tiny", options)
            .unwrap()
            .with_memory_budget(0.0);
        assert_eq!(generator.memory_limit(), None, "the CPU without a budget");
        generator = generator.with_memory_budget(0.05);
        let job = |width: u32, height: u32, num_frames: u32| JobSpec {
            prompt: "a cat".into(),
            width,
            height,
            num_frames,
            steps: 2,
            sampler: Sampler::FlowEuler,
            ..crate::generate::tests::spec(1)
        };
        let mut steps = 0;
        let refused = generator.generate(&job(512, 512, 81), None, &mut |_: StepInfo| {
            steps += 1;
            ControlFlow::Continue(())
        });
        let Err(GenerateError::OutOfMemory { message }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(steps, 0, "refused before any step");
        assert!(
            message.starts_with("512×512×81 needs an estimated 1.")
                && message.contains(" GiB but the memory budget is 51.2 MiB (model.memory_budget_gib) — settings that fit: "),
            "{message}"
        );
        // The first setting offered, e.g. "80×80 with 81 frames (45.1 MiB)", passes and runs.
        let offered = message.split("settings that fit: ").nth(1).unwrap();
        let (size, rest) = offered.split_once(" with ").unwrap();
        let (w, h) = size.split_once('×').unwrap();
        let frames = rest.split(' ').next().unwrap();
        let (w, h, frames) = (
            w.parse().unwrap(),
            h.parse().unwrap(),
            frames.parse().unwrap(),
        );
        assert!(w < 512 || frames < 81, "{message}");
        let done = generator
            .generate(&job(w, h, frames), None, &mut |_: StepInfo| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!((done.frames.width, done.frames.count), (w, frames));
    }
}
