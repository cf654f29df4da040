//! What the parallel machinery costs with one rank: one guided denoising step (two forwards of
//! a Wan2.2 T2V-A14B expert with random weights, bf16, CFG on) computed the way today's loop
//! does it (`NoisePredictor::predict_guided` on the model) and through a one-rank
//! `parallel::RankPool` (`run_ranks` with layout 1x1: a rank thread, the job and answer
//! channels, the sharded forward with one shard), on the same device, in the same process.
//!
//! The two paths alternate step by step after a warm-up, CUDA synchronised before every clock
//! read; printed: the median (and min / max) seconds per step of each, the overhead of the
//! parallel path in percent of today's (the goal is at most 2 %), the max |diff| of the two
//! predictions (0 expected with one rank: the same kernels on the same inputs; bf16 rounding
//! with Ulysses, whose matmuls see fewer rows) and the GPU memory
//! `nvidia-smi` attributes to the process.
//!
//! ```text
//! source scripts/env.sh
//! cargo build --release -p t2v-pipeline --example parallel_overhead
//! $CARGO_TARGET_DIR/release/examples/parallel_overhead --steps 8
//! ```
//! Options: `--device cuda|cpu` (default cuda), `--height 480 --width 832 --frames 81`,
//! `--steps 8` (timed steps per path), `--warmup 2`, `--layers N` (fewer blocks for a quick
//! look; default all 40), `--layout 1x1` (another layout places all its ranks on the device,
//! e.g. `1x2`, to see the cost of the exchanges themselves; not a multi-GPU speed-up),
//! `--gpus 0,1,2,3` (one rank per listed GPU, the layout from the count unless `--layout`
//! says otherwise, the experts copied to every GPU: the multi-GPU speed-up against GPU 0 alone),
//! `--collectives auto|nccl|copy` (what moves the ranks' tensors; `auto`, the default, takes
//! NCCL on two or more GPUs and the in-process copies otherwise — the worker's rule).

use std::time::Instant;

use t2v_pipeline::denoise::{Expert, NoisePredictor};
use t2v_pipeline::parallel::{
    run_ranks, CollectivesChoice, ParallelLayout, ParallelPlan, RankModels,
};
use tch::{Cuda, Device, Kind, Tensor};

mod common;
use common::process_gpu_mib;

/// VAE stride of the Wan2.1 VAE the A14B experts use: (frames, height, width).
const VAE_STRIDE: [i64; 3] = [4, 8, 8];
const TEXT_LEN: i64 = 512;
const TEXT_DIM: i64 = 4096;
const GUIDANCE: f64 = 4.0;

struct Args {
    device: Device,
    height: i64,
    width: i64,
    frames: i64,
    steps: usize,
    warmup: usize,
    layers: Option<i64>,
    layout: Option<ParallelLayout>,
    gpus: Vec<usize>,
    collectives: CollectivesChoice,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        device: Device::Cuda(0),
        height: 480,
        width: 832,
        frames: 81,
        steps: 8,
        warmup: 2,
        layers: None,
        layout: None,
        gpus: Vec::new(),
        collectives: CollectivesChoice::Auto,
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--device" => {
                args.device = match value.as_str() {
                    "cuda" => Device::Cuda(0),
                    "cpu" => Device::Cpu,
                    other => anyhow::bail!("device {other}: expected cuda or cpu"),
                }
            }
            "--height" => args.height = value.parse()?,
            "--width" => args.width = value.parse()?,
            "--frames" => args.frames = value.parse()?,
            "--steps" => args.steps = value.parse()?,
            "--warmup" => args.warmup = value.parse()?,
            "--layers" => args.layers = Some(value.parse()?),
            "--layout" => args.layout = Some(value.parse().map_err(anyhow::Error::msg)?),
            "--gpus" => {
                args.gpus = value
                    .split(',')
                    .map(|g| g.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--collectives" => args.collectives = value.parse().map_err(anyhow::Error::msg)?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(args.steps > 0, "--steps must be positive");
    Ok(args)
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        Cuda::synchronize(i as i64);
    }
}

/// Seconds of one call of `step`, the device synchronised before and after.
fn timed(
    device: Device,
    step: &mut dyn FnMut() -> anyhow::Result<Tensor>,
) -> anyhow::Result<(f64, Tensor)> {
    synchronize(device);
    let start = Instant::now();
    let out = step()?;
    synchronize(device);
    Ok((start.elapsed().as_secs_f64(), out))
}

