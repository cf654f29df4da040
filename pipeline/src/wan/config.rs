//! `transformer/config.json` of a diffusers Wan checkpoint, as `WanTransformer3DModel.__init__`
//! of diffusers 0.42.1 writes it with `save_pretrained`, plus named presets for the published
//! models.
//!
//! Every key diffusers writes is a field; `_class_name`, `_diffusers_version` and
//! `_name_or_path` are accepted, and any other key is an error (`deny_unknown_fields`), so a
//! checkpoint for another architecture fails at parse time with the key and the file named.
//! Keys a config omits take diffusers' `__init__` defaults, which live in one place:
//! [`TransformerConfig::default`].

use std::path::Path;

use serde::Deserialize;

use crate::error::{ConfigProblem, Result};
use crate::loader;

/// The only `qk_norm` diffusers implements (RMS norm over all heads, learned gain).
pub const QK_NORM_ACROSS_HEADS: &str = "rms_norm_across_heads";

/// The class diffusers writes in `_class_name` for this model.
pub const CLASS_NAME: &str = "WanTransformer3DModel";

/// Hyper-parameters of `WanTransformer3DModel` (diffusers names and meanings).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformerConfig {
    /// `_class_name`; must be `WanTransformer3DModel` when present.
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    /// `_diffusers_version` of the writer; informational.
    #[serde(rename = "_diffusers_version")]
    pub diffusers_version: Option<String>,
    /// `_name_or_path`; informational.
    #[serde(rename = "_name_or_path")]
    pub name_or_path: Option<String>,
    /// 3-D patch (frames, height, width); the patch embedding is a Conv3d with kernel = stride.
    pub patch_size: [i64; 3],
    pub num_attention_heads: i64,
    pub attention_head_dim: i64,
    /// Latent channels in.
    pub in_channels: i64,
    /// Latent channels out; `null` means `in_channels` (as in diffusers).
    pub out_channels: Option<i64>,
    /// Width of the text encoder's hidden states (umT5-XXL: 4096).
    pub text_dim: i64,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: i64,
    pub ffn_dim: i64,
    pub num_layers: i64,
    /// LayerNorm (with affine) before cross-attention; identity when false.
    pub cross_attn_norm: bool,
    /// Must be `rms_norm_across_heads`.
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Image-embedding width of the Wan2.1 I2V/FLF2V models (CLIP); must be null (Wan2.2
    /// I2V-A14B conditions through its 36 input channels instead).
    pub image_dim: Option<i64>,
    /// Width of the I2V image key/value projections; must be null.
    pub added_kv_proj_dim: Option<i64>,
    /// Positions in each RoPE table (frames, height and width each index into it).
    pub rope_max_seq_len: i64,
    /// Learned image position embedding of FLF2V; must be null.
    pub pos_embed_seq_len: Option<i64>,
}

/// Checks the `_class_name` of a component's config, when it has one, against `expected`; the
/// error says the folder holds another `component` (shared by the transformer and VAE configs).
pub(crate) fn check_class_name(
    class_name: Option<&str>,
    expected: &str,
    component: &str,
) -> std::result::Result<(), ConfigProblem> {
    match class_name {
        Some(class) if class != expected => Err(format!(
            "_class_name is {class:?}, expected {expected:?} — this folder holds another {component}"
        )
        .into()),
        _ => Ok(()),
    }
}

