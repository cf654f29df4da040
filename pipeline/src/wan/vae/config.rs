//! `vae/config.json` of `AutoencoderKLWan` as diffusers writes it, with the defaults of
//! diffusers 0.42.1 `AutoencoderKLWan.__init__` (the Wan2.1 VAE) in one place: [`VaeConfig::default`].

use std::path::Path;

use serde::Deserialize;

use crate::error::{ConfigProblem, Result};
use crate::loader::read_json;

/// Latent channel means of the Wan2.1 VAE (diffusers `AutoencoderKLWan` default `latents_mean`).
const WAN2_1_LATENTS_MEAN: [f64; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// Latent channel standard deviations of the Wan2.1 VAE (diffusers default `latents_std`).
const WAN2_1_LATENTS_STD: [f64; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

/// The fields diffusers writes for `AutoencoderKLWan`. Missing fields take the diffusers
/// defaults; unknown fields are an error that names them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: Option<String>,
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// Channel width of the first encoder stage; also of the decoder unless `decoder_base_dim`.
    pub base_dim: i64,
    pub decoder_base_dim: Option<i64>,
    /// Latent channels.
    pub z_dim: i64,
    /// Width multipliers per stage (the decoder walks them in reverse).
    pub dim_mult: Vec<i64>,
    pub num_res_blocks: i64,
    /// Unused by the Wan decoder (its only attention is in the mid block).
    pub attn_scales: Vec<f64>,
    /// Per encoder stage; the decoder upsamples in time where the reversed list says true.
    pub temperal_downsample: Vec<bool>,
    /// Training only.
    pub dropout: f64,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    /// Wan2.2 residual up/down blocks (not supported yet).
    pub is_residual: bool,
    pub in_channels: i64,
    pub out_channels: i64,
    /// Wan2.2 pixel patchify (not supported yet).
    pub patch_size: Option<i64>,
    pub scale_factor_temporal: Option<i64>,
    pub scale_factor_spatial: Option<i64>,
    /// Written by earlier diffusers releases for Wan2.2; diffusers 0.42.1 ignores it and always
    /// clamps the decoded video to [-1, 1], and so do we.
    pub clip_output: Option<bool>,
}

/// One up block of the decoder, as [`VaeConfig::decoder_stages`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderStage {
    /// Width into the block's first residual block.
    pub in_channels: i64,
    /// Width of its residual blocks' output.
    pub out_channels: i64,
    /// The upsampler after it also doubles the frames.
    pub temporal_upsample: bool,
    /// An upsampler follows it (every block but the last): 2× height and width, half the width.
    pub upsample: bool,
}

impl Default for VaeConfig {
    /// The Wan2.1 VAE as diffusers 0.42.1 `AutoencoderKLWan.__init__` defines it
    /// (Wan-AI/Wan2.1-T2V-*-Diffusers and Wan2.2-T2V-A14B-Diffusers `vae/config.json`).
    fn default() -> Self {
        Self {
            class_name: None,
            diffusers_version: None,
            name_or_path: None,
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: Vec::new(),
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: WAN2_1_LATENTS_MEAN.to_vec(),
            latents_std: WAN2_1_LATENTS_STD.to_vec(),
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
            clip_output: None,
        }
    }
}

