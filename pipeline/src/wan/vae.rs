//! `AutoencoderKLWan` — the Wan video VAEs, matched to diffusers 0.42.1
//! `models/autoencoders/autoencoder_kl_wan.py`: Wan2.1 (z_dim 16, 4× in time, 8× in space) and
//! Wan2.2 (TI2V-5B: z_dim 48, 4× in time, 16× in space — 2×2 pixel patches, residual down/up
//! shortcuts). Plus the pipelines' steps around it: latent normalisation after encoding
//! (`WanImageToVideoPipeline.prepare_latents`), de-normalisation before decoding and
//! `VideoProcessor.postprocess_video` (`WanPipeline.__call__`).
//!
//! The encoder runs the first frame, then 4 frames at a time, and the decoder one latent frame
//! at a time, each with a cache of the last frames every causal convolution saw, exactly as the
//! reference's `_encode` / `_decode`; latent frame 0 is one video frame and every later one
//! `temporal_ratio` (4) frames. [`AutoencoderKLWan::encode`] returns the posterior's mean (the
//! pipelines' `retrieve_latents(..., sample_mode="argmax")`). Optional spatial tiling
//! ([`Tiling`], diffusers `enable_tiling`) bounds memory for large frames, both ways.
//!
//! # Layout
//! - `config`: [`VaeConfig`], the checkpoint's `vae/config.json`.
//! - `layers`: causal Conv3d, RMS norm, residual and attention blocks, resamplers, feature cache.
//! - `residual`: Wan2.2's `AvgDown3D` / `DupUp3D` shortcuts and pixel (un)patchify.
//! - `encoder`: `WanEncoder3d` over one chunk.
//! - `decoder`: `WanDecoder3d` over one chunk.
//! - `tiling`: [`Tiling`] and the tiled encode / decode.

mod config;
mod decoder;
mod encoder;
mod layers;
mod residual;
mod tiling;

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

pub use config::{DecoderStage, EncoderStage, VaeConfig};
use decoder::Decoder;
use encoder::Encoder;
use layers::{CausalConv3d, FeatCache};
use residual::{patchify, unpatchify};
pub use tiling::{LatentTile, TileGrid, Tiling};

use crate::error::{PipelineError, Result};
use crate::loader::load_weights;
use crate::wan::TensorMap;

/// The Wan VAE. Module paths equal the checkpoint keys (`encoder.*`, `quant_conv.*`,
/// `post_quant_conv.*`, `decoder.*`).
pub struct AutoencoderKLWan {
    cfg: VaeConfig,
    encoder: Encoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    decoder: Decoder,
    tiling: Option<Tiling>,
}

impl AutoencoderKLWan {
    /// Creates the variables under `vs` (the VAE's root). Fails on a config it cannot build.
    pub fn new(cfg: &VaeConfig, vs: nn::Path<'_>) -> Result<Self> {
        cfg.validate()
            .map_err(|problem| problem.in_component("VAE config"))?;
        let z = cfg.z_dim;
        Ok(Self {
            cfg: cfg.clone(),
            encoder: Encoder::new(cfg, &vs / "encoder"),
            quant_conv: CausalConv3d::new(&vs / "quant_conv", 2 * z, 2 * z, [1; 3], [0; 3]),
            post_quant_conv: CausalConv3d::new(&vs / "post_quant_conv", z, z, [1; 3], [0; 3]),
            decoder: Decoder::new(cfg, &vs / "decoder"),
            tiling: None,
        })
    }

    /// Reads `dir/config.json` and the weights from `dir` (a diffusers `vae/` folder:
    /// `diffusion_pytorch_model*.safetensors`) onto `device` in `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let cfg = VaeConfig::load(dir)?;
        let mut vs = nn::VarStore::new(device);
        vs.set_kind(kind);
        let vae = Self::new(&cfg, vs.root())?;
        load_weights(&vs, dir)?;
        Ok(vae)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    /// Encode and decode in tiles from now on (when the frames exceed one tile), as diffusers
    /// `enable_tiling`. Strides must cover at least one latent and not exceed the tile.
    pub fn enable_tiling(&mut self, tiling: Tiling) -> Result<()> {
        let ratio = self.cfg.spatial_ratio();
        for (axis, min, stride) in [
            ("height", tiling.min_height, tiling.stride_height),
            ("width", tiling.min_width, tiling.stride_width),
        ] {
            if stride < ratio || stride > min {
                return Err(PipelineError::invalid(
                    format!("VAE tile {axis}"),
                    format!("stride {stride} must be at least {ratio} pixels and at most the tile size {min}"),
                ));
            }
        }
        self.tiling = Some(tiling);
        Ok(())
    }

    pub fn disable_tiling(&mut self) {
        self.tiling = None;
    }

    /// The same VAE on `device`: weights shared when it already lives there (a thread's own
    /// handle), copied otherwise.
    pub fn replica(&self, device: Device) -> Result<Self> {
        let f: &TensorMap<'_> = &|t| Ok(t.f_to_device(device)?);
        Ok(Self {
            cfg: self.cfg.clone(),
            encoder: self.encoder.map_tensors(f)?,
            quant_conv: self.quant_conv.map_tensors(f)?,
            post_quant_conv: self.post_quant_conv.map_tensors(f)?,
            decoder: self.decoder.map_tensors(f)?,
            tiling: self.tiling,
        })
    }

