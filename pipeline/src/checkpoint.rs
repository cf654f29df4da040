//! Denoising checkpoints: the state a run needs to continue on another machine, as one
//! safetensors file.
//!
//! [`DenoiseState`] is what [`crate::text_to_video::WanT2V::generate_with`] resumes from: the latents
//! after `step` steps, the scheduler's schedule and history (UniPC's model outputs and last
//! sample), the expert of the last step and the seed. [`DenoiseState::to_bytes`] writes it as
//! a standard safetensors file (readable with `safetensors.torch.load`):
//! - tensors `latents`, `scheduler.model_outputs.<i>`, `scheduler.last_sample`, stored as raw
//!   little-endian f32 (bf16/f16 tensors widen losslessly; their dtype is kept in the state);
//! - `__metadata__`: `t2v.format` = [`FORMAT`], `t2v.state` = the rest of the state as JSON, and
//!   the caller's keys (request digest, model revision, …) which [`read_metadata`] reads without
//!   decoding any tensor.
//!
//! Decoding is strict: every tensor must cover exactly its bytes and the data section exactly the
//! tensors, so a truncated or padded file is refused rather than resumed from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::denoise::{Expert, StepEnd};
use crate::error::{PipelineError, Result};
use crate::scheduler::{SchedulerState, TensorData};

/// `t2v.format` of the files this module writes.
pub const FORMAT: &str = "t2v-denoise-checkpoint/1";
/// Metadata keys starting with this are the format's own.
pub const RESERVED_PREFIX: &str = "t2v.";
const FORMAT_KEY: &str = "t2v.format";
const STATE_KEY: &str = "t2v.state";
/// The safetensors header may not be larger than this (the reference loaders' limit).
const MAX_HEADER: u64 = 100 << 20;

/// The state of a denoising run after `step` of `total_steps` steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiseState {
    /// Steps done: the `start_step` a resumed run continues at.
    pub step: usize,
    pub total_steps: usize,
    /// The seed of the initial noise (a resume must use the same one).
    pub seed: u64,
    /// The expert that ran the last step.
    pub expert: Expert,
    /// `[B, C, F, H, W]` after `step` steps.
    pub latents: TensorData,
    pub scheduler: SchedulerState,
}

impl DenoiseState {
    /// Copies the state at a step boundary to the host.
    pub fn capture(end: &StepEnd<'_>, seed: u64) -> Result<Self> {
        Ok(Self {
            step: end.index + 1,
            total_steps: end.total,
            seed,
            expert: end.expert,
            latents: TensorData::from_tensor(end.latents)?,
            scheduler: end.scheduler.state()?,
        })
    }

    /// Bytes of the tensors (4 per value): what dominates the checkpoint's size.
    pub fn tensor_bytes(&self) -> u64 {
        let mut state = self.clone();
        state
            .slots()
            .iter()
            .map(|(_, t)| 4 * t.bits.len() as u64)
            .sum()
    }

