//! GPU benchmark of the fast paths: FP8 block linears against bf16, the 4-step distilled
//! (Lightning) setting end to end, the base sampler's steps, and LoRA load + fuse — all with
//! A14B-shaped random weights drawn on the device (no downloads). `pipeline/bench/bench_fast.py`
//! runs diffusers on the same configs, orchestrates the stages (`make bench-fast`) and prints the
//! table from the `RESULT key=value` lines each stage prints.
//!
//! Modes (`--mode`):
//! - `forward`: one A14B expert in bf16, timed forwards at `--size`; then the same weights
//!   quantised to FP8 ([`fp8::quantize_blocks`]), checked to be float8 e4m3 in memory, timed
//!   again; prints the FP8/bf16 ratio and the relative error of the FP8 output.
//! - `generate`: [`WanT2V::random`] over `--model DIR` in `--dtype bf16|fp8`, one generation
//!   (`--steps`, `--guidance`, `--guidance-2`, `--size`, `--frames`, `--policy`); prints the
//!   phases and each step's time; `--save DIR` writes each step's latents and the 8-bit frames
//!   (`bench_fast.py --compare` gives the PSNR and per-step latent error of two runs).
//! - `lora`: both experts of `--model DIR` built in bf16, then the LoRA files `--lora-high`
//!   and `--lora-low` read and fused ([`fuse_loras`]), timed.
//!
//! `--tiny` runs on the CPU with the tiny config of `--model` (e.g. the two-expert parity
//! fixture), to check the command lines before the GPU run. Options: `--runs 3`, `--seed 0`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use t2v_pipeline::denoise::{StepControl, StepEnd};
use t2v_pipeline::loader::random_weights;
use t2v_pipeline::lora::fuse_loras;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::text_to_video::{GenerationParams, LoadOptions, WanT2V};
use t2v_pipeline::wan::fp8::{self, FP8};
use t2v_pipeline::wan::{TransformerConfig, WanTransformer3DModel};
use t2v_pipeline::LoraSpec;
use tch::{nn, Cuda, Device, Kind, Tensor};

mod common;
use common::process_gpu_mib;

const PROMPT: &str = "A cat walks on the grass, realistic";
const TEXT_LEN: i64 = 512;

struct Args {
    mode: String,
    model: PathBuf,
    tiny: bool,
    size: (i64, i64),
    frames: i64,
    steps: usize,
    guidance: f64,
    guidance_2: f64,
    dtype: Kind,
    policy: MemoryPolicy,
    runs: usize,
    seed: u64,
    save: Option<PathBuf>,
    lora_high: Option<PathBuf>,
    lora_low: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        mode: String::new(),
        model: PathBuf::new(),
        tiny: false,
        size: (720, 1280),
        frames: 81,
        steps: 4,
        guidance: 1.0,
        guidance_2: 1.0,
        dtype: Kind::BFloat16,
        policy: MemoryPolicy::all_resident(),
        runs: 3,
        seed: 0,
        save: None,
        lora_high: None,
        lora_low: None,
    };
    let mut raw: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = raw.iter().position(|a| a == "--tiny") {
        raw.remove(i);
        args.tiny = true;
    }
    let mut it = raw.into_iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => args.mode = value,
            "--model" => args.model = value.into(),
            "--size" => args.size = common::parse_sizes(&value)?[0],
            "--frames" => args.frames = value.parse()?,
            "--steps" => args.steps = value.parse()?,
            "--guidance" => args.guidance = value.parse()?,
            "--guidance-2" => args.guidance_2 = value.parse()?,
            "--dtype" => args.dtype = dtype(&value)?,
            "--policy" => args.policy = policy(&value)?,
            "--runs" => args.runs = value.parse()?,
            "--seed" => args.seed = value.parse()?,
            "--save" => args.save = Some(value.into()),
            "--lora-high" => args.lora_high = Some(value.into()),
            "--lora-low" => args.lora_low = Some(value.into()),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(args.runs > 0, "--runs must be positive");
    Ok(args)
}

fn dtype(value: &str) -> anyhow::Result<Kind> {
    match value {
        "bf16" => Ok(Kind::BFloat16),
        "f32" => Ok(Kind::Float),
        "fp8" => Ok(FP8),
        other => anyhow::bail!("dtype {other}: expected bf16, f32 or fp8"),
    }
}

