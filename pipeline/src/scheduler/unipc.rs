//! UniPC multistep (Zhao et al. 2023) with flow sigmas — diffusers' `UniPCMultistepScheduler`,
//! the sampler the Wan checkpoints ship with.
//!
//! Each step (i) converts the model output to the x0 (or noise) form, (ii) corrects the sample
//! the last predictor produced with that output (UniC), (iii) predicts the next sample (UniP)
//! from the stored outputs. The coefficients are 0-dim f32 tensors computed with the same
//! operations as the reference, so results match it bit for bit on the same libtorch.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::state::{self, TensorData, UniPcState};
use super::{
    check_schedule_args, check_step, config_error, linspace, scalar, shift_sigma,
    stretch_to_terminal, SamplerKind, Scheduler, SchedulerState,
};
use crate::error::{PipelineError, Result};

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    Sample,
    VPrediction,
    /// The flow velocity `noise − x0` (Wan).
    FlowPrediction,
}

/// The B(h) variant of the UniPC update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    Bh1,
    /// diffusers maps the DPM-Solver names `midpoint`, `heun` and `logrho` to bh2.
    #[serde(alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The sigma appended after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    Zero,
    SigmaMin,
}

/// `scheduler_config.json` of `UniPCMultistepScheduler`: every argument diffusers 0.42.1 writes.
/// Defaults are the class's own (diffusers `UniPCMultistepScheduler.__init__`).
/// Fields of the discrete (VP) schedule are accepted and unused: only flow sigmas are supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UniPcConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    pub trained_betas: Option<Vec<f64>>,
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    pub predict_x0: bool,
    pub solver_type: SolverType,
    pub lower_order_final: bool,
    /// Step indices after which the corrector is skipped.
    pub disable_corrector: Vec<usize>,
    pub solver_p: Option<serde_json::Value>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub use_flow_sigmas: bool,
    pub flow_shift: f64,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    pub final_sigmas_type: FinalSigmasType,
    pub rescale_betas_zero_snr: bool,
    pub use_dynamic_shifting: bool,
    pub time_shift_type: String,
    /// Only used by the Karras/exponential/beta schedules (unsupported); accepted and ignored.
    pub sigma_min: Option<f64>,
    /// Only used by the Karras/exponential/beta schedules (unsupported); accepted and ignored.
    pub sigma_max: Option<f64>,
    /// Stretch the shifted sigmas so the last one equals this value (ignored when 0 or absent).
    pub shift_terminal: Option<f64>,
}

impl Default for UniPcConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            trained_betas: None,
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            predict_x0: true,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            final_sigmas_type: FinalSigmasType::Zero,
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
            time_shift_type: "exponential".into(),
            sigma_min: None,
            sigma_max: None,
            shift_terminal: None,
        }
    }
}

impl UniPcConfig {
    /// The Wan preset: `scheduler/scheduler_config.json` of Wan-AI/Wan2.2-T2V-A14B-Diffusers
    /// (flow prediction, flow sigmas, order 2, bh2, x0 form, final sigma 0), with the given
    /// `num_train_timesteps` and `flow_shift`.
    pub fn wan(num_train_timesteps: usize, flow_shift: f64) -> Self {
        Self {
            num_train_timesteps,
            prediction_type: PredictionType::FlowPrediction,
            use_flow_sigmas: true,
            flow_shift,
            ..Self::default()
        }
    }

    /// Rejects values this implementation does not support, naming the field and the file.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |field: &str, why: &str| {
            Err(config_error(
                path,
                format!("`{field}`: {why} (supported: the flow-sigma UniPC that Wan ships)"),
            ))
        };
        if !self.use_flow_sigmas {
            return unsupported(
                "use_flow_sigmas",
                "false selects the discrete VP schedule, which is not implemented",
            );
        }
        for (field, on) in [
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("use_dynamic_shifting", self.use_dynamic_shifting),
            ("thresholding", self.thresholding),
        ] {
            if on {
                return unsupported(field, "true is not implemented");
            }
        }
        if self.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported("solver_p", "an external predictor is not implemented");
        }
        if self.solver_order == 0 {
            return unsupported("solver_order", "must be at least 1");
        }
        if self.num_train_timesteps == 0 {
            return unsupported("num_train_timesteps", "must be at least 1");
        }
        if !(self.flow_shift.is_finite() && self.flow_shift > 0.0) {
            return unsupported("flow_shift", "must be a positive number");
        }
        if !self.predict_x0 && self.prediction_type == PredictionType::FlowPrediction {
            return unsupported(
                "predict_x0",
                "false with prediction_type flow_prediction is rejected by diffusers too",
            );
        }
        if !matches!(
            self.beta_schedule.as_str(),
            "linear" | "scaled_linear" | "squaredcos_cap_v2"
        ) {
            return unsupported("beta_schedule", "unknown schedule name");
        }
        if !matches!(self.time_shift_type.as_str(), "exponential" | "linear") {
            return unsupported("time_shift_type", "must be exponential or linear");
        }
        Ok(())
    }
}

