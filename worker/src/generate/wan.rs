//! The Wan2.2 pipeline (t2v-pipeline's [`WanT2V`]) behind [`VideoGenerator`].
//!
//! - [`WanGenerator::load`] resolves `[model] device / dtype / memory_policy` and loads the
//!   diffusers-format directory; the model revision is a short digest of its configs.
//! - [`WanGenerator::run`] maps a [`JobSpec`] onto [`GenerationParams`] (prompts longer than the
//!   token limit are refused, not truncated) and returns the pipeline's f32 frames; it resumes
//!   from a [`Checkpoint`] (a t2v-pipeline [`DenoiseState`] file) and takes one whenever the
//!   hooks ask;
//!   [`VideoGenerator::generate`] converts them to RGB24 as diffusers' `numpy_to_pil` does.
//! - Pipeline errors become [`GenerateError`]s; out-of-memory messages name settings that fit.
//! - [`WanGenerator::with_memory_budget`] turns on the memory preflight ([`crate::generate::preflight`]):
//!   a job whose estimated peak does not fit fails with [`GenerateError::OutOfMemory`] before
//!   any work, naming the estimate, the limit and settings that fit.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use t2v_pipeline::checkpoint::DenoiseState;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::memory::{estimate, EstimateRequest, MemoryPolicy};
use t2v_pipeline::scheduler::SamplerKind;
use t2v_pipeline::PipelineError;
use t2v_pipeline::{GenerationOutput, GenerationParams, LoadOptions, WanT2V};
use t2v_proto::v1::Sampler;
use tch::{Device, Kind, Tensor};

use t2v_contract::defaults::{SINGLE_EXPERT_GUIDANCE, WAN22_T2V_A14B};

use crate::config::{DeviceChoice, DtypeChoice, MemoryPolicyChoice};
use crate::generate::preflight::{fit_hint, torch_oom_room, MemoryLimit};
use crate::generate::{
    Frames, GenerateError, Generated, JobSpec, ModelInfo, PipelineTimings, StepHooks, StepInfo,
    VideoGenerator,
};
use crate::gpu::{human, Gpu};
use crate::job::checkpoints::{checkpoint_metadata, Checkpoint};

/// The device `choice` names; `auto` takes CUDA device 0 when libtorch sees one.
pub fn resolve_device(choice: DeviceChoice) -> Result<Device, GenerateError> {
    match choice {
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceChoice::Cuda => Err(GenerateError::Load(
            "device = cuda but libtorch sees no CUDA device — check the driver and that libtorch is a CUDA build, or use device = cpu".into(),
        )),
    }
}

/// The weight dtype `choice` names on `device`; `auto` is bf16 on CUDA and f32 on the CPU.
pub fn resolve_dtype(choice: DtypeChoice, device: Device) -> Kind {
    match choice {
        DtypeChoice::Auto if device.is_cuda() => Kind::BFloat16,
        DtypeChoice::Auto | DtypeChoice::F32 => Kind::Float,
        DtypeChoice::Bf16 => Kind::BFloat16,
        DtypeChoice::Fp16 => Kind::Half,
    }
}

pub fn memory_policy(choice: MemoryPolicyChoice) -> MemoryPolicy {
    match choice {
        MemoryPolicyChoice::Resident => MemoryPolicy::all_resident(),
        MemoryPolicyChoice::LowMemory => MemoryPolicy::low_memory(),
    }
}

/// The load options of `[model] device / dtype / memory_policy`; the VAE stays in f32.
pub fn load_options(
    device: DeviceChoice,
    dtype: DtypeChoice,
    memory: MemoryPolicyChoice,
) -> Result<LoadOptions, GenerateError> {
    let device = resolve_device(device)?;
    Ok(LoadOptions {
        device,
        dtype: resolve_dtype(dtype, device),
        vae_dtype: Kind::Float,
        memory: memory_policy(memory),
    })
}

/// A loaded Wan pipeline serving one model name.
pub struct WanGenerator {
    pipe: WanT2V,
    info: ModelInfo,
    limit: Option<MemoryLimit>,
}

