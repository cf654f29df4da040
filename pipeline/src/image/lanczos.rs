//! Pillow's Lanczos resampling of 8-bit images (`libImaging/Resample.c`), reproduced to the
//! bit: the filter `sinc(x)·sinc(x/3)` on `[−3, 3)`, widened by the downscale factor; per output
//! pixel the weights are normalised to sum 1 in f64, then rounded to fixed point with
//! 22 fractional bits (`PRECISION_BITS`); each pass accumulates in a 32-bit integer from
//! `2^21` (rounding) and clips `sum >> 22` to [0, 255]. The horizontal pass runs first (over
//! the source rows the vertical pass reads), its 8-bit result feeds the vertical pass; a pass
//! whose size does not change is skipped.

/// `32 − 8 − 2`: 8 bits for the result, two for overshoot and sign.
const PRECISION_BITS: u32 = 22;

/// Lanczos support (lobes).
const SUPPORT: f64 = 3.0;

/// Fixed-point weights of one axis: for each output index the first input index, the count,
/// and `count` weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    ksize: usize,
}

impl Coefficients {
    fn of(&self, out: usize) -> (usize, &[i32]) {
        let (start, count) = self.bounds[out];
        (
            start,
            &self.weights[out * self.ksize..out * self.ksize + count],
        )
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

fn lanczos(x: f64) -> f64 {
    if (-SUPPORT..SUPPORT).contains(&x) {
        sinc(x) * sinc(x / SUPPORT)
    } else {
        0.0
    }
}

/// `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the box `[0, in_size)`.
fn coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut row = vec![0f64; ksize];
    for out in 0..out_size {
        let center = (out as f64 + 0.5) * scale;
        let inverse = 1.0 / filter_scale;
        // C's `(int)` truncates toward zero; the lower bound is clamped at 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let mut total = 0.0;
        for (x, w) in row.iter_mut().enumerate().take(count) {
            *w = lanczos((x as f64 + xmin as f64 - center + 0.5) * inverse);
            total += *w;
        }
        for (x, w) in row.iter().enumerate().take(count) {
            let normalised = if total != 0.0 { w / total } else { *w };
            weights[out * ksize + x] = to_fixed(normalised);
        }
        bounds.push((xmin, count));
    }
    Coefficients {
        bounds,
        weights,
        ksize,
    }
}

/// `normalize_coeffs_8bpc`: round half away from zero to 22 fractional bits.
fn to_fixed(weight: f64) -> i32 {
    let scaled = weight * f64::from(1u32 << PRECISION_BITS);
    if weight < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// `clip8`: the accumulated sum back to a byte.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One output sample: `2^21 + Σ byte·weight` in wrapping 32-bit arithmetic, as the C `int`.
fn accumulate(samples: impl Iterator<Item = u8>, weights: &[i32]) -> u8 {
    let mut sum: i32 = 1 << (PRECISION_BITS - 1);
    for (sample, &weight) in samples.zip(weights) {
        sum = sum.wrapping_add(i32::from(sample).wrapping_mul(weight));
    }
    clip8(sum)
}

/// Resizes interleaved RGB `rgb` of `(width, height)` to `to`, as Pillow's
/// `Image.resize(to, Image.LANCZOS)` of an RGB image.
pub(super) fn resize_rgb(rgb: &[u8], from: (u32, u32), to: (u32, u32)) -> Vec<u8> {
    let (in_w, in_h) = (from.0 as usize, from.1 as usize);
    let (out_w, out_h) = (to.0 as usize, to.1 as usize);
    let vertical = coefficients(in_h, out_h);
    // Rows of the source the vertical pass reads.
    let first_row = vertical.bounds[0].0;
    let last_row = vertical.bounds[out_h - 1].0 + vertical.bounds[out_h - 1].1;

    // 1. horizontal pass over those rows (skipped when the width does not change)
    let (rows, row_offset, width) = if out_w != in_w {
        let horizontal = coefficients(in_w, out_w);
        let mut out = vec![0u8; (last_row - first_row) * out_w * 3];
        for y in first_row..last_row {
            let src = &rgb[y * in_w * 3..(y + 1) * in_w * 3];
            let dst = &mut out[(y - first_row) * out_w * 3..(y - first_row + 1) * out_w * 3];
            for x in 0..out_w {
                let (start, weights) = horizontal.of(x);
                for c in 0..3 {
                    let samples = (start..start + weights.len()).map(|i| src[i * 3 + c]);
                    dst[x * 3 + c] = accumulate(samples, weights);
                }
            }
        }
        (std::borrow::Cow::Owned(out), first_row, out_w)
    } else {
        (std::borrow::Cow::Borrowed(rgb), 0, in_w)
    };
    if out_h == in_h {
        return rows.into_owned();
    }

    // 2. vertical pass
    let mut out = vec![0u8; out_h * width * 3];
    for y in 0..out_h {
        let (start, weights) = vertical.of(y);
        let start = start - row_offset;
        for x in 0..width * 3 {
            let samples = (start..start + weights.len()).map(|row| rows[row * width * 3 + x]);
            out[y * width * 3 + x] = accumulate(samples, weights);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (from, to) in [(100, 37), (37, 100), (5, 4)] {
            let c = coefficients(from, to);
            for out in 0..to {
                let sum: i64 = c.of(out).1.iter().map(|&w| i64::from(w)).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= c.ksize as i64,
                    "{sum}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let rgb = [10u8, 200, 77].repeat(13 * 9);
        let out = resize_rgb(&rgb, (13, 9), (6, 20));
        assert!(out.chunks(3).all(|p| p == [10, 200, 77]));
    }
}
