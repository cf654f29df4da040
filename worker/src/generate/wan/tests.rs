//! [`WanGenerator`] on tiny models on the CPU: defaults, steps and stops, variants and LoRAs,
//! dtype choice, and the model revision with its cache.

use std::ops::ControlFlow;
use std::path::Path;

use t2v_pipeline::scheduler::SamplerKind;
use t2v_pipeline::LoadOptions;
use t2v_proto::v1::Sampler;
use tch::Device;

use super::revision::{default_cache_paths, revision_with_cache};
use super::*;
use crate::config::{DeviceChoice, DtypeChoice, ModelConfig};
use crate::generate::ModelKind;

#[test]
fn rgb24_rounds_like_numpy_to_pil() {
    let values = [
        0.0f32,
        0.5 / 255.0,
        0.499,
        0.5,
        1.0,
        1.2,
        -0.1,
        254.6 / 255.0,
    ];
    let frames = Tensor::from_slice(&values)
        .repeat([3])
        .reshape([1, 2, 4, 3]);
    let out = to_rgb24(&frames).unwrap();
    assert_eq!((out.count, out.height, out.width), (1, 2, 4));
    let expected: Vec<u8> = values
        .iter()
        .map(|v| (v * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
        .collect();
    assert_eq!(&out.rgb[..8], &expected[..]);
    assert_eq!(out.rgb[1], 0, "0.5 rounds half to even, as numpy");
    assert_eq!(out.rgb[2], 127, "0.499 · 255 = 127.2 → 127");
    assert_eq!(out.rgb[4], 255);
    assert!(to_rgb24(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))).is_err());
}

/// The tiny two-expert model of `make fixtures` (`$T2V_FIXTURES`, default build/fixtures).
fn tiny_model() -> std::path::PathBuf {
    let root = std::env::var_os("T2V_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures"));
    let dir = root.join("wan_pipeline/two_experts");
    assert!(
        dir.exists(),
        "{} missing — run `make fixtures`",
        dir.display()
    );
    dir
}

#[test]
fn zeros_in_a_request_take_the_published_defaults_of_the_directorys_model() {
    let fixtures = tiny_model().join("../..");
    let options = LoadOptions::new(Device::Cpu, Kind::Float);
    let ti2v = WanGenerator::load(&fixtures.join("ti2v_pipeline/model"), "ti2v", options).unwrap();
    assert_eq!(ti2v.model().kind, ModelKind::TextImageToVideo);
    assert_eq!(ti2v.model().defaults, t2v_contract::defaults::WAN22_TI2V_5B);
    let i2v = WanGenerator::load_model(&ModelConfig {
        dir: fixtures
            .join("i2v_pipeline/two_experts")
            .display()
            .to_string(),
        name: "i2v".into(),
        device: DeviceChoice::Cpu,
        ..ModelConfig::default()
    })
    .unwrap();
    assert_eq!(i2v.model().defaults, t2v_contract::defaults::WAN22_I2V_A14B);
    let t2v = WanGenerator::load(&tiny_model(), "t2v", options).unwrap();
    assert_eq!(t2v.model().defaults, t2v_contract::defaults::WAN22_T2V_A14B);
}

