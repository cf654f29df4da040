//! Model variants: a base model + LoRAs with strengths + the sampling preset that goes with them
//! (`[model] preset`, `[model.sampling]`, `[[model.loras]]`). A fleet serves one variant under
//! `[model] name`; a request's zero fields take the variant's values ([`SamplingDefaults`]) and
//! its explicit settings win.
//!
//! The `lightning` preset is Wan2.2-Lightning's T2V-A14B recipe as its authors publish it: the
//! model card <https://huggingface.co/lightx2v/Wan2.2-Lightning> and its inference code
//! (<https://github.com/ModelTC/Wan2.2-Lightning>, read in the mirror
//! <https://github.com/yliuls/Wan2.2-Lightning>): `wan/configs/wan_t2v_A14B.py` sets
//! `sample_steps = 4`, `sample_shift = 5.0`, `sample_guide_scale = (1.0, 1.0)` (low noise, high
//! noise; the expert boundary stays the base model's 0.875), and `generate.py` defaults to the
//! `euler` solver and warns on any other "because it's used in distillation".

use sha2::{Digest, Sha256};
use t2v_contract::defaults::{SINGLE_EXPERT_GUIDANCE, WAN22_T2V_A14B};
use t2v_contract::ModelDefaults;
use t2v_pipeline::lora::{ExpertLoras, LoraSpec};
use t2v_proto::v1::Sampler;

use crate::config::{LoraConfig, LoraExpert, ModelConfig, PresetChoice, SamplerChoice};
use crate::generate::GenerateError;

/// What a request's zero (or unset) sampling fields become on this fleet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingDefaults {
    /// Size, frames, fps, steps and the two experts' guidance.
    pub defaults: ModelDefaults,
    /// Guidance of single-expert models when the request leaves it unset.
    pub single_expert_guidance: f32,
    /// `None`: the model directory's scheduler config.
    pub shift: Option<f32>,
    /// `Unspecified`: the model directory's scheduler.
    pub sampler: Sampler,
}

impl SamplingDefaults {
    /// The base model's own defaults.
    pub const BASE: Self = Self {
        defaults: WAN22_T2V_A14B,
        single_expert_guidance: SINGLE_EXPERT_GUIDANCE,
        shift: None,
        sampler: Sampler::Unspecified,
    };

    /// Wan2.2-Lightning T2V-A14B (module docs for the source): 4 steps, guidance 1.0 on both
    /// experts (so no unconditional pass), the Euler flow sampler, shift 5.0.
    pub const LIGHTNING: Self = Self {
        defaults: ModelDefaults {
            steps: 4,
            guidance_scale: 1.0,
            guidance_scale_2: 1.0,
            ..WAN22_T2V_A14B
        },
        single_expert_guidance: 1.0,
        shift: Some(5.0),
        sampler: Sampler::FlowEuler,
    };

    /// `[model] preset` with the non-zero `[model.sampling]` values in place of the preset's.
    pub fn of(model: &ModelConfig) -> Self {
        let mut resolved = match model.preset {
            PresetChoice::Base => Self::BASE,
            PresetChoice::Lightning => Self::LIGHTNING,
        };
        let sampling = &model.sampling;
        if sampling.steps > 0 {
            resolved.defaults.steps = sampling.steps;
        }
        if sampling.guidance_scale > 0.0 {
            resolved.defaults.guidance_scale = sampling.guidance_scale;
            resolved.single_expert_guidance = sampling.guidance_scale;
        }
        if sampling.guidance_scale_2 > 0.0 {
            resolved.defaults.guidance_scale_2 = sampling.guidance_scale_2;
        }
        if sampling.shift > 0.0 {
            resolved.shift = Some(sampling.shift);
        }
        match sampling.sampler {
            SamplerChoice::Default => {}
            SamplerChoice::Unipc => resolved.sampler = Sampler::Unipc,
            SamplerChoice::Euler => resolved.sampler = Sampler::FlowEuler,
        }
        resolved
    }