/// (median, min, max).
fn summary(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

/// The ranks' plan: every rank on `device`, or one per listed GPU (GPU order as given, the
/// first one where today's path runs).
fn plan(args: &Args, heads: i64) -> anyhow::Result<ParallelPlan> {
    if args.gpus.is_empty() {
        let layout = args.layout.unwrap_or(ParallelLayout::single());
        layout.check(heads)?;
        return Ok(
            ParallelPlan::on_one_device(layout, args.device).with_collectives(args.collectives)
        );
    }
    let devices: Vec<Device> = args.gpus.iter().map(|&g| Device::Cuda(g)).collect();
    let layout = match args.layout {
        Some(layout) => layout,
        None => ParallelLayout::for_devices(devices.len(), heads)?,
    };
    Ok(ParallelPlan::new(layout, devices)?.with_collectives(args.collectives))
}

fn main() -> anyhow::Result<()> {
    let mut args = parse_args()?;
    let _no_grad = tch::no_grad_guard();
    if let Some(&first) = args.gpus.first() {
        args.device = Device::Cuda(first);
    }
    let device = args.device;
    let (cfg, model) = common::random_a14b_expert(args.layers, device)?;
    let kind = model.kind();
    let latent = [
        1,
        cfg.in_channels,
        (args.frames - 1) / VAE_STRIDE[0] + 1,
        args.height / VAE_STRIDE[1],
        args.width / VAE_STRIDE[2],
    ];
    let tokens = latent[2] * latent[3] * latent[4] / 4;
    let plan = plan(&args, cfg.num_attention_heads)?;
    println!(
        "A14B expert ({} layers, {kind:?}) on {device:?}: latents {latent:?}, {tokens} tokens, CFG on; parallel layout {} on {:?}, collectives {} ({})",
        cfg.num_layers,
        plan.layout,
        plan.devices,
        plan.collectives,
        plan.resolve_collectives()?
    );
    tch::manual_seed(1);
    let latents = Tensor::randn(latent, (Kind::Float, device)).to_kind(kind);
    let prompt = Tensor::randn([1, TEXT_LEN, TEXT_DIM], (Kind::Float, device)).to_kind(kind);
    let negative = Tensor::randn([1, TEXT_LEN, TEXT_DIM], (Kind::Float, device)).to_kind(kind);
    let timestep = Tensor::from_slice(&[999.0f32]).to_device(device);

    let home = RankModels {
        high: model.share()?,
        low: None,
    };
    let replicas = plan
        .distinct_devices()
        .into_iter()
        .filter(|&d| d != device)
        .map(|d| home.replica(d))
        .collect::<Result<Vec<_>, _>>()?;
    let models = RankModels::for_ranks(&plan, &home, &replicas)?;
    let (today, parallel, diff, scale) = run_ranks(&plan, models, |pool| -> anyhow::Result<_> {
        let ranks = pool.expert(Expert::High, None);
        let mut today_step =
            || Ok(model.predict_guided(&latents, &timestep, &prompt, Some(&negative), GUIDANCE)?);
        let mut parallel_step =
            || Ok(ranks.predict_guided(&latents, &timestep, &prompt, Some(&negative), GUIDANCE)?);
        for _ in 0..args.warmup {
            let _warm = timed(device, &mut today_step)?;
            let _warm = timed(device, &mut parallel_step)?;
        }
        let (mut today, mut parallel, mut diff, mut scale) = (Vec::new(), Vec::new(), 0f64, 0f64);
        for i in 0..args.steps {
            // Alternate which path goes first, so neither always follows the other.
            let (a, b) = if i % 2 == 0 {
                let a = timed(device, &mut today_step)?;
                (a, timed(device, &mut parallel_step)?)
            } else {
                let b = timed(device, &mut parallel_step)?;
                (timed(device, &mut today_step)?, b)
            };
            let step_diff = (&a.1 - &b.1)
                .abs()
                .max()
                .to_kind(Kind::Double)
                .double_value(&[]);
            diff = diff.max(step_diff);
            scale = scale.max(a.1.abs().max().to_kind(Kind::Double).double_value(&[]));
            today.push(a.0);
            parallel.push(b.0);
        }
        Ok((today, parallel, diff, scale))
    })??;

    let (t_med, t_min, t_max) = summary(today);
    let (p_med, p_min, p_max) = summary(parallel);
    println!("today's path:      {t_med:.4} s/step (min {t_min:.4}, max {t_max:.4})");
    println!(
        "parallel path {}: {p_med:.4} s/step (min {p_min:.4}, max {p_max:.4})",
        plan.layout
    );
    println!(
        "overhead: {:+.2} % of today's step (goal with one rank: at most 2 %); speed-up {:.2}x",
        100.0 * (p_med - t_med) / t_med,
        t_med / p_med
    );
    println!("max |diff| of the predictions: {diff:.3e} (max |prediction| {scale:.3e})");
    if let Some(mib) = process_gpu_mib() {
        println!("GPU memory of this process (nvidia-smi): {mib} MiB");
    }
    Ok(())
}
