//! The umT5 text encoder of Wan (google/umt5-xxl's encoder), as transformers
//! `UMT5EncoderModel` runs it. The prompt path around it (cleaning, tokenization, trimming and
//! zero-padding of the embeddings) is [`crate::wan::prompt`].
//!
//! # Layout
//! - [`config`]: `UMT5Config`, parsed from `text_encoder/config.json`.
//! - [`model`]: `UMT5EncoderModel` — embedding, blocks of relative-bias self-attention and
//!   gated-GELU feed-forward with T5 RMS norms, final norm.

pub mod config;
pub mod model;

pub use config::{Activation, UMT5Config};
pub use model::{EmbeddingKey, UMT5EncoderModel};