/// diffusers `UniPCMultistepScheduler` restricted to flow sigmas.
pub struct UniPcMultistepScheduler {
    config: UniPcConfig,
    /// Integer timesteps as f64 (the trait's view).
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    step_index: usize,
    lower_order_nums: usize,
    this_order: usize,
    /// The last `solver_order` converted outputs, oldest first.
    model_outputs: Vec<Option<Tensor>>,
    last_sample: Option<Tensor>,
}

impl UniPcMultistepScheduler {
    /// A scheduler without a schedule; call [`Scheduler::set_timesteps`] before stepping.
    pub fn new(config: UniPcConfig) -> Self {
        let order = config.solver_order;
        Self {
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: 0,
            lower_order_nums: 0,
            this_order: 0,
            model_outputs: (0..order).map(|_| None).collect(),
            last_sample: None,
        }
    }

    pub fn config(&self) -> &UniPcConfig {
        &self.config
    }

    fn reset_state(&mut self) {
        self.step_index = 0;
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.model_outputs = (0..self.config.solver_order).map(|_| None).collect();
        self.last_sample = None;
    }

    /// `self.sigmas[i].to(device)`.
    fn sigma_at(&self, index: usize, device: Device) -> Result<Tensor> {
        Ok(scalar(self.sigmas[index])?.f_to_device(device)?)
    }

    /// The `i`-th most recent stored output (`i = 1` is the latest), as `model_outputs[-i]`.
    fn stored_output(&self, i: usize) -> Result<&Tensor> {
        let n = self.model_outputs.len();
        self.model_outputs[n - i].as_ref().ok_or_else(|| {
            PipelineError::invalid(
                "scheduler state",
                format!("model output {i} steps back is missing"),
            )
        })
    }

    /// `convert_model_output`: the output in the form the update uses (x0, or noise).
    fn convert_model_output(&self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let sigma = scalar(self.sigmas[self.step_index])?;
        let (alpha_t, sigma_t) = alpha_sigma(&sigma)?;
        let mo = model_output;
        Ok(
            match (self.config.predict_x0, self.config.prediction_type) {
                (true, PredictionType::Epsilon) => {
                    sample.f_sub(&sigma_t.f_mul(mo)?)?.f_div(&alpha_t)?
                }
                (true, PredictionType::Sample) => mo.shallow_clone(),
                (true, PredictionType::VPrediction) => {
                    alpha_t.f_mul(sample)?.f_sub(&sigma_t.f_mul(mo)?)?
                }
                (true, PredictionType::FlowPrediction) => sample.f_sub(&sigma.f_mul(mo)?)?,
                (false, PredictionType::Epsilon) => mo.shallow_clone(),
                (false, PredictionType::Sample) => {
                    sample.f_sub(&alpha_t.f_mul(mo)?)?.f_div(&sigma_t)?
                }
                (false, PredictionType::VPrediction) => {
                    alpha_t.f_mul(mo)?.f_add(&sigma_t.f_mul(sample)?)?
                }
                (false, PredictionType::FlowPrediction) => {
                    return Err(PipelineError::invalid(
                        "scheduler",
                        "flow_prediction needs predict_x0 = true",
                    ))
                }
            },
        )
    }

