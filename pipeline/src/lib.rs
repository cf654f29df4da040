//! `t2v-pipeline`: the Wan text-to-video models on tch (libtorch), matched to Hugging Face
//! diffusers/transformers, loading the diffusers checkpoint layout users download.
//! This crate knows nothing about Kafka or object storage; `t2v-worker` drives it.
//!
//! # Layout
//! - [`error`]: the crate's error type; every message names the cause and the fix.
//! - [`loader`]: diffusers-format weights and JSON: configs, sharded safetensors, and the random
//!   weights of the benchmarks.
//! - [`model_dir`]: a diffusers-format model directory (`model_index.json`, its components) and
//!   the check that it is complete.
//! - [`image`]: the conditioning image of image-to-video requests (PNG/JPEG/WebP), resized and
//!   normalised as diffusers' Wan image pipelines do (Pillow's Lanczos, to the bit).
//! - [`lora`]: LoRA files (diffusers/PEFT, original Wan / ComfyUI / kohya, `diff` deltas) fused
//!   into the transformer weights at load, one strength per file, per expert.
//! - [`wan`]: the Wan model family — transformer (DiT), RoPE, attention, umT5 text encoder, VAE.
//! - [`parallel`]: one job over several ranks (GPUs, or threads on one device): CFG parallel ×
//!   Ulysses sequence parallel denoising, the VAE decode's tiles spread over the ranks.
//! - [`scheduler`]: flow-matching samplers (UniPC multistep, FlowMatch Euler) behind one trait.
//! - [`denoise`]: the denoising loop with the two-expert boundary switch and CFG.
//! - [`step_cache`]: First-Block-Cache and MagCache, skipping transformer blocks on steps
//!   close to the last computed one (diffusers' cache hooks), per expert and CFG branch.
//! - [`checkpoint`]: the denoising state as a safetensors file, to resume a run elsewhere.
//! - [`memory`]: GPU memory policy (resident or swapped experts, parked text encoder, tiled
//!   decode) and the preflight estimate of peak GPU memory.
//! - [`text_to_video`]: [`WanT2V`], the whole text-to-video pipeline (prompt → noise → denoise →
//!   VAE → frames), its [`GenerationParams`] and [`LoadOptions`].

pub mod checkpoint;
pub mod denoise;
pub mod error;
pub mod image;
pub mod loader;
pub mod lora;
pub mod memory;
pub mod model_dir;
pub mod parallel;
pub mod scheduler;
pub mod step_cache;
pub mod text_to_video;
pub mod wan;

pub use error::{ConfigProblem, PipelineError, Result};
pub use lora::{ExpertLoras, LoraError, LoraSpec};
pub use text_to_video::{GenerationOutput, GenerationParams, LoadOptions, WanT2V};
