//! Step caching: skip most of a transformer forward when it would change little since the last
//! one computed, as diffusers' cache hooks do (`hooks/first_block_cache.py`,
//! `hooks/mag_cache.py`, enabled with `transformer.enable_cache(...)`).
//!
//! Two policies, each deciding per forward whether the blocks run:
//! - [`CachePolicy::FirstBlock`] (First-Block-Cache): block 0 always runs; its residual
//!   (output − input) is compared with the residual of the last *computed* forward,
//!   `mean|r − r_prev| / mean|r_prev|`. Above the threshold the remaining blocks run and their
//!   residual (last block's output − block 0's output) is kept; at or below it, that kept residual
//!   is added to block 0's output instead. The first forward always computes.
//! - [`CachePolicy::Mag`] (MagCache): decided before any block runs, from calibrated magnitude
//!   ratios of the model (`mag_ratios`, interpolated to the step count as diffusers'
//!   `nearest_interp`): after the first `retention_ratio · steps` forwards, the product of the
//!   ratios since the last computed forward accumulates `|1 − product|` as an error; while it
//!   stays at or below the threshold (and at most `max_skip_steps` in a row) the whole block
//!   stack is replaced by its residual (last block's output − block 0's input) of the last
//!   computed forward. `calibrate` never skips and measures the ratios instead.
//!
//! State is kept as diffusers keeps it: one per expert (each `WanTransformer3DModel` gets its own
//! hooks) and, within it, one per CFG branch (the pipeline's `cache_context("cond")` /
//! `("uncond")`), so the low-noise expert starts fresh at the boundary (its first forwards
//! compute) and the two branches decide independently. A run starts with empty state, as
//! diffusers resets stateful hooks after every call.
//!
//! [`CachedExpert`] wraps an expert for the denoising loop; the transformer's hook is
//! [`BranchCache::run_blocks`] (`WanTransformer3DModel::forward_cached`).

use std::cell::RefCell;

use tch::{Kind, Tensor};

use crate::denoise::{
    apply_guidance, denoise, DenoiseInput, DenoiseSettings, Expert, Experts, NoisePredictor,
    StepControl, StepEnd,
};
use crate::error::{PipelineError, Result};
use crate::scheduler::Scheduler;
use crate::wan::WanTransformer3DModel;

/// diffusers' `MagCacheConfig` defaults.
pub const MAG_MAX_SKIP_STEPS: usize = 3;
pub const MAG_RETENTION_RATIO: f64 = 0.2;

/// At most this many steps with guidance off is a step-distilled variant (Lightning: 4 steps,
/// CFG off): its steps are each far apart, so no forward is close enough to another to reuse,
/// and caching one breaks the distilled trajectory — LightX2V refuses the combination too.
pub const DISTILLED_MAX_STEPS: usize = 8;

/// Which forwards a cache may skip, and how it decides.
#[derive(Debug, Clone, PartialEq)]
pub enum CachePolicy {
    /// First-Block-Cache (diffusers `FirstBlockCacheConfig`).
    FirstBlock,
    /// MagCache (diffusers `MagCacheConfig`).
    Mag(MagSettings),
}

/// MagCache's settings besides the threshold (diffusers `MagCacheConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct MagSettings {
    /// Most forwards skipped in a row (K in the paper).
    pub max_skip_steps: usize,
    /// Share of the first steps never skipped.
    pub retention_ratio: f64,
    /// The model's magnitude ratios, one per step of some schedule (interpolated to the run's
    /// step count); required unless `calibrate`.
    pub mag_ratios: Option<Vec<f32>>,
    /// Measure the ratios (reported in [`CacheReport::calibration`]) instead of skipping.
    pub calibrate: bool,
}

impl Default for MagSettings {
    fn default() -> Self {
        Self {
            max_skip_steps: MAG_MAX_SKIP_STEPS,
            retention_ratio: MAG_RETENTION_RATIO,
            mag_ratios: None,
            calibrate: false,
        }
    }
}

/// A step cache: its policy and threshold (`FirstBlockCacheConfig.threshold`,
/// `MagCacheConfig.threshold`).
#[derive(Debug, Clone, PartialEq)]
pub struct StepCacheConfig {
    pub policy: CachePolicy,
    pub threshold: f64,
}

