//! The Wan VAE alone on the GPU, full size with random weights (bf16): one decode or encode at
//! a given size, its time, and the memory estimate's figure for it (`memory::vae_decode_bytes` /
//! `vae_encode_bytes` plus the weights), to check the estimate against the allocator's peak.
//! tch 0.24 does not expose `torch.cuda.max_memory_allocated`; run one case per process under
//! the shim of `pipeline/bench/cuda_peak_memory.py`, which prints that peak at exit
//! (`make bench-vae` does).
//!
//! ```text
//! bench_vae --vae 2.2 --op decode --size 704x1280 --frames 121 --tiling default
//! bench_vae --vae 2.1 --op encode --size 720x1280 --frames 81 --tiling none
//! ```

use std::time::Instant;

use t2v_pipeline::loader::random_weights;
use t2v_pipeline::memory::{
    vae_decode_bytes, vae_encode_bytes, vae_parameters, EstimateRequest, ImageEncode, MemoryPolicy,
};
use t2v_pipeline::wan::vae::{AutoencoderKLWan, Tiling, VaeConfig};
use tch::{nn, Cuda, Device, Kind, Tensor};

mod common;

struct Args {
    cfg: VaeConfig,
    encode: bool,
    height: i64,
    width: i64,
    frames: i64,
    tiling: Option<Tiling>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        cfg: VaeConfig::wan2_2(),
        encode: false,
        height: 704,
        width: 1280,
        frames: 121,
        tiling: Some(Tiling::default()),
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--vae" => {
                args.cfg = match value.as_str() {
                    "2.1" => VaeConfig::default(),
                    "2.2" => VaeConfig::wan2_2(),
                    other => anyhow::bail!("--vae {other}: expected 2.1 or 2.2"),
                }
            }
            "--op" => args.encode = value == "encode",
            "--frames" => args.frames = value.parse()?,
            "--size" => {
                let sizes = common::parse_sizes(&value)?;
                anyhow::ensure!(sizes.len() == 1, "--size takes one HEIGHTxWIDTH");
                (args.height, args.width) = sizes[0];
            }
            "--tiling" => args.tiling = (value != "none").then(Tiling::default),
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    anyhow::ensure!(Cuda::is_available(), "bench_vae needs a CUDA device");
    let device = Device::Cuda(0);
    let kind = Kind::BFloat16;
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    tch::manual_seed(0);
    let mut vae = AutoencoderKLWan::new(&args.cfg, vs.root())?;
    random_weights(&vs)?;
    if let Some(tiling) = args.tiling {
        vae.enable_tiling(tiling)?;
    }
    let cfg = vae.config().clone();
    let (s, r) = (cfg.spatial_scale(), cfg.temporal_scale());
    let input = if args.encode {
        let shape = [1, 3, args.frames, args.height, args.width];
        Tensor::rand(shape, (kind, device)) * 2.0 - 1.0
    } else {
        let t = (args.frames - 1) / r + 1;
        let shape = [1, cfg.z_dim, t, args.height / s, args.width / s];
        Tensor::randn(shape, (kind, device))
    };
    Cuda::synchronize(0);
    let start = Instant::now();
    let output = if args.encode {
        vae.encode(&input)?
    } else {
        vae.decode(&input)?
    };
    Cuda::synchronize(0);
    let seconds = start.elapsed().as_secs_f64();

    let request = EstimateRequest {
        width: args.width,
        height: args.height,
        num_frames: args.frames,
        dtype: kind,
        vae_dtype: kind,
        text_len: 512,
        policy: MemoryPolicy {
            vae_tiling: args.tiling,
            ..MemoryPolicy::all_resident()
        },
        image: ImageEncode::None,
    };
    let activations = if args.encode {
        vae_encode_bytes(&cfg, &request, args.frames, args.tiling)
    } else {
        vae_decode_bytes(&cfg, &request, args.tiling)
    };
    let weights = vae_parameters(&cfg) as u64 * 2;
    let mib = |bytes: u64| bytes / (1 << 20);
    println!(
        "{} {} {}x{}x{} tiling {:?}: {seconds:.2} s, output {:?}; estimate {} MiB (weights {} + activations {}); the shim's max_allocated follows at exit",
        if cfg.is_residual { "Wan2.2 VAE" } else { "Wan2.1 VAE" },
        if args.encode { "encode" } else { "decode" },
        args.height,
        args.width,
        args.frames,
        args.tiling.map(|t| (t.min_height, t.stride_height)),
        output.size(),
        mib(weights + activations),
        mib(weights),
        mib(activations),
    );
    Ok(())
}
