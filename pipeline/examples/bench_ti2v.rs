//! GPU benchmark of Wan2.2 TI2V-5B ([`WanT2V::generate`], text+image-to-video by default) with
//! random weights built on the device from the configs of a model directory: prompt → umT5 →
//! the image through the Wan2.2 VAE encoder → denoising loop (one expert, one timestep per
//! token, CFG) → Wan2.2 VAE decode → frames.
//!
//! `pipeline/bench/bench_ti2v.py --write-model DIR` writes the TI2V-5B-shaped directory and runs
//! diffusers' `WanImageToVideoPipeline` on the same configs; run both on the same GPU (the
//! `bench-ti2v` Makefile target does). Prints the per-phase timings (text encode, denoise, VAE
//! decode, total), seconds per step (steps 2.. — the first one includes the image encode), the
//! preflight estimate and the GPU memory at the end; the allocator's peak comes from the shim
//! of `pipeline/bench/cuda_peak_memory.py` with `T2V_PEAK_MEMORY_PROGRAMS=bench_ti2v`.
//!
//! ```text
//! python pipeline/bench/bench_ti2v.py --write-model /tmp/ti2v5b --tokenizer DIR/tokenizer
//! LD_PRELOAD=$PWD/build/gpu/libt2v_peak_memory.so T2V_PEAK_MEMORY_PROGRAMS=bench_ti2v \
//!     target/release/examples/bench_ti2v --model /tmp/ti2v5b --policy low
//! ```
//! Options: `--model DIR` (required), `--height 704 --width 1280 --frames 121 --steps 10`,
//! `--guidance 5.0`, `--mode ti2v|t2v`, `--policy resident|low` (everything resident; or
//! [`MemoryPolicy::low_memory`]: the text encoder parked in host memory after encoding, tiled
//! VAE), `--seed 0`. Weights in bf16, the VAE in bf16.

use std::time::Instant;

use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::image::ConditionImage;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::text_to_video::{GenerationParams, LoadOptions, WanT2V};
use tch::{Cuda, Device, Kind};

mod common;
use common::process_gpu_mib;

const PROMPT: &str = "A cat walks on the grass, realistic";

struct Args {
    model: String,
    height: i64,
    width: i64,
    frames: i64,
    steps: usize,
    guidance: f64,
    with_image: bool,
    policy: MemoryPolicy,
    seed: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: String::new(),
        height: 704,
        width: 1280,
        frames: 121,
        steps: 10,
        guidance: 5.0,
        with_image: true,
        policy: MemoryPolicy::all_resident(),
        seed: 0,
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--model" => args.model = value,
            "--height" => args.height = value.parse()?,
            "--width" => args.width = value.parse()?,
            "--frames" => args.frames = value.parse()?,
            "--steps" => args.steps = value.parse()?,
            "--guidance" => args.guidance = value.parse()?,
            "--mode" => {
                args.with_image = match value.as_str() {
                    "ti2v" => true,
                    "t2v" => false,
                    other => anyhow::bail!("mode {other}: expected ti2v or t2v"),
                }
            }
            "--policy" => {
                args.policy = match value.as_str() {
                    "resident" => MemoryPolicy::all_resident(),
                    "low" => MemoryPolicy::low_memory(),
                    other => anyhow::bail!("policy {other}: expected resident or low"),
                }
            }
            "--seed" => args.seed = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(!args.model.is_empty(), "--model DIR is required");
    Ok(args)
}

/// 1280×720 gradients and a checkerboard, as `bench_ti2v.py` draws it (the video is 1280×704:
/// the resize stretches it).
fn synthetic_image() -> anyhow::Result<ConditionImage> {
    let (w, h) = (1280u32, 720u32);
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let check = if (x / 40 + y / 40) % 2 == 0 { 220 } else { 30 };
            rgb.extend([(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, check]);
        }
    }
    Ok(ConditionImage::from_rgb(w, h, rgb)?)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
    let device = Device::Cuda(0);
    let mut options = LoadOptions::new(device, Kind::BFloat16);
    options.memory = args.policy;
    let mode = if args.with_image { "ti2v" } else { "t2v" };
    let label = format!("ours {mode} policy {:?}", args.policy);

    // 1. every component with random weights on the device
    let start = Instant::now();
    let mut pipe = WanT2V::random(&args.model, options, 0)?;
    Cuda::synchronize(0);
    println!(
        "{label}: {} built in {:.1} s; GPU memory {:?} MiB",
        pipe.kind(),
        start.elapsed().as_secs_f64(),
        process_gpu_mib()
    );

    // 2. the request and its preflight estimate
    let params = GenerationParams {
        prompt: PROMPT.to_string(),
        height: args.height,
        width: args.width,
        num_frames: args.frames,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        guidance_scale_2: None,
        seed: Some(args.seed),
        image: args.with_image.then(synthetic_image).transpose()?,
        ..GenerationParams::default()
    };
    let estimate = pipe.estimate_memory(&params)?;
    println!(
        "{label}: preflight estimate peak {:.2} GiB",
        gib(estimate.peak)
    );

    // 3. one generation, timing each step
    let mut step_ends = Vec::new();
    let output = pipe.generate(&params, &mut |step| {
        Cuda::synchronize(0);
        step_ends.push(Instant::now());
        println!(
            "{label}: step {}/{} t={:.1}",
            step.index + 1,
            step.total,
            step.timestep
        );
        StepControl::Continue
    })?;
    let per_step: Vec<f64> = step_ends
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    let step_mean = per_step.iter().sum::<f64>() / per_step.len().max(1) as f64;
    let t = output.timings;
    println!(
        "{label}: {}x{}x{} frames {:?}, {} steps: total {:.2} s, text encode {:.2} s, {:.3} s/step (steps 2..{}), VAE decode {:.2} s; GPU memory at end {:?} MiB",
        output.height,
        output.width,
        output.num_frames,
        output.frames.size(),
        args.steps,
        t.total.as_secs_f64(),
        t.text_encode.as_secs_f64(),
        step_mean,
        args.steps,
        t.vae_decode.as_secs_f64(),
        process_gpu_mib()
    );
    let mean = output.frames.f_mean(Kind::Float)?.f_double_value(&[])?;
    println!(
        "{label}: frames mean {mean:.4} (finite: {})",
        mean.is_finite()
    );
    Ok(())
}
