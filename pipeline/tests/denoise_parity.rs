//! The denoising loop against diffusers `WanPipeline` (fixtures from `pipeline/parity/denoise.py`):
//! two tiny random Wan experts, boundary exactly on a timestep, CFG 4.0 / 3.0, 6 UniPC steps.
//! - the expert/text/timestep sequence equals the one diffusers ran (recording fakes);
//! - the latents after every step and at the end match (real `WanTransformer3DModel`s), also
//!   in `expand_timesteps` mode.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use t2v_pipeline::denoise::{
    denoise, DenoiseInput, DenoiseSettings, Expert, Experts, NoisePredictor, StepControl,
};
use t2v_pipeline::scheduler::{self, Scheduler};
use t2v_pipeline::wan::transformer::WanTransformer3DModel;
use t2v_pipeline::Result;
use tch::{Device, Kind, Tensor};

/// Latents tolerance (f32 CPU, 6 steps through two 2-layer transformers):
/// |rust − diffusers| ≤ ATOL + RTOL·|diffusers|.
const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

struct Fixture {
    calls: serde_json::Value,
    boundary_ratio: f64,
    inputs: HashMap<String, Tensor>,
    outputs: HashMap<String, Tensor>,
}

fn fixture() -> (std::path::PathBuf, Fixture) {
    let dir = common::fixture("denoise");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    };
    let index = read("model_index.json");
    let f = Fixture {
        calls: read("calls.json"),
        boundary_ratio: index["boundary_ratio"].as_f64().expect("boundary_ratio"),
        inputs: common::load_tensors(&dir.join("inputs.safetensors")),
        outputs: common::load_tensors(&dir.join("outputs.safetensors")),
    };
    (dir, f)
}

fn unipc(dir: &Path, steps: usize) -> Box<dyn Scheduler> {
    let mut s = scheduler::from_config_dir(dir, None).unwrap();
    s.set_timesteps(steps, None).unwrap();
    s
}

/// Logs (expert, timestep, cond/uncond) like the hooks of denoise.py; predicts zeros.
struct Recording<'a> {
    name: &'static str,
    prompt: &'a Tensor,
    log: &'a RefCell<Vec<(String, f64, String)>>,
}

impl NoisePredictor for Recording<'_> {
    fn dtype(&self) -> Kind {
        Kind::Float
    }
    fn predict(&self, latents: &Tensor, timestep: &Tensor, text: &Tensor) -> Result<Tensor> {
        let text_kind = if text.equal(self.prompt) {
            "cond"
        } else {
            "uncond"
        };
        self.log.borrow_mut().push((
            self.name.to_string(),
            timestep.double_value(&[0]),
            text_kind.to_string(),
        ));
        Ok(latents.zeros_like())
    }
}

