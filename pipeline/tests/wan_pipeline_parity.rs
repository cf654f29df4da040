//! The whole pipeline against diffusers `WanPipeline(..., output_type="np")` on the CPU in f32,
//! over the tiny model directories `pipeline/parity/wan_pipeline.py` writes (two experts with a
//! boundary, and a single expert), plus the pipeline's input errors.
//!
//! Tolerances: frames (in [0, 1]) within 1e-3 absolute, the acceptance bar; the final latents
//! within 1e-4 absolute + 1e-4 relative; the initial noise and the prompt embeddings exactly / within
//! 1e-5. Runs that draw noise hold `common::seed_lock`: the seed goes through libtorch's global
//! generator.

mod common;

use std::path::{Path, PathBuf};

use common::{
    assert_close, fixture, generation_params, load_pipeline, load_tensors, max_abs, read_json, run,
    seed_lock, FRAMES_ATOL,
};
use t2v_pipeline::denoise::{Expert, StepControl};
use t2v_pipeline::memory::{ExpertPlacement, MemoryPolicy};
use t2v_pipeline::text_to_video::{initial_noise, GenerationParams, LoadOptions, WanT2V};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

struct Case {
    dir: PathBuf,
    settings: serde_json::Value,
    reference: std::collections::HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let dir = fixture("wan_pipeline").join(name);
    Case {
        reference: load_tensors(&dir.join("reference.safetensors")),
        settings: read_json(&dir.join("settings.json")),
        dir,
    }
}

impl Case {
    fn params(&self) -> GenerationParams {
        let max_sequence_length = self.settings["max_sequence_length"]
            .as_u64()
            .expect("settings.max_sequence_length");
        GenerationParams {
            max_sequence_length: max_sequence_length as usize,
            ..generation_params(&self.settings)
        }
    }

    fn load(&self, memory: MemoryPolicy) -> WanT2V {
        load_pipeline(&self.dir, memory)
    }
}

/// Runs `name` and checks every stage against the reference; returns the frames.
fn check_case(name: &str, expected_experts: &[Expert]) -> Tensor {
    let c = case(name);
    let params = c.params();
    let mut pipe = c.load(MemoryPolicy::all_resident());

    // Prompt embeddings, as encode_prompt gives them.
    let (embeds, negative) = pipe
        .encode_prompt(
            &params.prompt,
            params.negative_prompt.as_deref(),
            true,
            params.max_sequence_length,
        )
        .unwrap();
    assert_close(
        &format!("{name} prompt_embeds"),
        &embeds,
        &c.reference["prompt_embeds"],
        1e-5,
        1e-5,
    );
    let negative = negative.expect("CFG gives negative embeddings");
    assert_close(
        &format!("{name} negative_prompt_embeds"),
        &negative,
        &c.reference["negative_prompt_embeds"],
        1e-5,
        1e-5,
    );

    let run = run(&mut pipe, &params);
    assert_eq!(run.experts, expected_experts, "{name}: expert per step");
    assert_close(
        &format!("{name} final latents"),
        &run.last_latents,
        &c.reference["latents"],
        1e-4,
        1e-4,
    );
    let expected = &c.reference["frames"];
    let frames = &run.output.frames;
    assert_eq!(
        frames.size(),
        expected.size(),
        "{name}: frames shape (F, H, W, 3)"
    );
    assert_eq!(frames.kind(), Kind::Float);
    assert_eq!(
        run.output.num_frames,
        c.settings["num_frames_used"].as_i64().unwrap()
    );
    assert_eq!(run.output.seed, params.seed.unwrap());
    let diff = max_abs(frames, expected);
    eprintln!(
        "{name}: max |frames − diffusers| = {diff:.3e}, final latents {:.3e}; timings {:?}",
        max_abs(&run.last_latents, &c.reference["latents"]),
        run.output.timings
    );
    assert!(
        diff <= FRAMES_ATOL,
        "{name}: max |frames − reference| {diff:.3e} > {FRAMES_ATOL:.0e}"
    );
    run.output.frames
}

#[test]
fn seed_gives_the_reference_initial_noise() {
    for name in ["two_experts", "single_expert"] {
        let c = case(name);
        let reference = &c.reference["noise"];
        let shape: [i64; 5] = reference.size().try_into().unwrap();
        let _seed = seed_lock();
        let noise = initial_noise(c.params().seed.unwrap(), shape).unwrap();
        assert!(
            noise.equal(reference),
            "{name}: noise from the seed differs from torch.Generator's"
        );
    }
}

#[test]
fn two_experts_match_diffusers() {
    use Expert::{High, Low};
    // boundary 0.825 splits the timesteps [999, 900, 750, 500] two and two.
    let frames = check_case("two_experts", &[High, High, Low, Low]);
    // The tolerance tells seeds apart: another seed is far outside it.
    let c = case("two_experts");
    let other_seed = GenerationParams {
        seed: Some(43),
        ..c.params()
    };
    let other = run(&mut c.load(MemoryPolicy::all_resident()), &other_seed);
    assert!(max_abs(&other.output.frames, &frames) > 100.0 * FRAMES_ATOL);
}