impl StepCacheConfig {
    /// The policy's name in configs and reports: `first_block` or `mag`.
    pub fn kind_name(&self) -> &'static str {
        match self.policy {
            CachePolicy::FirstBlock => "first_block",
            CachePolicy::Mag(_) => "mag",
        }
    }

    /// A finite threshold in 0..=1, and MagCache ratios (positive, finite) unless calibrating.
    pub fn validate(&self) -> Result<()> {
        if !(self.threshold.is_finite() && (0.0..=1.0).contains(&self.threshold)) {
            return Err(PipelineError::invalid(
                "step cache threshold",
                format!(
                    "{} is not in 0.0..=1.0 — use e.g. 0.05 (higher skips more forwards)",
                    self.threshold
                ),
            ));
        }
        let CachePolicy::Mag(mag) = &self.policy else {
            return Ok(());
        };
        if !(mag.retention_ratio.is_finite() && (0.0..=1.0).contains(&mag.retention_ratio)) {
            return Err(PipelineError::invalid(
                "mag cache retention_ratio",
                format!("{} is not in 0.0..=1.0 — use 0.2", mag.retention_ratio),
            ));
        }
        match (&mag.mag_ratios, mag.calibrate) {
            (None, false) => Err(PipelineError::invalid(
                "mag cache",
                "no mag_ratios — they are model-dependent: run once with calibrate = true and copy the reported ratios into mag_ratios",
            )),
            (Some(r), false) if r.is_empty() || r.iter().any(|v| !(v.is_finite() && *v > 0.0)) => {
                Err(PipelineError::invalid(
                    "mag cache mag_ratios",
                    "must be a non-empty list of positive numbers (one per step, as calibrate = true reports them)",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Refuses a step cache on a step-distilled run: at most [`DISTILLED_MAX_STEPS`] steps with
/// classifier-free guidance off.
pub fn refuse_distilled(steps: usize, cfg_on: bool) -> Result<()> {
    if steps <= DISTILLED_MAX_STEPS && !cfg_on {
        return Err(PipelineError::invalid(
            "step cache",
            format!(
                "refused for a step-distilled run ({steps} steps, guidance off): distilled steps are too far apart to reuse — turn the cache off (cache_threshold = 0) or use the base variant"
            ),
        ));
    }
    Ok(())
}

/// A CFG pass, the key of its own cache state within an expert (diffusers' `cache_context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Branch {
    Cond,
    Uncond,
}

/// One transformer forward of a run, in call order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ForwardRecord {
    pub expert: Expert,
    pub branch: Branch,
    /// Whether the cache stood in for the blocks (all but block 0 for First-Block-Cache).
    pub skipped: bool,
}

/// What a run's cache did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CacheReport {
    /// `first_block` or `mag`.
    pub kind: &'static str,
    pub threshold: f64,
    /// Every forward in call order.
    pub forwards: Vec<ForwardRecord>,
    /// MagCache `calibrate`: the measured ratios per expert and branch, one per forward.
    pub calibration: Vec<(Expert, Branch, Vec<f64>)>,
}

impl CacheReport {
    /// Forwards whose blocks the cache skipped.
    pub fn skipped(&self) -> usize {
        self.forwards.iter().filter(|f| f.skipped).count()
    }
}

/// First-Block-Cache state of one branch: block 0's residual and the remaining blocks' residual
/// of the last computed forward.
#[derive(Default)]
struct FirstBlockState {
    head_residual: Option<Tensor>,
    tail_residual: Option<Tensor>,
}

/// MagCache state of one branch (`MagCacheState`); the accumulators are f32 as the reference's,
/// which multiplies them with the f32 ratio tensor.
struct MagState {
    previous_residual: Option<Tensor>,
    accumulated_ratio: f32,
    accumulated_err: f32,
    accumulated_steps: usize,
    step_index: usize,
    calibration: Vec<f64>,
}

impl Default for MagState {
    fn default() -> Self {
        Self {
            previous_residual: None,
            accumulated_ratio: 1.0,
            accumulated_err: 0.0,
            accumulated_steps: 0,
            step_index: 0,
            calibration: Vec::new(),
        }
    }
}

enum BranchState {
    FirstBlock(FirstBlockState),
    Mag(MagState),
}

/// The policy as one run applies it: MagCache ratios interpolated to the run's steps.
struct RunPolicy {
    threshold: f64,
    mag: Option<(MagSettings, Vec<f32>)>,
    num_inference_steps: usize,
}

/// One forward's view of the cache: the policy and its branch's state. The transformer hands
/// [`Self::run_blocks`] its blocks as two closures.
pub struct BranchCache<'a> {
    policy: &'a RunPolicy,
    state: &'a mut BranchState,
    skipped: bool,
}

impl BranchCache<'_> {
    /// The blocks' output for tokens `x`: `first` runs block 0, `rest` the blocks after it;
    /// either may be skipped as the policy decides.
    pub fn run_blocks(
        &mut self,
        x: Tensor,
        first: impl FnOnce(&Tensor) -> Result<Tensor>,
        rest: impl FnOnce(Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        match &mut *self.state {
            BranchState::FirstBlock(state) => {
                let (out, skipped) = first_block(state, self.policy.threshold, x, first, rest)?;
                self.skipped = skipped;
                Ok(out)
            }
            BranchState::Mag(state) => {
                let (out, skipped) = mag(state, self.policy, x, first, rest)?;
                self.skipped = skipped;
                Ok(out)
            }
        }
    }
}

/// `FBCHeadBlockHook` + `FBCBlockHook`: returns the blocks' output and whether the rest skipped.
fn first_block(
    state: &mut FirstBlockState,
    threshold: f64,
    x: Tensor,
    first: impl FnOnce(&Tensor) -> Result<Tensor>,
    rest: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<(Tensor, bool)> {
    let head_output = first(&x)?;
    let residual = head_output.f_sub(&x)?;
    drop(x);
    let compute = match (&state.head_residual, &state.tail_residual) {
        (Some(previous), Some(_)) => relative_l1(&residual, previous)? > threshold,
        _ => true,
    };
    if let (false, Some(tail)) = (compute, &state.tail_residual) {
        return Ok((tail.f_add(&head_output)?, true));
    }
    state.head_residual = Some(residual);
    let out = rest(head_output.shallow_clone())?;
    state.tail_residual = Some(out.f_sub(&head_output)?);
    Ok((out, false))
}

/// `mean|r − r_prev| / mean|r_prev|` in the residuals' dtype, as the reference's `.item()`.
fn relative_l1(residual: &Tensor, previous: &Tensor) -> Result<f64> {
    let change = residual.f_sub(previous)?.f_abs()?.f_mean(None)?;
    let scale = previous.f_abs()?.f_mean(None)?;
    Ok(change.f_div(&scale)?.f_double_value(&[])?)
}

/// `MagCacheHeadHook` + `MagCacheBlockHook`: returns the blocks' output and whether they skipped.
fn mag(
    state: &mut MagState,
    policy: &RunPolicy,
    x: Tensor,
    first: impl FnOnce(&Tensor) -> Result<Tensor>,
    rest: impl FnOnce(Tensor) -> Result<Tensor>,
) -> Result<(Tensor, bool)> {
    let Some((settings, ratios)) = &policy.mag else {
        return Err(PipelineError::invalid(
            "step cache",
            "MagCache state without its settings",
        ));
    };
    let compute = settings.calibrate || mag_should_compute(state, policy, settings, ratios);
    if let (false, Some(previous)) = (compute, &state.previous_residual) {
        let out = x.f_add(previous)?;
        advance_mag_step(state, policy.num_inference_steps);
        return Ok((out, true));
    }
    let out = rest(first(&x)?)?;
    let residual = out.f_sub(&x)?;
    if settings.calibrate {
        let ratio = match &state.previous_residual {
            None => 1.0,
            Some(previous) => magnitude_ratio(&residual, previous)?,
        };
        state.calibration.push(ratio);
    }
    state.previous_residual = Some(residual);
    advance_mag_step(state, policy.num_inference_steps);
    Ok((out, false))
}

/// The head hook's decision; updates (or resets) the accumulators as the reference does.
fn mag_should_compute(
    state: &mut MagState,
    policy: &RunPolicy,
    settings: &MagSettings,
    ratios: &[f32],
) -> bool {
    let step = state.step_index;
    let scale = ratios.get(step).copied().unwrap_or(1.0);
    // Python's int() of a positive float truncates.
    let retention_step =
        (settings.retention_ratio * policy.num_inference_steps as f64 + 0.5) as usize;
    if step < retention_step {
        return true;
    }
    state.accumulated_ratio *= scale;
    state.accumulated_steps += 1;
    state.accumulated_err += (1.0 - state.accumulated_ratio).abs();
    let may_skip = state.previous_residual.is_some()
        && state.accumulated_err <= policy.threshold as f32
        && state.accumulated_steps <= settings.max_skip_steps;
    if !may_skip {
        state.accumulated_ratio = 1.0;
        state.accumulated_steps = 0;
        state.accumulated_err = 0.0;
    }
    !may_skip
}

/// `_advance_step`: the next forward's index; past the last step the state starts over.
fn advance_mag_step(state: &mut MagState, num_inference_steps: usize) {
    state.step_index += 1;
    if state.step_index >= num_inference_steps {
        let calibration = std::mem::take(&mut state.calibration);
        *state = MagState {
            calibration,
            ..MagState::default()
        };
    }
}

/// Calibration: `mean(‖r‖ / (‖r_prev‖ + 1e-8))` over tokens, in f32.
fn magnitude_ratio(residual: &Tensor, previous: &Tensor) -> Result<f64> {
    let norm = |t: &Tensor| -> Result<Tensor> {
        Ok(t.f_to_kind(Kind::Float)?
            .f_linalg_norm(2.0, [-1i64].as_slice(), false, None)?)
    };
    let ratio = norm(residual)?.f_div(&norm(previous)?.f_add_scalar(1e-8)?)?;
    Ok(ratio.f_mean(None)?.f_double_value(&[])?)
}

/// diffusers' `nearest_interp`: `ratios` resampled to `target` values (indices rounded half to
/// even from an f32 grid, as torch).
pub fn nearest_interp(ratios: &[f32], target: usize) -> Vec<f32> {
    if ratios.is_empty() || target == 0 {
        return Vec::new();
    }
    if target == 1 {
        return vec![ratios[ratios.len() - 1]];
    }
    let scale = ((ratios.len() - 1) as f64 / (target - 1) as f64) as f32;
    (0..target)
        .map(|i| {
            let index = (i as f32 * scale).round_ties_even() as usize;
            ratios[index.min(ratios.len() - 1)]
        })
        .collect()
}

/// A run's cache: the policy and the state of every (expert, branch), and the record.
pub struct StepCache {
    config: StepCacheConfig,
    policy: RunPolicy,
    states: Vec<((Expert, Branch), BranchState)>,
    forwards: Vec<ForwardRecord>,
    calibration: Vec<(Expert, Branch, Vec<f64>)>,
}

impl StepCache {
    /// Empty state for a run of `num_inference_steps` (MagCache's ratios are interpolated to
    /// it, as `MagCacheConfig(num_inference_steps=...)`).
    pub fn new(config: &StepCacheConfig, num_inference_steps: usize) -> Result<Self> {
        config.validate()?;
        let mag = match &config.policy {
            CachePolicy::FirstBlock => None,
            CachePolicy::Mag(settings) => {
                let ratios = match (&settings.mag_ratios, settings.calibrate) {
                    (Some(r), false) if r.len() != num_inference_steps => {
                        nearest_interp(r, num_inference_steps)
                    }
                    (Some(r), false) => r.clone(),
                    _ => Vec::new(),
                };
                Some((settings.clone(), ratios))
            }
        };
        Ok(Self {
            config: config.clone(),
            policy: RunPolicy {
                threshold: config.threshold,
                mag,
                num_inference_steps,
            },
            states: Vec::new(),
            forwards: Vec::new(),
            calibration: Vec::new(),
        })
    }

    /// Runs `forward` with the cache of (`expert`, `branch`) and records its decision. The
    /// high-noise expert's state is dropped once the low-noise one runs (the schedule never
    /// goes back), freeing its residuals.
    pub fn forward(
        &mut self,
        expert: Expert,
        branch: Branch,
        forward: impl FnOnce(&mut BranchCache<'_>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if expert == Expert::Low {
            self.finish_expert(Expert::High);
        }
        let index = match self
            .states
            .iter()
            .position(|(key, _)| *key == (expert, branch))
        {
            Some(index) => index,
            None => {
                let state = match self.policy.mag {
                    None => BranchState::FirstBlock(FirstBlockState::default()),
                    Some(_) => BranchState::Mag(MagState::default()),
                };
                self.states.push(((expert, branch), state));
                self.states.len() - 1
            }
        };
        let mut view = BranchCache {
            policy: &self.policy,
            state: &mut self.states[index].1,
            skipped: false,
        };
        let out = forward(&mut view)?;
        let skipped = view.skipped;
        self.forwards.push(ForwardRecord {
            expert,
            branch,
            skipped,
        });
        Ok(out)
    }

    /// Drops `expert`'s states, keeping what calibration measured.
    fn finish_expert(&mut self, expert: Expert) {
        let (done, kept) = std::mem::take(&mut self.states)
            .into_iter()
            .partition::<Vec<_>, _>(|((e, _), _)| *e == expert);
        self.states = kept;
        for ((expert, branch), state) in done {
            if let BranchState::Mag(mag) = state {
                if !mag.calibration.is_empty() {
                    self.calibration.push((expert, branch, mag.calibration));
                }
            }
        }
    }

    /// What the run's cache did.
    pub fn into_report(mut self) -> CacheReport {
        self.finish_expert(Expert::High);
        self.finish_expert(Expert::Low);
        CacheReport {
            kind: self.config.kind_name(),
            threshold: self.config.threshold,
            forwards: self.forwards,
            calibration: self.calibration,
        }
    }
}

/// A predictor whose blocks a [`BranchCache`] can stand in for.
pub trait CachePredictor: NoisePredictor {
    fn predict_cached(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        cache: &mut BranchCache<'_>,
    ) -> Result<Tensor>;
}

impl CachePredictor for WanTransformer3DModel {
    fn predict_cached(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
        cache: &mut BranchCache<'_>,
    ) -> Result<Tensor> {
        self.forward_cached(latents, timestep, text, cache)
    }
}

/// An expert as the denoising loop sees it with a step cache: the cond pass uses the cache's
/// `cond` state, the uncond pass its `uncond` state, in the reference's order.
pub struct CachedExpert<'a, P: CachePredictor + ?Sized> {
    pub inner: &'a P,
    pub expert: Expert,
    pub cache: &'a RefCell<StepCache>,
}

impl<P: CachePredictor + ?Sized> CachedExpert<'_, P> {
    fn run(
        &self,
        branch: Branch,
        latents: &Tensor,
        timestep: &Tensor,
        text: &Tensor,
    ) -> Result<Tensor> {
        self.cache
            .borrow_mut()
            .forward(self.expert, branch, |cache| {
                self.inner.predict_cached(latents, timestep, text, cache)
            })
    }
}

