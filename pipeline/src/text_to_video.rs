//! The whole Wan pipeline: diffusers `WanPipeline.__call__` (text-to-video) and
//! `WanImageToVideoPipeline.__call__` (Wan2.2 I2V-A14B; TI2V-5B with an image) with
//! `output_type="np"`, over a model directory in the diffusers layout. Which of them a
//! directory runs is its [`ModelKind`]; the image conditioning is [`conditioning`].
//!
//! [`WanT2V::load`] reads every component onto the device (placing them as the
//! [`MemoryPolicy`] says); [`WanT2V::generate`] runs, as the reference does:
//! 1. check the inputs and round the frame count (and the size to whole patches), with warnings;
//! 2. encode the prompt, and the negative prompt when `guidance_scale > 1`;
//! 3. set the schedule;
//! 4. draw the initial noise on the CPU in f32 from the seed (bit-identical to
//!    `torch.Generator("cpu").manual_seed(seed)`) and move it to the device; with an image,
//!    resize it (Pillow's Lanczos), encode it with the VAE and build the condition;
//! 5. denoise (two experts split at `boundary_ratio`, CFG with `guidance_scale` /
//!    `guidance_scale_2`), reporting every step to the caller, who may cancel;
//! 6. de-normalise the latents, decode them with the VAE and return frames `(F, H, W, 3)` f32 in
//!    [0, 1] on the CPU, with the seed and per-phase timings.
//!
//! [`WanT2V::generate_with`] resumes from a [`DenoiseState`] saved by the step callback: steps
//! 1–3 run as usual, the noise is not drawn, the scheduler and latents are restored and the loop
//! continues at the saved step — on the CPU bit-identically to an uninterrupted run.
//!
//! The seed goes through libtorch's global generator, so two pipelines must not generate at
//! the same time in one process.
//!
//! This file holds the public types and the run's main flow; beside it, `load` reads the
//! components, `resolve` checks and rounds a request (step 1), `steps` holds steps 2–5, `oom`
//! classifies allocation failures, `parallel` spreads a run over several ranks and `random`
//! builds a pipeline with random weights.

use std::time::{Duration, Instant};

use t2v_contract::defaults::WAN22_T2V_A14B;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::DenoiseState;
use crate::denoise::{NoisePredictor, StepControl, StepEnd};
use crate::error::{PipelineError, Result};
use crate::memory::{
    estimate, EstimateRequest, ImageEncode, MemoryEstimate, MemoryPolicy, ModelConfigs,
    ParkedWeights,
};
use crate::model_dir::{ModelDir, ModelKind};
use crate::scheduler::{SamplerKind, SchedulerConfig};
use crate::wan::prompt::{TextEncoder, MAX_SEQUENCE_LENGTH};
use crate::wan::vae::{denormalize_latents, to_frames_f32, AutoencoderKLWan};
use crate::wan::WanTransformer3DModel;

pub mod conditioning;
mod load;
mod oom;
mod parallel;
mod random;
mod resolve;
mod steps;

use conditioning::{Conditioned, LatentCondition};

use oom::out_of_memory;
pub use oom::torch_oom_summary;
pub use parallel::ParallelRun;

/// `height` and `width` must be multiples of this (`WanPipeline.check_inputs`).
pub const SIZE_MULTIPLE: i64 = 16;

/// Where and how the components are loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    pub device: Device,
    /// Transformer and text encoder weights (f32 on the CPU, bf16 or f16 on CUDA).
    /// [`fp8::FP8`](crate::wan::fp8::FP8) (`Kind::Float8e4m3fn`): the transformer blocks' linear
    /// weights in FP8, the rest in bf16 (see [`crate::wan::fp8`]).
    pub dtype: Kind,
    /// VAE weights (diffusers' examples keep the VAE in f32).
    pub vae_dtype: Kind,
    pub memory: MemoryPolicy,
}

