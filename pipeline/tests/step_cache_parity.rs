//! Step caching against diffusers' own hooks (`transformer.enable_cache(FirstBlockCacheConfig /
//! MagCacheConfig)` on both experts) over the tiny models `pipeline/parity/step_cache.py` writes:
//! every forward's decision (expert, CFG branch, skipped or computed) identical, frames within
//! 1e-3 (the acceptance bar), final latents within 1e-4, MagCache calibration ratios within
//! 1e-4 relative. Plus what the cache refuses: step-distilled runs and several ranks.
//!
//! Runs draw noise through libtorch's global generator: they hold `common::seed_lock`.

mod common;

use std::path::PathBuf;

use common::{
    assert_close, fixture, generation_params, load_pipeline, load_tensors, max_abs, read_json,
    try_run, Run, FRAMES_ATOL,
};
use t2v_pipeline::denoise::Expert;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::parallel::{ParallelLayout, ParallelPlan};
use t2v_pipeline::step_cache::{Branch, CachePolicy, MagSettings, StepCacheConfig};
use t2v_pipeline::text_to_video::{GenerationOutput, GenerationParams, WanT2V};
use t2v_pipeline::PipelineError;
use tch::{Device, Tensor};

struct Case {
    model: PathBuf,
    settings: serde_json::Value,
    reference: std::collections::HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let root = fixture("step_cache");
    let dir = root.join(name);
    let settings = read_json(&dir.join("settings.json"));
    Case {
        model: root.join(settings["model"].as_str().expect("settings.model")),
        reference: load_tensors(&dir.join("reference.safetensors")),
        settings,
    }
}

impl Case {
    fn cache(&self) -> StepCacheConfig {
        let c = &self.settings["cache"];
        let threshold = c["threshold"].as_f64().expect("cache.threshold");
        let policy = match c["kind"].as_str().expect("cache.kind") {
            "first_block" => CachePolicy::FirstBlock,
            "mag" => CachePolicy::Mag(MagSettings {
                max_skip_steps: c["max_skip_steps"].as_u64().expect("max_skip_steps") as usize,
                retention_ratio: c["retention_ratio"].as_f64().expect("retention_ratio"),
                mag_ratios: c["mag_ratios"]
                    .as_array()
                    .map(|r| r.iter().map(|v| v.as_f64().unwrap() as f32).collect()),
                calibrate: c["calibrate"].as_bool().expect("calibrate"),
            }),
            other => panic!("unknown cache kind {other}"),
        };
        StepCacheConfig { policy, threshold }
    }

    fn params(&self) -> GenerationParams {
        GenerationParams {
            step_cache: Some(self.cache()),
            ..generation_params(&self.settings)
        }
    }

    /// diffusers' forwards as (expert, branch, skipped).
    fn forwards(&self) -> Vec<(Expert, Branch, bool)> {
        let forwards = self.settings["forwards"].as_array().expect("forwards");
        forwards
            .iter()
            .map(|f| {
                let expert = match f["expert"].as_str().unwrap() {
                    "transformer" => Expert::High,
                    _ => Expert::Low,
                };
                let branch = match f["branch"].as_str().unwrap() {
                    "cond" => Branch::Cond,
                    _ => Branch::Uncond,
                };
                (expert, branch, f["skipped"].as_bool().unwrap())
            })
            .collect()
    }
}

fn load(model: &std::path::Path) -> WanT2V {
    load_pipeline(model, MemoryPolicy::all_resident())
}

/// Runs `params` and returns the output with the latents after the last step.
fn run(
    pipe: &mut WanT2V,
    params: &GenerationParams,
) -> Result<(GenerationOutput, Tensor), PipelineError> {
    let Run {
        output,
        last_latents,
        ..
    } = try_run(pipe, params)?;
    Ok((output, last_latents))
}