#[test]
fn single_expert_matches_diffusers_and_rounds_frames() {
    let c = case("single_expert");
    assert_eq!(c.params().num_frames, 11);
    let frames = check_case("single_expert", &[Expert::High; 4]);
    assert_eq!(
        frames.size()[0],
        9,
        "11 frames round to 9 as in the reference"
    );
    let resolved = c
        .load(MemoryPolicy::all_resident())
        .resolve(&c.params())
        .unwrap();
    assert_eq!(resolved.num_frames, 9);
    assert_eq!(resolved.warnings.len(), 1, "{:?}", resolved.warnings);
}

#[test]
fn swapping_and_offloading_give_the_same_frames() {
    let c = case("two_experts");
    let params = c.params();
    let resident = run(&mut c.load(MemoryPolicy::all_resident()), &params);
    let policy = MemoryPolicy {
        experts: ExpertPlacement::SwapExperts,
        offload_text_encoder: true,
        vae_tiling: None,
    };
    let mut pipe = c.load(policy);
    // No expert on the device from the load on, so the first job's text encoding peaks no
    // higher than a later job's.
    assert_eq!(pipe.experts_on_device(), 0);
    let swapped = run(&mut pipe, &params);
    assert_eq!(pipe.experts_on_device(), 0);
    assert!(swapped.output.frames.equal(&resident.output.frames));
    // A second request on the same pipeline (experts and encoder fetched again) is unchanged.
    let again = run(&mut pipe, &params);
    assert!(again.output.frames.equal(&resident.output.frames));
}

#[test]
fn the_callback_cancels() {
    let c = case("two_experts");
    let mut pipe = c.load(MemoryPolicy::all_resident());
    let _seed = seed_lock();
    let mut seen = 0;
    let result = pipe.generate(&c.params(), &mut |step| {
        seen += 1;
        if step.index == 1 {
            StepControl::Stop
        } else {
            StepControl::Continue
        }
    });
    assert!(
        matches!(result, Err(PipelineError::Canceled { step: 2 })),
        "{result:?}"
    );
    assert_eq!(seen, 2);
}

fn copy_dir(from: &Path, to: &Path, skip: &str) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        if name == skip {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, skip);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn missing_tokenizer_fails_with_one_line_naming_the_path() {
    let c = case("single_expert");
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&c.dir, tmp.path(), "tokenizer");
    let Err(err) = WanT2V::load(tmp.path(), LoadOptions::new(Device::Cpu, Kind::Float)) else {
        panic!("a model without tokenizer/ loaded");
    };
    let line = err.to_string();
    eprintln!("{line}");
    assert!(matches!(err, PipelineError::MissingFile { .. }), "{line}");
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(
        line.contains(&tmp.path().join("tokenizer").display().to_string()),
        "{line}"
    );
}

#[test]
fn impossible_sizes_and_settings_are_input_errors_naming_the_field() {
    let c = case("single_expert");
    let pipe = c.load(MemoryPolicy::all_resident());
    let field_of = |params: GenerationParams| match pipe.resolve(&params) {
        Err(PipelineError::InvalidInput { field, message }) => {
            assert!(!message.contains('\n'));
            field
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    };
    let base = c.params();
    assert_eq!(
        field_of(GenerationParams {
            width: 100,
            ..base.clone()
        }),
        "width"
    );
    assert_eq!(
        field_of(GenerationParams {
            height: 0,
            ..base.clone()
        }),
        "height"
    );
    assert_eq!(
        field_of(GenerationParams {
            num_frames: 0,
            ..base.clone()
        }),
        "num_frames"
    );
    assert_eq!(
        field_of(GenerationParams {
            num_inference_steps: 0,
            ..base.clone()
        }),
        "num_inference_steps"
    );
    // As the reference: guidance_scale_2 needs a boundary (two experts).
    assert_eq!(
        field_of(GenerationParams {
            guidance_scale_2: Some(3.0),
            ..base.clone()
        }),
        "guidance_scale_2"
    );
    let err = pipe
        .resolve(&GenerationParams { width: 100, ..base })
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("invalid width: 100 must be a positive multiple of 16"),
        "{err}"
    );
}

#[test]
fn prompts_over_the_limit_are_refused_only_when_strict() {
    let c = case("single_expert");
    let pipe = c.load(MemoryPolicy::all_resident());
    let long = "a cat and a dog baking a cake ".repeat(100);
    let lenient = GenerationParams {
        prompt: long.clone(),
        ..c.params()
    };
    // The reference truncates silently; so does the default.
    pipe.resolve(&lenient).unwrap();
    let strict = GenerationParams {
        reject_long_prompts: true,
        ..lenient
    };
    match pipe.resolve(&strict) {
        Err(PipelineError::InvalidInput { field, message }) => {
            assert_eq!(field, "prompt");
            assert!(message.contains("exceed the limit of 512"), "{message}");
        }
        other => panic!("expected InvalidInput on prompt, got {other:?}"),
    }
    let strict_negative = GenerationParams {
        prompt: "a cat".into(),
        negative_prompt: Some(long),
        reject_long_prompts: true,
        max_prompt_tokens: Some(64),
        ..c.params()
    };
    assert!(matches!(
        pipe.resolve(&strict_negative),
        Err(PipelineError::InvalidInput { field, .. }) if field == "negative_prompt"
    ));
}
