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
//!   the activations as bf16 (`b` = 2), plus `N·F` for the e4m3 copy of the FFN hidden that its
//!   output projection multiplies.
//! - transformer activations of one forward (CFG runs its two forwards one after the other) at
//!   `N` tokens: `6·N·D·b` (residual stream, normed input, q, k, v, attention output; flash SDPA
//!   keeps no N² scores) + `3·N·D·4` (f32 norm/modulation and RoPE temporaries) + `2·N·F·b`
//!   (FFN up-projection and its GELU) + `2·N·head_dim·4` (RoPE tables) + `3·L·D·b` (text
//!   context, cross-attention K and V) + `4·latents·4` (latents, cond, uncond, guided output).
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

use std::cell::Cell;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::model_dir::{Component, ModelDir, ModelKind};
use crate::parallel::ParallelLayout;
use crate::wan::text_encoder::UMT5Config;
use crate::wan::vae::{Tiling, VaeConfig};
use crate::wan::{fp8, TransformerConfig};

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

/// The weights of one component, movable between the compute device and host memory. On a
/// CUDA device the host copies are pinned (packed into 1 GiB buffers, so that the pinned
/// allocator's power-of-two rounding wastes little); on the CPU they share the weights' storage.
pub struct ParkedWeights {
    variables: Vec<Tensor>,
    host: Vec<Tensor>,
    device: Device,
    on_device: Cell<bool>,
}

/// Size of the pinned host buffers the copies are packed into.
const PINNED_CHUNK_BYTES: usize = 1 << 30;

impl ParkedWeights {
    /// Takes the variables of a loaded component (on `device`) and makes their host copies.
    /// The weights stay on the device until [`Self::park`].
    pub fn new(mut variables: Vec<(String, Tensor)>, device: Device) -> Result<Self> {
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let variables: Vec<Tensor> = variables.into_iter().map(|(_, t)| t).collect();
        let host = match device {
            Device::Cuda(_) => pinned_copies(&variables, device)?,
            _ => variables.iter().map(Tensor::shallow_clone).collect(),
        };
        Ok(Self {
            variables,
            host,
            device,
            on_device: Cell::new(true),
        })
    }

    pub fn is_on_device(&self) -> bool {
        self.on_device.get()
    }

    /// Bytes of host memory the copies take (0 on the CPU, where they share the weights).
    pub fn host_bytes(&self) -> u64 {
        if self.device == Device::Cpu {
            return 0;
        }
        self.host.iter().map(tensor_bytes).sum()
    }

    /// Points every weight at its host copy, freeing the device copy. No-op when parked.
    pub fn park(&self) -> Result<()> {
        if !self.on_device.get() {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for (variable, host) in self.variables.iter().zip(&self.host) {
                variable.shallow_clone().f_set_data(host)?;
            }
            Ok(())
        })?;
        self.on_device.set(false);
        Ok(())
    }

    /// Copies every weight back to the device (asynchronously from pinned memory; later work on
    /// the same stream waits for it). No-op when already there.
    pub fn fetch(&self) -> Result<()> {
        if self.on_device.get() {
            return Ok(());
        }
        tch::no_grad(|| -> Result<()> {
            for (variable, host) in self.variables.iter().zip(&self.host) {
                let on_device = host.f_to_device_(self.device, host.kind(), true, false)?;
                variable.shallow_clone().f_set_data(&on_device)?;
            }
            Ok(())
        })?;
        self.on_device.set(true);
        Ok(())
    }
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// Host copies of `variables` in pinned buffers of about [`PINNED_CHUNK_BYTES`], one dtype per
/// buffer (a tensor larger than that gets its own).
fn pinned_copies(variables: &[Tensor], device: Device) -> Result<Vec<Tensor>> {
    let mut copies: Vec<Option<Tensor>> = variables.iter().map(|_| None).collect();
    let mut kinds: Vec<Kind> = Vec::new();
    for variable in variables {
        if !kinds.contains(&variable.kind()) {
            kinds.push(variable.kind());
        }
    }
    for kind in kinds {
        let members: Vec<usize> = (0..variables.len())
            .filter(|&i| variables[i].kind() == kind)
            .collect();
        let per_chunk = PINNED_CHUNK_BYTES / kind.elt_size_in_bytes();
        let mut start = 0;
        while start < members.len() {
            let (mut end, mut total) = (start, 0usize);
            while end < members.len()
                && (end == start || total + variables[members[end]].numel() <= per_chunk)
            {
                total += variables[members[end]].numel();
                end += 1;
            }
            let chunk =
                Tensor::f_empty([total as i64], (kind, Device::Cpu))?.f_pin_memory(device)?;
            let mut offset = 0i64;
            for &i in &members[start..end] {
                let source = &variables[i];
                let n = source.numel() as i64;
                let mut view = chunk
                    .f_narrow(0, offset, n)?
                    .f_view(source.size().as_slice())?;
                tch::no_grad(|| view.f_copy_(source))?;
                copies[i] = Some(view);
                offset += n;
            }
            start = end;
        }
    }
    Ok(copies.into_iter().flatten().collect())
}

