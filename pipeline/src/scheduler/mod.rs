//! Flow-matching samplers behind one trait, matched number for number to diffusers 0.42.1.
//!
//! Both schedulers compute their schedule the way the reference does — in f64 where diffusers
//! uses numpy float64, in f32 where it uses torch float32 — so timesteps and sigmas are equal,
//! not merely close. The per-step update mirrors the reference's tensor operations one by one
//! (0-dim f32 tensors for the coefficients), so a trajectory matches bit for bit on the same
//! libtorch.
//!
//! # Layout
//! - [`Scheduler`] — the trait the denoising loop drives; [`SamplerKind`] picks an implementation.
//! - [`unipc`] — `UniPCMultistepScheduler` (the Wan default) and its `scheduler_config.json`.
//! - [`flow_euler`] — `FlowMatchEulerDiscreteScheduler`.
//! - [`state`] — the mutable state as plain serde data ([`SchedulerState`]) for checkpoints.
//! - [`from_config_dir`] — reads `scheduler/scheduler_config.json` and builds the requested kind.

pub mod flow_euler;
pub mod state;
pub mod unipc;

use std::path::Path;

use serde::de::DeserializeOwned;
use tch::Tensor;

use crate::error::{PipelineError, Result};
use crate::loader::read_json;

pub use flow_euler::{FlowEulerConfig, FlowMatchEulerDiscreteScheduler};
pub use state::{SchedulerState, TensorData};
pub use unipc::{UniPcConfig, UniPcMultistepScheduler};

/// Which sampler a request asks for (the wire enum `t2v.v1.Sampler` maps onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    /// UniPC multistep (diffusers `UniPCMultistepScheduler`), the Wan default.
    #[serde(rename = "unipc")]
    UniPc,
    /// Flow-matching Euler (diffusers `FlowMatchEulerDiscreteScheduler`).
    FlowEuler,
}

/// A sampler: a schedule of timesteps/sigmas and the update from one noise level to the next.
///
/// Stepping always starts at index 0 after [`Scheduler::set_timesteps`] (diffusers' pipelines call
/// `set_begin_index(0)`), or at the index a restored [`SchedulerState`] carries.
pub trait Scheduler: Send {
    /// The kind of sampler this is.
    fn kind(&self) -> SamplerKind;

    /// `num_train_timesteps` of the config (1000 for Wan); the boundary of two-expert models is
    /// a fraction of it.
    fn num_train_timesteps(&self) -> usize;

    /// Computes the schedule for `num_steps` denoising steps and resets the state.
    /// `shift_override` replaces the config's shift (`flow_shift` / `shift`) for this schedule.
    fn set_timesteps(&mut self, num_steps: usize, shift_override: Option<f64>) -> Result<()>;

    /// The timesteps fed to the model, one per step. UniPC's are integers (the reference casts
    /// them to int64); FlowEuler's are f32 values. Both are exact in f64 and in f32.
    fn timesteps(&self) -> &[f64];

    /// The sigmas (f32, as the reference keeps them), one per step plus the final one.
    fn sigmas(&self) -> &[f32];

    /// The index of the next step to take.
    fn step_index(&self) -> usize;

    /// One step from `sample` at `timestep` (which must be `timesteps()[step_index()]`) to the
    /// next noise level, given the (guided) model output.
    fn step(&mut self, model_output: &Tensor, timestep: f64, sample: &Tensor) -> Result<Tensor>;

    /// The schedule and mutable state, copied to the host as plain data.
    fn state(&self) -> Result<SchedulerState>;

    /// Replaces schedule and state by a saved one; the next `step` continues exactly (bit for
    /// bit) where the saved run would have. The state must come from the same kind and config.
    fn restore(&mut self, state: &SchedulerState) -> Result<()>;
}

/// The scheduler configs this crate reads, told apart by `_class_name`.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedulerConfig {
    UniPc(UniPcConfig),
    FlowEuler(FlowEulerConfig),
}

impl SchedulerConfig {
    /// Parses a diffusers `scheduler_config.json`. Keys starting with `_` are metadata
    /// (`_class_name`, `_diffusers_version`, `_use_default_values`); any other key the class
    /// does not take is an error naming the key and the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut map: serde_json::Map<String, serde_json::Value> =
            read_json(path, "scheduler config")?;
        let class = match map.get("_class_name") {
            Some(serde_json::Value::String(name)) => name.clone(),
            _ => {
                return Err(config_error(
                    path,
                    "no `_class_name`; expected \"UniPCMultistepScheduler\" or \"FlowMatchEulerDiscreteScheduler\"",
                ))
            }
        };
        map.retain(|key, _| !key.starts_with('_'));
        let value = serde_json::Value::Object(map);
        let config = match class.as_str() {
            "UniPCMultistepScheduler" => Self::UniPc(parse_fields(path, value)?),
            "FlowMatchEulerDiscreteScheduler" => Self::FlowEuler(parse_fields(path, value)?),
            other => {
                return Err(config_error(
                    path,
                    format!(
                    "unsupported scheduler class `{other}`; supported: UniPCMultistepScheduler, \
                         FlowMatchEulerDiscreteScheduler"
                ),
                ))
            }
        };
        match &config {
            Self::UniPc(c) => c.validate(path)?,
            Self::FlowEuler(c) => c.validate(path)?,
        }
        Ok(config)
    }

    /// The kind this config describes.
    pub fn kind(&self) -> SamplerKind {
        match self {
            Self::UniPc(_) => SamplerKind::UniPc,
            Self::FlowEuler(_) => SamplerKind::FlowEuler,
        }
    }

    /// Builds the scheduler of `kind`: this config's own when the kinds agree, otherwise the
    /// other kind with the same `num_train_timesteps` and shift (UniPC then uses the Wan preset).
    pub fn build(&self, kind: Option<SamplerKind>) -> Box<dyn Scheduler> {
        match (self, kind.unwrap_or(self.kind())) {
            (Self::UniPc(c), SamplerKind::UniPc) => {
                Box::new(UniPcMultistepScheduler::new(c.clone()))
            }
            (Self::FlowEuler(c), SamplerKind::FlowEuler) => {
                Box::new(FlowMatchEulerDiscreteScheduler::new(c.clone()))
            }
            (Self::UniPc(c), SamplerKind::FlowEuler) => {
                Box::new(FlowMatchEulerDiscreteScheduler::new(
                    FlowEulerConfig::with_shift(c.num_train_timesteps, c.flow_shift),
                ))
            }
            (Self::FlowEuler(c), SamplerKind::UniPc) => Box::new(UniPcMultistepScheduler::new(
                UniPcConfig::wan(c.num_train_timesteps, c.shift),
            )),
        }
    }
}

