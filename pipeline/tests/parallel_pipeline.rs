//! [`WanT2V`] with a parallel plan: the whole pipeline (prompt → noise → two-expert denoise with
//! CFG → VAE) on the tiny two-expert model of `make fixtures` (2 heads), ranks as threads on
//! the CPU, gives the frames of the one-device pipeline — within 1e-5, f32 — for CFG parallel,
//! Ulysses and both, resident and with swapped experts; plans the model cannot run are refused.
//!
//! Runs hold `SEED_LOCK`: the seed goes through libtorch's global generator.

mod common;

use std::sync::Mutex;

use common::fixture;
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
