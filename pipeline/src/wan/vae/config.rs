//! `vae/config.json` of `AutoencoderKLWan` as diffusers writes it, with the defaults of
//! diffusers 0.42.1 `AutoencoderKLWan.__init__` (the Wan2.1 VAE) in one place: [`VaeConfig::default`].
//! The Wan2.2 VAE (TI2V-5B) is the same class with `is_residual`, `patch_size` 2 and z_dim 48.

use std::path::Path;

use serde::Deserialize;

use crate::error::{ConfigProblem, Result};
use crate::loader::read_json;
use crate::wan::config::check_class_name;

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

/// Latent channel means of the Wan2.2 VAE (`Wan-AI/Wan2.2-TI2V-5B-Diffusers` `vae/config.json`).
const WAN2_2_LATENTS_MEAN: [f64; 48] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
    0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
    -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
    -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
    0.3573, -0.0548, -0.1681, -0.0667,
];
/// Latent channel standard deviations of the Wan2.2 VAE (same file).
const WAN2_2_LATENTS_STD: [f64; 48] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
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
    /// Attention in the encoder's down blocks at these scales; must be empty (diffusers' encoder
    /// cannot run such a block with its feature cache, and no Wan checkpoint has one).
    pub attn_scales: Vec<f64>,
    /// Per encoder stage; the decoder upsamples in time where the reversed list says true.
    pub temperal_downsample: Vec<bool>,
    /// Training only.
    pub dropout: f64,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    /// Wan2.2 residual down/up blocks (`AvgDown3D` / `DupUp3D` shortcuts).
    pub is_residual: bool,
    pub in_channels: i64,
    pub out_channels: i64,
    /// Wan2.2 pixel patchify: `p×p` pixels become channels before the encoder and after the
    /// decoder (so `in_channels` / `out_channels` are 3·p²).
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
    /// An upsampler follows it (every block but the last): 2× height and width.
    pub upsample: bool,
    /// Width out of that upsampler: half the block's for the Wan2.1 VAE, all of it for Wan2.2.
    pub upsample_channels: i64,
    /// Wan2.2: a `DupUp3D` shortcut around the block (whenever it upsamples).
    pub residual: bool,
}

impl EncoderStage {
    /// `AvgDown3D`'s (time, space) factors: 2 where the block halves that axis, else 1.
    pub fn shortcut_factors(&self) -> [i64; 3] {
        let space = if self.downsample { 2 } else { 1 };
        [if self.temporal_downsample { 2 } else { 1 }, space, space]
    }
}