impl WanGenerator {
    /// Loads `dir` (the diffusers layout) with `options`; `name` is the model id requests use.
    pub fn load(dir: &Path, name: &str, options: LoadOptions) -> Result<Self, GenerateError> {
        if dir.as_os_str().is_empty() {
            return Err(GenerateError::Load(
                "model.dir is empty — set it to the diffusers-format checkpoint directory (env T2V_MODEL__DIR, flag --model-dir)".into(),
            ));
        }
        let revision = config_digest(dir)?;
        let pipe = WanT2V::load(dir, options).map_err(load_error)?;
        Ok(Self {
            pipe,
            info: ModelInfo {
                name: name.to_string(),
                revision,
                defaults: WAN22_T2V_A14B,
            },
            limit: None,
        })
    }

    /// Turns on the preflight for `[model] memory_budget_gib` (0 = the GPU's total memory, read
    /// with NVML; on the CPU only a budget is checked).
    pub fn with_memory_budget(mut self, budget_gib: f64) -> Self {
        let device = self.pipe.options().device;
        let gpu_total = if device.is_cuda() && budget_gib <= 0.0 {
            match Gpu::shared().map(Gpu::memory) {
                Some(Ok(m)) => Some(m.total),
                _ => {
                    tracing::warn!("NVML cannot tell the GPU's memory: no preflight memory check — set model.memory_budget_gib to have one");
                    None
                }
            }
        } else {
            None
        };
        self.limit = MemoryLimit::new(budget_gib, device, gpu_total);
        if let Some(limit) = &self.limit {
            tracing::info!(
                limit = %human(limit.bytes),
                overhead = %human(limit.overhead),
                "jobs whose estimated peak exceeds the memory limit are refused before they start"
            );
        }
        self
    }

    pub fn memory_limit(&self) -> Option<MemoryLimit> {
        self.limit
    }

    /// The estimate's request for `params` (sizes as the pipeline rounds them), or the
    /// pipeline's error for settings it refuses.
    fn estimate_request(
        &self,
        params: &GenerationParams,
        policy: MemoryPolicy,
    ) -> Result<EstimateRequest, PipelineError> {
        let resolved = self.pipe.resolve(params)?;
        let options = self.pipe.options();
        Ok(EstimateRequest {
            width: resolved.width,
            height: resolved.height,
            num_frames: resolved.num_frames,
            dtype: options.dtype,
            vae_dtype: options.vae_dtype,
            text_len: params.max_sequence_length as i64,
            policy,
        })
    }

