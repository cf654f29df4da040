//! One generation with `WanT2V` from the command line: loads a diffusers-format Wan model
//! directory, generates, prints the seed, per-phase timings and the memory estimate, and saves
//! the frames ((F, H, W, 3) f32 in [0, 1]) as `.npy` or `.safetensors`.
//!
//! ```text
//! cargo run -p t2v-pipeline --example generate_frames -- --model DIR [--prompt TEXT]
//!     [--negative-prompt TEXT] [--width 832 --height 480 --frames 81 --steps 40 --guidance 4
//!     --guidance-2 3 --shift S --seed N] [--device cpu|cuda] [--dtype f32|bf16|f16]
//!     [--policy resident|low-memory] [--save-frames out.npy] [--compare-cpu]
//! ```
//! The defaults are [`GenerationParams::default`]'s (the fleet's, for Wan2.2 T2V-A14B); on a
//! single-expert model an unset `--guidance-2` is dropped and an unset `--guidance` is
//! [`SINGLE_EXPERT_GUIDANCE`].
//! `--compare-cpu` runs the same request again on the CPU in f32 and prints the largest
//! difference of the frames (a check of the device path on small models).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use t2v_contract::defaults::SINGLE_EXPERT_GUIDANCE;
use t2v_pipeline::denoise::StepControl;
use t2v_pipeline::memory::MemoryPolicy;
use t2v_pipeline::text_to_video::{GenerationParams, LoadOptions, WanT2V};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut model = None;
    let mut save = None;
    let mut compare_cpu = false;
    let (mut guidance_given, mut guidance_2_given) = (false, false);
    let mut options = LoadOptions::new(Device::Cpu, Kind::Float);
    let mut params = GenerationParams {
        prompt: "A cat and a dog baking a cake together in a kitchen.".into(),
        ..GenerationParams::default()
    };
    while let Some(flag) = args.next() {
        if flag == "--compare-cpu" {
            compare_cpu = true;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<f64>()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--model" => model = Some(value.clone()),
            "--prompt" => params.prompt = value.clone(),
            "--negative-prompt" => params.negative_prompt = Some(value.clone()),
            "--width" => params.width = number()? as i64,
            "--height" => params.height = number()? as i64,
            "--frames" => params.num_frames = number()? as i64,
            "--steps" => params.num_inference_steps = number()? as usize,
            "--guidance" => {
                params.guidance_scale = number()?;
                guidance_given = true;
            }
            "--guidance-2" => {
                params.guidance_scale_2 = Some(number()?);
                guidance_2_given = true;
            }
            "--shift" => params.shift = Some(number()?),
            "--seed" => params.seed = Some(value.parse().context("--seed")?),
            "--save-frames" => save = Some(value.clone()),
            "--device" => {
                options.device = match value.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    other => bail!("--device {other}: expected cpu or cuda"),
                }
            }
            "--dtype" => {
                options.dtype = match value.as_str() {
                    "f32" => Kind::Float,
                    "bf16" => Kind::BFloat16,
                    "f16" => Kind::Half,
                    other => bail!("--dtype {other}: expected f32, bf16 or f16"),
                };
                options.vae_dtype = options.dtype;
            }
            "--policy" => {
                options.memory = match value.as_str() {
                    "resident" => MemoryPolicy::all_resident(),
                    "low-memory" => MemoryPolicy::low_memory(),
                    other => bail!("--policy {other}: expected resident or low-memory"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    let model = model.context("--model DIR is required")?;

    let loading = Instant::now();
    let mut pipe = WanT2V::load(&model, options)?;
    println!("loaded {model} in {:.2?} ({options:?})", loading.elapsed());
    if pipe.model_dir().boundary_ratio().is_none() {
        if !guidance_2_given {
            params.guidance_scale_2 = None;
        }
        if !guidance_given {
            params.guidance_scale = f64::from(SINGLE_EXPERT_GUIDANCE);
        }
    }
    let estimate = pipe.estimate_memory(&params)?;
    println!(
        "estimated peak device memory {:.3} GiB (encode {:.3}, denoise {:.3}, decode {:.3}); pinned host {:.3} GiB",
        gib(estimate.peak),
        gib(estimate.text_encode),
        gib(estimate.denoise),
        gib(estimate.vae_decode),
        gib(estimate.pinned_host)
    );
    let output = pipe.generate(&params, &mut |step| {
        println!(
            "step {}/{} t={} {:?}",
            step.index + 1,
            step.total,
            step.timestep,
            step.expert
        );
        StepControl::Continue
    })?;
    let t = output.timings;
    println!(
        "seed {} frames {:?}: text {:.3}s denoise {:.3}s decode {:.3}s total {:.3}s",
        output.seed,
        output.frames.size(),
        t.text_encode.as_secs_f64(),
        t.denoise.as_secs_f64(),
        t.vae_decode.as_secs_f64(),
        t.total.as_secs_f64()
    );
    if compare_cpu {
        drop(pipe);
        let mut cpu = WanT2V::load(&model, LoadOptions::new(Device::Cpu, Kind::Float))?;
        let seeded = GenerationParams {
            seed: Some(output.seed),
            ..params.clone()
        };
        let reference = cpu.generate(&seeded, &mut |_| StepControl::Continue)?;
        let diff = (&output.frames - &reference.frames)
            .abs()
            .max()
            .double_value(&[]);
        println!("max |frames − cpu f32 frames| = {diff:.3e}");
    }
    if let Some(path) = save {
        save_frames(&output.frames, &path)?;
        println!("saved {path}");
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn save_frames(frames: &Tensor, path: &str) -> Result<()> {
    if path.ends_with(".npy") {
        frames.write_npy(path)?;
    } else {
        Tensor::write_safetensors(&[("frames", frames)], path)?;
    }
    Ok(())
}
