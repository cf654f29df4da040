//! `WanDecoder3d`: conv_in, a mid block (residual, attention, residual), up blocks of residual
//! blocks each ending in an upsampler, then RMS norm, SiLU and conv_out. The Wan2.2 layout
//! (`is_residual`) adds a `DupUp3D` shortcut around each upsampling block. It runs on one chunk
//! (one latent frame) at a time, carrying a [`FeatCache`] between chunks.

use tch::{nn, Tensor};

use super::config::DecoderStage;
use super::config::VaeConfig;
use super::layers::{AttentionBlock, CausalConv3d, FeatCache, ResidualBlock, RmsNorm, Upsample};
use super::residual::dup_up;
use crate::error::Result;
use crate::wan::TensorMap;

/// `WanMidBlock` with one attention layer: resnets.0, attentions.0, resnets.1 (also the
/// encoder's middle block).
pub struct MidBlock {
    resnets: Vec<ResidualBlock>,
    attentions: Vec<AttentionBlock>,
}

impl MidBlock {
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            resnets: map_layers(&self.resnets, f, ResidualBlock::map_tensors)?,
            attentions: map_layers(&self.attentions, f, AttentionBlock::map_tensors)?,
        })
    }

    pub fn new(vs: nn::Path<'_>, dim: i64) -> Self {
        Self {
            resnets: (0..2)
                .map(|i| ResidualBlock::new(&vs / "resnets" / i, dim, dim))
                .collect(),
            attentions: vec![AttentionBlock::new(&vs / "attentions" / 0, dim)],
        }
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.resnets[0].forward(x, cache)?;
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = attention.forward(&x)?;
            x = resnet.forward(&x, cache)?;
        }
        Ok(x)
    }
}

/// `WanUpBlock`: `num_res_blocks + 1` residual blocks, then `upsamplers.0` unless last; or
/// `WanResidualUpBlock` (Wan2.2): the same with `upsampler`, plus a `DupUp3D` of its input added
/// to the output when it upsamples.
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Upsample>,
    shortcut: Option<DupUpShortcut>,
}

/// The `avg_shortcut` (`DupUp3D`) of a Wan2.2 up block: to `channels`, `frames`× in time, 2× in space.
#[derive(Clone, Copy)]
struct DupUpShortcut {
    channels: i64,
    frames: i64,
}

impl UpBlock {
    fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            resnets: map_layers(&self.resnets, f, ResidualBlock::map_tensors)?,
            upsampler: self
                .upsampler
                .as_ref()
                .map(|u| u.map_tensors(f))
                .transpose()?,
            shortcut: self.shortcut,
        })
    }

    /// Up block `i` under `vs` (`decoder.up_blocks.{i}`) as `stage` describes it.
    fn new(vs: nn::Path<'_>, stage: &DecoderStage, num_res_blocks: i64) -> Self {
        let mut c_in = stage.in_channels;
        let c_out = stage.out_channels;
        let resnets = (0..=num_res_blocks)
            .map(|j| {
                let resnet = ResidualBlock::new(&vs / "resnets" / j, c_in, c_out);
                c_in = c_out;
                resnet
            })
            .collect();
        let upsampler = stage.upsample.then(|| {
            let path = if stage.residual {
                &vs / "upsampler"
            } else {
                &vs / "upsamplers" / 0
            };
            Upsample::new(
                path,
                c_out,
                stage.upsample_channels,
                stage.temporal_upsample,
            )
        });
        let shortcut = stage.residual.then_some(DupUpShortcut {
            channels: c_out,
            frames: if stage.temporal_upsample { 2 } else { 1 },
        });
        Self {
            resnets,
            upsampler,
            shortcut,
        }
    }

    fn forward(&self, input: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = input.shallow_clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x, cache)?;
        }
        if let Some(upsampler) = &self.upsampler {
            x = upsampler.forward(&x, cache)?;
        }
        match self.shortcut {
            Some(s) => {
                let first = cache.first_chunk();
                Ok(x.f_add(&dup_up(input, s.channels, s.frames, 2, first)?)?)
            }
            None => Ok(x),
        }
    }
}

pub struct Decoder {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

/// Every layer of `layers` with its tensors mapped by `f`.
pub fn map_layers<T>(
    layers: &[T],
    f: &TensorMap<'_>,
    map: impl Fn(&T, &TensorMap<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    layers.iter().map(|l| map(l, f)).collect()
}

impl Decoder {
    /// The same decoder with every weight mapped by `f` (see [`TensorMap`]).
    pub fn map_tensors(&self, f: &TensorMap<'_>) -> Result<Self> {
        Ok(Self {
            conv_in: self.conv_in.map_tensors(f)?,
            mid_block: self.mid_block.map_tensors(f)?,
            up_blocks: map_layers(&self.up_blocks, f, UpBlock::map_tensors)?,
            norm_out: self.norm_out.map_tensors(f)?,
            conv_out: self.conv_out.map_tensors(f)?,
        })
    }

    /// `vs` is the `decoder` path. The config must have passed [`VaeConfig::validate`].
    pub fn new(cfg: &VaeConfig, vs: nn::Path<'_>) -> Self {
        let dims = cfg.decoder_widths();
        let stages = cfg.decoder_stages();
        let up_blocks = stages
            .iter()
            .enumerate()
            .map(|(i, stage)| UpBlock::new(&vs / "up_blocks" / i, stage, cfg.num_res_blocks))
            .collect();
        let c_last = dims[stages.len()];
        Self {
            conv_in: CausalConv3d::new(&vs / "conv_in", cfg.z_dim, dims[0], [3; 3], [1; 3]),
            mid_block: MidBlock::new(&vs / "mid_block", dims[0]),
            up_blocks,
            norm_out: RmsNorm::new(&vs / "norm_out", c_last, 3),
            conv_out: CausalConv3d::new(&vs / "conv_out", c_last, cfg.out_channels, [3; 3], [1; 3]),
        }
    }

    /// One chunk (B, z_dim, 1, h, w) → its frames (B, out_channels, n, H, W); `cache` carries
    /// the causal context from the chunks before.
    pub fn forward_chunk(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        cache.start_chunk();
        // 1. conv_in
        let mut x = self.conv_in.forward_cached(x, cache)?;
        // 2. middle
        x = self.mid_block.forward(&x, cache)?;
        // 3. upsamples
        for block in &self.up_blocks {
            x = block.forward(&x, cache)?;
        }
        // 4. head
        let x = self.norm_out.forward(&x)?.f_silu()?;
        self.conv_out.forward_cached(&x, cache)
    }
}
