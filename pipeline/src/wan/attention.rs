//! Attention of the Wan DiT (diffusers `WanAttention` + `WanAttnProcessor`, text-to-video
//! path): q/k/v projections, RMS norm of q and k across all heads (learned gain), optional
//! RoPE, `scaled_dot_product_attention`, output projection. Self-attention (`attn1`) passes no
//! context; cross-attention (`attn2`) attends from the video tokens to the text.
//!
//! Also holds the two leaf builders the DiT shares, [`param`] and [`Linear`], which create
//! variables directly in the dtype they will run in (fp32 islands next to bf16 weights), and
//! whose `Linear` runs FP8 weights when the VarStore holds them (see [`crate::wan::fp8`]).

use tch::{nn, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::parallel::SequenceShard;
use crate::wan::fp8;
use crate::wan::rope::apply_rotary_emb;
use crate::wan::TensorMap;

/// A zero-filled, non-trainable variable `name` under `vs`, of `kind` on the store's device.
/// Its value comes from the checkpoint (`loader::load_weights` copies and converts into it).
/// When `vs` already holds `name` with these dims, that variable is returned instead: the module
/// tree built again over loaded weights ([`crate::wan::fp8::quantize_blocks`]) reuses them.
pub fn param(vs: &nn::Path<'_>, name: &str, dims: &[i64], kind: Kind) -> Result<Tensor> {
    if let Some(existing) = vs.get(name) {
        if existing.size() != dims {
            return Err(PipelineError::invalid(
                "module tree",
                format!(
                    "variable {name} under {} exists with shape {:?}, expected {dims:?}",
                    vs.components().collect::<Vec<_>>().join("."),
                    existing.size()
                ),
            ));
        }
        return Ok(existing);
    }
    let tensor = Tensor::f_zeros(dims, (kind, vs.device()))?;
    Ok(vs.add(name, tensor, false))
}

/// `torch.nn.Linear` with bias: `weight` `[out, in]`, `bias` `[out]`, through `aten::linear` —
/// or, when the VarStore holds the weight in FP8 with its `weight_scale` `[out, 1]` (see
/// [`fp8`]), through `_scaled_mm`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
    /// Per-output-channel f32 scales when `weight` is float8 e4m3.
    pub weight_scale: Option<Tensor>,
}

impl Linear {
    pub fn new(vs: nn::Path<'_>, in_dim: i64, out_dim: i64, kind: Kind) -> Result<Self> {
        let weight = param(&vs, "weight", &[out_dim, in_dim], kind)?;
        let weight_scale = if weight.kind() == fp8::FP8 {
            let scale = vs.get(fp8::SCALE_NAME).ok_or_else(|| {
                PipelineError::invalid(
                    "fp8 weight",
                    format!(
                        "{} has an FP8 weight without {}; quantise with wan::fp8::quantize_blocks",
                        vs.components().collect::<Vec<_>>().join("."),
                        fp8::SCALE_NAME
                    ),
                )
            })?;
            Some(scale)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias: param(&vs, "bias", &[out_dim], kind)?,
            weight_scale,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.weight_scale {
            Some(scale) => fp8::linear(x, &self.weight, scale, &self.bias),
            None => Ok(x.f_linear(&self.weight, Some(&self.bias))?),
        }
    }

    /// The same layer with every weight mapped by `f` (see [`crate::wan::TensorMap`]).
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            weight: f(&self.weight)?,
            bias: f(&self.bias)?,
            weight_scale: self.weight_scale.as_ref().map(f).transpose()?,
        })
    }
}

/// One `WanAttention` (keys `to_q`, `to_k`, `to_v`, `to_out.0`, `norm_q`, `norm_k`).
#[derive(Debug)]
pub struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
    heads: i64,
    eps: f64,
}

