//! GPU memory: the policy that decides which weights stay on the device, the mechanism that
//! parks idle weights in (pinned) host memory, and a preflight estimate of the peak.
//!
//! # Policies
//! - [`ExpertPlacement::AllResident`]: every component on the device for the whole run (fastest;
//!   the A14B pair alone is 57 GB in bf16).
//! - [`ExpertPlacement::SwapExperts`]: every expert keeps a copy in pinned host memory; at most
//!   one is on the device, fetched when the denoising loop first needs it (the boundary swap),
//!   and none during text encoding and VAE decoding.
//! - [`MemoryPolicy::offload_text_encoder`]: the umT5 encoder is parked in host memory after
//!   encoding and fetched again for the next request's prompt.
//! - [`MemoryPolicy::vae_tiling`]: tiled VAE decode (diffusers `enable_tiling`).
//!
//! Weights never change, so parking needs no copy back: the device tensor is replaced by its
//! host copy (`set_data`) and the device memory returns to libtorch's caching allocator.
//!
//! # The estimate ([`estimate`])
//! It predicts `torch.cuda.max_memory_allocated` — tensors only, not the CUDA context (about
//! 0.5 GiB) nor the allocator's fragmentation. Each phase's peak is the weights resident in
//! that phase plus that phase's activations; the run's peak is the largest phase. With `b`
//! bytes per element of the model dtype:
//! - transformer weights: `(P − P32)·b + P32·4`, `P` = [`TransformerConfig::num_parameters`],
//!   `P32` = the `_keep_in_fp32_modules` (`time_embedder`, every `scale_shift_table`, `norm2`).
//! - under `dtype` [`fp8::FP8`]: the block linear weights `Q` = [`fp8::fp8_parameters`] at 1 byte
//!   plus one f32 scale per output channel ([`fp8::fp8_scale_parameters`]), everything else and
//!   the activations as bf16 (`b` = 2), plus `3·N·F` for the quantisation of the FFN hidden that
//!   its output projection multiplies (its scaled bf16 copy while it is cast to e4m3).
//! - transformer activations of one forward (CFG runs its two forwards one after the other) at
//!   `N` tokens: `6·N·D·b` (residual stream, normed input, q, k, v, attention output; flash SDPA
//!   keeps no N² scores) + `3·N·D·4` (f32 norm/modulation and RoPE temporaries) + `2·N·F·b`
//!   (FFN up-projection and its GELU) + `2·N·head_dim·4` (RoPE tables) + `3·L·D·b` (text
//!   context, cross-attention K and V) + `4·latents·4` (latents, cond, uncond, guided output);
//!   with one timestep per token (`expand_timesteps`, TI2V-5B) also `6·N·D·(b + 4)` for the
//!   per-token `timestep_proj` and each block's f32 modulation made from it.
//! - umT5 weights: `vocab·d + layers·(4·d·h·d_kv + buckets·h + 2·d + (2 or 3)·d·d_ff) + d`;
//!   activations `L·(4·d + 3·d_ff)·4 + 2·h·L²·4`.
//! - VAE (Wan2.1 or Wan2.2): weights of the encoder and decoder counted from their module trees;
//!   decode peak = the causal feature cache (2 frames of the input of every cached causal conv,
//!   summed over the decoder) + 3 copies of the widest activation (the nearest-upsampled tensor
//!   entering the last stage, 4 frames a chunk; 4 copies with Wan2.2's `DupUp3D` shortcuts),
//!   per pixel the decoder outputs (a quarter of the video's with Wan2.2's 2×2 patches) + the
//!   decoded video (chunks and their concatenation: 2 copies in the VAE dtype, one more for
//!   `unpatchify`, and the f32 frames). Tiled, the cache and activations are those of one tile
//!   and the video is held once more (the tiles before blending). Encode
//!   ([`vae_encode_bytes`], for the image-to-video pipelines) likewise over the encoder's first
//!   stage. These are derived from the layer shapes, not measured; `make bench-vae` prints the
//!   allocator's peak next to them on a GPU host.
//! - the image encode, a phase of its own for a request with a conditioning image
//!   ([`EstimateRequest::image`]: the image alone for TI2V-5B, the image and `num_frames − 1`
//!   zero frames for I2V-A14B): between the prompt and the loop, with the weights of the
//!   decode phase resident plus the prompt embeddings, and [`vae_encode_bytes`] of those frames
//!   (tiled as the policy tiles). With the published models the decode or the loop stays the
//!   larger; the encode sets the peak only where its (larger, for Wan2.2) tiles and a short
//!   video make it so.
//!
//! [`estimate_per_gpu`] is the peak of each GPU of a parallel run ([`crate::parallel`]): the
//! weights as above (every GPU holds the experts), a Ulysses rank's activations over its
//! `M = ⌈N / ulysses⌉` tokens — `6·M·D·b + 3·M·D·4 + 2·M·F·b + 2·M·head_dim·4`, plus `6·M·D·b`
//! for q, k and v sent and received by the all-to-all, the text and latent terms unchanged —
//! and, on more than one device, the tiled decode (the policy's tiles or diffusers' default).
//!
//! This file holds the policy, the estimate's types and its sum over the phases; beside it,
//! `park` moves weights on and off the device and `transformer`, `text_encoder` and `vae` hold
//! each component's formulas.
//!
//! [`fp8::FP8`]: crate::wan::fp8::FP8
//! [`fp8::fp8_parameters`]: crate::wan::fp8::fp8_parameters
//! [`fp8::fp8_scale_parameters`]: crate::wan::fp8::fp8_scale_parameters