impl LoadOptions {
    /// Everything in `dtype` on `device`, everything resident.
    pub fn new(device: Device, dtype: Kind) -> Self {
        Self {
            device,
            dtype,
            vae_dtype: dtype,
            memory: MemoryPolicy::default(),
        }
    }
}

/// One generation request. [`Default`] is the fleet's model defaults (see its doc).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationParams {
    pub prompt: String,
    /// `None`: the reference's default negative prompt, `""`.
    pub negative_prompt: Option<String>,
    pub width: i64,
    pub height: i64,
    /// Rounded down to `4k + 1` (with a warning) as the reference does.
    pub num_frames: i64,
    pub num_inference_steps: usize,
    /// CFG scale of `transformer` (the high-noise expert); CFG runs when it is above 1.
    pub guidance_scale: f64,
    /// CFG scale of `transformer_2`; `None` = `guidance_scale`. Only for two-expert models.
    pub guidance_scale_2: Option<f64>,
    /// Replaces the scheduler config's flow shift.
    pub shift: Option<f64>,
    /// `None`: the sampler `scheduler/scheduler_config.json` names.
    pub sampler: Option<SamplerKind>,
    /// `None`: a random seed, reported in the output.
    pub seed: Option<u64>,
    /// Text tokens the prompt is padded (and truncated) to.
    pub max_sequence_length: usize,
    /// Refuse prompts longer than the token limit instead of truncating them silently, as the
    /// reference does.
    pub reject_long_prompts: bool,
    /// The limit `reject_long_prompts` applies, `</s>` included; `None` = `max_sequence_length`.
    pub max_prompt_tokens: Option<usize>,
    /// Skip transformer blocks on steps close to the last computed one ([`crate::step_cache`]);
    /// `None`: every forward computes.
    pub step_cache: Option<crate::step_cache::StepCacheConfig>,
    /// The first frame of image-to-video (Wan2.2 I2V-A14B, required there) and
    /// text+image-to-video (TI2V-5B, optional) models; refused by text-to-video-only models.
    /// Resized to `width × height` as the reference does; a request that leaves the size to the
    /// model takes it from [`crate::image::size_for_image`].
    pub image: Option<crate::image::ConditionImage>,
}

impl Default for GenerationParams {
    /// The model the fleet serves, Wan2.2 T2V-A14B, with the numbers of
    /// [`t2v_contract::defaults::WAN22_T2V_A14B`] — their one home, shared with the worker and
    /// the producer: 832×480, 81 frames, 40 steps, guidance 4.0 (high-noise expert) and 3.0
    /// (low-noise expert). A single-expert model refuses `guidance_scale_2`: set it to `None`
    /// there (and `guidance_scale` to [`t2v_contract::defaults::SINGLE_EXPERT_GUIDANCE`] for
    /// the Wan2.1 default). The flow shift and the sampler stay the model directory's.
    fn default() -> Self {
        let model = WAN22_T2V_A14B;
        Self {
            prompt: String::new(),
            negative_prompt: None,
            width: i64::from(model.width),
            height: i64::from(model.height),
            num_frames: i64::from(model.num_frames),
            num_inference_steps: model.steps as usize,
            guidance_scale: f64::from(model.guidance_scale),
            guidance_scale_2: Some(f64::from(model.guidance_scale_2)),
            shift: None,
            sampler: None,
            seed: None,
            max_sequence_length: MAX_SEQUENCE_LENGTH,
            reject_long_prompts: false,
            max_prompt_tokens: None,
            step_cache: None,
            image: None,
        }
    }
}

impl GenerationParams {
    /// The published defaults of a kind of model ([`ModelKind::defaults`]): size, frames,
    /// steps and guidance (`guidance_scale_2` only for two experts); the rest as
    /// [`Default`]. E.g. TI2V-5B: 1280×704, 121 frames, 50 steps, guidance 5.0.
    pub fn defaults_for(kind: ModelKind) -> Self {
        let model = kind.defaults();
        let two_experts = matches!(
            kind,
            ModelKind::TextToVideo { two_experts: true }
                | ModelKind::ImageToVideo { two_experts: true }
        );
        Self {
            width: i64::from(model.width),
            height: i64::from(model.height),
            num_frames: i64::from(model.num_frames),
            num_inference_steps: model.steps as usize,
            guidance_scale: f64::from(model.guidance_scale),
            guidance_scale_2: two_experts.then_some(f64::from(model.guidance_scale_2)),
            ..Self::default()
        }
    }
}

