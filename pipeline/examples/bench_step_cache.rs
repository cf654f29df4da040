//! GPU benchmark of step caching ([`t2v_pipeline::step_cache`]) on the Wan2.2 T2V-A14B expert
//! shape (14.3 B parameters, random bf16 weights built on CUDA), 1280×720, 81 frames, 512 text
//! tokens:
//! 1. the time of one forward computed in full, one that First-Block-Cache skips (block 0 runs,
//!    its residual is compared, the cached residual is added) and one that MagCache skips (no
//!    block runs) — median over `--runs` after a warm-up, CUDA synchronised around each;
//! 2. a denoising loop of `--steps` steps with CFG (guidance 5.0, UniPC), without a cache and
//!    with First-Block-Cache at each `--thresholds` value: loop time, forwards, forwards skipped.
//!
//! Random weights change between steps as no trained model does, so the skip counts of part 2
//! say little about a real checkpoint (its relative changes are far smaller); the per-forward
//! times of part 1 and the loop times per forward computed are what carry over.
//!
//! ```text
//! source scripts/env.sh && cargo run --release -p t2v-pipeline --example bench_step_cache -- --runs 3 --steps 6
//! ```
//! Options: `--runs N` (default 3), `--steps N` (default 6), `--size 720x1280`, `--frames 81`,
//! `--thresholds 0.05,0.2` (First-Block-Cache thresholds of part 2), `--layers N` (fewer blocks
//! for a quick look).

use std::cell::RefCell;
use std::time::Instant;

use t2v_pipeline::denoise::{
    denoise, DenoiseInput, DenoiseSettings, Expert, Experts, StepControl, StepEnd,
};
use t2v_pipeline::scheduler::{Scheduler, UniPcConfig, UniPcMultistepScheduler};
use t2v_pipeline::step_cache::{
    denoise_cached, Branch, CachePolicy, CachePredictor, MagSettings, StepCache, StepCacheConfig,
};
use t2v_pipeline::wan::WanTransformer3DModel;
use tch::{Cuda, Device, Kind, Tensor};

mod common;
use common::process_gpu_mib;

const VAE_STRIDE: [i64; 3] = [4, 8, 8];
const TEXT_LEN: i64 = 512;
const GUIDANCE: f64 = 5.0;