#[test]
fn steps_are_reported_and_a_break_stops_the_run() {
    let options = LoadOptions::new(Device::Cpu, Kind::Float);
    let mut generator = WanGenerator::load(&tiny_model(), "tiny", options).unwrap();
    assert_eq!(generator.model().revision.len(), 12);
    // A text-to-video directory: requests with an image are refused before any work.
    assert_eq!(generator.model().kind, ModelKind::TextToVideo);
    assert_eq!(
        generator.model().size_multiple,
        16,
        "VAE stride 8 × patch 2"
    );
    let job = JobSpec {
        prompt: "a cat".into(),
        width: 32,
        height: 32,
        steps: 3,
        sampler: Sampler::FlowEuler,
        ..crate::generate::tests::spec(1)
    };
    let params = generator.params(&job);
    assert_eq!(params.guidance_scale, 4.0, "two-expert default");
    assert_eq!(params.guidance_scale_2, Some(3.0));
    assert_eq!(params.sampler, Some(SamplerKind::FlowEuler));
    assert!(params.reject_long_prompts);

    let mut seen = Vec::new();
    let done = generator
        .generate(&job, None, &mut |s: StepInfo| {
            seen.push((s.step, s.total));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen, [(1, 3), (2, 3), (3, 3)]);
    assert_eq!((done.frames.count, done.frames.width), (5, 32));
    assert_eq!(done.frames.rgb.len(), 5 * 32 * 32 * 3);

    let stopped = generator.generate(&job, None, &mut |s: StepInfo| {
        if s.step == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert_eq!(stopped, Err(GenerateError::Stopped { at_step: 2 }));
    let bad = generator.generate(
        &JobSpec {
            width: 40,
            ..job.clone()
        },
        None,
        &mut |_: StepInfo| ControlFlow::Continue(()),
    );
    assert!(
        matches!(&bad, Err(GenerateError::InvalidInput(m)) if m.starts_with("width")),
        "{bad:?}"
    );
}

/// A rank-4 PEFT LoRA on the tiny model's (dim 32) first self-attention query.
fn tiny_lora(dir: &Path) -> std::path::PathBuf {
    let a = Tensor::randn([4, 32], (Kind::Float, Device::Cpu)) * 0.5;
    let b = Tensor::randn([32, 4], (Kind::Float, Device::Cpu)) * 0.5;
    let path = dir.join("tiny_lora.safetensors");
    Tensor::write_safetensors(
        &[
            ("transformer.blocks.0.attn1.to_q.lora_A.weight", a),
            ("transformer.blocks.0.attn1.to_q.lora_B.weight", b),
        ],
        &path,
    )
    .unwrap();
    path
}

#[test]
fn a_variant_fuses_its_loras_and_its_preset_fills_unset_fields() {
    use crate::config::{LoraConfig, LoraExpert, PresetChoice};
    let tmp = tempfile::tempdir().unwrap();
    let model = ModelConfig {
        dir: tiny_model().display().to_string(),
        name: "tiny-lightning".into(),
        device: DeviceChoice::Cpu,
        preset: PresetChoice::Lightning,
        loras: vec![LoraConfig {
            file: tiny_lora(tmp.path()).display().to_string(),
            strength: 1.0,
            expert: LoraExpert::Both,
        }],
        ..ModelConfig::default()
    };
    let mut variant = WanGenerator::load_model(&model).unwrap();
    let options = LoadOptions::new(Device::Cpu, Kind::Float);
    let mut base = WanGenerator::load(&tiny_model(), "tiny", options).unwrap();
    let info = variant.model();
    assert_eq!(info.name, "tiny-lightning");
    assert_eq!(
        info.defaults.steps, 4,
        "the preset's steps for a zero field"
    );
    assert_ne!(
        info.revision,
        base.model().revision,
        "the LoRA is in the revision"
    );

    let job = JobSpec {
        prompt: "a cat".into(),
        width: 32,
        height: 32,
        steps: info.defaults.steps,
        ..crate::generate::tests::spec(3)
    };
    let params = variant.params(&job);
    assert_eq!(
        (params.guidance_scale, params.guidance_scale_2),
        (1.0, Some(1.0))
    );
    assert_eq!(params.shift, Some(5.0));
    assert_eq!(params.sampler, Some(SamplerKind::FlowEuler));
    let explicit = JobSpec {
        guidance_scale: Some(3.5),
        shift: Some(2.0),
        sampler: Sampler::Unipc,
        ..job.clone()
    };
    let params = variant.params(&explicit);
    assert_eq!(
        (params.guidance_scale, params.guidance_scale_2),
        (3.5, None)
    );
    assert_eq!(params.shift, Some(2.0));
    assert_eq!(params.sampler, Some(SamplerKind::UniPc));

    // Same settings spelled out for both: only the fused LoRA differs.
    let spelled = JobSpec {
        guidance_scale: Some(1.0),
        guidance_scale_2: Some(1.0),
        shift: Some(5.0),
        sampler: Sampler::FlowEuler,
        ..job.clone()
    };
    let run = |g: &mut WanGenerator| {
        g.generate(&spelled, None, &mut |_: StepInfo| ControlFlow::Continue(()))
            .unwrap()
            .frames
    };
    let (with_lora, without) = (run(&mut variant), run(&mut base));
    assert_eq!(with_lora.rgb.len(), without.rgb.len());
    assert_ne!(with_lora.rgb, without.rgb, "the LoRA changed the frames");
}

#[test]
fn a_missing_lora_file_fails_the_load_in_one_line() {
    use crate::config::{LoraConfig, LoraExpert};
    let model = ModelConfig {
        dir: tiny_model().display().to_string(),
        device: DeviceChoice::Cpu,
        loras: vec![LoraConfig {
            file: "/nonexistent/high.safetensors".into(),
            strength: 1.0,
            expert: LoraExpert::Transformer,
        }],
        ..ModelConfig::default()
    };
    let Err(GenerateError::Load(message)) = WanGenerator::load_model(&model) else {
        panic!("a missing LoRA file loaded");
    };
    assert!(
        message.contains("/nonexistent/high.safetensors")
            && message.contains("[[model.loras]]")
            && !message.contains('\n'),
        "{message}"
    );
}

#[test]
fn dtype_auto_follows_the_device() {
    assert_eq!(resolve_dtype(DtypeChoice::Auto, Device::Cpu), Kind::Float);
    assert_eq!(
        resolve_dtype(DtypeChoice::Auto, Device::Cuda(0)),
        Kind::BFloat16
    );
    assert_eq!(resolve_dtype(DtypeChoice::Fp16, Device::Cpu), Kind::Half);
}

#[test]
fn the_revision_changes_with_a_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    std::fs::create_dir(dir.path().join("vae")).unwrap();
    std::fs::write(dir.path().join("vae/config.json"), "{\"a\":1}").unwrap();
    let first = model_revision(dir.path()).unwrap();
    assert_eq!(first.len(), 12);
    assert_eq!(first, model_revision(dir.path()).unwrap());
    std::fs::write(dir.path().join("vae/config.json"), "{\"a\":2}").unwrap();
    assert_ne!(first, model_revision(dir.path()).unwrap());
}

/// A safetensors file of one f32 tensor `w` holding `values`.
fn safetensors(values: &[f32]) -> Vec<u8> {
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"w":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
        values.len(),
        values.len() * 4
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    bytes
}

/// Sets `path`'s mtime an hour back, as a model on disk for a while has.
fn settle(path: &Path) {
    let past = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .append(true)
        .open(path)
        .unwrap()
        .set_modified(past)
        .unwrap();
}

/// A model directory with configs, a 3 MiB weights file (sampled) and a small one (whole).
fn model_with_weights() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("model_index.json"), "{}").unwrap();
    std::fs::create_dir_all(root.join("transformer")).unwrap();
    std::fs::create_dir_all(root.join("vae")).unwrap();
    std::fs::write(root.join("transformer/config.json"), "{\"dim\":8}").unwrap();
    std::fs::write(root.join("vae/config.json"), "{\"z\":4}").unwrap();
    let big: Vec<f32> = (0..768 * 1024).map(|i| i as f32 * 1e-3).collect();
    let weights = root.join("transformer/diffusion_pytorch_model.safetensors");
    std::fs::write(&weights, safetensors(&big)).unwrap();
    std::fs::write(
        root.join("vae/diffusion_pytorch_model.safetensors"),
        safetensors(&[1.0, 2.0, 3.0]),
    )
    .unwrap();
    for file in [
        "model_index.json",
        "transformer/config.json",
        "vae/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        settle(&root.join(file));
    }
    dir
}

