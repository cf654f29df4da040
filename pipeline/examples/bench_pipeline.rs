//! GPU benchmark of the whole text-to-video pipeline ([`WanT2V::generate`]) with random weights
//! built directly on the device from the configs of a model directory (no checkpoint on disk):
//! prompt → umT5 → denoising loop over both experts with CFG → VAE decode → frames.
//!
//! `pipeline/bench/bench_pipeline.py --write-model DIR` writes the A14B-shaped directory (both
//! experts 5120 / 40 heads / 40 layers, umT5-XXL encoder, Wan2.1 VAE, UniPC with flow shift 3,
//! `boundary_ratio` 0.875) and then runs diffusers' `WanPipeline` on the same configs; run both on
//! the same GPU and compare. Prints the load time, the per-phase timings the pipeline returns
//! (text encode, denoise, VAE decode, total), seconds per step, each step's expert and
//! duration, the preflight estimate, and the GPU memory `nvidia-smi` attributes to the process
//! at the end. For the allocator's peak, run under the shim of `pipeline/bench/cuda_peak_memory.py`
//! with `T2V_PEAK_MEMORY_PROGRAMS=bench_pipeline`.
//!
//! ```text
//! python pipeline/bench/bench_pipeline.py --write-model /tmp/a14b --tokenizer DIR/tokenizer
//! LD_PRELOAD=$PWD/.gpubin/libt2v_peak_memory.so T2V_PEAK_MEMORY_PROGRAMS=bench_pipeline \
//!     target/release/examples/bench_pipeline --model /tmp/a14b
//! ```
//! Options: `--model DIR` (required), `--height 480 --width 832 --frames 81 --steps 10`,
//! `--guidance 4.0 --guidance-2 3.0`, `--policy resident|text-offload|low` (all resident; the
//! text encoder parked after encoding; or [`MemoryPolicy::low_memory`]), `--device cuda|cpu`, `--dtype bf16|f32` (transformers and text
//! encoder), `--vae-dtype bf16|f32`, `--seed 0`.

use std::time::Instant;

use t2v_pipeline::denoise::StepControl;
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
    guidance_2: f64,
    policy: MemoryPolicy,
    device: Device,
    dtype: Kind,
    vae_dtype: Kind,
    seed: u64,
}

fn kind(value: &str) -> anyhow::Result<Kind> {
    match value {
        "bf16" => Ok(Kind::BFloat16),
        "f16" => Ok(Kind::Half),
        "f32" => Ok(Kind::Float),
        other => anyhow::bail!("dtype {other}: expected bf16, f16 or f32"),
    }
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        model: String::new(),
        height: 480,
        width: 832,
        frames: 81,
        steps: 10,
        guidance: 4.0,
        guidance_2: 3.0,
        policy: MemoryPolicy::all_resident(),
        device: Device::Cuda(0),
        dtype: Kind::BFloat16,
        vae_dtype: Kind::BFloat16,
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
            "--guidance-2" => args.guidance_2 = value.parse()?,
            "--policy" => {
                args.policy = match value.as_str() {
                    "resident" => MemoryPolicy::all_resident(),
                    "text-offload" => MemoryPolicy {
                        offload_text_encoder: true,
                        ..MemoryPolicy::all_resident()
                    },
                    "low" => MemoryPolicy::low_memory(),
                    other => {
                        anyhow::bail!("policy {other}: expected resident, text-offload or low")
                    }
                }
            }
            "--device" => {
                args.device = match value.as_str() {
                    "cuda" => Device::Cuda(0),
                    "cpu" => Device::Cpu,
                    other => anyhow::bail!("device {other}: expected cuda or cpu"),
                }
            }
            "--dtype" => args.dtype = kind(&value)?,
            "--vae-dtype" => args.vae_dtype = kind(&value)?,
            "--seed" => args.seed = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(!args.model.is_empty(), "--model DIR is required");
    Ok(args)
}

fn synchronize(device: Device) {
    if let Device::Cuda(ordinal) = device {
        Cuda::synchronize(ordinal as i64);
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.device.is_cuda() {
        anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
    }
    let mut options = LoadOptions::new(args.device, args.dtype);
    options.vae_dtype = args.vae_dtype;
    options.memory = args.policy;

    // 1. build every component with random weights on the device
    let start = Instant::now();
    let mut pipe = WanT2V::random(&args.model, options, 0)?;
    synchronize(args.device);
    let configs = pipe.configs()?;
    println!(
        "ours: built {} layers × {} experts, umT5 {} layers d_model {}, VAE z {}; {:?} {:?} (VAE {:?}), policy {:?}, in {:.1} s; GPU memory {:?} MiB",
        configs.transformer.num_layers,
        1 + usize::from(configs.transformer_2.is_some()),
        configs.text_encoder.num_layers,
        configs.text_encoder.d_model,
        configs.vae.z_dim,
        args.device,
        args.dtype,
        args.vae_dtype,
        options.memory,
        start.elapsed().as_secs_f64(),
        process_gpu_mib()
    );

    // 2. the request, and the preflight estimate for it
    let params = GenerationParams {
        prompt: PROMPT.to_string(),
        height: args.height,
        width: args.width,
        num_frames: args.frames,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        guidance_scale_2: Some(args.guidance_2),
        seed: Some(args.seed),
        ..GenerationParams::default()
    };
    let estimate = pipe.estimate_memory(&params)?;
    println!(
        "ours: preflight estimate peak {:.2} GiB (text encode {:.2}, denoise {:.2}, decode {:.2})",
        gib(estimate.peak),
        gib(estimate.text_encode),
        gib(estimate.denoise),
        gib(estimate.vae_decode)
    );

    // 3. one generation, each step's expert and duration reported as it ends
    let mut last = Instant::now();
    let device = args.device;
    let mut on_step = |step: &t2v_pipeline::denoise::StepEnd<'_>| {
        synchronize(device);
        let now = Instant::now();
        println!(
            "ours: step {}/{} t={:.1} {:?} cfg {} {:.3} s",
            step.index + 1,
            step.total,
            step.timestep,
            step.expert,
            step.guidance_scale,
            (now - last).as_secs_f64()
        );
        last = now;
        StepControl::Continue
    };
    let output = pipe.generate(&params, &mut on_step)?;
    let t = output.timings;
    println!(
        "ours: {}x{}x{} frames {:?}, {} steps: total {:.2} s, text encode {:.2} s, denoise {:.2} s ({:.3} s/step), VAE decode {:.2} s; GPU memory at end {:?} MiB",
        output.height,
        output.width,
        output.num_frames,
        output.frames.size(),
        args.steps,
        t.total.as_secs_f64(),
        t.text_encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.denoise.as_secs_f64() / args.steps as f64,
        t.vae_decode.as_secs_f64(),
        process_gpu_mib()
    );
    let mean = output.frames.f_mean(Kind::Float)?.f_double_value(&[])?;
    println!("ours: frames mean {mean:.4} (finite: {})", mean.is_finite());
    Ok(())
}