use std::path::Path;

use tch::Kind;

use crate::error::{PipelineError, Result};
use crate::model_dir::{Component, ModelDir, ModelKind};
use crate::parallel::ParallelLayout;
use crate::wan::text_encoder::UMT5Config;
use crate::wan::vae::{Tiling, VaeConfig};
use crate::wan::TransformerConfig;

mod park;
mod text_encoder;
mod transformer;
mod vae;

pub use park::ParkedWeights;
use text_encoder::umt5_activation_bytes;
pub use text_encoder::umt5_parameters;
use transformer::{compute_bytes, transformer_activation_bytes};
pub use transformer::{
    transformer_fp32_parameters, transformer_weight_bytes, transformer_weight_bytes_in,
};
pub use vae::{
    vae_decode_bytes, vae_decoder_parameters, vae_encode_bytes, vae_encoder_parameters,
    vae_parameters,
};

/// Where the experts live between uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertPlacement {
    /// Both experts on the device for the whole run.
    AllResident,
    /// At most one expert on the device; the idle one waits in pinned host memory.
    SwapExperts,
}

/// How a pipeline uses device memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPolicy {
    pub experts: ExpertPlacement,
    /// Park the text encoder in host memory once the prompt is encoded.
    pub offload_text_encoder: bool,
    /// Decode in spatial tiles (`None`: the whole frame at once, as diffusers by default).
    pub vae_tiling: Option<Tiling>,
}

impl MemoryPolicy {
    /// Everything resident, no tiling: the behaviour of `WanPipeline.to("cuda")`.
    pub const fn all_resident() -> Self {
        Self {
            experts: ExpertPlacement::AllResident,
            offload_text_encoder: false,
            vae_tiling: None,
        }
    }

    /// The smallest footprint: one expert at a time, the text encoder parked after use, tiled
    /// decode with diffusers' default tiles.
    pub fn low_memory() -> Self {
        Self {
            experts: ExpertPlacement::SwapExperts,
            offload_text_encoder: true,
            vae_tiling: Some(Tiling::default()),
        }
    }
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        Self::all_resident()
    }
}

/// The configs the estimate needs, read from a model directory.
#[derive(Debug, Clone)]
pub struct ModelConfigs {
    pub transformer: TransformerConfig,
    pub transformer_2: Option<TransformerConfig>,
    pub text_encoder: UMT5Config,
    pub vae: VaeConfig,
    /// One timestep per latent token (`model_index.json`'s `expand_timesteps`, TI2V-5B): the
    /// transformer's modulation is then a per-token tensor rather than one row per sample.
    pub per_token_timesteps: bool,
}

impl ModelConfigs {
    /// Reads every component's `config.json`.
    pub fn load(model: &ModelDir) -> Result<Self> {
        let config =
            |c: Component| -> Result<std::path::PathBuf> { Ok(model.path(c)?.join("config.json")) };
        let transformer_2 = if model.has(Component::Transformer2) {
            Some(TransformerConfig::from_file(&config(
                Component::Transformer2,
            )?)?)
        } else {
            None
        };
        Ok(Self {
            transformer: TransformerConfig::from_file(&config(Component::Transformer)?)?,
            transformer_2,
            text_encoder: UMT5Config::from_file(&config(Component::TextEncoder)?)?,
            vae: VaeConfig::load(&model.path(Component::Vae)?)?,
            per_token_timesteps: model.expand_timesteps(),
        })
    }

    /// [`Self::load`] from a directory path.
    pub fn from_dir(root: &Path) -> Result<Self> {
        Self::load(&ModelDir::open(root)?)
    }

