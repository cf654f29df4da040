//! Shared helpers for the parity tests: where the reference fixtures live and how to compare.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use t2v_pipeline::denoise::{Expert, StepControl};
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::text_to_video::{GenerationOutput, GenerationParams, LoadOptions, WanT2V};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

/// Frames (values in [0, 1]) of a whole-pipeline run match the reference within this absolute
/// tolerance: the acceptance bar.
pub const FRAMES_ATOL: f64 = 1e-3;

/// Held by every run that draws noise: the seed goes through libtorch's global generator, which
/// the tests of one binary share.
static SEED_LOCK: Mutex<()> = Mutex::new(());

/// Takes [`SEED_LOCK`] (a test that panicked while holding it does not poison the others).
pub fn seed_lock() -> MutexGuard<'static, ()> {
    SEED_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Root of the reference fixtures written by `pipeline/parity/*.py` (`make fixtures`).
/// `T2V_FIXTURES` overrides the default `<workspace>/build/fixtures`.
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("T2V_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures"))
}

/// The fixture folder `name`. Panics (the test fails, never skips) when it is missing.
pub fn fixture(name: &str) -> PathBuf {
    let dir = fixtures_root().join(name);
    assert!(
        dir.is_dir(),
        "reference fixtures not found at {} — run `make fixtures` (writes them with diffusers)",
        dir.display()
    );
    dir
}

/// Reads a JSON file of the fixtures (a reference run's settings).
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// Loads every tensor of a safetensors file into a name → tensor map (CPU).
pub fn load_tensors(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Asserts `|actual - expected| <= atol + rtol * |expected|` elementwise, printing the worst offender.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, rtol: f64, atol: f64) {
    assert_eq!(
        actual.size(),
        expected.size(),
        "{what}: shape {:?} != reference {:?}",
        actual.size(),
        expected.size()
    );
    let a = actual
        .to_kind(tch::Kind::Double)
        .to_device(tch::Device::Cpu);
    let e = expected
        .to_kind(tch::Kind::Double)
        .to_device(tch::Device::Cpu);
    let diff = (&a - &e).abs();
    let allowed = e.abs() * rtol + atol;
    let excess = (&diff - &allowed).max().double_value(&[]);
    let max_abs = diff.max().double_value(&[]);
    let ref_scale = e.abs().max().double_value(&[]);
    assert!(
        excess <= 0.0,
        "{what}: max |diff| {max_abs:.3e} exceeds atol {atol:.1e} + rtol {rtol:.1e}·|ref| (ref max |x| {ref_scale:.3e})"
    );
}

/// The largest elementwise `|a - b|`, computed in f64.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The request a reference run's settings describe (the call's arguments as
/// `pipeline/parity/tiny_pipelines.py` passes them: prompt, negative_prompt, width, height,
/// num_frames, num_inference_steps, guidance_scale, guidance_scale_2 when set, seed); every
/// other field keeps its default.
pub fn generation_params(settings: &serde_json::Value) -> GenerationParams {
    let int = |k: &str| {
        settings[k]
            .as_i64()
            .unwrap_or_else(|| panic!("settings.{k}"))
    };
    GenerationParams {
        prompt: settings["prompt"].as_str().unwrap().to_string(),
        negative_prompt: settings["negative_prompt"].as_str().map(str::to_string),
        width: int("width"),
        height: int("height"),
        num_frames: int("num_frames"),
        num_inference_steps: int("num_inference_steps") as usize,
        guidance_scale: settings["guidance_scale"].as_f64().unwrap(),
        guidance_scale_2: settings["guidance_scale_2"].as_f64(),
        seed: Some(int("seed") as u64),
        ..GenerationParams::default()
    }
}

/// Loads a tiny model directory of the fixtures on the CPU in f32 with `memory`.
pub fn load_pipeline(dir: &Path, memory: MemoryPolicy) -> WanT2V {
    let options = LoadOptions {
        memory,
        ..LoadOptions::new(Device::Cpu, Kind::Float)
    };
    WanT2V::load(dir, options).unwrap_or_else(|e| panic!("load {}: {e}", dir.display()))
}

/// A finished run and what its step callback saw.
pub struct Run {
    pub output: GenerationOutput,
    /// The expert of each step, in order.
    pub experts: Vec<Expert>,
    /// The latents after the last step.
    pub last_latents: Tensor,
}

/// Generates `params` on `pipe` (holding [`seed_lock`]) and records each step's expert and the
/// latents after the last step.
pub fn try_run(pipe: &mut WanT2V, params: &GenerationParams) -> Result<Run, PipelineError> {
    let _seed = seed_lock();
    let mut experts = Vec::new();
    let mut last_latents = None;
    let output = pipe.generate(params, &mut |step| {
        experts.push(step.expert);
        last_latents = Some(step.latents.copy());
        StepControl::Continue
    })?;
    Ok(Run {
        output,
        experts,
        last_latents: last_latents.expect("no step reported"),
    })
}

/// [`try_run`] that must succeed.
pub fn run(pipe: &mut WanT2V, params: &GenerationParams) -> Run {
    try_run(pipe, params).unwrap_or_else(|e| panic!("generate: {e}"))
}
