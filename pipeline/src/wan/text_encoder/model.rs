//! `UMT5EncoderModel` (transformers `models/umt5/modeling_umt5.py`), module paths equal to the
//! checkpoint keys: `shared.weight`, `encoder.block.N.layer.0.SelfAttention.{q,k,v,o,
//! relative_attention_bias}`, `encoder.block.N.layer.0.layer_norm`,
//! `encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}` (`wi` when not gated),
//! `encoder.block.N.layer.1.layer_norm`, `encoder.final_layer_norm`.
//!
//! Dtypes follow transformers: RMS-norm statistics in f32 and the result cast to the weight's
//! half dtype; in fp16 the `wo` projections stay f32 (`_keep_in_fp32_modules = ["wo"]`, which
//! transformers applies for fp16 only), so the residual stream is promoted to f32 after the first
//! feed-forward, and fp16 hidden states are clamped when they overflow.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::config::{Activation, UMT5Config};
use crate::error::{PipelineError, Result};

/// Where the token embedding sits in the checkpoint. transformers ties
/// `encoder.embed_tokens.weight` to `shared.weight` and saves the latter; older or converted
/// checkpoints may hold only the former.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbeddingKey {
    /// `shared.weight`
    Shared,
    /// `encoder.embed_tokens.weight`
    EncoderEmbedTokens,
}

/// T5 layer norm: RMS without mean or bias; statistics in f32.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(vs: nn::Path<'_>, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.ones("weight", &[dim]),
            eps,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x
            .to_kind(Kind::Float)
            .pow_tensor_scalar(2)
            .mean_dim(-1, true, Kind::Float);
        let mut normed = x * (variance + self.eps).rsqrt();
        if matches!(self.weight.kind(), Kind::Half | Kind::BFloat16) {
            normed = normed.to_kind(self.weight.kind());
        }
        &self.weight * normed
    }
}

/// Self-attention with a learned relative position bias (in every umT5 layer), no 1/√d scaling.
struct SelfAttention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    relative_attention_bias: Tensor,
    heads: i64,
    d_kv: i64,
}

impl SelfAttention {
    fn new(vs: nn::Path<'_>, cfg: &UMT5Config) -> Self {
        let inner = cfg.num_heads * cfg.d_kv;
        let weight =
            |name: &str, dims: [i64; 2]| (&vs / name).var("weight", &dims, nn::Init::Const(0.));
        Self {
            q: weight("q", [inner, cfg.d_model]),
            k: weight("k", [inner, cfg.d_model]),
            v: weight("v", [inner, cfg.d_model]),
            o: weight("o", [cfg.d_model, inner]),
            relative_attention_bias: weight(
                "relative_attention_bias",
                [cfg.relative_attention_num_buckets, cfg.num_heads],
            ),
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        }
    }

    /// `x`: (B, L, d_model); `buckets`: (L, L) int64; `keep`: (B, 1, 1, L) bool.
    fn forward(&self, x: &Tensor, buckets: &Tensor, keep: &Tensor) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let heads = |w: &Tensor| {
            x.linear::<&Tensor>(w, None)
                .view([b, -1, self.heads, self.d_kv])
                .transpose(1, 2)
        };
        let (q, k, v) = (heads(&self.q), heads(&self.k), heads(&self.v));
        // position bias (1, H, L, L) from this layer's table, then -inf-like on padded keys
        let bias = Tensor::embedding(&self.relative_attention_bias, buckets, -1, false, false)
            .permute([2, 0, 1])
            .unsqueeze(0);
        let min = Tensor::full([], min_of(k.kind()), (bias.kind(), bias.device()));
        let mask = bias.where_self(keep, &min).contiguous();
        let out =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, 1.0, false);
        out.transpose(1, 2)
            .reshape([b, l, -1])
            .linear::<&Tensor>(&self.o, None)
    }
}

/// `UMT5DenseGatedActDense` (or `UMT5DenseActDense` when not gated).
struct FeedForward {
    wi_0: Tensor,
    wi_1: Option<Tensor>,
    wo: Tensor,
    act: Activation,
}