    pub fn tiling(&self) -> Option<Tiling> {
        self.tiling
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.post_quant_conv.kind_device().1
    }

    /// Latents (B, z_dim, T, h, w) → video (B, out_channels / p², 1 + r·(T−1), s·h, s·w)
    /// clamped to [-1, 1], where r is the temporal and s the spatial ratio, p the patch size.
    /// The latents are moved to the weights' device and kind first.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = self.prepare(latents)?;
        let (_, _, _, h, w) = z.size5()?;
        tch::no_grad(|| {
            let ratio = self.cfg.spatial_ratio();
            let patched = match self.tiling {
                Some(tiling) if w > tiling.min_width / ratio || h > tiling.min_height / ratio => {
                    self.decode_tiled(&z, &tiling)?
                }
                _ => self.decode_frames(&z)?,
            };
            let mut video = unpatchify(&patched, self.cfg.patch())?;
            let _ = video.f_clamp_(-1.0, 1.0)?;
            Ok(video)
        })
    }

    /// Video (B, 3, T, H, W) in [-1, 1] → the posterior's mean (B, z_dim, 1 + (T−1)/4, H/s, W/s),
    /// un-normalised (see [`normalize_latents`]); s is the spatial ratio. As diffusers
    /// `encode(video).latent_dist.mode()`: frames past the last whole chunk of 4 are not
    /// encoded. The video is moved to the weights' device and kind first.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let x = self.prepare_video(video)?;
        let (_, _, _, h, w) = x.size5()?;
        tch::no_grad(|| {
            let x = patchify(&x, self.cfg.patch())?;
            let moments = match self.tiling {
                Some(tiling) if w > tiling.min_width || h > tiling.min_height => {
                    self.encode_tiled(&x, &tiling)?
                }
                _ => self.encode_frames(&x)?,
            };
            // DiagonalGaussianDistribution: mean and log-variance halves; the mode is the mean
            Ok(moments.f_narrow(1, 0, self.cfg.z_dim)?)
        })
    }

    /// Checks `video` and moves it to the weights' device and kind.
    fn prepare_video(&self, video: &Tensor) -> Result<Tensor> {
        let p = self.cfg.patch();
        let channels = self.cfg.in_channels / (p * p);
        let s = self.cfg.layer_spatial_ratio();
        let expected = || {
            format!(
                "expected (batch, {channels}, frames, height, width) with height and width {}{s}, got {:?}",
                if self.cfg.is_residual { "multiples of " } else { "at least " },
                video.size()
            )
        };
        let (_, c, t, h, w) = video
            .size5()
            .map_err(|_| PipelineError::invalid("video", expected()))?;
        let fits = |len: i64| {
            if self.cfg.is_residual {
                len % s == 0
            } else {
                len >= s
            }
        };
        if c != channels || t < 1 || !fits(h) || !fits(w) || h < 1 || w < 1 {
            return Err(PipelineError::invalid("video", expected()));
        }
        let (kind, device) = self.post_quant_conv.kind_device();
        Ok(video.f_to_device(device)?.f_to_kind(kind)?)
    }

    /// The reference's `_encode` loop on a patchified video: the encoder on the first frame,
    /// then on each whole chunk of 4 frames, concatenated in time, then `quant_conv`.
    fn encode_frames(&self, x: &Tensor) -> Result<Tensor> {
        let t = x.size()[2];
        let mut cache = FeatCache::new();
        let mut chunks = vec![self
            .encoder
            .forward_chunk(&x.f_narrow(2, 0, 1)?, &mut cache)?];
        for i in 0..(t - 1) / 4 {
            let frames = x.f_narrow(2, 1 + 4 * i, 4)?;
            chunks.push(self.encoder.forward_chunk(&frames, &mut cache)?);
        }
        self.quant_conv.forward(&Tensor::f_cat(&chunks, 2)?, None)
    }

    /// Checks `latents` and moves them to the weights' device and kind.
    pub fn prepare(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, c, t, h, w) = latents.size5().map_err(|_| {
            PipelineError::invalid(
                "latents",
                format!(
                    "expected (batch, {}, frames, height, width), got {:?}",
                    self.cfg.z_dim,
                    latents.size()
                ),
            )
        })?;
        if c != self.cfg.z_dim || t < 1 || h < 1 || w < 1 {
            return Err(PipelineError::invalid(
                "latents",
                format!(
                    "shape {:?} does not fit the VAE: expected {} channels and at least one frame",
                    latents.size(),
                    self.cfg.z_dim
                ),
            ));
        }
        let (kind, device) = self.post_quant_conv.kind_device();
        Ok(latents.f_to_device(device)?.f_to_kind(kind)?)
    }

    /// The reference's `_decode` loop without `unpatchify` and the clamp: post_quant_conv, then
    /// the decoder on one latent frame at a time, written into one preallocated output.
    fn decode_frames(&self, z: &Tensor) -> Result<Tensor> {
        let x = self.post_quant_conv.forward(z, None)?;
        let t = x.size()[2];
        let frames = 1 + self.cfg.temporal_ratio() * (t - 1);
        let mut cache = FeatCache::new();
        let mut out: Option<Tensor> = None;
        let mut offset = 0;
        for i in 0..t {
            let chunk = self
                .decoder
                .forward_chunk(&x.f_narrow(2, i, 1)?, &mut cache)?;
            let (b, c, n, h, w) = chunk.size5()?;
            let out = match &mut out {
                Some(out) => out,
                None => out.insert(Tensor::f_empty(
                    [b, c, frames, h, w],
                    (chunk.kind(), chunk.device()),
                )?),
            };
            if offset + n > frames {
                return Err(PipelineError::invalid(
                    "VAE config",
                    format!("the decoder made more than the {frames} frames that temperal_downsample implies"),
                ));
            }
            out.f_narrow(2, offset, n)?.f_copy_(&chunk)?;
            offset += n;
        }
        match out {
            Some(out) if offset == frames => Ok(out),
            _ => Err(PipelineError::invalid(
                "VAE config",
                format!("the decoder made {offset} frames, temperal_downsample implies {frames}"),
            )),
        }
    }
}

