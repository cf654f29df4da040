//! The Wan DiT, `WanTransformer3DModel` of diffusers (`models/transformers/transformer_wan.py`),
//! text-to-video path (Wan2.1 T2V, Wan2.2 T2V-A14B experts, Wan2.2 TI2V-5B with one timestep
//! per token).
//!
//! Variable names equal the diffusers checkpoint keys (`patch_embedding.weight`,
//! `condition_embedder.time_embedder.linear_1.weight`, `blocks.0.attn1.to_q.weight`, …), so
//! loading is `loader::load_weights` over the module tree. Weights live in the model dtype
//! (the VarStore's kind) except diffusers' `_keep_in_fp32_modules` — `time_embedder`,
//! `scale_shift_table`, `norm1/2/3` — and RoPE, which stay f32 and run in f32, so bf16 on a GPU
//! rounds where diffusers rounds.

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::loader;
use crate::parallel::SequenceShard;
use crate::step_cache::BranchCache;
use crate::wan::attention::{param, Linear, WanAttention};
use crate::wan::config::TransformerConfig;
use crate::wan::rope::WanRotaryPosEmbed;
use crate::wan::TensorMap;

/// Sinusoid period of the timestep embedding (`Timesteps`, `max_period`).
const MAX_PERIOD: f64 = 10000.0;

/// `condition_embedder`: timestep → (temb, six modulation vectors), text → model width.
#[derive(Debug)]
pub struct WanTimeTextEmbedding {
    freq_dim: i64,
    kind: Kind,
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_proj: Linear,
    text_linear_1: Linear,
    text_linear_2: Linear,
}

impl WanTimeTextEmbedding {
    fn new(vs: nn::Path<'_>, cfg: &TransformerConfig, kind: Kind) -> Result<Self> {
        let dim = cfg.inner_dim();
        let time = &vs / "time_embedder";
        let text = &vs / "text_embedder";
        Ok(Self {
            freq_dim: cfg.freq_dim,
            kind,
            time_linear_1: Linear::new(&time / "linear_1", cfg.freq_dim, dim, Kind::Float)?,
            time_linear_2: Linear::new(&time / "linear_2", dim, dim, Kind::Float)?,
            time_proj: Linear::new(&vs / "time_proj", dim, 6 * dim, kind)?,
            text_linear_1: Linear::new(&text / "linear_1", cfg.text_dim, dim, kind)?,
            text_linear_2: Linear::new(&text / "linear_2", dim, dim, kind)?,
        })
    }

    fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            freq_dim: self.freq_dim,
            kind: self.kind,
            time_linear_1: self.time_linear_1.map_tensors(f)?,
            time_linear_2: self.time_linear_2.map_tensors(f)?,
            time_proj: self.time_proj.map_tensors(f)?,
            text_linear_1: self.text_linear_1.map_tensors(f)?,
            text_linear_2: self.text_linear_2.map_tensors(f)?,
        })
    }

    /// `timestep`: `[batch]` or `[batch, tokens]` (any numeric dtype); `text`:
    /// `[batch, text_tokens, text_dim]` in the model dtype. Returns (temb `[batch(, tokens), dim]`,
    /// timestep_proj `[batch(, tokens), 6·dim]`, text `[batch, text_tokens, dim]`), as diffusers.
    pub fn forward(&self, timestep: &Tensor, text: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        // 1. sinusoid [cos | sin] of every timestep, f32
        let half = self.freq_dim / 2;
        let exponent = Tensor::f_arange(half, (Kind::Float, timestep.device()))?
            .f_mul_scalar(-MAX_PERIOD.ln())?
            .f_div_scalar(half)?;
        let angles = timestep
            .f_flatten(0, -1)?
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(1)?
            .f_mul(&exponent.f_exp()?.f_unsqueeze(0)?)?;
        let mut sinusoid = Tensor::f_cat(&[angles.f_cos()?, angles.f_sin()?], -1)?;
        if timestep.dim() == 2 {
            sinusoid = sinusoid.f_unflatten(0, [-1, timestep.size()[1]])?;
        }

        // 2. time_embedder (f32) → temb in the model dtype
        let temb = self.time_linear_1.forward(&sinusoid)?.f_silu()?;
        let temb = self.time_linear_2.forward(&temb)?.f_to_kind(self.kind)?;

        // 3. time_proj: SiLU, Linear dim → 6·dim
        let timestep_proj = self.time_proj.forward(&temb.f_silu()?)?;

        // 4. text_embedder: Linear, GELU(tanh), Linear
        let text = self.text_linear_1.forward(text)?.f_gelu("tanh")?;
        let text = self.text_linear_2.forward(&text)?;
        Ok((temb, timestep_proj, text))
    }
}

