//! 3-D rotary position embedding of the Wan DiT (diffusers `WanRotaryPosEmbed` and the
//! `apply_rotary_emb` of `WanAttnProcessor`).
//!
//! Each head's channels are split over three axes, (frames, height, width) =
//! (d − 4⌊d/6⌋, 2⌊d/6⌋, 2⌊d/6⌋), and each axis rotates its channel pairs by its own position:
//! angle = pos · θ^(−2i/dᵢ), θ = 10000. The tables are computed in f64 and stored in f32
//! (diffusers' non-persistent buffers), with every angle repeated for both channels of its
//! pair; the rotation itself runs in f32 whatever the model dtype (the reference's fp32 island;
//! f64 for an f64 model).

use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::wan::TensorMap;

/// RoPE base frequency of every Wan model.
pub const THETA: f64 = 10000.0;

/// Precomputed cos/sin tables for positions `0..max_seq_len` of every axis.
#[derive(Debug)]
pub struct WanRotaryPosEmbed {
    /// Channels of one head given to (frames, height, width).
    split: [i64; 3],
    patch_size: [i64; 3],
    max_seq_len: i64,
    /// `[max_seq_len, head_dim]` f32: the three axes' tables side by side.
    freqs_cos: Tensor,
    freqs_sin: Tensor,
}

impl WanRotaryPosEmbed {
    /// Tables for heads of `head_dim` channels (even), on `device`.
    pub fn new(
        head_dim: i64,
        patch_size: [i64; 3],
        max_seq_len: i64,
        device: Device,
    ) -> Result<Self> {
        let hw = 2 * (head_dim / 6);
        let split = [head_dim - 2 * hw, hw, hw];
        let mut cos = Vec::with_capacity(3);
        let mut sin = Vec::with_capacity(3);
        for dim in split {
            let (c, s) = axis_tables(dim, max_seq_len)?;
            cos.push(c);
            sin.push(s);
        }
        Ok(Self {
            split,
            patch_size,
            max_seq_len,
            freqs_cos: Tensor::f_cat(&cos, 1)?.f_to_device(device)?,
            freqs_sin: Tensor::f_cat(&sin, 1)?.f_to_device(device)?,
        })
    }

    /// The same tables mapped by `f` (see [`crate::wan::TensorMap`]).
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            split: self.split,
            patch_size: self.patch_size,
            max_seq_len: self.max_seq_len,
            freqs_cos: f(&self.freqs_cos)?,
            freqs_sin: f(&self.freqs_sin)?,
        })
    }

    /// Channels of one head per axis (frames, height, width).
    pub fn split(&self) -> [i64; 3] {
        self.split
    }

    /// The (cos, sin) tables for a latent of `frames × height × width` (before patching), each
    /// `[1, tokens, 1, head_dim]` f32 with tokens in (frame, row, column) order.
    pub fn forward(&self, frames: i64, height: i64, width: i64) -> Result<(Tensor, Tensor)> {
        let [p_t, p_h, p_w] = self.patch_size;
        let grid = [frames / p_t, height / p_h, width / p_w];
        for (axis, n) in ["frames", "height", "width"].iter().zip(grid) {
            if n > self.max_seq_len {
                return Err(PipelineError::invalid(
                    format!("latent {axis}"),
                    format!(
                        "{n} patches exceed the model's rope_max_seq_len of {} positions; generate a smaller video",
                        self.max_seq_len
                    ),
                ));
            }
        }
        Ok((
            self.grid_table(&self.freqs_cos, grid)?,
            self.grid_table(&self.freqs_sin, grid)?,
        ))
    }

    /// Broadcasts each axis' rows over the (frames, height, width) grid and concatenates the
    /// axes along the channels: `[1, f·h·w, 1, head_dim]`.
    fn grid_table(&self, table: &Tensor, [f, h, w]: [i64; 3]) -> Result<Tensor> {
        let axes = table.f_split_with_sizes(self.split, 1)?;
        let shapes = [[f, 1, 1, -1], [1, h, 1, -1], [1, 1, w, -1]];
        let mut parts = Vec::with_capacity(3);
        for ((axis, n), shape) in axes.iter().zip([f, h, w]).zip(shapes) {
            parts.push(
                axis.f_narrow(0, 0, n)?
                    .f_reshape(shape)?
                    .f_expand([f, h, w, -1], false)?,
            );
        }
        Ok(Tensor::f_cat(&parts, -1)?.f_reshape([1, f * h * w, 1, -1])?)
    }
}