struct Args {
    runs: usize,
    steps: usize,
    size: (i64, i64),
    frames: i64,
    thresholds: Vec<f64>,
    layers: Option<i64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 3,
        steps: 6,
        size: (720, 1280),
        frames: 81,
        thresholds: vec![0.05, 0.2],
        layers: None,
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--runs" => args.runs = value.parse()?,
            "--steps" => args.steps = value.parse()?,
            "--frames" => args.frames = value.parse()?,
            "--layers" => args.layers = Some(value.parse()?),
            "--size" => {
                args.size = *common::parse_sizes(&value)?
                    .first()
                    .ok_or_else(|| anyhow::anyhow!("--size needs HxW"))?
            }
            "--thresholds" => {
                args.thresholds = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(
        args.runs > 0 && args.steps > 0,
        "--runs and --steps must be positive"
    );
    Ok(args)
}

/// Median seconds of `runs` calls of `f` after one warm-up, CUDA synchronised around each.
fn median_secs(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    Cuda::synchronize(0);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        f()?;
        Cuda::synchronize(0);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Part 1: a forward that `config` skips, after one it computes with the same inputs.
fn skipped_forward_secs(
    model: &WanTransformer3DModel,
    config: &StepCacheConfig,
    inputs: (&Tensor, &Tensor, &Tensor),
    runs: usize,
) -> anyhow::Result<f64> {
    let (latents, timestep, text) = inputs;
    // Enough steps that MagCache never starts over, no retention, no limit on skips in a row.
    let cache = RefCell::new(StepCache::new(config, 1000)?);
    let forward = || -> anyhow::Result<()> {
        let _ = cache
            .borrow_mut()
            .forward(Expert::High, Branch::Cond, |c| {
                model.predict_cached(latents, timestep, text, c)
            })?;
        Ok(())
    };
    forward()?;
    let secs = median_secs(runs, forward)?;
    let report = cache.into_inner().into_report();
    anyhow::ensure!(
        report.skipped() == report.forwards.len() - 1,
        "{}: expected every forward after the first skipped, got {} of {}",
        report.kind,
        report.skipped(),
        report.forwards.len()
    );
    Ok(secs)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
    let device = Device::Cuda(0);
    let _guard = tch::no_grad_guard();
    let (cfg, model) = common::random_a14b_expert(args.layers, device)?;
    let (height, width) = args.size;
    let frames = (args.frames - 1) / VAE_STRIDE[0] + 1;
    let shape = [
        1,
        cfg.in_channels,
        frames,
        height / VAE_STRIDE[1],
        width / VAE_STRIDE[2],
    ];
    let latents = Tensor::f_randn(shape, (Kind::Float, Device::Cpu))?.f_to_device(device)?;
    let model_latents = latents.f_to_kind(Kind::BFloat16)?;
    let text = Tensor::f_randn([1, TEXT_LEN, cfg.text_dim], (Kind::BFloat16, device))?;
    let negative = Tensor::f_randn([1, TEXT_LEN, cfg.text_dim], (Kind::BFloat16, device))?;
    let timestep = Tensor::from_slice(&[875.0f32]).f_to_device(device)?;
    println!(
        "A14B expert: {} layers, bf16; {height}x{width}x{} ({} latent frames); GPU memory {:?} MiB",
        cfg.num_layers,
        args.frames,
        frames,
        process_gpu_mib()
    );

    // 1. one forward: computed, skipped by First-Block-Cache, skipped by MagCache
    let inputs = (&model_latents, &timestep, &text);
    let full = median_secs(args.runs, || {
        let _ = model.forward(&model_latents, &timestep, &text)?;
        Ok(())
    })?;
    let first_block = StepCacheConfig {
        policy: CachePolicy::FirstBlock,
        threshold: 0.05,
    };
    let mag = StepCacheConfig {
        policy: CachePolicy::Mag(MagSettings {
            max_skip_steps: usize::MAX,
            retention_ratio: 0.0,
            mag_ratios: Some(vec![1.0]),
            calibrate: false,
        }),
        threshold: 0.05,
    };
    let fbc_skipped = skipped_forward_secs(&model, &first_block, inputs, args.runs)?;
    let mag_skipped = skipped_forward_secs(&model, &mag, inputs, args.runs)?;
    println!(
        "forward: computed {full:.3} s, skipped by first_block {fbc_skipped:.3} s ({:.1}%), skipped by mag {mag_skipped:.4} s ({:.2}%); GPU memory {:?} MiB",
        100.0 * fbc_skipped / full,
        100.0 * mag_skipped / full,
        process_gpu_mib()
    );

    // 2. the denoising loop, without and with First-Block-Cache
    let experts = Experts::<WanTransformer3DModel> {
        high: &model,
        low: None,
    };
    let settings = DenoiseSettings {
        guidance_scale: GUIDANCE,
        guidance_scale_2: None,
        boundary_ratio: None,
        expand_timesteps: false,
    };
    let run_loop = |config: Option<&StepCacheConfig>| -> anyhow::Result<(f64, usize, usize)> {
        let mut scheduler = UniPcMultistepScheduler::new(UniPcConfig::wan(1000, 5.0));
        scheduler.set_timesteps(args.steps, None)?;
        let input = DenoiseInput {
            latents: latents.shallow_clone(),
            prompt_embeds: &text,
            negative_prompt_embeds: Some(&negative),
            start_step: 0,
        };
        let mut on_step = |_: &StepEnd<'_>| StepControl::Continue;
        Cuda::synchronize(0);
        let start = Instant::now();
        let counts = match config {
            None => {
                let _ = denoise(&experts, &mut scheduler, &settings, input, &mut on_step)?;
                (2 * args.steps, 0)
            }
            Some(config) => {
                let cache = RefCell::new(StepCache::new(config, args.steps)?);
                let _ = denoise_cached(
                    &experts,
                    &cache,
                    &mut scheduler,
                    &settings,
                    input,
                    &mut on_step,
                )?;
                let report = cache.into_inner().into_report();
                (report.forwards.len(), report.skipped())
            }
        };
        Cuda::synchronize(0);
        Ok((start.elapsed().as_secs_f64(), counts.0, counts.1))
    };
    let (base, forwards, _) = run_loop(None)?;
    println!(
        "denoise {} steps, CFG: no cache {base:.2} s ({forwards} forwards)",
        args.steps
    );
    for threshold in &args.thresholds {
        let config = StepCacheConfig {
            threshold: *threshold,
            ..first_block.clone()
        };
        let (secs, forwards, skipped) = run_loop(Some(&config))?;
        println!(
            "denoise {} steps, CFG: first_block threshold {threshold}: {secs:.2} s ({:.2}× faster), {skipped} of {forwards} forwards skipped",
            args.steps,
            base / secs
        );
    }
    Ok(())
}
