//! GPU check of `WanTransformer3DModel` (not a test: CI has no GPU): every tiny parity fixture of
//! `pipeline/parity/transformer.py` (`tiny`, `odd_shapes`, `rope36`, `sharded`, `expand`) is
//! loaded on CUDA in bf16 (diffusers' fp32 modules kept in f32) and in f32, run on the fixture's
//! inputs, and compared with the f32 CPU output diffusers wrote (`output`). The bf16 run is also
//! compared with our own bf16 run on the CPU (same code and dtype: what the device changes) and,
//! for the `tiny` case, with diffusers' bf16 CPU run (`output_bf16`).
//!
//! Printed per case and dtype: max |diff|, max |ref|, and the relative error ‖out − ref‖ / ‖ref‖.
//! Pass bounds on that relative error: bf16 ≤ 1e-2 (bf16 operands land between 1e-3 and 1e-2),
//! f32 ≤ 1e-3 (cuDNN may run the f32 patch-embedding convolution in TF32, as PyTorch allows by
//! default). Exits non-zero if any case is out of bounds.
//!
//! ```text
//! python pipeline/parity/transformer.py --out build/fixtures
//! source scripts/env.sh && cargo run --release -p t2v-pipeline --example gpu_parity -- \
//!     --fixtures build/fixtures [--device cuda|cpu]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use t2v_pipeline::wan::WanTransformer3DModel;
use tch::{Cuda, Device, Kind, Tensor};

mod common;

const CASES: [&str; 5] = ["tiny", "odd_shapes", "rope36", "sharded", "expand"];
const BF16_MAX_REL: f64 = 1e-2;
const F32_MAX_REL: f64 = 1e-3;

struct Args {
    fixtures: PathBuf,
    device: Device,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        fixtures: std::env::var_os("T2V_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("build/fixtures")),
        device: Device::Cuda(0),
    };
    for (flag, value) in common::flags()? {
        match flag.as_str() {
            "--fixtures" => args.fixtures = PathBuf::from(value),
            "--device" => {
                args.device = match value.as_str() {
                    "cuda" => Device::Cuda(0),
                    "cpu" => Device::Cpu,
                    other => anyhow::bail!("--device {other}: expected cuda or cpu"),
                }
            }
            other => anyhow::bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

/// (max |a − b|, max |b|, ‖a − b‖ / ‖b‖), computed in f64 on the CPU.
fn compare(actual: &Tensor, expected: &Tensor) -> anyhow::Result<(f64, f64, f64)> {
    anyhow::ensure!(
        actual.size() == expected.size(),
        "shape {:?} != reference {:?}",
        actual.size(),
        expected.size()
    );
    let a = actual.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    let e = expected.f_to_kind(Kind::Double)?;
    let diff = a.f_sub(&e)?;
    let max_abs = diff.f_abs()?.f_max()?.f_double_value(&[])?;
    let ref_max = e.f_abs()?.f_max()?.f_double_value(&[])?;
    let rel = diff.f_norm()?.f_double_value(&[])? / e.f_norm()?.f_double_value(&[])?;
    Ok((max_abs, ref_max, rel))
}

/// Loads `dir/model` in `kind` on `device` and runs it on the fixture's inputs; output on the CPU.
fn run_case(
    dir: &Path,
    refs: &HashMap<String, Tensor>,
    kind: Kind,
    device: Device,
) -> anyhow::Result<Tensor> {
    let input = |key: &str| {
        refs.get(key)
            .ok_or_else(|| anyhow::anyhow!("{}: reference has no {key}", dir.display()))
    };
    let (model, _vs) = WanTransformer3DModel::load(&dir.join("model"), kind, device)?;
    let _guard = tch::no_grad_guard();
    let out = model.forward(
        input("inputs.hidden_states")?,
        input("inputs.timestep")?,
        input("inputs.encoder_hidden_states")?,
    )?;
    anyhow::ensure!(out.kind() == kind, "output dtype {:?}", out.kind());
    Ok(out.f_to_device(Device::Cpu)?)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Device::Cuda(_) = args.device {
        anyhow::ensure!(Cuda::is_available(), "no CUDA device visible to libtorch");
    }
    let root = args.fixtures.join("transformer");
    let mut failures = Vec::new();
    println!(
        "{:<11} {:<5} {:<18} {:>11} {:>11} {:>11} {:>9}",
        "case", "dtype", "against", "max|diff|", "max|ref|", "rel L2", "bound"
    );
    for case in CASES {
        let dir = root.join(case);
        let refs: HashMap<String, Tensor> =
            Tensor::read_safetensors(dir.join("reference.safetensors"))
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?
                .into_iter()
                .collect();
        for (kind, name, bound) in [
            (Kind::BFloat16, "bf16", BF16_MAX_REL),
            (Kind::Float, "f32", F32_MAX_REL),
        ] {
            let out = run_case(&dir, &refs, kind, args.device)?;
            let ours_cpu = if kind == Kind::BFloat16 && args.device != Device::Cpu {
                Some(run_case(&dir, &refs, kind, Device::Cpu)?)
            } else {
                None
            };
            let mut against = vec![("f32 CPU", &refs["output"])];
            if let Some(reference) = &ours_cpu {
                against.push(("ours bf16 CPU", reference));
            }
            if kind == Kind::BFloat16 {
                if let Some(reference) = refs.get("output_bf16") {
                    against.push(("diffusers bf16 CPU", reference));
                }
            }
            for (label, reference) in against {
                let (max_abs, ref_max, rel) = compare(&out, reference)?;
                let ok = rel <= bound && rel.is_finite();
                println!(
                    "{case:<11} {name:<5} {label:<18} {max_abs:>11.3e} {ref_max:>11.3e} {rel:>11.3e} {bound:>9.0e} {}",
                    if ok { "ok" } else { "FAIL" }
                );
                if !ok {
                    failures.push(format!("{case} {name} vs {label}"));
                }
            }
        }
    }
    anyhow::ensure!(failures.is_empty(), "out of bounds: {failures:?}");
    println!("all cases within bounds on {:?}", args.device);
    Ok(())
}