/// One `WanTransformerBlock` (`blocks.N`): modulated self-attention with RoPE, cross-attention
/// on the text, modulated feed-forward.
#[derive(Debug)]
pub struct WanTransformerBlock {
    attn1: WanAttention,
    attn2: WanAttention,
    /// `norm2` weight and bias (f32) when `cross_attn_norm`; identity otherwise.
    norm2: Option<(Tensor, Tensor)>,
    ffn_in: Linear,
    ffn_out: Linear,
    /// `[1, 6, dim]` f32: shift, scale, gate of attention, then of the feed-forward.
    scale_shift_table: Tensor,
    dim: i64,
    eps: f64,
}

impl WanTransformerBlock {
    fn new(vs: nn::Path<'_>, cfg: &TransformerConfig, kind: Kind) -> Result<Self> {
        let dim = cfg.inner_dim();
        let heads = cfg.num_attention_heads;
        let norm2 = if cfg.cross_attn_norm {
            let norm = &vs / "norm2";
            Some((
                param(&norm, "weight", &[dim], Kind::Float)?,
                param(&norm, "bias", &[dim], Kind::Float)?,
            ))
        } else {
            None
        };
        let ffn = &vs / "ffn" / "net";
        Ok(Self {
            attn1: WanAttention::new(&vs / "attn1", dim, heads, cfg.eps, kind)?,
            attn2: WanAttention::new(&vs / "attn2", dim, heads, cfg.eps, kind)?,
            norm2,
            ffn_in: Linear::new(&ffn / "0" / "proj", dim, cfg.ffn_dim, kind)?,
            ffn_out: Linear::new(&ffn / "2", cfg.ffn_dim, dim, kind)?,
            scale_shift_table: param(&vs, "scale_shift_table", &[1, 6, dim], Kind::Float)?,
            dim,
            eps: cfg.eps,
        })
    }

    fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        let norm2 = match &self.norm2 {
            Some((w, b)) => Some((f(w)?, f(b)?)),
            None => None,
        };
        Ok(Self {
            attn1: self.attn1.map_tensors(f)?,
            attn2: self.attn2.map_tensors(f)?,
            norm2,
            ffn_in: self.ffn_in.map_tensors(f)?,
            ffn_out: self.ffn_out.map_tensors(f)?,
            scale_shift_table: f(&self.scale_shift_table)?,
            dim: self.dim,
            eps: self.eps,
        })
    }

    pub fn attn1(&self) -> &WanAttention {
        &self.attn1
    }

    pub fn attn2(&self) -> &WanAttention {
        &self.attn2
    }

    /// The feed-forward alone: Linear, GELU(tanh), Linear.
    pub fn ffn(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = self.ffn_in.forward(x)?.f_gelu("tanh")?;
        self.ffn_out.forward(&hidden)
    }

    /// `x`: `[batch, tokens, dim]` (model dtype); `context`: embedded text `[batch, L, dim]`;
    /// `timestep_proj`: `[batch, 1 or tokens, 6, dim]`; `rotary`: RoPE (cos, sin) tables.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        timestep_proj: &Tensor,
        rotary: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        self.forward_with(x, context, timestep_proj, rotary, None)
    }

    /// [`Self::forward`] on this rank's shard of the tokens when `sequence` is given: every
    /// step is per token except the self-attention, which exchanges heads for tokens
    /// ([`WanAttention::forward_with`]); `x`, `timestep_proj` (when per token) and `rotary` hold
    /// the shard's tokens.
    pub fn forward_with(
        &self,
        x: &Tensor,
        context: &Tensor,
        timestep_proj: &Tensor,
        rotary: (&Tensor, &Tensor),
        sequence: Option<&SequenceShard<'_>>,
    ) -> Result<Tensor> {
        let kind = x.kind();
        let modulation = self
            .scale_shift_table
            .f_unsqueeze(0)?
            .f_add(&timestep_proj.f_to_kind(Kind::Float)?)?
            .f_chunk(6, 2)?;
        let [shift, scale, gate, c_shift, c_scale, c_gate] = modulation
            .iter()
            .map(|m| m.f_squeeze_dim(2))
            .collect::<std::result::Result<Vec<_>, _>>()?
            .try_into()
            .map_err(|_| PipelineError::invalid("timestep_proj", "expected 6 chunks"))?;

        // Each step is a scope: its normed input and branch output are freed before the next
        // step starts (shadowed bindings would live to the end of the function, several GB
        // per block at 720p); modulation and residuals update their f32 result in place.
        // 1. self-attention: norm1 (f32, no affine), x·(1 + scale) + shift, gated residual
        let x = {
            let normed = modulate(self.layer_norm(x, None)?, &shift, &scale)?.f_to_kind(kind)?;
            let attn = self
                .attn1
                .forward_with(&normed, None, Some(rotary), sequence)?;
            residual_f32(x, attn.f_mul(&gate)?, kind)?
        };

        // 2. cross-attention: norm2 (f32, affine) or identity, plain residual
        let x = {
            let attn = match &self.norm2 {
                Some(affine) => {
                    let normed = self.layer_norm(&x, Some(affine))?.f_to_kind(kind)?;
                    self.attn2.forward(&normed, Some(context), None)?
                }
                None => self.attn2.forward(&x, Some(context), None)?,
            };
            x.f_add(&attn)?
        };

        // 3. feed-forward: norm3 (f32, no affine), modulated, gated residual
        let ff = {
            let normed =
                modulate(self.layer_norm(&x, None)?, &c_shift, &c_scale)?.f_to_kind(kind)?;
            self.ffn(&normed)?
        };
        residual_f32(&x, ff.f_to_kind(Kind::Float)?.f_mul(&c_gate)?, kind)
    }

    /// diffusers' `FP32LayerNorm`: layer norm of `x` in f32 (f32 result).
    fn layer_norm(&self, x: &Tensor, affine: Option<&(Tensor, Tensor)>) -> Result<Tensor> {
        layer_norm_f32(x, self.dim, affine, self.eps)
    }
}

