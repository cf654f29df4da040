//! The Wan2.2 pipeline (t2v-pipeline's [`WanT2V`]) behind [`VideoGenerator`].
//!
//! - [`WanGenerator::load_model`] loads the `[model]` section: the variant (LoRAs fused at load,
//!   the preset's sampling defaults, [`super::variant`]), device, dtype, memory policy, budget
//!   and GPUs. [`WanGenerator::load`] resolves `[model] device / dtype / memory_policy` and loads
//!   the diffusers-format directory as it is; the model revision ([`model_revision`]) is a short digest of
//!   its configs and weights (header and sampled data of every safetensors file), cached across
//!   restarts, and the precision ([`precision`]) names the weights dtype and device class.
//! - [`WanGenerator::run`] maps a [`JobSpec`] onto [`GenerationParams`] (prompts longer than the
//!   token limit are refused, not truncated) and returns the pipeline's f32 frames; it resumes
//!   from a [`Checkpoint`] (a t2v-pipeline [`DenoiseState`] file) and takes one whenever the
//!   hooks ask;
//!   [`VideoGenerator::generate`] converts them to RGB24 as diffusers' `numpy_to_pil` does.
//! - Pipeline errors become [`GenerateError`]s; out-of-memory messages name settings that fit.
//! - [`WanGenerator::with_devices`] spreads every job over the GPUs of `[model] devices`
//!   (CFG × Ulysses, [`devices`]); checkpoints stay independent of the GPU count.
//! - [`WanGenerator::with_memory_budget`] turns on the memory preflight ([`crate::generate::preflight`]):
//!   a job whose estimated peak does not fit fails with [`GenerateError::OutOfMemory`] before
//!   any work, naming the estimate, the limit and settings that fit.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use t2v_contract::defaults::ModelDefaults;
use t2v_pipeline::checkpoint::DenoiseState;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::memory::{
    estimate, estimate_per_gpu, EstimateRequest, ImageEncode, MemoryEstimate, MemoryPolicy,
    ModelConfigs,
};
use t2v_pipeline::scheduler::SamplerKind;
use t2v_pipeline::PipelineError;
use t2v_pipeline::{GenerationOutput, GenerationParams, LoadOptions, WanT2V};
use t2v_proto::v1::Sampler;
use tch::{Device, Kind, Tensor};

use crate::config::{DeviceChoice, DtypeChoice, MemoryPolicyChoice, ModelConfig};
use crate::generate::preflight::{fit_hint, torch_oom_room, MemoryLimit};
use crate::generate::variant::{variant_revision, SamplingDefaults, Variant, VariantCache};
use crate::generate::{
    Frames, GenerateError, Generated, JobSpec, ModelInfo, ModelKind, PipelineTimings, StepHooks,
    StepInfo, VideoGenerator,
};
use crate::gpu::{human, Gpu};
use crate::job::checkpoints::{checkpoint_metadata, Checkpoint};

pub mod devices;

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
        DtypeChoice::Fp8 => t2v_pipeline::wan::fp8::FP8,
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
    super::preflight::check_dtype(resolve_dtype(dtype, device), device)?;
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
    /// What a job's unset fields take (the variant's preset).
    sampling: SamplingDefaults,
    /// The variant's step cache, which a job's `cache_threshold` overrides.
    cache: VariantCache,
}

/// Which requests the loaded model takes, as the job side checks them before any work.
fn model_kind(kind: t2v_pipeline::model_dir::ModelKind) -> ModelKind {
    use t2v_pipeline::model_dir::ModelKind as Dir;
    match kind {
        Dir::TextToVideo { .. } => ModelKind::TextToVideo,
        Dir::ImageToVideo { .. } => ModelKind::ImageToVideo,
        Dir::TextImageToVideo => ModelKind::TextImageToVideo,
    }
}

/// The published defaults (size, frames, fps, steps, guidance) of the model in `dir`, by its
/// kind: a TI2V-5B fleet's requests with zeros get 1280x704, 121 frames at 24 fps. A directory
/// whose kind cannot be read gets T2V-A14B's; its load then fails with the reason.
pub(crate) fn published_defaults(dir: &Path) -> ModelDefaults {
    t2v_pipeline::model_dir::ModelDir::open(dir)
        .and_then(|d| d.kind())
        .map(|kind| kind.defaults())
        .unwrap_or(t2v_contract::defaults::WAN22_T2V_A14B)
}

impl WanGenerator {
    /// Loads `dir` (the diffusers layout) with `options`; `name` is the model id requests use.
    pub fn load(dir: &Path, name: &str, options: LoadOptions) -> Result<Self, GenerateError> {
        let variant = Variant::for_model(&ModelConfig::default(), published_defaults(dir));
        Self::load_variant(dir, name, options, &variant)
    }

