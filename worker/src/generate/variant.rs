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
//!
//! `[model.cache]` turns on step caching for the variant ([`CacheConfig`], t2v-pipeline's
//! `step_cache`): First-Block-Cache or MagCache with a threshold, which a request's
//! `cache_threshold` overrides (0 = off for that job). A step-distilled variant — the `lightning`
//! preset, or at most [`DISTILLED_MAX_STEPS`] steps with guidance off on both experts — refuses
//! a cache, at config load and per request: its few steps are far apart, so there is nothing
//! close enough to reuse (LightX2V refuses the combination too).

use sha2::{Digest, Sha256};
use t2v_contract::defaults::{SINGLE_EXPERT_GUIDANCE, WAN22_T2V_A14B};
use t2v_contract::ModelDefaults;
use t2v_pipeline::lora::{ExpertLoras, LoraSpec};
use t2v_pipeline::step_cache::{
    CachePolicy, MagSettings, StepCacheConfig, DISTILLED_MAX_STEPS, MAG_MAX_SKIP_STEPS,
    MAG_RETENTION_RATIO,
};
use t2v_proto::v1::Sampler;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

    /// `[model] preset` with the non-zero `[model.sampling]` values in place of the preset's,
    /// for Wan2.2 T2V-A14B.
    pub fn of(model: &ModelConfig) -> Self {
        Self::for_model(model, WAN22_T2V_A14B)
    }

    /// [`Self::of`] for the model whose published defaults are `base` (the model directory's
    /// kind: T2V-A14B, I2V-A14B or TI2V-5B). Lightning is a T2V-A14B distillation and keeps its
    /// own recipe.
    pub fn for_model(model: &ModelConfig, base: ModelDefaults) -> Self {
        let mut resolved = match model.preset {
            PresetChoice::Base => Self {
                defaults: base,
                ..Self::BASE
            },
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

/// The variant of `[model]`: its sampling defaults, its LoRAs per expert and its step cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub sampling: SamplingDefaults,
    pub loras: ExpertLoras,
    pub cache: VariantCache,
}

impl Variant {
    /// The base model as it is: its defaults, no LoRAs.
    pub fn base() -> Self {
        Self {
            sampling: SamplingDefaults::BASE,
            loras: ExpertLoras::default(),
            cache: VariantCache::default(),
        }
    }

    pub fn of(model: &ModelConfig) -> Self {
        Self::for_model(model, WAN22_T2V_A14B)
    }

    /// [`Self::of`] for the model whose published defaults are `base`.
    pub fn for_model(model: &ModelConfig, base: ModelDefaults) -> Self {
        Self {
            sampling: SamplingDefaults::for_model(model, base),
            loras: expert_loras(&model.loras),
            cache: VariantCache::of(model),
        }
    }

    /// Whether this is the base model unchanged (so its revision is the directory's).
    pub fn is_base(&self) -> bool {
        self.loras.is_empty() && self.sampling == SamplingDefaults::BASE
    }
}

/// `[model.cache]`: step caching of the variant's jobs (t2v-pipeline `step_cache`, matched to
/// diffusers' `FirstBlockCacheConfig` / `MagCacheConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// `off` (default), `first_block` (First-Block-Cache: block 0 always runs; the rest is
    /// skipped while its residual changed by at most `threshold`, relative L1) or `mag`
    /// (MagCache: whole forwards skipped while the accumulated magnitude-ratio error stays at
    /// most `threshold`; needs `mag_ratios`).
    pub kind: CacheKind,
    /// 0 < threshold <= 1; unset = diffusers' default (first_block 0.05, mag 0.06). Higher skips
    /// more forwards and changes the video more. A request's `cache_threshold` replaces it.
    pub threshold: Option<f64>,
    /// mag: most forwards skipped in a row; unset = 3.
    pub max_skip_steps: Option<usize>,
    /// mag: share of the first steps never skipped, 0..=1; unset = 0.2.
    pub retention_ratio: Option<f64>,
    /// mag: the model's magnitude ratios, one per step of some schedule (resampled to the job's
    /// steps). Get them with `calibrate = true`: one run logs them.
    pub mag_ratios: Vec<f32>,
    /// mag: skip nothing; measure the ratios and log them ("MagCache calibration").
    pub calibrate: bool,
}

/// `[model.cache] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CacheKind {
    #[default]
    Off,
    FirstBlock,
    Mag,
}

/// diffusers' default thresholds: `FirstBlockCacheConfig` 0.05, `MagCacheConfig` 0.06.
const FIRST_BLOCK_THRESHOLD: f64 = 0.05;
const MAG_THRESHOLD: f64 = 0.06;