/// A request after the reference's checks and rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedParams {
    pub width: i64,
    pub height: i64,
    pub num_frames: i64,
    /// `[1, channels, (F − 1)/4 + 1, H/8, W/8]`.
    pub latent_shape: [i64; 5],
    pub guidance_scale: f64,
    pub guidance_scale_2: Option<f64>,
    pub seed: u64,
    /// What was adjusted, in the reference's words.
    pub warnings: Vec<String>,
}

/// Wall-clock time of each phase (the device synchronised before each reading).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseTimings {
    pub text_encode: Duration,
    pub denoise: Duration,
    pub vae_decode: Duration,
    pub total: Duration,
}

/// The result of [`WanT2V::generate`].
#[derive(Debug)]
pub struct GenerationOutput {
    /// `(F, H, W, 3)` f32 in [0, 1] on the CPU — `WanPipeline(..., output_type="np").frames[0]`.
    pub frames: Tensor,
    /// The seed the noise was drawn from (the request's, or the random one chosen).
    pub seed: u64,
    pub width: i64,
    pub height: i64,
    pub num_frames: i64,
    pub timings: PhaseTimings,
    pub warnings: Vec<String>,
    /// What the step cache did (forwards computed and skipped), when the run had one.
    pub step_cache: Option<crate::step_cache::CacheReport>,
}

/// One expert and, when the policy parks it, its host copy.
struct Expert {
    model: WanTransformer3DModel,
    weights: Option<ParkedWeights>,
}

impl Expert {
    /// Moves its weights to the host copy, when the policy parks it.
    fn park(&self) -> Result<()> {
        match &self.weights {
            Some(weights) => weights.park(),
            None => Ok(()),
        }
    }
}

/// An expert as the denoising loop sees it: fetched onto the device (and the other one parked)
/// the first time it is asked for a prediction.
struct OnDemand<'a> {
    expert: &'a Expert,
    other: Option<&'a Expert>,
    /// The request's image conditioning, added to every forward's input.
    condition: Option<&'a LatentCondition>,
}

impl OnDemand<'_> {
    /// Fetches this expert onto the device (parking the other one) when it is parked.
    fn make_resident(&self) -> Result<()> {
        if let Some(weights) = &self.expert.weights {
            if !weights.is_on_device() {
                if let Some(other) = self.other.and_then(|o| o.weights.as_ref()) {
                    other.park()?;
                }
                weights.fetch()?;
            }
        }
        Ok(())
    }
}

impl NoisePredictor for OnDemand<'_> {
    fn dtype(&self) -> Kind {
        self.expert.model.kind()
    }

    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        self.make_resident()?;
        match self.condition {
            None => self.expert.model.forward(latents, timestep, text),
            Some(condition) => {
                let (input, timestep) = condition.model_input(latents, timestep)?;
                self.expert.model.forward(&input, &timestep, text)
            }
        }
    }
}

impl crate::step_cache::CachePredictor for OnDemand<'_> {
    fn predict_cached(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        cache: &mut crate::step_cache::BranchCache<'_>,
    ) -> Result<Tensor> {
        self.make_resident()?;
        match self.condition {
            None => self
                .expert
                .model
                .forward_cached(latents, timestep, text, cache),
            Some(condition) => {
                let (input, timestep) = condition.model_input(latents, timestep)?;
                self.expert
                    .model
                    .forward_cached(&input, &timestep, text, cache)
            }
        }
    }
}