    /// The shift of a request: its own when set, else this variant's.
    pub fn shift_for(&self, requested: Option<f32>) -> Option<f32> {
        requested.or(self.shift)
    }

    /// The sampler of a request: its own when it names one, else this variant's.
    pub fn sampler_for(&self, requested: Sampler) -> Sampler {
        match requested {
            Sampler::Unspecified => self.sampler,
            named => named,
        }
    }
}

/// The variant of `[model]`: its sampling defaults and its LoRAs per expert.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub sampling: SamplingDefaults,
    pub loras: ExpertLoras,
}

impl Variant {
    /// The base model as it is: its defaults, no LoRAs.
    pub fn base() -> Self {
        Self {
            sampling: SamplingDefaults::BASE,
            loras: ExpertLoras::default(),
        }
    }

    pub fn of(model: &ModelConfig) -> Self {
        Self {
            sampling: SamplingDefaults::of(model),
            loras: expert_loras(&model.loras),
        }
    }

    /// Whether this is the base model unchanged (so its revision is the directory's).
    pub fn is_base(&self) -> bool {
        self.loras.is_empty() && self.sampling == SamplingDefaults::BASE
    }
}

/// `[[model.loras]]` sorted into the experts' lists, in the configured order.
pub fn expert_loras(loras: &[LoraConfig]) -> ExpertLoras {
    let mut experts = ExpertLoras::default();
    for lora in loras {
        let spec = LoraSpec::new(&lora.file, lora.strength);
        match lora.expert {
            LoraExpert::Transformer => experts.transformer.push(spec),
            LoraExpert::Transformer2 => experts.transformer_2.push(spec),
            LoraExpert::Both => {
                experts.transformer.push(spec.clone());
                experts.transformer_2.push(spec);
            }
        }
    }
    experts
}

