//! LoRA fusion against diffusers 0.42.1 on the fixtures of `pipeline/parity/lora.py`: the tiny
//! random Wan transformer with a PEFT-format LoRA, an original-Wan/kohya LoRA with alphas and
//! `diff_b`, and full `diff` deltas; each fused at load and run on the same inputs as diffusers'
//! `load_lora_into_transformer` + `fuse_lora(lora_scale=strength)`.
//!
//! Tolerance as transformer_parity.rs (f32 on the CPU): |diff| ≤ 1e-5 + 1e-4·|ref|.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{assert_close, fixture, load_tensors};
use t2v_pipeline::lora::{fuse_loras, FuseSummary};
use t2v_pipeline::wan::WanTransformer3DModel;
use t2v_pipeline::{LoraError, LoraSpec};
use tch::{nn, Device, Kind, Tensor};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

fn dir() -> PathBuf {
    fixture("lora")
}

fn refs() -> HashMap<String, Tensor> {
    load_tensors(&dir().join("reference.safetensors"))
}

fn strength(refs: &HashMap<String, Tensor>, name: &str) -> f64 {
    refs[&format!("strengths.{name}")].double_value(&[0])
}

fn base(kind: Kind) -> (WanTransformer3DModel, nn::VarStore) {
    WanTransformer3DModel::load(&dir().join("model"), kind, Device::Cpu).unwrap()
}

fn forward(model: &WanTransformer3DModel, refs: &HashMap<String, Tensor>) -> Tensor {
    model
        .forward(
            &refs["inputs.hidden_states"],
            &refs["inputs.timestep"],
            &refs["inputs.encoder_hidden_states"],
        )
        .unwrap()
}

fn check(what: &str, actual: &Tensor, expected: &Tensor) {
    let diff = (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[]);
    eprintln!("{what}: max |diff| {diff:.2e}");
    assert_close(what, actual, expected, RTOL, ATOL);
}

/// Fuses the fixture files `names` (each at its reference strength) and compares with `key`.
fn fused_matches(names: &[&str], key: &str) -> FuseSummary {
    let refs = refs();
    let (model, vs) = base(Kind::Float);
    let specs: Vec<LoraSpec> = names
        .iter()
        .map(|n| LoraSpec::new(dir().join(format!("{n}.safetensors")), strength(&refs, n)))
        .collect();
    let summary = fuse_loras(&vs, &specs).unwrap_or_else(|e| panic!("{names:?}: {e}"));
    check(
        &format!("{names:?} fused"),
        &forward(&model, &refs),
        &refs[key],
    );
    summary
}

#[test]
fn base_model_matches_diffusers() {
    let refs = refs();
    let (model, _vs) = base(Kind::Float);
    check("base", &forward(&model, &refs), &refs["output_base"]);
}

#[test]
fn peft_format_lora_matches_diffusers_fuse_lora() {
    let summary = fused_matches(&["peft"], "output_peft");
    // 10 Linears in each of 2 blocks, proj_out, time_proj
    assert_eq!(summary.updates, 22);
}

/// diffusers' `lora_adapter_metadata` (lora_alpha 8 at rank 4, an alpha_pattern entry) sets the
/// scales, as `load_lora_into_transformer(metadata=…)`.
#[test]
fn peft_format_lora_with_adapter_metadata_matches_diffusers_fuse_lora() {
    fused_matches(&["peft_meta"], "output_peft_meta");
}

#[test]
fn kohya_format_lora_with_alpha_and_diff_b_matches_diffusers_fuse_lora() {
    let summary = fused_matches(&["kohya"], "output_kohya");
    // 20 block pairs, head.head, text_embedding.0, 4 diff_b
    assert_eq!(summary.updates, 26);
}

#[test]
fn full_diff_deltas_add_to_weights_norms_and_modulation() {
    fused_matches(&["diff"], "output_diff");
}

#[test]
fn stacked_loras_sum_in_f32() {
    fused_matches(&["peft", "kohya", "diff"], "output_stacked");
}

