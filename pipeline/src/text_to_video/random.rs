//! [`WanT2V::random`]: a pipeline with random weights built from a model directory's configs,
//! for benchmarks at full size without checkpoints on disk.

use std::path::Path;

use tch::{nn, Kind};

use super::{Expert, LoadOptions, WanT2V};
use crate::error::Result;
use crate::loader::random_weights;
use crate::memory::{ExpertPlacement, ParkedWeights};
use crate::model_dir::{Component, ModelDir};
use crate::scheduler::SchedulerConfig;
use crate::wan::prompt::{T5Tokenizer, TextEncoder};
use crate::wan::text_encoder::{UMT5Config, UMT5EncoderModel};
use crate::wan::vae::{AutoencoderKLWan, VaeConfig};
use crate::wan::{fp8, TransformerConfig, WanTransformer3DModel};

impl WanT2V {
    /// Builds every component from the configs in `model_dir` with random weights drawn on the
    /// device instead of read from checkpoints — for benchmarks at full size with no weights
    /// on disk. The directory needs `model_index.json`, the components' `config.json`, the
    /// tokenizer and the scheduler config. Weights follow [`random_weights`] from `seed`;
    /// the memory policy is applied as [`Self::load`] does.
    pub fn random(model_dir: impl AsRef<Path>, options: LoadOptions, seed: i64) -> Result<Self> {
        let model_dir = ModelDir::open(model_dir)?;
        let kind = model_dir.kind()?;
        let (device, dtype) = (options.device, options.dtype);
        let policy = options.memory;
        let swap = policy.experts == ExpertPlacement::SwapExperts;
        tch::manual_seed(seed);
        let scheduler = SchedulerConfig::from_file(
            &model_dir
                .path(Component::Scheduler)?
                .join("scheduler_config.json"),
        )?;
        let random_store = |kind: Kind| {
            let mut vs = nn::VarStore::new(device);
            vs.set_kind(kind);
            vs
        };
        let build_expert = |component: Component| -> Result<Expert> {
            let dir = model_dir.path(component)?;
            let cfg = TransformerConfig::from_file(&dir.join("config.json"))?;
            let vs = random_store(fp8::compute_kind(dtype));
            let model = WanTransformer3DModel::new(&cfg, vs.root())?;
            random_weights(&vs)?;
            let model = if dtype == fp8::FP8 {
                fp8::quantize_blocks(model, &vs)?
            } else {
                model
            };
            let weights = if swap {
                let parked = ParkedWeights::new(vs.variables().into_iter().collect(), device)?;
                parked.park()?;
                Some(parked)
            } else {
                None
            };
            Ok(Expert { model, weights })
        };
        let low = if model_dir.has(Component::Transformer2) {
            Some(build_expert(Component::Transformer2)?)
        } else {
            None
        };
        let tokenizer = T5Tokenizer::from_dir(&model_dir.path(Component::Tokenizer)?)?;
        let text_cfg =
            UMT5Config::from_file(&model_dir.path(Component::TextEncoder)?.join("config.json"))?;
        let text_vs = random_store(fp8::compute_kind(dtype));
        let text_model = UMT5EncoderModel::new(&text_cfg, text_vs.root())?;
        random_weights(&text_vs)?;
        let text_weights = if policy.offload_text_encoder {
            let parked = ParkedWeights::new(text_vs.variables().into_iter().collect(), device)?;
            parked.park()?;
            Some(parked)
        } else {
            None
        };
        // Swapped experts stay parked until the denoising loop fetches one, as `load` leaves them.
        let high = build_expert(Component::Transformer)?;
        let vae_cfg = VaeConfig::load(&model_dir.path(Component::Vae)?)?;
        let vae_vs = random_store(options.vae_dtype);
        let mut vae = AutoencoderKLWan::new(&vae_cfg, vae_vs.root())?;
        random_weights(&vae_vs)?;
        if let Some(tiling) = policy.vae_tiling {
            vae.enable_tiling(tiling)?;
        }
        Ok(Self {
            model_dir,
            kind,
            options,
            text: Some(TextEncoder::new(tokenizer, text_model)),
            text_weights,
            high,
            low,
            vae,
            scheduler,
            parallel: None,
        })
    }
}
