//! FP8 block linears (`t2v_pipeline::wan::fp8`) against the fixtures of `pipeline/parity/fp8.py`
//! (torch 2.11's `float8_e4m3fn` conversion, checked there against a by-hand e4m3 rounding).
//!
//! libtorch 2.11 has no row-wise `_scaled_mm` on the CPU, so these tests run the CPU path: the
//! same product from the dequantised operands. The CUDA path (`_scaled_mm`) is exercised by
//! `pipeline/examples/bench_fast.rs` on a GPU (`make bench-fast`).
//!
//! - the scales and the e4m3 values (bits included) are torch's, exactly;
//! - the quantised layer equals the reference's quantised product, and lies within e4m3's
//!   error of the exact one;
//! - a whole tiny DiT quantised at load matches diffusers with the same block linears
//!   fake-quantised, keeps every other weight as it was, and holds no bf16/f32 copy of a
//!   quantised weight;
//! - a LoRA fused before quantising still applies.

mod common;

use std::collections::HashMap;

use common::{assert_close, fixture, load_tensors};
use t2v_pipeline::lora::fuse_loras;
use t2v_pipeline::wan::fp8::{self, dequantize_rows, quantize_rows, FP8};
use t2v_pipeline::wan::WanTransformer3DModel;
use t2v_pipeline::LoraSpec;
use tch::{nn, Device, Kind, Tensor};

fn rows() -> HashMap<String, Tensor> {
    load_tensors(&fixture("fp8").join("rows.safetensors"))
}

fn get<'a>(refs: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    refs.get(key)
        .unwrap_or_else(|| panic!("fp8 fixture has no {key} — run `make fixtures`"))
}

/// `‖a − b‖ / ‖b‖` in f64.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

#[test]
fn scales_and_e4m3_values_are_torchs() {
    let refs = rows();
    for name in ["x", "w"] {
        let (q, scale) = quantize_rows(get(&refs, name)).unwrap();
        assert_eq!(q.kind(), FP8, "{name}: stored as float8 e4m3");
        let expected_scale = get(&refs, &format!("s_{name}"));
        assert!(
            scale.equal(expected_scale),
            "{name}: scales differ from the reference"
        );
        let bits = q.view_dtype(Kind::Uint8);
        assert!(
            bits.equal(get(&refs, &format!("q_{name}_bits"))),
            "{name}: e4m3 bytes differ from torch's conversion"
        );
        let values = q.to_kind(Kind::Float);
        assert!(values.equal(get(&refs, &format!("q_{name}"))));
        // Every row's largest value lands in e4m3's top binade, [224, 448], unless the row is
        // all zeros; every scale is a power of two.
        let amax = values.abs().amax([-1i64].as_slice(), false);
        let zero_rows = get(&refs, name)
            .abs()
            .amax([-1i64].as_slice(), false)
            .eq(0.0);
        let top_binade = amax
            .ge(fp8::E4M3_MAX / 2.0)
            .logical_and(&amax.le(fp8::E4M3_MAX));
        assert!(
            top_binade.logical_or(&zero_rows).all().int64_value(&[]) == 1,
            "{name}: row amax {amax}"
        );
        let exponent = scale.log2();
        assert!(exponent.equal(&exponent.round()), "{name}: scales {scale}");
    }
}

#[test]
fn quantised_layer_is_the_reference_product_within_e4m3_error() {
    let refs = rows();
    let (q_w, s_w) = quantize_rows(get(&refs, "w")).unwrap();
    let y = fp8::linear(get(&refs, "x"), &q_w, &s_w, get(&refs, "b")).unwrap();
    assert_eq!(y.kind(), Kind::Float);
    assert_close("fp8 linear", &y, get(&refs, "y_fp8"), 1e-5, 1e-5);
    // e4m3 keeps 3 mantissa bits: each operand is off by at most 2⁻⁴ of itself, about 2.5 %
    // RMS; the product of two such operands, summed over 64 terms, stays well under 6 %.
    let error = relative_error(&y, get(&refs, "y_exact"));
    assert!(error > 0.005 && error < 0.06, "relative error {error}");
    // Batched input [2, 4, 64] gives the rows of the 2-D product.
    let x3 = get(&refs, "x").reshape([2, 4, 64]);
    let y3 = fp8::linear(&x3, &q_w, &s_w, get(&refs, "b")).unwrap();
    assert!(y3.reshape([8, 48]).allclose(&y, 0.0, 0.0, false));
    // Dequantising gives the values the product used.
    let deq = dequantize_rows(&q_w, &s_w).unwrap();
    assert!(relative_error(&deq, get(&refs, "w")) < 0.04);
}

