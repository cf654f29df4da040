//! [`WanT2V`] with a parallel plan: the whole pipeline (prompt → noise → two-expert denoise with
//! CFG → VAE) on the tiny two-expert model of `make fixtures` (2 heads), ranks as threads on
//! the CPU, gives the frames of the one-device pipeline — within 1e-5, f32 — for CFG parallel,
//! Ulysses and both, resident and with swapped experts; a checkpoint (the bytes the worker
//! stores) taken on 4 ranks resumes on one device and one taken on one device resumes on 4;
//! plans the model cannot run are refused.
//!
//! Runs hold `SEED_LOCK`: the seed goes through libtorch's global generator.

mod common;

use std::sync::Mutex;

use common::fixture;
use std::collections::BTreeMap;

use t2v_pipeline::checkpoint::DenoiseState;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::parallel::{ParallelLayout, ParallelPlan};
use t2v_pipeline::text_to_video::{GenerationParams, LoadOptions, WanT2V};
use tch::{Device, Kind, Tensor};

static SEED_LOCK: Mutex<()> = Mutex::new(());

fn load(memory: MemoryPolicy) -> WanT2V {
    let dir = fixture("wan_pipeline").join("two_experts");
    let options = LoadOptions {
        memory,
        ..LoadOptions::new(Device::Cpu, Kind::Float)
    };
    WanT2V::load(&dir, options).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

fn params() -> GenerationParams {
    GenerationParams {
        prompt: "A cat and a dog baking a cake together in a kitchen.".into(),
        negative_prompt: Some("worst quality, low quality".into()),
        width: 48,
        height: 32,
        num_frames: 9,
        num_inference_steps: 4,
        guidance_scale: 4.0,
        guidance_scale_2: Some(3.0),
        seed: Some(42),
        max_sequence_length: 64,
        ..GenerationParams::default()
    }
}

fn frames(pipe: &mut WanT2V) -> Tensor {
    let _seed = SEED_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pipe.generate(&params(), &mut |_| StepControl::Continue)
        .unwrap()
        .frames
}

#[test]
fn parallel_plans_give_the_frames_of_one_device() {
    for memory in [MemoryPolicy::all_resident(), MemoryPolicy::low_memory()] {
        let mut pipe = load(memory);
        let reference = frames(&mut pipe);
        for (cfg, ulysses) in [(2, 1), (1, 2), (2, 2)] {
            let layout = ParallelLayout { cfg, ulysses };
            pipe.set_parallel(Some(ParallelPlan::on_one_device(layout, Device::Cpu)))
                .unwrap();
            let got = frames(&mut pipe);
            let diff = (&got - &reference).abs().max().double_value(&[]);
            println!("{memory:?} layout {layout}: frames max |diff| {diff:.3e}");
            assert!(diff <= 1e-5, "layout {layout}: frames differ by {diff:.3e}");
        }
        pipe.set_parallel(None).unwrap();
        assert!(frames(&mut pipe).equal(&reference), "back on one device");
    }
}

/// Runs `pipe` until `stop_after` steps are done and returns the state there, written to
/// checkpoint bytes and read back.
fn checkpoint_after(pipe: &mut WanT2V, stop_after: usize) -> DenoiseState {
    let _seed = SEED_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut saved = None;
    let stopped = pipe.generate(&params(), &mut |end| {
        if end.index + 1 == stop_after {
            saved = Some(DenoiseState::capture(end, 42).unwrap());
            return StepControl::Stop;
        }
        StepControl::Continue
    });
    assert!(stopped.is_err(), "the run did not stop");
    let bytes = saved.unwrap().to_bytes(&BTreeMap::new()).unwrap();
    DenoiseState::from_bytes(&bytes).unwrap().0
}

fn resumed(pipe: &mut WanT2V, state: &DenoiseState) -> Tensor {
    let _seed = SEED_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pipe.generate_with(&params(), Some(state), &mut |_| StepControl::Continue)
        .unwrap()
        .frames
}

#[test]
fn a_checkpoint_of_4_ranks_resumes_on_one_device_and_back() {
    let mut pipe = load(MemoryPolicy::all_resident());
    let reference = frames(&mut pipe);
    let two_by_two =
        ParallelPlan::on_one_device(ParallelLayout { cfg: 2, ulysses: 2 }, Device::Cpu);

    // 4 ranks stop at the expert boundary; one device finishes.
    pipe.set_parallel(Some(two_by_two.clone())).unwrap();
    let state = checkpoint_after(&mut pipe, 2);
    pipe.set_parallel(None).unwrap();
    let diff = (&resumed(&mut pipe, &state) - &reference)
        .abs()
        .max()
        .double_value(&[]);
    println!("checkpoint of 2x2 resumed on one device: frames max |diff| {diff:.3e}");
    assert!(diff <= 1e-5, "4 ranks → 1: {diff:.3e}");

    // One device stops after step 3; 4 ranks finish.
    let state = checkpoint_after(&mut pipe, 3);
    pipe.set_parallel(Some(two_by_two)).unwrap();
    let diff = (&resumed(&mut pipe, &state) - &reference)
        .abs()
        .max()
        .double_value(&[]);
    println!("checkpoint of one device resumed on 2x2: frames max |diff| {diff:.3e}");
    assert!(diff <= 1e-5, "1 → 4 ranks: {diff:.3e}");
}

#[test]
fn plans_the_model_cannot_run_are_refused() {
    let mut pipe = load(MemoryPolicy::all_resident());
    // The tiny model has 2 heads: 4 Ulysses ranks cannot split them.
    let four = ParallelPlan::on_one_device(ParallelLayout { cfg: 1, ulysses: 4 }, Device::Cpu);
    let err = pipe.set_parallel(Some(four)).unwrap_err().to_string();
    assert!(
        err.contains("must divide the model's 2 attention heads"),
        "{err}"
    );
    assert!(pipe.parallel_plan().is_none());
}