/// The revision of `variant` over the base model's `base_revision`: the base revision itself
/// for the base model unchanged, else the first 12 hex digits of SHA-256 over the base
/// revision, the sampling defaults and every LoRA (expert, strength, and its file hashed as
/// model weights are: size, header, sampled data). So a checkpoint of one variant never resumes
/// on another, and a swapped LoRA file changes the revision.
pub fn variant_revision(
    base_revision: &str,
    variant: &Variant,
    hash_file: impl Fn(&mut Sha256, &std::path::Path) -> Result<(), GenerateError>,
) -> Result<String, GenerateError> {
    if variant.is_base() {
        return Ok(base_revision.to_string());
    }
    let mut hasher = Sha256::new();
    hasher.update(b"t2v-variant/1");
    hasher.update(base_revision.as_bytes());
    hasher.update(format!("{:?}", variant.sampling).as_bytes());
    for (expert, specs) in [
        ("transformer", &variant.loras.transformer),
        ("transformer_2", &variant.loras.transformer_2),
    ] {
        for spec in specs {
            hasher.update(expert.as_bytes());
            hasher.update(spec.strength.to_le_bytes());
            hash_file(&mut hasher, &spec.path)?;
        }
    }
    Ok(hasher.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SamplingConfig;

    fn lightning() -> ModelConfig {
        ModelConfig {
            name: "wan2.2-t2v-a14b-lightning".into(),
            preset: PresetChoice::Lightning,
            ..ModelConfig::default()
        }
    }

    #[test]
    fn the_lightning_preset_is_the_published_recipe() {
        let s = SamplingDefaults::of(&lightning());
        assert_eq!(s, SamplingDefaults::LIGHTNING);
        assert_eq!(
            (
                s.defaults.steps,
                s.defaults.guidance_scale,
                s.defaults.guidance_scale_2
            ),
            (4, 1.0, 1.0)
        );
        assert_eq!((s.shift, s.sampler), (Some(5.0), Sampler::FlowEuler));
        // size, frames and fps stay the base model's
        assert_eq!(
            (
                s.defaults.width,
                s.defaults.height,
                s.defaults.num_frames,
                s.defaults.fps
            ),
            (832, 480, 81, 16)
        );
        assert_eq!(
            SamplingDefaults::of(&ModelConfig::default()),
            SamplingDefaults::BASE
        );
    }

    #[test]
    fn sampling_values_replace_the_presets_and_zero_keeps_them() {
        let model = ModelConfig {
            sampling: SamplingConfig {
                steps: 6,
                guidance_scale_2: 2.0,
                sampler: SamplerChoice::Unipc,
                ..SamplingConfig::default()
            },
            ..lightning()
        };
        let s = SamplingDefaults::of(&model);
        assert_eq!(s.defaults.steps, 6);
        assert_eq!(s.defaults.guidance_scale, 1.0, "zero keeps the preset's");
        assert_eq!(s.defaults.guidance_scale_2, 2.0);
        assert_eq!(s.shift, Some(5.0), "zero keeps the preset's");
        assert_eq!(s.sampler, Sampler::Unipc);
        let base = SamplingDefaults::of(&ModelConfig {
            sampling: SamplingConfig {
                guidance_scale: 2.5,
                shift: 8.0,
                ..SamplingConfig::default()
            },
            ..ModelConfig::default()
        });
        assert_eq!(base.defaults.steps, 40);
        assert_eq!(
            (base.defaults.guidance_scale, base.single_expert_guidance),
            (2.5, 2.5)
        );
        assert_eq!(base.shift, Some(8.0));
    }

    #[test]
    fn a_requests_explicit_shift_and_sampler_win() {
        let s = SamplingDefaults::LIGHTNING;
        assert_eq!(s.shift_for(None), Some(5.0));
        assert_eq!(s.shift_for(Some(3.0)), Some(3.0));
        assert_eq!(s.sampler_for(Sampler::Unspecified), Sampler::FlowEuler);
        assert_eq!(s.sampler_for(Sampler::Unipc), Sampler::Unipc);
        assert_eq!(SamplingDefaults::BASE.shift_for(None), None);
    }

    #[test]
    fn loras_go_to_their_experts() {
        let lora = |file: &str, expert| LoraConfig {
            file: file.into(),
            strength: 0.5,
            expert,
        };
        let experts = expert_loras(&[
            lora("high", LoraExpert::Transformer),
            lora("both", LoraExpert::Both),
            lora("low", LoraExpert::Transformer2),
        ]);
        let paths = |specs: &[LoraSpec]| {
            specs
                .iter()
                .map(|s| s.path.display().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&experts.transformer), ["high", "both"]);
        assert_eq!(paths(&experts.transformer_2), ["both", "low"]);
        assert!(experts.transformer.iter().all(|s| s.strength == 0.5));
    }

    #[test]
    fn the_revision_is_the_bases_for_the_base_and_covers_presets_and_loras() {
        let hash = |h: &mut Sha256, p: &std::path::Path| {
            h.update(p.display().to_string().as_bytes());
            Ok(())
        };
        let base = variant_revision("abc", &Variant::base(), hash).unwrap();
        assert_eq!(base, "abc");
        let preset_only = variant_revision("abc", &Variant::of(&lightning()), hash).unwrap();
        assert_ne!(preset_only, base);
        assert_eq!(preset_only.len(), 12);
        let with_lora = Variant::of(&ModelConfig {
            loras: vec![LoraConfig {
                file: "/l.safetensors".into(),
                strength: 1.0,
                expert: LoraExpert::Both,
            }],
            ..lightning()
        });
        let a = variant_revision("abc", &with_lora, hash).unwrap();
        assert_ne!(a, preset_only);
        let mut weaker = with_lora.clone();
        weaker.loras.transformer[0].strength = 0.5;
        assert_ne!(variant_revision("abc", &weaker, hash).unwrap(), a);
    }
}