impl CacheConfig {
    /// The pipeline's cache config, `None` when off.
    pub fn step_cache(&self) -> Option<StepCacheConfig> {
        let (policy, default_threshold) = match self.kind {
            CacheKind::Off => return None,
            CacheKind::FirstBlock => (CachePolicy::FirstBlock, FIRST_BLOCK_THRESHOLD),
            CacheKind::Mag => (
                CachePolicy::Mag(MagSettings {
                    max_skip_steps: self.max_skip_steps.unwrap_or(MAG_MAX_SKIP_STEPS),
                    retention_ratio: self.retention_ratio.unwrap_or(MAG_RETENTION_RATIO),
                    mag_ratios: (!self.mag_ratios.is_empty()).then(|| self.mag_ratios.clone()),
                    calibrate: self.calibrate,
                }),
                MAG_THRESHOLD,
            ),
        };
        Some(StepCacheConfig {
            policy,
            threshold: self.threshold.unwrap_or(default_threshold),
        })
    }

    /// At config load: a valid cache, and none on a step-distilled variant.
    pub fn validate(&self, model: &ModelConfig) -> Result<(), String> {
        let Some(cache) = self.step_cache() else {
            return Ok(());
        };
        if model.backend != crate::config::Backend::Wan {
            return Err("model.cache is set but model.backend is not wan — only the Wan pipeline caches steps; set kind = \"off\" or backend = \"wan\"".into());
        }
        if cache.threshold <= 0.0 {
            return Err(format!(
                "model.cache.threshold must be above 0 (0 is off: set kind = \"off\" instead), got {}",
                cache.threshold
            ));
        }
        cache.validate().map_err(|e| format!("model.cache: {e}"))?;
        if is_distilled(model) {
            return Err(format!(
                "model.cache.kind = {:?} is refused for the step-distilled variant {:?} (preset lightning, or at most {DISTILLED_MAX_STEPS} steps with guidance off): its steps are too far apart to reuse — set kind = \"off\"",
                cache.kind_name(),
                model.name
            ));
        }
        Ok(())
    }
}

/// What a job's step cache did: the manifest's `step_cache` and the
/// `t2v_step_cache_forwards_total` counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepCacheSummary {
    /// `first_block` or `mag`.
    pub kind: String,
    pub threshold: f64,
    /// Transformer forwards of the run (each CFG pass counts).
    pub forwards: u32,
    /// Forwards whose blocks the cache skipped (all but block 0 for first_block).
    pub skipped: u32,
}

impl StepCacheSummary {
    pub fn of(report: &t2v_pipeline::step_cache::CacheReport) -> Self {
        Self {
            kind: report.kind.to_string(),
            threshold: report.threshold,
            forwards: report.forwards.len() as u32,
            skipped: report.skipped() as u32,
        }
    }
}

/// Whether `model` serves a step-distilled variant: the `lightning` preset, or at most
/// [`DISTILLED_MAX_STEPS`] steps with guidance off (at most 1.0) on both experts.
pub fn is_distilled(model: &ModelConfig) -> bool {
    let d = SamplingDefaults::of(model).defaults;
    model.preset == PresetChoice::Lightning
        || (d.steps as usize <= DISTILLED_MAX_STEPS
            && d.guidance_scale <= 1.0
            && d.guidance_scale_2 <= 1.0)
}

/// The variant's step cache and whether it is step-distilled (which refuses one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantCache {
    pub config: Option<StepCacheConfig>,
    pub distilled: bool,
}

impl VariantCache {
    pub fn of(model: &ModelConfig) -> Self {
        Self {
            config: model.cache.step_cache(),
            distilled: is_distilled(model),
        }
    }

