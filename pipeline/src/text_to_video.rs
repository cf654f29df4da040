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

use std::path::Path;
use std::time::{Duration, Instant};

use t2v_contract::defaults::WAN22_T2V_A14B;
use tch::{nn, Device, Kind, Tensor};

use crate::checkpoint::DenoiseState;
use crate::denoise::{
    denoise, DenoiseInput, DenoiseSettings, Experts, NoisePredictor, StepControl, StepEnd,
};
use crate::error::{PipelineError, Result};
use crate::loader;
use crate::memory::{
    estimate, EstimateRequest, ExpertPlacement, ImageEncode, MemoryEstimate, MemoryPolicy,
    ModelConfigs, ParkedWeights,
};
use crate::model_dir::{Component, ModelDir, ModelKind};
use crate::scheduler::{SamplerKind, Scheduler, SchedulerConfig};
use crate::wan::prompt::{T5Tokenizer, TextEncoder, MAX_SEQUENCE_LENGTH};
use crate::wan::text_encoder::{EmbeddingKey, UMT5Config, UMT5EncoderModel};
use crate::wan::vae::{denormalize_latents, to_frames_f32, AutoencoderKLWan};
use crate::wan::{fp8, WanTransformer3DModel};

pub mod conditioning;
mod parallel;
mod random;

use conditioning::{Conditioned, LatentCondition, VideoSize};

pub use parallel::ParallelRun;

/// `height` and `width` must be multiples of this (`WanPipeline.check_inputs`).
pub const SIZE_MULTIPLE: i64 = 16;

/// Where and how the components are loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    pub device: Device,
    /// Transformer and text encoder weights (f32 on the CPU, bf16 or f16 on CUDA).
    /// [`fp8::FP8`] (`Kind::Float8e4m3fn`): the transformer blocks' linear weights in FP8, the
    /// rest in bf16 (see [`crate::wan::fp8`]).
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

/// Step 2's output of [`WanT2V::generate_with`]: the prompt embeddings and, with CFG, the
/// negative ones, on the device.
struct PromptEmbeds {
    positive: Tensor,
    negative: Option<Tensor>,
}

/// What the denoising loop starts from (steps 3 and 4 of [`WanT2V::generate_with`]).
struct PreparedRun {
    scheduler: Box<dyn Scheduler>,
    /// On the device.
    latents: Tensor,
    start_step: usize,
    /// The image's latents and mask, for image-to-video requests.
    condition: Option<LatentCondition>,
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
    /// Checks that the directory is complete, then loads every component. Under
    /// [`ExpertPlacement::SwapExperts`] `transformer_2` is loaded first and parked, so the
    /// device never holds both experts.
    pub fn load(model_dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        Self::load_with_loras(model_dir, options, &crate::lora::ExpertLoras::default())
    }

    /// [`Self::load`], with LoRA files fused into each expert's weights as it loads (before it is
    /// parked under [`ExpertPlacement::SwapExperts`]); see [`crate::lora`]. A LoRA for
    /// `transformer_2` on a single-expert model, or one that does not fit, is refused here.
    pub fn load_with_loras(
        model_dir: impl AsRef<Path>,
        options: LoadOptions,
        loras: &crate::lora::ExpertLoras,
    ) -> Result<Self> {
        let model_dir = ModelDir::open(model_dir)?;
        model_dir.check_complete()?;
        let kind = model_dir.kind()?;
        if !loras.transformer_2.is_empty() && !model_dir.has(Component::Transformer2) {
            return Err(crate::lora::LoraError::NoSecondExpert.into());
        }
        if options.dtype == fp8::FP8 && options.device.is_cuda() {
            fp8::probe_scaled_mm(options.device).map_err(fp8_unsupported)?;
        }
        let scheduler = SchedulerConfig::from_file(
            &model_dir
                .path(Component::Scheduler)?
                .join("scheduler_config.json"),
        )?;
        // Each parkable component is parked as soon as it is loaded, so that under SwapExperts
        // the device never holds both experts: transformer_2, the text encoder, then transformer.
        let low = if model_dir.has(Component::Transformer2) {
            let low = load_expert(&model_dir, Component::Transformer2, options, loras)?;
            low.park()?;
            Some(low)
        } else {
            None
        };
        let (text, text_weights) = load_text_encoder(&model_dir, options)?;
        if let Some(weights) = &text_weights {
            weights.park()?;
        }
        let high = load_expert(&model_dir, Component::Transformer, options, loras)?;
        if let Some(low) = &low {
            if low.model.kind() != high.model.kind() {
                return Err(PipelineError::invalid(
                    "transformer_2",
                    "dtype differs from transformer's",
                ));
            }
        }
        let vae = load_vae(&model_dir, options)?;
        Ok(Self {
            model_dir,
            kind,
            options,
            text: Some(text),
            text_weights,
            high,
            low,
            vae,
            scheduler,
            parallel: None,
        })
    }

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

