//! The VAE's part of the estimate: the parameters of its encoder and decoder counted from their
//! module trees, and the device bytes of one decode and one encode (whole or tiled).

use super::EstimateRequest;
use crate::wan::vae::{Tiling, VaeConfig};

/// Parameters of the whole VAE: [`AutoencoderKLWan::load`](crate::wan::vae::AutoencoderKLWan::load)
/// holds the encoder and the decoder.
pub fn vae_parameters(cfg: &VaeConfig) -> i64 {
    vae_encoder_parameters(cfg) + vae_decoder_parameters(cfg)
}

/// A 3×3×3 causal conv from `i` to `o` channels, with bias.
fn conv3(i: i64, o: i64) -> i64 {
    i * o * 27 + o
}

/// A 1×1(×1) conv from `i` to `o` channels, with bias.
fn conv1(i: i64, o: i64) -> i64 {
    i * o + o
}

/// `WanResidualBlock`: two RMS norms, two 3×3×3 convs, a 1×1×1 shortcut when the width changes.
fn resnet(i: i64, o: i64) -> i64 {
    i + conv3(i, o) + o + conv3(o, o) + if i != o { conv1(i, o) } else { 0 }
}

/// `WanMidBlock`: two residual blocks around a single-head attention (norm, qkv, proj).
fn mid_block(d: i64) -> i64 {
    2 * resnet(d, d) + d + conv1(d, 3 * d) + conv1(d, d)
}

/// Parameters of the VAE's encoding half (`encoder` + `quant_conv`).
pub fn vae_encoder_parameters(cfg: &VaeConfig) -> i64 {
    let mut total = conv3(cfg.in_channels, cfg.base_dim);
    for stage in cfg.encoder_stages() {
        let (c_in, c_out) = (stage.in_channels, stage.out_channels);
        total += resnet(c_in, c_out) + (cfg.num_res_blocks - 1) * resnet(c_out, c_out);
        if stage.downsample {
            total += c_out * c_out * 9 + c_out;
        }
        if stage.temporal_downsample {
            total += c_out * c_out * 3 + c_out;
        }
    }
    let d = cfg.encoder_dim();
    let z2 = 2 * cfg.z_dim;
    total + mid_block(d) + d + conv3(d, z2) + conv1(z2, z2)
}

/// Parameters of the VAE's decoding half (`post_quant_conv` + `decoder`).
pub fn vae_decoder_parameters(cfg: &VaeConfig) -> i64 {
    let stages = cfg.decoder_stages();
    let d0 = stages.first().map_or(cfg.decoder_dim(), |s| s.in_channels);
    let mut total = conv1(cfg.z_dim, cfg.z_dim) + conv3(cfg.z_dim, d0) + mid_block(d0);
    let mut c_last = d0;
    for stage in &stages {
        let (c_in, c_out) = (stage.in_channels, stage.out_channels);
        total += resnet(c_in, c_out) + cfg.num_res_blocks * resnet(c_out, c_out);
        if stage.upsample {
            let up = stage.upsample_channels;
            total += up * c_out * 9 + up;
        }
        if stage.temporal_upsample {
            total += c_out * 2 * c_out * 3 + 2 * c_out;
        }
        c_last = c_out;
    }
    total + c_last + conv3(c_last, cfg.out_channels)
}

/// Working copies of the widest activation: 3 (the nearest-upsampled input of a conv, the
/// conv's output, the block's sum), one more with Wan2.2's residual shortcuts (the
/// `DupUp3D` / `AvgDown3D` copy added to the block's output).
fn widest_copies(cfg: &VaeConfig) -> f64 {
    if cfg.is_residual {
        4.0
    } else {
        3.0
    }
}

/// The pixels of the decoded region (one tile when `tiling` applies to this frame size): video
/// pixels (height, width), and whether tiling applies.
fn vae_region(request: &EstimateRequest, tile: Option<[i64; 2]>) -> (u64, u64, bool) {
    let (height, width) = (request.height as u64, request.width as u64);
    match tile.filter(|&[h, w]| request.height > h || request.width > w) {
        Some([h, w]) => (height.min(h as u64), width.min(w as u64), true),
        None => (height, width, false),
    }
}

