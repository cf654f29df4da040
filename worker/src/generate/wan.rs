//! The Wan2.2 pipeline (t2v-pipeline's [`WanT2V`]) behind [`VideoGenerator`].
//!
//! - [`WanGenerator::load_model`] loads the `[model]` section: the variant (LoRAs fused at load,
//!   the preset's sampling defaults, [`super::variant`]), device, dtype, memory policy, budget
//!   and GPUs. [`WanGenerator::load`] resolves `[model] device / dtype / memory_policy` and loads
//!   the diffusers-format directory as it is; the model revision ([`model_revision`]) is a short digest of
//!   its configs and weights (header and sampled data of every safetensors file), cached across
//!   restarts, and the precision ([`precision`]) names the weights dtype and device class.
//! - [`WanGenerator::run`] maps a [`JobSpec`] onto [`GenerationParams`] (prompts longer than the
//!   token limit are refused, not truncated) and returns the pipeline's f32 frames; it resumes
//!   from a [`Checkpoint`] (a t2v-pipeline [`DenoiseState`] file) and takes one whenever the
//!   hooks ask;
//!   [`VideoGenerator::generate`] converts them to RGB24 as diffusers' `numpy_to_pil` does.
//! - Pipeline errors become [`GenerateError`]s; out-of-memory messages name settings that fit.
//! - [`WanGenerator::with_devices`] spreads every job over the GPUs of `[model] devices`
//!   (CFG × Ulysses, [`devices`]); checkpoints stay independent of the GPU count.
//! - [`WanGenerator::with_memory_budget`] turns on the memory preflight ([`crate::generate::preflight`]):
//!   a job whose estimated peak does not fit fails with [`GenerateError::OutOfMemory`] before
//!   any work, naming the estimate, the limit and settings that fit.
//!
//! This file holds [`WanGenerator`] and its run; beside it, `load` resolves the load options and
//! loads, `params` maps a job onto [`GenerationParams`], `budget` is the memory preflight and
//! `revision` computes the model revision and precision.

use std::time::Duration;

use t2v_pipeline::checkpoint::DenoiseState;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::PipelineError;
use t2v_pipeline::{GenerationOutput, GenerationParams, WanT2V};
use tch::{Kind, Tensor};

use crate::generate::preflight::MemoryLimit;
use crate::generate::variant::{SamplingDefaults, VariantCache};
use crate::generate::{
    Frames, GenerateError, Generated, JobSpec, ModelInfo, PipelineTimings, StepHooks, StepInfo,
    VideoGenerator,
};
use crate::job::checkpoints::{checkpoint_metadata, Checkpoint};

mod budget;
pub mod devices;
mod load;
mod params;
mod revision;

pub(crate) use load::published_defaults;
pub use load::{load_options, memory_policy, resolve_device, resolve_dtype};
pub use revision::{model_revision, precision};

/// A loaded Wan pipeline serving one model name.
pub struct WanGenerator {
    pipe: WanT2V,
    info: ModelInfo,
    limit: Option<MemoryLimit>,
    /// What a job's unset fields take (the variant's preset).
    sampling: SamplingDefaults,
    /// The variant's step cache, which a job's `cache_threshold` overrides.
    cache: VariantCache,
}

impl WanGenerator {
    pub fn pipeline(&self) -> &WanT2V {
        &self.pipe
    }

