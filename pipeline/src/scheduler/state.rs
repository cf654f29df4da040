//! The schedulers' mutable state as plain serde data, for checkpoints that resume a run.
//!
//! Floats are kept as their IEEE bit patterns (`u32`), so the state survives any serde format —
//! JSON included — exactly; a restored scheduler continues bit for bit.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};

/// Everything a scheduler needs to continue a run: its schedule and its mutable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerState {
    #[serde(rename = "unipc")]
    UniPc(UniPcState),
    FlowEuler(FlowEulerState),
}

/// State of [`super::UniPcMultistepScheduler`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UniPcState {
    /// The schedule's timesteps (integers, as the reference keeps them).
    pub timesteps: Vec<i64>,
    /// The schedule's sigmas, f32 bit patterns (one more than timesteps).
    pub sigma_bits: Vec<u32>,
    /// Index of the next step.
    pub step_index: usize,
    /// Steps taken so far, capped at `solver_order` (the multistep warm-up counter).
    pub lower_order_nums: usize,
    /// Order of the last predictor step (the next corrector uses it); 0 before the first step.
    pub this_order: usize,
    /// The last `solver_order` converted model outputs, oldest first (`None` until filled).
    pub model_outputs: Vec<Option<TensorData>>,
    /// The sample before the last predictor step (the corrector's starting point).
    pub last_sample: Option<TensorData>,
}

/// State of [`super::FlowMatchEulerDiscreteScheduler`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEulerState {
    /// The schedule's timesteps, f32 bit patterns.
    pub timestep_bits: Vec<u32>,
    /// The schedule's sigmas, f32 bit patterns (one more than timesteps).
    pub sigma_bits: Vec<u32>,
    /// Index of the next step.
    pub step_index: usize,
}

/// A tensor as host data: shape, dtype name and the values as f32 bit patterns.
/// f32, bf16 and f16 tensors round-trip exactly (the latter two widen to f32 losslessly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorData {
    pub shape: Vec<i64>,
    /// `"float32"`, `"bfloat16"` or `"float16"`.
    pub dtype: String,
    pub bits: Vec<u32>,
}

impl TensorData {
    /// Copies `tensor` to the host.
    pub fn from_tensor(tensor: &Tensor) -> Result<Self> {
        let dtype = kind_name(tensor.kind())?;
        let flat = tensor
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?
            .f_view([-1])?;
        let values = Vec::<f32>::try_from(&flat)?;
        Ok(Self {
            shape: tensor.size(),
            dtype: dtype.to_string(),
            bits: values.into_iter().map(f32::to_bits).collect(),
        })
    }

    /// Rebuilds the tensor on the host with its original dtype.
    pub fn to_tensor(&self) -> Result<Tensor> {
        let kind = kind_from_name(&self.dtype)?;
        let numel: i64 = self.shape.iter().product();
        if numel != self.bits.len() as i64 {
            return Err(PipelineError::invalid(
                "scheduler state",
                format!(
                    "tensor of shape {:?} holds {} values, expected {numel}",
                    self.shape,
                    self.bits.len()
                ),
            ));
        }
        let values: Vec<f32> = self.bits.iter().copied().map(f32::from_bits).collect();
        Ok(Tensor::f_from_slice(&values)?
            .f_view(self.shape.as_slice())?
            .f_to_kind(kind)?)
    }
}

fn kind_name(kind: Kind) -> Result<&'static str> {
    match kind {
        Kind::Float => Ok("float32"),
        Kind::BFloat16 => Ok("bfloat16"),
        Kind::Half => Ok("float16"),
        other => Err(PipelineError::invalid(
            "scheduler state",
            format!("cannot save a {other:?} tensor exactly; run the sampler in f32, bf16 or f16"),
        )),
    }
}

fn kind_from_name(name: &str) -> Result<Kind> {
    match name {
        "float32" => Ok(Kind::Float),
        "bfloat16" => Ok(Kind::BFloat16),
        "float16" => Ok(Kind::Half),
        other => Err(PipelineError::invalid(
            "scheduler state",
            format!("unknown dtype `{other}`; expected float32, bfloat16 or float16"),
        )),
    }
}

/// f32 values as bit patterns.
pub(crate) fn to_bits(values: &[f32]) -> Vec<u32> {
    values.iter().copied().map(f32::to_bits).collect()
}

/// f32 values from bit patterns.
pub(crate) fn from_bits(bits: &[u32]) -> Vec<f32> {
    bits.iter().copied().map(f32::from_bits).collect()
}

/// Checks a restored schedule: `sigmas` must be one longer than a non-empty `timesteps`.
pub(crate) fn check_schedule_lengths(
    timesteps: usize,
    sigmas: usize,
    step_index: usize,
) -> Result<()> {
    if timesteps == 0 || sigmas != timesteps + 1 || step_index > timesteps {
        return Err(PipelineError::invalid(
            "scheduler state",
            format!(
                "inconsistent schedule: {timesteps} timesteps, {sigmas} sigmas, step index {step_index}"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_data_round_trips_exactly_through_json() {
        let t = Tensor::randn([2, 3, 4], (Kind::Float, Device::Cpu)) * 1e-3;
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let t = t.to_kind(kind);
            let data = TensorData::from_tensor(&t).unwrap();
            let json = serde_json::to_string(&data).unwrap();
            let back: TensorData = serde_json::from_str(&json).unwrap();
            let r = back.to_tensor().unwrap();
            assert_eq!(r.kind(), kind);
            assert!(r.equal(&t), "{kind:?} tensor changed through JSON");
        }
    }

    #[test]
    fn f64_tensors_are_refused() {
        let t = Tensor::zeros([2], (Kind::Double, Device::Cpu));
        assert!(TensorData::from_tensor(&t).is_err());
    }
}