    /// Loads the whole `[model]` section: the variant's LoRAs and preset, device, dtype, memory
    /// policy, the preflight budget and the GPUs of a job.
    pub fn load_model(model: &ModelConfig) -> Result<Self, GenerateError> {
        let options = load_options(model.device, model.dtype, model.memory_policy)?;
        let variant = Variant::for_model(model, published_defaults(Path::new(&model.dir)));
        tracing::info!(dir = %model.dir, name = %model.name, ?options, ?variant, "loading the Wan pipeline");
        let generator = Self::load_variant(Path::new(&model.dir), &model.name, options, &variant)?
            .with_memory_budget(model.memory_budget_gib)
            .with_parallel(&model.devices, model.collectives)?;
        // The step cache runs on one device only (t2v-pipeline's step_cache): say so at start,
        // not in every job.
        if generator.cache.config.is_some() && generator.pipe.parallel_plan().is_some() {
            return Err(GenerateError::Load(
                "model.cache is set but model.devices spreads each job over several GPUs — the step cache runs on one GPU: set devices = [0] (and run one worker per GPU) or cache kind = \"off\"".into(),
            ));
        }
        Ok(generator)
    }

    /// Loads `dir` with `variant`'s LoRAs fused into the experts (a missing file or a LoRA for
    /// another base is refused here, naming the file and the fix); jobs take the variant's
    /// sampling defaults, and the revision covers the LoRAs and the preset
    /// ([`variant_revision`]).
    pub fn load_variant(
        dir: &Path,
        name: &str,
        options: LoadOptions,
        variant: &Variant,
    ) -> Result<Self, GenerateError> {
        if dir.as_os_str().is_empty() {
            return Err(GenerateError::Load(
                "model.dir is empty — set it to the diffusers-format checkpoint directory (env T2V_MODEL__DIR, flag --model-dir)".into(),
            ));
        }
        for spec in variant
            .loras
            .transformer
            .iter()
            .chain(&variant.loras.transformer_2)
        {
            t2v_pipeline::lora::check_file(&spec.path).map_err(|_| missing_lora(&spec.path))?;
        }
        let base_revision = model_revision(dir)?;
        let precision = precision(&options);
        let pipe = WanT2V::load_with_loras(dir, options, &variant.loras).map_err(load_error)?;
        // After the load, so a LoRA that is no safetensors file fails with the LoRA's message.
        let revision = variant_revision(&base_revision, variant, hash_lora)?;
        let kind = model_kind(pipe.kind());
        let patch = pipe.configs().map_err(load_error)?.transformer.patch_size[1];
        let size_multiple = (pipe.vae().config().spatial_ratio() * patch) as u32;
        Ok(Self {
            pipe,
            info: ModelInfo {
                name: name.to_string(),
                revision,
                precision,
                defaults: variant.sampling.defaults,
                kind,
                size_multiple,
            },
            limit: None,
            sampling: variant.sampling,
            cache: variant.cache.clone(),
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
            image: ImageEncode::of(self.pipe.kind(), params.image.is_some()),
        })
    }