    /// Refuses `params` when its estimated peak does not fit the memory limit.
    fn preflight(
        &self,
        params: &GenerationParams,
        limit: MemoryLimit,
    ) -> Result<(), GenerateError> {
        let request = match self.estimate_request(params, self.pipe.options().memory) {
            Ok(r) => r,
            Err(PipelineError::InvalidInput { field, message }) => {
                return Err(GenerateError::InvalidInput(format!("{field}: {message}")))
            }
            Err(e) => {
                tracing::warn!(error = %e, "no preflight memory estimate; running the job unchecked");
                return Ok(());
            }
        };
        let (configs, peak) = match self
            .pipe
            .configs()
            .and_then(|c| estimate(&c, &request).map(|e| (c, e.peak)))
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "no preflight memory estimate; running the job unchecked");
                return Ok(());
            }
        };
        if peak <= limit.room() {
            return Ok(());
        }
        let overhead = if limit.overhead > 0 {
            format!(" (+{} CUDA context)", human(limit.overhead))
        } else {
            String::new()
        };
        Err(GenerateError::OutOfMemory {
            message: format!(
                "{}×{}×{} needs an estimated {}{overhead} but {} — {}",
                request.width,
                request.height,
                request.num_frames,
                human(peak),
                limit.describe(),
                fit_hint(&configs, &request, limit.room())
            ),
        })
    }

    pub fn pipeline(&self) -> &WanT2V {
        &self.pipe
    }

    /// The pipeline settings of `job`: its zero/unset fields take the model's defaults.
    pub fn params(&self, job: &JobSpec) -> GenerationParams {
        let two_experts = self.pipe.model_dir().boundary_ratio().is_some();
        let defaults = &self.info.defaults;
        let (guidance, guidance_2) = if two_experts {
            (
                f64::from(defaults.guidance_scale),
                Some(f64::from(defaults.guidance_scale_2)),
            )
        } else {
            (f64::from(SINGLE_EXPERT_GUIDANCE), None)
        };
        let guidance_scale = job.guidance_scale.map_or(guidance, f64::from);
        GenerationParams {
            prompt: job.prompt.clone(),
            negative_prompt: Some(job.negative_prompt.clone()),
            width: i64::from(job.width),
            height: i64::from(job.height),
            num_frames: i64::from(job.num_frames),
            num_inference_steps: job.steps as usize,
            guidance_scale,
            // An explicit high-noise scale without a low-noise one applies to both (as diffusers).
            guidance_scale_2: match (job.guidance_scale_2, job.guidance_scale) {
                (Some(g2), _) => Some(f64::from(g2)),
                (None, Some(_)) => None,
                (None, None) => guidance_2,
            },
            shift: job.shift.map(f64::from),
            sampler: match job.sampler {
                Sampler::Unspecified => None,
                Sampler::Unipc => Some(SamplerKind::UniPc),
                Sampler::FlowEuler => Some(SamplerKind::FlowEuler),
            },
            seed: Some(job.seed),
            reject_long_prompts: true,
            ..GenerationParams::default()
        }
    }

    /// Runs `job` (from `resume` when given) and returns the pipeline's output: frames
    /// `(F, H, W, 3)` f32 in [0, 1]. A checkpoint that does not decode or fit is ignored with a
    /// warning and the run starts from step 0.
    pub fn run(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<GenerationOutput, GenerateError> {
        let params = self.params(job);
        if let Some(limit) = self.limit {
            self.preflight(&params, limit)?;
        }
        let state = resume.and_then(|c| match DenoiseState::from_bytes(&c.bytes) {
            Ok((state, _)) => Some(state),
            Err(e) => {
                tracing::warn!(error = %e, "the checkpoint does not decode; starting from step 0");
                None
            }
        });
        let mut result = self.run_from(job, &params, state.as_ref(), hooks);
        if let (Some(_), Err((PipelineError::InvalidInput { field, message }, _))) =
            (&state, &result)
        {
            if field == "checkpoint" {
                tracing::warn!(%message, "the checkpoint does not fit the request; starting from step 0");
                result = self.run_from(job, &params, None, hooks);
            }
        }
        result.map_err(|(e, last_step)| match e {
            PipelineError::OutOfMemory { message } => GenerateError::OutOfMemory {
                message: self.what_fits(&params, &message),
            },
            PipelineError::Canceled { step } => GenerateError::Stopped {
                at_step: (step as u32).max(last_step),
            },
            PipelineError::InvalidInput { field, message } => {
                GenerateError::InvalidInput(format!("{field}: {message}"))
            }
            other => GenerateError::Internal(other.to_string()),
        })
    }

    /// One pipeline run; on failure also the last step done.
    fn run_from(
        &mut self,
        job: &JobSpec,
        params: &GenerationParams,
        state: Option<&DenoiseState>,
        hooks: &mut dyn StepHooks,
    ) -> Result<GenerationOutput, (PipelineError, u32)> {
        let mut last_step = 0;
        let info = self.info.clone();
        let result = self.pipe.generate_with(params, state, &mut |end| {
            last_step = end.index as u32 + 1;
            let step = StepInfo {
                step: last_step,
                total: end.total as u32,
                timestep: end.timestep as f32,
            };
            let stop = hooks.on_step(step).is_break();
            if hooks.checkpoint_due(step, stop) {
                let metadata = checkpoint_metadata(job, &info, last_step);
                match DenoiseState::capture(end, job.seed).and_then(|s| s.to_bytes(&metadata)) {
                    Ok(bytes) => hooks.on_checkpoint(Checkpoint {
                        step: last_step,
                        bytes,
                    }),
                    Err(e) => tracing::warn!(error = %e, step = last_step, "no checkpoint taken"),
                }
            }
            if stop {
                StepControl::Stop
            } else {
                StepControl::Continue
            }
        });
        result.map_err(|e| (e, last_step))
    }

    /// libtorch's out-of-memory `message` with the job's estimated peak and the settings that
    /// fit the memory the process could use (from libtorch's message, else the memory limit);
    /// without either, settings with about half the peak.
    fn what_fits(&self, params: &GenerationParams, message: &str) -> String {
        let policy = self.pipe.options().memory;
        let (Ok(configs), Ok(request)) =
            (self.pipe.configs(), self.estimate_request(params, policy))
        else {
            return message.to_string();
        };
        let Ok(now) = estimate(&configs, &request) else {
            return message.to_string();
        };
        let (w, h, f) = (request.width, request.height, request.num_frames);
        let overhead = self.limit.map_or(0, |l| l.overhead);
        let room = torch_oom_room(message)
            .map(|r| r.saturating_sub(overhead))
            .or(self.limit.map(|l| l.room()))
            .filter(|&room| room < now.peak)
            .unwrap_or(now.peak / 2);
        format!(
            "{message} (estimated peak {} for {w}×{h}×{f}; {})",
            human(now.peak),
            fit_hint(&configs, &request, room)
        )
    }
}