/// cos/sin of `pos · θ^(−i/dim)` for i = 0, 2, …, dim − 2, each angle repeated twice
/// (`[max_seq_len, dim]`, computed in f64, returned in f32, on the CPU).
fn axis_tables(dim: i64, max_seq_len: i64) -> Result<(Tensor, Tensor)> {
    let exponents = Tensor::f_arange_start_step(0, dim, 2, (Kind::Double, Device::Cpu))?
        .f_div_scalar(dim as f64)?;
    let inv_freq = Tensor::f_pow_scalar(THETA, &exponents)?.f_reciprocal()?;
    let positions = Tensor::f_arange(max_seq_len, (Kind::Int64, Device::Cpu))?;
    let angles = positions.f_outer(&inv_freq)?;
    let expand = |t: Tensor| -> Result<Tensor> {
        Ok(t.f_repeat_interleave_self_int(2, 1, None)?
            .f_to_kind(Kind::Float)?)
    };
    Ok((expand(angles.f_cos()?)?, expand(angles.f_sin()?)?))
}

/// Rotates the channel pairs of `x` (`[batch, tokens, heads, head_dim]`, any float dtype) by the
/// tables of [`WanRotaryPosEmbed::forward`]; computed in f32 (f64 for an f64 `x`, as the
/// reference's type promotion gives), returned in `x`'s dtype.
///
/// The reference's (x₁·cos − x₂·sin, x₁·sin + x₂·cos) is one complex product per pair,
/// (x₁ + i·x₂)·(cos + i·sin): three passes over `x` (widen, multiply in place, narrow) instead of
/// the eight elementwise kernels of the real form, the largest elementwise cost of a block.
pub fn apply_rotary_emb(x: &Tensor, freqs_cos: &Tensor, freqs_sin: &Tensor) -> Result<Tensor> {
    let compute = if x.kind() == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    let cos = freqs_cos.f_slice(-1, 0, None, 2)?.f_to_kind(compute)?;
    let sin = freqs_sin.f_slice(-1, 1, None, 2)?.f_to_kind(compute)?;
    let rotation = Tensor::f_complex(&cos, &sin)?;
    // A fresh copy (never `x` itself, even when `x` is already f32), rotated in place.
    let mut pairs = x
        .f_to_dtype(compute, false, true)?
        .f_contiguous()?
        .f_unflatten(-1, [-1, 2])?
        .f_view_as_complex()?;
    let _ = pairs.f_mul_(&rotation)?;
    Ok(pairs
        .f_view_as_real()?
        .f_flatten(-2, -1)?
        .f_to_kind(x.kind())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_the_reference_formula() {
        let rope = WanRotaryPosEmbed::new(128, [1, 2, 2], 8, Device::Cpu).unwrap();
        assert_eq!(rope.split(), [44, 42, 42]);
        let rope = WanRotaryPosEmbed::new(20, [1, 2, 2], 8, Device::Cpu).unwrap();
        assert_eq!(rope.split(), [8, 6, 6]);
    }

    #[test]
    fn rotation_preserves_pair_norms_and_is_identity_at_position_zero() {
        let rope = WanRotaryPosEmbed::new(12, [1, 1, 1], 8, Device::Cpu).unwrap();
        let (cos, sin) = rope.forward(2, 3, 4).unwrap();
        assert_eq!(cos.size(), [1, 24, 1, 12]);
        let x = Tensor::randn([1, 24, 2, 12], (Kind::Float, Device::Cpu));
        let y = apply_rotary_emb(&x, &cos, &sin).unwrap();
        let pair_norm = |t: &Tensor| {
            t.unflatten(-1, [-1, 2])
                .square()
                .sum_dim_intlist(-1, false, None)
        };
        let err = (pair_norm(&x) - pair_norm(&y))
            .abs()
            .max()
            .double_value(&[]);
        assert!(err < 1e-5, "rotation changed a pair's norm by {err}");
        let first = (x.narrow(1, 0, 1) - y.narrow(1, 0, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(first < 1e-7, "token (0,0,0) must not rotate, moved {first}");
    }

    #[test]
    fn too_many_positions_is_an_input_error() {
        let rope = WanRotaryPosEmbed::new(12, [1, 2, 2], 8, Device::Cpu).unwrap();
        let err = rope.forward(9, 4, 4).unwrap_err().to_string();
        assert!(
            err.contains("latent frames") && err.contains("rope_max_seq_len"),
            "{err}"
        );
    }
}
