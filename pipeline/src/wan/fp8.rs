//! FP8 weights for the DiT's block linears (`dtype = "fp8"`): the attention q/k/v/out and FFN
//! weights of every block in float8 e4m3 (`Kind::Float8e4m3fn`) with one f32 scale per output
//! channel; the activations are quantised per token on the fly and the product runs through
//! libtorch's `_scaled_mm` (`Tensor::internal_scaled_mm`) with row-wise scales, bf16 out.
//! Everything else — embeddings, `time_*`, `text_*`, `proj_out`, norms, modulation and the fp32
//! islands — stays as it is in bf16/f32.
//!
//! # The math
//! A row `r` of a tensor (a weight's output channel, or an activation's token) is stored as
//! `q = e4m3(r · 2⁻ᵏ)` with scale `s = 2ᵏ`, the smallest power of two at least
//! `max(amax(|r|), 1e-12) / 448`: the largest element lands in e4m3's top binade, [224, 448],
//! and an all-zero row gets a tiny scale instead of a division by zero. A power of two costs at
//! most one binade of range (e4m3's relative precision is the same in every normal binade) and
//! buys speed: multiplying by `2⁻ᵏ` is exact in the input's own dtype, so the quantisation is a
//! plain `mul` in bf16 followed by a contiguous cast to e4m3 — two vectorised kernels — with
//! e4m3's round to nearest as the only rounding. (Dividing by `amax / 448` in f32 and writing
//! e4m3 directly was one kernel, but a non-vectorised one with dynamic casts: 4.8 ms against
//! 3.7 ms for the mul and cast at an A14B FFN shape on an H100.) The layer is
//! `y = (q_x · q_wᵀ) ⊙ (s_x · s_wᵀ) + bias`: the fp8 products are accumulated by the kernel and
//! scaled once per output element.
//!
//! # Where it runs
//! On CUDA, `_scaled_mm` with row-wise scaling (Hopper/Ada: compute capability ≥ 8.9): `q_x`
//! row-major `[M, K]`, `q_wᵀ` column-major `[K, N]` (the stored `[N, K]` weight transposed),
//! scales `[M, 1]` and `[1, N]` in f32, bf16 output, K and N multiples of 16, with fast
//! accumulation (the tensor cores' own accumulator, as inference libraries run FP8: 11 % less
//! GEMM time at an A14B FFN shape on an H100, relative error 0.0377 against 0.0376). libtorch 2.11 has
//! no row-wise `_scaled_mm` on the CPU (only one scale per tensor), so on the CPU the same
//! product is computed from the dequantised operands in f32 — the path the CPU tests pin.
//!
//! # Loading
//! [`quantize_blocks`] runs after the checkpoint (and any LoRA) is fused into the bf16
//! weights: it drops the module tree, replaces each block linear weight in the VarStore by its
//! FP8 form and a `weight_scale` variable one layer at a time (the bf16 copy is freed as soon
//! as its FP8 form exists), then builds the module tree again over the same VarStore, where
//! [`crate::wan::attention::Linear`] finds the FP8 weight. Parking and replicas see the
//! VarStore's variables, so they move the FP8 weights and their scales.

