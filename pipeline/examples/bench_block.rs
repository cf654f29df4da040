//! GPU breakdown of one Wan2.2 T2V-A14B transformer block (random bf16 weights, fp32 islands as
//! in diffusers), to find where a full-forward gap to diffusers comes from.
//! `pipeline/bench/bench_block.py` times the same pieces of diffusers' `WanTransformerBlock`.
//!
//! Per size, the median over `--runs` timed calls (after two warm-ups, CUDA synchronised around
//! each call) of: the RoPE tables, RoPE applied to one `[1, S, 40, 128]` tensor, SDPA alone,
//! one 5120×5120 linear, `attn1` (self-attention with RoPE), `attn2` (cross-attention on 512 text
//! tokens), the feed-forward, and the whole block.
//!
//! ```text
//! source scripts/env.sh && cargo run --release -p t2v-pipeline --example bench_block -- --runs 10
//! ```
//! Options: `--runs N` (default 10), `--sizes 480x832,720x1280`, `--frames 81`.

use std::time::Instant;

use t2v_pipeline::wan::rope::apply_rotary_emb;
use tch::{Cuda, Device, Kind, Tensor};

mod common;

const VAE_STRIDE: [i64; 3] = [4, 8, 8];
const TEXT_LEN: i64 = 512;

/// `--runs`, `--sizes` (height × width in pixels) and `--frames`.
struct Args {
    runs: usize,
    sizes: Vec<(i64, i64)>,
    frames: i64,
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut runs, mut sizes, mut frames) = (10, vec![(480, 832), (720, 1280)], 81);
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--runs" => runs = value.parse()?,
            "--frames" => frames = value.parse()?,
            "--sizes" => sizes = common::parse_sizes(&value)?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(runs > 0, "--runs must be positive");
    Ok(Args {
        runs,
        sizes,
        frames,
    })
}

/// Median seconds of `runs` calls of `f` after two warm-ups.
fn time<T>(runs: usize, mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
    for _ in 0..2 {
        drop(f()?);
    }
    Cuda::synchronize(0);
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let out = f()?;
        Cuda::synchronize(0);
        times.push(start.elapsed().as_secs_f64());
        drop(out);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let Args {
        runs,
        sizes,
        frames: frames_px,
    } = parse_args()?;
    anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
    let device = Device::Cuda(0);
    let _guard = tch::no_grad_guard();

    let (cfg, model) = common::random_a14b_expert(Some(1), device)?;
    let block = &model.blocks()[0];
    let dim = cfg.inner_dim();
    let heads = cfg.num_attention_heads;
    let bf16 = (Kind::BFloat16, device);

    for (height, width) in sizes {
        let frames = (frames_px - 1) / VAE_STRIDE[0] + 1;
        let (h, w) = (height / VAE_STRIDE[1], width / VAE_STRIDE[2]);
        let tokens = frames * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
        let x = Tensor::f_randn([1, tokens, dim], bf16)?;
        let context = Tensor::f_randn([1, TEXT_LEN, dim], bf16)?;
        let timestep_proj = Tensor::f_randn([1, 1, 6, dim], bf16)?.f_mul_scalar(0.1)?;
        let q = Tensor::f_randn([1, tokens, heads, dim / heads], bf16)?;
        let weight = Tensor::f_randn([dim, dim], bf16)?.f_mul_scalar(0.02)?;
        let (cos, sin) = model.rope().forward(frames, h, w)?;
        let heads_first = |t: &Tensor| t.f_permute([0, 2, 1, 3]);

        let rows = [
            (
                "rope tables",
                time(runs, || Ok(model.rope().forward(frames, h, w)?))?,
            ),
            (
                "rope apply",
                time(runs, || Ok(apply_rotary_emb(&q, &cos, &sin)?))?,
            ),
            (
                "sdpa",
                time(runs, || {
                    let t = heads_first(&q)?;
                    Ok(Tensor::f_scaled_dot_product_attention(
                        &t,
                        &t,
                        &t,
                        None::<Tensor>,
                        0.0,
                        false,
                        None,
                        false,
                    )?)
                })?,
            ),
            (
                "linear 5120",
                time(runs, || Ok(x.f_linear(&weight, None::<Tensor>)?))?,
            ),
            (
                "attn1",
                time(runs, || {
                    Ok(block.attn1().forward(&x, None, Some((&cos, &sin)))?)
                })?,
            ),
            (
                "attn2",
                time(runs, || {
                    Ok(block.attn2().forward(&x, Some(&context), None)?)
                })?,
            ),
            ("ffn", time(runs, || Ok(block.ffn(&x)?))?),
            (
                "block",
                time(runs, || {
                    Ok(block.forward(&x, &context, &timestep_proj, (&cos, &sin))?)
                })?,
            ),
        ];
        println!("ours {height}x{width}x{frames_px} ({tokens} tokens), median of {runs}:");
        for (what, seconds) in rows {
            println!("  {what:<12} {:>9.3} ms", seconds * 1e3);
        }
    }
    Ok(())
}