/// This rank's rows of the per-token tensors of a forward: the tokens `x`, the RoPE tables
/// `cos`/`sin`, and — with one timestep per token — `temb` and `timestep_proj`. Taking them by
/// value frees the whole-sequence tensors before the blocks run.
#[allow(clippy::type_complexity)]
fn shard_rows(
    seq: &SequenceShard<'_>,
    per_token_modulation: bool,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    temb: Tensor,
    timestep_proj: Tensor,
) -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
    let per_token = |t: Tensor| -> Result<Tensor> {
        if per_token_modulation {
            seq.shard(&t, 1)
        } else {
            Ok(t)
        }
    };
    Ok((
        seq.shard(&x, 1)?,
        seq.shard(&cos, 1)?,
        seq.shard(&sin, 1)?,
        per_token(temb)?,
        per_token(timestep_proj)?,
    ))
}

/// `FP32LayerNorm` over the last `dim` channels, computed and returned in f32.
fn layer_norm_f32(
    x: &Tensor,
    dim: i64,
    affine: Option<&(Tensor, Tensor)>,
    eps: f64,
) -> Result<Tensor> {
    let (weight, bias) = match affine {
        Some((w, b)) => (Some(w), Some(b)),
        None => (None, None),
    };
    Ok(x.f_to_kind(Kind::Float)?
        .f_layer_norm([dim], weight, bias, eps, true)?)
}

/// `normed · (1 + scale) + shift`.
///
/// In place on `normed` when that gives the dtype the expression would (f32 modulation of the f32
/// norm, the usual case), so the block holds one token-sized f32 tensor here, not three.
fn modulate(mut normed: Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = scale.f_add_scalar(1.0)?;
    if scale.kind() != normed.kind() || shift.kind() != normed.kind() {
        return Ok(normed.f_mul(&scale)?.f_add(shift)?);
    }
    let _ = normed.f_mul_(&scale)?;
    let _ = normed.f_add_(shift)?;
    Ok(normed)
}

/// The reference's gated residual `(x.float() + branch).type_as(x)`, with `branch` already in
/// f32: `x` is added into `branch` in place (an f32 sum with `x` widened exactly, the same
/// values) instead of materialising `x.float()`. An f64 `x` (rounded by `.float()` in the
/// reference) takes the reference's order.
fn residual_f32(x: &Tensor, mut branch: Tensor, kind: Kind) -> Result<Tensor> {
    if x.kind() == Kind::Double || branch.kind() != Kind::Float {
        return Ok(x.f_to_kind(Kind::Float)?.f_add(&branch)?.f_to_kind(kind)?);
    }
    let _ = branch.f_add_(x)?;
    Ok(branch.f_to_kind(kind)?)
}

