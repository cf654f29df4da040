//! GPU check of the NCCL collectives (`parallel::NcclGroup`) against the in-process copies
//! (`parallel::InProcessGroup`): the exchanges of a Ulysses forward of Wan2.2 T2V-A14B at 480p
//! (81 frames, 480x832: 32,760 tokens, 40 heads of 128), in bf16 and f32, on one rank per listed
//! GPU.
//!
//! Per rank and exchange, the tensors the communicator sees in a forward with a Ulysses degree
//! equal to the rank count `n` (`m` = ⌈32760 / n⌉ tokens per rank):
//! - `tokens_to_heads`: an all-to-all of `[3, 1, m, 40/n, 128]` (q, k, v) per peer;
//! - `heads_to_tokens`: an all-to-all of `[1, m, 40/n, 128]` per peer;
//! - `gather_tokens`: an all-gather of `[1, m, 64]` (the patchified prediction).
//!
//! Every rank draws the same inputs for both paths; the check fails (exit 1) unless NCCL's
//! results are bit-equal to the copies'. Printed: NCCL's version, the time to create the
//! communicators (and to take them back for a second run), per exchange and dtype the median (min / max) milliseconds per call of each
//! path on rank 0 (the ranks start each call together, CUDA synchronised before and after), the
//! bytes a rank sends, and the count of NCCL operations enqueued (proof that NCCL carried the
//! data). The two all-to-alls together are the exchange time of one transformer layer.
//!
//! ```text
//! source scripts/env.sh
//! cargo build --release -p t2v-pipeline --example nccl_check
//! $CARGO_TARGET_DIR/release/examples/nccl_check                 # one GPU, a 1-rank group
//! $CARGO_TARGET_DIR/release/examples/nccl_check --gpus 0,1,2,3  # four ranks, one per GPU
//! ```
//! Options: `--gpus 0,1,...` (default 0), `--iters 20` (timed calls per exchange and path),
//! `--warmup 3`, `--frames 81 --height 480 --width 832`.

use std::sync::Barrier;
use std::time::Instant;

use t2v_pipeline::parallel::collectives::{load_nccl, Collectives};
use t2v_pipeline::parallel::nccl_group::nccl_operations;
use t2v_pipeline::parallel::Communicator;
use tch::{Cuda, Device, Kind, Tensor};

mod common;

const HEADS: i64 = 40;
const HEAD_DIM: i64 = 128;
/// Output channels × patch (16 × 1·2·2): the width of a patchified prediction token.
const PREDICTION_WIDTH: i64 = 64;

struct Args {
    gpus: Vec<usize>,
    iters: usize,
    warmup: usize,
    frames: i64,
    height: i64,
    width: i64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        gpus: vec![0],
        iters: 20,
        warmup: 3,
        frames: 81,
        height: 480,
        width: 832,
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--gpus" => {
                args.gpus = value
                    .split(',')
                    .map(|g| g.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--iters" => args.iters = value.parse()?,
            "--warmup" => args.warmup = value.parse()?,
            "--frames" => args.frames = value.parse()?,
            "--height" => args.height = value.parse()?,
            "--width" => args.width = value.parse()?,
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    anyhow::ensure!(args.iters > 0, "--iters must be positive");
    anyhow::ensure!(
        HEADS % args.gpus.len() as i64 == 0,
        "{} GPUs do not divide the {HEADS} heads (use 1, 2, 4, 5 or 8)",
        args.gpus.len()
    );
    Ok(args)
}

/// One exchange of a Ulysses forward, as the communicator sees it.
#[derive(Clone, Copy)]
enum Exchange {
    TokensToHeads,
    HeadsToTokens,
    GatherTokens,
}

impl Exchange {
    const ALL: [Exchange; 3] = [
        Exchange::TokensToHeads,
        Exchange::HeadsToTokens,
        Exchange::GatherTokens,
    ];

    fn name(self) -> &'static str {
        match self {
            Exchange::TokensToHeads => "tokens_to_heads all_to_all",
            Exchange::HeadsToTokens => "heads_to_tokens all_to_all",
            Exchange::GatherTokens => "gather_tokens all_gather",
        }
    }