impl WanAttention {
    /// `dim` channels in and out, `heads` heads of `dim / heads` channels, weights in `kind`.
    pub fn new(vs: nn::Path<'_>, dim: i64, heads: i64, eps: f64, kind: Kind) -> Result<Self> {
        if heads <= 0 || dim % heads != 0 {
            return Err(PipelineError::invalid(
                "attention heads",
                format!("{dim} channels do not split into {heads} heads"),
            ));
        }
        Ok(Self {
            to_q: Linear::new(&vs / "to_q", dim, dim, kind)?,
            to_k: Linear::new(&vs / "to_k", dim, dim, kind)?,
            to_v: Linear::new(&vs / "to_v", dim, dim, kind)?,
            to_out: Linear::new(&vs / "to_out" / "0", dim, dim, kind)?,
            norm_q: param(&(&vs / "norm_q"), "weight", &[dim], kind)?,
            norm_k: param(&(&vs / "norm_k"), "weight", &[dim], kind)?,
            heads,
            eps,
        })
    }

    /// The same attention with every weight mapped by `f`.
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            to_q: self.to_q.map_tensors(f)?,
            to_k: self.to_k.map_tensors(f)?,
            to_v: self.to_v.map_tensors(f)?,
            to_out: self.to_out.map_tensors(f)?,
            norm_q: f(&self.norm_q)?,
            norm_k: f(&self.norm_k)?,
            heads: self.heads,
            eps: self.eps,
        })
    }

    pub fn heads(&self) -> i64 {
        self.heads
    }

    /// `x`: `[batch, tokens, dim]`. `context`: `[batch, text_tokens, dim]` for cross-attention,
    /// `None` for self-attention. `rotary`: the (cos, sin) tables of `WanRotaryPosEmbed`.
    ///
    /// Each intermediate is dropped as soon as the next step has consumed it, so the peak
    /// memory of a 75k-token self-attention holds q, k, v and one RoPE temporary, as diffusers.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rotary: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        self.forward_with(x, context, rotary, None)
    }

    /// [`Self::forward`] on this rank's shard of the tokens when `sequence` is given (Ulysses
    /// self-attention): `x` and `rotary` hold the shard's tokens; q, k and v go from token
    /// shards to head groups over the whole sequence before the attention and back after.
    pub fn forward_with(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        rotary: Option<(&Tensor, &Tensor)>,
        sequence: Option<&SequenceShard<'_>>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let out = {
            // 1.–4. projections, RMS norm across heads, heads split, RoPE (self-attention only)
            let query = self.heads_of(&self.to_q, &self.norm_q, x, rotary)?;
            let key = self.heads_of(&self.to_k, &self.norm_k, context, rotary)?;
            let value = self
                .to_v
                .forward(context)?
                .f_unflatten(2, [self.heads, -1])?;
            let kind = query.kind();
            // 5. Ulysses: this rank's heads over every token instead of every head of its tokens
            let (query, key, value) = match sequence {
                None => (query, key, value),
                Some(sequence) => {
                    let [q, k, v] = sequence.tokens_to_heads([query, key, value])?;
                    (q, k, v)
                }
            };

            // 6. attention over [batch, heads, tokens, head_dim]
            let heads_first = |t: &Tensor| t.f_permute([0, 2, 1, 3]);
            let out = Tensor::f_scaled_dot_product_attention(
                &heads_first(&query)?,
                &heads_first(&key)?,
                &heads_first(&value)?,
                None::<Tensor>,
                0.0,
                false,
                None,
                false,
            )?
            .f_permute([0, 2, 1, 3])?;
            let out = match sequence {
                None => out,
                Some(sequence) => sequence.heads_to_tokens(&out)?,
            };
            out.f_flatten(2, 3)?.f_to_kind(kind)?
        };

        // 7. output projection
        self.to_out.forward(&out)
    }

    /// `projection(input)`, RMS-normed across all heads with `norm`'s gain, split into
    /// `[batch, tokens, heads, head_dim]` and rotated when `rotary` is given.
    fn heads_of(
        &self,
        projection: &Linear,
        norm: &Tensor,
        input: &Tensor,
        rotary: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let normed = projection
            .forward(input)?
            .f_rms_norm([norm.size()[0]], Some(norm), self.eps)?
            .f_unflatten(2, [self.heads, -1])?;
        match rotary {
            Some((cos, sin)) => apply_rotary_emb(&normed, cos, sin),
            None => Ok(normed),
        }
    }
}