/// The configs the estimate needs, read from a model directory.
#[derive(Debug, Clone)]
pub struct ModelConfigs {
    pub transformer: TransformerConfig,
    pub transformer_2: Option<TransformerConfig>,
    pub text_encoder: UMT5Config,
    pub vae: VaeConfig,
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
        .map(|c| transformer_activation_bytes(c, latent, request.text_len, request.dtype, 1))
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

/// Parameters kept in f32 whatever the model dtype (`_keep_in_fp32_modules`).
pub fn transformer_fp32_parameters(cfg: &TransformerConfig) -> i64 {
    let dim = cfg.inner_dim();
    let time_embedder = cfg.freq_dim * dim + dim + dim * dim + dim;
    let norm2 = if cfg.cross_attn_norm { 2 * dim } else { 0 };
    time_embedder + cfg.num_layers * (6 * dim + norm2) + 2 * dim
}

/// Weight bytes of one expert in a dtype of `b` bytes.
pub fn transformer_weight_bytes(cfg: &TransformerConfig, b: u64) -> u64 {
    let p32 = transformer_fp32_parameters(cfg) as u64;
    (cfg.num_parameters() as u64 - p32) * b + p32 * 4
}

/// Bytes per element of the activations (and non-FP8 weights) of a model loaded in `dtype`.
fn compute_bytes(dtype: Kind) -> u64 {
    fp8::compute_kind(dtype).elt_size_in_bytes() as u64
}

/// Weight bytes of one expert loaded in `dtype`: [`transformer_weight_bytes`], or under
/// [`fp8::FP8`] the block linear weights at 1 byte plus their f32 scales, the rest in bf16.
pub fn transformer_weight_bytes_in(cfg: &TransformerConfig, dtype: Kind) -> u64 {
    let dense = transformer_weight_bytes(cfg, compute_bytes(dtype));
    if dtype != fp8::FP8 {
        return dense;
    }
    let quantised = fp8::fp8_parameters(cfg) as u64;
    dense - quantised * compute_bytes(dtype) + quantised + fp8::fp8_scale_parameters(cfg) as u64 * 4
}

/// Activation bytes of one transformer forward over `latent` ([C, F, H, W]) with `text_len`
/// text tokens, on one rank of `ulysses` (1: the whole sequence on one device), in `dtype`.
fn transformer_activation_bytes(
    cfg: &TransformerConfig,
    [c, f, h, w]: [i64; 4],
    text_len: i64,
    dtype: Kind,
    ulysses: u64,
) -> u64 {
    let b = compute_bytes(dtype);
    let [pt, ph, pw] = cfg.patch_size;
    let n = ((f / pt) * (h / ph) * (w / pw)) as u64;
    let m = n.div_ceil(ulysses.max(1));
    let d = cfg.inner_dim() as u64;
    let hidden = 6 * m * d * b + 3 * m * d * 4;
    let exchange = if ulysses > 1 { 6 * m * d * b } else { 0 };
    let ffn = 2 * m * cfg.ffn_dim as u64 * b;
    // FP8: the FFN hidden's e4m3 copy for its output projection, beside the bf16 one.
    let quantise = if dtype == fp8::FP8 {
        m * cfg.ffn_dim as u64
    } else {
        0
    };
    let rope = 2 * m * cfg.attention_head_dim as u64 * 4;
    let text = 3 * text_len as u64 * d * b;
    let latents = 4 * (c * f * h * w) as u64 * 4;
    hidden + exchange + ffn + quantise + rope + text + latents
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
                    transformer_activation_bytes(c, latent, request.text_len, request.dtype, u)
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

/// Parameters of the umT5 encoder.
pub fn umt5_parameters(cfg: &UMT5Config) -> i64 {
    let d = cfg.d_model;
    let inner = cfg.num_heads * cfg.d_kv;
    let ffn_in = if cfg.gated() { 2 } else { 1 };
    let layer = 4 * d * inner
        + cfg.relative_attention_num_buckets * cfg.num_heads
        + 2 * d
        + (ffn_in + 1) * d * cfg.d_ff;
    cfg.vocab_size * d + cfg.num_layers * layer + d
}

fn umt5_activation_bytes(cfg: &UMT5Config, text_len: i64) -> u64 {
    let l = text_len as u64;
    l * (4 * cfg.d_model + 3 * cfg.d_ff) as u64 * 4 + 2 * cfg.num_heads as u64 * l * l * 4
}

/// Parameters of the whole VAE: [`AutoencoderKLWan::load`](crate::wan::vae::AutoencoderKLWan::load)
/// holds the encoder and the decoder.
pub fn vae_parameters(cfg: &VaeConfig) -> i64 {
    vae_encoder_parameters(cfg) + vae_decoder_parameters(cfg)
}

/// A 3×3×3 causal conv from `i` to `o` channels, with bias.
fn conv3(i: i64, o: i64) -> i64 {
    i * o * 27 + o
}

/// A 1×1(×1) conv from `i` to `o` channels, with bias.
fn conv1(i: i64, o: i64) -> i64 {
    i * o + o
}

/// `WanResidualBlock`: two RMS norms, two 3×3×3 convs, a 1×1×1 shortcut when the width changes.
fn resnet(i: i64, o: i64) -> i64 {
    i + conv3(i, o) + o + conv3(o, o) + if i != o { conv1(i, o) } else { 0 }
}

/// `WanMidBlock`: two residual blocks around a single-head attention (norm, qkv, proj).
fn mid_block(d: i64) -> i64 {
    2 * resnet(d, d) + d + conv1(d, 3 * d) + conv1(d, d)
}

/// Parameters of the VAE's encoding half (`encoder` + `quant_conv`).
pub fn vae_encoder_parameters(cfg: &VaeConfig) -> i64 {
    let mut total = conv3(cfg.in_channels, cfg.base_dim);
    for stage in cfg.encoder_stages() {
        let (c_in, c_out) = (stage.in_channels, stage.out_channels);
        total += resnet(c_in, c_out) + (cfg.num_res_blocks - 1) * resnet(c_out, c_out);
        if stage.downsample {
            total += c_out * c_out * 9 + c_out;
        }
        if stage.temporal_downsample {
            total += c_out * c_out * 3 + c_out;
        }
    }
    let d = cfg.encoder_dim();
    let z2 = 2 * cfg.z_dim;
    total + mid_block(d) + d + conv3(d, z2) + conv1(z2, z2)
}

/// Parameters of the VAE's decoding half (`post_quant_conv` + `decoder`).
pub fn vae_decoder_parameters(cfg: &VaeConfig) -> i64 {
    let stages = cfg.decoder_stages();
    let d0 = stages.first().map_or(cfg.decoder_dim(), |s| s.in_channels);
    let mut total = conv1(cfg.z_dim, cfg.z_dim) + conv3(cfg.z_dim, d0) + mid_block(d0);
    let mut c_last = d0;
    for stage in &stages {
        let (c_in, c_out) = (stage.in_channels, stage.out_channels);
        total += resnet(c_in, c_out) + cfg.num_res_blocks * resnet(c_out, c_out);
        if stage.upsample {
            let up = stage.upsample_channels;
            total += up * c_out * 9 + up;
        }
        if stage.temporal_upsample {
            total += c_out * 2 * c_out * 3 + 2 * c_out;
        }
        c_last = c_out;
    }
    total + c_last + conv3(c_last, cfg.out_channels)
}

/// Working copies of the widest activation: 3 (the nearest-upsampled input of a conv, the
/// conv's output, the block's sum), one more with Wan2.2's residual shortcuts (the
/// `DupUp3D` / `AvgDown3D` copy added to the block's output).
fn widest_copies(cfg: &VaeConfig) -> f64 {
    if cfg.is_residual {
        4.0
    } else {
        3.0
    }
}

/// The pixels of the decoded region (one tile when `tiling` applies to this frame size): video
/// pixels (height, width), and whether tiling applies.
fn vae_region(request: &EstimateRequest, tile: Option<[i64; 2]>) -> (u64, u64, bool) {
    let (height, width) = (request.height as u64, request.width as u64);
    match tile.filter(|&[h, w]| request.height > h || request.width > w) {
        Some([h, w]) => (height.min(h as u64), width.min(w as u64), true),
        None => (height, width, false),
    }
}

/// Device bytes of one VAE decode beyond its weights.
pub fn vae_decode_bytes(cfg: &VaeConfig, request: &EstimateRequest, tiling: Option<Tiling>) -> u64 {
    let b = request.vae_dtype.elt_size_in_bytes() as u64;
    let tile = tiling.map(|t| [t.min_height, t.min_width]);
    let (h, w, tiled) = vae_region(request, tile);
    // Element counts per pixel the decoder outputs (patchified for Wan2.2), summed in f64
    // (stages shrink by 4×).
    let stages = cfg.decoder_stages();
    let n = stages.len() as i32;
    let area = |i: usize| 0.25f64.powi(n - 1 - i as i32);
    let frames_max = cfg.temporal_ratio() as f64;
    let d0 = stages.first().map_or(0, |s| s.in_channels) as f64;
    let mut cache = (cfg.z_dim as f64 + 4.0 * d0) * 2.0 * area(0);
    let mut widest: f64 = 0.0;
    let mut frames = 1.0;
    for (i, stage) in stages.iter().enumerate() {
        let (c_in, c_out) = (stage.in_channels, stage.out_channels);
        let (temporal, up) = (stage.temporal_upsample, stage.upsample);
        let convs_in = c_in + c_out + 2 * cfg.num_res_blocks * c_out;
        cache += convs_in as f64 * 2.0 * area(i);
        if temporal {
            cache += c_out as f64 * 2.0 * area(i);
        }
        widest = widest.max(c_out as f64 * frames * area(i));
        if temporal {
            frames = (frames * 2.0).min(frames_max);
        }
        if up {
            // the nearest-upsampled tensor at the next stage's size, before its conv
            widest = widest.max(c_out as f64 * frames * area(i + 1));
        }
    }
    let c_last = stages.last().map_or(0, |s| s.out_channels) as f64;
    cache += c_last * 2.0;
    let per_pixel = cache + widest_copies(cfg) * widest;
    let p = cfg.patch() as u64;
    let working = (per_pixel * ((h / p) * (w / p)) as f64).ceil() as u64 * b;
    let video = 3 * request.num_frames as u64 * request.height as u64 * request.width as u64;
    // chunks and their concatenation (+ the tiles before blending, + the unpatchified copy)
    let video_copies = 2 + u64::from(tiled) + u64::from(p > 1);
    working + video_copies * video * b + video * 4
}

/// Device bytes of one VAE encode of `frames` video frames at the request's size, beyond the
/// weights (the image-to-video pipelines: 1 frame for TI2V-5B, `num_frames` for Wan2.2 I2V).
/// The encoder runs 4 frames at a time: per pixel of its (patchified) input, the causal cache
/// (2 frames of the input of every cached conv, each stage 4× smaller than the last) plus
/// [`widest_copies`] of the first stage's activation over the chunk and its 2 cached frames;
/// then the video in the VAE dtype (and its patchified copy) and the moments it makes.
pub fn vae_encode_bytes(
    cfg: &VaeConfig,
    request: &EstimateRequest,
    frames: i64,
    tiling: Option<Tiling>,
) -> u64 {
    let b = request.vae_dtype.elt_size_in_bytes() as u64;
    let p = cfg.patch();
    // the reference's encode tiles are `min` patchified pixels
    let tile = tiling.map(|t| [t.min_height * p, t.min_width * p]);
    let (h, w, _) = vae_region(request, tile);
    let stages = cfg.encoder_stages();
    let area = |i: usize| 0.25f64.powi(i as i32);
    let mut cache = cfg.in_channels as f64 * 2.0;
    for (i, stage) in stages.iter().enumerate() {
        let convs_in = stage.in_channels + (2 * cfg.num_res_blocks - 1) * stage.out_channels;
        cache += convs_in as f64 * 2.0 * area(i);
    }
    let d = cfg.encoder_dim() as f64;
    cache += 5.0 * d * 2.0 * area(stages.len() - 1);
    let first = stages
        .first()
        .map_or(0, |s| s.out_channels.max(s.in_channels)) as f64;
    let widest = first * (4.0 + 2.0);
    let per_pixel = cache + widest_copies(cfg) * widest;
    let pixels = (h / p as u64) * (w / p as u64);
    let working = (per_pixel * pixels as f64).ceil() as u64 * b;
    let video = 3 * frames.max(1) as u64 * request.height as u64 * request.width as u64;
    let video_copies = 1 + u64::from(p > 1);
    let s = cfg.spatial_ratio() as u64;
    let latent_frames = ((frames.max(1) - 1) / cfg.temporal_ratio() + 1) as u64;
    let moments = 2
        * cfg.z_dim as u64
        * latent_frames
        * (request.height as u64 / s)
        * (request.width as u64 / s);
    working + video_copies * video * b + 2 * moments * b
}

#[cfg(test)]
mod tests {
    use tch::nn;

    use super::*;
    use crate::wan::text_encoder::UMT5EncoderModel;
    use crate::wan::vae::AutoencoderKLWan;

    const GB: u64 = 1_000_000_000;

    fn request(width: i64, height: i64, policy: MemoryPolicy) -> EstimateRequest {
        EstimateRequest {
            width,
            height,
            num_frames: 81,
            dtype: Kind::BFloat16,
            vae_dtype: Kind::BFloat16,
            text_len: 512,
            policy,
            image: ImageEncode::None,
        }
    }

    fn numel(vs: &nn::VarStore) -> i64 {
        vs.variables().values().map(|t| t.numel() as i64).sum()
    }

    #[test]
    fn a14b_expert_weights_by_hand() {
        // P = 14,288,491,584 (diffusers). f32: time_embedder 256·5120 + 5120 + 5120² + 5120 =
        // 27,535,360; 40 blocks × (6·5120 table + 2·5120 norm2) = 1,638,400; output table 10,240.
        let cfg = TransformerConfig::wan22_t2v_a14b();
        assert_eq!(transformer_fp32_parameters(&cfg), 29_184_000);
        let bytes = transformer_weight_bytes(&cfg, 2);
        assert_eq!(bytes, (14_288_491_584 - 29_184_000) * 2 + 29_184_000 * 4);
        assert_eq!(bytes / 100_000_000, 286, "≈ 28.6 GB");
    }

    #[test]
    fn a14b_fp8_expert_weights_by_hand() {
        // Q = 40·(8·5120² + 2·5120·13824) block linear weights at 1 byte instead of 2, and
        // 40·(9·5120 + 13824) f32 scales.
        let cfg = TransformerConfig::wan22_t2v_a14b();
        assert_eq!(fp8::fp8_parameters(&cfg), 14_050_918_400);
        assert_eq!(fp8::fp8_scale_parameters(&cfg), 2_396_160);
        let bf16 = transformer_weight_bytes(&cfg, 2);
        assert_eq!(transformer_weight_bytes_in(&cfg, Kind::BFloat16), bf16);
        let fp8_bytes = transformer_weight_bytes_in(&cfg, fp8::FP8);
        assert_eq!(fp8_bytes, bf16 - 14_050_918_400 + 2_396_160 * 4);
        assert_eq!(fp8_bytes / 100_000_000, 145, "≈ 14.6 GB");
    }

    #[test]
    fn a14b_fp8_480p_both_experts_fit_48_gib_with_the_encoder_parked() {
        let policy = MemoryPolicy {
            offload_text_encoder: true,
            ..MemoryPolicy::all_resident()
        };
        let bf16 = estimate(&ModelConfigs::wan22_t2v_a14b(), &request(832, 480, policy)).unwrap();
        let mut req = request(832, 480, policy);
        req.dtype = fp8::FP8;
        let e = estimate(&ModelConfigs::wan22_t2v_a14b(), &req).unwrap();
        let saved = 2 * (bf16.transformer_weights - e.transformer_weights);
        // The FFN hidden's e4m3 copy: 32,760 tokens × 13,824 bytes more activation.
        assert_eq!(bf16.denoise - e.denoise, saved - 32_760 * 13_824);
        assert_eq!(e.text_encoder_weights, bf16.text_encoder_weights);
        assert!(e.peak < 48 * (1 << 30), "{e:?}");
    }

    #[test]
    fn umt5_xxl_parameters_by_hand() {
        // 256384·4096 + 24·(4·4096·4096 + 32·64 + 2·4096 + 3·4096·10240) + 4096
        let layer = 4 * 4096 * 4096 + 32 * 64 + 2 * 4096 + 3 * 4096 * 10240;
        let expected = 256_384 * 4096 + 24 * layer + 4096;
        assert_eq!(expected, 5_680_910_336);
        assert_eq!(umt5_parameters(&UMT5Config::umt5_xxl()), expected);
    }

    #[test]
    fn parameter_formulas_match_the_module_trees() {
        let mut te = UMT5Config::default();
        (te.vocab_size, te.d_model, te.d_kv, te.d_ff) = (96, 16, 4, 24);
        (te.num_layers, te.num_heads) = (2, 3);
        let vs = nn::VarStore::new(Device::Cpu);
        UMT5EncoderModel::new(&te, vs.root()).unwrap();
        assert_eq!(umt5_parameters(&te), numel(&vs));

        let vae = VaeConfig {
            base_dim: 8,
            ..VaeConfig::default()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        AutoencoderKLWan::new(&vae, vs.root()).unwrap();
        assert_eq!(vae_parameters(&vae), numel(&vs));
        let vae = VaeConfig {
            base_dim: 8,
            decoder_base_dim: Some(12),
            ..VaeConfig::wan2_2()
        };
        let vs = nn::VarStore::new(Device::Cpu);
        AutoencoderKLWan::new(&vae, vs.root()).unwrap();
        assert_eq!(vae_parameters(&vae), numel(&vs));
        let decoder = vs
            .variables()
            .into_iter()
            .filter(|(k, _)| k.starts_with("decoder."));
        let post_quant = vae.z_dim * vae.z_dim + vae.z_dim;
        let decoder_numel: i64 = decoder.map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(vae_decoder_parameters(&vae), decoder_numel + post_quant);
    }

    #[test]
    fn per_gpu_estimate_shrinks_the_activations_by_the_ulysses_degree() {
        let models = ModelConfigs::wan22_t2v_a14b();
        let req = request(1280, 720, MemoryPolicy::all_resident());
        let one = estimate(&models, &req).unwrap();
        let single = ParallelLayout::single();
        assert_eq!(estimate_per_gpu(&models, &req, single, 1).unwrap(), one);
        // CFG parallel alone: one forward per GPU at a time, as on one GPU.
        let cfg = ParallelLayout { cfg: 2, ulysses: 1 };
        let cfg_only = estimate_per_gpu(&models, &req, cfg, 1).unwrap();
        assert_eq!(cfg_only.denoise, one.denoise);
        // 2 × 4 on 8 GPUs: 75,600 tokens → 18,900 per rank, plus the all-to-all buffers.
        let eight = ParallelLayout { cfg: 2, ulysses: 4 };
        let per_gpu = estimate_per_gpu(&models, &req, eight, 8).unwrap();
        let (n, m, d) = (75_600u64, 18_900u64, 5120u64);
        let per_token =
            |t: u64| 6 * t * d * 2 + 3 * t * d * 4 + 2 * t * 13_824 * 2 + 2 * t * 128 * 4;
        let saved = per_token(n) - per_token(m) - 6 * m * d * 2;
        assert_eq!(one.denoise - per_gpu.denoise, saved);
        assert!(per_gpu.peak < one.peak, "{per_gpu:?}");
    }

    #[test]
    fn a14b_480p_all_resident_by_hand() {
        let e = estimate(
            &ModelConfigs::wan22_t2v_a14b(),
            &request(832, 480, MemoryPolicy::all_resident()),
        )
        .unwrap();
        let expert = transformer_weight_bytes(&TransformerConfig::wan22_t2v_a14b(), 2);
        assert_eq!(e.text_encoder_weights, 5_680_910_336 * 2);
        // Denoise: latent 16×21×60×104 → N = 21·30·52 = 32,760 tokens of D = 5120.
        let (n, d) = (32_760u64, 5120u64);
        let activations = 6 * n * d * 2
            + 3 * n * d * 4
            + 2 * n * 13_824 * 2
            + 2 * n * 128 * 4
            + 3 * 512 * d * 2
            + 4 * (16 * 21 * 60 * 104) * 4;
        let embeds = 2 * 512 * 4096 * 2;
        let denoise = 2 * expert + e.text_encoder_weights + e.vae_weights + embeds + activations;
        assert_eq!(e.denoise, denoise);
        assert_eq!(activations / 10_000_000, 591, "≈ 5.9 GB of activations");
        // Weights alone are 2·28.64 + 11.36 GB; the whole run stays under the H100's 80 GB.
        assert!(e.peak > 68 * GB && e.peak < 80 * GB, "{e:?}");
        assert_eq!(e.pinned_host, 0);
    }

    #[test]
    fn swap_experts_saves_one_expert_and_pins_both() {
        let all = estimate(
            &ModelConfigs::wan22_t2v_a14b(),
            &request(1280, 720, MemoryPolicy::all_resident()),
        )
        .unwrap();
        let low = MemoryPolicy {
            vae_tiling: None,
            ..MemoryPolicy::low_memory()
        };
        let swap = estimate(&ModelConfigs::wan22_t2v_a14b(), &request(1280, 720, low)).unwrap();
        let expert = all.transformer_weights;
        assert_eq!(
            all.denoise - swap.denoise,
            expert + all.text_encoder_weights
        );
        assert_eq!(swap.pinned_host, 2 * expert + all.text_encoder_weights);
        // During text encoding only the encoder and the VAE are on the device.
        assert!(swap.text_encode < 13 * GB, "{swap:?}");
        assert!(
            swap.peak < 80 * GB,
            "720p with swapping must fit an 80 GB card: {swap:?}"
        );
    }

    #[test]
    fn vae_decode_cache_and_tiling_by_hand() {
        // Wan2.1 decoder (widths 384, 384, 192, 96 over stages at 1/8 … 1 of the frame): the
        // feature cache holds 2 frames of each cached conv's input, per output pixel:
        // conv_in 16/64 + mid 4·384/64, stage 0 (384+384+4·384)/64 + time_conv 384/64,
        // stage 1 (192+384+4·384)/16 + time_conv 384/16, stage 2 (192+192+4·192)/4,
        // stage 3 96+96+4·96, conv_out 96; each × 2 frames = 2364.5 elements per pixel.
        // The widest activation: 192 channels × 4 frames upsampled to full size = 768.
        let cfg = VaeConfig::default();
        let r = request(832, 480, MemoryPolicy::all_resident());
        let pixels = 480 * 832u64;
        let video = 3 * 81 * pixels;
        let expected =
            ((2364.5 + 3.0 * 768.0) * pixels as f64) as u64 * 2 + 2 * video * 2 + video * 4;
        assert_eq!(vae_decode_bytes(&cfg, &r, None), expected);
        let tiled = vae_decode_bytes(&cfg, &r, Some(Tiling::default()));
        let tile = ((2364.5 + 3.0 * 768.0) * 65_536.0) as u64 * 2;
        assert_eq!(tiled, tile + 3 * video * 2 + video * 4);
        assert!(tiled < expected / 2);
    }

    #[test]
    fn vae_parameters_of_both_published_vaes_match_diffusers() {
        // Counted from diffusers' AutoencoderKLWan(...) built on the meta device.
        let wan21 = VaeConfig::default();
        assert_eq!(vae_encoder_parameters(&wan21), 53_596_928);
        assert_eq!(vae_decoder_parameters(&wan21), 73_295_603);
        let wan22 = VaeConfig::wan2_2();
        assert_eq!(vae_encoder_parameters(&wan22), 149_637_088);
        assert_eq!(vae_decoder_parameters(&wan22), 555_051_580);
    }

    #[test]
    fn wan2_2_vae_decode_of_704p_121_frames_by_hand() {
        // Wan2.2 decoder (widths 1024, 1024, 1024, 512, 256; stages at 1/64 … 1 of the decoder's
        // 640×352 output): cache per output pixel (48 + 4·1024)/64·2 = 129.5, stage 0
        // 6144/64·2 + 1024/64·2 = 224, stage 1 6144/16·2 + 1024/16·2 = 896, stage 2 3584/4·2 =
        // 1792, stage 3 1792·2 = 3584, conv_out 256·2 = 512: 7137.5. The widest activation:
        // 512 channels × 4 frames at the last stage's size = 2048, 4 copies with the shortcut.
        let cfg = VaeConfig::wan2_2();
        let mut r = request(1280, 704, MemoryPolicy::low_memory());
        r.num_frames = 121;
        let video = 3 * 121 * 1280 * 704u64;
        let per_pixel = 7137.5 + 4.0 * 2048.0;
        let untiled = (per_pixel * (640.0 * 352.0)) as u64 * 2 + 3 * video * 2 + video * 4;
        assert_eq!(vae_decode_bytes(&cfg, &r, None), untiled);
        // Default tiles: 256 video pixels = 128 decoder pixels a side.
        let tiled = vae_decode_bytes(&cfg, &r, Some(Tiling::default()));
        let tile = (per_pixel * 16_384.0) as u64 * 2;
        assert_eq!(tiled, tile + 4 * video * 2 + video * 4);
        // With the weights the tiled decode stays far below a 24 GiB card.
        let weights = vae_parameters(&cfg) as u64 * 2;
        assert!(weights + tiled < 6 * GB, "{weights} + {tiled}");
        // Encoding the conditioning frame is smaller still.
        let encode = vae_encode_bytes(&cfg, &r, 1, Some(Tiling::default()));
        assert!(encode < tiled, "{encode}");
    }

    #[test]
    fn what_each_kind_encodes_for_an_image() {
        let i2v = ModelKind::ImageToVideo { two_experts: true };
        assert_eq!(ImageEncode::of(i2v, true).frames(81), 81);
        assert_eq!(
            ImageEncode::of(ModelKind::TextImageToVideo, true).frames(121),
            1
        );
        assert_eq!(
            ImageEncode::of(ModelKind::TextImageToVideo, false).frames(121),
            0
        );
        let t2v = ModelKind::TextToVideo { two_experts: true };
        assert_eq!(ImageEncode::of(t2v, true), ImageEncode::None);
    }

    /// `models` at `r` without and with `image`: (without, with).
    fn with_and_without_image(
        models: &ModelConfigs,
        r: EstimateRequest,
        image: ImageEncode,
    ) -> (MemoryEstimate, MemoryEstimate) {
        let without = estimate(models, &r).unwrap();
        let with = estimate(models, &EstimateRequest { image, ..r }).unwrap();
        (without, with)
    }

    #[test]
    fn the_image_encode_is_counted_but_the_published_models_peak_elsewhere() {
        let ti2v = ModelConfigs {
            transformer: TransformerConfig::wan22_ti2v_5b(),
            transformer_2: None,
            text_encoder: UMT5Config::umt5_xxl(),
            vae: VaeConfig::wan2_2(),
        };
        let i2v_expert = TransformerConfig {
            in_channels: 36,
            ..TransformerConfig::wan22_t2v_a14b()
        };
        let i2v = ModelConfigs {
            transformer: i2v_expert.clone(),
            transformer_2: Some(i2v_expert),
            text_encoder: UMT5Config::umt5_xxl(),
            vae: VaeConfig::default(),
        };
        let ti2v_704p = EstimateRequest {
            num_frames: 121,
            ..request(1280, 704, MemoryPolicy::all_resident())
        };
        let cases = [
            (&ti2v, ti2v_704p, ImageEncode::FirstFrame),
            (
                &ti2v,
                EstimateRequest {
                    policy: MemoryPolicy::low_memory(),
                    ..ti2v_704p
                },
                ImageEncode::FirstFrame,
            ),
            (
                &i2v,
                request(832, 480, MemoryPolicy::all_resident()),
                ImageEncode::WithZeroFrames,
            ),
            (
                &i2v,
                request(1280, 720, MemoryPolicy::low_memory()),
                ImageEncode::WithZeroFrames,
            ),
        ];
        for (models, r, image) in cases {
            let (without, with) = with_and_without_image(models, r, image);
            assert_eq!(without.vae_encode, 0);
            assert!(with.vae_encode > with.vae_weights, "{with:?}");
            assert!(with.vae_encode < with.peak, "{with:?}");
            assert_eq!(with.peak, without.peak, "{r:?}");
        }
    }

    fn tiny_umt5() -> UMT5Config {
        let mut cfg = UMT5Config::umt5_xxl();
        (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff) = (64, 32, 16, 64);
        (cfg.num_layers, cfg.num_heads) = (1, 2);
        cfg
    }

    #[test]
    fn the_image_encode_sets_the_peak_where_it_dominates() {
        // A tiny transformer and text encoder beside the Wan2.2 VAE, one frame, tiled: the
        // encode's tiles (512 video pixels a side, patchified) are 4× the decode's in area.
        let tiny = ModelConfigs {
            transformer: TransformerConfig {
                num_attention_heads: 2,
                attention_head_dim: 16,
                text_dim: 32,
                freq_dim: 16,
                ffn_dim: 64,
                num_layers: 1,
                ..TransformerConfig::wan22_ti2v_5b()
            },
            transformer_2: None,
            text_encoder: tiny_umt5(),
            vae: VaeConfig::wan2_2(),
        };
        let one_frame = EstimateRequest {
            num_frames: 1,
            ..request(1280, 704, MemoryPolicy::low_memory())
        };
        let (without, with) = with_and_without_image(&tiny, one_frame, ImageEncode::FirstFrame);
        assert_eq!(with.peak, with.vae_encode, "{with:?}");
        assert!(with.peak > without.peak, "{with:?} vs {without:?}");
        let phases = [without.text_encode, without.denoise, without.vae_decode];
        assert_eq!(without.peak, phases.into_iter().max().unwrap());
        // Spread over GPUs the decode is tiled by a VAE of its own; the encode keeps the
        // policy's tiles, and still sets each GPU's peak.
        let untiled = EstimateRequest {
            policy: MemoryPolicy::all_resident(),
            ..one_frame
        };
        let (_, one_gpu) = with_and_without_image(&tiny, untiled, ImageEncode::FirstFrame);
        let layout = ParallelLayout { cfg: 2, ulysses: 1 };
        let image = EstimateRequest {
            image: ImageEncode::FirstFrame,
            ..untiled
        };
        let per_gpu = estimate_per_gpu(&tiny, &image, layout, 2).unwrap();
        assert_eq!(per_gpu.vae_encode, one_gpu.vae_encode);
        assert!(per_gpu.vae_decode < one_gpu.vae_decode);
        assert_eq!(per_gpu.peak, per_gpu.vae_encode, "{per_gpu:?}");
    }

    #[test]
    fn parked_weights_round_trip_on_the_cpu() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var("w", &[2, 3], nn::Init::Const(1.5));
        let parked = ParkedWeights::new(vs.variables().into_iter().collect(), Device::Cpu).unwrap();
        parked.park().unwrap();
        assert!(!parked.is_on_device());
        parked.fetch().unwrap();
        assert!(parked.is_on_device());
        assert_eq!(w.sum(Kind::Float).double_value(&[]), 9.0);
        assert_eq!(parked.host_bytes(), 0);
    }
}
