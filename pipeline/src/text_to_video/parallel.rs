//! [`WanT2V`] over several ranks ([`crate::parallel`]): [`WanT2V::set_parallel`] places the
//! ranks; the denoising loop then drives them through a [`crate::parallel::RankPool`] instead
//! of calling the experts itself, and with more than one device the VAE decode deals its tiles
//! out to the devices. Everything else — the prompt, the noise, the scheduler, the callback and
//! its checkpoints — stays on the caller's thread and rank 0's device, as in a one-device run.

use tch::{Device, Tensor};

use super::{Conditioned, OnDemand, WanT2V};
use crate::denoise::{
    denoise, DenoiseInput, DenoiseSettings, Expert as ExpertId, Experts, StepControl, StepEnd,
};
use crate::error::{PipelineError, Result};
use crate::memory::ExpertPlacement;
use crate::parallel::decode::decode_tiles_parallel;
use crate::parallel::{run_ranks, ParallelPlan, RankModels};
use crate::scheduler::Scheduler;

/// The ranks of a pipeline and the copies of the experts on devices other than rank 0's.
pub struct ParallelRun {
    plan: ParallelPlan,
    replicas: Vec<RankModels>,
}

impl ParallelRun {
    pub fn plan(&self) -> &ParallelPlan {
        &self.plan
    }

    /// Whether the ranks span more than one device (then the VAE decode is spread too).
    pub(super) fn decodes_on_several_devices(&self) -> bool {
        self.plan.distinct_devices().len() > 1
    }
}

impl WanT2V {
    /// Runs the next jobs on the ranks of `plan` (`None`: on the pipeline's device alone, the
    /// default). Rank 0 must be on the pipeline's device; the experts are copied once to every
    /// other device of the plan (ranks placed on one device share one copy). Swapped experts
    /// ([`ExpertPlacement::SwapExperts`]) work only with every rank on the pipeline's device.
    pub fn set_parallel(&mut self, plan: Option<ParallelPlan>) -> Result<()> {
        let Some(plan) = plan else {
            self.parallel = None;
            return Ok(());
        };
        let home = plan.devices[0];
        if home != self.options.device {
            return Err(PipelineError::invalid(
                "parallel plan",
                format!(
                    "rank 0 is on {home:?}, the pipeline on {:?}; put rank 0 on the pipeline's device",
                    self.options.device
                ),
            ));
        }
        for expert in std::iter::once(&self.high).chain(self.low.as_ref()) {
            plan.layout
                .check(expert.model.config().num_attention_heads)?;
        }
        let others: Vec<Device> = plan
            .distinct_devices()
            .into_iter()
            .filter(|&d| d != home)
            .collect();
        if !others.is_empty() && self.options.memory.experts == ExpertPlacement::SwapExperts {
            return Err(PipelineError::invalid(
                "parallel plan",
                "swapped experts keep one expert on one device; use the resident policy with several GPUs",
            ));
        }
        // Drop an earlier plan's replicas before making new ones.
        self.parallel = None;
        let resident = self.home_models()?;
        let replicas = others
            .iter()
            .map(|&d| resident.replica(d))
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(layout = %plan.layout, devices = ?plan.devices, "parallel denoising");
        self.parallel = Some(ParallelRun { plan, replicas });
        Ok(())
    }

    /// The ranks jobs run on, when [`Self::set_parallel`] set some.
    pub fn parallel_plan(&self) -> Option<&ParallelPlan> {
        self.parallel.as_ref().map(ParallelRun::plan)
    }

    /// Handles on the experts of rank 0's device, wherever their weights are right now.
    fn home_models(&self) -> Result<RankModels> {
        Ok(RankModels {
            high: self.high.model.share()?,
            low: self.low.as_ref().map(|l| l.model.share()).transpose()?,
        })
    }

    /// The denoising loop with the noise predictions computed by the ranks of `run`; a swapped
    /// expert is fetched on the caller's thread before the ranks use it.
    pub(super) fn denoise_on_ranks(
        &self,
        run: &ParallelRun,
        (high, low): (&OnDemand<'_>, Option<&OnDemand<'_>>),
        scheduler: &mut dyn Scheduler,
        settings: &DenoiseSettings,
        input: DenoiseInput<'_>,
        on_step: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
    ) -> Result<Tensor> {
        let models = RankModels::for_ranks(&run.plan, &self.home_models()?, &run.replicas)?;
        let condition = high.condition;
        let prepare_high = || high.make_resident();
        let prepare_low = low.map(|low| move || low.make_resident());
        run_ranks(&run.plan, models, |pool| {
            let high = pool.expert(ExpertId::High, Some(&prepare_high));
            let low = prepare_low
                .as_ref()
                .map(|prepare| pool.expert(ExpertId::Low, Some(prepare)));
            match condition {
                None => {
                    let experts = Experts {
                        high: &high,
                        low: low.as_ref(),
                    };
                    denoise(&experts, scheduler, settings, input, on_step)
                }
                // the ranks see the conditioned input; the loop the plain latents
                Some(condition) => {
                    let high = Conditioned {
                        inner: &high,
                        condition,
                    };
                    let low = low.as_ref().map(|inner| Conditioned { inner, condition });
                    let experts = Experts {
                        high: &high,
                        low: low.as_ref(),
                    };
                    denoise(&experts, scheduler, settings, input, on_step)
                }
            }
        })?
    }

    /// The VAE decode with its tiles dealt to the devices of `run` (the pipeline's tiling, or
    /// diffusers' default tiles when it has none).
    pub(super) fn decode_on_ranks(&self, run: &ParallelRun, latents: &Tensor) -> Result<Tensor> {
        let tiling = self.vae.tiling().unwrap_or_default();
        decode_tiles_parallel(&self.vae, latents, tiling, &run.plan.distinct_devices())
    }
}
