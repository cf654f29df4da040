//! The denoising loop of diffusers `WanPipeline.__call__` (step 6), for one or two experts.
//!
//! Per step `t` (`timesteps[i]`): pick the expert — `transformer` (high noise) with
//! `guidance_scale` when there is no boundary or `t >= boundary_ratio · num_train_timesteps`,
//! else `transformer_2` (low noise) with `guidance_scale_2`; run it on the latents cast to the
//! transformer dtype, once on the prompt and — when `guidance_scale > 1` — once on the negative
//! prompt, combine `uncond + g·(cond − uncond)`, and let the scheduler step. A callback after
//! every step can stop the run (and save `latents` plus the scheduler state to resume later
//! with `start_step`).
//!
//! The loop knows the model only through [`NoisePredictor`].

use tch::{Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::scheduler::Scheduler;
use crate::wan::transformer::WanTransformer3DModel;

/// A model that predicts the flow (or noise) for latents at a timestep given text embeddings.
pub trait NoisePredictor {
    /// The model dtype: latents and text embeddings are cast to it before `predict`.
    fn dtype(&self) -> Kind;

    /// `latents` `[B, C, F, H, W]`, `timestep` `[B]` (or `[B, tokens]`, f32), `text` `[B, L, D]`.
    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor>;

    /// One step's noise prediction; with `negative`, classifier-free guidance as the reference:
    /// `uncond + guidance · (cond − uncond)`, the two passes one after the other. A predictor
    /// that runs them at once (CFG parallel, [`crate::parallel::RankPool`]) overrides it.
    fn predict_guided(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        guidance: f64,
    ) -> Result<Tensor> {
        let noise_pred = self.predict(latents, timestep, prompt)?;
        match negative {
            None => Ok(noise_pred),
            Some(negative) => {
                let noise_uncond = self.predict(latents, timestep, negative)?;
                apply_guidance(&noise_pred, &noise_uncond, guidance)
            }
        }
    }
}

/// Classifier-free guidance: `uncond + guidance · (cond − uncond)`, in the reference's order.
pub fn apply_guidance(cond: &Tensor, uncond: &Tensor, guidance: f64) -> Result<Tensor> {
    Ok(uncond.f_add(&cond.f_sub(uncond)?.f_mul_scalar(guidance)?)?)
}

impl NoisePredictor for WanTransformer3DModel {
    fn dtype(&self) -> Kind {
        self.kind()
    }

    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        self.forward(latents, timestep, text)
    }
}

/// Which expert ran a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Expert {
    /// `transformer`: the high-noise expert, or the only one.
    #[serde(rename = "transformer")]
    High,
    /// `transformer_2`: the low-noise expert.
    #[serde(rename = "transformer_2")]
    Low,
}

/// The models of a pipeline: `high` is `transformer`, `low` is `transformer_2` (two-expert
/// Wan2.2 A14B only).
pub struct Experts<'a, P: NoisePredictor + ?Sized> {
    pub high: &'a P,
    pub low: Option<&'a P>,
}

/// Sampling settings of the loop (the request's values after defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct DenoiseSettings {
    /// CFG scale of `transformer`; CFG runs (two forwards per step) when it is above 1.
    pub guidance_scale: f64,
    /// CFG scale of `transformer_2`; `None` = `guidance_scale`.
    pub guidance_scale_2: Option<f64>,
    /// `model_index.json` `boundary_ratio`; `None` = only `transformer` runs.
    pub boundary_ratio: Option<f64>,
    /// `model_index.json` `expand_timesteps` (TI2V-5B): one timestep per latent token.
    pub expand_timesteps: bool,
}

/// Where the loop starts: the initial noise at step 0, or saved latents at `start_step` (the
/// scheduler must then carry the matching restored state).
pub struct DenoiseInput<'a> {
    /// `[B, C, F, H, W]`. At step 0 cast to f32 as the reference's `prepare_latents`.
    pub latents: Tensor,
    pub prompt_embeds: &'a Tensor,
    /// Required when `guidance_scale > 1`.
    pub negative_prompt_embeds: Option<&'a Tensor>,
    pub start_step: usize,
}