fn policy(value: &str) -> anyhow::Result<MemoryPolicy> {
    Ok(match value {
        "resident" => MemoryPolicy::all_resident(),
        "text-offload" => MemoryPolicy {
            offload_text_encoder: true,
            ..MemoryPolicy::all_resident()
        },
        "low" => MemoryPolicy::low_memory(),
        other => anyhow::bail!("policy {other}: expected resident, text-offload or low"),
    })
}

fn synchronize(device: Device) {
    if let Device::Cuda(ordinal) = device {
        Cuda::synchronize(ordinal as i64);
    }
}

/// A machine-readable result line for `bench_fast.py --table`.
fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key}={value}");
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let device = if args.tiny {
        Device::Cpu
    } else {
        anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
        Device::Cuda(0)
    };
    let _guard = tch::no_grad_guard();
    match args.mode.as_str() {
        "forward" => forward(&args, device),
        "generate" => generate(&args, device),
        "lora" => lora(&args, device),
        other => anyhow::bail!("--mode {other:?}: expected forward, generate or lora"),
    }
}

/// One expert of `--model` (the A14B expert unless `--tiny`) with random weights on `device`
/// in `kind`, and its VarStore.
fn random_expert(
    args: &Args,
    component: &str,
    device: Device,
    kind: Kind,
) -> anyhow::Result<(TransformerConfig, WanTransformer3DModel, nn::VarStore)> {
    let cfg = if args.tiny {
        TransformerConfig::from_file(&args.model.join(component).join("config.json"))?
    } else {
        TransformerConfig::wan22_t2v_a14b()
    };
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    let model = WanTransformer3DModel::new(&cfg, vs.root())?;
    random_weights(&vs)?;
    Ok((cfg, model, vs))
}

/// Median seconds of `runs` calls of `f` after one warm-up, and the last output.
fn timed(
    runs: usize,
    device: Device,
    mut f: impl FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<(f64, Tensor)> {
    let mut out = f()?;
    synchronize(device);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        out = f()?;
        synchronize(device);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], out))
}

