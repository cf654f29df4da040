//! The umT5 text encoder's part of the estimate: its parameters and the activations of one
//! prompt's encode.

use crate::wan::text_encoder::UMT5Config;

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

pub(super) fn umt5_activation_bytes(cfg: &UMT5Config, text_len: i64) -> u64 {
    let l = text_len as u64;
    l * (4 * cfg.d_model + 3 * cfg.d_ff) as u64 * 4 + 2 * cfg.num_heads as u64 * l * l * 4
}