    /// Wan2.2 T2V-A14B as `Wan-AI/Wan2.2-T2V-A14B-Diffusers` ships it, without reading the
    /// directory: two experts of [`TransformerConfig::wan22_t2v_a14b`], the umT5-XXL encoder
    /// ([`UMT5Config::umt5_xxl`]) and the Wan2.1 VAE ([`VaeConfig::default`]). For estimates
    /// and tests of the model the fleet serves.
    pub fn wan22_t2v_a14b() -> Self {
        Self {
            transformer: TransformerConfig::wan22_t2v_a14b(),
            transformer_2: Some(TransformerConfig::wan22_t2v_a14b()),
            text_encoder: UMT5Config::umt5_xxl(),
            vae: VaeConfig::default(),
            per_token_timesteps: false,
        }
    }

    /// Wan2.2 TI2V-5B as `Wan-AI/Wan2.2-TI2V-5B-Diffusers` ships it: one expert of
    /// [`TransformerConfig::wan22_ti2v_5b`] with one timestep per token, umT5-XXL and the
    /// Wan2.2 VAE ([`VaeConfig::wan2_2`]).
    pub fn wan22_ti2v_5b() -> Self {
        Self {
            transformer: TransformerConfig::wan22_ti2v_5b(),
            transformer_2: None,
            text_encoder: UMT5Config::umt5_xxl(),
            vae: VaeConfig::wan2_2(),
            per_token_timesteps: true,
        }
    }
}

/// What the VAE encodes for a request's conditioning image before the denoising loop
/// (`LatentCondition::prepare`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageEncode {
    /// No image (text-to-video): no encode phase.
    #[default]
    None,
    /// The image alone, one frame (TI2V-5B).
    FirstFrame,
    /// The image followed by `num_frames − 1` zero frames (I2V-A14B).
    WithZeroFrames,
}

impl ImageEncode {
    /// What a model of `kind` encodes for a request with (or without) an image.
    pub fn of(kind: ModelKind, has_image: bool) -> Self {
        match kind {
            _ if !has_image => Self::None,
            ModelKind::TextToVideo { .. } => Self::None,
            ModelKind::ImageToVideo { .. } => Self::WithZeroFrames,
            ModelKind::TextImageToVideo => Self::FirstFrame,
        }
    }

    /// Frames the encoder takes for a video of `num_frames`; 0 = no encode.
    pub fn frames(self, num_frames: i64) -> i64 {
        match self {
            Self::None => 0,
            Self::FirstFrame => 1,
            Self::WithZeroFrames => num_frames,
        }
    }
}

/// What a run is estimated for.
#[derive(Debug, Clone, Copy)]
pub struct EstimateRequest {
    pub width: i64,
    pub height: i64,
    /// Frames as generated (≡ 1 mod 4).
    pub num_frames: i64,
    /// Transformer and text encoder dtype.
    pub dtype: Kind,
    pub vae_dtype: Kind,
    /// `max_sequence_length` (512).
    pub text_len: i64,
    pub policy: MemoryPolicy,
    /// The conditioning image's encode ([`ImageEncode::of`] the model's kind).
    pub image: ImageEncode,
}

/// Bytes of device memory, per component and per phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub transformer_weights: u64,
    pub transformer_2_weights: u64,
    pub text_encoder_weights: u64,
    pub vae_weights: u64,
    /// Peak while encoding the prompt.
    pub text_encode: u64,
    /// Peak while encoding the conditioning image; 0 without one.
    pub vae_encode: u64,
    /// Peak while denoising.
    pub denoise: u64,
    /// Peak while decoding.
    pub vae_decode: u64,
    /// The largest of the phases.
    pub peak: u64,
    /// Host memory the parked copies take (pinned).
    pub pinned_host: u64,
}

