//! The schedulers against diffusers 0.42.1 (fixtures from `pipeline/parity/scheduler.py`):
//! timesteps and sigmas bit-equal, trajectories of a fake model equal within rtol 1e-5, and a
//! saved/restored state that continues bit for bit. Config parsing is checked on the very
//! `scheduler_config.json` files diffusers wrote.

mod common;

use std::path::{Path, PathBuf};

use t2v_pipeline::scheduler::{self, SamplerKind, Scheduler, SchedulerState};
use t2v_pipeline::PipelineError;
use tch::{Kind, Tensor};

/// Trajectory tolerance: |rust − diffusers| ≤ ATOL + RTOL·|diffusers| at every step.
const RTOL: f64 = 1e-5;
const ATOL: f64 = 1e-6;

struct Case {
    name: String,
    dir: PathBuf,
    num_steps: usize,
    shift_override: Option<f64>,
    kind: Option<SamplerKind>,
}

fn cases() -> Vec<Case> {
    let root = common::fixture("scheduler");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("read scheduler fixtures")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("case.json").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.len() >= 11,
        "expected the 11 cases of scheduler.py in {}, found {names:?}",
        root.display()
    );
    names
        .into_iter()
        .map(|name| {
            let dir = root.join(&name);
            let text = std::fs::read_to_string(dir.join("case.json")).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            Case {
                num_steps: v["num_steps"].as_u64().unwrap() as usize,
                shift_override: v["shift_override"].as_f64(),
                kind: serde_json::from_value(v["kind"].clone()).unwrap(),
                name,
                dir,
            }
        })
        .collect()
}

fn build(case: &Case) -> Box<dyn Scheduler> {
    let mut s = scheduler::from_config_dir(&case.dir, case.kind)
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    s.set_timesteps(case.num_steps, case.shift_override)
        .unwrap();
    s
}

fn reference(case: &Case) -> std::collections::HashMap<String, Tensor> {
    common::load_tensors(&case.dir.join("reference.safetensors"))
}

/// The fake model both sides use: `sample * 0.1 + fixed * (t / 1000)` in f32.
fn fake_model(sample: &Tensor, fixed: &Tensor, t: f64) -> Tensor {
    sample.f_mul_scalar(0.1).unwrap() + fixed.f_mul_scalar(t / 1000.0).unwrap()
}

/// Runs steps `from..to`, returning the sample after the last one.
fn run(s: &mut dyn Scheduler, sample: Tensor, fixed: &Tensor, from: usize, to: usize) -> Tensor {
    let timesteps = s.timesteps().to_vec();
    let mut sample = sample;
    for &t in &timesteps[from..to] {
        let out = fake_model(&sample, fixed, t);
        sample = s.step(&out, t, &sample).unwrap();
    }
    sample
}

#[test]
fn timesteps_and_sigmas_equal_reference() {
    for case in cases() {
        let s = build(&case);
        let r = reference(&case);
        let ts = Vec::<f64>::try_from(&r["timesteps"].to_kind(Kind::Double)).unwrap();
        assert_eq!(s.timesteps(), ts.as_slice(), "{}: timesteps", case.name);
        let sigmas = Vec::<f32>::try_from(&r["sigmas"]).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(s.sigmas()),
            bits(&sigmas),
            "{}: sigmas differ from diffusers\n  ours {:?}\n  ref  {:?}",
            case.name,
            s.sigmas(),
            sigmas
        );
        assert_eq!(s.kind(), expected_kind(&case), "{}: kind", case.name);
    }
}

fn expected_kind(case: &Case) -> SamplerKind {
    case.kind.unwrap_or(if case.name.starts_with("unipc") {
        SamplerKind::UniPc
    } else {
        SamplerKind::FlowEuler
    })
}

#[test]
fn trajectory_matches_reference() {
    for case in cases() {
        let mut s = build(&case);
        let r = reference(&case);
        let fixed = &r["fixed"];
        let mut sample = r["sample_0"].shallow_clone();
        let mut worst = 0f64;
        for (i, t) in s.timesteps().to_vec().into_iter().enumerate() {
            let out = fake_model(&sample, fixed, t);
            sample = s.step(&out, t, &sample).unwrap();
            let expected = &r[&format!("sample_{}", i + 1)];
            let what = format!("{} step {i} (t = {t})", case.name);
            common::assert_close(&what, &sample, expected, RTOL, ATOL);
            let diff = (&sample - expected).abs().max().double_value(&[]);
            worst = worst.max(diff);
        }
        println!(
            "{}: max |rust - diffusers| over the trajectory = {worst:e}",
            case.name
        );
    }
}