impl VideoGenerator for WanGenerator {
    fn model(&self) -> ModelInfo {
        self.info.clone()
    }

    fn generate(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<Generated, GenerateError> {
        let output = self.run(job, resume, hooks)?;
        Ok(Generated {
            frames: to_rgb24(&output.frames)?,
            timings: timings(&output),
        })
    }
}

/// The pipeline's phase timings in the worker's terms.
pub fn timings(output: &GenerationOutput) -> PipelineTimings {
    PipelineTimings {
        text_encode: output.timings.text_encode,
        denoise: output.timings.denoise,
        vae_decode: output.timings.vae_decode,
    }
}

/// `(F, H, W, 3)` f32 in [0, 1] → RGB24: `round(x · 255)` (half to even, as numpy) as
/// diffusers' `numpy_to_pil`.
pub fn to_rgb24(frames: &Tensor) -> Result<Frames, GenerateError> {
    let internal = |e: tch::TchError| GenerateError::Internal(format!("frames to RGB24: {e}"));
    let size = frames.size();
    let [count, height, width, 3] = size[..] else {
        return Err(GenerateError::Internal(format!(
            "frames have shape {size:?}, expected (F, H, W, 3)"
        )));
    };
    let bytes = frames
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_mul_scalar(255.0))
        .and_then(|t| t.f_round())
        .and_then(|t| t.f_clamp(0.0, 255.0))
        .and_then(|t| t.f_to_kind(Kind::Uint8))
        .and_then(|t| t.f_contiguous())
        .map_err(internal)?;
    let rgb = Vec::<u8>::try_from(&bytes.flatten(0, -1)).map_err(internal)?;
    Ok(Frames {
        width: width as u32,
        height: height as u32,
        count: count as u32,
        rgb,
    })
}

/// A load failure in the worker's terms (the pipeline's message names the file and the fix).
fn load_error(e: PipelineError) -> GenerateError {
    match e {
        PipelineError::OutOfMemory { message } => GenerateError::OutOfMemory {
            message: format!(
                "{message} while loading the weights — try memory_policy = \"low-memory\" or a smaller dtype"
            ),
        },
        other => GenerateError::Load(other.to_string()),
    }
}