    /// Runs `job` (from `resume` when given) and returns the pipeline's output: frames
    /// `(F, H, W, 3)` f32 in [0, 1]. A checkpoint that does not decode or fit is ignored with a
    /// warning and the run starts from step 0.
    pub fn run(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<GenerationOutput, GenerateError> {
        let params = GenerationParams {
            step_cache: self.cache.for_job(job.cache_threshold)?,
            ..self.params(job)
        };
        if let Some(limit) = self.limit {
            self.preflight(&params, limit)?;
        }
        let state = resume.and_then(|c| match DenoiseState::from_bytes(&c.bytes) {
            Ok((state, _)) => Some(state),
            Err(e) => {
                tracing::warn!(error = %e, "the checkpoint does not decode; starting from step 0");
                None
            }
        });
        let mut result = self.run_from(job, &params, state.as_ref(), hooks);
        if let (Some(_), Err((PipelineError::InvalidInput { field, message }, _))) =
            (&state, &result)
        {
            if field == "checkpoint" {
                tracing::warn!(%message, "the checkpoint does not fit the request; starting from step 0");
                result = self.run_from(job, &params, None, hooks);
            }
        }
        result.map_err(|(e, last_step)| match e {
            PipelineError::OutOfMemory { message } => GenerateError::OutOfMemory {
                message: self.what_fits(&params, &message),
            },
            PipelineError::Canceled { step } => GenerateError::Stopped {
                at_step: (step as u32).max(last_step),
            },
            PipelineError::InvalidInput { field, message } => {
                GenerateError::InvalidInput(format!("{field}: {message}"))
            }
            other => GenerateError::Internal(other.to_string()),
        })
    }

    /// One pipeline run; on failure also the last step done.
    fn run_from(
        &mut self,
        job: &JobSpec,
        params: &GenerationParams,
        state: Option<&DenoiseState>,
        hooks: &mut dyn StepHooks,
    ) -> Result<GenerationOutput, (PipelineError, u32)> {
        let mut last_step = 0;
        let info = self.info.clone();
        let result = self.pipe.generate_with(params, state, &mut |end| {
            last_step = end.index as u32 + 1;
            let step = StepInfo {
                step: last_step,
                total: end.total as u32,
                timestep: end.timestep as f32,
            };
            let stop = hooks.on_step(step).is_break();
            if hooks.checkpoint_due(step, stop) {
                let metadata = checkpoint_metadata(job, &info, last_step);
                match DenoiseState::capture(end, job.seed).and_then(|s| s.to_bytes(&metadata)) {
                    Ok(bytes) => hooks.on_checkpoint(Checkpoint {
                        step: last_step,
                        bytes,
                    }),
                    Err(e) => tracing::warn!(error = %e, step = last_step, "no checkpoint taken"),
                }
            }
            if stop {
                StepControl::Stop
            } else {
                StepControl::Continue
            }
        });
        result.map_err(|e| (e, last_step))
    }
}

impl VideoGenerator for WanGenerator {
    fn model(&self) -> ModelInfo {
        self.info.clone()
    }

    fn generate(
        &mut self,
        job: &JobSpec,
        resume: Option<&Checkpoint>,
        hooks: &mut dyn StepHooks,
    ) -> Result<Generated, GenerateError> {
        let output = self.run(job, resume, hooks)?;
        Ok(Generated {
            frames: to_rgb24(&output.frames)?,
            timings: timings(&output),
            step_cache: output
                .step_cache
                .as_ref()
                .map(super::variant::StepCacheSummary::of),
        })
    }
}

/// The pipeline's phase timings in the worker's terms.
pub fn timings(output: &GenerationOutput) -> PipelineTimings {
    PipelineTimings {
        text_encode: output.timings.text_encode,
        denoise: output.timings.denoise,
        vae_decode: output.timings.vae_decode,
    }
}

/// `(F, H, W, 3)` f32 in [0, 1] → RGB24: `round(x · 255)` (half to even, as numpy) as
/// diffusers' `numpy_to_pil`.
pub fn to_rgb24(frames: &Tensor) -> Result<Frames, GenerateError> {
    let internal = |e: tch::TchError| GenerateError::Internal(format!("frames to RGB24: {e}"));
    let size = frames.size();
    let [count, height, width, 3] = size[..] else {
        return Err(GenerateError::Internal(format!(
            "frames have shape {size:?}, expected (F, H, W, 3)"
        )));
    };
    let bytes = frames
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_mul_scalar(255.0))
        .and_then(|t| t.f_round())
        .and_then(|t| t.f_clamp(0.0, 255.0))
        .and_then(|t| t.f_to_kind(Kind::Uint8))
        .and_then(|t| t.f_contiguous())
        .map_err(internal)?;
    let rgb = Vec::<u8>::try_from(&bytes.flatten(0, -1)).map_err(internal)?;
    Ok(Frames {
        width: width as u32,
        height: height as u32,
        count: count as u32,
        rgb,
    })
}

/// How long a duration is, for one-line summaries: `1.23s`.
pub fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests;