    /// `WanPipeline.check_inputs` and the adjustments `__call__` makes before encoding.
    pub fn resolve(&self, params: &GenerationParams) -> Result<ResolvedParams> {
        let mut warnings = Vec::new();
        // 1. check_inputs: sizes divisible by 16; guidance_scale_2 only with a boundary; an
        //    image exactly when the model takes one
        self.kind.check_request(params.image.is_some())?;
        self.check_inputs(params)?;
        // 2. frames: `num_frames − 1` divisible by the VAE's temporal factor
        let num_frames = self.round_num_frames(params.num_frames, &mut warnings);
        // 3. size: whole patches of the latent
        let (height, width) = self.round_size(params, &mut warnings)?;
        // The reference's default for the low-noise expert: the high-noise scale.
        let guidance_scale_2 = self
            .model_dir
            .boundary_ratio()
            .map(|_| params.guidance_scale_2.unwrap_or(params.guidance_scale));
        let (temporal, spatial) = self.vae_scale_factors();
        Ok(ResolvedParams {
            width,
            height,
            num_frames,
            latent_shape: [
                1,
                // the noise's channels: the transformer's output (its input adds the image's)
                self.high.model.config().out_channels(),
                (num_frames - 1) / temporal + 1,
                height / spatial,
                width / spatial,
            ],
            guidance_scale: params.guidance_scale,
            guidance_scale_2,
            seed: params.seed.unwrap_or_else(random_seed),
            warnings,
        })
    }