impl VaeConfig {
    /// Reads and checks `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let cfg: Self = read_json(&path, "VAE config")?;
        cfg.validate()
            .map_err(|problem| problem.in_file(path.clone()))?;
        Ok(cfg)
    }

    /// Checks that the fields agree and that this decoder supports them; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), ConfigProblem> {
        if let Some(class) = &self.class_name {
            if class != "AutoencoderKLWan" {
                return Err(format!(
                    "_class_name is {class:?}, expected \"AutoencoderKLWan\" — this folder holds another VAE"
                ).into());
            }
        }
        if self.is_residual || self.patch_size.is_some() {
            return Err(format!(
                "the Wan2.2 VAE (is_residual {}, patch_size {:?}, z_dim {}) is not supported yet — \
                 use a model with the Wan2.1 VAE (z_dim 16), such as Wan2.2-T2V-A14B or Wan2.1-T2V",
                self.is_residual, self.patch_size, self.z_dim
            )
            .into());
        }
        if self.dim_mult.is_empty() || self.dim_mult.len() != self.temperal_downsample.len() + 1 {
            return Err(format!(
                "dim_mult has {} entries and temperal_downsample {}; expected one more dim_mult than temperal_downsample",
                self.dim_mult.len(),
                self.temperal_downsample.len()
            ).into());
        }
        let positive = [
            ("base_dim", self.base_dim),
            ("decoder_base_dim", self.decoder_base_dim.unwrap_or(1)),
            ("z_dim", self.z_dim),
            ("out_channels", self.out_channels),
            ("num_res_blocks", self.num_res_blocks + 1),
        ];
        let mults = self.dim_mult.iter().map(|&m| ("dim_mult", m));
        if let Some((name, value)) = positive.into_iter().chain(mults).find(|(_, v)| *v < 1) {
            return Err(format!("{name} must be positive, found {value}").into());
        }
        for (name, list) in [
            ("latents_mean", &self.latents_mean),
            ("latents_std", &self.latents_std),
        ] {
            if list.len() as i64 != self.z_dim {
                return Err(
                    format!("{name} has {} entries, z_dim is {}", list.len(), self.z_dim).into(),
                );
            }
        }
        if self.latents_std.contains(&0.0) {
            return Err("latents_std has a zero entry".into());
        }
        Ok(())
    }

    /// Channel width of the decoder's stages.
    pub fn decoder_dim(&self) -> i64 {
        self.decoder_base_dim.unwrap_or(self.base_dim)
    }

    /// Whether each decoder up block (in order) doubles the frames: `temperal_downsample` reversed.
    pub fn temporal_upsample(&self) -> Vec<bool> {
        self.temperal_downsample.iter().rev().copied().collect()
    }

    /// Channel widths along the decoder: the middle block's, then each up block's output —
    /// [`Self::decoder_dim`] × the last multiplier, then × every multiplier in reverse.
    pub fn decoder_widths(&self) -> Vec<i64> {
        let base = self.decoder_dim();
        let last = *self.dim_mult.last().unwrap_or(&1);
        std::iter::once(last)
            .chain(self.dim_mult.iter().rev().copied())
            .map(|m| base * m)
            .collect()
    }

    /// The decoder's up blocks in order, widths as the decoder builds them (the decoder and the
    /// memory estimate both walk this list).
    pub fn decoder_stages(&self) -> Vec<DecoderStage> {
        let dims = self.decoder_widths();
        let temporal = self.temporal_upsample();
        let stages = dims.len() - 1;
        (0..stages)
            .map(|i| {
                let upsample = i + 1 < stages;
                DecoderStage {
                    // After the first stage the previous upsampler has halved the width.
                    in_channels: if i > 0 { dims[i] / 2 } else { dims[i] },
                    out_channels: dims[i + 1],
                    temporal_upsample: upsample && temporal[i],
                    upsample,
                }
            })
            .collect()
    }

    /// Pixels per latent along height and width (`scale_factor_spatial`, else 2 per upsampling stage).
    pub fn spatial_ratio(&self) -> i64 {
        self.scale_factor_spatial
            .unwrap_or(1 << self.temperal_downsample.len())
    }

    /// Frames one latent frame turns into after the first: 2 per temporal upsampling stage.
    pub fn temporal_ratio(&self) -> i64 {
        1 << self.temperal_downsample.iter().filter(|&&t| t).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<VaeConfig, String> {
        let cfg: VaeConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn empty_config_is_the_wan2_1_vae() {
        let cfg = parse("{}").unwrap();
        assert_eq!(cfg, VaeConfig::default());
        assert_eq!((cfg.spatial_ratio(), cfg.temporal_ratio()), (8, 4));
        assert_eq!(cfg.temporal_upsample(), vec![true, true, false]);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse(r#"{"z_dim": 16, "frobnicate": 1}"#).unwrap_err();
        assert!(err.contains("unknown field `frobnicate`"), "{err}");
    }

    #[test]
    fn wan2_2_vae_is_refused() {
        let err =
            parse(r#"{"z_dim": 48, "is_residual": true, "patch_size": 2, "clip_output": false}"#)
                .unwrap_err();
        assert!(err.contains("not supported yet"), "{err}");
    }

    #[test]
    fn mean_length_must_match_z_dim() {
        let err = parse(r#"{"z_dim": 4}"#).unwrap_err();
        assert!(err.contains("latents_mean has 16 entries"), "{err}");
    }
}
