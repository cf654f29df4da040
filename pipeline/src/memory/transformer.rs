//! The transformer's part of the estimate: the weight bytes of one expert (dense, or FP8 blocks
//! with their scales) and the activation bytes of one forward, on one device or a Ulysses rank.

use tch::Kind;

use super::EstimateRequest;
use crate::wan::{fp8, TransformerConfig};

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
pub(super) fn compute_bytes(dtype: Kind) -> u64 {
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

/// Activation bytes of one transformer forward over `latent` ([C, F, H, W]) with the
/// request's text tokens, on one rank of `ulysses` (1: the whole sequence on one device), in
/// the request's dtype; `per_token_timesteps` for models with one timestep per latent token.
pub(super) fn transformer_activation_bytes(
    cfg: &TransformerConfig,
    [c, f, h, w]: [i64; 4],
    request: &EstimateRequest,
    per_token_timesteps: bool,
    ulysses: u64,
) -> u64 {
    let (text_len, dtype) = (request.text_len, request.dtype);
    let b = compute_bytes(dtype);
    let [pt, ph, pw] = cfg.patch_size;
    let n = ((f / pt) * (h / ph) * (w / pw)) as u64;
    let m = n.div_ceil(ulysses.max(1));
    let d = cfg.inner_dim() as u64;
    let hidden = 6 * m * d * b + 3 * m * d * 4;
    let exchange = if ulysses > 1 { 6 * m * d * b } else { 0 };
    let ffn = 2 * m * cfg.ffn_dim as u64 * b;
    // FP8: the quantisation of the FFN hidden for its output projection, beside the bf16 hidden:
    // its scaled bf16 copy (2 bytes) while it is cast to the e4m3 one (1 byte).
    let quantise = if dtype == fp8::FP8 {
        3 * m * cfg.ffn_dim as u64
    } else {
        0
    };
    // Per-token timesteps: `timestep_proj` ([tokens, 6, D] in the model dtype) lives through the
    // forward, and each block adds it to its table in f32 (TI2V-5B at 1280×704×121: 2.9 GiB).
    let modulation = if per_token_timesteps {
        6 * m * d * (b + 4)
    } else {
        0
    };
    let rope = 2 * m * cfg.attention_head_dim as u64 * 4;
    let text = 3 * text_len as u64 * d * b;
    let latents = 4 * (c * f * h * w) as u64 * 4;
    hidden + exchange + ffn + quantise + modulation + rope + text + latents
}
