//! Steps 2–5 of [`WanT2V::generate_with`]: the prompt embeddings, the schedule with the initial
//! latents (or those resumed from a checkpoint) and the image's condition, and the denoising loop
//! over the experts fetched on demand.

use tch::Tensor;

use super::conditioning::{LatentCondition, VideoSize};
use super::oom::out_of_memory;
use super::{initial_noise, synchronize, GenerationParams, OnDemand, ResolvedParams, WanT2V};
use crate::checkpoint::DenoiseState;
use crate::denoise::{denoise, DenoiseInput, DenoiseSettings, Experts, StepControl, StepEnd};
use crate::error::{PipelineError, Result};
use crate::memory::ExpertPlacement;
use crate::scheduler::Scheduler;

/// Step 2's output of [`WanT2V::generate_with`]: the prompt embeddings and, with CFG, the
/// negative ones, on the device.
pub(super) struct PromptEmbeds {
    positive: Tensor,
    negative: Option<Tensor>,
}

/// What the denoising loop starts from (steps 3 and 4 of [`WanT2V::generate_with`]).
pub(super) struct PreparedRun {
    scheduler: Box<dyn Scheduler>,
    /// On the device.
    latents: Tensor,
    start_step: usize,
    /// The image's latents and mask, for image-to-video requests.
    condition: Option<LatentCondition>,
}

impl WanT2V {
    /// Step 2 of [`Self::generate_with`]: the prompt's embeddings and, with `do_cfg`, the
    /// negative prompt's; the device is synchronised so that the phase's time is its own.
    pub(super) fn encode_request_prompts(
        &mut self,
        params: &GenerationParams,
        do_cfg: bool,
    ) -> Result<PromptEmbeds> {
        let (positive, negative) = self
            .encode_prompt(
                &params.prompt,
                params.negative_prompt.as_deref(),
                do_cfg,
                params.max_sequence_length,
            )
            .map_err(out_of_memory)?;
        synchronize(self.options.device);
        Ok(PromptEmbeds { positive, negative })
    }

    /// Steps 3 and 4 of [`Self::generate_with`]: the schedule, the initial latents on the device
    /// (drawn from the seed, or restored with the scheduler from `resume`) and, with an image,
    /// its condition (4b).
    pub(super) fn prepare_run(
        &self,
        params: &GenerationParams,
        resolved: &ResolvedParams,
        resume: Option<&DenoiseState>,
    ) -> Result<PreparedRun> {
        let mut scheduler = self.scheduler.build(params.sampler);
        scheduler.set_timesteps(params.num_inference_steps, params.shift)?;
        let (latents, start_step) = initial_latents(scheduler.as_mut(), params, resolved, resume)?;
        let latents = latents.f_to_device(self.options.device)?;
        let condition = self
            .prepare_condition(params, resolved)
            .map_err(out_of_memory)?;
        Ok(PreparedRun {
            scheduler,
            latents,
            start_step,
            condition,
        })
    }

