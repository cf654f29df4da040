//! `WanEncoder3d`: conv_in, down blocks, a mid block (residual, attention, residual), then RMS
//! norm, SiLU and conv_out to `2·z_dim` channels (the posterior's mean and log-variance). The
//! Wan2.1 layout lists residual blocks and downsamplers flat under `down_blocks`; the Wan2.2
//! layout (`is_residual`) groups them into `WanResidualDownBlock`s with an `AvgDown3D` shortcut.
//! It runs on one chunk of frames at a time (the first frame, then 4 at a time), carrying a
//! [`FeatCache`] between chunks.

use tch::{nn, Tensor};

use super::config::{EncoderStage, VaeConfig};
use super::decoder::{map_layers, MidBlock};
use super::layers::{CausalConv3d, Downsample, FeatCache, ResidualBlock, RmsNorm};
use super::residual::avg_down;
use crate::error::Result;
use crate::wan::TensorMap;

/// One entry of `encoder.down_blocks`.
enum DownBlock {
    /// Wan2.1: a `WanResidualBlock`.
    Resnet(ResidualBlock),
    /// Wan2.1: a `WanResample` in a down mode.
    Resample(Downsample),
    /// Wan2.2: a `WanResidualDownBlock`.
    Residual(ResidualDownBlock),
}

impl DownBlock {
    fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(match self {
            Self::Resnet(r) => Self::Resnet(r.map_tensors(f)?),
            Self::Resample(d) => Self::Resample(d.map_tensors(f)?),
            Self::Residual(b) => Self::Residual(b.map_tensors(f)?),
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        match self {
            Self::Resnet(r) => r.forward(x, cache),
            Self::Resample(d) => d.forward(x, cache),
            Self::Residual(b) => b.forward(x, cache),
        }
    }
}

/// `WanResidualDownBlock`: `num_res_blocks` residual blocks and `downsampler` (unless last),
/// plus `AvgDown3D` of the block's input.
struct ResidualDownBlock {
    resnets: Vec<ResidualBlock>,
    downsampler: Option<Downsample>,
    channels: i64,
    /// `AvgDown3D` factors (time, height, width).
    factors: [i64; 3],
}

impl ResidualDownBlock {
    fn new(vs: nn::Path<'_>, stage: &EncoderStage, num_res_blocks: i64) -> Self {
        let resnets = stage_resnets(&(&vs / "resnets"), stage, num_res_blocks, 0);
        let downsampler = stage.downsample.then(|| {
            Downsample::new(
                &vs / "downsampler",
                stage.out_channels,
                stage.temporal_downsample,
            )
        });
        Self {
            resnets,
            downsampler,
            channels: stage.out_channels,
            factors: stage.shortcut_factors(),
        }
    }

    fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            resnets: map_layers(&self.resnets, f, ResidualBlock::map_tensors)?,
            downsampler: self
                .downsampler
                .as_ref()
                .map(|d| d.map_tensors(f))
                .transpose()?,
            channels: self.channels,
            factors: self.factors,
        })
    }

    fn forward(&self, input: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = input.shallow_clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x, cache)?;
        }
        if let Some(downsampler) = &self.downsampler {
            x = downsampler.forward(&x, cache)?;
        }
        let [ft, fs, _] = self.factors;
        Ok(x.f_add(&avg_down(input, self.channels, ft, fs)?)?)
    }
}

/// The stage's residual blocks, numbered from `first` under `vs`: the first changes the width.
fn stage_resnets(
    vs: &nn::Path<'_>,
    stage: &EncoderStage,
    num_res_blocks: i64,
    first: i64,
) -> Vec<ResidualBlock> {
    let mut c_in = stage.in_channels;
    (0..num_res_blocks)
        .map(|j| {
            let resnet = ResidualBlock::new(vs / (first + j), c_in, stage.out_channels);
            c_in = stage.out_channels;
            resnet
        })
        .collect()
}

pub struct Encoder {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    /// `vs` is the `encoder` path. The config must have passed [`VaeConfig::validate`].
    pub fn new(cfg: &VaeConfig, vs: nn::Path<'_>) -> Self {
        let stages = cfg.encoder_stages();
        let blocks = &vs / "down_blocks";
        let mut down_blocks = Vec::new();
        for (i, stage) in stages.iter().enumerate() {
            if stage.residual {
                let block = ResidualDownBlock::new(&blocks / i, stage, cfg.num_res_blocks);
                down_blocks.push(DownBlock::Residual(block));
                continue;
            }
            // Wan2.1: one flat list, numbered across stages
            let first = down_blocks.len() as i64;
            let resnets = stage_resnets(&blocks, stage, cfg.num_res_blocks, first);
            down_blocks.extend(resnets.into_iter().map(DownBlock::Resnet));
            if stage.downsample {
                let path = &blocks / down_blocks.len();
                let resample = Downsample::new(path, stage.out_channels, stage.temporal_downsample);
                down_blocks.push(DownBlock::Resample(resample));
            }
        }
        let dim = cfg.encoder_dim();
        Self {
            conv_in: CausalConv3d::new(
                &vs / "conv_in",
                cfg.in_channels,
                cfg.base_dim,
                [3; 3],
                [1; 3],
            ),
            down_blocks,
            mid_block: MidBlock::new(&vs / "mid_block", dim),
            norm_out: RmsNorm::new(&vs / "norm_out", dim, 3),
            conv_out: CausalConv3d::new(&vs / "conv_out", dim, 2 * cfg.z_dim, [3; 3], [1; 3]),
        }
    }

    /// The same encoder with every weight mapped by `f` (see [`TensorMap`]).
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            conv_in: self.conv_in.map_tensors(f)?,
            down_blocks: map_layers(&self.down_blocks, f, DownBlock::map_tensors)?,
            mid_block: self.mid_block.map_tensors(f)?,
            norm_out: self.norm_out.map_tensors(f)?,
            conv_out: self.conv_out.map_tensors(f)?,
        })
    }

    /// One chunk of (patchified) frames (B, in_channels, n, H, W) → (B, 2·z_dim, m, h, w);
    /// `cache` carries the causal context from the chunks before.
    pub fn forward_chunk(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        cache.start_chunk();
        // 1. conv_in
        let mut x = self.conv_in.forward_cached(x, cache)?;
        // 2. downsamples
        for block in &self.down_blocks {
            x = block.forward(&x, cache)?;
        }
        // 3. middle
        x = self.mid_block.forward(&x, cache)?;
        // 4. head
        let x = self.norm_out.forward(&x)?.f_silu()?;
        self.conv_out.forward_cached(&x, cache)
    }
}