    /// The cache of a job with the request's `cache_threshold`: unset = the variant's, 0 = off,
    /// else the variant's kind (First-Block-Cache when the variant has none) at that threshold.
    /// A cache on a step-distilled variant is refused in one line.
    pub fn for_job(
        &self,
        requested: Option<f32>,
    ) -> Result<Option<StepCacheConfig>, GenerateError> {
        let cache = match requested {
            None => self.config.clone(),
            Some(t) if t <= 0.0 => None,
            Some(t) => Some(StepCacheConfig {
                policy: self
                    .config
                    .as_ref()
                    .map_or(CachePolicy::FirstBlock, |c| c.policy.clone()),
                threshold: f64::from(t),
            }),
        };
        if cache.is_some() && self.distilled {
            return Err(GenerateError::InvalidInput(
                "cache_threshold: step caching is refused for this step-distilled variant (its few steps are too far apart to reuse) — leave cache_threshold unset or 0".into(),
            ));
        }
        Ok(cache)
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

    fn with_cache(model: ModelConfig, cache: &str) -> Result<ModelConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("worker.toml");
        let preset = match model.preset {
            PresetChoice::Base => "base",
            PresetChoice::Lightning => "lightning",
        };
        let text = format!(
            "[model]\nname = \"{}\"\nbackend = \"wan\"\npreset = \"{preset}\"\n\n[model.sampling]\nsteps = {}\nguidance_scale = {:?}\nguidance_scale_2 = {:?}\n\n[model.cache]\n{cache}\n",
            model.name, model.sampling.steps, model.sampling.guidance_scale, model.sampling.guidance_scale_2
        );
        std::fs::write(&file, text).unwrap();
        crate::config::WorkerConfig::load(Some(&file), Vec::<(String, String)>::new(), &[])
            .map(|c| c.model)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_cache_loads_from_toml_with_diffusers_defaults() {
        let model = with_cache(ModelConfig::default(), "kind = \"first_block\"").unwrap();
        let cache = VariantCache::of(&model);
        let config = cache.config.clone().unwrap();
        assert_eq!(
            (config.policy, config.threshold),
            (CachePolicy::FirstBlock, 0.05)
        );
        assert!(!cache.distilled);
        let mag = with_cache(
            ModelConfig::default(),
            "kind = \"mag\"\nthreshold = 0.1\nmag_ratios = [1.0, 1.02, 0.99]",
        )
        .unwrap();
        let Some(StepCacheConfig {
            policy: CachePolicy::Mag(settings),
            threshold,
        }) = mag.cache.step_cache()
        else {
            panic!("a MagCache config")
        };
        assert_eq!(threshold, 0.1);
        assert_eq!(
            (settings.max_skip_steps, settings.retention_ratio),
            (3, 0.2)
        );
        assert_eq!(settings.mag_ratios, Some(vec![1.0, 1.02, 0.99]));
        assert_eq!(
            VariantCache::of(&ModelConfig::default()).config,
            None,
            "off by default"
        );
    }

    #[test]
    fn bad_caches_are_refused_at_load_in_one_line() {
        for (cache, expected) in [
            ("kind = \"mag\"", "calibrate = true"),
            ("kind = \"first_block\"\nthreshold = 1.5", "0.0..=1.0"),
            ("kind = \"first_block\"\nthreshold = 0.0", "kind = \"off\""),
            ("kind = \"sometimes\"", "kind"),
        ] {
            let err = with_cache(ModelConfig::default(), cache).unwrap_err();
            assert!(
                err.contains(expected) && !err.contains('\n'),
                "{cache}: {err}"
            );
        }
        assert!(with_cache(ModelConfig::default(), "kind = \"mag\"\ncalibrate = true").is_ok());
    }

    #[test]
    fn a_cache_on_a_step_distilled_variant_is_refused_at_load() {
        let err = with_cache(lightning(), "kind = \"first_block\"").unwrap_err();
        assert!(err.contains("step-distilled"), "{err}");
        // The base preset turned into a few-step, guidance-off recipe is distilled too.
        let few_steps = ModelConfig {
            sampling: SamplingConfig {
                steps: 6,
                guidance_scale: 1.0,
                guidance_scale_2: 1.0,
                ..SamplingConfig::default()
            },
            ..ModelConfig::default()
        };
        let err = with_cache(few_steps.clone(), "kind = \"first_block\"").unwrap_err();
        assert!(err.contains("step-distilled"), "{err}");
        // Few steps with guidance on, or many steps with guidance off, are not.
        let guided = ModelConfig {
            sampling: SamplingConfig {
                guidance_scale: 0.0,
                guidance_scale_2: 0.0,
                ..few_steps.sampling.clone()
            },
            ..few_steps.clone()
        };
        assert!(with_cache(guided, "kind = \"first_block\"").is_ok());
        assert!(with_cache(lightning(), "kind = \"off\"").is_ok());
    }

    #[test]
    fn a_requests_threshold_overrides_the_variants_and_zero_turns_it_off() {
        let fbc = |threshold| StepCacheConfig {
            policy: CachePolicy::FirstBlock,
            threshold,
        };
        let variant = VariantCache {
            config: Some(fbc(0.05)),
            distilled: false,
        };
        assert_eq!(variant.for_job(None).unwrap(), Some(fbc(0.05)));
        assert_eq!(variant.for_job(Some(0.0)).unwrap(), None);
        assert_eq!(variant.for_job(Some(0.25)).unwrap(), Some(fbc(0.25)));
        let mag = VariantCache {
            config: Some(StepCacheConfig {
                policy: CachePolicy::Mag(MagSettings::default()),
                threshold: 0.06,
            }),
            distilled: false,
        };
        let job = mag.for_job(Some(0.5)).unwrap().unwrap();
        assert_eq!(
            (job.kind_name(), job.threshold),
            ("mag", 0.5),
            "the variant's kind"
        );
        let uncached = VariantCache::default();
        assert_eq!(uncached.for_job(None).unwrap(), None);
        assert_eq!(
            uncached.for_job(Some(0.1)).unwrap(),
            Some(fbc(f64::from(0.1f32)))
        );
    }

    #[test]
    fn a_request_for_a_cache_on_a_distilled_variant_is_refused() {
        let distilled = VariantCache::of(&lightning());
        assert!(distilled.distilled);
        let err = distilled.for_job(Some(0.1)).unwrap_err().to_string();
        assert!(
            err.contains("cache_threshold") && err.contains("step-distilled"),
            "{err}"
        );
        assert_eq!(distilled.for_job(Some(0.0)).unwrap(), None);
        assert_eq!(distilled.for_job(None).unwrap(), None);
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