/// The first 12 hex digits of SHA-256 over `model_index.json` and every component's config
/// (sorted by path): changes whenever the architecture or the scheduler settings change.
pub fn config_digest(dir: &Path) -> Result<String, GenerateError> {
    let index = dir.join("model_index.json");
    let mut files = vec![index.clone()];
    let entries = std::fs::read_dir(dir).map_err(|e| {
        GenerateError::Load(format!(
            "cannot read the model directory {}: {e} — set model.dir to a diffusers-format checkpoint",
            dir.display()
        ))
    })?;
    for entry in entries.flatten() {
        for name in ["config.json", "scheduler_config.json"] {
            let config = entry.path().join(name);
            if config.is_file() {
                files.push(config);
            }
        }
    }
    files[1..].sort();
    let mut hasher = Sha256::new();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| {
            GenerateError::Load(format!(
                "cannot read {}: {e} — is the model directory complete?",
                file.display()
            ))
        })?;
        let relative = file.strip_prefix(dir).unwrap_or(file);
        hasher.update(relative.to_string_lossy().as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let digest = hasher.finalize();
    Ok(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}

/// How long a duration is, for one-line summaries: `1.23s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use super::*;

    #[test]
    fn rgb24_rounds_like_numpy_to_pil() {
        let values = [
            0.0f32,
            0.5 / 255.0,
            0.499,
            0.5,
            1.0,
            1.2,
            -0.1,
            254.6 / 255.0,
        ];
        let frames = Tensor::from_slice(&values)
            .repeat([3])
            .reshape([1, 2, 4, 3]);
        let out = to_rgb24(&frames).unwrap();
        assert_eq!((out.count, out.height, out.width), (1, 2, 4));
        let expected: Vec<u8> = values
            .iter()
            .map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
            .collect();
        assert_eq!(&out.rgb[..8], &expected[..]);
        assert_eq!(out.rgb[1], 0, "0.5 rounds half to even, as numpy");
        assert_eq!(out.rgb[2], 127, "0.499 · 255 = 127.2 → 127");
        assert_eq!(out.rgb[4], 255);
        assert!(to_rgb24(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))).is_err());
    }

    /// The tiny two-expert model of `make fixtures` (`$T2V_FIXTURES`, default build/fixtures).
    fn tiny_model() -> std::path::PathBuf {
        let root = std::env::var_os("T2V_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures"));
        let dir = root.join("wan_pipeline/two_experts");
        assert!(
            dir.exists(),
            "{} missing — run `make fixtures`",
            dir.display()
        );
        dir
    }

    #[test]
    fn steps_are_reported_and_a_break_stops_the_run() {
        let options = LoadOptions::new(Device::Cpu, Kind::Float);
        let mut generator = WanGenerator::load(&tiny_model(), "tiny", options).unwrap();
        assert_eq!(generator.model().revision.len(), 12);
        let job = JobSpec {
            job_id: "j".into(),
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            num_frames: 5,
            fps: 8,
            steps: 3,
            guidance_scale: None,
            guidance_scale_2: None,
            shift: None,
            sampler: Sampler::FlowEuler,
            seed: 1,
        };
        let params = generator.params(&job);
        assert_eq!(params.guidance_scale, 4.0, "two-expert default");
        assert_eq!(params.guidance_scale_2, Some(3.0));
        assert_eq!(params.sampler, Some(SamplerKind::FlowEuler));
        assert!(params.reject_long_prompts);

        let mut seen = Vec::new();
        let done = generator
            .generate(&job, None, &mut |s: StepInfo| {
                seen.push((s.step, s.total));
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(seen, [(1, 3), (2, 3), (3, 3)]);
        assert_eq!((done.frames.count, done.frames.width), (5, 32));
        assert_eq!(done.frames.rgb.len(), 5 * 32 * 32 * 3);

        let stopped = generator.generate(&job, None, &mut |s: StepInfo| {
            if s.step == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(stopped, Err(GenerateError::Stopped { at_step: 2 }));
        let bad = generator.generate(
            &JobSpec {
                width: 40,
                ..job.clone()
            },
            None,
            &mut |_: StepInfo| ControlFlow::Continue(()),
        );
        assert!(
            matches!(&bad, Err(GenerateError::InvalidInput(m)) if m.starts_with("width")),
            "{bad:?}"
        );
    }

    #[test]
    fn dtype_auto_follows_the_device() {
        assert_eq!(resolve_dtype(DtypeChoice::Auto, Device::Cpu), Kind::Float);
        assert_eq!(
            resolve_dtype(DtypeChoice::Auto, Device::Cuda(0)),
            Kind::BFloat16
        );
        assert_eq!(resolve_dtype(DtypeChoice::Fp16, Device::Cpu), Kind::Half);
    }

    #[test]
    fn the_revision_changes_with_a_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("vae")).unwrap();
        std::fs::write(dir.path().join("vae/config.json"), "{\"a\":1}").unwrap();
        let first = config_digest(dir.path()).unwrap();
        assert_eq!(first.len(), 12);
        assert_eq!(first, config_digest(dir.path()).unwrap());
        std::fs::write(dir.path().join("vae/config.json"), "{\"a\":2}").unwrap();
        assert_ne!(first, config_digest(dir.path()).unwrap());
    }
}