    /// The coefficients shared by UniP and UniC between sigma indices `s0` and `t`, with the
    /// previous outputs at sigma indices `history` (most recent first).
    fn coefficients(
        &self,
        t: usize,
        s0: usize,
        history: &[usize],
        m0: &Tensor,
        device: Device,
    ) -> Result<Coefficients> {
        let (alpha_t, sigma_t) = alpha_sigma(&self.sigma_at(t, device)?)?;
        let (alpha_s0, sigma_s0) = alpha_sigma(&self.sigma_at(s0, device)?)?;
        let lambda_t = lambda(&alpha_t, &sigma_t)?;
        let lambda_s0 = lambda(&alpha_s0, &sigma_s0)?;
        let h = lambda_t.f_sub(&lambda_s0)?;

        let mut rks = Vec::with_capacity(history.len() + 1);
        let mut d1s = Vec::with_capacity(history.len());
        for (k, &si) in history.iter().enumerate() {
            let mi = self.stored_output(k + 2)?;
            let (alpha_si, sigma_si) = alpha_sigma(&self.sigma_at(si, device)?)?;
            let lambda_si = lambda(&alpha_si, &sigma_si)?;
            let rk = lambda_si.f_sub(&lambda_s0)?.f_div(&h)?;
            d1s.push(mi.f_sub(m0)?.f_div(&rk)?);
            rks.push(rk);
        }
        rks.push(Tensor::f_ones([0i64; 0], (Kind::Float, device))?);
        let rks = Tensor::f_stack(&rks, 0)?;

        let hh = if self.config.predict_x0 {
            h.f_neg()?
        } else {
            h
        };
        let h_phi_1 = hh.f_expm1()?;
        let mut h_phi_k = h_phi_1.f_div(&hh)?.f_sub_scalar(1i64)?;
        let b_h = match self.config.solver_type {
            SolverType::Bh1 => hh.shallow_clone(),
            SolverType::Bh2 => hh.f_expm1()?,
        };
        let order = history.len() + 1;
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        let mut factorial_i: i64 = 1;
        for i in 1..=order as i64 {
            r.push(rks.f_pow_tensor_scalar(i - 1)?);
            b.push(h_phi_k.f_mul_scalar(factorial_i)?.f_div(&b_h)?);
            factorial_i *= i + 1;
            h_phi_k = h_phi_k.f_div(&hh)?.f_sub_scalar(1.0 / factorial_i as f64)?;
        }
        let d1s = if d1s.is_empty() {
            None
        } else {
            Some(Tensor::f_stack(&d1s, 1)?)
        };
        Ok(Coefficients {
            alpha_t,
            sigma_t,
            alpha_s0,
            sigma_s0,
            h_phi_1,
            b_h,
            r: Tensor::f_stack(&r, 0)?,
            b: Tensor::f_stack(&b, 0)?,
            d1s,
        })
    }

    /// UniP (`multistep_uni_p_bh_update`): the next sample from `sample` at the current index.
    fn predict(&self, sample: &Tensor, order: usize) -> Result<Tensor> {
        let device = sample.device();
        let m0 = self.stored_output(1)?;
        let i = self.step_index;
        let history: Vec<usize> = (1..order).map(|k| i - k).collect();
        let c = self.coefficients(i + 1, i, &history, m0, device)?;
        let x = sample;

        let rhos_p = match &c.d1s {
            None => None,
            Some(_) if order == 2 => {
                Some(Tensor::f_ones([1], (x.kind(), device))?.f_mul_scalar(0.5)?)
            }
            Some(_) => {
                let n = order as i64 - 1;
                let r = c.r.f_narrow(0, 0, n)?.f_narrow(1, 0, n)?;
                let b = c.b.f_narrow(0, 0, n)?;
                Some(
                    Tensor::f_linalg_solve(&r, &b, true)?
                        .f_to_device(device)?
                        .f_to_kind(x.kind())?,
                )
            }
        };
        let pred_res = match (&rhos_p, &c.d1s) {
            (Some(rhos), Some(d1s)) => Residual::Tensor(einsum(rhos, d1s)?),
            _ => Residual::Zero,
        };
        let (x_t_, coef) = c.first_order(x, m0, self.config.predict_x0)?;
        let x_t = x_t_.f_sub(&pred_res.scaled(&coef)?)?;
        Ok(x_t.f_to_kind(x.kind())?)
    }

