//! The Wan2.2 VAE's parameter-free reshapes (diffusers `autoencoder_kl_wan.py`): the
//! `AvgDown3D` / `DupUp3D` shortcuts around its residual down and up blocks, and the 2×2 pixel
//! `patchify` / `unpatchify` around the encoder and decoder.

use tch::Tensor;

use crate::error::{PipelineError, Result};

/// `AvgDown3D`: folds `factor_t × factor_s × factor_s` neighbours into channels and averages
/// groups of them down to `c_out` channels. A chunk whose frame count is not a multiple of
/// `factor_t` is zero-padded in the past first.
pub fn avg_down(x: &Tensor, c_out: i64, factor_t: i64, factor_s: i64) -> Result<Tensor> {
    let pad_t = (factor_t - x.size()[2] % factor_t) % factor_t;
    let x = x.f_constant_pad_nd([0, 0, 0, 0, pad_t, 0])?;
    let (b, c, t, h, w) = x.size5()?;
    if h % factor_s != 0 || w % factor_s != 0 {
        return Err(PipelineError::invalid(
            "video",
            format!("a {h}×{w} activation cannot be halved by the Wan2.2 encoder; use a height and width that are multiples of 16"),
        ));
    }
    let factor = factor_t * factor_s * factor_s;
    let (t, h, w) = (t / factor_t, h / factor_s, w / factor_s);
    Ok(
        x.f_view([b, c, t, factor_t, h, factor_s, w, factor_s].as_slice())?
            .f_permute([0, 1, 3, 5, 7, 2, 4, 6].as_slice())?
            .f_contiguous()?
            .f_view([b, c_out, c * factor / c_out, t, h, w])?
            .f_mean_dim(Some([2i64].as_slice()), false, None)?,
    )
}

/// `DupUp3D`: repeats every channel so that the copies unfold into `factor_t` frames and
/// `factor_s × factor_s` pixels of `c_out` channels; on the first chunk only the last of the
/// `factor_t` frames is kept (the decoder makes one frame of the first latent frame).
pub fn dup_up(
    x: &Tensor,
    c_out: i64,
    factor_t: i64,
    factor_s: i64,
    first_chunk: bool,
) -> Result<Tensor> {
    let (b, c, t, h, w) = x.size5()?;
    let repeats = c_out * factor_t * factor_s * factor_s / c;
    let x = x
        .f_repeat_interleave_self_int(repeats, Some(1), None)?
        .f_view([b, c_out, factor_t, factor_s, factor_s, t, h, w].as_slice())?
        .f_permute([0, 1, 5, 2, 6, 3, 7, 4].as_slice())?
        .f_contiguous()?
        .f_view([b, c_out, t * factor_t, h * factor_s, w * factor_s])?;
    if first_chunk {
        return Ok(x.f_narrow(2, factor_t - 1, t * factor_t - (factor_t - 1))?);
    }
    Ok(x)
}

/// `patchify`: (B, C, F, H, W) → (B, C·p², F, H/p, W/p), channel `c·p² + j·p + i` holding pixel
/// (i, j) of each p×p patch (row i, column j).
pub fn patchify(x: &Tensor, p: i64) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.shallow_clone());
    }
    let (b, c, f, h, w) = x.size5()?;
    if h % p != 0 || w % p != 0 {
        return Err(PipelineError::invalid(
            "video",
            format!("height {h} and width {w} must be multiples of the VAE's patch size {p}"),
        ));
    }
    Ok(x.f_view([b, c, f, h / p, p, w / p, p].as_slice())?
        .f_permute([0, 1, 6, 4, 2, 3, 5].as_slice())?
        .f_contiguous()?
        .f_view([b, c * p * p, f, h / p, w / p])?)
}

/// `unpatchify`, the inverse of [`patchify`]: (B, C·p², F, H, W) → (B, C, F, H·p, W·p).
pub fn unpatchify(x: &Tensor, p: i64) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.shallow_clone());
    }
    let (b, cp, f, h, w) = x.size5()?;
    let c = cp / (p * p);
    Ok(x.f_view([b, c, p, p, f, h, w].as_slice())?
        .f_permute([0, 1, 4, 5, 3, 6, 2].as_slice())?
        .f_contiguous()?
        .f_view([b, c, f, h * p, w * p])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn patchify_round_trips_and_puts_columns_first() {
        let x = Tensor::arange(3 * 2 * 4 * 6, (Kind::Float, Device::Cpu)).view([1, 3, 2, 4, 6]);
        let patched = patchify(&x, 2).unwrap();
        assert_eq!(patched.size(), [1, 12, 2, 2, 3]);
        // channel 1 = column 0, row 1 of each patch: pixel (1, 0) of frame 0 = 6
        assert_eq!(patched.double_value(&[0, 1, 0, 0, 0]), 6.0);
        // channel 2 = column 1, row 0: pixel (0, 1) = 1
        assert_eq!(patched.double_value(&[0, 2, 0, 0, 0]), 1.0);
        assert!(unpatchify(&patched, 2).unwrap().equal(&x));
    }

    #[test]
    fn dup_up_undoes_avg_down_on_constant_blocks() {
        let x = Tensor::randn([1, 8, 2, 3, 5], (Kind::Float, Device::Cpu));
        let up = dup_up(&x, 4, 2, 2, false).unwrap();
        assert_eq!(up.size(), [1, 4, 4, 6, 10]);
        let down = avg_down(&up, 8, 2, 2).unwrap();
        assert!(down.allclose(&x, 1e-6, 1e-6, false));
        let first = dup_up(&x.narrow(2, 0, 1), 4, 2, 2, true).unwrap();
        assert_eq!(first.size(), [1, 4, 1, 6, 10]);
    }
}