#[test]
fn restored_state_continues_bit_identically() {
    for case in cases().into_iter().filter(|c| {
        c.name.starts_with("unipc_order3")
            || c.name.starts_with("unipc_shift3_steps10")
            || c.name == "euler_shift5_steps10"
    }) {
        let r = reference(&case);
        let (fixed, start) = (&r["fixed"], &r["sample_0"]);
        let n = case.num_steps;
        let uninterrupted = run(build(&case).as_mut(), start.shallow_clone(), fixed, 0, n);
        for k in [0, 1, 2, 3, n / 2, n - 1, n] {
            let mut first = build(&case);
            let mid = run(first.as_mut(), start.shallow_clone(), fixed, 0, k);
            let json = serde_json::to_string(&first.state().unwrap()).unwrap();
            drop(first);
            let saved: SchedulerState = serde_json::from_str(&json).unwrap();
            // A fresh scheduler from the config, never given a schedule: restore supplies it.
            let mut resumed = scheduler::from_config_dir(&case.dir, case.kind).unwrap();
            resumed.restore(&saved).unwrap();
            assert_eq!(resumed.step_index(), k);
            let end = run(resumed.as_mut(), mid, fixed, k, n);
            assert!(
                end.equal(&uninterrupted),
                "{}: resuming after {k} of {n} steps is not bit-identical",
                case.name
            );
        }
    }
}

/// The case called `name` among `all`.
fn named<'a>(all: &'a [Case], name: &str) -> &'a Case {
    all.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no scheduler case {name}"))
}

#[test]
fn restore_refuses_another_samplers_state() {
    let all = cases();
    let unipc = named(&all, "unipc_shift3_steps10");
    let euler = named(&all, "euler_shift5_steps10");
    let state = build(euler).state().unwrap();
    let err = build(unipc).restore(&state).unwrap_err();
    assert!(err.to_string().contains("another sampler"), "{err}");
}

#[test]
fn step_refuses_an_unexpected_timestep() {
    let all = cases();
    let case = named(&all, "unipc_shift3_steps10");
    let mut s = build(case);
    let x = Tensor::zeros([1, 1, 1, 2, 2], (Kind::Float, tch::Device::Cpu));
    let wrong = s.timesteps()[1];
    let err = s.step(&x, wrong, &x).unwrap_err();
    assert!(matches!(err, PipelineError::InvalidInput { .. }), "{err}");
}

/// Writes `config` (with `edit` applied) as `<tmp>/scheduler/scheduler_config.json`.
fn edited_config(
    source: &Path,
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> tempfile::TempDir {
    let text = std::fs::read_to_string(source.join("scheduler/scheduler_config.json")).unwrap();
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    edit(&mut map);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("scheduler")).unwrap();
    std::fs::write(
        tmp.path().join("scheduler/scheduler_config.json"),
        serde_json::to_string_pretty(&map).unwrap(),
    )
    .unwrap();
    tmp
}

fn config_error(dir: &Path) -> String {
    match scheduler::from_config_dir(dir, None) {
        Err(e @ PipelineError::Config { .. }) => e.to_string(),
        Err(e) => panic!("expected a Config error, got {e}"),
        Ok(_) => panic!("config in {} was accepted", dir.display()),
    }
}

#[test]
fn unknown_config_fields_are_rejected_by_name_and_file() {
    for case in cases()
        .iter()
        .filter(|c| c.name == "unipc_shift3_steps10" || c.name == "euler_shift5_steps10")
    {
        let tmp = edited_config(&case.dir, |m| {
            m.insert("clip_sample_range".into(), 1.0.into());
        });
        let msg = config_error(tmp.path());
        assert!(msg.contains("clip_sample_range"), "{msg}");
        assert!(msg.contains("scheduler_config.json"), "{msg}");
    }
}

#[test]
fn unsupported_config_values_are_rejected_by_name() {
    let all = cases();
    let unipc = named(&all, "unipc_shift3_steps10");
    let euler = named(&all, "euler_shift5_steps10");
    let checks: [(&Case, &str, serde_json::Value); 6] = [
        (unipc, "use_flow_sigmas", false.into()),
        (unipc, "thresholding", true.into()),
        (unipc, "use_karras_sigmas", true.into()),
        (unipc, "predict_x0", false.into()),
        (euler, "stochastic_sampling", true.into()),
        (euler, "use_dynamic_shifting", true.into()),
    ];
    for (case, field, value) in checks {
        let tmp = edited_config(&case.dir, |m| {
            m.insert(field.into(), value);
        });
        let msg = config_error(tmp.path());
        assert!(msg.contains(field), "{field}: {msg}");
    }
    let tmp = edited_config(&unipc.dir, |m| {
        m.insert("_class_name".into(), "DDIMScheduler".into());
    });
    assert!(config_error(tmp.path()).contains("DDIMScheduler"));
}

#[test]
fn missing_scheduler_config_names_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let err = scheduler::from_config_dir(tmp.path(), None)
        .err()
        .expect("no config must fail");
    assert!(matches!(err, PipelineError::MissingFile { .. }), "{err}");
    assert!(err.to_string().contains("scheduler_config.json"), "{err}");
}