    /// UniC (`multistep_uni_c_bh_update`): corrects `this_sample` (the last prediction) with
    /// the converted output at it; `last_sample` is where that prediction started.
    fn correct(
        &self,
        this_model_output: &Tensor,
        last_sample: &Tensor,
        this_sample: &Tensor,
        order: usize,
    ) -> Result<Tensor> {
        let device = this_sample.device();
        let m0 = self.stored_output(1)?;
        let i = self.step_index;
        let history: Vec<usize> = (1..order).map(|k| i - (k + 1)).collect();
        let c = self.coefficients(i, i - 1, &history, m0, device)?;
        let x = last_sample;

        let rhos_c = if order == 1 {
            Tensor::f_ones([1], (x.kind(), device))?.f_mul_scalar(0.5)?
        } else {
            Tensor::f_linalg_solve(&c.r, &c.b, true)?
                .f_to_device(device)?
                .f_to_kind(x.kind())?
        };
        let n = rhos_c.size()[0];
        let corr_res = match &c.d1s {
            Some(d1s) => Residual::Tensor(einsum(&rhos_c.f_narrow(0, 0, n - 1)?, d1s)?),
            None => Residual::Zero,
        };
        let d1_t = this_model_output.f_sub(m0)?;
        let last_rho_d1 = rhos_c.f_select(0, n - 1)?.f_mul(&d1_t)?;
        let correction = match corr_res {
            Residual::Tensor(t) => t.f_add(&last_rho_d1)?,
            Residual::Zero => last_rho_d1.f_add_scalar(0i64)?,
        };
        let (x_t_, coef) = c.first_order(x, m0, self.config.predict_x0)?;
        let x_t = x_t_.f_sub(&coef.f_mul(&correction)?)?;
        Ok(x_t.f_to_kind(x.kind())?)
    }

    /// Moves restored host tensors next to the sample.
    fn move_state_to(&mut self, device: Device) -> Result<()> {
        for slot in self.model_outputs.iter_mut().chain([&mut self.last_sample]) {
            if let Some(t) = slot {
                if t.device() != device {
                    *slot = Some(t.f_to_device(device)?);
                }
            }
        }
        Ok(())
    }
}

/// What `coefficients` returns: the step's scalars (0-dim f32) and the history differences.
struct Coefficients {
    alpha_t: Tensor,
    sigma_t: Tensor,
    alpha_s0: Tensor,
    sigma_s0: Tensor,
    h_phi_1: Tensor,
    b_h: Tensor,
    r: Tensor,
    b: Tensor,
    /// `(mi − m0) / rk` stacked on dim 1, `None` for a first-order step.
    d1s: Option<Tensor>,
}

impl Coefficients {
    /// What UniP and UniC share: the first-order update `x_t_` from `x` and `m0`, and the
    /// coefficient the residual is scaled by before it is subtracted — with `predict_x0`
    /// `σ_t/σ_s0·x − α_t·h_phi_1·m0` and `α_t·B(h)`, else `α_t/α_s0·x − σ_t·h_phi_1·m0` and
    /// `σ_t·B(h)`.
    fn first_order(&self, x: &Tensor, m0: &Tensor, predict_x0: bool) -> Result<(Tensor, Tensor)> {
        let (scale_t, scale_s0, other_t) = if predict_x0 {
            (&self.sigma_t, &self.sigma_s0, &self.alpha_t)
        } else {
            (&self.alpha_t, &self.alpha_s0, &self.sigma_t)
        };
        let x_t_ = scale_t
            .f_div(scale_s0)?
            .f_mul(x)?
            .f_sub(&other_t.f_mul(&self.h_phi_1)?.f_mul(m0)?)?;
        Ok((x_t_, other_t.f_mul(&self.b_h)?))
    }
}

/// The reference's `pred_res`/`corr_res`: a tensor, or the Python int 0 for first order.
enum Residual {
    Tensor(Tensor),
    Zero,
}

impl Residual {
    /// `coef * residual`, where the reference multiplies the 0-dim `coef` by int 0 when empty.
    fn scaled(&self, coef: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Tensor(t) => coef.f_mul(t)?,
            Self::Zero => coef.f_mul_scalar(0i64)?,
        })
    }
}

/// Flow sigmas: `alpha = 1 − sigma`, `sigma_t = sigma`.
fn alpha_sigma(sigma: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((sigma.f_rsub_scalar(1i64)?, sigma.shallow_clone()))
}

/// `log(alpha) − log(sigma)`.
fn lambda(alpha: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    Ok(alpha.f_log()?.f_sub(&sigma.f_log()?)?)
}

/// `einsum("k,bkc...->bc...", rhos, d1s)`.
fn einsum(rhos: &Tensor, d1s: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_einsum(
        "k,bkc...->bc...",
        &[rhos, d1s],
        None::<&[i64]>,
    )?)
}