    /// The shape of one tensor a rank sends, with `n` ranks and `m` tokens per rank.
    fn shape(self, n: i64, m: i64) -> Vec<i64> {
        match self {
            Exchange::TokensToHeads => vec![3, 1, m, HEADS / n, HEAD_DIM],
            Exchange::HeadsToTokens => vec![1, m, HEADS / n, HEAD_DIM],
            Exchange::GatherTokens => vec![1, m, PREDICTION_WIDTH],
        }
    }

    fn run(self, comm: &dyn Communicator, send: &[Tensor]) -> anyhow::Result<Vec<Tensor>> {
        Ok(match self {
            Exchange::GatherTokens => comm.all_gather(&send[0])?,
            _ => comm.all_to_all(send.iter().map(Tensor::shallow_clone).collect())?,
        })
    }
}

/// What one rank measured for one exchange and dtype.
struct Measured {
    nccl_ms: Vec<f64>,
    copy_ms: Vec<f64>,
    equal: bool,
    bytes_sent: usize,
}

/// Milliseconds of each of `iters` calls of `exchange` on `comm`, the ranks starting each call
/// together and the device synchronised around it; and the last call's result.
fn time_calls(
    exchange: Exchange,
    comm: &dyn Communicator,
    send: &[Tensor],
    device: usize,
    barrier: &Barrier,
    (warmup, iters): (usize, usize),
) -> anyhow::Result<(Vec<f64>, Vec<Tensor>)> {
    let mut times = Vec::with_capacity(iters);
    let mut last = Vec::new();
    for i in 0..warmup + iters {
        Cuda::synchronize(device as i64);
        barrier.wait();
        let start = Instant::now();
        last = exchange.run(comm, send)?;
        Cuda::synchronize(device as i64);
        if i >= warmup {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok((times, last))
}

/// One rank's part: every exchange in both dtypes, through NCCL and through the copies.
fn rank_work(
    rank: usize,
    device: usize,
    (nccl, copy): (&dyn Communicator, &dyn Communicator),
    args: &Args,
    tokens_per_rank: i64,
    barrier: &Barrier,
) -> anyhow::Result<Vec<(Exchange, Kind, Measured)>> {
    let _no_grad = tch::no_grad_guard();
    let n = args.gpus.len() as i64;
    let mut out = Vec::new();
    for kind in [Kind::BFloat16, Kind::Float] {
        for exchange in Exchange::ALL {
            let shape = exchange.shape(n, tokens_per_rank);
            // distinct values per rank and peer, the same for both paths
            let send: Vec<Tensor> = (0..n)
                .map(|peer| {
                    let offset = (rank as i64 * n + peer) as f64;
                    (Tensor::randn(&shape, (Kind::Float, Device::Cuda(device))) + offset)
                        .to_kind(kind)
                })
                .collect();
            let rounds = (args.warmup, args.iters);
            let (nccl_ms, by_nccl) = time_calls(exchange, nccl, &send, device, barrier, rounds)?;
            let (copy_ms, by_copy) = time_calls(exchange, copy, &send, device, barrier, rounds)?;
            let equal = by_nccl.len() == by_copy.len()
                && by_nccl
                    .iter()
                    .zip(&by_copy)
                    .all(|(a, b)| a.size() == b.size() && a.kind() == b.kind() && a.equal(b));
            let sent = match exchange {
                Exchange::GatherTokens => send[0].numel() * n as usize,
                _ => send.iter().map(Tensor::numel).sum(),
            };
            out.push((
                exchange,
                kind,
                Measured {
                    nccl_ms,
                    copy_ms,
                    equal,
                    bytes_sent: sent * kind.elt_size_in_bytes(),
                },
            ));
        }
    }
    Ok(out)
}

/// (median, min, max).
fn summary(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let visible = Cuda::device_count();
    anyhow::ensure!(
        Cuda::is_available() && args.gpus.iter().all(|&g| (g as i64) < visible),
        "GPUs {:?} asked for, libtorch sees {visible} CUDA device(s)",
        args.gpus
    );
    let nccl = load_nccl()?;
    let Collectives::Nccl { version, .. } = &nccl else {
        anyhow::bail!("load_nccl returned no NCCL");
    };
    println!(
        "{nccl} (ncclGetVersion = {version}); NCCL_NVLS_ENABLE={}",
        std::env::var("NCCL_NVLS_ENABLE").unwrap_or_else(|_| "unset (set to 0 at init)".into())
    );
    let devices: Vec<Device> = args.gpus.iter().map(|&g| Device::Cuda(g)).collect();
    let started = Instant::now();
    let nccl_groups = nccl.group(&devices)?;
    let init_s = started.elapsed().as_secs_f64();
    let copy_groups = Collectives::Copy.group(&devices)?;
    let n = devices.len() as i64;
    let tokens = ((args.frames - 1) / 4 + 1) * (args.height / 16) * (args.width / 16);
    let tokens_per_rank = (tokens + n - 1) / n;
    println!(
        "{n} rank(s) on {devices:?}: {tokens} tokens, {tokens_per_rank} per rank, {HEADS} heads of {HEAD_DIM}; NCCL communicators created in {init_s:.3} s"
    );
    let operations_before = nccl_operations();
    let barrier = Barrier::new(devices.len());
    let results: Vec<anyhow::Result<_>> = std::thread::scope(|s| {
        let handles: Vec<_> = nccl_groups
            .into_iter()
            .zip(copy_groups)
            .zip(&args.gpus)
            .enumerate()
            .map(|(rank, ((nccl, copy), &gpu))| {
                let (args, barrier) = (&args, &barrier);
                s.spawn(move || {
                    rank_work(rank, gpu, (&*nccl, &*copy), args, tokens_per_rank, barrier)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a rank panicked"))?)
            .collect()
    });
    let operations = nccl_operations() - operations_before;
    // The ranks' communicators were kept when their threads ended: the next run takes them.
    let started = Instant::now();
    drop(nccl.group(&devices)?);
    println!(
        "a second run's communicators (kept from the first) in {:.6} s",
        started.elapsed().as_secs_f64()
    );
    let mut all_equal = true;
    let mut per_rank = Vec::new();
    for result in results {
        let measured = result?;
        all_equal &= measured.iter().all(|(_, _, m)| m.equal);
        per_rank.push(measured);
    }
    report(&per_rank[0], all_equal);
    println!("NCCL operations enqueued (sends + receives): {operations}");
    anyhow::ensure!(
        operations > 0,
        "NCCL enqueued nothing: it did not carry the exchanges"
    );
    anyhow::ensure!(
        all_equal,
        "NCCL's results differ from the in-process copies'"
    );
    println!("OK: NCCL ran and every result is bit-equal to the in-process copies'");
    Ok(())
}

/// Rank 0's timings, and the per-layer all-to-all time (both all-to-alls of a layer).
fn report(measured: &[(Exchange, Kind, Measured)], all_equal: bool) {
    for kind in [Kind::BFloat16, Kind::Float] {
        let mut layer_nccl = 0.0;
        let mut layer_copy = 0.0;
        for (exchange, _, m) in measured.iter().filter(|(_, k, _)| *k == kind) {
            let (nm, nmin, nmax) = summary(m.nccl_ms.clone());
            let (cm, cmin, cmax) = summary(m.copy_ms.clone());
            println!(
                "{kind:?} {:<28} {:>7.1} MiB sent/rank: NCCL {nm:.3} ms (min {nmin:.3}, max {nmax:.3}) | copies {cm:.3} ms (min {cmin:.3}, max {cmax:.3}) | bit-equal: {}",
                exchange.name(),
                m.bytes_sent as f64 / (1 << 20) as f64,
                m.equal
            );
            if !matches!(exchange, Exchange::GatherTokens) {
                layer_nccl += nm;
                layer_copy += cm;
            }
        }
        println!(
            "{kind:?} all-to-all time per layer (both all-to-alls, medians): NCCL {layer_nccl:.3} ms | copies {layer_copy:.3} ms"
        );
    }
    println!("every rank bit-equal: {all_equal}");
}