/// The preflight estimate (see the module docs for the formulas).
pub fn estimate(models: &ModelConfigs, request: &EstimateRequest) -> Result<MemoryEstimate> {
    for (field, value) in [
        ("width", request.width),
        ("height", request.height),
        ("num_frames", request.num_frames),
        ("max_sequence_length", request.text_len),
    ] {
        if value < 1 {
            return Err(PipelineError::invalid(
                field,
                format!("{value} must be positive"),
            ));
        }
    }
    let b = compute_bytes(request.dtype);
    let experts: Vec<&TransformerConfig> = std::iter::once(&models.transformer)
        .chain(models.transformer_2.as_ref())
        .collect();
    let expert_weights: Vec<u64> = experts
        .iter()
        .map(|c| transformer_weight_bytes_in(c, request.dtype))
        .collect();
    let te_weights = umt5_parameters(&models.text_encoder) as u64 * b;
    let vae_weights =
        vae_parameters(&models.vae) as u64 * request.vae_dtype.elt_size_in_bytes() as u64;

    let policy = request.policy;
    let swap = policy.experts == ExpertPlacement::SwapExperts;
    let all_experts: u64 = expert_weights.iter().sum();
    let largest_expert = expert_weights.iter().copied().max().unwrap_or(0);
    let te_between = if policy.offload_text_encoder {
        0
    } else {
        te_weights
    };
    let experts_idle = if swap { 0 } else { all_experts };
    let experts_denoise = if swap { largest_expert } else { all_experts };

    let text_act = umt5_activation_bytes(&models.text_encoder, request.text_len);
    let latent = latent_shape(models, request);
    let embeds = 2 * request.text_len as u64 * models.text_encoder.d_model as u64 * b;
    let transformer_act = experts
        .iter()
        .map(|c| transformer_activation_bytes(c, latent, request, models.per_token_timesteps, 1))
        .max()
        .unwrap_or(0);
    let vae_act = vae_decode_bytes(&models.vae, request, policy.vae_tiling);

    let text_encode = vae_weights + te_weights + experts_idle + text_act;
    let vae_encode = match request.image.frames(request.num_frames) {
        0 => 0,
        frames => {
            let encode = vae_encode_bytes(&models.vae, request, frames, policy.vae_tiling);
            vae_weights + te_between + experts_idle + embeds + encode
        }
    };
    let denoise = vae_weights + te_between + experts_denoise + embeds + transformer_act;
    let vae_decode = vae_weights + te_between + experts_idle + vae_act;
    let mut pinned_host = 0;
    if swap {
        pinned_host += all_experts;
    }
    if policy.offload_text_encoder {
        pinned_host += te_weights;
    }
    Ok(MemoryEstimate {
        transformer_weights: expert_weights[0],
        transformer_2_weights: expert_weights.get(1).copied().unwrap_or(0),
        text_encoder_weights: te_weights,
        vae_weights,
        text_encode,
        vae_encode,
        denoise,
        vae_decode,
        peak: text_encode.max(vae_encode).max(denoise).max(vae_decode),
        pinned_host,
    })
}

/// `[channels, latent frames, latent height, latent width]` of a request.
fn latent_shape(models: &ModelConfigs, request: &EstimateRequest) -> [i64; 4] {
    let s = models.vae.spatial_ratio();
    let t = models
        .vae
        .scale_factor_temporal
        .unwrap_or(models.vae.temporal_ratio());
    [
        models.transformer.in_channels,
        (request.num_frames - 1) / t + 1,
        request.height / s,
        request.width / s,
    ]
}

/// The estimate for each GPU of a run split `layout` over `devices` distinct devices (see the
/// module docs): the one-device estimate with a Ulysses rank's activations, and the tiled
/// decode when the tiles are spread over several devices.
pub fn estimate_per_gpu(
    models: &ModelConfigs,
    request: &EstimateRequest,
    layout: ParallelLayout,
    devices: usize,
) -> Result<MemoryEstimate> {
    let own_tiling = request.policy.vae_tiling;
    let mut request = *request;
    if devices > 1 && request.policy.vae_tiling.is_none() {
        request.policy.vae_tiling = Some(Tiling::default());
    }
    let mut per_gpu = estimate(models, &request)?;
    // The spread decode tiles a VAE of its own; the image is encoded by the pipeline's VAE,
    // tiled only as the policy says.
    let frames = request.image.frames(request.num_frames);
    if frames > 0 && own_tiling != request.policy.vae_tiling {
        per_gpu.vae_encode = per_gpu.vae_encode
            - vae_encode_bytes(&models.vae, &request, frames, request.policy.vae_tiling)
            + vae_encode_bytes(&models.vae, &request, frames, own_tiling);
    }
    let ulysses = layout.ulysses as u64;
    if ulysses > 1 {
        let latent = latent_shape(models, &request);
        let experts = std::iter::once(&models.transformer).chain(models.transformer_2.as_ref());
        let activations = |u: u64| {
            experts
                .clone()
                .map(|c| {
                    transformer_activation_bytes(c, latent, &request, models.per_token_timesteps, u)
                })
                .max()
                .unwrap_or(0)
        };
        per_gpu.denoise = per_gpu.denoise - activations(1) + activations(ulysses);
    }
    per_gpu.peak = per_gpu
        .text_encode
        .max(per_gpu.vae_encode)
        .max(per_gpu.denoise)
        .max(per_gpu.vae_decode);
    Ok(per_gpu)
}

#[cfg(test)]
mod tests;
