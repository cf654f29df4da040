//! The Wan model family (Wan2.1 / Wan2.2), module paths equal to the diffusers checkpoint keys.
//!
//! # Layout
//! - `config`: `TransformerConfig`, the transformer's `config.json`, with presets of the published models.
//! - `transformer`: `WanTransformer3DModel` (patch embedding, condition embedder, blocks, output).
//! - `attention`: self/cross attention with RMS q/k norm through `scaled_dot_product_attention`.
//! - `fp8`: FP8 (e4m3) block linear weights with per-channel scales through `_scaled_mm`.
//! - `rope`: 3-D rotary position embedding split over (frames, height, width).
//! - `text_encoder`: the umT5 encoder and its config.
//! - `prompt`: the tokenizer, prompt cleaning and `TextEncoder` (tokenize → umT5 → embeddings).
//! - `vae`: `AutoencoderKLWan` decoder with causal 3-D convolutions.

pub mod attention;
pub mod config;
pub mod fp8;
pub mod prompt;
pub mod rope;
pub mod text_encoder;
pub mod transformer;
pub mod vae;

pub use config::TransformerConfig;

/// How a model's tensors are mapped when it is copied for another rank: `Tensor::to_device`
/// for a replica on another device, `Tensor::shallow_clone` for another thread's handle on the
/// same weights (tch's `Tensor` is `Send` but not `Sync`, so each rank thread owns handles).
pub type TensorMap<'a> = dyn Fn(&tch::Tensor) -> crate::error::Result<tch::Tensor> + 'a;
pub use transformer::WanTransformer3DModel;