/// What the per-step callback sees, after the scheduler stepped.
pub struct StepEnd<'a> {
    /// Index of the step just taken (0-based).
    pub index: usize,
    /// Steps in the schedule.
    pub total: usize,
    pub timestep: f64,
    pub expert: Expert,
    pub guidance_scale: f64,
    /// The latents after this step.
    pub latents: &'a Tensor,
    /// The scheduler after this step; `state()` gives what a resume needs.
    pub scheduler: &'a dyn Scheduler,
}

/// The callback's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    /// End the run with [`PipelineError::Canceled`].
    Stop,
}

/// The boundary timestep `boundary_ratio · num_train_timesteps`. The reference compares the
/// timestep tensor with this Python float, which promotes both sides to float32.
pub fn boundary_timestep(boundary_ratio: f64, num_train_timesteps: usize) -> f32 {
    (boundary_ratio * num_train_timesteps as f64) as f32
}

/// The expert for timestep `t`: high noise when `t >= boundary` (or with no boundary).
pub fn select_expert(t: f64, boundary: Option<f32>) -> Expert {
    match boundary {
        Some(b) if (t as f32) < b => Expert::Low,
        _ => Expert::High,
    }
}

/// Runs the denoising loop from `input.start_step` to the end of the schedule already set on
/// `scheduler` and returns the final latents (f32 for UniPC; the model dtype for FlowEuler,
/// as the reference). `on_step_end` runs after every step; [`StepControl::Stop`] ends the run
/// with `Canceled { step }`, `step` being the number of steps done (the `start_step` to resume at).
pub fn denoise<P: NoisePredictor + ?Sized>(
    experts: &Experts<'_, P>,
    scheduler: &mut dyn Scheduler,
    settings: &DenoiseSettings,
    input: DenoiseInput<'_>,
    on_step_end: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
) -> Result<Tensor> {
    // 1. Check the inputs and the guidance setup.
    let timesteps = scheduler.timesteps().to_vec();
    check_input(&input, &timesteps, scheduler.step_index())?;
    let do_cfg = settings.guidance_scale > 1.0;
    let negative = match (do_cfg, input.negative_prompt_embeds) {
        (true, None) => {
            return Err(PipelineError::invalid(
                "negative_prompt_embeds",
                "required when guidance_scale > 1 (classifier-free guidance)",
            ))
        }
        (_, negative) => negative,
    };
    let boundary = expert_boundary(experts, settings, scheduler.num_train_timesteps())?;
    let guidance_2 = settings.guidance_scale_2.unwrap_or(settings.guidance_scale);

    // 2. Text in the transformer dtype (of `transformer`, as the reference), latents in f32.
    let dtype = experts.high.dtype();
    let prompt = input.prompt_embeds.f_to_kind(dtype)?;
    let negative = negative.map(|n| n.f_to_kind(dtype)).transpose()?;
    let mut latents = if input.start_step == 0 {
        input.latents.f_to_kind(Kind::Float)?
    } else {
        input.latents
    };
    let size = latents.size();
    let (batch, device) = (size[0], latents.device());
    // expand_timesteps: `mask[0][0][:, ::2, ::2]` — one timestep per (1, 2, 2) patch.
    let tokens = size[2] * ((size[3] + 1) / 2) * ((size[4] + 1) / 2);

    // 3. The loop.
    for (i, &t) in timesteps.iter().enumerate().skip(input.start_step) {
        let (expert, model, guidance) = match select_expert(t, boundary) {
            Expert::High => (Expert::High, experts.high, settings.guidance_scale),
            Expert::Low => (Expert::Low, experts.low.unwrap_or(experts.high), guidance_2),
        };
        let latent_model_input = latents.f_to_kind(dtype)?;
        let timestep = if settings.expand_timesteps {
            Tensor::f_full([batch, tokens], t, (Kind::Float, device))?
        } else {
            Tensor::f_full([batch], t, (Kind::Float, device))?
        };
        let uncond = negative.as_ref().filter(|_| do_cfg);
        let noise_pred =
            model.predict_guided(&latent_model_input, &timestep, &prompt, uncond, guidance)?;
        latents = scheduler.step(&noise_pred, t, &latents)?;
        let control = on_step_end(&StepEnd {
            index: i,
            total: timesteps.len(),
            timestep: t,
            expert,
            guidance_scale: guidance,
            latents: &latents,
            scheduler: &*scheduler,
        });
        if control == StepControl::Stop {
            return Err(PipelineError::Canceled { step: i + 1 });
        }
    }
    Ok(latents)
}