    /// The safetensors file; `metadata` keys must not start with [`RESERVED_PREFIX`].
    pub fn to_bytes(&self, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
        if let Some(key) = metadata.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            return Err(invalid(format!(
                "metadata key {key:?} uses the reserved prefix {RESERVED_PREFIX:?}; rename it"
            )));
        }
        let mut header_state = self.clone();
        let tensors: Vec<(String, Vec<i64>, Vec<u32>)> = header_state
            .slots()
            .into_iter()
            .map(|(name, t)| (name, t.shape.clone(), std::mem::take(&mut t.bits)))
            .collect();
        let state_json = serde_json::to_string(&header_state)
            .map_err(|e| invalid(format!("state not serialisable: {e}")))?;
        let mut all = metadata.clone();
        all.insert(FORMAT_KEY.into(), FORMAT.into());
        all.insert(STATE_KEY.into(), state_json);
        let views: Vec<(&str, &[i64], &[u32])> = tensors
            .iter()
            .map(|(n, s, b)| (n.as_str(), s.as_slice(), b.as_slice()))
            .collect();
        Ok(encode_safetensors(&all, &views))
    }

    /// Reads a file written by [`DenoiseState::to_bytes`]: the state and the caller's metadata.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, BTreeMap<String, String>)> {
        let (mut metadata, mut tensors) = decode_safetensors(bytes, true)?;
        check_format(&metadata)?;
        let state_json = metadata
            .remove(STATE_KEY)
            .ok_or_else(|| invalid(format!("no {STATE_KEY} in the metadata")))?;
        metadata.retain(|k, _| !k.starts_with(RESERVED_PREFIX));
        let mut state: Self = serde_json::from_str(&state_json)
            .map_err(|e| invalid(format!("unreadable {STATE_KEY}: {e}")))?;
        for (name, slot) in state.slots() {
            let (shape, bits) = tensors
                .remove(&name)
                .ok_or_else(|| invalid(format!("tensor {name} is missing")))?;
            if shape != slot.shape {
                return Err(invalid(format!(
                    "tensor {name} has shape {shape:?}, the state says {:?}",
                    slot.shape
                )));
            }
            slot.bits = bits;
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(invalid(format!("unexpected tensor {extra}")));
        }
        Ok((state, metadata))
    }

    /// The tensors of the state, with their names in the file.
    fn slots(&mut self) -> Vec<(String, &mut TensorData)> {
        let mut slots = vec![("latents".to_string(), &mut self.latents)];
        if let SchedulerState::UniPc(unipc) = &mut self.scheduler {
            for (i, output) in unipc.model_outputs.iter_mut().enumerate() {
                if let Some(output) = output {
                    slots.push((format!("scheduler.model_outputs.{i}"), output));
                }
            }
            if let Some(sample) = &mut unipc.last_sample {
                slots.push(("scheduler.last_sample".to_string(), sample));
            }
        }
        slots
    }
}

/// The metadata of a checkpoint (the caller's keys and the format's own), without decoding the
/// tensors. Fails when the bytes are not a complete checkpoint of this format.
pub fn read_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let (metadata, _) = decode_safetensors(bytes, false)?;
    check_format(&metadata)?;
    Ok(metadata)
}

/// A checkpoint with only metadata and no tensors (for backends without tensor state).
pub fn metadata_only(metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut all = metadata.clone();
    all.insert(FORMAT_KEY.into(), FORMAT.into());
    encode_safetensors(&all, &[])
}

fn check_format(metadata: &BTreeMap<String, String>) -> Result<()> {
    match metadata.get(FORMAT_KEY) {
        Some(format) if format == FORMAT => Ok(()),
        other => Err(invalid(format!(
            "format {other:?}, expected {FORMAT:?} — written by another version; start from step 0"
        ))),
    }
}

fn invalid(message: impl Into<String>) -> PipelineError {
    PipelineError::invalid("checkpoint", message)
}

