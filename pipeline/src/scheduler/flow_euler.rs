//! Flow-matching Euler — diffusers' `FlowMatchEulerDiscreteScheduler`: `x ← x + (σ_next − σ)·v`.
//!
//! The schedule takes the reference's mixed path on purpose: the training sigmas (and from them
//! `sigma_min`/`sigma_max`) are shifted in torch float32 at construction, the inference sigmas
//! are spaced and shifted again in numpy float64, and the timesteps are `f32(σ) · N` in f32.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::state::{self, FlowEulerState};
use super::{
    check_schedule_args, check_step, config_error, linspace, scalar, shift_sigma,
    stretch_to_terminal, SamplerKind, Scheduler, SchedulerState,
};
use crate::error::{PipelineError, Result};

/// `scheduler_config.json` of `FlowMatchEulerDiscreteScheduler`: every argument diffusers 0.42.1
/// writes. Defaults are the class's own (diffusers `FlowMatchEulerDiscreteScheduler.__init__`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowEulerConfig {
    pub num_train_timesteps: usize,
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    /// Only used with dynamic shifting (unsupported); accepted and ignored.
    pub base_shift: Option<f64>,
    /// Only used with dynamic shifting (unsupported); accepted and ignored.
    pub max_shift: Option<f64>,
    /// Only used with dynamic shifting (unsupported); accepted and ignored.
    pub base_image_seq_len: usize,
    /// Only used with dynamic shifting (unsupported); accepted and ignored.
    pub max_image_seq_len: usize,
    pub invert_sigmas: bool,
    /// Stretch the shifted sigmas so the last one equals this value (ignored when 0 or absent).
    pub shift_terminal: Option<f64>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    pub time_shift_type: String,
    pub stochastic_sampling: bool,
}

impl Default for FlowEulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: "exponential".into(),
            stochastic_sampling: false,
        }
    }
}

impl FlowEulerConfig {
    /// The class defaults with `num_train_timesteps` and `shift` set — what the factory builds
    /// when a request asks for Euler on a model whose config is UniPC.
    pub fn with_shift(num_train_timesteps: usize, shift: f64) -> Self {
        Self {
            num_train_timesteps,
            shift,
            ..Self::default()
        }
    }

    /// Rejects values this implementation does not support, naming the field and the file.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let unsupported = |field: &str, why: &str| {
            Err(config_error(
                path,
                format!("`{field}`: {why} (supported: the static-shift flow Euler sampler)"),
            ))
        };
        for (field, on) in [
            ("use_dynamic_shifting", self.use_dynamic_shifting),
            ("invert_sigmas", self.invert_sigmas),
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
        ] {
            if on {
                return unsupported(field, "true is not implemented");
            }
        }
        if self.num_train_timesteps == 0 {
            return unsupported("num_train_timesteps", "must be at least 1");
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return unsupported("shift", "must be a positive number");
        }
        if !matches!(self.time_shift_type.as_str(), "exponential" | "linear") {
            return unsupported("time_shift_type", "must be exponential or linear");
        }
        Ok(())
    }
}

/// diffusers `FlowMatchEulerDiscreteScheduler` with a static shift.
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowEulerConfig,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    step_index: usize,
}

impl FlowMatchEulerDiscreteScheduler {
    /// A scheduler without a schedule; call [`Scheduler::set_timesteps`] before stepping.
    pub fn new(config: FlowEulerConfig) -> Self {
        Self {
            config,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: 0,
        }
    }

    pub fn config(&self) -> &FlowEulerConfig {
        &self.config
    }
}

/// The constructor's `(sigma_max, sigma_min)`: `linspace(1, N, N)` reversed, `/ N` and shifted
/// in torch float32 (Python scalars rounded to f32 by the kernels).
fn train_sigma_range(num_train_timesteps: usize, shift: f64) -> (f64, f64) {
    let n = num_train_timesteps as f32;
    let shifted = |t: f32| {
        let s = t / n;
        (shift as f32 * s) / (1.0f32 + (shift - 1.0) as f32 * s)
    };
    (f64::from(shifted(n)), f64::from(shifted(1.0)))
}

impl Scheduler for FlowMatchEulerDiscreteScheduler {
    fn kind(&self) -> SamplerKind {
        SamplerKind::FlowEuler
    }

    fn num_train_timesteps(&self) -> usize {
        self.config.num_train_timesteps
    }

    /// A `shift_override` acts like `from_config(config, shift=override)`: it shifts both the
    /// training range (`sigma_min`/`sigma_max`) and the inference sigmas.
    fn set_timesteps(&mut self, num_steps: usize, shift_override: Option<f64>) -> Result<()> {
        let shift = shift_override.unwrap_or(self.config.shift);
        check_schedule_args(num_steps, shift)?;
        let n_train = self.config.num_train_timesteps as f64;
        // 1. Timesteps spaced evenly between the (shifted) training range, in f64.
        let (sigma_max, sigma_min) = train_sigma_range(self.config.num_train_timesteps, shift);
        let spaced = linspace(sigma_max * n_train, sigma_min * n_train, num_steps);
        // 2. Sigmas = t / N, shifted (again), optionally stretched to the terminal value.
        let mut sigmas: Vec<f64> = spaced
            .iter()
            .map(|&t| shift_sigma(shift, t / n_train))
            .collect();
        if let Some(terminal) = self.config.shift_terminal.filter(|&t| t != 0.0) {
            stretch_to_terminal(&mut sigmas, terminal);
        }
        // 3. To f32; timesteps = sigma * N in f32; a final sigma of 0.
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let n_f32 = self.config.num_train_timesteps as f32;
        self.timesteps = sigmas.iter().map(|&s| f64::from(s * n_f32)).collect();
        sigmas.push(0.0);
        self.sigmas = sigmas;
        self.step_index = 0;
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
        // 1. Upcast the sample; dt = sigma_next − sigma as 0-dim f32 tensors.
        let sample = sample.f_to_kind(Kind::Float)?;
        let sigma = scalar(self.sigmas[self.step_index])?;
        let sigma_next = scalar(self.sigmas[self.step_index + 1])?;
        let dt = sigma_next.f_sub(&sigma)?;
        // 2. Euler step, cast back to the model output's dtype.
        let prev_sample = sample.f_add(&dt.f_mul(model_output)?)?;
        self.step_index += 1;
        Ok(prev_sample.f_to_kind(model_output.kind())?)
    }

    fn state(&self) -> Result<SchedulerState> {
        let timesteps: Vec<f32> = self.timesteps.iter().map(|&t| t as f32).collect();
        Ok(SchedulerState::FlowEuler(FlowEulerState {
            timestep_bits: state::to_bits(&timesteps),
            sigma_bits: state::to_bits(&self.sigmas),
            step_index: self.step_index,
        }))
    }

    fn restore(&mut self, saved: &SchedulerState) -> Result<()> {
        let SchedulerState::FlowEuler(s) = saved else {
            return Err(PipelineError::invalid(
                "scheduler state",
                "saved by another sampler than FlowEuler",
            ));
        };
        state::check_schedule_lengths(s.timestep_bits.len(), s.sigma_bits.len(), s.step_index)?;
        self.timesteps = state::from_bits(&s.timestep_bits)
            .into_iter()
            .map(f64::from)
            .collect();
        self.sigmas = state::from_bits(&s.sigma_bits);
        self.step_index = s.step_index;
        Ok(())
    }
}