    /// Step 5 of [`Self::generate_with`]: the denoising loop from `prepared` with the request's
    /// step cache; returns the final latents (the image's condition taken off) and the cache's
    /// report. The prompt embeddings are dropped before the decode needs their memory.
    pub(super) fn denoise_request(
        &self,
        params: &GenerationParams,
        resolved: &ResolvedParams,
        prepared: PreparedRun,
        embeds: PromptEmbeds,
        do_cfg: bool,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<(Tensor, Option<crate::step_cache::CacheReport>)> {
        let PreparedRun {
            mut scheduler,
            latents,
            start_step,
            condition,
        } = prepared;
        let input = DenoiseInput {
            latents,
            prompt_embeds: &embeds.positive,
            negative_prompt_embeds: embeds.negative.as_ref(),
            start_step,
        };
        let cache = crate::step_cache::run_cache(
            params.step_cache.as_ref(),
            params.num_inference_steps,
            do_cfg,
            self.parallel.is_some(),
        )?;
        let latents = self.denoise_latents(
            scheduler.as_mut(),
            resolved,
            input,
            condition.as_ref(),
            cache.as_ref(),
            on_step,
        )?;
        let latents = match &condition {
            Some(condition) => condition.final_latents(latents)?,
            None => latents,
        };
        Ok((latents, cache.map(crate::step_cache::finish_run)))
    }

    /// Step 4b of [`Self::generate_with`]: `prepare_latents`' image conditioning, when the
    /// request has an image ([`Self::resolve`] checked that the model takes one).
    fn prepare_condition(
        &self,
        params: &GenerationParams,
        resolved: &ResolvedParams,
    ) -> Result<Option<LatentCondition>> {
        let Some(image) = &params.image else {
            return Ok(None);
        };
        let size = VideoSize {
            width: resolved.width,
            height: resolved.height,
            num_frames: resolved.num_frames,
        };
        LatentCondition::prepare(self.kind, &self.vae, image, size, self.options.device)
    }

    /// Step 5 of [`Self::generate_with`]: the denoising loop over the experts (fetched on
    /// demand), then — even after a failure — no expert left on the device when swapping.
    fn denoise_latents(
        &self,
        scheduler: &mut dyn Scheduler,
        resolved: &ResolvedParams,
        input: DenoiseInput<'_>,
        condition: Option<&LatentCondition>,
        cache: Option<&std::cell::RefCell<crate::step_cache::StepCache>>,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<Tensor> {
        let high = OnDemand {
            expert: &self.high,
            other: self.low.as_ref(),
            condition,
        };
        let low = self.low.as_ref().map(|low| OnDemand {
            expert: low,
            other: Some(&self.high),
            condition,
        });
        let experts = Experts {
            high: &high,
            low: low.as_ref(),
        };
        let settings = DenoiseSettings {
            guidance_scale: resolved.guidance_scale,
            guidance_scale_2: resolved.guidance_scale_2,
            boundary_ratio: self.model_dir.boundary_ratio(),
            expand_timesteps: self.model_dir.expand_timesteps(),
        };
        let denoised = match &self.parallel {
            None => match cache {
                None => denoise(&experts, scheduler, &settings, input, on_step),
                Some(cache) => crate::step_cache::denoise_cached(
                    &experts, cache, scheduler, &settings, input, on_step,
                ),
            },
            Some(run) => self.denoise_on_ranks(
                run,
                (&high, low.as_ref()),
                scheduler,
                &settings,
                input,
                on_step,
            ),
        };
        // Swapping keeps no expert on the device outside the loop, even after a failure.
        if self.options.memory.experts == ExpertPlacement::SwapExperts {
            for expert in std::iter::once(&self.high).chain(self.low.as_ref()) {
                expert.park()?;
            }
        }
        denoised.map_err(out_of_memory)
    }
}

/// Step 4 of [`WanT2V::generate_with`]: the initial noise from the seed and step 0, or the
/// saved latents and step with the scheduler restored from `resume`; on the CPU.
fn initial_latents(
    scheduler: &mut dyn Scheduler,
    params: &GenerationParams,
    resolved: &ResolvedParams,
    resume: Option<&DenoiseState>,
) -> Result<(Tensor, usize)> {
    match resume {
        None => Ok((initial_noise(resolved.seed, resolved.latent_shape)?, 0)),
        Some(state) => {
            check_resume(state, params, resolved)?;
            scheduler.restore(&state.scheduler)?;
            Ok((state.latents.to_tensor()?, state.step))
        }
    }
}

/// Whether `state` can continue a run of `params`: same schedule length and seed, a step inside
/// the schedule and latents of the request's shape.
fn check_resume(
    state: &DenoiseState,
    params: &GenerationParams,
    resolved: &ResolvedParams,
) -> Result<()> {
    let problem = if state.total_steps != params.num_inference_steps {
        Some(format!(
            "saved for {} steps, the request has {}",
            state.total_steps, params.num_inference_steps
        ))
    } else if state.seed != resolved.seed {
        Some(format!(
            "saved for seed {}, the request has {}",
            state.seed, resolved.seed
        ))
    } else if state.step == 0 || state.step >= state.total_steps {
        Some(format!(
            "step {} is not inside the schedule of {}",
            state.step, state.total_steps
        ))
    } else if state.latents.shape != resolved.latent_shape {
        Some(format!(
            "latents of shape {:?}, the request needs {:?}",
            state.latents.shape, resolved.latent_shape
        ))
    } else {
        None
    };
    match problem {
        Some(message) => Err(PipelineError::invalid(
            "checkpoint",
            format!("{message} — it belongs to another request; start from step 0"),
        )),
        None => Ok(()),
    }
}