use tch::{nn, Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::wan::{TransformerConfig, WanTransformer3DModel};

/// The load dtype that asks for FP8 block linears (`LoadOptions::dtype`); the rest of the
/// model runs in [`COMPUTE_KIND`].
pub const FP8: Kind = Kind::Float8e4m3fn;

/// The dtype of everything that is not an FP8 weight under [`FP8`] (and the `_scaled_mm`
/// output: row-wise scaling gives bf16 only).
pub const COMPUTE_KIND: Kind = Kind::BFloat16;

/// The largest finite float8 e4m3fn value.
pub const E4M3_MAX: f64 = 448.0;

/// The floor of a row's amax: an all-zero row quantises to zeros with a tiny, finite scale.
pub const MIN_AMAX: f64 = 1e-12;

/// `_scaled_mm`'s `use_fast_accum` for the layers (see the module docs).
const USE_FAST_ACCUMULATION: bool = true;

/// The name of a quantised weight's scale variable, beside `weight`.
pub const SCALE_NAME: &str = "weight_scale";

/// The dtype the non-FP8 parts of a model loaded with `dtype` run in: bf16 under [`FP8`],
/// `dtype` itself otherwise.
pub fn compute_kind(dtype: Kind) -> Kind {
    if dtype == FP8 {
        COMPUTE_KIND
    } else {
        dtype
    }
}

/// Checks that `device` runs the FP8 product this module needs: one tiny row-wise `_scaled_mm`
/// (16×16, bf16 out). GPUs before compute capability 8.9 (Ada, Hopper) refuse it, and so does
/// the CPU (no row-wise scaling there); the error carries libtorch's reason.
pub fn probe_scaled_mm(device: Device) -> Result<()> {
    let a = Tensor::f_ones([16, 16], (Kind::Float, device))?.f_to_kind(FP8)?;
    let scale_a = Tensor::f_ones([16, 1], (Kind::Float, device))?;
    let scale_b = Tensor::f_ones([1, 16], (Kind::Float, device))?;
    let out = a.f_internal_scaled_mm(
        &a.f_tr()?,
        &scale_a,
        &scale_b,
        None::<Tensor>,
        None::<Tensor>,
        COMPUTE_KIND,
        false,
    )?;
    let corner = out.f_double_value(&[0, 0])?;
    if corner != 16.0 {
        return Err(PipelineError::invalid(
            "fp8 probe",
            format!("_scaled_mm of ones gave {corner}, expected 16; load in bf16"),
        ));
    }
    Ok(())
}

/// Row-wise quantisation of a 2-D tensor `[rows, cols]` (any float dtype): `(q, scale)` with
/// `q` `[rows, cols]` in e4m3 and `scale` `[rows, 1]` in f32, powers of two (see the module
/// docs).
pub fn quantize_rows(x: &Tensor) -> Result<(Tensor, Tensor)> {
    if x.dim() != 2 {
        return Err(PipelineError::invalid(
            "fp8 quantisation",
            format!("expected a 2-D tensor, got shape {:?}", x.size()),
        ));
    }
    let scale = x
        .f_linalg_norm(f64::INFINITY, [-1i64].as_slice(), true, Kind::Float)?
        .f_clamp_min(MIN_AMAX)?
        .f_div_scalar(E4M3_MAX)?
        .f_log2()?
        .f_ceil()?
        .f_exp2()?;
    // A power of two: its reciprocal, and the product below, are exact in any dtype with f32's
    // exponent range (bf16, f32, f64). f16's ends at 65504, below the reciprocal of a small
    // row's scale (2⁴⁸ for a zero row), so f16 multiplies in f32.
    let product_kind = match x.kind() {
        Kind::Half => Kind::Float,
        kind => kind,
    };
    let inverse = scale.f_reciprocal()?.f_to_kind(product_kind)?;
    let q = x.f_to_kind(product_kind)?.f_mul(&inverse)?.f_to_kind(FP8)?;
    Ok((q, scale))
}

/// `q · scale` in f32: the values a quantised `[rows, cols]` tensor stands for.
pub fn dequantize_rows(q: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(q.f_to_kind(Kind::Float)?.f_mul(scale)?)
}

/// `x · weightᵀ + bias` for `x` `[…, in]` and an FP8 `weight` `[out, in]` with `scale`
/// `[out, 1]`; the output `[…, out]` is in `x`'s dtype (bf16 on CUDA).
pub fn linear(x: &Tensor, weight: &Tensor, scale: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let size = x.size();
    let (&in_dim, batch) = size.split_last().ok_or_else(|| {
        PipelineError::invalid("fp8 linear input", "a scalar has no feature dimension")
    })?;
    let (xq, x_scale) = quantize_rows(&x.f_reshape([-1, in_dim])?)?;
    let mut out = if x.device().is_cuda() {
        scaled_mm(&xq, &x_scale, weight, scale, x.kind())?
    } else {
        xq.f_to_kind(Kind::Float)?
            .f_mm(&weight.f_to_kind(Kind::Float)?.f_tr()?)?
            .f_mul(&x_scale)?
            .f_mul(&scale.f_tr()?)?
            .f_to_kind(x.kind())?
    };
    let _ = out.f_add_(bias)?;
    let mut shape = batch.to_vec();
    shape.push(weight.size()[0]);
    Ok(out.f_reshape(shape)?)
}

/// The CUDA product: `_scaled_mm` on FP8 operands, refusing anything that would let libtorch
/// take another path (the assertion that the FP8 kernel is what runs).
fn scaled_mm(
    xq: &Tensor,
    x_scale: &Tensor,
    weight: &Tensor,
    scale: &Tensor,
    out_kind: Kind,
) -> Result<Tensor> {
    if out_kind != COMPUTE_KIND {
        return Err(PipelineError::invalid(
            "fp8 linear input",
            format!("{out_kind:?} activations; FP8 weights run with bf16 activations (load with dtype fp8, which keeps the rest in bf16)"),
        ));
    }
    let [out_dim, in_dim] = weight.size()[..] else {
        return Err(PipelineError::invalid(
            "fp8 weight",
            format!("shape {:?}, expected [out, in]", weight.size()),
        ));
    };
    if in_dim % 16 != 0 || out_dim % 16 != 0 {
        return Err(PipelineError::invalid(
            "fp8 weight",
            format!("[{out_dim}, {in_dim}]: _scaled_mm needs both dimensions multiples of 16; load this model in bf16"),
        ));
    }
    if xq.kind() != FP8 || weight.kind() != FP8 {
        return Err(PipelineError::invalid(
            "fp8 linear",
            format!(
                "operands {:?} and {:?} are not float8 e4m3; the FP8 kernel would not run",
                xq.kind(),
                weight.kind()
            ),
        ));
    }
    let out = xq.f_internal_scaled_mm(
        &weight.f_tr()?,
        x_scale,
        &scale.f_tr()?,
        None::<Tensor>,
        None::<Tensor>,
        COMPUTE_KIND,
        USE_FAST_ACCUMULATION,
    )?;
    Ok(out)
}

/// Whether the VarStore variable `name` is a block linear weight quantised under [`FP8`]: the
/// 2-D `weight` of `blocks.N.…` (attention q/k/v/out, FFN in/out). Norm gains are 1-D and
/// modulation tables are not called `weight`.
pub fn is_block_linear_weight(name: &str, weight: &Tensor) -> bool {
    name.starts_with("blocks.") && name.ends_with(".weight") && weight.dim() == 2
}

/// `model` (its VarStore `vs`) with every block linear weight in FP8 — see the module docs.
/// Call it after the weights (and any LoRA) are in `vs`, before the weights are parked.
pub fn quantize_blocks(
    model: WanTransformer3DModel,
    vs: &nn::VarStore,
) -> Result<WanTransformer3DModel> {
    let cfg: TransformerConfig = model.config().clone();
    // The module tree holds a handle on every weight: drop it so that each bf16 weight is
    // freed as soon as the VarStore lets go of it.
    drop(model);
    let mut names: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(name, weight)| is_block_linear_weight(name, weight))
        .map(|(name, _)| name)
        .collect();
    names.sort();
    for name in &names {
        quantize_variable(vs, name)?;
    }
    WanTransformer3DModel::new(&cfg, vs.root())
}