/// What the image-to-video pipelines do to encoded latents (`prepare_latents`):
/// `(latents − mean) · (1 / std)`, per latent channel, in the latents' own kind and device
/// (the pipeline first casts them to its dtype, so do that first to match it in bf16).
pub fn normalize_latents(latents: &Tensor, cfg: &VaeConfig) -> Result<Tensor> {
    let (mean, inv_std) = channel_stats(latents, cfg)?;
    Ok(latents.f_sub(&mean)?.f_mul(&inv_std)?)
}

/// The pipeline's step before decoding: `latents / (1 / std) + mean`, per latent channel,
/// in the latents' own kind and device (the pipeline first casts them to the VAE's kind, so
/// do that first to match it in bf16).
pub fn denormalize_latents(latents: &Tensor, cfg: &VaeConfig) -> Result<Tensor> {
    let (mean, inv_std) = channel_stats(latents, cfg)?;
    Ok(latents.f_div(&inv_std)?.f_add(&mean)?)
}

/// `latents_mean` and `1 / latents_std` as (1, z_dim, 1, 1, 1) in the latents' kind and device.
fn channel_stats(latents: &Tensor, cfg: &VaeConfig) -> Result<(Tensor, Tensor)> {
    let (kind, device) = (latents.kind(), latents.device());
    if latents.dim() != 5 || latents.size()[1] != cfg.z_dim {
        return Err(PipelineError::invalid(
            "latents",
            format!(
                "expected (batch, {}, frames, height, width), got {:?}",
                cfg.z_dim,
                latents.size()
            ),
        ));
    }
    let channel = |values: &[f64]| -> Result<Tensor> {
        // torch.tensor(list of floats) is f32
        let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        Ok(Tensor::from_slice(&values).f_view([1, cfg.z_dim, 1, 1, 1])?)
    };
    let mean = channel(&cfg.latents_mean)?
        .f_to_device(device)?
        .f_to_kind(kind)?;
    // `1.0 / std.to(dtype)`: the reciprocal is taken after the cast, in the latents' kind.
    let inv_std = channel(&cfg.latents_std)?
        .f_to_device(device)?
        .f_to_kind(kind)?
        .f_reciprocal()?;
    Ok((mean, inv_std))
}

/// `VideoProcessor.postprocess_video(video, output_type="np")` for one video: (1, 3, F, H, W) in
/// [-1, 1] → (F, H, W, 3) f32 in [0, 1] on the CPU (`(x·0.5 + 0.5).clamp(0, 1)` in the video's kind).
pub fn to_frames_f32(video: &Tensor) -> Result<Tensor> {
    Ok(frames_on_device(video)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?)
}

/// The frames as 8-bit RGB, (F, H, W, 3) u8 on the CPU: `(frames·255).round()` as diffusers'
/// `numpy_to_pil` does (round half to even).
pub fn to_frames_u8(video: &Tensor) -> Result<Tensor> {
    Ok(frames_on_device(video)?
        .f_mul_scalar(255.0)?
        .f_round()?
        .f_to_kind(Kind::Uint8)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?)
}

fn frames_on_device(video: &Tensor) -> Result<Tensor> {
    let size = video.size();
    if size.len() != 5 || size[0] != 1 || size[1] != 3 {
        return Err(PipelineError::invalid(
            "video",
            format!("expected one RGB video (1, 3, frames, height, width), got {size:?}"),
        ));
    }
    Ok(video
        .f_select(0, 0)?
        .f_mul_scalar(0.5)?
        .f_add_scalar(0.5)?
        .f_clamp(0.0, 1.0)?
        .f_to_kind(Kind::Float)?
        .f_permute([1, 2, 3, 0])?)
}