impl Scheduler for UniPcMultistepScheduler {
    fn kind(&self) -> SamplerKind {
        SamplerKind::UniPc
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    /// `set_timesteps` with `use_flow_sigmas`: numpy float64 all the way, sigmas cast to f32
    /// at the end and timesteps truncated to int64, exactly as the reference.
    fn set_timesteps(&mut self, num_steps: usize, shift_override: Option<f64>) -> Result<()> {
        let shift = shift_override.unwrap_or(self.config.flow_shift);
        check_schedule_args(num_steps, shift)?;
        let n_train = self.config.num_train_timesteps as f64;
        // 1. np.linspace(1, 1 / N, steps + 1)[:-1], then the flow shift.
        let mut sigmas: Vec<f64> = linspace(1.0, 1.0 / n_train, num_steps + 1)[..num_steps]
            .iter()
            .map(|&s| shift_sigma(shift, s))
            .collect();
        // 2. Optional stretch to the terminal value.
        if let Some(terminal) = self.config.shift_terminal.filter(|&t| t != 0.0) {
            stretch_to_terminal(&mut sigmas, terminal);
        }
        // 3. Keep the first sigma off 1 so log(alpha) stays finite.
        let eps = 1e-6;
        if (sigmas[0] - 1.0).abs() < eps {
            sigmas[0] -= eps;
        }
        // 4. Timesteps: sigma * N in f64, truncated by the int64 cast.
        self.timesteps = sigmas
            .iter()
            .map(|&s| (s * n_train) as i64 as f64)
            .collect();
        // 5. Final sigma, then everything to f32.
        let last = match self.config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => sigmas[num_steps - 1],
        };
        sigmas.push(last);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.reset_state();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor> {
        check_step(&self.timesteps, self.step_index, timestep)?;
        self.move_state_to(sample.device())?;
        let order = self.config.solver_order;

        // 1. Correct the previous prediction (UniC), unless disabled after the last step.
        let use_corrector = self.step_index > 0
            && !self
                .config
                .disable_corrector
                .contains(&(self.step_index - 1))
            && self.last_sample.is_some();
        let model_output_convert = self.convert_model_output(model_output, sample)?;
        let sample = match (&self.last_sample, use_corrector) {
            (Some(last), true) => {
                self.correct(&model_output_convert, last, sample, self.this_order)?
            }
            _ => sample.shallow_clone(),
        };

        // 2. Shift the history and store the new output.
        self.model_outputs.rotate_left(1);
        self.model_outputs[order - 1] = Some(model_output_convert);

        // 3. Order of this predictor step: warm up, and lower it at the end if configured.
        let this_order = if self.config.lower_order_final {
            order.min(self.timesteps.len() - self.step_index)
        } else {
            order
        };
        self.this_order = this_order.min(self.lower_order_nums + 1);

        // 4. Predict the next sample (UniP).
        let prev_sample = self.predict(&sample, self.this_order)?;
        self.last_sample = Some(sample);
        if self.lower_order_nums < order {
            self.lower_order_nums += 1;
        }
        self.step_index += 1;
        Ok(prev_sample)
    }

    fn state(&self) -> Result<SchedulerState> {
        let data = |t: &Option<Tensor>| t.as_ref().map(TensorData::from_tensor).transpose();
        Ok(SchedulerState::UniPc(UniPcState {
            timesteps: self.timesteps.iter().map(|&t| t as i64).collect(),
            sigma_bits: state::to_bits(&self.sigmas),
            step_index: self.step_index,
            lower_order_nums: self.lower_order_nums,
            this_order: self.this_order,
            model_outputs: self.model_outputs.iter().map(data).collect::<Result<_>>()?,
            last_sample: data(&self.last_sample)?,
        }))
    }

    fn restore(&mut self, saved: &SchedulerState) -> Result<()> {
        let SchedulerState::UniPc(s) = saved else {
            return Err(PipelineError::invalid(
                "scheduler state",
                "saved by another sampler than UniPC",
            ));
        };
        state::check_schedule_lengths(s.timesteps.len(), s.sigma_bits.len(), s.step_index)?;
        let order = self.config.solver_order;
        if s.model_outputs.len() != order || s.lower_order_nums > order || s.this_order > order {
            return Err(PipelineError::invalid(
                "scheduler state",
                format!(
                    "saved with solver_order {}, this config has {order}",
                    s.model_outputs.len()
                ),
            ));
        }
        let tensor = |d: &Option<TensorData>| d.as_ref().map(TensorData::to_tensor).transpose();
        self.model_outputs = s.model_outputs.iter().map(tensor).collect::<Result<_>>()?;
        self.last_sample = tensor(&s.last_sample)?;
        self.timesteps = s.timesteps.iter().map(|&t| t as f64).collect();
        self.sigmas = state::from_bits(&s.sigma_bits);
        self.step_index = s.step_index;
        self.lower_order_nums = s.lower_order_nums;
        self.this_order = s.this_order;
        Ok(())
    }
}
