//! `WanTransformer3DModel` against diffusers 0.42.1 on the fixtures of
//! `pipeline/parity/transformer.py` (tiny random-weight models; see that script for the cases).
//!
//! Each part of the forward is compared on diffusers' own inputs to that part (captured with
//! forward hooks), so a broken piece fails a test that names it: RoPE tables, patch embedding,
//! condition embedder, self-attention with RoPE, cross-attention, feed-forward, one whole block
//! (modulation: shift/scale/gate), then the full forward for every case.
//!
//! Tolerances (f32 on the CPU, same kernels as PyTorch): |diff| ≤ 1e-5 + 1e-4·|ref|.
//! bf16 (diffusers' mixed precision, fp32 islands included): |diff| ≤ 1e-2 + 8e-3·|ref|, about
//! one bf16 ulp.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use common::{assert_close, fixture, load_tensors};
use t2v_pipeline::wan::{TransformerConfig, WanTransformer3DModel};
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;

/// One bf16 ulp (2⁻⁷ relative) plus a small floor: same kernels give the same bits, and a
/// bf16 rounding where diffusers keeps f32 moves outputs by several ulps.
const BF16_RTOL: f64 = 8e-3;
const BF16_ATOL: f64 = 1e-2;

const CASES: [&str; 5] = ["tiny", "odd_shapes", "rope36", "sharded", "expand"];

struct Case {
    name: &'static str,
    dir: PathBuf,
    model: WanTransformer3DModel,
    refs: HashMap<String, Tensor>,
}