#[test]
fn strength_zero_leaves_weights_bit_identical() {
    let (_model, vs) = base(Kind::Float);
    let before: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    let specs: Vec<LoraSpec> = ["peft", "kohya", "diff"]
        .iter()
        .map(|n| LoraSpec::new(dir().join(format!("{n}.safetensors")), 0.0))
        .collect();
    let summary = fuse_loras(&vs, &specs).unwrap();
    assert_eq!(summary.tensors, 0);
    for (name, tensor) in vs.variables() {
        assert!(tensor.equal(&before[&name]), "{name} changed at strength 0");
    }
}

/// bf16 weights: the delta is added in f32 and rounded once; the result stays bf16 and is within
/// one bf16 rounding of the f32-fused weight.
#[test]
fn bf16_weights_fuse_in_f32_and_keep_their_dtype() {
    let refs = refs();
    let spec = [LoraSpec::new(
        dir().join("kohya.safetensors"),
        strength(&refs, "kohya"),
    )];
    let (_m32, vs32) = base(Kind::Float);
    let (_m16, vs16) = base(Kind::BFloat16);
    // the f32 model with the bf16 model's (rounded) base weights
    let bf16s = vs16.variables();
    tch::no_grad(|| {
        for (name, mut tensor) in vs32.variables() {
            tensor.copy_(&bf16s[&name]);
        }
    });
    fuse_loras(&vs32, &spec).unwrap();
    fuse_loras(&vs16, &spec).unwrap();
    let f32s = vs32.variables();
    for (name, tensor) in vs16.variables() {
        let expected = f32s[&name].to_kind(tensor.kind());
        assert!(
            tensor.equal(&expected),
            "{name}: not the f32 fuse rounded once"
        );
    }
}