/// One down block of the encoder, as [`VaeConfig::encoder_stages`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderStage {
    /// Width into the block's first residual block.
    pub in_channels: i64,
    /// Width of its residual blocks' output.
    pub out_channels: i64,
    /// A downsampler follows it (every block but the last): half the height and width.
    pub downsample: bool,
    /// That downsampler also halves the frames (`downsample3d`).
    pub temporal_downsample: bool,
    /// Wan2.2: the block is a `WanResidualDownBlock` with an `AvgDown3D` shortcut.
    pub residual: bool,
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
    /// The Wan2.2 VAE of TI2V-5B as `Wan-AI/Wan2.2-TI2V-5B-Diffusers` `vae/config.json` writes
    /// it: base_dim 160, decoder_base_dim 256, z_dim 48, residual blocks, 2×2 patches (12
    /// channels in and out), 16× in space.
    pub fn wan2_2() -> Self {
        Self {
            base_dim: 160,
            decoder_base_dim: Some(256),
            z_dim: 48,
            latents_mean: WAN2_2_LATENTS_MEAN.to_vec(),
            latents_std: WAN2_2_LATENTS_STD.to_vec(),
            is_residual: true,
            in_channels: 12,
            out_channels: 12,
            patch_size: Some(2),
            scale_factor_spatial: Some(16),
            clip_output: Some(false),
            ..Self::default()
        }
    }

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
        check_class_name(self.class_name.as_deref(), "AutoencoderKLWan", "VAE")?;
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
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("num_res_blocks", self.num_res_blocks),
            ("patch_size", self.patch_size.unwrap_or(1)),
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
        self.validate_layout()
    }

    /// The checks on how the layers fit together (see [`Self::validate`]).
    fn validate_layout(&self) -> std::result::Result<(), ConfigProblem> {
        if !self.attn_scales.is_empty() {
            return Err(format!(
                "attn_scales is {:?}; only [] is supported (diffusers' Wan encoder cannot run attention in its down blocks)",
                self.attn_scales
            )
            .into());
        }
        let patch_area = self.patch_size.unwrap_or(1).pow(2);
        for (name, channels) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
        ] {
            if channels % patch_area != 0 {
                return Err(format!(
                    "{name} {channels} is not a multiple of patch_size² = {patch_area} (the patchified pixels are channels)"
                )
                .into());
            }
        }
        // `scale_factor_spatial` / `scale_factor_temporal` are taken as written even where they
        // disagree with the layers: diffusers uses them only for the tile geometry and the
        // pipelines' latent sizes, and so do we.
        if self.is_residual {
            self.validate_residual_shortcuts()?;
        }
        Ok(())
    }

    /// `AvgDown3D` / `DupUp3D` regroup channels: the widths must divide as diffusers asserts.
    fn validate_residual_shortcuts(&self) -> std::result::Result<(), ConfigProblem> {
        for stage in self.encoder_stages() {
            let factor = stage.shortcut_factors().iter().product::<i64>();
            if stage.in_channels * factor % stage.out_channels != 0 {
                return Err(format!(
                    "dim_mult {:?}: an encoder block from {} to {} channels cannot average {factor} pixels per channel group",
                    self.dim_mult, stage.in_channels, stage.out_channels
                )
                .into());
            }
        }
        for stage in self.decoder_stages().iter().filter(|s| s.upsample) {
            let factor = if stage.temporal_upsample { 8 } else { 4 };
            if stage.out_channels * factor % stage.in_channels != 0 {
                return Err(format!(
                    "dim_mult {:?} with decoder_base_dim {}: a decoder block from {} to {} channels cannot duplicate its input {factor}-fold",
                    self.dim_mult, self.decoder_dim(), stage.in_channels, stage.out_channels
                )
                .into());
            }
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
                let c_out = dims[i + 1];
                // Wan2.1: after the first stage the previous upsampler has halved the width.
                let halved = i > 0 && !self.is_residual;
                DecoderStage {
                    in_channels: if halved { dims[i] / 2 } else { dims[i] },
                    out_channels: c_out,
                    temporal_upsample: upsample && temporal[i],
                    upsample,
                    upsample_channels: if self.is_residual { c_out } else { c_out / 2 },
                    residual: self.is_residual && upsample,
                }
            })
            .collect()
    }

    /// The encoder's down blocks in order (`base_dim` × 1, then × each multiplier), as the
    /// encoder and the memory estimate build them.
    pub fn encoder_stages(&self) -> Vec<EncoderStage> {
        let dims: Vec<i64> = std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|m| self.base_dim * m)
            .collect();
        let stages = self.dim_mult.len();
        (0..stages)
            .map(|i| {
                let downsample = i + 1 < stages;
                EncoderStage {
                    in_channels: dims[i],
                    out_channels: dims[i + 1],
                    downsample,
                    temporal_downsample: downsample && self.temperal_downsample[i],
                    residual: self.is_residual,
                }
            })
            .collect()
    }

    /// Width of the encoder's last stage, its middle block and head.
    pub fn encoder_dim(&self) -> i64 {
        self.base_dim * self.dim_mult.last().copied().unwrap_or(1)
    }

    /// Pixels per patchified pixel along height and width (1 for the Wan2.1 VAE).
    pub fn patch(&self) -> i64 {
        self.patch_size.unwrap_or(1)
    }

    /// Pixels per latent along height and width (`scale_factor_spatial`, else 2 per upsampling
    /// stage times `patch_size`): 8 for the Wan2.1 VAE, 16 for Wan2.2.
    pub fn spatial_ratio(&self) -> i64 {
        self.scale_factor_spatial
            .unwrap_or((1 << self.temperal_downsample.len()) * self.patch())
    }

    /// [`Self::spatial_ratio`]: video pixels per latent pixel (8 for Wan2.1, 16 for Wan2.2).
    pub fn spatial_scale(&self) -> i64 {
        self.spatial_ratio()
    }

    /// Video frames per latent frame after the first as the pipelines count them
    /// (`scale_factor_temporal`, else [`Self::temporal_ratio`]): 4 for both VAEs.
    pub fn temporal_scale(&self) -> i64 {
        self.scale_factor_temporal
            .unwrap_or_else(|| self.temporal_ratio())
    }

    /// Pixels per latent pixel that the layers make: 2 per downsampling stage times
    /// `patch_size` (equal to [`Self::spatial_ratio`] in every published config).
    pub fn layer_spatial_ratio(&self) -> i64 {
        (1 << self.temperal_downsample.len()) * self.patch()
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

    /// `Wan-AI/Wan2.2-TI2V-5B-Diffusers` `vae/config.json` (means 0, stds 1) with the fields
    /// of the JSON object `overrides` replaced.
    fn wan2_2_json(overrides: &str) -> String {
        let mut cfg = serde_json::json!({
            "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "is_residual": true,
            "patch_size": 2, "in_channels": 12, "out_channels": 12,
            "scale_factor_spatial": 16, "scale_factor_temporal": 4, "clip_output": false,
            "latents_mean": vec![0.0; 48], "latents_std": vec![1.0; 48],
        });
        let overrides: serde_json::Value = serde_json::from_str(overrides).unwrap();
        for (key, value) in overrides.as_object().unwrap() {
            cfg[key] = value.clone();
        }
        cfg.to_string()
    }

    #[test]
    fn wan2_2_vae_parses_with_its_scales() {
        let cfg = parse(&wan2_2_json("{}")).unwrap();
        assert_eq!((cfg.spatial_scale(), cfg.temporal_scale()), (16, 4));
        VaeConfig::wan2_2().validate().unwrap();
        let stages = cfg.decoder_stages();
        // residual blocks keep their input width (no halving upsampler)
        assert_eq!(
            stages.iter().map(|s| s.in_channels).collect::<Vec<_>>(),
            vec![1024, 1024, 1024, 512]
        );
        assert!(stages[0].residual && stages[0].temporal_upsample && !stages[3].residual);
        let enc = cfg.encoder_stages();
        assert_eq!(
            enc.iter().map(|s| s.out_channels).collect::<Vec<_>>(),
            vec![160, 320, 640, 640]
        );
        assert_eq!(
            enc.iter()
                .map(|s| s.temporal_downsample)
                .collect::<Vec<_>>(),
            vec![false, true, true, false]
        );
    }

    #[test]
    fn unsupported_fields_are_named() {
        for (json, field) in [
            (wan2_2_json(r#"{"in_channels": 3}"#), "in_channels 3"),
            (
                wan2_2_json(r#"{"dim_mult": [1, 2, 4, 8]}"#),
                "dim_mult [1, 2, 4, 8]",
            ),
            (r#"{"attn_scales": [1.0]}"#.to_string(), "attn_scales"),
            (
                r#"{"patch_size": 0}"#.to_string(),
                "patch_size must be positive",
            ),
        ] {
            let err = parse(&json).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn mean_length_must_match_z_dim() {
        let err = parse(r#"{"z_dim": 4}"#).unwrap_err();
        assert!(err.contains("latents_mean has 16 entries"), "{err}");
    }
}
