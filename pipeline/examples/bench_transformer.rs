//! GPU benchmark of one `WanTransformer3DModel` forward at full size: the Wan2.2 T2V-A14B expert
//! (14.3 B parameters) with random weights, built directly on CUDA in bf16 (fp32 islands as in
//! diffusers), at 480×832 and 1280×720, 81 frames, 512 text tokens.
//!
//! Prints, per size: latent tokens, median / min / max forward time over `--runs` runs after a
//! warm-up (CUDA synchronised before each clock read), achieved TFLOP/s at the median (dense
//! matmul + attention FLOPs of the forward), and the GPU memory `nvidia-smi` attributes to the
//! process afterwards (the caching allocator keeps its peak reservation, so this approximates
//! peak reserved memory plus the CUDA context). tch 0.24 does not expose
//! `torch.cuda.max_memory_allocated`; for that counter run one size per process under the shim
//! of `pipeline/bench/cuda_peak_memory.py`, which prints the allocator's peak at exit.
//! `pipeline/bench/bench_transformer.py` measures diffusers the same way; run both on the same
//! GPU and compare the ratio.
//!
//! ```text
//! source scripts/env.sh && cargo run --release -p t2v-pipeline --example bench_transformer -- --runs 5
//! python pipeline/bench/cuda_peak_memory.py --build .gpubin
//! LD_PRELOAD=$PWD/.gpubin/libt2v_peak_memory.so target/release/examples/bench_transformer --sizes 480x832
//! ```
//! Options: `--runs N` (default 3), `--sizes 480x832,720x1280` (height×width in pixels),
//! `--frames 81`, `--layers N` (fewer blocks for a quick look; the default is the full 40).

use std::time::Instant;

use t2v_pipeline::wan::TransformerConfig;
use tch::{Cuda, Device, Kind, Tensor};

mod common;
use common::process_gpu_mib;

/// VAE stride of the Wan2.1 VAE the A14B experts use: (frames, height, width).
const VAE_STRIDE: [i64; 3] = [4, 8, 8];
const TEXT_LEN: i64 = 512;

struct Args {
    runs: usize,
    sizes: Vec<(i64, i64)>,
    frames: i64,
    layers: Option<i64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        runs: 3,
        sizes: vec![(480, 832), (720, 1280)],
        frames: 81,
        layers: None,
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--runs" => args.runs = value.parse()?,
            "--frames" => args.frames = value.parse()?,
            "--layers" => args.layers = Some(value.parse()?),
            "--sizes" => args.sizes = common::parse_sizes(&value)?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(args.runs > 0, "--runs must be positive");
    Ok(args)
}

/// Multiply-add FLOPs (×2) of one forward: projections, FFN, self- and cross-attention.
fn forward_flops(cfg: &TransformerConfig, tokens: i64, text_len: i64) -> f64 {
    let (s, l) = (tokens as f64, text_len as f64);
    let d = cfg.inner_dim() as f64;
    let ffn = cfg.ffn_dim as f64;
    let per_block = 2.0 * s * d * d * 4.0 // attn1 q, k, v, out
        + 2.0 * s * d * d * 2.0 // attn2 q, out
        + 2.0 * l * d * d * 2.0 // attn2 k, v on the text
        + 2.0 * s * d * ffn * 2.0 // feed-forward
        + 4.0 * s * s * d // self-attention QKᵀ and PV
        + 4.0 * s * l * d; // cross-attention
    let patch = cfg.in_channels * cfg.patch_volume();
    let edges = 2.0 * s * d * patch as f64 * 2.0 + 2.0 * l * cfg.text_dim as f64 * d;
    cfg.num_layers as f64 * per_block + edges
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
    let device = Device::Cuda(0);
    let _guard = tch::no_grad_guard();

    let (cfg, model) = common::random_a14b_expert(args.layers, device)?;
    Cuda::synchronize(0);
    println!(
        "A14B expert: {} layers, {:.2} B parameters, bf16 on {device:?}; weights resident: {:?} MiB",
        cfg.num_layers,
        cfg.num_parameters() as f64 / 1e9,
        process_gpu_mib()
    );

    for (height, width) in &args.sizes {
        let frames = (args.frames - 1) / VAE_STRIDE[0] + 1;
        let (h, w) = (height / VAE_STRIDE[1], width / VAE_STRIDE[2]);
        let [_, p_h, p_w] = cfg.patch_size;
        let tokens = frames * (h / p_h) * (w / p_w);
        let latents = Tensor::f_randn(
            [1, cfg.in_channels, frames, h, w],
            (Kind::Float, Device::Cpu),
        )?
        .f_to_device(device)?
        .f_to_kind(Kind::BFloat16)?;
        let text = Tensor::f_randn([1, TEXT_LEN, cfg.text_dim], (Kind::BFloat16, device))?;
        let timestep = Tensor::from_slice(&[875.0f32]).f_to_device(device)?;

        let _ = model.forward(&latents, &timestep, &text)?; // warm-up
        Cuda::synchronize(0);
        let mut times = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let start = Instant::now();
            let out = model.forward(&latents, &timestep, &text)?;
            Cuda::synchronize(0);
            times.push(start.elapsed().as_secs_f64());
            drop(out);
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let tflops = forward_flops(&cfg, tokens, TEXT_LEN) / median / 1e12;
        println!(
            "{height}x{width}x{}: {tokens} tokens, median {median:.3} s (min {:.3} s, max {:.3} s, {} runs), {tflops:.0} TFLOP/s, process GPU memory {:?} MiB",
            args.frames,
            times[0],
            times[times.len() - 1],
            args.runs,
            process_gpu_mib()
        );
    }
    Ok(())
}