fn write_lora(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> PathBuf {
    let path = dir.join(name);
    Tensor::write_safetensors(tensors, &path).unwrap();
    path
}

#[test]
fn unknown_key_is_an_error_naming_it_and_nothing_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_model, vs) = base(Kind::Float);
    let before = vs.variables()["blocks.0.attn1.to_q.weight"].copy();
    let good = Tensor::ones([4, 32], (Kind::Float, Device::Cpu));
    let up = Tensor::ones([32, 4], (Kind::Float, Device::Cpu));
    // a text-encoder key (kohya naming of another model family)
    let path = write_lora(
        tmp.path(),
        "te.safetensors",
        &[
            (
                "diffusion_model.blocks.0.self_attn.q.lora_down.weight",
                good.copy(),
            ),
            (
                "diffusion_model.blocks.0.self_attn.q.lora_up.weight",
                up.copy(),
            ),
            (
                "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                good.copy(),
            ),
        ],
    );
    let err = fuse_loras(&vs, &[LoraSpec::new(&path, 1.0)]).unwrap_err();
    assert!(matches!(err, LoraError::UnknownKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(vs.variables()["blocks.0.attn1.to_q.weight"].equal(&before));

    // a LoRA-shaped key for a module this model lacks (block 7 of a 2-block model)
    let path = write_lora(
        tmp.path(),
        "deep.safetensors",
        &[
            ("transformer.blocks.7.attn1.to_q.lora_A.weight", good.copy()),
            ("transformer.blocks.7.attn1.to_q.lora_B.weight", up.copy()),
        ],
    );
    let msg = fuse_loras(&vs, &[LoraSpec::new(&path, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("transformer.blocks.7.attn1.to_q.lora_A.weight"),
        "{msg}"
    );
    assert!(msg.contains("blocks.7.attn1.to_q.weight"), "{msg}");

    // half a pair
    let path = write_lora(
        tmp.path(),
        "half.safetensors",
        &[("transformer.blocks.0.attn1.to_q.lora_A.weight", good.copy())],
    );
    let err = fuse_loras(&vs, &[LoraSpec::new(&path, 1.0)]).unwrap_err();
    assert!(matches!(err, LoraError::Unpaired { .. }), "{err:?}");
    assert!(err.to_string().contains("lora_B"), "{err}");
}

#[test]
fn lora_for_another_base_is_refused_naming_key_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_model, vs) = base(Kind::Float);
    // to_q is [32, 32] here; this LoRA was made for a 48-wide model
    let path = write_lora(
        tmp.path(),
        "wide.safetensors",
        &[
            (
                "diffusion_model.blocks.1.self_attn.q.lora_down.weight",
                Tensor::ones([4, 48], (Kind::Float, Device::Cpu)),
            ),
            (
                "diffusion_model.blocks.1.self_attn.q.lora_up.weight",
                Tensor::ones([48, 4], (Kind::Float, Device::Cpu)),
            ),
            (
                "diffusion_model.blocks.1.self_attn.q.alpha",
                Tensor::from(4.0f32),
            ),
        ],
    );
    let err = fuse_loras(&vs, &[LoraSpec::new(&path, 1.0)]).unwrap_err();
    match &err {
        LoraError::ShapeMismatch {
            key,
            target,
            expected,
            found,
            ..
        } => {
            assert_eq!(key, "diffusion_model.blocks.1.self_attn.q.lora_down.weight");
            assert_eq!(target, "blocks.1.attn1.to_q.weight");
            assert_eq!(expected, &vec![32, 32]);
            assert_eq!(found, &vec![48, 48]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("[48, 48]") && msg.contains("[32, 32]"),
        "{msg}"
    );

    // a diff of the wrong shape
    let path = write_lora(
        tmp.path(),
        "diff.safetensors",
        &[(
            "diffusion_model.blocks.0.ffn.2.diff_b",
            Tensor::ones([48], (Kind::Float, Device::Cpu)),
        )],
    );
    let msg = fuse_loras(&vs, &[LoraSpec::new(&path, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("blocks.0.ffn.net.2.bias") && msg.contains("[48]"),
        "{msg}"
    );
}

#[test]
fn missing_file_and_bad_strength_are_errors() {
    let (_model, vs) = base(Kind::Float);
    let err = fuse_loras(&vs, &[LoraSpec::new("/nonexistent/x.safetensors", 1.0)]).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/x.safetensors"),
        "{err}"
    );
    let err = fuse_loras(
        &vs,
        &[LoraSpec::new(dir().join("peft.safetensors"), f64::NAN)],
    )
    .unwrap_err();
    assert!(matches!(err, LoraError::BadStrength { .. }), "{err:?}");
}

/// `WanT2V::load_with_loras`: a LoRA for another base is refused at load; one for
/// `transformer_2` of a single-expert model is refused; strength 0 on each expert loads.
#[test]
fn pipeline_load_with_loras_checks_each_expert() {
    use t2v_pipeline::{ExpertLoras, LoadOptions, WanT2V};
    let options = LoadOptions::new(Device::Cpu, Kind::Float);
    let pipelines = fixture("wan_pipeline");
    let peft = dir().join("peft.safetensors");

    let loras = ExpertLoras {
        transformer: vec![],
        transformer_2: vec![LoraSpec::new(&peft, 1.0)],
    };
    let Err(err) = WanT2V::load_with_loras(pipelines.join("single_expert"), options, &loras) else {
        panic!("a transformer_2 LoRA on a single-expert model loaded");
    };
    assert!(err.to_string().contains("transformer_2"), "{err}");

    // the kohya fixture changes text_embedding.0, [32, 24] here; the pipeline fixtures have
    // text_dim 32
    let kohya = dir().join("kohya.safetensors");
    let loras = ExpertLoras {
        transformer: vec![LoraSpec::new(&kohya, 1.0)],
        transformer_2: vec![],
    };
    let Err(err) = WanT2V::load_with_loras(pipelines.join("two_experts"), options, &loras) else {
        panic!("a LoRA for another base loaded");
    };
    let msg = err.to_string();
    assert!(
        msg.contains("another base model") && msg.contains("text_embedder"),
        "{msg}"
    );

    // the PEFT fixture's block LoRAs (proj_out differs: 4 channels there, 16 here) fit: they
    // fuse into each expert
    let tmp = tempfile::tempdir().unwrap();
    let blocks: Vec<(String, Tensor)> = load_tensors(&peft)
        .into_iter()
        .filter(|(k, _)| k.contains(".blocks."))
        .collect();
    let blocks_only = tmp.path().join("blocks.safetensors");
    Tensor::write_safetensors(&blocks, &blocks_only).unwrap();
    let loras = ExpertLoras {
        transformer: vec![LoraSpec::new(&blocks_only, 0.5)],
        transformer_2: vec![LoraSpec::new(&blocks_only, 1.0)],
    };
    WanT2V::load_with_loras(pipelines.join("two_experts"), options, &loras)
        .unwrap_or_else(|e| panic!("{e}"));
}