/// Reads `<model_dir>/scheduler/scheduler_config.json` and builds the scheduler of `kind`
/// (`None`: the one the config names).
pub fn from_config_dir(model_dir: &Path, kind: Option<SamplerKind>) -> Result<Box<dyn Scheduler>> {
    let path = model_dir.join("scheduler").join("scheduler_config.json");
    Ok(SchedulerConfig::from_file(&path)?.build(kind))
}

fn parse_fields<T: DeserializeOwned>(path: &Path, value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| config_error(path, e.to_string()))
}

pub(crate) fn config_error(path: &Path, message: impl Into<String>) -> PipelineError {
    PipelineError::Config {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `numpy.linspace(start, stop, num)` in float64, operation for operation (numpy 2.x):
/// `arange(num) * step + start` with `step = (stop - start) / (num - 1)`, the last value set to `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let div = num.saturating_sub(1) as f64;
    let delta = stop - start;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64).collect();
    if div > 0.0 {
        let step = delta / div;
        for v in &mut y {
            *v = if step == 0.0 {
                *v / div * delta
            } else {
                *v * step
            };
        }
    } else {
        for v in &mut y {
            *v *= delta;
        }
    }
    for v in &mut y {
        *v += start;
    }
    if num > 1 {
        y[num - 1] = stop;
    }
    y
}

/// The flow-matching shift `shift·σ / (1 + (shift − 1)·σ)`, in f64 as numpy evaluates it.
pub(crate) fn shift_sigma(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// diffusers' `stretch_shift_to_terminal`: rescales `1 − σ` so the last sigma equals `terminal`.
pub(crate) fn stretch_to_terminal(sigmas: &mut [f64], terminal: f64) {
    let Some(&last) = sigmas.last() else { return };
    let scale_factor = (1.0 - last) / (1.0 - terminal);
    for s in sigmas.iter_mut() {
        *s = 1.0 - ((1.0 - *s) / scale_factor);
    }
}

/// Checks the arguments of `set_timesteps` shared by both schedulers.
pub(crate) fn check_schedule_args(num_steps: usize, shift: f64) -> Result<()> {
    if num_steps == 0 {
        return Err(PipelineError::invalid(
            "num_inference_steps",
            "must be at least 1",
        ));
    }
    if !(shift.is_finite() && shift > 0.0) {
        return Err(PipelineError::invalid(
            "shift",
            format!("{shift} is not a positive finite number"),
        ));
    }
    Ok(())
}

/// Checks that `step` is called with the timestep the schedule expects next.
pub(crate) fn check_step(timesteps: &[f64], step_index: usize, timestep: f64) -> Result<()> {
    match timesteps.get(step_index) {
        None if timesteps.is_empty() => Err(PipelineError::invalid(
            "scheduler",
            "step() before set_timesteps(); set the schedule first",
        )),
        None => Err(PipelineError::invalid(
            "scheduler",
            format!(
                "all {} steps are done; call set_timesteps() again",
                timesteps.len()
            ),
        )),
        Some(&expected) if expected != timestep => Err(PipelineError::invalid(
            "timestep",
            format!("step {step_index} expects timestep {expected}, got {timestep}"),
        )),
        Some(_) => Ok(()),
    }
}

/// A 0-dim f32 tensor on the host — how the reference holds `self.sigmas[i]`.
pub(crate) fn scalar(value: f32) -> Result<Tensor> {
    Ok(Tensor::f_scalar_tensor(
        f64::from(value),
        (tch::Kind::Float, tch::Device::Cpu),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_layout() {
        // numpy.linspace(1, 0.001, 6) -> [1.0, 0.8002, 0.6004, 0.4006, 0.2008, 0.001]
        let y = linspace(1.0, 0.001, 6);
        let step = (0.001 - 1.0) / 5.0;
        assert_eq!(y[0], 1.0);
        assert_eq!(y[3], 3.0 * step + 1.0);
        assert_eq!(y[5], 0.001);
        assert_eq!(linspace(2.0, 7.0, 1), vec![2.0]);
    }

    #[test]
    fn stretch_puts_last_sigma_on_terminal() {
        let mut s = vec![1.0, 0.6, 0.3];
        stretch_to_terminal(&mut s, 0.1);
        assert!((s[2] - 0.1).abs() < 1e-15);
        assert_eq!(s[0], 1.0);
    }

    #[test]
    fn step_checks_timestep_and_end() {
        assert!(check_step(&[], 0, 999.0).is_err());
        assert!(check_step(&[999.0, 500.0], 1, 500.0).is_ok());
        assert!(check_step(&[999.0, 500.0], 1, 501.0).is_err());
        assert!(check_step(&[999.0, 500.0], 2, 500.0).is_err());
    }
}