    /// The estimated peak of each GPU: the one-device estimate, or with a parallel plan one
    /// rank's share of the activations ([`estimate_per_gpu`]); checked against GPU 0's memory,
    /// the doctor having checked that every GPU is the same model.
    fn estimate_per_gpu(
        &self,
        configs: &ModelConfigs,
        request: &EstimateRequest,
    ) -> Result<MemoryEstimate, PipelineError> {
        match self.pipe.parallel_plan() {
            Some(plan) => {
                estimate_per_gpu(configs, request, plan.layout, plan.distinct_devices().len())
            }
            None => estimate(configs, request),
        }
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
            .and_then(|c| self.estimate_per_gpu(&c, &request).map(|e| (c, e.peak)))
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

    /// The pipeline settings of `job`: its zero/unset fields take the variant's defaults.
    pub fn params(&self, job: &JobSpec) -> GenerationParams {
        let two_experts = self.pipe.model_dir().boundary_ratio().is_some();
        let defaults = &self.sampling.defaults;
        let (guidance, guidance_2) = if two_experts {
            (
                f64::from(defaults.guidance_scale),
                Some(f64::from(defaults.guidance_scale_2)),
            )
        } else {
            (f64::from(self.sampling.single_expert_guidance), None)
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
            shift: self.sampling.shift_for(job.shift).map(f64::from),
            sampler: match self.sampling.sampler_for(job.sampler) {
                Sampler::Unspecified => None,
                Sampler::Unipc => Some(SamplerKind::UniPc),
                Sampler::FlowEuler => Some(SamplerKind::FlowEuler),
            },
            seed: Some(job.seed),
            reject_long_prompts: true,
            image: job.image.as_ref().map(|image| (*image.decoded).clone()),
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
        let params = GenerationParams {
            step_cache: self.cache.for_job(job.cache_threshold)?,
            ..self.params(job)
        };
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
        let Ok(now) = self.estimate_per_gpu(&configs, &request) else {
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
            step_cache: output
                .step_cache
                .as_ref()
                .map(super::variant::StepCacheSummary::of),
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

/// A configured LoRA file that is not there, in one line with the fix.
fn missing_lora(path: &Path) -> GenerateError {
    GenerateError::Load(format!(
        "LoRA file {} does not exist — fix its path in [[model.loras]] (env T2V_MODEL__LORAS) or remove the entry",
        path.display()
    ))
}

/// Hashes a LoRA file into a variant's revision as model weights are hashed.
fn hash_lora(hasher: &mut Sha256, path: &Path) -> Result<(), GenerateError> {
    let meta = std::fs::metadata(path).map_err(|_| missing_lora(path))?;
    // The contents alone: the same file elsewhere is the same variant.
    let file = RevisionFile {
        path: path.to_path_buf(),
        relative: String::new(),
        weights: true,
        meta,
    };
    hash_weights(hasher, &file)
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

/// The version of the rule [`model_revision`] follows; part of every digest and cache key, so
/// a change of the rule changes every revision and never reads an older cache.
const REVISION_RULE: &str = "t2v-model-revision/2";

/// Bytes of each sample of a weights file's tensor data.
const SAMPLE_CHUNK: u64 = 64 * 1024;

/// Samples of a weights file's tensor data; data no longer than all of them is hashed whole.
const SAMPLE_CHUNKS: u64 = 16;

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// How deep [`model_revision`] looks for weights under the model directory.
const MAX_DEPTH: usize = 8;

/// A cache entry written for files changed this recently could miss a change made within the
/// same timestamp tick: none is written then.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// The revision of the model in `dir`: the first 12 hex digits of SHA-256 over, in order,
///
/// 1. the rule's version (`t2v-model-revision/2`);
/// 2. the configs, as before: `model_index.json`, then every `<component>/config.json` and
///    `<component>/scheduler_config.json` sorted by path — each as its relative path, its
///    length (u64 LE) and its bytes;
/// 3. every `*.safetensors` file under `dir` (recursively, symlinks followed, hidden entries
///    skipped), sorted by relative path (`/`-separated) — each as its relative path, its size,
///    its safetensors header (the first 8 bytes: the header length N as u64 LE, then the N
///    bytes of JSON: names, dtypes, shapes, offsets, metadata) and a sample of its tensor data:
///    all of it when it is at most 16 × 64 KiB, else 16 chunks of 64 KiB at evenly spaced
///    offsets, the first at the data's start and the last ending at the file's end.
///
/// So any re-trained or swapped weights (and any architecture or scheduler change) change the
/// revision, reading about 1 MiB per weights file however large.
///
/// The result is cached per model directory, keyed by the rule and the (relative path, size,
/// mtime, ctime, inode) of every file above: the first of
/// `$XDG_CACHE_HOME/t2v-fleet/revisions/<dir digest>.json`,
/// `$HOME/.cache/t2v-fleet/revisions/<dir digest>.json` and `<dir>/.t2v-revision.json` that
/// can be written. A restart with unchanged files reads it instead of the weights; any cache
/// problem (missing, unreadable, stale, not writable) just means computing.
pub fn model_revision(dir: &Path) -> Result<String, GenerateError> {
    let started = std::time::Instant::now();
    let (revision, cached) = revision_with_cache(dir, &default_cache_paths(dir), RACY_WINDOW)?;
    tracing::info!(
        dir = %dir.display(),
        %revision,
        cached,
        took_s = started.elapsed().as_secs_f64(),
        "model revision"
    );
    Ok(revision)
}

/// The weights dtype and device class of `options`, as checkpoints record them: `bf16/cuda`,
/// `f32/cpu`, ….
pub fn precision(options: &LoadOptions) -> String {
    let dtype = match options.dtype {
        Kind::Float => "f32".to_string(),
        Kind::BFloat16 => "bf16".to_string(),
        Kind::Half => "fp16".to_string(),
        Kind::Float8e4m3fn => "fp8".to_string(),
        Kind::Double => "f64".to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    let device = match options.device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => "cuda".to_string(),
        Device::Mps => "mps".to_string(),
        Device::Vulkan => "vulkan".to_string(),
        #[allow(unreachable_patterns)]
        other => format!("{other:?}").to_lowercase(),
    };
    format!("{dtype}/{device}")
}

/// A file the revision covers.
struct RevisionFile {
    path: std::path::PathBuf,
    /// Relative to the model directory, `/`-separated.
    relative: String,
    weights: bool,
    meta: std::fs::Metadata,
}

fn read_error(path: &Path, e: std::io::Error) -> GenerateError {
    GenerateError::Load(format!(
        "cannot read {}: {e} — is the model directory complete?",
        path.display()
    ))
}

fn relative_name(dir: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(dir).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The configs (in hashing order) and then the weights files (sorted) of `dir`.
fn revision_files(dir: &Path) -> Result<Vec<RevisionFile>, GenerateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        GenerateError::Load(format!(
            "cannot read the model directory {}: {e} — set model.dir to a diffusers-format checkpoint",
            dir.display()
        ))
    })?;
    let mut configs = Vec::new();
    for entry in entries.flatten() {
        for name in ["config.json", "scheduler_config.json"] {
            let config = entry.path().join(name);
            if config.is_file() {
                configs.push(config);
            }
        }
    }
    configs.sort();
    let mut weights = Vec::new();
    find_weights(dir, 0, &mut weights)?;
    let mut files = Vec::new();
    for path in std::iter::once(dir.join("model_index.json")).chain(configs) {
        let meta = std::fs::metadata(&path).map_err(|e| read_error(&path, e))?;
        files.push(RevisionFile {
            relative: relative_name(dir, &path),
            path,
            weights: false,
            meta,
        });
    }
    let mut weights: Vec<RevisionFile> = weights
        .into_iter()
        .map(|(path, meta)| RevisionFile {
            relative: relative_name(dir, &path),
            path,
            weights: true,
            meta,
        })
        .collect();
    weights.sort_by(|a, b| a.relative.cmp(&b.relative));
    files.extend(weights);
    Ok(files)
}

/// Every `*.safetensors` file under `dir` (symlinks followed, hidden entries skipped).
fn find_weights(
    dir: &Path,
    depth: usize,
    out: &mut Vec<(std::path::PathBuf, std::fs::Metadata)>,
) -> Result<(), GenerateError> {
    let entries = std::fs::read_dir(dir).map_err(|e| read_error(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| read_error(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // A dangling link or one we may not follow is no weights file.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                find_weights(&path, depth + 1, out)?;
            }
        } else if meta.is_file() && path.extension().is_some_and(|e| e == "safetensors") {
            out.push((path, meta));
        }
    }
    Ok(())
}

/// Hashes one safetensors file as [`model_revision`] says: size, header, sampled data.
fn hash_weights(hasher: &mut Sha256, file: &RevisionFile) -> Result<(), GenerateError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = &file.path;
    let size = file.meta.len();
    let not_safetensors = |why: &str| {
        GenerateError::Load(format!(
            "{} is not a safetensors file ({why}) — is the model directory complete?",
            path.display()
        ))
    };
    let mut f = std::fs::File::open(path).map_err(|e| read_error(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| not_safetensors("shorter than 8 bytes"))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len > size.saturating_sub(8) {
        return Err(not_safetensors("header length past the end of the file"));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| read_error(path, e))?;
    hasher.update(size.to_le_bytes());
    hasher.update(len);
    hasher.update(&header);
    let data_start = 8 + header_len;
    let data_len = size - data_start;
    let mut chunk = Vec::new();
    if data_len <= SAMPLE_CHUNK * SAMPLE_CHUNKS {
        f.read_to_end(&mut chunk).map_err(|e| read_error(path, e))?;
        if chunk.len() as u64 != data_len {
            return Err(not_safetensors("its size changed while reading"));
        }
        hasher.update(&chunk);
        return Ok(());
    }
    chunk.resize(SAMPLE_CHUNK as usize, 0);
    for i in 0..SAMPLE_CHUNKS {
        let offset = data_start + i * (data_len - SAMPLE_CHUNK) / (SAMPLE_CHUNKS - 1);
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut chunk))
            .map_err(|e| read_error(path, e))?;
        hasher.update(offset.to_le_bytes());
        hasher.update(&chunk);
    }
    Ok(())
}

/// The revision of `files` (see [`model_revision`]), computed from their contents.
fn compute_revision(files: &[RevisionFile]) -> Result<String, GenerateError> {
    let mut hasher = Sha256::new();
    hasher.update(REVISION_RULE.as_bytes());
    for file in files {
        hasher.update((file.relative.len() as u64).to_le_bytes());
        hasher.update(file.relative.as_bytes());
        if file.weights {
            hash_weights(&mut hasher, file)?;
        } else {
            let bytes = std::fs::read(&file.path).map_err(|e| read_error(&file.path, e))?;
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    Ok(short_hex(&hasher.finalize()))
}

/// The first 12 hex digits of `digest`.
fn short_hex(digest: &[u8]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn nanos(time: std::io::Result<std::time::SystemTime>) -> i128 {
    match time.map(|t| t.duration_since(std::time::UNIX_EPOCH)) {
        Ok(Ok(d)) => d.as_nanos() as i128,
        Ok(Err(before)) => -(before.duration().as_nanos() as i128),
        Err(_) => 0,
    }
}

/// (ctime ns, inode) on Unix; nothing elsewhere.
#[cfg(unix)]
fn change_stamp(meta: &std::fs::Metadata) -> (i128, u64) {
    use std::os::unix::fs::MetadataExt;
    (
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        meta.ino(),
    )
}

#[cfg(not(unix))]
fn change_stamp(_meta: &std::fs::Metadata) -> (i128, u64) {
    (0, 0)
}

/// The cache key of `files`: SHA-256 (hex) of the rule and every file's relative path, size,
/// mtime, ctime and inode.
fn cache_key(dir: &Path, files: &[RevisionFile]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(REVISION_RULE.as_bytes());
    hasher.update(dir.to_string_lossy().as_bytes());
    for file in files {
        let (ctime, inode) = change_stamp(&file.meta);
        hasher.update((file.relative.len() as u64).to_le_bytes());
        hasher.update(file.relative.as_bytes());
        hasher.update([u8::from(file.weights)]);
        hasher.update(file.meta.len().to_le_bytes());
        hasher.update(nanos(file.meta.modified()).to_le_bytes());
        hasher.update(ctime.to_le_bytes());
        hasher.update(inode.to_le_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the revision of `dir` may be cached, most preferred first (see [`model_revision`]).
fn default_cache_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let name = format!(
        "{}.json",
        &t2v_contract::sha256_hex(absolute.to_string_lossy().as_bytes())[..16]
    );
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    let mut paths = Vec::new();
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").map(std::path::PathBuf::from) {
        if xdg.is_absolute() {
            paths.push(xdg.join("t2v-fleet/revisions").join(&name));
        }
    }
    if let Some(home) = non_empty("HOME").map(std::path::PathBuf::from) {
        paths.push(home.join(".cache/t2v-fleet/revisions").join(&name));
    }
    paths.push(dir.join(".t2v-revision.json"));
    paths
}

/// The revision of `dir` and whether it came from a cache in `caches` (tried in order; the
/// first writable one receives a fresh value unless a file changed within `racy` of now).
fn revision_with_cache(
    dir: &Path,
    caches: &[std::path::PathBuf],
    racy: Duration,
) -> Result<(String, bool), GenerateError> {
    let files = revision_files(dir)?;
    let key = cache_key(dir, &files);
    for cache in caches {
        if let Some(revision) = read_cache(cache, &key) {
            return Ok((revision, true));
        }
    }
    let revision = compute_revision(&files)?;
    let now = std::time::SystemTime::now();
    let settled = files.iter().all(|f| {
        let changed = nanos(f.meta.modified()).max(change_stamp(&f.meta).0);
        let now = nanos(Ok(now));
        now - changed >= racy.as_nanos() as i128
    });
    if settled {
        // Stat again: a file that changed while it was read must not be cached under the old key.
        let unchanged = revision_files(dir).is_ok_and(|again| cache_key(dir, &again) == key);
        if unchanged {
            for cache in caches {
                match write_cache(cache, &key, &revision) {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::debug!(cache = %cache.display(), error = %e, "revision not cached there")
                    }
                }
            }
        }
    }
    Ok((revision, false))
}

/// The cached revision at `path` when it was stored under `key`.
fn read_cache(path: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: serde_json::Value = serde_json::from_str(&text).ok()?;
    let revision = entry["revision"].as_str()?;
    let valid = entry["rule"] == REVISION_RULE
        && entry["key"] == key
        && revision.len() == 12
        && revision.bytes().all(|b| b.is_ascii_hexdigit());
    valid.then(|| revision.to_string())
}

/// Stores `revision` under `key` at `path` (written aside, then renamed into place).
fn write_cache(path: &Path, key: &str, revision: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let entry = serde_json::json!({ "rule": REVISION_RULE, "key": key, "revision": revision });
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, entry.to_string())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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
    fn zeros_in_a_request_take_the_published_defaults_of_the_directorys_model() {
        let fixtures = tiny_model().join("../..");
        let options = LoadOptions::new(Device::Cpu, Kind::Float);
        let ti2v =
            WanGenerator::load(&fixtures.join("ti2v_pipeline/model"), "ti2v", options).unwrap();
        assert_eq!(ti2v.model().kind, ModelKind::TextImageToVideo);
        assert_eq!(ti2v.model().defaults, t2v_contract::defaults::WAN22_TI2V_5B);
        let i2v = WanGenerator::load_model(&ModelConfig {
            dir: fixtures
                .join("i2v_pipeline/two_experts")
                .display()
                .to_string(),
            name: "i2v".into(),
            device: DeviceChoice::Cpu,
            ..ModelConfig::default()
        })
        .unwrap();
        assert_eq!(i2v.model().defaults, t2v_contract::defaults::WAN22_I2V_A14B);
        let t2v = WanGenerator::load(&tiny_model(), "t2v", options).unwrap();
        assert_eq!(t2v.model().defaults, t2v_contract::defaults::WAN22_T2V_A14B);
    }

    #[test]
    fn steps_are_reported_and_a_break_stops_the_run() {
        let options = LoadOptions::new(Device::Cpu, Kind::Float);
        let mut generator = WanGenerator::load(&tiny_model(), "tiny", options).unwrap();
        assert_eq!(generator.model().revision.len(), 12);
        // A text-to-video directory: requests with an image are refused before any work.
        assert_eq!(generator.model().kind, ModelKind::TextToVideo);
        assert_eq!(
            generator.model().size_multiple,
            16,
            "VAE stride 8 × patch 2"
        );
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
            cache_threshold: None,
            image_reference: None,
            size_from_image: false,
            image: None,
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

    /// A rank-4 PEFT LoRA on the tiny model's (dim 32) first self-attention query.
    fn tiny_lora(dir: &Path) -> std::path::PathBuf {
        let a = Tensor::randn([4, 32], (Kind::Float, Device::Cpu)) * 0.5;
        let b = Tensor::randn([32, 4], (Kind::Float, Device::Cpu)) * 0.5;
        let path = dir.join("tiny_lora.safetensors");
        Tensor::write_safetensors(
            &[
                ("transformer.blocks.0.attn1.to_q.lora_A.weight", a),
                ("transformer.blocks.0.attn1.to_q.lora_B.weight", b),
            ],
            &path,
        )
        .unwrap();
        path
    }

    #[test]
    fn a_variant_fuses_its_loras_and_its_preset_fills_unset_fields() {
        use crate::config::{LoraConfig, LoraExpert, PresetChoice};
        let tmp = tempfile::tempdir().unwrap();
        let model = ModelConfig {
            dir: tiny_model().display().to_string(),
            name: "tiny-lightning".into(),
            device: DeviceChoice::Cpu,
            preset: PresetChoice::Lightning,
            loras: vec![LoraConfig {
                file: tiny_lora(tmp.path()).display().to_string(),
                strength: 1.0,
                expert: LoraExpert::Both,
            }],
            ..ModelConfig::default()
        };
        let mut variant = WanGenerator::load_model(&model).unwrap();
        let options = LoadOptions::new(Device::Cpu, Kind::Float);
        let mut base = WanGenerator::load(&tiny_model(), "tiny", options).unwrap();
        let info = variant.model();
        assert_eq!(info.name, "tiny-lightning");
        assert_eq!(
            info.defaults.steps, 4,
            "the preset's steps for a zero field"
        );
        assert_ne!(
            info.revision,
            base.model().revision,
            "the LoRA is in the revision"
        );

        let job = JobSpec {
            job_id: "j".into(),
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            num_frames: 5,
            fps: 8,
            steps: info.defaults.steps,
            guidance_scale: None,
            guidance_scale_2: None,
            shift: None,
            sampler: Sampler::Unspecified,
            seed: 3,
            cache_threshold: None,
            image_reference: None,
            size_from_image: false,
            image: None,
        };
        let params = variant.params(&job);
        assert_eq!(
            (params.guidance_scale, params.guidance_scale_2),
            (1.0, Some(1.0))
        );
        assert_eq!(params.shift, Some(5.0));
        assert_eq!(params.sampler, Some(SamplerKind::FlowEuler));
        let explicit = JobSpec {
            guidance_scale: Some(3.5),
            shift: Some(2.0),
            sampler: Sampler::Unipc,
            ..job.clone()
        };
        let params = variant.params(&explicit);
        assert_eq!(
            (params.guidance_scale, params.guidance_scale_2),
            (3.5, None)
        );
        assert_eq!(params.shift, Some(2.0));
        assert_eq!(params.sampler, Some(SamplerKind::UniPc));

        // Same settings spelled out for both: only the fused LoRA differs.
        let spelled = JobSpec {
            guidance_scale: Some(1.0),
            guidance_scale_2: Some(1.0),
            shift: Some(5.0),
            sampler: Sampler::FlowEuler,
            ..job.clone()
        };
        let run = |g: &mut WanGenerator| {
            g.generate(&spelled, None, &mut |_: StepInfo| ControlFlow::Continue(()))
                .unwrap()
                .frames
        };
        let (with_lora, without) = (run(&mut variant), run(&mut base));
        assert_eq!(with_lora.rgb.len(), without.rgb.len());
        assert_ne!(with_lora.rgb, without.rgb, "the LoRA changed the frames");
    }

    #[test]
    fn a_missing_lora_file_fails_the_load_in_one_line() {
        use crate::config::{LoraConfig, LoraExpert};
        let model = ModelConfig {
            dir: tiny_model().display().to_string(),
            device: DeviceChoice::Cpu,
            loras: vec![LoraConfig {
                file: "/nonexistent/high.safetensors".into(),
                strength: 1.0,
                expert: LoraExpert::Transformer,
            }],
            ..ModelConfig::default()
        };
        let Err(GenerateError::Load(message)) = WanGenerator::load_model(&model) else {
            panic!("a missing LoRA file loaded");
        };
        assert!(
            message.contains("/nonexistent/high.safetensors")
                && message.contains("[[model.loras]]")
                && !message.contains('\n'),
            "{message}"
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
        let first = model_revision(dir.path()).unwrap();
        assert_eq!(first.len(), 12);
        assert_eq!(first, model_revision(dir.path()).unwrap());
        std::fs::write(dir.path().join("vae/config.json"), "{\"a\":2}").unwrap();
        assert_ne!(first, model_revision(dir.path()).unwrap());
    }

    /// A safetensors file of one f32 tensor `w` holding `values`.
    fn safetensors(values: &[f32]) -> Vec<u8> {
        let header = format!(
            r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
            values.len(),
            values.len() * 4
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        bytes
    }

    /// Sets `path`'s mtime an hour back, as a model on disk for a while has.
    fn settle(path: &Path) {
        let past = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .append(true)
            .open(path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }

    /// A model directory with configs, a 3 MiB weights file (sampled) and a small one (whole).
    fn model_with_weights() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("model_index.json"), "{}").unwrap();
        std::fs::create_dir_all(root.join("transformer")).unwrap();
        std::fs::create_dir_all(root.join("vae")).unwrap();
        std::fs::write(root.join("transformer/config.json"), "{\"dim\":8}").unwrap();
        std::fs::write(root.join("vae/config.json"), "{\"z\":4}").unwrap();
        let big: Vec<f32> = (0..768 * 1024).map(|i| i as f32 * 1e-3).collect();
        let weights = root.join("transformer/diffusion_pytorch_model.safetensors");
        std::fs::write(&weights, safetensors(&big)).unwrap();
        std::fs::write(
            root.join("vae/diffusion_pytorch_model.safetensors"),
            safetensors(&[1.0, 2.0, 3.0]),
        )
        .unwrap();
        for file in [
            "model_index.json",
            "transformer/config.json",
            "vae/config.json",
            "transformer/diffusion_pytorch_model.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ] {
            settle(&root.join(file));
        }
        dir
    }

    /// The revision without any cache.
    fn uncached(dir: &Path) -> String {
        let (revision, cached) = revision_with_cache(dir, &[], Duration::ZERO).unwrap();
        assert!(!cached);
        revision
    }

    /// Rewrites `path` with `edit` applied to its bytes (same size).
    fn edit(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = std::fs::read(path).unwrap();
        let len = bytes.len();
        edit(&mut bytes);
        assert_eq!(bytes.len(), len);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn the_revision_covers_the_weights_with_the_configs_unchanged() {
        let model = model_with_weights();
        let dir = model.path();
        let first = uncached(dir);
        assert_eq!(first.len(), 12);
        assert_eq!(first, uncached(dir), "same files, same revision");

        let big = dir.join("transformer/diffusion_pytorch_model.safetensors");
        let data_start =
            8 + u64::from_le_bytes(std::fs::read(&big).unwrap()[..8].try_into().unwrap()) as usize;
        // Re-trained weights: every value differs, shapes and header stay.
        edit(&big, |b| {
            for v in b[data_start..].chunks_exact_mut(4) {
                let x = f32::from_le_bytes(v.try_into().unwrap());
                v.copy_from_slice(&(x * 0.5 - 1.0).to_le_bytes());
            }
        });
        let retrained = uncached(dir);
        assert_ne!(first, retrained, "re-trained weights");
        // The last bytes are always sampled, and so is the start of the data.
        edit(&big, |b| *b.last_mut().unwrap() ^= 1);
        let last = uncached(dir);
        assert_ne!(retrained, last, "the last chunk");
        edit(&big, |b| b[data_start] ^= 1);
        let start = uncached(dir);
        assert_ne!(last, start, "the first chunk");
        // A small file is hashed whole.
        let small = dir.join("vae/diffusion_pytorch_model.safetensors");
        edit(&small, |b| {
            let at = b.len() - 6;
            b[at] ^= 1;
        });
        let small_changed = uncached(dir);
        assert_ne!(start, small_changed, "a small file's data");
        // The header (a dtype, a shape, metadata) counts.
        edit(&small, |b| {
            let end = b.len() - 12;
            let header = String::from_utf8(b[8..end].to_vec()).unwrap();
            let renamed = header.replace("\"pt\"", "\"PT\"");
            b[8..end].copy_from_slice(renamed.as_bytes());
        });
        assert_ne!(small_changed, uncached(dir), "the header");
        // A renamed weights file counts; a file that is not weights does not.
        let before = uncached(dir);
        std::fs::write(dir.join("README.md"), "hello").unwrap();
        assert_eq!(before, uncached(dir), "other files do not count");
        std::fs::rename(&small, dir.join("vae/model.safetensors")).unwrap();
        assert_ne!(before, uncached(dir), "the weights' names");
        // A truncated weights file is no model.
        std::fs::write(&small, [1, 2, 3]).unwrap();
        assert!(matches!(
            revision_with_cache(dir, &[], Duration::ZERO),
            Err(GenerateError::Load(m)) if m.contains("not a safetensors")
        ));
    }

    #[test]
    fn the_revision_is_cached_and_the_cache_follows_the_files() {
        let model = model_with_weights();
        let dir = model.path();
        let cache_dir = tempfile::tempdir().unwrap();
        let unwritable = cache_dir.path().join("file");
        std::fs::write(&unwritable, "").unwrap();
        let caches = [
            unwritable.join("nested/revision.json"),
            cache_dir.path().join("revisions/model.json"),
        ];
        let (first, cached) = revision_with_cache(dir, &caches, Duration::ZERO).unwrap();
        assert!(!cached, "nothing cached yet");
        assert_eq!(first, uncached(dir), "the cache does not change the rule");
        assert!(caches[1].is_file(), "the first writable place has it");
        let (again, cached) = revision_with_cache(dir, &caches, Duration::ZERO).unwrap();
        assert!(cached, "a restart reads the cache");
        assert_eq!(again, first, "and gets the same value");

        // A changed weights file (same size) invalidates it.
        let big = dir.join("transformer/diffusion_pytorch_model.safetensors");
        edit(&big, |b| *b.last_mut().unwrap() ^= 0x40);
        let (changed, cached) = revision_with_cache(dir, &caches, Duration::ZERO).unwrap();
        assert!(!cached, "stale entry ignored");
        assert_ne!(changed, first);
        assert_eq!(changed, uncached(dir));

        // A corrupt cache just means computing; a racy file is not cached.
        std::fs::write(&caches[1], "not json").unwrap();
        let (value, cached) = revision_with_cache(dir, &caches, Duration::from_secs(600)).unwrap();
        assert_eq!((value.as_str(), cached), (changed.as_str(), false));
        assert_eq!(std::fs::read_to_string(&caches[1]).unwrap(), "not json");
        // The default places: the XDG/home cache, else next to the model.
        let defaults = default_cache_paths(dir);
        assert_eq!(defaults.last().unwrap(), &dir.join(".t2v-revision.json"));
        assert!(defaults
            .iter()
            .all(|p| p.extension().is_some_and(|e| e == "json")));
    }

    /// `[model.cache]` and a request's `cache_threshold` reach the pipeline: the variant's
    /// First-Block-Cache skips forwards of the tiny model, a request's 0 turns it off, a
    /// request's tiny threshold skips nothing, and a distilled variant refuses a request's cache.
    #[test]
    fn the_variants_cache_and_a_requests_threshold_reach_the_pipeline() {
        use crate::generate::variant::{CacheConfig, CacheKind};
        let model = ModelConfig {
            dir: tiny_model().display().to_string(),
            name: "tiny-cached".into(),
            device: DeviceChoice::Cpu,
            cache: CacheConfig {
                kind: CacheKind::FirstBlock,
                threshold: Some(0.9),
                ..CacheConfig::default()
            },
            ..ModelConfig::default()
        };
        let mut generator = WanGenerator::load_model(&model).unwrap();
        let mut run = |cache_threshold: Option<f32>| {
            let job = JobSpec {
                steps: 8,
                cache_threshold,
                ..crate::generate::tests::spec(3)
            };
            let mut hooks = |_: StepInfo| ControlFlow::Continue(());
            generator.run(&job, None, &mut hooks)
        };
        let variant = run(None).unwrap().step_cache.expect("the variant's cache");
        assert_eq!((variant.kind, variant.threshold), ("first_block", 0.9));
        assert_eq!(variant.forwards.len(), 16, "8 steps, cond and uncond");
        assert!(
            variant.skipped() > 0,
            "threshold 0.9 skips on the tiny model"
        );
        assert!(run(Some(0.0)).unwrap().step_cache.is_none(), "0 = off");
        let strict = run(Some(0.001)).unwrap().step_cache.unwrap();
        assert_eq!(strict.skipped(), 0);
        assert_eq!(strict.threshold, f64::from(0.001f32));
        // What the job reports (manifest, metric): the same counts.
        let job = JobSpec {
            steps: 8,
            ..crate::generate::tests::spec(3)
        };
        let mut hooks = |_: StepInfo| ControlFlow::Continue(());
        let generated = generator.generate(&job, None, &mut hooks).unwrap();
        let summary = generated.step_cache.expect("a summary");
        assert_eq!(
            (summary.kind.as_str(), summary.forwards, summary.skipped),
            ("first_block", 16, variant.skipped() as u32)
        );

        let lightning = ModelConfig {
            preset: crate::config::PresetChoice::Lightning,
            cache: CacheConfig::default(),
            ..model
        };
        let mut distilled = WanGenerator::load_model(&lightning).unwrap();
        let job = JobSpec {
            cache_threshold: Some(0.1),
            ..crate::generate::tests::spec(3)
        };
        let mut hooks = |_: StepInfo| ControlFlow::Continue(());
        match distilled.run(&job, None, &mut hooks) {
            Err(GenerateError::InvalidInput(message)) => {
                assert!(message.contains("step-distilled"), "{message}")
            }
            other => panic!(
                "a cache on the lightning variant ran: {:?}",
                other.map(|o| o.step_cache)
            ),
        }
    }
}