impl<P: CachePredictor + ?Sized> NoisePredictor for CachedExpert<'_, P> {
    fn dtype(&self) -> Kind {
        self.inner.dtype()
    }

    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        self.run(Branch::Cond, latents, timestep, text)
    }

    fn predict_guided(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        prompt: &Tensor,
        negative: Option<&Tensor>,
        guidance: f64,
    ) -> Result<Tensor> {
        let noise_pred = self.run(Branch::Cond, latents, timestep, prompt)?;
        match negative {
            None => Ok(noise_pred),
            Some(negative) => {
                let noise_uncond = self.run(Branch::Uncond, latents, timestep, negative)?;
                apply_guidance(&noise_pred, &noise_uncond, guidance)
            }
        }
    }
}

/// The cache of one run of `steps` steps, or `None` without one (no config, or threshold 0:
/// off). Refused on a step-distilled run ([`refuse_distilled`]) and on several ranks: Ulysses
/// ranks would each decide on their own shard of the tokens, and the ranks' loop has no hook
/// for it — run cached jobs on one GPU.
pub fn run_cache(
    config: Option<&StepCacheConfig>,
    steps: usize,
    cfg_on: bool,
    parallel: bool,
) -> Result<Option<RefCell<StepCache>>> {
    let Some(config) = config.filter(|c| c.threshold > 0.0) else {
        return Ok(None);
    };
    refuse_distilled(steps, cfg_on)?;
    if parallel {
        return Err(PipelineError::invalid(
            "step cache",
            "not supported when a job runs on several GPUs (CFG/Ulysses ranks) — set one device or turn the cache off (cache_threshold = 0)",
        ));
    }
    Ok(Some(RefCell::new(StepCache::new(config, steps)?)))
}