/// The revision without any cache.
fn uncached(dir: &Path) -> String {
    let (revision, cached) = revision_with_cache(dir, &[], Duration::ZERO).unwrap();
    assert!(!cached);
    revision
}

/// Rewrites `path` with `edit` applied to its bytes (same size).
fn edit(path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    let len = bytes.len();
    edit(&mut bytes);
    assert_eq!(bytes.len(), len);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn the_revision_covers_the_weights_with_the_configs_unchanged() {
    let model = model_with_weights();
    let dir = model.path();
    let first = uncached(dir);
    assert_eq!(first.len(), 12);
    assert_eq!(first, uncached(dir), "same files, same revision");

    let big = dir.join("transformer/diffusion_pytorch_model.safetensors");
    let data_start =
        8 + u64::from_le_bytes(std::fs::read(&big).unwrap()[..8].try_into().unwrap()) as usize;
    // Re-trained weights: every value differs, shapes and header stay.
    edit(&big, |b| {
        for v in b[data_start..].chunks_exact_mut(4) {
            let x = f32::from_le_bytes(v.try_into().unwrap());
            v.copy_from_slice(&(x * 0.5 - 1.0).to_le_bytes());
        }
    });
    let retrained = uncached(dir);
    assert_ne!(first, retrained, "re-trained weights");
    // The last bytes are always sampled, and so is the start of the data.
    edit(&big, |b| *b.last_mut().unwrap() ^= 1);
    let last = uncached(dir);
    assert_ne!(retrained, last, "the last chunk");
    edit(&big, |b| b[data_start] ^= 1);
    let start = uncached(dir);
    assert_ne!(last, start, "the first chunk");
    // A small file is hashed whole.
    let small = dir.join("vae/diffusion_pytorch_model.safetensors");
    edit(&small, |b| {
        let at = b.len() - 6;
        b[at] ^= 1;
    });
    let small_changed = uncached(dir);
    assert_ne!(start, small_changed, "a small file's data");
    // The header (a dtype, a shape, metadata) counts.
    edit(&small, |b| {
        let end = b.len() - 12;
        let header = String::from_utf8(b[8..end].to_vec()).unwrap();
        let renamed = header.replace("\"pt\"", "\"PT\"");
        b[8..end].copy_from_slice(renamed.as_bytes());
    });
    assert_ne!(small_changed, uncached(dir), "the header");
    // A renamed weights file counts; a file that is not weights does not.
    let before = uncached(dir);
    std::fs::write(dir.join("README.md"), "hello").unwrap();
    assert_eq!(before, uncached(dir), "other files do not count");
    std::fs::rename(&small, dir.join("vae/model.safetensors")).unwrap();
    assert_ne!(before, uncached(dir), "the weights' names");
    // A truncated weights file is no model.
    std::fs::write(&small, [1, 2, 3]).unwrap();
    assert!(matches!(
        revision_with_cache(dir, &[], Duration::ZERO),
        Err(GenerateError::Load(m)) if m.contains("not a safetensors")
    ));
}

#[test]
fn the_revision_is_cached_and_the_cache_follows_the_files() {
    let model = model_with_weights();
    let dir = model.path();
    let cache_dir = tempfile::tempdir().unwrap();
    let unwritable = cache_dir.path().join("file");
    std::fs::write(&unwritable, "").unwrap();
    let caches = [
        unwritable.join("nested/revision.json"),
        cache_dir.path().join("revisions/model.json"),
    ];
    let (first, cached) = revision_with_cache(dir, &caches, Duration::ZERO).unwrap();
    assert!(!cached, "nothing cached yet");
    assert_eq!(first, uncached(dir), "the cache does not change the rule");
    assert!(caches[1].is_file(), "the first writable place has it");
    let (again, cached) = revision_with_cache(dir, &caches, Duration::ZERO).unwrap();
    assert!(cached, "a restart reads the cache");
    assert_eq!(again, first, "and gets the same value");

    // A changed weights file (same size) invalidates it.
    let big = dir.join("transformer/diffusion_pytorch_model.safetensors");
    edit(&big, |b| *b.last_mut().unwrap() ^= 0x40);
    let (changed, cached) = revision_with_cache(dir, &caches, Duration::ZERO).unwrap();
    assert!(!cached, "stale entry ignored");
    assert_ne!(changed, first);
    assert_eq!(changed, uncached(dir));

    // A corrupt cache just means computing; a racy file is not cached.
    std::fs::write(&caches[1], "not json").unwrap();
    let (value, cached) = revision_with_cache(dir, &caches, Duration::from_secs(600)).unwrap();
    assert_eq!((value.as_str(), cached), (changed.as_str(), false));
    assert_eq!(std::fs::read_to_string(&caches[1]).unwrap(), "not json");
    // The default places: the XDG/home cache, else next to the model.
    let defaults = default_cache_paths(dir);
    assert_eq!(defaults.last().unwrap(), &dir.join(".t2v-revision.json"));
    assert!(defaults
        .iter()
        .all(|p| p.extension().is_some_and(|e| e == "json")));
}

/// `[model.cache]` and a request's `cache_threshold` reach the pipeline: the variant's
/// First-Block-Cache skips forwards of the tiny model, a request's 0 turns it off, a
/// request's tiny threshold skips nothing, and a distilled variant refuses a request's cache.
#[test]
fn the_variants_cache_and_a_requests_threshold_reach_the_pipeline() {
    use crate::generate::variant::{CacheConfig, CacheKind};
    let model = ModelConfig {
        dir: tiny_model().display().to_string(),
        name: "tiny-cached".into(),
        device: DeviceChoice::Cpu,
        cache: CacheConfig {
            kind: CacheKind::FirstBlock,
            threshold: Some(0.9),
            ..CacheConfig::default()
        },
        ..ModelConfig::default()
    };
    let mut generator = WanGenerator::load_model(&model).unwrap();
    let mut run = |cache_threshold: Option<f32>| {
        let job = JobSpec {
            steps: 8,
            cache_threshold,
            ..crate::generate::tests::spec(3)
        };
        let mut hooks = |_: StepInfo| ControlFlow::Continue(());
        generator.run(&job, None, &mut hooks)
    };
    let variant = run(None).unwrap().step_cache.expect("the variant's cache");
    assert_eq!((variant.kind, variant.threshold), ("first_block", 0.9));
    assert_eq!(variant.forwards.len(), 16, "8 steps, cond and uncond");
    assert!(
        variant.skipped() > 0,
        "threshold 0.9 skips on the tiny model"
    );
    assert!(run(Some(0.0)).unwrap().step_cache.is_none(), "0 = off");
    let strict = run(Some(0.001)).unwrap().step_cache.unwrap();
    assert_eq!(strict.skipped(), 0);
    assert_eq!(strict.threshold, f64::from(0.001f32));
    // What the job reports (manifest, metric): the same counts.
    let job = JobSpec {
        steps: 8,
        ..crate::generate::tests::spec(3)
    };
    let mut hooks = |_: StepInfo| ControlFlow::Continue(());
    let generated = generator.generate(&job, None, &mut hooks).unwrap();
    let summary = generated.step_cache.expect("a summary");
    assert_eq!(
        (summary.kind.as_str(), summary.forwards, summary.skipped),
        ("first_block", 16, variant.skipped() as u32)
    );

    let lightning = ModelConfig {
        preset: crate::config::PresetChoice::Lightning,
        cache: CacheConfig::default(),
        ..model
    };
    let mut distilled = WanGenerator::load_model(&lightning).unwrap();
    let job = JobSpec {
        cache_threshold: Some(0.1),
        ..crate::generate::tests::spec(3)
    };
    let mut hooks = |_: StepInfo| ControlFlow::Continue(());
    match distilled.run(&job, None, &mut hooks) {
        Err(GenerateError::InvalidInput(message)) => {
            assert!(message.contains("step-distilled"), "{message}")
        }
        other => panic!(
            "a cache on the lightning variant ran: {:?}",
            other.map(|o| o.step_cache)
        ),
    }
}
