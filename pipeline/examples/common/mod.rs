//! What the benchmark and GPU-check examples share: the command line, the random-weight
//! A14B expert, and the GPU memory `nvidia-smi` reports. Each example includes it with
//! `mod common;` and uses part of it.
#![allow(dead_code)]

use t2v_pipeline::loader::random_weights;
use t2v_pipeline::wan::{TransformerConfig, WanTransformer3DModel};
use tch::{nn, Device, Kind};

/// The command line as `(--flag, value)` pairs: every option of these examples takes a value.
pub fn flags() -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}

/// `--sizes 480x832,720x1280`: (height, width) pairs in pixels.
pub fn parse_sizes(value: &str) -> anyhow::Result<Vec<(i64, i64)>> {
    value
        .split(',')
        .map(|s| {
            let (h, w) = s
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("size {s}: expected HEIGHTxWIDTH"))?;
            Ok((h.parse()?, w.parse()?))
        })
        .collect()
}

/// One Wan2.2 T2V-A14B expert ([`TransformerConfig::wan22_t2v_a14b`], `num_layers` blocks
/// when given) built on `device` in bf16 (fp32 islands as in diffusers), with the benchmarks'
/// [`random_weights`] drawn from seed 0.
pub fn random_a14b_expert(
    num_layers: Option<i64>,
    device: Device,
) -> anyhow::Result<(TransformerConfig, WanTransformer3DModel)> {
    let mut cfg = TransformerConfig::wan22_t2v_a14b();
    if let Some(layers) = num_layers {
        cfg.num_layers = layers;
    }
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(Kind::BFloat16);
    let model = WanTransformer3DModel::new(&cfg, vs.root())?;
    tch::manual_seed(0);
    random_weights(&vs)?;
    Ok((cfg, model))
}

/// MiB of GPU memory `nvidia-smi` attributes to this process, if it can tell.
pub fn process_gpu_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let (p, mib) = line.split_once(',')?;
            (p.trim() == pid).then(|| mib.trim().parse().ok())?
        })
}
