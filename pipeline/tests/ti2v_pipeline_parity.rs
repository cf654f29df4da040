//! Wan2.2 TI2V-5B's two modes against diffusers on the CPU in f32, over the tiny TI2V-shaped
//! directory `pipeline/parity/ti2v_pipeline.py` writes (one expert with one timestep per token,
//! the Wan2.2 VAE with 48 latent channels): text-to-video (`WanPipeline`) and
//! text+image-to-video (`WanImageToVideoPipeline` on the same directory, the 61×37 test image
//! stretched to 96×64).
//!
//! Tolerances: frames (in [0, 1]) within 1e-3 absolute, the acceptance bar; the image's latent
//! and the final latents within 1e-4.

mod common;

use common::{
    assert_close, fixture, generation_params, load_pipeline, load_tensors, max_abs, read_json, run,
    seed_lock, FRAMES_ATOL,
};
use t2v_pipeline::checkpoint::DenoiseState;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::image::decode_condition_image;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::model_dir::ModelKind;
use t2v_pipeline::parallel::{ParallelLayout, ParallelPlan};
use t2v_pipeline::text_to_video::conditioning::{LatentCondition, VideoSize};
use t2v_pipeline::text_to_video::{GenerationParams, WanT2V};
use tch::{Device, Tensor};

fn model_dir() -> std::path::PathBuf {
    fixture("ti2v_pipeline").join("model")
}

fn reference(name: &str) -> (serde_json::Value, std::collections::HashMap<String, Tensor>) {
    let dir = model_dir();
    let settings = read_json(&dir.join(format!("{name}.json")));
    let tensors = load_tensors(&dir.join(format!("{name}.safetensors")));
    (settings, tensors)
}

fn params(s: &serde_json::Value) -> GenerationParams {
    GenerationParams {
        guidance_scale_2: None,
        ..generation_params(s)
    }
}

fn load() -> WanT2V {
    let pipe = load_pipeline(&model_dir(), MemoryPolicy::all_resident());
    assert_eq!(pipe.kind(), ModelKind::TextImageToVideo);
    pipe
}

/// Runs `params` and compares the final latents and the frames with `reference`.
fn check_run(
    mode: &str,
    pipe: &mut WanT2V,
    params: &GenerationParams,
    reference: &std::collections::HashMap<String, Tensor>,
) {
    let run = run(pipe, params);
    assert_close(
        &format!("{mode} latents"),
        &run.last_latents,
        &reference["latents"],
        1e-4,
        1e-4,
    );
    let diff = max_abs(&run.output.frames, &reference["frames"]);
    println!("TI2V {mode} frames: max |ours − diffusers| = {diff:.3e}");
    assert!(diff <= FRAMES_ATOL, "{mode} frames differ by {diff}");
}

#[test]
fn text_to_video_matches_diffusers() {
    let (settings, reference) = reference("t2v");
    let mut pipe = load();
    check_run("t2v", &mut pipe, &params(&settings), &reference);
}

#[test]
fn text_and_image_to_video_matches_diffusers() {
    let (settings, reference) = reference("i2v");
    let mut pipe = load();
    let bytes = std::fs::read(fixture("ti2v_pipeline").join("image.png")).unwrap();
    let image = decode_condition_image(&bytes).unwrap();
    let params = GenerationParams {
        image: Some(image.clone()),
        ..params(&settings)
    };
    let resolved = pipe.resolve(&params).unwrap();
    let condition = LatentCondition::prepare(
        pipe.kind(),
        pipe.vae(),
        &image,
        VideoSize {
            width: resolved.width,
            height: resolved.height,
            num_frames: resolved.num_frames,
        },
        Device::Cpu,
    )
    .unwrap()
    .expect("TI2V conditions on an image");
    match &condition {
        LatentCondition::FirstFrame { condition, .. } => assert_close(
            "image latent",
            condition,
            &reference["condition"],
            1e-4,
            1e-4,
        ),
        other => panic!("expected a first-frame condition, got {other:?}"),
    }
    check_run("i2v", &mut pipe, &params, &reference);
}

fn image_params() -> (GenerationParams, std::collections::HashMap<String, Tensor>) {
    let (settings, reference) = reference("i2v");
    let bytes = std::fs::read(fixture("ti2v_pipeline").join("image.png")).unwrap();
    let params = GenerationParams {
        image: Some(decode_condition_image(&bytes).unwrap()),
        ..params(&settings)
    };
    (params, reference)
}

/// One timestep per token sharded with the tokens (Ulysses), and CFG on two ranks: the frames
/// of text+image-to-video still match the reference.
#[test]
fn text_and_image_to_video_on_ranks_matches_diffusers() {
    let (params, reference) = image_params();
    let mut pipe = load();
    for (cfg, ulysses) in [(2, 1), (1, 2), (2, 2)] {
        let layout = ParallelLayout { cfg, ulysses };
        pipe.set_parallel(Some(ParallelPlan::on_one_device(layout, Device::Cpu)))
            .unwrap();
        let _seed = seed_lock();
        let frames = pipe
            .generate(&params, &mut |_| StepControl::Continue)
            .unwrap()
            .frames;
        let diff = max_abs(&frames, &reference["frames"]);
        println!("TI2V i2v layout {layout}: frames max |ours − diffusers| = {diff:.3e}");
        assert!(
            diff <= FRAMES_ATOL,
            "layout {layout}: frames differ by {diff}"
        );
    }
}

/// A run stopped after 2 steps and resumed from its checkpoint gives the uninterrupted frames:
/// the condition is rebuilt from the image, the checkpoint holds the plain latents.
#[test]
fn text_and_image_to_video_resumes_bit_identically() {
    let (params, _) = image_params();
    let mut pipe = load();
    let _seed = seed_lock();
    let full = pipe
        .generate(&params, &mut |_| StepControl::Continue)
        .unwrap()
        .frames;
    let mut saved = None;
    let stopped = pipe.generate(&params, &mut |step| {
        if step.index + 1 == 2 {
            saved = Some(DenoiseState::capture(step, params.seed.unwrap()).unwrap());
            return StepControl::Stop;
        }
        StepControl::Continue
    });
    assert!(stopped.is_err(), "the run should stop at step 2");
    let state = saved.expect("state at step 2");
    let resumed = pipe
        .generate_with(&params, Some(&state), &mut |_| StepControl::Continue)
        .unwrap()
        .frames;
    assert!(
        resumed.equal(&full),
        "resumed frames differ from the uninterrupted run"
    );
}

#[test]
fn the_defaults_of_ti2v_are_the_published_ones() {
    let params = GenerationParams::defaults_for(load().kind());
    assert_eq!(
        (params.width, params.height, params.num_frames),
        (1280, 704, 121)
    );
    assert_eq!(
        (params.num_inference_steps, params.guidance_scale),
        (50, 5.0)
    );
    assert_eq!(params.guidance_scale_2, None);
    assert_eq!(ModelKind::TextImageToVideo.defaults().fps, 24);
}
