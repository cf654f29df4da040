//! [`WanT2V::load`]: every component read from a model directory onto the device, LoRAs fused
//! into the experts, FP8 applied and the parkable components parked as the memory policy says.

use std::path::Path;

use tch::nn;

use super::{Expert, LoadOptions, WanT2V};
use crate::error::{PipelineError, Result};
use crate::loader;
use crate::memory::{ExpertPlacement, ParkedWeights};
use crate::model_dir::{Component, ModelDir};
use crate::scheduler::SchedulerConfig;
use crate::wan::prompt::{T5Tokenizer, TextEncoder};
use crate::wan::text_encoder::{EmbeddingKey, UMT5Config, UMT5EncoderModel};
use crate::wan::vae::AutoencoderKLWan;
use crate::wan::{fp8, WanTransformer3DModel};

impl WanT2V {
    /// Checks that the directory is complete, then loads every component. Under
    /// [`ExpertPlacement::SwapExperts`] each expert is parked as soon as it is loaded
    /// (`transformer_2` first), so the device never holds both experts and holds none until
    /// the denoising loop fetches one.
    pub fn load(model_dir: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        Self::load_with_loras(model_dir, options, &crate::lora::ExpertLoras::default())
    }

    /// [`Self::load`], with LoRA files fused into each expert's weights as it loads (before it is
    /// parked under [`ExpertPlacement::SwapExperts`]); see [`crate::lora`]. A LoRA for
    /// `transformer_2` on a single-expert model, or one that does not fit, is refused here.
    pub fn load_with_loras(
        model_dir: impl AsRef<Path>,
        options: LoadOptions,
        loras: &crate::lora::ExpertLoras,
    ) -> Result<Self> {
        let model_dir = ModelDir::open(model_dir)?;
        model_dir.check_complete()?;
        let kind = model_dir.kind()?;
        if !loras.transformer_2.is_empty() && !model_dir.has(Component::Transformer2) {
            return Err(crate::lora::LoraError::NoSecondExpert.into());
        }
        if options.dtype == fp8::FP8 && options.device.is_cuda() {
            fp8::probe_scaled_mm(options.device).map_err(fp8_unsupported)?;
        }
        let scheduler = SchedulerConfig::from_file(
            &model_dir
                .path(Component::Scheduler)?
                .join("scheduler_config.json"),
        )?;
        // Each parkable component is parked as soon as it is loaded, so that under SwapExperts
        // the device never holds both experts: transformer_2, the text encoder, then transformer.
        let low = if model_dir.has(Component::Transformer2) {
            let low = load_expert(&model_dir, Component::Transformer2, options, loras)?;
            low.park()?;
            Some(low)
        } else {
            None
        };
        let (text, text_weights) = load_text_encoder(&model_dir, options)?;
        if let Some(weights) = &text_weights {
            weights.park()?;
        }
        let high = load_expert(&model_dir, Component::Transformer, options, loras)?;
        // Parked too, so that the first job's text encoding runs with no expert on the device,
        // as every later job's does (the loop fetches the expert it needs): otherwise the first
        // job alone peaks at the text encoder plus an expert, above the memory estimate.
        high.park()?;
        if let Some(low) = &low {
            if low.model.kind() != high.model.kind() {
                return Err(PipelineError::invalid(
                    "transformer_2",
                    "dtype differs from transformer's",
                ));
            }
        }
        let vae = load_vae(&model_dir, options)?;
        Ok(Self {
            model_dir,
            kind,
            options,
            text: Some(text),
            text_weights,
            high,
            low,
            vae,
            scheduler,
            parallel: None,
        })
    }
}

/// The load error of `dtype = fp8` on a device whose `_scaled_mm` probe failed.
fn fp8_unsupported(probe: PipelineError) -> PipelineError {
    PipelineError::invalid(
        "dtype fp8",
        format!("this GPU does not run FP8 matrix products (needs compute capability 8.9 or later: Ada, Hopper) — {probe}; load in bf16"),
    )
}

/// The expert `component` (`transformer` or `transformer_2`) with its LoRAs of `loras` fused in,
/// its blocks in FP8 when `options` ask for it (after the LoRAs, so that they apply; before
/// parking, so the FP8 form is parked) and, under [`ExpertPlacement::SwapExperts`], a host copy
/// of its weights to park it with; resident on the device.
fn load_expert(
    model_dir: &ModelDir,
    component: Component,
    options: LoadOptions,
    loras: &crate::lora::ExpertLoras,
) -> Result<Expert> {
    let (device, dtype) = (options.device, options.dtype);
    let dir = model_dir.path(component)?;
    let (model, vs) = WanTransformer3DModel::load(&dir, fp8::compute_kind(dtype), device)?;
    let expert_loras = match component {
        Component::Transformer2 => &loras.transformer_2,
        _ => &loras.transformer,
    };
    crate::lora::fuse_loras(&vs, expert_loras)?;
    let model = if dtype == fp8::FP8 {
        fp8::quantize_blocks(model, &vs)?
    } else {
        model
    };
    let weights = if options.memory.experts == ExpertPlacement::SwapExperts {
        Some(ParkedWeights::new(
            vs.variables().into_iter().collect(),
            device,
        )?)
    } else {
        None
    };
    Ok(Expert { model, weights })
}

/// The VAE in `options.vae_dtype`, tiled when the memory policy says so.
fn load_vae(model_dir: &ModelDir, options: LoadOptions) -> Result<AutoencoderKLWan> {
    let mut vae = AutoencoderKLWan::load(
        &model_dir.path(Component::Vae)?,
        options.device,
        options.vae_dtype,
    )?;
    if let Some(tiling) = options.memory.vae_tiling {
        vae.enable_tiling(tiling)?;
    }
    Ok(vae)
}

/// Tokenizer + umT5 encoder; with `offload_text_encoder` the encoder is built in a VarStore of
/// our own so its weights can be parked (as `UMT5EncoderModel::load` otherwise does).
fn load_text_encoder(
    model_dir: &ModelDir,
    options: LoadOptions,
) -> Result<(TextEncoder, Option<ParkedWeights>)> {
    if !options.memory.offload_text_encoder {
        let text = TextEncoder::load(
            model_dir.root(),
            fp8::compute_kind(options.dtype),
            options.device,
        )?;
        return Ok((text, None));
    }
    let tokenizer = T5Tokenizer::from_dir(&model_dir.path(Component::Tokenizer)?)?;
    let dir = model_dir.path(Component::TextEncoder)?;
    let cfg = UMT5Config::from_file(&dir.join("config.json"))?;
    let names = loader::tensor_names(&dir)?;
    let embedding =
        if !names.contains("shared.weight") && names.contains("encoder.embed_tokens.weight") {
            EmbeddingKey::EncoderEmbedTokens
        } else {
            EmbeddingKey::Shared
        };
    let mut vs = nn::VarStore::new(options.device);
    vs.set_kind(fp8::compute_kind(options.dtype));
    let model = UMT5EncoderModel::with_embedding(&cfg, vs.root(), embedding)?;
    loader::load_weights(&vs, &dir)?;
    vs.freeze();
    let weights = ParkedWeights::new(vs.variables().into_iter().collect(), options.device)?;
    Ok((TextEncoder::new(tokenizer, model), Some(weights)))
}