impl FeedForward {
    fn new(vs: nn::Path<'_>, cfg: &UMT5Config, act: Activation) -> Self {
        let weight =
            |name: &str, dims: [i64; 2]| (&vs / name).var("weight", &dims, nn::Init::Const(0.));
        let (wi_0, wi_1) = if cfg.gated() {
            (
                weight("wi_0", [cfg.d_ff, cfg.d_model]),
                Some(weight("wi_1", [cfg.d_ff, cfg.d_model])),
            )
        } else {
            (weight("wi", [cfg.d_ff, cfg.d_model]), None)
        };
        let mut wo = weight("wo", [cfg.d_model, cfg.d_ff]);
        if wo.kind() == Kind::Half {
            tch::no_grad(|| wo.set_data(&wo.to_kind(Kind::Float)));
        }
        Self {
            wi_0,
            wi_1,
            wo,
            act,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let activated = activation(self.act, &x.linear::<&Tensor>(&self.wi_0, None));
        let mut h = match &self.wi_1 {
            Some(wi_1) => activated * x.linear::<&Tensor>(wi_1, None),
            None => activated,
        };
        if h.kind() != self.wo.kind() {
            h = h.to_kind(self.wo.kind());
        }
        h.linear::<&Tensor>(&self.wo, None)
    }
}

fn activation(act: Activation, x: &Tensor) -> Tensor {
    match act {
        Activation::GeluNew => {
            let inner =
                (x + x.pow_tensor_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
            x * 0.5 * (inner.tanh() + 1.0)
        }
        Activation::GeluTanh => x.gelu("tanh"),
        Activation::Gelu => x.gelu("none"),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}

/// `finfo(kind).min`, the additive mask value of transformers' SDPA path.
fn min_of(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// In fp16, clamp to ±(max − 1000) if any value overflowed, else to ±max (a no-op but for inf).
fn clamp_fp16(h: Tensor) -> Tensor {
    if h.kind() != Kind::Half {
        return h;
    }
    let max = 65504.0;
    let any_inf = h.isinf().any();
    let options = (Kind::Float, h.device());
    let bound = Tensor::full([], max - 1000.0, options)
        .where_self(&any_inf, &Tensor::full([], max, options));
    let lower = -&bound;
    h.clamp_tensor(Some(&lower), Some(&bound))
}

/// One `UMT5Block` of the encoder: self-attention and feed-forward, each pre-normed and residual.
struct Block {
    attn_norm: RmsNorm,
    attn: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// The umT5 encoder stack.
pub struct UMT5EncoderModel {
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: RmsNorm,
    cfg: UMT5Config,
}

impl UMT5EncoderModel {
    /// Builds the module tree under `vs` (variables in `vs.kind()`), embedding at `shared.weight`.
    pub fn new(cfg: &UMT5Config, vs: nn::Path<'_>) -> Result<Self> {
        Self::with_embedding(cfg, vs, EmbeddingKey::Shared)
    }

    /// As [`Self::new`], reading the token embedding from `embedding`.
    pub fn with_embedding(
        cfg: &UMT5Config,
        vs: nn::Path<'_>,
        embedding: EmbeddingKey,
    ) -> Result<Self> {
        let act = cfg
            .activation()
            .map_err(|problem| problem.in_file("text_encoder/config.json"))?;
        let embed_path = match embedding {
            EmbeddingKey::Shared => &vs / "shared",
            EmbeddingKey::EncoderEmbedTokens => &vs / "encoder" / "embed_tokens",
        };
        let embed_tokens = embed_path.var(
            "weight",
            &[cfg.vocab_size, cfg.d_model],
            nn::Init::Const(0.),
        );
        let encoder = &vs / "encoder";
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let layer = &encoder / "block" / i / "layer";
                let eps = cfg.layer_norm_epsilon;
                Block {
                    attn_norm: RmsNorm::new(&layer / 0 / "layer_norm", cfg.d_model, eps),
                    attn: SelfAttention::new(&layer / 0 / "SelfAttention", cfg),
                    ff_norm: RmsNorm::new(&layer / 1 / "layer_norm", cfg.d_model, eps),
                    ff: FeedForward::new(&layer / 1 / "DenseReluDense", cfg, act),
                }
            })
            .collect();
        Ok(Self {
            embed_tokens,
            blocks,
            final_layer_norm: RmsNorm::new(
                &encoder / "final_layer_norm",
                cfg.d_model,
                cfg.layer_norm_epsilon,
            ),
            cfg: cfg.clone(),
        })
    }

    /// Loads `dir/config.json` and the weights of `dir` in `kind` (fp16 keeps `wo` in f32).
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let cfg = UMT5Config::from_file(&dir.join("config.json"))?;
        let keys = crate::loader::tensor_names(dir)?;
        let embedding =
            if !keys.contains("shared.weight") && keys.contains("encoder.embed_tokens.weight") {
                EmbeddingKey::EncoderEmbedTokens
            } else {
                EmbeddingKey::Shared
            };
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let model = Self::with_embedding(&cfg, vs.root(), embedding)?;
        crate::loader::load_weights(&vs, dir)?;
        vs.freeze();
        Ok(model)
    }

    pub fn config(&self) -> &UMT5Config {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The dtype of the embeddings (and of `last_hidden_state`).
    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// `UMT5EncoderModel(input_ids, attention_mask).last_hidden_state`: (B, L, d_model).
    /// `input_ids` and `attention_mask` are (B, L) integers on the model's device; the mask is
    /// 1 on tokens and 0 on padding.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.check_inputs(input_ids, attention_mask)?;
        let _guard = tch::no_grad_guard();
        let l = input_ids.size()[1];
        // 1. token embeddings
        let mut h = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        // 2. key padding mask (B, 1, 1, L) and relative position buckets (L, L), shared by layers
        let keep = attention_mask.ne(0).view([input_ids.size()[0], 1, 1, l]);
        let buckets = self.relative_position_buckets(l, h.device());
        // 3. blocks: h + attn(norm(h)), clamp; h + ff(norm(h)), clamp
        for block in &self.blocks {
            h = clamp_fp16(
                &h + block
                    .attn
                    .forward(&block.attn_norm.forward(&h), &buckets, &keep),
            );
            h = clamp_fp16(&h + block.ff.forward(&block.ff_norm.forward(&h)));
        }
        // 4. final norm
        Ok(self.final_layer_norm.forward(&h))
    }

    fn check_inputs(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<()> {
        let ids_shape = input_ids.size();
        if ids_shape.len() != 2 || ids_shape[1] == 0 || attention_mask.size() != ids_shape {
            return Err(PipelineError::invalid(
                "input_ids",
                format!(
                    "input_ids {ids_shape:?} and attention_mask {:?} must both be (batch, length)",
                    attention_mask.size()
                ),
            ));
        }
        if !matches!(input_ids.kind(), Kind::Int64 | Kind::Int) {
            return Err(PipelineError::invalid(
                "input_ids",
                format!("dtype {:?}, expected int64", input_ids.kind()),
            ));
        }
        if input_ids.numel() > 0 {
            let (lo, hi) = (
                input_ids.min().int64_value(&[]),
                input_ids.max().int64_value(&[]),
            );
            if lo < 0 || hi >= self.cfg.vocab_size {
                return Err(PipelineError::invalid(
                    "input_ids",
                    format!(
                        "token ids span {lo}..={hi}, the vocabulary has {}",
                        self.cfg.vocab_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `UMT5Attention._relative_position_bucket` for the bidirectional encoder, memory − query.
    fn relative_position_buckets(&self, len: i64, device: Device) -> Tensor {
        let positions = Tensor::arange(len, (Kind::Int64, device));
        let relative = positions.unsqueeze(0) - positions.unsqueeze(1);
        let num_buckets = self.cfg.relative_attention_num_buckets / 2;
        let max_exact = num_buckets / 2;
        let direction = relative.gt(0).to_kind(Kind::Int64) * num_buckets;
        let distance = relative.abs();
        let is_small = distance.lt(max_exact);
        let log_ratio = (distance.to_kind(Kind::Float) / max_exact as f64).log()
            / (self.cfg.relative_attention_max_distance as f64 / max_exact as f64).ln()
            * (num_buckets - max_exact) as f64;
        let large = (log_ratio.to_kind(Kind::Int64) + max_exact).clamp_max(num_buckets - 1);
        direction + distance.where_self(&is_small, &large)
    }
}