/// safetensors: u64 LE header length, JSON header (padded with spaces to 8 bytes), raw data.
fn encode_safetensors(
    metadata: &BTreeMap<String, String>,
    tensors: &[(&str, &[i64], &[u32])],
) -> Vec<u8> {
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    for (name, shape, bits) in tensors {
        let end = offset + 4 * bits.len();
        header.insert(
            (*name).to_string(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, _, bits) in tensors {
        for b in *bits {
            out.extend_from_slice(&b.to_le_bytes());
        }
    }
    out
}

type Tensors = BTreeMap<String, (Vec<i64>, Vec<u32>)>;

/// Parses and checks a safetensors file; the tensor values only with `with_data`.
fn decode_safetensors(
    bytes: &[u8],
    with_data: bool,
) -> Result<(BTreeMap<String, String>, Tensors)> {
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| invalid(format!("{} bytes, too short for a header", bytes.len())))?;
    if len > MAX_HEADER || 8 + len > bytes.len() as u64 {
        return Err(invalid(format!(
            "header of {len} bytes does not fit a {}-byte file (truncated?)",
            bytes.len()
        )));
    }
    let data = &bytes[8 + len as usize..];
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + len as usize])
        .map_err(|e| invalid(format!("unreadable header: {e}")))?;
    let mut metadata = BTreeMap::new();
    let mut tensors = Tensors::new();
    let mut covered = 0usize;
    for (name, entry) in header {
        if name == "__metadata__" {
            metadata = serde_json::from_value(entry)
                .map_err(|e| invalid(format!("unreadable __metadata__: {e}")))?;
            continue;
        }
        #[derive(Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<i64>,
            data_offsets: [usize; 2],
        }
        let entry: Entry =
            serde_json::from_value(entry).map_err(|e| invalid(format!("tensor {name}: {e}")))?;
        let [start, end] = entry.data_offsets;
        let numel: i64 = entry.shape.iter().product();
        if entry.dtype != "F32"
            || entry.shape.iter().any(|&d| d < 0)
            || start > end
            || end > data.len()
            || (end - start) as i64 != 4 * numel
        {
            return Err(invalid(format!(
                "tensor {name}: {} {:?} at {start}..{end} does not fit {} data bytes",
                entry.dtype,
                entry.shape,
                data.len()
            )));
        }
        covered += end - start;
        let bits = if with_data {
            data[start..end]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        } else {
            Vec::new()
        };
        tensors.insert(name, (entry.shape, bits));
    }
    if covered != data.len() {
        return Err(invalid(format!(
            "the tensors cover {covered} of {} data bytes (truncated or padded file)",
            data.len()
        )));
    }
    Ok((metadata, tensors))
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::scheduler::state::UniPcState;

    fn data(shape: &[i64], kind: Kind) -> TensorData {
        let t = Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind);
        TensorData::from_tensor(&t).unwrap()
    }

    fn state() -> DenoiseState {
        DenoiseState {
            step: 3,
            total_steps: 5,
            seed: u64::MAX - 7,
            expert: Expert::Low,
            latents: data(&[1, 4, 2, 3, 5], Kind::Float),
            scheduler: SchedulerState::UniPc(UniPcState {
                timesteps: vec![999, 800, 600, 400, 200],
                sigma_bits: (0..6).map(|i| (i as f32 / 6.0).to_bits()).collect(),
                step_index: 3,
                lower_order_nums: 2,
                this_order: 2,
                model_outputs: vec![Some(data(&[1, 4, 2, 3, 5], Kind::BFloat16)), None],
                last_sample: Some(data(&[1, 4, 2, 3, 5], Kind::Float)),
            }),
        }
    }

    #[test]
    fn state_and_metadata_round_trip_exactly() {
        let s = state();
        let meta = BTreeMap::from([("request_digest".to_string(), "abc".to_string())]);
        let bytes = s.to_bytes(&meta).unwrap();
        assert_eq!(&bytes[8..9], b"{");
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
        let (back, back_meta) = DenoiseState::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back_meta, meta);
        assert_eq!(read_metadata(&bytes).unwrap()["request_digest"], "abc");
        assert_eq!(s.tensor_bytes(), 3 * 120 * 4);
    }

    #[test]
    fn truncated_padded_or_foreign_files_are_refused() {
        let bytes = state().to_bytes(&BTreeMap::new()).unwrap();
        for cut in [0, 7, 100, bytes.len() - 1] {
            assert!(
                DenoiseState::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
            assert!(read_metadata(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(DenoiseState::from_bytes(&padded).is_err());
        let foreign = encode_safetensors(&BTreeMap::new(), &[]);
        assert!(read_metadata(&foreign).is_err(), "no t2v.format");
        let reserved = BTreeMap::from([("t2v.x".to_string(), String::new())]);
        assert!(state().to_bytes(&reserved).is_err());
    }

    #[test]
    fn metadata_only_checkpoints_have_no_tensors() {
        let meta = BTreeMap::from([("step".to_string(), "4".to_string())]);
        let bytes = metadata_only(&meta);
        assert_eq!(read_metadata(&bytes).unwrap()["step"], "4");
        assert!(DenoiseState::from_bytes(&bytes).is_err(), "no state");
    }
}