/// The tiny DiT of the fixture `dir` in f32 on the CPU, with its VarStore.
fn tiny(dir: &std::path::Path) -> (WanTransformer3DModel, nn::VarStore) {
    WanTransformer3DModel::load(&dir.join("model"), Kind::Float, Device::Cpu).unwrap()
}

fn forward(model: &WanTransformer3DModel, refs: &HashMap<String, Tensor>) -> Tensor {
    model
        .forward(
            get(refs, "inputs.hidden_states"),
            get(refs, "inputs.timestep"),
            get(refs, "inputs.encoder_hidden_states"),
        )
        .unwrap()
}

#[test]
fn quantised_dit_matches_diffusers_with_fake_quantised_block_linears() {
    let dir = fixture("fp8");
    let refs = load_tensors(&dir.join("reference.safetensors"));
    let (model, vs) = tiny(&dir);
    let before: HashMap<String, (Kind, Vec<i64>)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, (t.kind(), t.size())))
        .collect();
    let dense = forward(&model, &refs);
    assert_close("dense", &dense, get(&refs, "output"), 1e-4, 1e-5);

    let model = fp8::quantize_blocks(model, &vs).unwrap();
    let after = vs.variables();
    let mut quantised = 0;
    for (name, (kind, size)) in &before {
        let now = &after[name];
        assert_eq!(&now.size(), size, "{name}: shape");
        if fp8::is_block_linear_weight(name, now) {
            quantised += 1;
            assert_eq!(now.kind(), FP8, "{name}: in memory as float8 e4m3");
            let scale = &after[&name.replace(".weight", ".weight_scale")];
            assert_eq!(
                (scale.kind(), scale.size()),
                (Kind::Float, vec![size[0], 1])
            );
        } else {
            assert_eq!(
                now.kind(),
                *kind,
                "{name}: not a block linear, left as it was"
            );
        }
    }
    // 2 blocks × (4 + 4 attention projections + 2 FFN); each gains a scale, loses nothing else.
    assert_eq!(quantised, 20);
    assert_eq!(after.len(), before.len() + quantised);
    assert!(
        after.keys().all(|n| !n.contains("__")),
        "no duplicated variables"
    );

    let out = forward(&model, &refs);
    let reference = get(&refs, "output_fp8");
    // Same math as the reference; a token whose quantised value sits on a rounding boundary
    // may round the other way after f32 differences of 1e-6, moving the output by ~1e-3.
    assert_close("fp8 forward", &out, reference, 1e-2, 5e-3);
    let ours = relative_error(&out, reference);
    let quantisation = relative_error(reference, get(&refs, "output"));
    assert!(
        ours < quantisation / 10.0,
        "closer to the FP8 reference ({ours:.2e}) than FP8 is to f32 ({quantisation:.2e})"
    );
}

#[test]
fn a_lora_fused_before_quantising_still_applies() {
    let dir = fixture("lora");
    let refs = load_tensors(&dir.join("reference.safetensors"));
    let (model, vs) = tiny(&dir);
    let strength = get(&refs, "strengths.peft").double_value(&[]);
    fuse_loras(
        &vs,
        &[LoraSpec::new(dir.join("peft.safetensors"), strength)],
    )
    .unwrap();
    let model = fp8::quantize_blocks(model, &vs).unwrap();
    let out = forward(&model, &refs);
    let with_lora = relative_error(&out, get(&refs, "output_peft"));
    let without = relative_error(&out, get(&refs, "output_base"));
    assert!(
        with_lora < 0.08,
        "FP8 + LoRA vs diffusers' fused LoRA: {with_lora}"
    );
    assert!(
        with_lora < without / 3.0,
        "the LoRA applies: {with_lora} vs {without} without it"
    );
}

#[test]
fn fp8_needs_a_gpu_with_fp8_matmuls() {
    // The CPU has no row-wise `_scaled_mm`: the load-time probe refuses it with torch's reason.
    let error = fp8::probe_scaled_mm(Device::Cpu).unwrap_err().to_string();
    assert!(error.contains("per-tensor"), "{error}");
}