/// The timestep where the low-noise expert takes over, when the settings split the schedule;
/// an error when they do and the model has one expert.
fn expert_boundary<P: NoisePredictor + ?Sized>(
    experts: &Experts<'_, P>,
    settings: &DenoiseSettings,
    num_train_timesteps: usize,
) -> Result<Option<f32>> {
    match (settings.boundary_ratio, experts.low) {
        (Some(_), None) => Err(PipelineError::invalid(
            "boundary_ratio",
            "set, but the model has no transformer_2 (low-noise expert)",
        )),
        (Some(ratio), Some(_)) => Ok(Some(boundary_timestep(ratio, num_train_timesteps))),
        (None, _) => Ok(None),
    }
}

fn check_input(input: &DenoiseInput<'_>, timesteps: &[f64], step_index: usize) -> Result<()> {
    if timesteps.is_empty() {
        return Err(PipelineError::invalid(
            "scheduler",
            "no schedule; call set_timesteps() (or restore a state) first",
        ));
    }
    if input.start_step >= timesteps.len() || input.start_step != step_index {
        return Err(PipelineError::invalid(
            "start_step",
            format!(
                "{} does not fit the scheduler (at step {step_index} of {}); restore the state saved with the latents",
                input.start_step,
                timesteps.len()
            ),
        ));
    }
    let size = input.latents.size();
    if size.len() != 5 {
        return Err(PipelineError::invalid(
            "latents",
            format!("shape {size:?}; expected [batch, channels, frames, height, width]"),
        ));
    }
    for (name, text) in [
        ("prompt_embeds", Some(input.prompt_embeds)),
        ("negative_prompt_embeds", input.negative_prompt_embeds),
    ] {
        if let Some(text) = text {
            let ts = text.size();
            if ts.len() != 3 || ts[0] != size[0] {
                return Err(PipelineError::invalid(
                    name,
                    format!("shape {ts:?}; expected [{}, tokens, dim]", size[0]),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use tch::Device;

    use super::*;
    use crate::scheduler::{SamplerKind, SchedulerState, UniPcConfig, UniPcMultistepScheduler};

    /// A predictor that logs every call and answers `latents·0.1 + text.mean() + bias`, so cond
    /// (text +1) and uncond (text −1) outputs differ and CFG is visible in the result.
    struct Recording {
        bias: f64,
        calls: RefCell<Vec<Call>>,
    }

    #[derive(Debug, Clone, PartialEq)]
    struct Call {
        timestep: Vec<i64>,
        timestep_value: f64,
        cond: bool,
    }

    impl Recording {
        fn new(bias: f64) -> Self {
            Self {
                bias,
                calls: RefCell::new(Vec::new()),
            }
        }
        fn timesteps(&self) -> Vec<f64> {
            self.calls
                .borrow()
                .iter()
                .map(|c| c.timestep_value)
                .collect()
        }
    }

    impl NoisePredictor for Recording {
        fn dtype(&self) -> Kind {
            Kind::Float
        }
        fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
            let mean = text.mean(Kind::Double).double_value(&[]);
            self.calls.borrow_mut().push(Call {
                timestep: timestep.size(),
                timestep_value: timestep.flatten(0, -1).double_value(&[0]),
                cond: mean > 0.0,
            });
            Ok(latents.f_mul_scalar(0.1)?.f_add_scalar(mean + self.bias)?)
        }
    }

    /// A scheduler with given timesteps that records the guided outputs it is handed.
    struct FakeScheduler {
        timesteps: Vec<f64>,
        sigmas: Vec<f32>,
        index: usize,
        outputs: Vec<Tensor>,
    }

    impl FakeScheduler {
        fn new(timesteps: &[f64]) -> Self {
            Self {
                timesteps: timesteps.to_vec(),
                sigmas: vec![0.0; timesteps.len() + 1],
                index: 0,
                outputs: Vec::new(),
            }
        }
    }

    impl Scheduler for FakeScheduler {
        fn kind(&self) -> SamplerKind {
            SamplerKind::FlowEuler
        }
        fn num_train_timesteps(&self) -> usize {
            1000
        }
        fn set_timesteps(&mut self, _: usize, _: Option<f64>) -> Result<()> {
            Ok(())
        }
        fn timesteps(&self) -> &[f64] {
            &self.timesteps
        }
        fn sigmas(&self) -> &[f32] {
            &self.sigmas
        }
        fn step_index(&self) -> usize {
            self.index
        }
        fn step(&mut self, model_output: &Tensor, _: f64, sample: &Tensor) -> Result<Tensor> {
            self.outputs.push(model_output.shallow_clone());
            self.index += 1;
            Ok(sample.f_sub(&model_output.f_mul_scalar(0.01)?)?)
        }
        fn state(&self) -> Result<SchedulerState> {
            Err(PipelineError::invalid("fake", "no state"))
        }
        fn restore(&mut self, _: &SchedulerState) -> Result<()> {
            Err(PipelineError::invalid("fake", "no state"))
        }
    }

    fn settings(g: f64, g2: Option<f64>, boundary: Option<f64>) -> DenoiseSettings {
        DenoiseSettings {
            guidance_scale: g,
            guidance_scale_2: g2,
            boundary_ratio: boundary,
            expand_timesteps: false,
        }
    }

    fn text(sign: f64) -> Tensor {
        Tensor::full([1, 3, 4], sign, (Kind::Float, Device::Cpu))
    }

    /// Fixed "noise" that does not touch libtorch's global generator: unit tests run in parallel
    /// threads, and another test seeding or drawing from it in between would change the values.
    fn noise() -> Tensor {
        (Tensor::arange(32, (Kind::Float, Device::Cpu)) * 0.7)
            .sin()
            .view([1, 2, 1, 4, 4])
    }

    /// Timesteps the high expert saw, those the low expert saw, per-step (expert, guidance),
    /// and the scheduler with the guided outputs it was handed.
    type FakeRun = (Vec<f64>, Vec<f64>, Vec<(Expert, f64)>, FakeScheduler);

    /// Runs the loop over the fakes.
    fn run_fakes(timesteps: &[f64], s: &DenoiseSettings, with_low: bool) -> Result<FakeRun> {
        let (high, low) = (Recording::new(0.0), Recording::new(0.5));
        let mut sched = FakeScheduler::new(timesteps);
        let (cond, uncond) = (text(1.0), text(-1.0));
        let mut seen = Vec::new();
        let experts = Experts {
            high: &high,
            low: with_low.then_some(&low),
        };
        let input = DenoiseInput {
            latents: noise(),
            prompt_embeds: &cond,
            negative_prompt_embeds: Some(&uncond),
            start_step: 0,
        };
        let _latents = denoise(&experts, &mut sched, s, input, &mut |e| {
            seen.push((e.expert, e.guidance_scale));
            StepControl::Continue
        })?;
        Ok((high.timesteps(), low.timesteps(), seen, sched))
    }

    #[test]
    fn timestep_equal_to_boundary_goes_to_high_noise_expert() {
        // boundary 0.875 · 1000 = 875: t = 875 is high noise (`>=`), 874 is low noise.
        let ts = [999.0, 875.0, 874.0, 500.0];
        let (high, low, seen, _) =
            run_fakes(&ts, &settings(4.0, Some(3.0), Some(0.875)), true).unwrap();
        assert_eq!(high, vec![999.0, 999.0, 875.0, 875.0]);
        assert_eq!(low, vec![874.0, 874.0, 500.0, 500.0]);
        let expected = [
            (Expert::High, 4.0),
            (Expert::High, 4.0),
            (Expert::Low, 3.0),
            (Expert::Low, 3.0),
        ];
        assert_eq!(seen, expected);
    }

    #[test]
    fn boundary_compares_in_f32_like_the_reference() {
        // A FlowEuler timestep just under 875 in f64 but equal in f32 counts as high noise.
        let b = boundary_timestep(0.875, 1000);
        assert_eq!(select_expert(875.0, Some(b)), Expert::High);
        assert_eq!(select_expert(874.999_999_99, Some(b)), Expert::High);
        assert_eq!(select_expert(874.9999, Some(b)), Expert::Low);
        assert_eq!(select_expert(0.0, None), Expert::High);
    }

    #[test]
    fn guidance_combines_cond_and_uncond_with_the_experts_scale() {
        let ts = [999.0, 100.0];
        let (_, _, _, sched) = run_fakes(&ts, &settings(4.0, Some(3.0), Some(0.5)), true).unwrap();
        // Outputs are latents·0.1 + text mean (+0.5 for the low expert): cond − uncond = 2.
        let mut latents = noise();
        for (out, (g, bias)) in sched.outputs.iter().zip([(4.0, 0.0), (3.0, 0.5)]) {
            let uncond = latents
                .f_mul_scalar(0.1)
                .unwrap()
                .f_add_scalar(-1.0 + bias)
                .unwrap();
            let cond = latents
                .f_mul_scalar(0.1)
                .unwrap()
                .f_add_scalar(1.0 + bias)
                .unwrap();
            let expected = &uncond + (&cond - &uncond).f_mul_scalar(g).unwrap();
            assert!(
                out.equal(&expected),
                "guidance {g} not applied as uncond + g·(cond − uncond)"
            );
            latents = &latents - out.f_mul_scalar(0.01).unwrap();
        }
    }

    #[test]
    fn guidance_2_defaults_to_guidance_scale() {
        let (_, _, seen, _) =
            run_fakes(&[999.0, 100.0], &settings(5.0, None, Some(0.5)), true).unwrap();
        assert_eq!(seen, vec![(Expert::High, 5.0), (Expert::Low, 5.0)]);
    }

    #[test]
    fn cfg_is_decided_by_the_high_noise_scale_alone() {
        // As diffusers: guidance_scale 1 turns CFG off for both experts, whatever guidance_scale_2 says.
        let (high, low, _, sched) =
            run_fakes(&[999.0, 100.0], &settings(1.0, Some(3.0), Some(0.5)), true).unwrap();
        assert_eq!((high.len(), low.len()), (1, 1));
        let cond = noise()
            .f_mul_scalar(0.1)
            .unwrap()
            .f_add_scalar(1.0)
            .unwrap();
        assert!(sched.outputs[0].equal(&cond));
    }

    #[test]
    fn guidance_at_most_one_runs_one_pass_per_step() {
        let ts = [999.0, 800.0, 300.0, 100.0];
        for g in [0.0, 0.5, 1.0] {
            let (high, low, _, _) = run_fakes(&ts, &settings(g, Some(g), Some(0.5)), true).unwrap();
            assert_eq!(
                (high.len(), low.len()),
                (2, 2),
                "guidance {g}: one forward per step, no unconditional pass"
            );
        }
        // Just above 1 both passes run.
        let (high, low, _, _) =
            run_fakes(&ts, &settings(1.001, Some(1.001), Some(0.5)), true).unwrap();
        assert_eq!((high.len(), low.len()), (4, 4));
    }

    #[test]
    fn without_boundary_only_transformer_runs() {
        let (high, low, seen, _) =
            run_fakes(&[999.0, 100.0], &settings(5.0, Some(2.0), None), true).unwrap();
        assert_eq!(high.len(), 4);
        assert!(low.is_empty());
        assert!(seen.iter().all(|&(e, g)| e == Expert::High && g == 5.0));
    }

    #[test]
    fn boundary_without_low_expert_is_an_input_error() {
        let Err(err) = run_fakes(&[999.0], &settings(5.0, None, Some(0.5)), false) else {
            panic!("a boundary without transformer_2 was accepted");
        };
        assert!(err.to_string().contains("transformer_2"), "{err}");
    }

    #[test]
    fn cfg_without_negative_prompt_is_an_input_error() {
        let high = Recording::new(0.0);
        let cond = text(1.0);
        let input = DenoiseInput {
            latents: noise(),
            prompt_embeds: &cond,
            negative_prompt_embeds: None,
            start_step: 0,
        };
        let experts = Experts::<Recording> {
            high: &high,
            low: None,
        };
        let err = denoise(
            &experts,
            &mut FakeScheduler::new(&[999.0]),
            &settings(5.0, None, None),
            input,
            &mut |_| StepControl::Continue,
        )
        .unwrap_err();
        assert!(err.to_string().contains("negative_prompt_embeds"), "{err}");
    }

    #[test]
    fn expand_timesteps_gives_one_timestep_per_token() {
        let high = Recording::new(0.0);
        let (cond, uncond) = (text(1.0), text(-1.0));
        let input = DenoiseInput {
            latents: Tensor::zeros([1, 2, 3, 4, 6], (Kind::Float, Device::Cpu)),
            prompt_embeds: &cond,
            negative_prompt_embeds: Some(&uncond),
            start_step: 0,
        };
        let s = DenoiseSettings {
            expand_timesteps: true,
            ..settings(5.0, None, None)
        };
        let experts = Experts::<Recording> {
            high: &high,
            low: None,
        };
        let _latents = denoise(
            &experts,
            &mut FakeScheduler::new(&[999.0]),
            &s,
            input,
            &mut |_| StepControl::Continue,
        )
        .unwrap();
        assert_eq!(high.calls.borrow()[0].timestep, vec![1, 3 * 2 * 3]);
    }

    /// Runs UniPC (Wan preset) over a single fake expert from `start` with `latents`, stopping
    /// after step `stop_after` (if any); returns the result and what the callback saved.
    fn run_unipc(
        sched: &mut UniPcMultistepScheduler,
        latents: Tensor,
        start: usize,
        stop_after: Option<usize>,
    ) -> (Result<Tensor>, Option<(Tensor, SchedulerState)>) {
        let high = Recording::new(0.0);
        let (cond, uncond) = (text(1.0), text(-1.0));
        let input = DenoiseInput {
            latents,
            prompt_embeds: &cond,
            negative_prompt_embeds: Some(&uncond),
            start_step: start,
        };
        let mut saved = None;
        let experts = Experts::<Recording> {
            high: &high,
            low: None,
        };
        let out = denoise(
            &experts,
            sched,
            &settings(5.0, None, None),
            input,
            &mut |e| {
                if Some(e.index) == stop_after {
                    saved = Some((e.latents.copy(), e.scheduler.state().unwrap()));
                    StepControl::Stop
                } else {
                    StepControl::Continue
                }
            },
        );
        (out, saved)
    }

    #[test]
    fn stop_then_resume_from_saved_state_is_bit_identical() {
        let new_sched = || {
            let mut s = UniPcMultistepScheduler::new(UniPcConfig::wan(1000, 5.0));
            s.set_timesteps(8, None).unwrap();
            s
        };
        let (full, _) = run_unipc(&mut new_sched(), noise(), 0, None);
        let full = full.unwrap();
        for k in [0, 3, 6] {
            let (stopped, saved) = run_unipc(&mut new_sched(), noise(), 0, Some(k));
            match stopped {
                Err(PipelineError::Canceled { step }) => assert_eq!(step, k + 1),
                other => panic!("expected Canceled, got {:?}", other.map(|t| t.size())),
            }
            let (latents, state) = saved.unwrap();
            let json = serde_json::to_string(&state).unwrap();
            let mut resumed = UniPcMultistepScheduler::new(UniPcConfig::wan(1000, 5.0));
            resumed
                .restore(&serde_json::from_str(&json).unwrap())
                .unwrap();
            let (end, _) = run_unipc(&mut resumed, latents, k + 1, None);
            assert!(end.unwrap().equal(&full), "resume after step {k} differs");
        }
    }

    #[test]
    fn start_step_must_match_the_scheduler() {
        let mut s = UniPcMultistepScheduler::new(UniPcConfig::wan(1000, 5.0));
        s.set_timesteps(4, None).unwrap();
        let (out, _) = run_unipc(&mut s, noise(), 2, None);
        assert!(matches!(out, Err(PipelineError::InvalidInput { .. })));
    }
}