#[test]
fn expert_sequence_matches_diffusers() {
    let (dir, f) = fixture();
    let num_steps = f.calls["num_steps"].as_u64().unwrap() as usize;
    let mut sched = unipc(&dir, num_steps);
    let expected_ts: Vec<f64> = serde_json::from_value(f.calls["timesteps"].clone()).unwrap();
    assert_eq!(sched.timesteps(), expected_ts.as_slice());

    let log = RefCell::new(Vec::new());
    let prompt = &f.inputs["prompt_embeds"];
    let high = Recording {
        name: "transformer",
        prompt,
        log: &log,
    };
    let low = Recording {
        name: "transformer_2",
        prompt,
        log: &log,
    };
    let settings = DenoiseSettings {
        guidance_scale: f.calls["guidance_scale"].as_f64().unwrap(),
        guidance_scale_2: f.calls["guidance_scale_2"].as_f64(),
        boundary_ratio: Some(f.boundary_ratio),
        expand_timesteps: false,
    };
    let input = DenoiseInput {
        latents: f.inputs["latents"].shallow_clone(),
        prompt_embeds: prompt,
        negative_prompt_embeds: Some(&f.inputs["negative_prompt_embeds"]),
        start_step: 0,
    };
    let mut per_step = Vec::new();
    let _final_latents = denoise(
        &Experts {
            high: &high,
            low: Some(&low),
        },
        sched.as_mut(),
        &settings,
        input,
        &mut |e| {
            per_step.push((e.expert, e.guidance_scale));
            StepControl::Continue
        },
    )
    .unwrap();

    let expected: Vec<(String, f64, String)> = f.calls["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["expert"].as_str().unwrap().to_string(),
                c["timestep"].as_f64().unwrap(),
                c["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        *log.borrow(),
        expected,
        "expert calls differ from WanPipeline's"
    );

    // The boundary sits on a timestep, and the switch happens mid-run.
    let boundary = f.boundary_ratio * 1000.0;
    assert!(
        expected_ts.contains(&boundary),
        "fixture lost its boundary edge case"
    );
    let experts: Vec<Expert> = serde_json::from_value(f.calls["experts"].clone()).unwrap();
    let guidance = |e: &Expert| match e {
        Expert::High => settings.guidance_scale,
        Expert::Low => settings.guidance_scale_2.unwrap(),
    };
    let expected_steps: Vec<(Expert, f64)> = experts.iter().map(|e| (*e, guidance(e))).collect();
    assert_eq!(per_step, expected_steps);
    assert!(experts.contains(&Expert::High) && experts.contains(&Expert::Low));
}

fn load(dir: &Path, component: &str) -> (WanTransformer3DModel, tch::nn::VarStore) {
    WanTransformer3DModel::load(&dir.join(component), Kind::Float, Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {component}: {e}"))
}

/// Runs the loop with real transformers and compares every step's latents with `prefix`es.
fn compare_run(
    f: &Fixture,
    dir: &Path,
    experts: &Experts<'_, WanTransformer3DModel>,
    settings: &DenoiseSettings,
    steps: usize,
    prefix: &str,
) {
    let mut sched = unipc(dir, steps);
    let input = DenoiseInput {
        latents: f.inputs["latents"].shallow_clone(),
        prompt_embeds: &f.inputs["prompt_embeds"],
        negative_prompt_embeds: Some(&f.inputs["negative_prompt_embeds"]),
        start_step: 0,
    };
    let mut worst = 0f64;
    let out = tch::no_grad(|| {
        denoise(experts, sched.as_mut(), settings, input, &mut |e| {
            let expected = &f.outputs[&format!("{prefix}latents_{}", e.index + 1)];
            let what = format!(
                "{prefix}latents after step {} (t = {})",
                e.index, e.timestep
            );
            common::assert_close(&what, e.latents, expected, RTOL, ATOL);
            worst = worst.max((e.latents - expected).abs().max().double_value(&[]));
            StepControl::Continue
        })
    })
    .unwrap();
    common::assert_close(
        &format!("{prefix}final latents"),
        &out,
        &f.outputs[&format!("{prefix}latents")],
        RTOL,
        ATOL,
    );
    println!("{prefix}latents: max |rust - diffusers| over {steps} steps = {worst:e}");
}

#[test]
fn two_expert_latents_match_diffusers() {
    let (dir, f) = fixture();
    let (high, _vs_high) = load(&dir, "transformer");
    let (low, _vs_low) = load(&dir, "transformer_2");
    let settings = DenoiseSettings {
        guidance_scale: f.calls["guidance_scale"].as_f64().unwrap(),
        guidance_scale_2: f.calls["guidance_scale_2"].as_f64(),
        boundary_ratio: Some(f.boundary_ratio),
        expand_timesteps: false,
    };
    let steps = f.calls["num_steps"].as_u64().unwrap() as usize;
    compare_run(
        &f,
        &dir,
        &Experts {
            high: &high,
            low: Some(&low),
        },
        &settings,
        steps,
        "",
    );
}

#[test]
fn expand_timesteps_latents_match_diffusers() {
    let (dir, f) = fixture();
    let (high, _vs) = load(&dir, "transformer");
    let settings = DenoiseSettings {
        guidance_scale: 5.0,
        guidance_scale_2: None,
        boundary_ratio: None,
        expand_timesteps: true,
    };
    compare_run(
        &f,
        &dir,
        &Experts {
            high: &high,
            low: None,
        },
        &settings,
        4,
        "expand_",
    );
}