/// Prints the largest absolute difference (visible with `--nocapture`).
fn report(what: &str, actual: &Tensor, expected: &Tensor) {
    if actual.size() == expected.size() {
        let diff = (actual.to_kind(Kind::Double) - expected.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        eprintln!("{what}: max |diff| {diff:.2e}");
    }
}

impl Case {
    fn load(name: &'static str) -> Self {
        Self::load_as(name, Kind::Float)
    }

    fn load_as(name: &'static str, kind: Kind) -> Self {
        let dir = fixture("transformer").join(name);
        let (model, _vs) = WanTransformer3DModel::load(&dir.join("model"), kind, Device::Cpu)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let refs = load_tensors(&dir.join("reference.safetensors"));
        Self {
            name,
            dir,
            model,
            refs,
        }
    }

    fn get(&self, key: &str) -> &Tensor {
        self.refs
            .get(key)
            .unwrap_or_else(|| panic!("{}: reference has no {key}", self.name))
    }

    fn check(&self, what: &str, actual: &Tensor, key: &str) {
        let what = format!("{} {what}", self.name);
        report(&what, actual, self.get(key));
        assert_close(&what, actual, self.get(key), RTOL, ATOL);
    }

    /// diffusers' `timestep_proj` ([B, 6·dim] or [B, S, 6·dim]) as the block takes it.
    fn timestep_proj(&self) -> Tensor {
        let proj = self.get("cond.timestep_proj");
        let dim = self.model.config().inner_dim();
        if proj.dim() == 3 {
            proj.unflatten(2, [6, dim])
        } else {
            proj.unflatten(1, [6, dim]).unsqueeze(1)
        }
    }

    fn forward(&self) -> Tensor {
        self.model
            .forward(
                self.get("inputs.hidden_states"),
                self.get("inputs.timestep"),
                self.get("inputs.encoder_hidden_states"),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    fn rope(&self) -> (Tensor, Tensor) {
        let shape = self.get("inputs.hidden_states").size();
        self.model
            .rope()
            .forward(shape[2], shape[3], shape[4])
            .unwrap()
    }
}

#[test]
fn rope_tables_match_diffusers() {
    for name in ["tiny", "odd_shapes", "rope36"] {
        let case = Case::load(name);
        let (cos, sin) = case.rope();
        case.check("rope cos", &cos, "rope.cos");
        case.check("rope sin", &sin, "rope.sin");
    }
}

#[test]
fn patch_embedding_matches_diffusers() {
    for name in ["tiny", "rope36"] {
        let case = Case::load(name);
        let out = case
            .model
            .patch_embedding(case.get("inputs.hidden_states"))
            .unwrap();
        case.check("patch_embedding", &out, "patch_embedding.out");
    }
}

#[test]
fn condition_embedder_matches_diffusers() {
    for name in ["tiny", "expand"] {
        let case = Case::load(name);
        let (temb, proj, text) = case
            .model
            .condition_embedder()
            .forward(
                case.get("inputs.timestep"),
                case.get("inputs.encoder_hidden_states"),
            )
            .unwrap();
        case.check("temb", &temb, "cond.temb");
        case.check("timestep_proj", &proj, "cond.timestep_proj");
        case.check("text embedding", &text, "cond.text");
    }
}

#[test]
fn self_attention_with_rope_matches_diffusers() {
    for name in ["tiny", "odd_shapes", "rope36"] {
        let case = Case::load(name);
        let (cos, sin) = case.rope();
        let out = case.model.blocks()[0]
            .attn1()
            .forward(case.get("block0.attn1.in"), None, Some((&cos, &sin)))
            .unwrap();
        case.check("attn1", &out, "block0.attn1.out");
    }
}

#[test]
fn cross_attention_matches_diffusers() {
    for name in ["tiny", "odd_shapes"] {
        let case = Case::load(name);
        let out = case.model.blocks()[0]
            .attn2()
            .forward(
                case.get("block0.attn2.in"),
                Some(case.get("block0.attn2.ctx")),
                None,
            )
            .unwrap();
        case.check("attn2", &out, "block0.attn2.out");
    }
}

#[test]
fn feed_forward_matches_diffusers() {
    let case = Case::load("tiny");
    let out = case.model.blocks()[0]
        .ffn(case.get("block0.ffn.in"))
        .unwrap();
    case.check("ffn", &out, "block0.ffn.out");
}

/// One block on diffusers' inputs: catches modulation errors (shift/scale order, gates,
/// norm2), which the parts above do not see.
#[test]
fn block_modulation_matches_diffusers() {
    for name in ["tiny", "odd_shapes", "expand"] {
        let case = Case::load(name);
        let (cos, sin) = case.rope();
        let out = case.model.blocks()[0]
            .forward(
                case.get("block0.in"),
                case.get("cond.text"),
                &case.timestep_proj(),
                (&cos, &sin),
            )
            .unwrap();
        case.check("block 0", &out, "block0.out");
    }
}

#[test]
fn forward_tiny_batch_of_two_timesteps_matches_diffusers() {
    let case = Case::load("tiny");
    case.check("forward", &case.forward(), "output");
}

#[test]
fn forward_odd_frames_non_square_head_dim_20_without_norm2_matches_diffusers() {
    let case = Case::load("odd_shapes");
    case.check("forward", &case.forward(), "output");
}

#[test]
fn forward_head_dim_36_patch_222_five_to_three_channels_matches_diffusers() {
    let case = Case::load("rope36");
    case.check("forward", &case.forward(), "output");
}

#[test]
fn forward_sharded_checkpoint_matches_diffusers() {
    let case = Case::load("sharded");
    let shards = std::fs::read_dir(case.dir.join("model"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .count();
    assert!(shards > 1, "the sharded fixture has {shards} shard(s)");
    case.check("forward", &case.forward(), "output");
}

#[test]
fn forward_expand_timesteps_one_per_token_matches_diffusers() {
    let case = Case::load("expand");
    assert_eq!(case.get("inputs.timestep").dim(), 2);
    case.check("forward", &case.forward(), "output");
}

/// bf16 weights with diffusers' fp32 modules (time_embedder, scale_shift_table, norm2) on bf16
/// inputs, against `from_pretrained(torch_dtype=torch.bfloat16)`.
#[test]
fn forward_bf16_mixed_precision_matches_diffusers() {
    let case = Case::load_as("tiny", Kind::BFloat16);
    let out = case.forward();
    assert_eq!(out.kind(), Kind::BFloat16);
    report("tiny bf16 forward", &out, case.get("output_bf16"));
    assert_close(
        "tiny bf16 forward",
        &out,
        case.get("output_bf16"),
        BF16_RTOL,
        BF16_ATOL,
    );
}

#[test]
fn fp32_modules_stay_f32_in_a_bf16_model() {
    let dir = fixture("transformer").join("tiny").join("model");
    let (_model, vs) = WanTransformer3DModel::load(&dir, Kind::BFloat16, Device::Cpu).unwrap();
    for (name, tensor) in vs.variables() {
        let fp32 = name.split('.').any(|part| {
            [
                "time_embedder",
                "scale_shift_table",
                "norm1",
                "norm2",
                "norm3",
            ]
            .contains(&part)
        });
        let expected = if fp32 { Kind::Float } else { Kind::BFloat16 };
        assert_eq!(tensor.kind(), expected, "{name}");
    }
}

/// Every checkpoint key is a variable and every variable a checkpoint key; the count equals
/// `TransformerConfig::num_parameters` (which the presets' counts rely on).
#[test]
fn module_tree_equals_checkpoint_keys() {
    for name in CASES {
        let model_dir = fixture("transformer").join(name).join("model");
        let cfg = TransformerConfig::from_file(&model_dir.join("config.json")).unwrap();
        let (_model, vs) =
            WanTransformer3DModel::load(&model_dir, Kind::Float, Device::Cpu).unwrap();
        let variables = vs.variables();
        let ours: BTreeSet<String> = variables.keys().cloned().collect();
        let mut theirs = BTreeSet::new();
        for file in t2v_pipeline::loader::weight_files(&model_dir).unwrap() {
            theirs.extend(load_tensors(&file).into_keys());
        }
        assert_eq!(
            ours, theirs,
            "{name}: variables differ from checkpoint keys"
        );
        let numel: i64 = variables.values().map(|t| t.numel() as i64).sum();
        assert_eq!(numel, cfg.num_parameters(), "{name}: parameter count");
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let case = Case::load("tiny");
    let x = case.get("inputs.hidden_states");
    let t = case.get("inputs.timestep");
    let text = case.get("inputs.encoder_hidden_states");
    let expect_invalid = |result: t2v_pipeline::Result<Tensor>, needle: &str| match result {
        Err(PipelineError::InvalidInput { field, message }) => {
            assert!(
                format!("{field}: {message}").contains(needle),
                "{field}: {message} should mention {needle}"
            )
        }
        other => panic!("expected InvalidInput about {needle}, got {other:?}"),
    };
    expect_invalid(
        case.model.forward(&x.narrow(1, 0, 3), t, text),
        "3 channels",
    );
    expect_invalid(case.model.forward(&x.narrow(3, 0, 7), t, text), "height 7");
    expect_invalid(case.model.forward(x, &t.narrow(0, 0, 1), text), "timestep");
    expect_invalid(
        case.model.forward(x, t, &text.narrow(2, 0, 5)),
        "encoder_hidden_states",
    );
    expect_invalid(
        case.model.forward(&x.select(0, 0), t, text),
        "hidden_states",
    );
}
