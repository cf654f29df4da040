//! `AutoencoderKLWan` — the Wan2.1 video VAE (z_dim 16, 4× in time, 8× in space), decoder half,
//! matched to diffusers 0.42.1 `models/autoencoders/autoencoder_kl_wan.py`, plus the end of
//! `WanPipeline.__call__`: latent de-normalisation and `VideoProcessor.postprocess_video`.
//!
//! The decoder runs one latent frame at a time with a cache of the last frames each causal
//! convolution saw, exactly as the reference's `_decode`; latent frame 0 becomes one video
//! frame and every later one `temporal_ratio` (4) frames. Optional spatial tiling
//! ([`Tiling`], diffusers `enable_tiling`) bounds memory for large frames.
//!
//! # Layout
//! - `config`: [`VaeConfig`], the checkpoint's `vae/config.json`.
//! - `layers`: causal Conv3d, RMS norm, residual and attention blocks, upsamplers, feature cache.
//! - `decoder`: `WanDecoder3d` over one chunk.

mod config;
mod decoder;
mod layers;

use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

pub use config::{DecoderStage, VaeConfig};
use decoder::Decoder;
use layers::{CausalConv3d, FeatCache};

use crate::error::{PipelineError, Result};
use crate::loader::load_weights;
use crate::wan::TensorMap;

/// Spatial tiling of the decode, in output pixels (diffusers `enable_tiling` arguments).
/// Tiles of `min_*` pixels start every `stride_*` pixels; the `min - stride` overlap is
/// blended linearly into the tile below / to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    pub min_height: i64,
    pub min_width: i64,
    pub stride_height: i64,
    pub stride_width: i64,
}

impl Default for Tiling {
    /// diffusers `AutoencoderKLWan` defaults: 256-pixel tiles every 192 pixels.
    fn default() -> Self {
        Self {
            min_height: 256,
            min_width: 256,
            stride_height: 192,
            stride_width: 192,
        }
    }
}

