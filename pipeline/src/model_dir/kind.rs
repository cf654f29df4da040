//! What a model directory is — which Wan model, and so which requests it serves — read from
//! `model_index.json` (`expand_timesteps`, `boundary_ratio`), the transformer's
//! `in_channels`/`out_channels` and the VAE's `z_dim`, as diffusers' pipelines imply them:
//!
//! | kind | transformer in → out | expand_timesteps | image |
//! |---|---|---|---|
//! | text-to-video (T2V-A14B, Wan2.1 T2V) | z → z | no | refused |
//! | image-to-video (I2V-A14B) | z + r + z → z (noise, mask, condition; r = the VAE's frames per latent frame, 4) | no | required |
//! | text+image-to-video (TI2V-5B) | z → z | yes | optional |

use t2v_contract::defaults::{ModelDefaults, WAN22_I2V_A14B, WAN22_T2V_A14B, WAN22_TI2V_5B};

use super::{Component, ModelDir, MODEL_INDEX};
use crate::error::{PipelineError, Result};
use crate::loader;

/// The kinds of Wan model this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Text-to-video: Wan2.2 T2V-A14B (two experts) or Wan2.1 T2V (one).
    TextToVideo { two_experts: bool },
    /// Image-to-video: Wan2.2 I2V-A14B (two experts); the first frame is required, encoded by
    /// the VAE and concatenated with a mask to the noise (`WanImageToVideoPipeline`).
    ImageToVideo { two_experts: bool },
    /// Wan2.2 TI2V-5B: one expert with one timestep per token; text-to-video, or with an image
    /// whose latent replaces the first latent frame.
    TextImageToVideo,
}

impl ModelKind {
    /// Whether a request may carry an image.
    pub fn accepts_image(self) -> bool {
        !matches!(self, ModelKind::TextToVideo { .. })
    }

    /// Whether a request must carry an image.
    pub fn requires_image(self) -> bool {
        matches!(self, ModelKind::ImageToVideo { .. })
    }