/// The report of a finished run's cache, logged.
pub fn finish_run(cache: RefCell<StepCache>) -> CacheReport {
    let report = cache.into_inner().into_report();
    tracing::info!(
        kind = report.kind,
        threshold = report.threshold,
        forwards = report.forwards.len(),
        skipped = report.skipped(),
        "step cache"
    );
    for (expert, branch, ratios) in &report.calibration {
        tracing::info!(
            ?expert,
            ?branch,
            ?ratios,
            "MagCache calibration: copy these into mag_ratios"
        );
    }
    report
}

/// [`denoise`] with every expert behind the run's `cache` ([`CachedExpert`]).
pub fn denoise_cached<P: CachePredictor + ?Sized>(
    experts: &Experts<'_, P>,
    cache: &RefCell<StepCache>,
    scheduler: &mut dyn Scheduler,
    settings: &DenoiseSettings,
    input: DenoiseInput<'_>,
    on_step_end: &mut dyn FnMut(&StepEnd<'_>) -> StepControl,
) -> Result<Tensor> {
    let high = CachedExpert {
        inner: experts.high,
        expert: Expert::High,
        cache,
    };
    let low = experts.low.map(|inner| CachedExpert {
        inner,
        expert: Expert::Low,
        cache,
    });
    let cached = Experts {
        high: &high,
        low: low.as_ref(),
    };
    denoise(&cached, scheduler, settings, input, on_step_end)
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;

    /// One forward of a stand-in model: block 0 doubles, the rest adds 1.
    fn forward(cache: &mut StepCache, expert: Expert, branch: Branch, x: &Tensor) -> Tensor {
        cache
            .forward(expert, branch, |c| {
                c.run_blocks(x.shallow_clone(), |x| Ok(x * 2.0), |x| Ok(x + 1.0))
            })
            .unwrap()
    }

    fn pattern(report: &CacheReport) -> String {
        let mark = |f: &ForwardRecord| if f.skipped { 'S' } else { 'C' };
        report.forwards.iter().map(mark).collect()
    }

    fn mag(ratios: Vec<f32>, threshold: f64) -> StepCacheConfig {
        StepCacheConfig {
            policy: CachePolicy::Mag(MagSettings {
                mag_ratios: Some(ratios),
                ..MagSettings::default()
            }),
            threshold,
        }
    }

    #[test]
    fn nearest_interp_picks_torchs_indices() {
        // diffusers' nearest_interp on these ratios (torch.round is half to even).
        let ratios = [1.0, 1.02, 1.01, 1.005, 1.003, 0.998, 0.995, 0.99, 0.98];
        assert_eq!(
            nearest_interp(&ratios, 12),
            [1.0, 1.02, 1.02, 1.01, 1.005, 1.003, 1.003, 0.998, 0.995, 0.99, 0.99, 0.98]
        );
        assert_eq!(nearest_interp(&ratios, 5), [1.0, 1.01, 1.003, 0.995, 0.98]);
        assert_eq!(nearest_interp(&ratios, 1), [0.98]);
        assert_eq!(nearest_interp(&ratios, 9), ratios);
        let index = |n: usize, target: usize| {
            let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
            nearest_interp(&values, target)
        };
        assert_eq!(index(3, 5), [0.0, 0.0, 1.0, 2.0, 2.0]);
        assert_eq!(index(4, 7), [0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 3.0]);
    }

    #[test]
    fn mag_cache_keeps_the_first_steps_and_resets_after_an_error_or_max_skips() {
        // 10 steps: retention int(0.2·10 + 0.5) = 2; each ratio 1.01 adds |1 − 1.01^k|.
        let mut cache = StepCache::new(&mag(vec![1.01; 10], 0.05), 10).unwrap();
        let x = Tensor::ones([1, 4, 3], (Kind::Float, Device::Cpu));
        for _ in 0..10 {
            let _ = forward(&mut cache, Expert::High, Branch::Cond, &x);
        }
        assert_eq!(pattern(&cache.into_report()), "CCSSCSSCSS");
        // Ratios of exactly 1 never accumulate an error: max_skip_steps (3) ends each run.
        let mut cache = StepCache::new(&mag(vec![1.0; 10], 0.05), 10).unwrap();
        for _ in 0..10 {
            let _ = forward(&mut cache, Expert::High, Branch::Cond, &x);
        }
        assert_eq!(pattern(&cache.into_report()), "CCSSSCSSSC");
    }

    #[test]
    fn a_skipped_forward_adds_the_cached_residual() {
        let x = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([1, 4, 3]);
        let full = &x * 2.0 + 1.0;
        for config in [
            StepCacheConfig {
                policy: CachePolicy::FirstBlock,
                threshold: 0.05,
            },
            mag(vec![1.0], 0.05),
        ] {
            let mut cache = StepCache::new(&config, 4).unwrap();
            let mut outs = Vec::new();
            for _ in 0..4 {
                outs.push(forward(&mut cache, Expert::High, Branch::Cond, &x));
            }
            let report = cache.into_report();
            assert!(
                report.skipped() > 0,
                "{}: {}",
                report.kind,
                pattern(&report)
            );
            for out in outs {
                assert!(out.allclose(&full, 1e-6, 1e-6, false), "{}", report.kind);
            }
        }
    }

    #[test]
    fn first_block_cache_computes_when_block_0_changed_more_than_the_threshold() {
        let config = StepCacheConfig {
            policy: CachePolicy::FirstBlock,
            threshold: 0.2,
        };
        let mut cache = StepCache::new(&config, 5).unwrap();
        let x = Tensor::ones([1, 2, 2], (Kind::Float, Device::Cpu));
        // residual of block 0 = x: relative changes 0.1 (skip), 0.5 (compute), 0 (skip)
        for scale in [1.0, 1.1, 1.5, 1.5] {
            let _ = forward(&mut cache, Expert::High, Branch::Cond, &(&x * scale));
        }
        // The uncond pass and the other expert have their own state: their first forwards compute.
        let _ = forward(&mut cache, Expert::High, Branch::Uncond, &x);
        let _ = forward(&mut cache, Expert::Low, Branch::Cond, &x);
        assert_eq!(pattern(&cache.into_report()), "CSCSCC");
    }

    #[test]
    fn distilled_runs_and_several_ranks_are_refused() {
        assert!(refuse_distilled(4, false).is_err());
        assert!(refuse_distilled(8, false).is_err());
        assert!(refuse_distilled(9, false).is_ok());
        assert!(refuse_distilled(4, true).is_ok());
        let config = StepCacheConfig {
            policy: CachePolicy::FirstBlock,
            threshold: 0.1,
        };
        assert!(run_cache(Some(&config), 20, true, true).is_err());
        assert!(run_cache(Some(&config), 20, true, false).unwrap().is_some());
        let off = StepCacheConfig {
            threshold: 0.0,
            ..config
        };
        assert!(run_cache(Some(&off), 4, false, true).unwrap().is_none());
        assert!(run_cache(None, 4, false, true).unwrap().is_none());
    }

    #[test]
    fn mag_cache_without_ratios_asks_for_a_calibration() {
        let err = StepCache::new(
            &StepCacheConfig {
                policy: CachePolicy::Mag(MagSettings::default()),
                threshold: 0.06,
            },
            10,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("calibrate = true"), "{err}");
    }
}