/// A loaded text-to-video Wan pipeline.
pub struct WanT2V {
    model_dir: ModelDir,
    /// What the directory is (text-, image- or text+image-to-video), checked against requests.
    kind: ModelKind,
    options: LoadOptions,
    /// Always `Some` between calls (taken while the sequence length is set for a request).
    text: Option<TextEncoder>,
    text_weights: Option<ParkedWeights>,
    high: Expert,
    low: Option<Expert>,
    vae: AutoencoderKLWan,
    scheduler: SchedulerConfig,
    /// Set by [`Self::set_parallel`]: the ranks a job runs on; `None` runs on one device.
    parallel: Option<ParallelRun>,
}

impl WanT2V {
    pub fn model_dir(&self) -> &ModelDir {
        &self.model_dir
    }

    /// The VAE (its encoder conditions image-to-video requests, its decoder makes the frames).
    pub fn vae(&self) -> &AutoencoderKLWan {
        &self.vae
    }

    /// What the loaded model is, and so whether requests need, may or must not carry an image.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The frame size `(width, height)` for `image` when a request leaves it to the model:
    /// the image's aspect ratio at the model's default area, in whole latent patches
    /// ([`crate::image::size_for_image`]).
    pub fn size_for_image(&self, image: &crate::image::ConditionImage) -> (i64, i64) {
        let defaults = self.kind.defaults();
        let (_, spatial) = self.vae_scale_factors();
        let multiple = spatial * self.high.model.config().patch_size[1];
        let area = i64::from(defaults.width) * i64::from(defaults.height);
        crate::image::size_for_image(image, area, multiple)
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// The configs of the loaded components.
    pub fn configs(&self) -> Result<ModelConfigs> {
        Ok(ModelConfigs {
            transformer: self.high.model.config().clone(),
            transformer_2: self.low.as_ref().map(|l| l.model.config().clone()),
            text_encoder: self.text_encoder()?.model().config().clone(),
            vae: self.vae.config().clone(),
            per_token_timesteps: self.model_dir.expand_timesteps(),
        })
    }

    /// The preflight estimate of peak device memory for `params` under this pipeline's policy.
    pub fn estimate_memory(&self, params: &GenerationParams) -> Result<MemoryEstimate> {
        let resolved = self.resolve(params)?;
        estimate(
            &self.configs()?,
            &EstimateRequest {
                width: resolved.width,
                height: resolved.height,
                num_frames: resolved.num_frames,
                dtype: self.options.dtype,
                vae_dtype: self.options.vae_dtype,
                text_len: params.max_sequence_length as i64,
                policy: self.options.memory,
                image: ImageEncode::of(self.kind, params.image.is_some()),
            },
        )
    }

    fn text_encoder(&self) -> Result<&TextEncoder> {
        self.text.as_ref().ok_or_else(|| {
            PipelineError::invalid(
                "text_encoder",
                "unavailable after an earlier failure; reload the pipeline",
            )
        })
    }

    /// How many experts the device holds now: every one unless the policy swaps them; under
    /// [`crate::memory::ExpertPlacement::SwapExperts`] none between jobs (from the load on) and
    /// at most one while the denoising loop runs.
    pub fn experts_on_device(&self) -> usize {
        std::iter::once(&self.high)
            .chain(self.low.as_ref())
            .filter(|expert| {
                expert
                    .weights
                    .as_ref()
                    .is_none_or(ParkedWeights::is_on_device)
            })
            .count()
    }

    /// `encode_prompt`: the prompt embeddings `(1, max_sequence_length, d_model)` and, with
    /// `do_cfg`, the negative ones, on the device in the text encoder's dtype. Fetches and (by
    /// policy) parks the text encoder.
    pub fn encode_prompt(
        &mut self,
        prompt: &str,
        negative_prompt: Option<&str>,
        do_cfg: bool,
        max_sequence_length: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if let Some(weights) = &self.text_weights {
            weights.fetch()?;
        }
        let text = self
            .text
            .take()
            .ok_or_else(|| {
                PipelineError::invalid(
                    "text_encoder",
                    "unavailable after an earlier failure; reload the pipeline",
                )
            })?
            .with_max_sequence_length(max_sequence_length);
        let prompts = [prompt.to_string()];
        let negative = negative_prompt.map(|n| [n.to_string()]);
        let encoded = text.encode_prompt(&prompts, negative.as_ref().map(|n| n.as_slice()), do_cfg);
        self.text = Some(text);
        if self.options.memory.offload_text_encoder {
            if let Some(weights) = &self.text_weights {
                weights.park()?;
            }
        }
        encoded
    }

    /// Runs the pipeline for `params`. `on_step` sees every denoising step (after the scheduler
    /// stepped); [`StepControl::Stop`] ends the run with [`PipelineError::Canceled`].
    pub fn generate(
        &mut self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<GenerationOutput> {
        self.generate_with(params, None, on_step)
    }

    /// [`WanT2V::generate`], resuming from `resume` (captured with [`DenoiseState::capture`] by
    /// an earlier run of the same `params`) when given. `on_step` may capture states to resume
    /// from later.
    pub fn generate_with(
        &mut self,
        params: &GenerationParams,
        resume: Option<&DenoiseState>,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<GenerationOutput> {
        let _no_grad = tch::no_grad_guard();
        let start = Instant::now();

        // 1. inputs
        let resolved = self.resolve(params)?;
        for warning in &resolved.warnings {
            tracing::warn!("{warning}");
        }

        // 2. prompt embeddings
        let do_cfg = resolved.guidance_scale > 1.0;
        let embeds = self.encode_request_prompts(params, do_cfg)?;
        let text_encode = start.elapsed();

        // 3. timesteps; 4. the initial latents and the image's condition
        let prepared = self.prepare_run(params, &resolved, resume)?;

        // 5. denoising loop
        let denoise_start = Instant::now();
        let (latents, step_cache) =
            self.denoise_request(params, &resolved, prepared, embeds, do_cfg, on_step)?;
        synchronize(self.options.device);
        let denoise_time = denoise_start.elapsed();

        // 6. de-normalise, decode, frames in [0, 1]
        let decode_start = Instant::now();
        let frames = self.decode(&latents).map_err(out_of_memory)?;
        let vae_decode = decode_start.elapsed();
        Ok(GenerationOutput {
            frames,
            seed: resolved.seed,
            width: resolved.width,
            height: resolved.height,
            num_frames: resolved.num_frames,
            timings: PhaseTimings {
                text_encode,
                denoise: denoise_time,
                vae_decode,
                total: start.elapsed(),
            },
            warnings: resolved.warnings,
            step_cache,
        })
    }

    /// Final latents → `(F, H, W, 3)` f32 frames on the CPU.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let vae_latents = latents
            .f_to_device(self.options.device)?
            .f_to_kind(self.options.vae_dtype)?;
        let denormalized = denormalize_latents(&vae_latents, self.vae.config())?;
        let video = match &self.parallel {
            Some(run) if run.decodes_on_several_devices() => {
                self.decode_on_ranks(run, &denormalized)?
            }
            _ => self.vae.decode(&denormalized)?,
        };
        to_frames_f32(&video)
    }
}

/// `randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=float32)`:
/// drawn on the CPU in f32 (the same values whatever device the run uses).
pub fn initial_noise(seed: u64, shape: [i64; 5]) -> Result<Tensor> {
    // libtorch's CPU generator is process-global: seeding and drawing must not interleave with
    // another thread's (parallel tests, or two pipelines in one process).
    static GLOBAL_GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = GLOBAL_GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Same bits as torch's uint64 seed, also above i64::MAX.
    tch::manual_seed(seed as i64);
    Ok(Tensor::f_randn(shape, (Kind::Float, Device::Cpu))?)
}

/// A seed below 2^63 from the clock and the process's hash keys.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.finish() >> 1
}

fn synchronize(device: Device) {
    if let Device::Cuda(ordinal) = device {
        tch::Cuda::synchronize(ordinal as i64);
    }
}