    /// Step 1 of [`Self::resolve`]: the reference's `check_inputs`, plus the ranges it leaves to
    /// later failures (finite guidance, at least one step, frame and token).
    fn check_inputs(&self, params: &GenerationParams) -> Result<()> {
        for (field, value) in [("height", params.height), ("width", params.width)] {
            if value <= 0 || value % SIZE_MULTIPLE != 0 {
                return Err(PipelineError::invalid(
                    field,
                    format!("{value} must be a positive multiple of {SIZE_MULTIPLE} (e.g. 480×832 or 720×1280)"),
                ));
            }
        }
        if self.model_dir.boundary_ratio().is_none() && params.guidance_scale_2.is_some() {
            return Err(PipelineError::invalid(
                "guidance_scale_2",
                "only supported by two-expert models (boundary_ratio in model_index.json); leave it unset",
            ));
        }
        for (field, value) in [
            ("guidance_scale", Some(params.guidance_scale)),
            ("guidance_scale_2", params.guidance_scale_2),
            ("shift", params.shift),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return Err(PipelineError::invalid(field, "must be a finite number"));
            }
        }
        if params.num_inference_steps == 0 {
            return Err(PipelineError::invalid(
                "num_inference_steps",
                "must be at least 1",
            ));
        }
        if params.max_sequence_length == 0 {
            return Err(PipelineError::invalid(
                "max_sequence_length",
                "must be at least 1",
            ));
        }
        if params.num_frames < 1 {
            return Err(PipelineError::invalid(
                "num_frames",
                format!("{} must be at least 1", params.num_frames),
            ));
        }
        if params.reject_long_prompts {
            self.check_prompt_lengths(params)?;
        }
        Ok(())
    }

    /// The VAE's (temporal, spatial) compression: frames and pixels per latent.
    fn vae_scale_factors(&self) -> (i64, i64) {
        let vae = self.vae.config();
        let temporal = vae.scale_factor_temporal.unwrap_or(vae.temporal_ratio());
        (temporal, vae.spatial_ratio())
    }

    /// Step 2 of [`Self::resolve`]: `num_frames` rounded down to `temporal·k + 1`, with the
    /// reference's warning.
    fn round_num_frames(&self, num_frames: i64, warnings: &mut Vec<String>) -> i64 {
        let (temporal, _) = self.vae_scale_factors();
        let mut num_frames = num_frames;
        if num_frames % temporal != 1 {
            warnings.push(format!(
                "`num_frames - 1` has to be divisible by {temporal}. Rounding to the nearest number."
            ));
            num_frames = num_frames / temporal * temporal + 1;
        }
        num_frames.max(1)
    }

    /// Step 3 of [`Self::resolve`]: `(height, width)` rounded down to whole latent patches, with
    /// the reference's warning; an error when nothing is left.
    fn round_size(
        &self,
        params: &GenerationParams,
        warnings: &mut Vec<String>,
    ) -> Result<(i64, i64)> {
        let (_, spatial) = self.vae_scale_factors();
        let [_, p_h, p_w] = self.high.model.config().patch_size;
        let (h_multiple, w_multiple) = (spatial * p_h, spatial * p_w);
        let height = params.height / h_multiple * h_multiple;
        let width = params.width / w_multiple * w_multiple;
        if (height, width) != (params.height, params.width) {
            if height == 0 || width == 0 {
                return Err(PipelineError::invalid(
                    if height == 0 { "height" } else { "width" },
                    format!("must be at least ({h_multiple}, {w_multiple}) pixels for this model"),
                ));
            }
            warnings.push(format!(
                "`height` and `width` must be multiples of ({h_multiple}, {w_multiple}) for proper patchification. \
                 Adjusting ({}, {}) -> ({height}, {width}).",
                params.height, params.width
            ));
        }
        Ok((height, width))
    }

    fn check_prompt_lengths(&self, params: &GenerationParams) -> Result<()> {
        let limit = params
            .max_prompt_tokens
            .unwrap_or(params.max_sequence_length);
        let text = self.text_encoder()?;
        let prompts = [
            ("prompt", Some(&params.prompt)),
            ("negative_prompt", params.negative_prompt.as_ref()),
        ];
        for (field, prompt) in prompts {
            let Some(prompt) = prompt else { continue };
            let tokens = text.count_tokens(prompt)?;
            if tokens > limit {
                return Err(PipelineError::invalid(
                    field,
                    format!("{tokens} tokens (with </s>) exceed the limit of {limit}; shorten it"),
                ));
            }
        }
        Ok(())
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

    /// Step 2 of [`Self::generate_with`]: the prompt's embeddings and, with `do_cfg`, the
    /// negative prompt's; the device is synchronised so that the phase's time is its own.
    fn encode_request_prompts(
        &mut self,
        params: &GenerationParams,
        do_cfg: bool,
    ) -> Result<PromptEmbeds> {
        let (positive, negative) = self
            .encode_prompt(
                &params.prompt,
                params.negative_prompt.as_deref(),
                do_cfg,
                params.max_sequence_length,
            )
            .map_err(out_of_memory)?;
        synchronize(self.options.device);
        Ok(PromptEmbeds { positive, negative })
    }

    /// Steps 3 and 4 of [`Self::generate_with`]: the schedule, the initial latents on the device
    /// (drawn from the seed, or restored with the scheduler from `resume`) and, with an image,
    /// its condition (4b).
    fn prepare_run(
        &self,
        params: &GenerationParams,
        resolved: &ResolvedParams,
        resume: Option<&DenoiseState>,
    ) -> Result<PreparedRun> {
        let mut scheduler = self.scheduler.build(params.sampler);
        scheduler.set_timesteps(params.num_inference_steps, params.shift)?;
        let (latents, start_step) = initial_latents(scheduler.as_mut(), params, resolved, resume)?;
        let latents = latents.f_to_device(self.options.device)?;
        let condition = self
            .prepare_condition(params, resolved)
            .map_err(out_of_memory)?;
        Ok(PreparedRun {
            scheduler,
            latents,
            start_step,
            condition,
        })
    }

    /// Step 5 of [`Self::generate_with`]: the denoising loop from `prepared` with the request's
    /// step cache; returns the final latents (the image's condition taken off) and the cache's
    /// report. The prompt embeddings are dropped before the decode needs their memory.
    fn denoise_request(
        &self,
        params: &GenerationParams,
        resolved: &ResolvedParams,
        prepared: PreparedRun,
        embeds: PromptEmbeds,
        do_cfg: bool,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<(Tensor, Option<crate::step_cache::CacheReport>)> {
        let PreparedRun {
            mut scheduler,
            latents,
            start_step,
            condition,
        } = prepared;
        let input = DenoiseInput {
            latents,
            prompt_embeds: &embeds.positive,
            negative_prompt_embeds: embeds.negative.as_ref(),
            start_step,
        };
        let cache = crate::step_cache::run_cache(
            params.step_cache.as_ref(),
            params.num_inference_steps,
            do_cfg,
            self.parallel.is_some(),
        )?;
        let latents = self.denoise_latents(
            scheduler.as_mut(),
            resolved,
            input,
            condition.as_ref(),
            cache.as_ref(),
            on_step,
        )?;
        let latents = match &condition {
            Some(condition) => condition.final_latents(latents)?,
            None => latents,
        };
        Ok((latents, cache.map(crate::step_cache::finish_run)))
    }

    /// Step 4b of [`Self::generate_with`]: `prepare_latents`' image conditioning, when the
    /// request has an image ([`Self::resolve`] checked that the model takes one).
    fn prepare_condition(
        &self,
        params: &GenerationParams,
        resolved: &ResolvedParams,
    ) -> Result<Option<LatentCondition>> {
        let Some(image) = &params.image else {
            return Ok(None);
        };
        let size = VideoSize {
            width: resolved.width,
            height: resolved.height,
            num_frames: resolved.num_frames,
        };
        LatentCondition::prepare(self.kind, &self.vae, image, size, self.options.device)
    }

    /// Step 5 of [`Self::generate_with`]: the denoising loop over the experts (fetched on
    /// demand), then — even after a failure — no expert left on the device when swapping.
    fn denoise_latents(
        &self,
        scheduler: &mut dyn Scheduler,
        resolved: &ResolvedParams,
        input: DenoiseInput<'_>,
        condition: Option<&LatentCondition>,
        cache: Option<&std::cell::RefCell<crate::step_cache::StepCache>>,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<Tensor> {
        let high = OnDemand {
            expert: &self.high,
            other: self.low.as_ref(),
            condition,
        };
        let low = self.low.as_ref().map(|low| OnDemand {
            expert: low,
            other: Some(&self.high),
            condition,
        });
        let experts = Experts {
            high: &high,
            low: low.as_ref(),
        };
        let settings = DenoiseSettings {
            guidance_scale: resolved.guidance_scale,
            guidance_scale_2: resolved.guidance_scale_2,
            boundary_ratio: self.model_dir.boundary_ratio(),
            expand_timesteps: self.model_dir.expand_timesteps(),
        };
        let denoised = match &self.parallel {
            None => match cache {
                None => denoise(&experts, scheduler, &settings, input, on_step),
                Some(cache) => crate::step_cache::denoise_cached(
                    &experts, cache, scheduler, &settings, input, on_step,
                ),
            },
            Some(run) => self.denoise_on_ranks(
                run,
                (&high, low.as_ref()),
                scheduler,
                &settings,
                input,
                on_step,
            ),
        };
        // Swapping keeps no expert on the device outside the loop, even after a failure.
        if self.options.memory.experts == ExpertPlacement::SwapExperts {
            for expert in std::iter::once(&self.high).chain(self.low.as_ref()) {
                expert.park()?;
            }
        }
        denoised.map_err(out_of_memory)
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

/// Step 4 of [`WanT2V::generate_with`]: the initial noise from the seed and step 0, or the
/// saved latents and step with the scheduler restored from `resume`; on the CPU.
fn initial_latents(
    scheduler: &mut dyn Scheduler,
    params: &GenerationParams,
    resolved: &ResolvedParams,
    resume: Option<&DenoiseState>,
) -> Result<(Tensor, usize)> {
    match resume {
        None => Ok((initial_noise(resolved.seed, resolved.latent_shape)?, 0)),
        Some(state) => {
            check_resume(state, params, resolved)?;
            scheduler.restore(&state.scheduler)?;
            Ok((state.latents.to_tensor()?, state.step))
        }
    }
}

/// Whether `state` can continue a run of `params`: same schedule length and seed, a step inside
/// the schedule and latents of the request's shape.
fn check_resume(
    state: &DenoiseState,
    params: &GenerationParams,
    resolved: &ResolvedParams,
) -> Result<()> {
    let problem = if state.total_steps != params.num_inference_steps {
        Some(format!(
            "saved for {} steps, the request has {}",
            state.total_steps, params.num_inference_steps
        ))
    } else if state.seed != resolved.seed {
        Some(format!(
            "saved for seed {}, the request has {}",
            state.seed, resolved.seed
        ))
    } else if state.step == 0 || state.step >= state.total_steps {
        Some(format!(
            "step {} is not inside the schedule of {}",
            state.step, state.total_steps
        ))
    } else if state.latents.shape != resolved.latent_shape {
        Some(format!(
            "latents of shape {:?}, the request needs {:?}",
            state.latents.shape, resolved.latent_shape
        ))
    } else {
        None
    };
    match problem {
        Some(message) => Err(PipelineError::invalid(
            "checkpoint",
            format!("{message} — it belongs to another request; start from step 0"),
        )),
        None => Ok(()),
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

/// libtorch's allocation failure as [`PipelineError::OutOfMemory`], with what to try.
fn out_of_memory(error: PipelineError) -> PipelineError {
    match error {
        PipelineError::Torch(e) if is_out_of_memory(&e.to_string()) => PipelineError::OutOfMemory {
            message: format!(
                "{} — try a smaller size or fewer frames, or the low-memory policy (swap experts, offload the text encoder, tiled VAE)",
                torch_oom_summary(&e.to_string())
            ),
        },
        other => other,
    }
}

/// Whether libtorch's error is an allocation failure: CUDA's caching allocator says "out of
/// memory", the CPU allocator "DefaultCPUAllocator: can't allocate memory" (or "not enough
/// memory").
fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory")
        || (message.contains("DefaultCPUAllocator")
            && (message.contains("can't allocate memory") || message.contains("not enough memory")))
}

/// The part of libtorch's out-of-memory text a user acts on: what was asked for, what was free,
/// what this and other processes hold — without the allocator breakdown and the documentation
/// link that follow (`PYTORCH_CUDA_ALLOC_CONF` does not apply to this binary).
pub fn torch_oom_summary(message: &str) -> &str {
    let first = message.lines().next().unwrap_or_default();
    let first = first
        .strip_prefix("Internal torch error: ")
        .unwrap_or(first);
    // The CPU allocator's text follows an "[enforce fail at alloc_cpu.cpp:N] err == 0." prefix.
    let first = first
        .find("DefaultCPUAllocator")
        .map_or(first, |start| &first[start..]);
    first
        .find(" Of the allocated memory")
        .map_or(first, |end| &first[..end])
        .trim_end()
}

/// The load error of `dtype = fp8` on a device whose `_scaled_mm` probe failed.
fn fp8_unsupported(probe: PipelineError) -> PipelineError {
    PipelineError::invalid(
        "dtype fp8",
        format!("this GPU does not run FP8 matrix products (needs compute capability 8.9 or later: Ada, Hopper) — {probe}; load in bf16"),
    )
}

/// The expert `component` (`transformer` or `transformer_2`) with its LoRAs of `loras` fused in,
/// its blocks in FP8 when `options` ask for it (after the LoRAs, so that they apply; before
/// parking, so the FP8 form is parked) and, under [`ExpertPlacement::SwapExperts`], a host copy
/// of its weights to park it with; resident on the device.
fn load_expert(
    model_dir: &ModelDir,
    component: Component,
    options: LoadOptions,
    loras: &crate::lora::ExpertLoras,
) -> Result<Expert> {
    let (device, dtype) = (options.device, options.dtype);
    let dir = model_dir.path(component)?;
    let (model, vs) = WanTransformer3DModel::load(&dir, fp8::compute_kind(dtype), device)?;
    let expert_loras = match component {
        Component::Transformer2 => &loras.transformer_2,
        _ => &loras.transformer,
    };
    crate::lora::fuse_loras(&vs, expert_loras)?;
    let model = if dtype == fp8::FP8 {
        fp8::quantize_blocks(model, &vs)?
    } else {
        model
    };
    let weights = if options.memory.experts == ExpertPlacement::SwapExperts {
        Some(ParkedWeights::new(
            vs.variables().into_iter().collect(),
            device,
        )?)
    } else {
        None
    };
    Ok(Expert { model, weights })
}

/// The VAE in `options.vae_dtype`, tiled when the memory policy says so.
fn load_vae(model_dir: &ModelDir, options: LoadOptions) -> Result<AutoencoderKLWan> {
    let mut vae = AutoencoderKLWan::load(
        &model_dir.path(Component::Vae)?,
        options.device,
        options.vae_dtype,
    )?;
    if let Some(tiling) = options.memory.vae_tiling {
        vae.enable_tiling(tiling)?;
    }
    Ok(vae)
}

/// Tokenizer + umT5 encoder; with `offload_text_encoder` the encoder is built in a VarStore of
/// our own so its weights can be parked (as `UMT5EncoderModel::load` otherwise does).
fn load_text_encoder(
    model_dir: &ModelDir,
    options: LoadOptions,
) -> Result<(TextEncoder, Option<ParkedWeights>)> {
    if !options.memory.offload_text_encoder {
        let text = TextEncoder::load(
            model_dir.root(),
            fp8::compute_kind(options.dtype),
            options.device,
        )?;
        return Ok((text, None));
    }
    let tokenizer = T5Tokenizer::from_dir(&model_dir.path(Component::Tokenizer)?)?;
    let dir = model_dir.path(Component::TextEncoder)?;
    let cfg = UMT5Config::from_file(&dir.join("config.json"))?;
    let names = loader::tensor_names(&dir)?;
    let embedding =
        if !names.contains("shared.weight") && names.contains("encoder.embed_tokens.weight") {
            EmbeddingKey::EncoderEmbedTokens
        } else {
            EmbeddingKey::Shared
        };
    let mut vs = nn::VarStore::new(options.device);
    vs.set_kind(fp8::compute_kind(options.dtype));
    let model = UMT5EncoderModel::with_embedding(&cfg, vs.root(), embedding)?;
    loader::load_weights(&vs, &dir)?;
    vs.freeze();
    let weights = ParkedWeights::new(vs.variables().into_iter().collect(), options.device)?;
    Ok((TextEncoder::new(tokenizer, model), Some(weights)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_oom_messages_keep_what_a_user_acts_on() {
        // As libtorch 2.11 printed it on an H100 (another process held most of the memory).
        let cuda = "Internal torch error: CUDA out of memory. Tried to allocate 256.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 110.62 MiB is free. Process 613 has 76.17 GiB memory in use. Including non-PyTorch memory, this process has 2.88 GiB memory in use. Of the allocated memory 2.11 GiB is allocated by PyTorch, and 102.84 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://docs.pytorch.org/docs/stable/notes/cuda.html#optimizing-memory-usage-with-pytorch-cuda-alloc-conf)\nException raised from malloc at …";
        assert_eq!(
            torch_oom_summary(cuda),
            "CUDA out of memory. Tried to allocate 256.00 MiB. GPU 0 has a total capacity of 79.18 GiB of which 110.62 MiB is free. Process 613 has 76.17 GiB memory in use. Including non-PyTorch memory, this process has 2.88 GiB memory in use."
        );
        let cpu = "Internal torch error: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 4503599627370496 bytes. Error code 12 (Cannot allocate memory)";
        assert_eq!(
            torch_oom_summary(cpu),
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4503599627370496 bytes. Error code 12 (Cannot allocate memory)"
        );
        assert!(is_out_of_memory(cuda) && is_out_of_memory(cpu));
        assert!(!is_out_of_memory(
            "shape '[2, 3]' is invalid for input of size 5"
        ));
    }

    #[test]
    fn a_real_cpu_allocation_failure_is_out_of_memory() {
        // 2^50 f32 elements (4 PiB): libtorch's CPU allocator refuses it at once.
        let error = tch::Tensor::f_zeros([1i64 << 50], (tch::Kind::Float, tch::Device::Cpu))
            .map_err(PipelineError::from)
            .map(|_| ())
            .unwrap_err();
        match out_of_memory(error) {
            PipelineError::OutOfMemory { message } => assert!(
                message.starts_with("DefaultCPUAllocator: can't allocate memory")
                    && message.contains("low-memory policy"),
                "{message}"
            ),
            other => panic!("not classified as out of memory: {other}"),
        }
    }
}