/// The Wan DiT: patch embedding, condition embedder, `num_layers` blocks, modulated output head.
#[derive(Debug)]
pub struct WanTransformer3DModel {
    cfg: TransformerConfig,
    kind: Kind,
    rope: WanRotaryPosEmbed,
    patch_weight: Tensor,
    patch_bias: Tensor,
    condition_embedder: WanTimeTextEmbedding,
    blocks: Vec<WanTransformerBlock>,
    proj_out: Linear,
    /// `[1, 2, dim]` f32: shift and scale of the output norm.
    scale_shift_table: Tensor,
}

impl WanTransformer3DModel {
    /// Builds the module tree under `vs` (variables zero-filled, in `vs`'s kind and f32 for the
    /// fp32 modules). Fill it with [`loader::load_weights`], or use [`Self::load`].
    pub fn new(cfg: &TransformerConfig, vs: nn::Path<'_>) -> Result<Self> {
        cfg.validate()
            .map_err(|problem| problem.in_component("transformer config"))?;
        let kind = vs.kind();
        if !matches!(
            kind,
            Kind::Float | Kind::BFloat16 | Kind::Half | Kind::Double
        ) {
            return Err(PipelineError::invalid(
                "transformer dtype",
                format!("{kind:?} is not a floating-point dtype; use bf16, f16 or f32"),
            ));
        }
        let dim = cfg.inner_dim();
        let patch = &vs / "patch_embedding";
        let mut weight_shape = vec![dim, cfg.in_channels];
        weight_shape.extend(cfg.patch_size);
        let blocks = (0..cfg.num_layers)
            .map(|i| WanTransformerBlock::new(&vs / "blocks" / i, cfg, kind))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            kind,
            rope: WanRotaryPosEmbed::new(
                cfg.attention_head_dim,
                cfg.patch_size,
                cfg.rope_max_seq_len,
                vs.device(),
            )?,
            patch_weight: param(&patch, "weight", &weight_shape, kind)?,
            patch_bias: param(&patch, "bias", &[dim], kind)?,
            condition_embedder: WanTimeTextEmbedding::new(&vs / "condition_embedder", cfg, kind)?,
            blocks,
            proj_out: Linear::new(
                &vs / "proj_out",
                dim,
                cfg.out_channels() * cfg.patch_volume(),
                kind,
            )?,
            scale_shift_table: param(&vs, "scale_shift_table", &[1, 2, dim], Kind::Float)?,
        })
    }

    /// Loads a diffusers component folder (`<model>/transformer/`: `config.json` and the
    /// safetensors weights, sharded or not) into a new VarStore on `device`, weights in `kind`.
    pub fn load(dir: &Path, kind: Kind, device: Device) -> Result<(Self, nn::VarStore)> {
        let cfg = TransformerConfig::from_file(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let model = Self::new(&cfg, vs.root())?;
        loader::load_weights(&vs, dir)?;
        Ok((model, vs))
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.cfg
    }

    /// The dtype of the weights and of the output.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn rope(&self) -> &WanRotaryPosEmbed {
        &self.rope
    }

    pub fn condition_embedder(&self) -> &WanTimeTextEmbedding {
        &self.condition_embedder
    }

    pub fn blocks(&self) -> &[WanTransformerBlock] {
        &self.blocks
    }

    /// `patch_embedding` alone: `[B, C, F, H, W]` → `[B, dim, F/p_t, H/p_h, W/p_w]`.
    pub fn patch_embedding(&self, hidden_states: &Tensor) -> Result<Tensor> {
        let stride = self.cfg.patch_size;
        Ok(hidden_states.f_to_kind(self.kind)?.f_conv3d(
            &self.patch_weight,
            Some(&self.patch_bias),
            stride,
            [0, 0, 0],
            [1, 1, 1],
            1,
        )?)
    }

    /// Predicts the flow for latents `hidden_states` `[B, in_channels, F, H, W]` at `timestep`
    /// (`[B]`, or `[B, tokens]` with one timestep per latent token for `expand_timesteps`),
    /// conditioned on `encoder_hidden_states` `[B, L, text_dim]`. Inputs are moved to the model's
    /// device and cast to its dtype (the timestep to f32); the output `[B, out_channels, F, H, W]`
    /// is in the model dtype, on the model's device.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        let [batch, ..] = self.check_inputs(hidden_states)?;
        let grid = self.token_grid(hidden_states)?;
        let tokens = self.forward_tokens(hidden_states, timestep, encoder_hidden_states, None)?;
        self.unpatchify(&tokens, batch, grid)
    }

    /// The (frames, height, width) grid of tokens of latents `[B, C, F, H, W]`.
    pub fn token_grid(&self, hidden_states: &Tensor) -> Result<[i64; 3]> {
        let [_, _, frames, height, width] = self.check_inputs(hidden_states)?;
        let [p_t, p_h, p_w] = self.cfg.patch_size;
        Ok([frames / p_t, height / p_h, width / p_w])
    }

    /// Steps 1–5 of [`Self::forward`]: the output tokens `[B, tokens, p_t·p_h·p_w·C]` before
    /// unpatchifying. With `sequence`, only this rank's shard of the tokens
    /// (`[B, sequence.tokens_per_rank(), …]`, zero-padded at the end of the last shards): the
    /// blocks run on the shard and the self-attention exchanges heads with the other ranks.
    pub fn forward_tokens(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        sequence: Option<&SequenceShard<'_>>,
    ) -> Result<Tensor> {
        self.forward_tokens_with(
            hidden_states,
            timestep,
            encoder_hidden_states,
            sequence,
            None,
        )
    }

    /// [`Self::forward`] with a step cache that may stand in for the blocks
    /// ([`crate::step_cache`]); one device, no sequence shard.
    pub fn forward_cached(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        cache: &mut BranchCache<'_>,
    ) -> Result<Tensor> {
        let [batch, ..] = self.check_inputs(hidden_states)?;
        let grid = self.token_grid(hidden_states)?;
        let tokens = self.forward_tokens_with(
            hidden_states,
            timestep,
            encoder_hidden_states,
            None,
            Some(cache),
        )?;
        self.unpatchify(&tokens, batch, grid)
    }

    fn forward_tokens_with(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        sequence: Option<&SequenceShard<'_>>,
        cache: Option<&mut BranchCache<'_>>,
    ) -> Result<Tensor> {
        let [batch, _, frames, height, width] = self.check_inputs(hidden_states)?;
        // Inputs may come from the CPU (noise is drawn there); the model's device wins.
        let device = self.patch_weight.device();
        let hidden_states = &hidden_states.f_to_device(device)?;
        let timestep = &timestep.f_to_device(device)?;
        let encoder_hidden_states = &encoder_hidden_states.f_to_device(device)?;
        let tokens = self.token_grid(hidden_states)?.iter().product::<i64>();
        self.check_conditions(batch, tokens, timestep, encoder_hidden_states)?;
        let dim = self.cfg.inner_dim();

        // 1. rotary position embedding tables
        let (cos, sin) = self.rope.forward(frames, height, width)?;

        // 2. patch embedding → tokens [B, F'·H'·W', dim]
        let x = self
            .patch_embedding(hidden_states)?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?
            .f_contiguous()?;

        // 3. condition embeddings; modulation per token ([B, tokens, …]) or per sample ([B, 1, …])
        let text = encoder_hidden_states.f_to_kind(self.kind)?;
        let (temb, timestep_proj, context) = self.condition_embedder.forward(timestep, &text)?;
        let (temb, timestep_proj) = if timestep.dim() == 2 {
            (temb, timestep_proj.f_unflatten(2, [6, dim])?)
        } else {
            (
                temb.f_unsqueeze(1)?,
                timestep_proj.f_unflatten(1, [6, dim])?.f_unsqueeze(1)?,
            )
        };

        // 3b. sequence parallel: this rank's tokens of everything that has one row per token
        //     (the whole-sequence tensors are moved into the call and freed there)
        let (x, cos, sin, temb, timestep_proj) = match sequence {
            None => (x, cos, sin, temb, timestep_proj),
            Some(seq) => shard_rows(seq, timestep.dim() == 2, x, cos, sin, temb, timestep_proj)?,
        };

        // 4. transformer blocks — or what a step cache leaves of them: it may skip the blocks
        //    after the first, or all of them
        let run = |x: Tensor, blocks: &[WanTransformerBlock]| {
            blocks.iter().try_fold(x, |x, block| {
                block.forward_with(&x, &context, &timestep_proj, (&cos, &sin), sequence)
            })
        };
        let (first, rest) = self.blocks.split_at(self.blocks.len().min(1));
        let x = match cache {
            None => run(x, &self.blocks)?,
            Some(cache) => {
                cache.run_blocks(x, |x| run(x.shallow_clone(), first), |x| run(x, rest))?
            }
        };

        // 5. output norm (f32) modulated by the top-level table + temb, projection
        let out_mod = self
            .scale_shift_table
            .f_unsqueeze(0)?
            .f_add(&temb.f_unsqueeze(2)?)?
            .f_chunk(2, 2)?;
        let shift = out_mod[0].f_squeeze_dim(2)?;
        let scale = out_mod[1].f_squeeze_dim(2)?;
        let normed = layer_norm_f32(&x, dim, None, self.cfg.eps)?;
        let x = modulate(normed, &shift, &scale)?.f_to_kind(self.kind)?;
        self.proj_out.forward(&x)
    }

    /// Step 6 of [`Self::forward`]: output tokens `[B, tokens, p_t·p_h·p_w·C]` of the token
    /// `grid` → `[B, C, F, H, W]`.
    pub fn unpatchify(&self, x: &Tensor, batch: i64, grid: [i64; 3]) -> Result<Tensor> {
        let [p_t, p_h, p_w] = self.cfg.patch_size;
        let [f, h, w] = grid;
        Ok(x.f_reshape([batch, f, h, w, p_t, p_h, p_w, -1])?
            .f_permute([0, 7, 1, 4, 2, 5, 3, 6])?
            .f_reshape([batch, -1, f * p_t, h * p_h, w * p_w])?)
    }

    /// The same model on `device`: a copy of every weight (or the same weights, when they
    /// already live there).
    pub fn replica(&self, device: Device) -> Result<Self> {
        self.map_tensors(&|t| Ok(t.f_to_device(device)?))
    }

    /// Another handle on the same weights, wherever they are (on the device or parked in host
    /// memory: a swap seen by one handle is seen by all) — a rank thread's own handle.
    pub fn share(&self) -> Result<Self> {
        self.map_tensors(&|t| Ok(t.shallow_clone()))
    }

    fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            cfg: self.cfg.clone(),
            kind: self.kind,
            rope: self.rope.map_tensors(f)?,
            patch_weight: f(&self.patch_weight)?,
            patch_bias: f(&self.patch_bias)?,
            condition_embedder: self.condition_embedder.map_tensors(f)?,
            blocks: self
                .blocks
                .iter()
                .map(|b| b.map_tensors(f))
                .collect::<Result<_>>()?,
            proj_out: self.proj_out.map_tensors(f)?,
            scale_shift_table: f(&self.scale_shift_table)?,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.patch_weight.device()
    }

    /// `[B, C, F, H, W]` with C = in_channels and F, H, W whole multiples of the patch.
    fn check_inputs(&self, hidden_states: &Tensor) -> Result<[i64; 5]> {
        let size = hidden_states.size();
        let shape: [i64; 5] = size.as_slice().try_into().map_err(|_| {
            PipelineError::invalid(
                "hidden_states",
                format!("expected [batch, channels, frames, height, width], got {size:?}"),
            )
        })?;
        if shape[1] != self.cfg.in_channels {
            return Err(PipelineError::invalid(
                "hidden_states",
                format!(
                    "{} channels, the transformer expects {}",
                    shape[1], self.cfg.in_channels
                ),
            ));
        }
        for ((axis, n), p) in ["frames", "height", "width"]
            .iter()
            .zip(&shape[2..])
            .zip(self.cfg.patch_size)
        {
            if *n <= 0 || n % p != 0 {
                return Err(PipelineError::invalid(
                    "hidden_states",
                    format!("latent {axis} {n} must be a positive multiple of the patch size {p}"),
                ));
            }
        }
        Ok(shape)
    }

    fn check_conditions(
        &self,
        batch: i64,
        tokens: i64,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<()> {
        let ts = timestep.size();
        if ts != [batch] && ts != [batch, tokens] {
            return Err(PipelineError::invalid(
                "timestep",
                format!("shape {ts:?}; expected [{batch}] or [{batch}, {tokens}] (one per latent token)"),
            ));
        }
        let text = encoder_hidden_states.size();
        if text.len() != 3 || text[0] != batch || text[2] != self.cfg.text_dim {
            return Err(PipelineError::invalid(
                "encoder_hidden_states",
                format!(
                    "shape {text:?}; expected [{batch}, text_tokens, {}]",
                    self.cfg.text_dim
                ),
            ));
        }
        Ok(())
    }
}