/// The Wan VAE's decoding half. Module paths equal the checkpoint keys (`post_quant_conv.*`,
/// `decoder.*`); the encoder's weights in the same file are not loaded.
pub struct AutoencoderKLWan {
    cfg: VaeConfig,
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
            post_quant_conv: CausalConv3d::new(&vs / "post_quant_conv", z, z, [1; 3], [0; 3]),
            decoder: Decoder::new(cfg, &vs / "decoder"),
            tiling: None,
        })
    }

    /// Reads `dir/config.json` and the decoder's weights from `dir` (a diffusers `vae/` folder)
    /// onto `device` in `kind`.
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

    /// Decode in tiles from now on (when the latents exceed one tile), as diffusers
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

    /// Latents (B, z_dim, T, h, w) → video (B, out_channels, 1 + r·(T−1), s·h, s·w) clamped to
    /// [-1, 1], where r is the temporal and s the spatial ratio. The latents are moved to the
    /// weights' device and kind first.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = self.prepare(latents)?;
        let (_, _, _, h, w) = z.size5()?;
        tch::no_grad(|| {
            let ratio = self.cfg.spatial_ratio();
            let mut video = match self.tiling {
                Some(tiling) if w > tiling.min_width / ratio || h > tiling.min_height / ratio => {
                    self.decode_tiled(&z, &tiling)?
                }
                _ => self.decode_frames(&z)?,
            };
            let _ = video.f_clamp_(-1.0, 1.0)?;
            Ok(video)
        })
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

    /// The reference's `_decode` loop without the clamp: post_quant_conv, then the decoder
    /// on one latent frame at a time, written into one preallocated output.
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

    /// diffusers `tiled_decode` (without the clamp): overlapping latent tiles decoded apart,
    /// each blended into the tile above and to its left (both already blended), then cropped
    /// to the stride and stitched.
    fn decode_tiled(&self, z: &Tensor, tiling: &Tiling) -> Result<Tensor> {
        let grid = self.tile_grid(z, tiling)?;
        let mut tiles = Vec::with_capacity(grid.tiles.len());
        for tile in &grid.tiles {
            tiles.push(self.decode_tile(z, tile)?);
        }
        self.stitch_tiles(&grid, tiles)
    }

    /// The latent tiles of a tiled decode of `z` (prepared, see [`Self::prepare`]), row by row.
    pub fn tile_grid(&self, z: &Tensor, tiling: &Tiling) -> Result<TileGrid> {
        let (_, _, _, height, width) = z.size5()?;
        let ratio = self.cfg.spatial_ratio();
        let (tile_h, tile_w) = (tiling.min_height / ratio, tiling.min_width / ratio);
        let (step_h, step_w) = (tiling.stride_height / ratio, tiling.stride_width / ratio);
        let mut tiles = Vec::new();
        let mut columns = 0;
        for i in (0..height).step_by(step_h as usize) {
            columns = 0;
            for j in (0..width).step_by(step_w as usize) {
                tiles.push(LatentTile {
                    top: i,
                    left: j,
                    height: tile_h.min(height - i),
                    width: tile_w.min(width - j),
                });
                columns += 1;
            }
        }
        Ok(TileGrid {
            tiles,
            columns,
            tiling: *tiling,
            latent_size: [height, width],
        })
    }

    /// One tile of `z` decoded on its own (unclamped).
    pub fn decode_tile(&self, z: &Tensor, tile: &LatentTile) -> Result<Tensor> {
        let part = z
            .f_narrow(3, tile.top, tile.height)?
            .f_narrow(4, tile.left, tile.width)?;
        tch::no_grad(|| self.decode_frames(&part))
    }

    /// The decoded tiles of `grid` (in its order, on one device) blended, cropped to the
    /// stride and stitched into the video — not yet clamped.
    pub fn stitch_tiles(&self, grid: &TileGrid, tiles: Vec<Tensor>) -> Result<Tensor> {
        let tiling = grid.tiling;
        let ratio = self.cfg.spatial_ratio();
        let blend_height = tiling.min_height - tiling.stride_height;
        let blend_width = tiling.min_width - tiling.stride_width;
        let columns = grid.columns.max(1);
        let mut rows: Vec<Vec<Tensor>> = Vec::new();
        let mut tiles = tiles.into_iter();
        while !tiles.as_slice().is_empty() {
            rows.push(tiles.by_ref().take(columns).collect());
        }

        // blend (in place, in order) and crop each tile to the stride
        let mut stitched_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut parts = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let tile = rows[i][j].shallow_clone();
                if i > 0 {
                    blend(&rows[i - 1][j], &tile, 3, blend_height)?;
                }
                if j > 0 {
                    blend(&rows[i][j - 1], &tile, 4, blend_width)?;
                }
                let size = tile.size();
                parts.push(
                    tile.f_narrow(3, 0, tiling.stride_height.min(size[3]))?
                        .f_narrow(4, 0, tiling.stride_width.min(size[4]))?,
                );
            }
            stitched_rows.push(Tensor::f_cat(&parts, 4)?);
        }
        let video = Tensor::f_cat(&stitched_rows, 3)?;
        let size = video.size();
        let [height, width] = grid.latent_size;
        Ok(video
            .f_narrow(3, 0, (height * ratio).min(size[3]))?
            .f_narrow(4, 0, (width * ratio).min(size[4]))?)
    }
}

/// One latent tile of a tiled decode: its top-left corner and size, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentTile {
    pub top: i64,
    pub left: i64,
    pub height: i64,
    pub width: i64,
}

/// The tiles of one tiled decode, row by row, `columns` to a row.
#[derive(Debug, Clone, PartialEq)]
pub struct TileGrid {
    pub tiles: Vec<LatentTile>,
    pub columns: usize,
    pub tiling: Tiling,
    /// (height, width) of the latents.
    pub latent_size: [i64; 2],
}

/// diffusers `blend_v` (dim 3) / `blend_h` (dim 4): the first `extent` rows/columns of `b`
/// fade from the last ones of `a`: `b[y] = a[−extent+y]·(1 − y/extent) + b[y]·(y/extent)`,
/// in place, one row at a time with scalar weights as the reference does.
fn blend(a: &Tensor, b: &Tensor, dim: i64, extent: i64) -> Result<()> {
    let (len_a, len_b) = (a.size()[dim as usize], b.size()[dim as usize]);
    let extent = extent.min(len_a).min(len_b);
    for y in 0..extent {
        let weight = y as f64 / extent as f64;
        let mixed = a
            .f_narrow(dim, len_a - extent + y, 1)?
            .f_mul_scalar(1.0 - weight)?
            .f_add(&b.f_narrow(dim, y, 1)?.f_mul_scalar(weight)?)?;
        b.f_narrow(dim, y, 1)?.f_copy_(&mixed)?;
    }
    Ok(())
}

/// The pipeline's step before decoding: `latents / (1 / std) + mean`, per latent channel,
/// in the latents' own kind and device (the pipeline first casts them to the VAE's kind, so
/// do that first to match it in bf16).
pub fn denormalize_latents(latents: &Tensor, cfg: &VaeConfig) -> Result<Tensor> {
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
    Ok(latents.f_div(&inv_std)?.f_add(&mean)?)
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