/// Replaces the variable `name` of `vs` by its FP8 form and adds its scale beside it.
fn quantize_variable(vs: &nn::VarStore, name: &str) -> Result<()> {
    let mut variables = vs.variables_.lock().map_err(|_| {
        PipelineError::invalid(
            "fp8 quantisation",
            "the VarStore lock is poisoned; reload the model",
        )
    })?;
    let weight = variables
        .named_variables
        .remove(name)
        .ok_or_else(|| PipelineError::invalid("fp8 quantisation", format!("no variable {name}")))?;
    let (q, scale) = tch::no_grad(|| quantize_rows(&weight))?;
    drop(weight);
    let scale_name = format!("{}{SCALE_NAME}", name.trim_end_matches("weight"));
    variables.named_variables.insert(name.to_string(), q);
    variables.named_variables.insert(scale_name, scale);
    Ok(())
}

/// Parameters of one expert stored in FP8 under [`FP8`]: the block linear weights (biases stay
/// bf16). Their scales are [`fp8_scale_parameters`] f32 values.
pub fn fp8_parameters(cfg: &TransformerConfig) -> i64 {
    let (dim, ffn) = (cfg.inner_dim(), cfg.ffn_dim);
    cfg.num_layers * (8 * dim * dim + 2 * dim * ffn)
}

/// The f32 scales of [`fp8_parameters`]: one per output channel of each block linear.
pub fn fp8_scale_parameters(cfg: &TransformerConfig) -> i64 {
    let (dim, ffn) = (cfg.inner_dim(), cfg.ffn_dim);
    cfg.num_layers * (9 * dim + ffn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_on_the_e4m3_range_and_zero_rows_stay_finite() {
        let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 0.0, 0.0, 0.0]).reshape([2, 3]);
        let (q, scale) = quantize_rows(&x).unwrap();
        assert_eq!(q.kind(), FP8);
        assert_eq!(scale.size(), [2, 1]);
        // 2 / 448 lies in (2⁻⁸, 2⁻⁷]: the scale is 2⁻⁷; 1e-12 / 448 lies in (2⁻⁴⁹, 2⁻⁴⁸].
        assert_eq!(scale.double_value(&[0, 0]), 2f64.powi(-7));
        assert_eq!(scale.double_value(&[1, 0]), 2f64.powi(-48));
        let back = dequantize_rows(&q, &scale).unwrap();
        // -2 is the amax: -256 in e4m3; 1 → 128 and 0.5 → 64 are exact too.
        let expected = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 0.0, 0.0, 0.0]).reshape([2, 3]);
        assert!(back.allclose(&expected, 1e-6, 0.0, false));
    }

    #[test]
    fn f16_rows_with_scales_beyond_f16s_range_quantise_exactly() {
        // Row 0's amax 2⁻²⁰ gives the scale 2⁻²⁸ (2⁻²⁰ / 448 lies in (2⁻²⁹, 2⁻²⁸]), whose
        // reciprocal f16 cannot hold; row 1 is zero (scale 2⁻⁴⁸).
        let tiny = 2f32.powi(-20);
        let values = [tiny, -tiny / 2.0, tiny / 4.0, 0.0, 0.0, 0.0];
        let x = Tensor::from_slice(&values).reshape([2, 3]);
        let (q, scale) = quantize_rows(&x.to_kind(Kind::Half)).unwrap();
        assert_eq!(scale.double_value(&[0, 0]), 2f64.powi(-28));
        let back = dequantize_rows(&q, &scale).unwrap();
        assert!(back.isfinite().all().int64_value(&[]) == 1, "{back}");
        assert!(back.allclose(&x, 0.0, 0.0, false), "{back}");
    }
}
