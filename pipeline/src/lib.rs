//! `t2v-pipeline`: the Wan text-to-video models on tch (libtorch), matched to Hugging Face
//! diffusers/transformers, loading the diffusers checkpoint layout users download.
//! This crate knows nothing about Kafka or object storage; `t2v-worker` drives it.
//!
//! # Layout
//! - [`error`]: the crate's error type; every message names the cause and the fix.
//! - [`loader`]: diffusers-format directories: `model_index.json`, configs, sharded safetensors.
//! - [`wan`]: the Wan model family — transformer (DiT), RoPE, attention, umT5 text encoder, VAE.
//! - [`scheduler`]: flow-matching samplers (UniPC multistep, FlowMatch Euler) behind one trait.
//! - [`denoise`]: the denoising loop with the two-expert boundary switch and CFG.
//! - [`checkpoint`]: the denoising state as a safetensors file, to resume a run elsewhere.
//! - [`memory`]: GPU memory policy (resident or swapped experts, parked text encoder, tiled
//!   decode) and the preflight estimate of peak GPU memory.
//! - [`pipeline`]: `WanT2V`, the whole text-to-video pipeline (prompt → noise → denoise → VAE → frames).

pub mod checkpoint;
pub mod denoise;
pub mod error;
pub mod loader;
pub mod memory;
pub mod model_dir;
pub mod pipeline;
pub mod scheduler;
pub mod wan;

pub use error::{PipelineError, Result};
pub use pipeline::{GenerationOutput, GenerationParams, LoadOptions, WanT2V};