impl Default for TransformerConfig {
    /// diffusers' `WanTransformer3DModel.__init__` defaults (these equal the 14B T2V models).
    fn default() -> Self {
        Self {
            class_name: None,
            diffusers_version: None,
            name_or_path: None,
            patch_size: [1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some(QK_NORM_ACROSS_HEADS.to_string()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

impl TransformerConfig {
    /// Wan2.2 T2V-A14B, each of the two experts (`transformer/` and `transformer_2/` of
    /// `Wan-AI/Wan2.2-T2V-A14B-Diffusers`; official `wan/configs/wan_t2v_A14B.py`: dim 5120,
    /// 40 heads, 40 layers, ffn 13824). About 14.29 B parameters.
    pub fn wan22_t2v_a14b() -> Self {
        Self::default()
    }

    /// Wan2.1 T2V-14B (`Wan-AI/Wan2.1-T2V-14B-Diffusers` `transformer/config.json`):
    /// the same architecture as one A14B expert.
    pub fn wan21_t2v_14b() -> Self {
        Self::default()
    }

    /// Wan2.1 T2V-1.3B (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers` `transformer/config.json`):
    /// dim 1536 = 12 heads × 128, 30 layers, ffn 8960.
    pub fn wan21_t2v_1_3b() -> Self {
        Self {
            num_attention_heads: 12,
            ffn_dim: 8960,
            num_layers: 30,
            ..Self::default()
        }
    }

    /// Wan2.2 TI2V-5B (`Wan-AI/Wan2.2-TI2V-5B-Diffusers` `transformer/config.json`; official
    /// `wan/configs/wan_ti2v_5B.py`): dim 3072 = 24 heads × 128, 30 layers, ffn 14336,
    /// 48 latent channels (Wan2.2 VAE). Runs with `expand_timesteps` (one timestep per token).
    pub fn wan22_ti2v_5b() -> Self {
        Self {
            num_attention_heads: 24,
            in_channels: 48,
            out_channels: Some(48),
            ffn_dim: 14336,
            num_layers: 30,
            ..Self::default()
        }
    }

    /// Reads `config.json` (e.g. `<model>/transformer/config.json`) and checks that this crate
    /// implements what it describes. Errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let cfg: Self = loader::read_json(path, "transformer config.json")?;
        cfg.validate().map_err(|problem| problem.in_file(path))?;
        Ok(cfg)
    }

    /// Checks the values this implementation supports; the message names the key and why.
    pub fn validate(&self) -> std::result::Result<(), ConfigProblem> {
        check_class_name(self.class_name.as_deref(), CLASS_NAME, "model")?;
        if let Some(dim) = self.image_dim {
            return Err(format!(
                "image_dim = {dim} (Wan2.1 I2V, CLIP image embeddings) is not supported; use Wan2.2 T2V-A14B, I2V-A14B or TI2V-5B"
            ).into());
        }
        if let Some(dim) = self.added_kv_proj_dim {
            return Err(format!(
                "added_kv_proj_dim = {dim} (image key/value projections of I2V) is not supported; use a text-to-video checkpoint"
            ).into());
        }
        if let Some(len) = self.pos_embed_seq_len {
            return Err(format!(
                "pos_embed_seq_len = {len} (first/last-frame image embedding) is not supported; use a text-to-video checkpoint"
            ).into());
        }
        if self.qk_norm.as_deref() != Some(QK_NORM_ACROSS_HEADS) {
            return Err(format!(
                "qk_norm = {:?} is not supported; expected {QK_NORM_ACROSS_HEADS:?}",
                self.qk_norm
            )
            .into());
        }
        let positive = [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels()),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
            ("rope_max_seq_len", self.rope_max_seq_len),
            ("patch_size[0]", self.patch_size[0]),
            ("patch_size[1]", self.patch_size[1]),
            ("patch_size[2]", self.patch_size[2]),
        ];
        if let Some((key, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(format!("{key} = {value} must be positive").into());
        }
        if self.num_layers < 0 {
            return Err(format!("num_layers = {} must not be negative", self.num_layers).into());
        }
        if self.attention_head_dim % 2 != 0 {
            return Err(format!(
                "attention_head_dim = {} must be even: RoPE rotates channel pairs",
                self.attention_head_dim
            )
            .into());
        }
        if self.freq_dim % 2 != 0 {
            return Err(format!(
                "freq_dim = {} must be even (cos and sin halves)",
                self.freq_dim
            )
            .into());
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(format!("eps = {} must be positive", self.eps).into());
        }
        Ok(())
    }

    /// Model width: heads × head dim.
    pub fn inner_dim(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output latent channels (`out_channels or in_channels`, as diffusers resolves it).
    pub fn out_channels(&self) -> i64 {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Elements in one patch (p_t · p_h · p_w).
    pub fn patch_volume(&self) -> i64 {
        self.patch_size.iter().product()
    }

    /// RoPE channels per axis (frames, height, width) of one head:
    /// h = w = 2⌊d/6⌋, t = d − h − w (44/42/42 for d = 128).
    pub fn rope_split(&self) -> [i64; 3] {
        let hw = 2 * (self.attention_head_dim / 6);
        [self.attention_head_dim - 2 * hw, hw, hw]
    }

    /// Number of parameters of the module tree this config describes (what `new` allocates).
    pub fn num_parameters(&self) -> i64 {
        let dim = self.inner_dim();
        let linear = |i: i64, o: i64| i * o + o;
        let attention = 4 * linear(dim, dim) + 2 * dim; // q, k, v, out + RMS gains of q and k
        let norm2 = if self.cross_attn_norm { 2 * dim } else { 0 };
        let ffn = linear(dim, self.ffn_dim) + linear(self.ffn_dim, dim);
        let block = 2 * attention + norm2 + ffn + 6 * dim;
        let patch = self.in_channels * self.patch_volume() * dim + dim;
        let condition = linear(self.freq_dim, dim)
            + linear(dim, dim)
            + linear(dim, 6 * dim)
            + linear(self.text_dim, dim)
            + linear(dim, dim);
        let head = linear(dim, self.out_channels() * self.patch_volume()) + 2 * dim;
        patch + condition + self.num_layers * block + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts of the published architectures, as diffusers 0.42.1 reports them:
    /// `sum(p.numel() for p in WanTransformer3DModel(**cfg).parameters())` built on the meta device.
    #[test]
    fn preset_parameter_counts_match_diffusers() {
        assert_eq!(
            TransformerConfig::wan22_t2v_a14b().num_parameters(),
            14_288_491_584
        );
        assert_eq!(
            TransformerConfig::wan21_t2v_14b().num_parameters(),
            14_288_491_584
        );
        assert_eq!(
            TransformerConfig::wan21_t2v_1_3b().num_parameters(),
            1_418_996_800
        );
        assert_eq!(
            TransformerConfig::wan22_ti2v_5b().num_parameters(),
            4_999_787_712
        );
    }

    #[test]
    fn presets_are_valid_and_split_rope_44_42_42() {
        for cfg in [
            TransformerConfig::wan22_t2v_a14b(),
            TransformerConfig::wan21_t2v_14b(),
            TransformerConfig::wan21_t2v_1_3b(),
            TransformerConfig::wan22_ti2v_5b(),
        ] {
            cfg.validate().unwrap();
            assert_eq!(cfg.rope_split(), [44, 42, 42]);
            assert_eq!(cfg.attention_head_dim, 128);
        }
        assert_eq!(TransformerConfig::wan22_t2v_a14b().inner_dim(), 5120);
        assert_eq!(TransformerConfig::wan21_t2v_1_3b().inner_dim(), 1536);
        assert_eq!(TransformerConfig::wan22_ti2v_5b().inner_dim(), 3072);
    }

    #[test]
    fn parses_what_diffusers_writes_and_fills_defaults() {
        let json = r#"{
          "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.42.1",
          "added_kv_proj_dim": null, "attention_head_dim": 12, "cross_attn_norm": true,
          "eps": 1e-06, "ffn_dim": 32, "freq_dim": 256, "image_dim": null, "in_channels": 4,
          "num_attention_heads": 2, "num_layers": 1, "out_channels": 4, "patch_size": [1, 2, 2],
          "pos_embed_seq_len": null, "qk_norm": "rms_norm_across_heads",
          "rope_max_seq_len": 1024, "text_dim": 16
        }"#;
        let cfg: TransformerConfig = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.inner_dim(), 24);
        assert_eq!(cfg.rope_split(), [4, 4, 4]);
        let sparse: TransformerConfig = serde_json::from_str(r#"{"num_layers": 3}"#).unwrap();
        assert_eq!(
            sparse,
            TransformerConfig {
                num_layers: 3,
                ..TransformerConfig::default()
            }
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = serde_json::from_str::<TransformerConfig>(r#"{"window_size": [-1, -1]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `window_size`"), "{err}");
    }

    #[test]
    fn image_to_video_and_bad_values_are_config_errors() {
        let cases = [
            (
                TransformerConfig {
                    image_dim: Some(1280),
                    ..Default::default()
                },
                "image_dim = 1280",
            ),
            (
                TransformerConfig {
                    added_kv_proj_dim: Some(5120),
                    ..Default::default()
                },
                "added_kv_proj_dim = 5120",
            ),
            (
                TransformerConfig {
                    qk_norm: None,
                    ..Default::default()
                },
                "qk_norm",
            ),
            (
                TransformerConfig {
                    attention_head_dim: 21,
                    ..Default::default()
                },
                "attention_head_dim = 21",
            ),
            (
                TransformerConfig {
                    class_name: Some("UNet3DConditionModel".into()),
                    ..Default::default()
                },
                "_class_name",
            ),
        ];
        for (cfg, needle) in cases {
            let err = cfg.validate().unwrap_err();
            assert!(
                err.message.contains(needle),
                "{err:?} should mention {needle}"
            );
        }
    }
}
