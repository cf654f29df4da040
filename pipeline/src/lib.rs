//! `t2v-pipeline`: the Wan text-to-video models on tch (libtorch), matched to Hugging Face
//! diffusers/transformers, loading the diffusers checkpoint layout users download.
//! This crate knows nothing about Kafka or object storage; `t2v-worker` drives it.
//!
//! # Layout
//! - [`error`]: the crate's error type; every message names the cause and the fix.
//! - [`model_dir`]: a diffusers-format model directory: model_index.json, components, completeness.
//! - [`loader`]: diffusers-format directories: `model_index.json`, configs, sharded safetensors.
//! - [`wan`]: the Wan model family — transformer (DiT), RoPE, attention, umT5 text encoder, VAE.
//! - [`scheduler`]: flow-matching samplers (UniPC multistep, FlowMatch Euler) behind one trait.
//! - [`denoise`]: the denoising loop with the two-expert boundary switch and CFG.

pub mod denoise;
pub mod error;
pub mod loader;
pub mod model_dir;
pub mod scheduler;
pub mod wan;

pub use error::{PipelineError, Result};