/// The case's run matches diffusers: decisions, frames, latents.
fn check(name: &str) -> GenerationOutput {
    let c = case(name);
    let (out, latents) = run(&mut load(&c.model), &c.params()).expect("generate");
    let report = out.step_cache.as_ref().expect("a cache report");
    let ours: Vec<_> = report
        .forwards
        .iter()
        .map(|f| (f.expert, f.branch, f.skipped))
        .collect();
    assert_eq!(
        ours,
        c.forwards(),
        "{name}: forwards (expert, branch, skipped) differ from diffusers'"
    );
    assert_close(
        &format!("{name} latents"),
        &latents,
        &c.reference["latents"],
        1e-4,
        1e-4,
    );
    eprintln!(
        "{name}: {} of {} forwards skipped; max |diff| frames {:.2e}, latents {:.2e}",
        report.skipped(),
        report.forwards.len(),
        max_abs(&out.frames, &c.reference["frames"]),
        max_abs(&latents, &c.reference["latents"])
    );
    assert_close(
        &format!("{name} frames"),
        &out.frames,
        &c.reference["frames"],
        0.0,
        FRAMES_ATOL,
    );
    out
}

fn skipped(out: &GenerationOutput) -> usize {
    out.step_cache.as_ref().unwrap().skipped()
}

#[test]
fn first_block_cache_skips_what_diffusers_skips() {
    let out = check("first_block_skips");
    assert!(
        skipped(&out) >= 4,
        "the fixture's threshold skips several forwards"
    );
}

#[test]
fn first_block_cache_below_every_change_skips_nothing() {
    let out = check("first_block_none");
    assert_eq!(skipped(&out), 0);
}

#[test]
fn first_block_cache_on_one_expert_without_cfg() {
    let out = check("first_block_single_no_cfg");
    assert!(skipped(&out) >= 2);
    let report = out.step_cache.unwrap();
    assert!(report
        .forwards
        .iter()
        .all(|f| f.branch == Branch::Cond && f.expert == Expert::High));
}

#[test]
fn mag_cache_skips_what_diffusers_skips() {
    let out = check("mag_skips");
    assert!(skipped(&out) >= 4);
}

#[test]
fn mag_cache_with_a_tiny_threshold_skips_nothing() {
    let out = check("mag_none");
    assert_eq!(skipped(&out), 0);
}

#[test]
fn mag_cache_calibration_measures_diffusers_ratios() {
    let c = case("mag_calibrate");
    let out = check("mag_calibrate");
    let report = out.step_cache.unwrap();
    let reference = &c.settings["calibration"];
    let mut compared = 0;
    for (expert, branch, ratios) in &report.calibration {
        let expert = match expert {
            Expert::High => "transformer",
            Expert::Low => "transformer_2",
        };
        let branch = match branch {
            Branch::Cond => "cond",
            Branch::Uncond => "uncond",
        };
        let expected: Vec<f64> = reference[expert][branch]
            .as_array()
            .unwrap_or_else(|| panic!("no reference ratios for {expert} {branch}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(
            ratios.len(),
            expected.len(),
            "{expert} {branch}: ratio count"
        );
        for (ours, theirs) in ratios.iter().zip(&expected) {
            assert!(
                (ours - theirs).abs() <= 1e-4 * theirs.abs(),
                "{expert} {branch}: {ratios:?} vs {expected:?}"
            );
        }
        compared += 1;
    }
    assert_eq!(
        compared, 4,
        "ratios of both experts' cond and uncond passes"
    );
}

#[test]
fn threshold_zero_turns_the_cache_off() {
    let c = case("first_block_skips");
    let mut params = c.params();
    params.step_cache.as_mut().unwrap().threshold = 0.0;
    let (out, _) = run(&mut load(&c.model), &params).unwrap();
    assert!(out.step_cache.is_none());
}

#[test]
fn a_step_distilled_run_is_refused() {
    let c = case("first_block_skips");
    let params = GenerationParams {
        num_inference_steps: 4,
        guidance_scale: 1.0,
        guidance_scale_2: Some(1.0),
        ..c.params()
    };
    let err = run(&mut load(&c.model), &params).unwrap_err();
    assert!(err.to_string().contains("step-distilled"), "{err}");
    // The same few steps with guidance on are not distilled.
    let params = GenerationParams {
        num_inference_steps: 4,
        ..c.params()
    };
    assert!(run(&mut load(&c.model), &params).is_ok());
}

#[test]
fn several_ranks_are_refused() {
    let c = case("first_block_skips");
    let mut pipe = load(&c.model);
    let plan = ParallelPlan::on_one_device(ParallelLayout { cfg: 2, ulysses: 1 }, Device::Cpu);
    pipe.set_parallel(Some(plan)).unwrap();
    let err = run(&mut pipe, &c.params()).unwrap_err();
    assert!(err.to_string().contains("several GPUs"), "{err}");
}