fn forward(args: &Args, device: Device) -> anyhow::Result<()> {
    let kind = if args.tiny {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    tch::manual_seed(args.seed as i64);
    let (cfg, model, vs) = random_expert(args, "transformer", device, kind)?;
    let (height, width) = args.size;
    let frames = (args.frames - 1) / 4 + 1;
    let latents = Tensor::f_randn(
        [1, cfg.in_channels, frames, height / 8, width / 8],
        (Kind::Float, device),
    )?;
    let text = Tensor::f_randn([1, TEXT_LEN, cfg.text_dim], (Kind::Float, device))?;
    let timestep = Tensor::from_slice(&[875.0f32]).f_to_device(device)?;
    println!(
        "forward: {} layers, {height}x{width}x{} ({} latent tokens), {kind:?} on {device:?}; GPU memory {:?} MiB",
        cfg.num_layers,
        args.frames,
        frames * (height / 16) * (width / 16),
        process_gpu_mib()
    );
    let (dense_s, dense) = timed(args.runs, device, || {
        Ok(model.forward(&latents, &timestep, &text)?)
    })?;
    println!(
        "forward: bf16 median {dense_s:.3} s over {} runs",
        args.runs
    );

    let start = Instant::now();
    let model = fp8::quantize_blocks(model, &vs)?;
    synchronize(device);
    let quantise_s = start.elapsed().as_secs_f64();
    let (fp8_weights, dense_weights) = count_fp8(&vs);
    anyhow::ensure!(
        fp8_weights == 10 * cfg.num_layers as usize,
        "{fp8_weights} block linear weights in float8 e4m3, expected {}",
        10 * cfg.num_layers
    );
    println!(
        "forward: quantised in {quantise_s:.1} s: {fp8_weights} weights in memory as {FP8:?}, {dense_weights} others untouched; GPU memory {:?} MiB",
        process_gpu_mib()
    );
    let (fp8_s, out) = timed(args.runs, device, || {
        Ok(model.forward(&latents, &timestep, &text)?)
    })?;
    let error = relative_error(&out, &dense)?;
    println!(
        "forward: fp8 median {fp8_s:.3} s, {:.3}× the bf16 forward; output {:?}, relative error vs bf16 {error:.4}",
        fp8_s / dense_s,
        out.kind()
    );
    result("forward_size", format!("{height}x{width}"));
    result("forward_bf16_s", format!("{dense_s:.3}"));
    result("forward_fp8_s", format!("{fp8_s:.3}"));
    result("forward_ratio", format!("{:.3}", fp8_s / dense_s));
    result("forward_rel_error", format!("{error:.4}"));
    linear_alone(args, &cfg, frames * (height / 16) * (width / 16), device)
}

/// One FFN output projection alone (`[tokens, ffn] → [tokens, dim]`), bf16 `aten::linear`
/// against our FP8 `Linear` path (per-token quantisation + `_scaled_mm`) in this process: the
/// speed-up the FP8 kernel gives where the forward spends its matmul time.
fn linear_alone(
    args: &Args,
    cfg: &TransformerConfig,
    tokens: i64,
    device: Device,
) -> anyhow::Result<()> {
    let kind = if args.tiny {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let x = Tensor::f_randn([tokens, cfg.ffn_dim], (kind, device))?;
    let weight = Tensor::f_randn([cfg.inner_dim(), cfg.ffn_dim], (kind, device))?
        .f_div_scalar((cfg.ffn_dim as f64).sqrt())?;
    let bias = Tensor::f_zeros([cfg.inner_dim()], (kind, device))?;
    let (dense_s, dense) = timed(args.runs, device, || Ok(x.f_linear(&weight, Some(&bias))?))?;
    let (q, scale) = fp8::quantize_rows(&weight)?;
    drop(weight);
    let (fp8_s, out) = timed(args.runs, device, || {
        Ok(fp8::linear(&x, &q, &scale, &bias)?)
    })?;
    let error = relative_error(&out, &dense)?;
    println!(
        "linear [{tokens}, {}] → {}: bf16 {:.2} ms, fp8 {:.2} ms ({:.3}×), relative error {error:.4}",
        cfg.ffn_dim,
        cfg.inner_dim(),
        dense_s * 1e3,
        fp8_s * 1e3,
        fp8_s / dense_s
    );
    result("linear_bf16_ms", format!("{:.3}", dense_s * 1e3));
    result("linear_fp8_ms", format!("{:.3}", fp8_s * 1e3));
    result("linear_ratio", format!("{:.3}", fp8_s / dense_s));
    Ok(())
}

/// (float8 e4m3 variables, other variables) of `vs`.
fn count_fp8(vs: &nn::VarStore) -> (usize, usize) {
    let variables = vs.variables();
    let fp8 = variables.values().filter(|t| t.kind() == FP8).count();
    (fp8, variables.len() - fp8)
}

/// `‖a − b‖ / ‖b‖`, in f32.
fn relative_error(a: &Tensor, b: &Tensor) -> anyhow::Result<f64> {
    let (a, b) = (a.f_to_kind(Kind::Float)?, b.f_to_kind(Kind::Float)?);
    let diff = a.f_sub(&b)?.f_norm()?.f_double_value(&[])?;
    Ok(diff / b.f_norm()?.f_double_value(&[])?)
}

fn generate(args: &Args, device: Device) -> anyhow::Result<()> {
    let dtype = if args.tiny && args.dtype == Kind::BFloat16 {
        Kind::Float
    } else {
        args.dtype
    };
    let mut options = LoadOptions::new(device, dtype);
    options.vae_dtype = if args.tiny {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    options.memory = args.policy;
    let start = Instant::now();
    let mut pipe = WanT2V::random(&args.model, options, args.seed as i64)?;
    synchronize(device);
    let label = if dtype == FP8 { "fp8" } else { "bf16" };
    println!(
        "generate: built {label} ({:?}) in {:.1} s; GPU memory {:?} MiB",
        args.policy,
        start.elapsed().as_secs_f64(),
        process_gpu_mib()
    );
    let (height, width) = args.size;
    let params = GenerationParams {
        prompt: PROMPT.to_string(),
        height,
        width,
        num_frames: args.frames,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        guidance_scale_2: Some(args.guidance_2),
        seed: Some(args.seed),
        ..GenerationParams::default()
    };
    let estimate = pipe.estimate_memory(&params)?;
    println!(
        "generate: preflight estimate {:.2} GiB",
        estimate.peak as f64 / (1u64 << 30) as f64
    );
    let mut steps: Vec<f64> = Vec::new();
    let mut latents: Vec<(String, Tensor)> = Vec::new();
    let mut last = Instant::now();
    let keep = args.save.is_some();
    let mut on_step = |step: &StepEnd<'_>| {
        synchronize(device);
        let now = Instant::now();
        let seconds = (now - last).as_secs_f64();
        println!(
            "generate: step {}/{} t={:.1} {:?} {seconds:.3} s",
            step.index + 1,
            step.total,
            step.timestep,
            step.expert
        );
        steps.push(seconds);
        if keep {
            if let Ok(l) = step
                .latents
                .f_to_kind(Kind::Float)
                .and_then(|l| l.f_to_device(Device::Cpu))
            {
                latents.push((format!("step{}", step.index), l));
            }
        }
        last = Instant::now();
        StepControl::Continue
    };
    let output = pipe.generate(&params, &mut on_step)?;
    let t = output.timings;
    let step_mean = steps.iter().sum::<f64>() / steps.len().max(1) as f64;
    println!(
        "generate: {label} {height}x{width}x{} {} steps: total {:.2} s, text {:.2} s, denoise {:.2} s ({step_mean:.3} s/step), decode {:.2} s; GPU memory {:?} MiB",
        output.num_frames,
        args.steps,
        t.total.as_secs_f64(),
        t.text_encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.vae_decode.as_secs_f64(),
        process_gpu_mib()
    );
    for (key, value) in [
        ("total_s", t.total.as_secs_f64()),
        ("text_s", t.text_encode.as_secs_f64()),
        ("denoise_s", t.denoise.as_secs_f64()),
        ("step_s", step_mean),
        ("decode_s", t.vae_decode.as_secs_f64()),
    ] {
        result(key, format!("{value:.3}"));
    }
    if let Some(dir) = &args.save {
        save(dir, latents, &output.frames)?;
    }
    Ok(())
}

/// Each step's latents and the frames as 8-bit values (what a user sees) in `dir`.
fn save(
    dir: &std::path::Path,
    latents: Vec<(String, Tensor)>,
    frames: &Tensor,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let named: Vec<(&str, &Tensor)> = latents.iter().map(|(n, t)| (n.as_str(), t)).collect();
    Tensor::write_safetensors(&named, dir.join("latents.safetensors"))?;
    let bytes = frames
        .f_mul_scalar(255.0)?
        .f_round()?
        .f_clamp(0.0, 255.0)?
        .f_to_kind(Kind::Uint8)?;
    Tensor::write_safetensors(&[("frames", &bytes)], dir.join("frames.safetensors"))?;
    println!(
        "generate: saved {} steps' latents and the frames in {}",
        latents.len(),
        dir.display()
    );
    Ok(())
}

fn lora(args: &Args, device: Device) -> anyhow::Result<()> {
    let files = [
        ("transformer", args.lora_high.as_ref()),
        ("transformer_2", args.lora_low.as_ref()),
    ];
    let kind = if args.tiny {
        Kind::Float
    } else {
        Kind::BFloat16
    };
    let mut experts = HashMap::new();
    for (component, _) in files {
        tch::manual_seed(args.seed as i64);
        experts.insert(component, random_expert(args, component, device, kind)?);
    }
    synchronize(device);
    println!(
        "lora: both experts built; GPU memory {:?} MiB",
        process_gpu_mib()
    );
    let start = Instant::now();
    for (component, file) in files {
        let file =
            file.ok_or_else(|| anyhow::anyhow!("--mode lora needs --lora-high and --lora-low"))?;
        let (_, _, vs) = &experts[component];
        let summary = fuse_loras(vs, &[LoraSpec::new(file, 1.0)])?;
        println!("lora: {component}: {summary:?}");
    }
    synchronize(device);
    let seconds = start.elapsed().as_secs_f64();
    println!("lora: read and fused the pair in {seconds:.2} s");
    result("lora_fuse_s", format!("{seconds:.3}"));
    Ok(())
}