    /// The name `doctor` and the errors print, e.g. "Wan2.2 I2V-A14B (two experts,
    /// image-to-video)".
    pub fn describe(self) -> &'static str {
        match self {
            ModelKind::TextToVideo { two_experts: true } => {
                "Wan2.2 T2V-A14B (two experts, text-to-video)"
            }
            ModelKind::TextToVideo { two_experts: false } => "Wan T2V (one expert, text-to-video)",
            ModelKind::ImageToVideo { two_experts: true } => {
                "Wan2.2 I2V-A14B (two experts, image-to-video)"
            }
            ModelKind::ImageToVideo { two_experts: false } => {
                "Wan I2V (one expert, image-to-video)"
            }
            ModelKind::TextImageToVideo => {
                "Wan2.2 TI2V-5B (one expert, text-to-video and text+image-to-video)"
            }
        }
    }

    /// The published defaults of this kind of model (size, frames, fps, steps, guidance).
    pub fn defaults(self) -> ModelDefaults {
        match self {
            ModelKind::TextToVideo { .. } => WAN22_T2V_A14B,
            ModelKind::ImageToVideo { .. } => WAN22_I2V_A14B,
            ModelKind::TextImageToVideo => WAN22_TI2V_5B,
        }
    }

    /// Refuses, in one line, a request this model cannot serve: an image for a text-to-video
    /// model, no image for an image-to-video model.
    pub fn check_request(self, has_image: bool) -> Result<()> {
        if has_image && !self.accepts_image() {
            return Err(PipelineError::invalid(
                "image",
                format!(
                    "this model is {}, it takes no image — leave the image unset, or serve an image-to-video model (Wan2.2 I2V-A14B or TI2V-5B)",
                    self.describe()
                ),
            ));
        }
        if !has_image && self.requires_image() {
            return Err(PipelineError::invalid(
                "image",
                format!(
                    "this model is {}, it needs the first frame — send an image, or serve a text-to-video model (Wan2.2 T2V-A14B or TI2V-5B)",
                    self.describe()
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// The keys of the component configs the kind depends on.
#[derive(serde::Deserialize)]
struct Channels {
    #[serde(default = "default_channels")]
    in_channels: i64,
    #[serde(default)]
    out_channels: Option<i64>,
}

#[derive(serde::Deserialize)]
struct LatentChannels {
    #[serde(default = "default_channels")]
    z_dim: i64,
    /// Frames per latent frame: the I2V mask has this many channels (the first frame's mask
    /// repeated over it). diffusers' default 4.
    #[serde(default)]
    scale_factor_temporal: Option<i64>,
}

/// diffusers' default `in_channels` and `z_dim`.
fn default_channels() -> i64 {
    16
}

impl ModelDir {
    /// What this directory is, from its index and the transformer and VAE configs; an error
    /// names the file and the channel counts that fit no Wan pipeline.
    pub fn kind(&self) -> Result<ModelKind> {
        let transformer_config = self.path(Component::Transformer)?.join("config.json");
        let transformer: Channels =
            loader::read_json(&transformer_config, "transformer config.json")?;
        let vae: LatentChannels = loader::read_json(
            &self.path(Component::Vae)?.join("config.json"),
            "vae config.json",
        )?;
        let (input, output, z) = (
            transformer.in_channels,
            transformer.out_channels.unwrap_or(transformer.in_channels),
            vae.z_dim,
        );
        let two_experts = self.boundary_ratio().is_some();
        let kind = if output != z {
            None
        } else if self.expand_timesteps() {
            (input == z && !two_experts).then_some(ModelKind::TextImageToVideo)
        } else if input == z {
            (self.pipeline_class() == super::PIPELINE_CLASS)
                .then_some(ModelKind::TextToVideo { two_experts })
        } else if input == 2 * z + vae.scale_factor_temporal.unwrap_or(4) {
            Some(ModelKind::ImageToVideo { two_experts })
        } else {
            None
        };
        kind.ok_or_else(|| PipelineError::Config {
            path: self.root().join(MODEL_INDEX),
            message: format!(
                "{} with a transformer of {input} → {output} channels, a VAE of z_dim {z}, expand_timesteps {} and {} fits no Wan pipeline (T2V: z → z; I2V: 2z + 4 → z; TI2V: z → z with expand_timesteps, one expert) — the components come from different checkpoints",
                self.pipeline_class(),
                self.expand_timesteps(),
                if two_experts { "two experts" } else { "one expert" },
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with just the files [`ModelDir::kind`] reads.
    fn dir(
        class: &str,
        index_extra: &str,
        two: bool,
        in_out: (i64, i64),
        z: i64,
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let expert = r#"["diffusers", "WanTransformer3DModel"]"#;
        let index = format!(
            r#"{{"_class_name": "{class}", {index_extra} "transformer": {expert}, "transformer_2": {}, "vae": ["diffusers", "AutoencoderKLWan"]}}"#,
            if two { expert } else { "[null, null]" }
        );
        std::fs::write(dir.path().join(MODEL_INDEX), index).unwrap();
        for (component, config) in [
            (
                "transformer",
                format!(
                    r#"{{"in_channels": {}, "out_channels": {}}}"#,
                    in_out.0, in_out.1
                ),
            ),
            ("vae", format!(r#"{{"z_dim": {z}}}"#)),
        ] {
            std::fs::create_dir_all(dir.path().join(component)).unwrap();
            std::fs::write(dir.path().join(component).join("config.json"), config).unwrap();
        }
        dir
    }

    fn kind_of(dir: &tempfile::TempDir) -> Result<ModelKind> {
        ModelDir::open(dir.path())?.kind()
    }

    #[test]
    fn the_published_layouts_are_recognised() {
        let t2v = dir(
            "WanPipeline",
            r#""boundary_ratio": 0.875,"#,
            true,
            (16, 16),
            16,
        );
        assert_eq!(
            kind_of(&t2v).unwrap(),
            ModelKind::TextToVideo { two_experts: true }
        );
        let i2v = dir(
            "WanImageToVideoPipeline",
            r#""boundary_ratio": 0.9, "image_encoder": [null, null], "image_processor": [null, null],"#,
            true,
            (36, 16),
            16,
        );
        let kind = kind_of(&i2v).unwrap();
        assert_eq!(kind, ModelKind::ImageToVideo { two_experts: true });
        assert_eq!(
            kind.to_string(),
            "Wan2.2 I2V-A14B (two experts, image-to-video)"
        );
        assert!(kind.requires_image());
        let ti2v = dir(
            "WanPipeline",
            r#""expand_timesteps": true,"#,
            false,
            (48, 48),
            48,
        );
        let kind = kind_of(&ti2v).unwrap();
        assert_eq!(kind, ModelKind::TextImageToVideo);
        assert!(kind.accepts_image() && !kind.requires_image());
        assert_eq!(kind.defaults().fps, 24);
    }

    #[test]
    fn mismatched_components_are_refused_in_one_line() {
        // a T2V transformer in an image-to-video pipeline
        let wrong = dir(
            "WanImageToVideoPipeline",
            r#""boundary_ratio": 0.9,"#,
            true,
            (16, 16),
            16,
        );
        let message = kind_of(&wrong).unwrap_err().to_string();
        assert!(
            message.contains("fits no Wan pipeline") && !message.contains('\n'),
            "{message}"
        );
        // a Wan2.1 VAE under a TI2V transformer
        let wrong = dir(
            "WanPipeline",
            r#""expand_timesteps": true,"#,
            false,
            (48, 48),
            16,
        );
        assert!(kind_of(&wrong).is_err());
        // Wan2.1 I2V with a CLIP image encoder
        let clip = dir(
            "WanImageToVideoPipeline",
            r#""image_encoder": ["transformers", "CLIPVisionModel"],"#,
            false,
            (36, 16),
            16,
        );
        let message = kind_of(&clip).unwrap_err().to_string();
        assert!(message.contains("Wan2.1 I2V"), "{message}");
    }

    #[test]
    fn requests_are_checked_against_the_kind() {
        let t2v = ModelKind::TextToVideo { two_experts: true };
        assert!(t2v.check_request(false).is_ok());
        let message = t2v.check_request(true).unwrap_err().to_string();
        assert!(message.contains("takes no image"), "{message}");
        let i2v = ModelKind::ImageToVideo { two_experts: true };
        assert!(i2v
            .check_request(false)
            .unwrap_err()
            .to_string()
            .contains("send an image"));
        assert!(ModelKind::TextImageToVideo.check_request(false).is_ok());
        assert!(ModelKind::TextImageToVideo.check_request(true).is_ok());
    }
}
