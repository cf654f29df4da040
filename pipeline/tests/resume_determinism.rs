//! Interrupt and resume: a run stopped at step k, its [`DenoiseState`] written to checkpoint
//! bytes and read back, and continued by a freshly loaded pipeline, gives frames bit-identical
//! (tolerance: none — every f32 bit) to the uninterrupted run. Covered: the tiny two-expert
//! model (`make fixtures`), UniPC (with its multistep history) at every step, the expert
//! boundary included, and FlowMatch Euler; a state from another request is refused.
//!
//! Runs hold `SEED_LOCK`: the seed goes through libtorch's global generator.

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::fixture;
use t2v_pipeline::checkpoint::{read_metadata, DenoiseState};
use t2v_pipeline::denoise::{Expert, StepControl};
use t2v_pipeline::scheduler::SamplerKind;
use t2v_pipeline::text_to_video::{GenerationParams, LoadOptions, WanT2V};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

static SEED_LOCK: Mutex<()> = Mutex::new(());

const STEPS: usize = 6;

fn load() -> WanT2V {
    let dir = fixture("wan_pipeline").join("two_experts");
    WanT2V::load(&dir, LoadOptions::new(Device::Cpu, Kind::Float))
        .unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

fn params(sampler: SamplerKind) -> GenerationParams {
    GenerationParams {
        prompt: "A cat and a dog baking a cake together in a kitchen.".into(),
        negative_prompt: Some("worst quality, low quality".into()),
        width: 48,
        height: 32,
        num_frames: 9,
        num_inference_steps: STEPS,
        guidance_scale: 4.0,
        guidance_scale_2: Some(3.0),
        sampler: Some(sampler),
        seed: Some(42),
        max_sequence_length: 64,
        ..GenerationParams::default()
    }
}

/// Every bit of the frames.
fn bits(frames: &Tensor) -> Vec<u32> {
    let flat = frames.to_kind(Kind::Float).contiguous().view([-1]);
    Vec::<f32>::try_from(&flat)
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// The uninterrupted run: its frames and the expert of every step.
fn uninterrupted(params: &GenerationParams) -> (Vec<u32>, Vec<Expert>) {
    let mut experts = Vec::new();
    let out = load()
        .generate(params, &mut |end| {
            experts.push(end.expert);
            StepControl::Continue
        })
        .unwrap();
    (bits(&out.frames), experts)
}

/// Runs until `stop_after` steps are done, captures the state there and stops; returns the
/// checkpoint bytes.
fn interrupted_at(params: &GenerationParams, stop_after: usize) -> Vec<u8> {
    let mut saved = None;
    let result = load().generate(params, &mut |end| {
        if end.index + 1 == stop_after {
            saved = Some(DenoiseState::capture(end, 42).unwrap());
            StepControl::Stop
        } else {
            StepControl::Continue
        }
    });
    assert!(
        matches!(result, Err(PipelineError::Canceled { step }) if step == stop_after),
        "{result:?}"
    );
    let meta = BTreeMap::from([("request_digest".to_string(), "test".to_string())]);
    saved.expect("state captured").to_bytes(&meta).unwrap()
}

/// Resumes the checkpoint in a freshly loaded pipeline; returns the frames and the steps run.
fn resumed(params: &GenerationParams, checkpoint: &[u8]) -> (Vec<u32>, Vec<usize>) {
    assert_eq!(read_metadata(checkpoint).unwrap()["request_digest"], "test");
    let (state, _) = DenoiseState::from_bytes(checkpoint).unwrap();
    let mut steps = Vec::new();
    let out = load()
        .generate_with(params, Some(&state), &mut |end| {
            steps.push(end.index);
            StepControl::Continue
        })
        .unwrap();
    (bits(&out.frames), steps)
}

#[test]
fn unipc_resumed_at_every_step_is_bit_identical() {
    let _lock = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let params = params(SamplerKind::UniPc);
    let (reference, experts) = uninterrupted(&params);
    let boundary = experts
        .iter()
        .position(|&e| e == Expert::Low)
        .expect("the schedule crosses the expert boundary");
    assert!(boundary > 0 && experts[0] == Expert::High, "{experts:?}");
    // Stopping after `boundary` steps resumes with the other expert's first step.
    for stop_after in 1..STEPS {
        let checkpoint = interrupted_at(&params, stop_after);
        let (frames, steps) = resumed(&params, &checkpoint);
        assert_eq!(steps, (stop_after..STEPS).collect::<Vec<_>>());
        let differing = frames
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "resumed after step {stop_after} (boundary at {boundary}): {differing} of {} values differ",
            reference.len()
        );
    }
}

#[test]
fn flow_euler_resumed_across_the_boundary_is_bit_identical() {
    let _lock = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let params = params(SamplerKind::FlowEuler);
    let (reference, experts) = uninterrupted(&params);
    let boundary = experts.iter().position(|&e| e == Expert::Low).unwrap();
    for stop_after in [boundary, boundary + 1] {
        let (frames, _) = resumed(&params, &interrupted_at(&params, stop_after));
        assert!(frames == reference, "FlowEuler resumed after {stop_after}");
    }
}

#[test]
fn a_state_of_another_request_is_refused() {
    let _lock = SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let params = params(SamplerKind::UniPc);
    let (state, _) = DenoiseState::from_bytes(&interrupted_at(&params, 2)).unwrap();
    let mut pipe = load();
    for other in [
        GenerationParams {
            seed: Some(7),
            ..params.clone()
        },
        GenerationParams {
            num_inference_steps: STEPS + 1,
            ..params.clone()
        },
        GenerationParams {
            width: 64,
            ..params.clone()
        },
    ] {
        let result = pipe.generate_with(&other, Some(&state), &mut |_| StepControl::Continue);
        assert!(
            matches!(&result, Err(PipelineError::InvalidInput { field, .. }) if field == "checkpoint"),
            "{result:?}"
        );
    }
}