/// Device bytes of one VAE decode beyond its weights.
pub fn vae_decode_bytes(cfg: &VaeConfig, request: &EstimateRequest, tiling: Option<Tiling>) -> u64 {
    let b = request.vae_dtype.elt_size_in_bytes() as u64;
    let tile = tiling.map(|t| [t.min_height, t.min_width]);
    let (h, w, tiled) = vae_region(request, tile);
    // Element counts per pixel the decoder outputs (patchified for Wan2.2), summed in f64
    // (stages shrink by 4×).
    let stages = cfg.decoder_stages();
    let n = stages.len() as i32;
    let area = |i: usize| 0.25f64.powi(n - 1 - i as i32);
    let frames_max = cfg.temporal_ratio() as f64;
    let d0 = stages.first().map_or(0, |s| s.in_channels) as f64;
    let mut cache = (cfg.z_dim as f64 + 4.0 * d0) * 2.0 * area(0);
    let mut widest: f64 = 0.0;
    let mut frames = 1.0;
    for (i, stage) in stages.iter().enumerate() {
        let (c_in, c_out) = (stage.in_channels, stage.out_channels);
        let (temporal, up) = (stage.temporal_upsample, stage.upsample);
        let convs_in = c_in + c_out + 2 * cfg.num_res_blocks * c_out;
        cache += convs_in as f64 * 2.0 * area(i);
        if temporal {
            cache += c_out as f64 * 2.0 * area(i);
        }
        widest = widest.max(c_out as f64 * frames * area(i));
        if temporal {
            frames = (frames * 2.0).min(frames_max);
        }
        if up {
            // the nearest-upsampled tensor at the next stage's size, before its conv
            widest = widest.max(c_out as f64 * frames * area(i + 1));
        }
    }
    let c_last = stages.last().map_or(0, |s| s.out_channels) as f64;
    cache += c_last * 2.0;
    let per_pixel = cache + widest_copies(cfg) * widest;
    let p = cfg.patch() as u64;
    let working = (per_pixel * ((h / p) * (w / p)) as f64).ceil() as u64 * b;
    let video = 3 * request.num_frames as u64 * request.height as u64 * request.width as u64;
    // chunks and their concatenation (+ the tiles before blending, + the unpatchified copy)
    let video_copies = 2 + u64::from(tiled) + u64::from(p > 1);
    working + video_copies * video * b + video * 4
}

/// Device bytes of one VAE encode of `frames` video frames at the request's size, beyond the
/// weights (the image-to-video pipelines: 1 frame for TI2V-5B, `num_frames` for Wan2.2 I2V).
/// The encoder runs 4 frames at a time: per pixel of its (patchified) input, the causal cache
/// (2 frames of the input of every cached conv, each stage 4× smaller than the last) plus
/// [`widest_copies`] of the first stage's activation over the chunk and its 2 cached frames;
/// then the video in the VAE dtype (and its patchified copy) and the moments it makes.
pub fn vae_encode_bytes(
    cfg: &VaeConfig,
    request: &EstimateRequest,
    frames: i64,
    tiling: Option<Tiling>,
) -> u64 {
    let b = request.vae_dtype.elt_size_in_bytes() as u64;
    let p = cfg.patch();
    // the reference's encode tiles are `min` patchified pixels
    let tile = tiling.map(|t| [t.min_height * p, t.min_width * p]);
    let (h, w, _) = vae_region(request, tile);
    let stages = cfg.encoder_stages();
    let area = |i: usize| 0.25f64.powi(i as i32);
    let mut cache = cfg.in_channels as f64 * 2.0;
    for (i, stage) in stages.iter().enumerate() {
        let convs_in = stage.in_channels + (2 * cfg.num_res_blocks - 1) * stage.out_channels;
        cache += convs_in as f64 * 2.0 * area(i);
    }
    let d = cfg.encoder_dim() as f64;
    cache += 5.0 * d * 2.0 * area(stages.len() - 1);
    let first = stages
        .first()
        .map_or(0, |s| s.out_channels.max(s.in_channels)) as f64;
    let widest = first * (4.0 + 2.0);
    let per_pixel = cache + widest_copies(cfg) * widest;
    let pixels = (h / p as u64) * (w / p as u64);
    let working = (per_pixel * pixels as f64).ceil() as u64 * b;
    let video = 3 * frames.max(1) as u64 * request.height as u64 * request.width as u64;
    let video_copies = 1 + u64::from(p > 1);
    let s = cfg.spatial_ratio() as u64;
    let latent_frames = ((frames.max(1) - 1) / cfg.temporal_ratio() + 1) as u64;
    let moments = 2
        * cfg.z_dim as u64
        * latent_frames
        * (request.height as u64 / s)
        * (request.width as u64 / s);
    working + video_copies * video * b + 2 * moments * b
}
