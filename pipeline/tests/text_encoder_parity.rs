//! Parity of the umT5 text encoder and WanPipeline's prompt path with transformers 5.24 /
//! diffusers 0.42.1 (with ftfy 6.3.1, which `prompt_clean` runs first), on the fixtures of
//! `pipeline/parity/text_encoder.py`.
//!
//! Tolerances: f32 hidden states and embeddings rtol 1e-4 / atol 1e-5; bf16 / fp16 at most one
//! unit in the last place of the output dtype (the same libtorch CPU kernels run both sides);
//! token ids, masks, cleaned text and the zero padding exactly.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use t2v_pipeline::wan::prompt::{self, html, T5Tokenizer, TextEncoder};
use t2v_pipeline::wan::text_encoder::UMT5EncoderModel;
use t2v_pipeline::PipelineError;
use tch::{Device, Kind, Tensor};

const RTOL: f64 = 1e-4;
const ATOL: f64 = 1e-5;
const SEQ_LENS: [usize; 2] = [16, 512];

struct Fixture {
    root: PathBuf,
    cases: Value,
    tensors: HashMap<String, Tensor>,
}

fn fixture() -> Fixture {
    let root = common::fixture("text_encoder");
    let cases =
        serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    let tensors = common::load_tensors(&root.join("embeds.safetensors"));
    Fixture {
        root,
        cases,
        tensors,
    }
}

impl Fixture {
    fn strings(&self, key: &str) -> Vec<String> {
        self.cases[key]
            .as_array()
            .unwrap_or_else(|| panic!("cases.json has no `{key}`"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    }

    fn tensor(&self, key: &str) -> &Tensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("embeds.safetensors has no `{key}`"))
    }

    fn encoder(&self, kind: Kind, seq_len: usize) -> TextEncoder {
        TextEncoder::load(&self.root, kind, Device::Cpu)
            .expect("load tokenizer/ and text_encoder/")
            .with_max_sequence_length(seq_len)
    }
}

fn ids(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn prompt_clean_matches_diffusers() {
    let f = fixture();
    for (raw, expected) in f.strings("prompts").iter().zip(f.strings("cleaned")) {
        assert_eq!(prompt::prompt_clean(raw), expected, "prompt_clean({raw:?})");
    }
    for case in f.cases["clean_cases"].as_array().unwrap() {
        let (raw, expected) = (case[0].as_str().unwrap(), case[1].as_str().unwrap());
        assert_eq!(prompt::prompt_clean(raw), expected, "prompt_clean({raw:?})");
    }
}

#[test]
fn prompts_are_cleaned_with_ftfy_like_diffusers() {
    let f = fixture();
    let prompts = f.strings("prompts");
    let at = prompts
        .iter()
        .position(|p| p.starts_with("it’s “quiet”"))
        .expect("the fixture's prompts include one that ftfy changes");
    let cleaned = &f.strings("cleaned")[at];
    assert_eq!(&prompt::prompt_clean(&prompts[at]), cleaned);
    assert!(
        cleaned.starts_with("it's \"quiet\" — fine ABC café, Café \"au lait\""),
        "the reference cleaned without ftfy ({cleaned:?}) — install ftfy==6.3.1 and re-run `make fixtures`"
    );
}

#[test]
fn html5_entity_table_is_pythons() {
    let f = fixture();
    let python = f.cases["html5_entities"].as_object().unwrap();
    let ours = html::named_references();
    assert_eq!(ours.len(), python.len(), "number of named references");
    for (name, text) in python {
        assert_eq!(
            ours.get(name.as_str()),
            Some(&text.as_str().unwrap().to_string()),
            "&{name}"
        );
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let f = fixture();
    let tokenizer = T5Tokenizer::from_dir(&f.root.join("tokenizer")).unwrap();
    // Raw strings (no cleaning), no padding: normalizer, pre-tokenizer, special tokens, `</s>`;
    // then a tokenizer.json with `byte_fallback: true`, which transformers 5 rebuilds without.
    let byte_fallback = T5Tokenizer::from_dir(&f.root.join("byte_fallback/tokenizer")).unwrap();
    for (tokenizer, key) in [
        (&tokenizer, "raw_tokenize"),
        (&byte_fallback, "raw_tokenize_byte_fallback"),
    ] {
        for case in f.cases[key].as_array().unwrap() {
            let text = case[0].as_str().unwrap();
            let expected: Vec<u32> = case[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                tokenizer.encode(text).unwrap(),
                expected,
                "{key}: ids of {text:?}"
            );
        }
    }
    // The pipeline's call: padding="max_length", truncation, attention mask.
    let cleaned = f.strings("cleaned");
    for seq_len in SEQ_LENS {
        let batch = tokenizer.tokenize(&cleaned, seq_len).unwrap();
        assert_eq!(
            ids(&batch.input_ids),
            ids(f.tensor(&format!("ids_{seq_len}"))),
            "ids, L={seq_len}"
        );
        assert_eq!(
            ids(&batch.attention_mask),
            ids(f.tensor(&format!("mask_{seq_len}"))),
            "mask, L={seq_len}"
        );
        let lengths: Vec<i64> = batch.lengths.iter().map(|&n| n as i64).collect();
        let reference = f
            .tensor(&format!("mask_{seq_len}"))
            .sum_dim_intlist(1, false, Kind::Int64);
        assert_eq!(lengths, ids(&reference), "seq_lens, L={seq_len}");
    }
}

#[test]
fn count_tokens_sees_past_the_truncation() {
    let f = fixture();
    let encoder = f.encoder(Kind::Float, 16);
    let expected: Vec<usize> = f.cases["token_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let counts: Vec<usize> = f
        .strings("prompts")
        .iter()
        .map(|p| encoder.count_tokens(p).unwrap())
        .collect();
    assert_eq!(counts, expected);
    assert!(
        counts.iter().any(|&n| n > 16),
        "one prompt must exceed max_sequence_length 16"
    );
}

#[test]
fn encoder_matches_transformers_f32() {
    let f = fixture();
    let model =
        UMT5EncoderModel::load(&f.root.join("text_encoder"), Kind::Float, Device::Cpu).unwrap();
    for seq_len in SEQ_LENS {
        let hidden = model
            .forward(
                f.tensor(&format!("ids_{seq_len}")),
                f.tensor(&format!("mask_{seq_len}")),
            )
            .unwrap();
        let expected = f.tensor(&format!("hidden_{seq_len}"));
        println!(
            "last_hidden_state L={seq_len}: {}",
            max_diff(&hidden, expected)
        );
        common::assert_close(
            &format!("last_hidden_state L={seq_len}"),
            &hidden,
            expected,
            RTOL,
            ATOL,
        );
    }
}

#[test]
fn prompt_embeds_match_wan_pipeline() {
    let f = fixture();
    let prompts = f.strings("prompts");
    for seq_len in SEQ_LENS {
        let encoder = f.encoder(Kind::Float, seq_len);
        let (embeds, negative) = encoder.encode_prompt(&prompts, None, true).unwrap();
        let expected = f.tensor(&format!("embeds_{seq_len}"));
        println!("prompt_embeds L={seq_len}: {}", max_diff(&embeds, expected));
        common::assert_close(
            &format!("prompt_embeds L={seq_len}"),
            &embeds,
            expected,
            RTOL,
            ATOL,
        );
        common::assert_close(
            &format!("negative_prompt_embeds L={seq_len}"),
            &negative.unwrap(),
            f.tensor(&format!("negative_embeds_{seq_len}")),
            RTOL,
            ATOL,
        );
        // Past each prompt's length the rows are exactly zero, before it they are not.
        let mask = f
            .tensor(&format!("mask_{seq_len}"))
            .to_kind(Kind::Float)
            .unsqueeze(-1);
        assert_eq!(
            embeds
                .abs()
                .f_mul(&(1.0 - &mask))
                .unwrap()
                .max()
                .double_value(&[]),
            0.0,
            "padding is zero"
        );
        assert!(
            embeds
                .abs()
                .sum_dim_intlist(-1, false, Kind::Float)
                .f_mul(&mask.squeeze_dim(-1))
                .unwrap()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}

/// `|ours − reference| ≤ 1 ulp of the reference in `kind` (2^-7 relative in bf16, 2^-10 in fp16)`.
fn assert_within_ulp(what: &str, ours: &Tensor, reference: &Tensor, kind: Kind) {
    assert_eq!(ours.kind(), kind, "{what}: dtype");
    let mantissa = if kind == Kind::BFloat16 { 7 } else { 10 };
    common::assert_close(what, ours, reference, 2f64.powi(-mantissa), 1e-6);
    let differing = ours
        .to_kind(Kind::Float)
        .ne_tensor(&reference.to_kind(Kind::Float))
        .sum(Kind::Int64)
        .int64_value(&[]);
    println!(
        "{what}: {differing} of {} values differ, {}",
        reference.numel(),
        max_diff(ours, reference)
    );
}

/// "max |diff| …" for the test log.
fn max_diff(ours: &Tensor, reference: &Tensor) -> String {
    let diff = (ours.to_kind(Kind::Double) - reference.to_kind(Kind::Double)).abs();
    format!(
        "max |diff| {:.3e} (ref max |x| {:.3e})",
        diff.max().double_value(&[]),
        reference
            .abs()
            .max()
            .to_kind(Kind::Double)
            .double_value(&[])
    )
}

#[test]
fn half_precision_matches_transformers() {
    let f = fixture();
    let prompts = f.strings("prompts");
    for (kind, key) in [
        (Kind::BFloat16, "embeds_16_bf16"),
        (Kind::Half, "embeds_16_f16"),
    ] {
        let encoder = f.encoder(kind, 16);
        let embeds = encoder.encode(&prompts).unwrap();
        assert_within_ulp(key, &embeds, f.tensor(key), kind);
    }
}

#[test]
fn fp16_overflow_is_clamped_like_transformers() {
    let root = common::fixture("text_encoder").join("overflow");
    let tensors = common::load_tensors(&root.join("embeds.safetensors"));
    let model =
        UMT5EncoderModel::load(&root.join("text_encoder"), Kind::Half, Device::Cpu).unwrap();
    let hidden = model
        .forward(&tensors["ids_16"], &tensors["mask_16"])
        .unwrap();
    assert!(
        bool::try_from(hidden.isfinite().all()).unwrap(),
        "clamped output is finite"
    );
    assert_within_ulp(
        "overflow hidden fp16",
        &hidden,
        &tensors["hidden_16_f16"],
        Kind::Half,
    );
}

/// Copies the fixture's text_encoder/ into a temp dir, letting `edit` change config and weights.
fn edited_copy(
    f: &Fixture,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>, &mut Vec<(String, Tensor)>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = f.root.join("text_encoder");
    let mut config: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    let mut weights = Tensor::read_safetensors(source.join("model.safetensors")).unwrap();
    edit(&mut config, &mut weights);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    Tensor::write_safetensors(&weights, dir.path().join("model.safetensors")).unwrap();
    dir
}

#[test]
fn embedding_saved_as_encoder_embed_tokens_loads() {
    let f = fixture();
    let dir = edited_copy(&f, |_, weights| {
        for (name, _) in weights.iter_mut() {
            if name == "shared.weight" {
                *name = "encoder.embed_tokens.weight".into();
            }
        }
    });
    let model = UMT5EncoderModel::load(dir.path(), Kind::Float, Device::Cpu).unwrap();
    let hidden = model
        .forward(f.tensor("ids_16"), f.tensor("mask_16"))
        .unwrap();
    common::assert_close(
        "hidden from encoder.embed_tokens.weight",
        &hidden,
        f.tensor("hidden_16"),
        RTOL,
        ATOL,
    );
}

#[test]
fn unknown_config_field_is_named() {
    let f = fixture();
    let dir = edited_copy(&f, |config, _| {
        config.insert("num_experts".into(), Value::from(8));
    });
    match UMT5EncoderModel::load(dir.path(), Kind::Float, Device::Cpu) {
        Err(PipelineError::Config { message, path }) => {
            assert!(message.contains("`num_experts`"), "{message}");
            assert_eq!(path, dir.path().join("config.json"));
        }
        other => panic!("expected a Config error, got {:?}", other.err()),
    }
}

#[test]
fn missing_tokenizer_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    match T5Tokenizer::from_dir(dir.path()) {
        Err(PipelineError::MissingFile { path, .. }) => {
            assert_eq!(path, dir.path().join("tokenizer.json"))
        }
        other => panic!(
            "expected MissingFile, got {:?}",
            other.err().map(|e| e.to_string())
        ),
    }
    let err = TextEncoder::load(Path::new("/nonexistent-model"), Kind::Float, Device::Cpu)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("/nonexistent-model/tokenizer/tokenizer.json"),
        "{err}"
    );
}

#[test]
fn negative_prompts_must_match_the_batch() {
    let f = fixture();
    let encoder = f.encoder(Kind::Float, 16);
    let prompts = vec!["a".to_string(), "b".to_string()];
    let err = encoder
        .encode_prompt(&prompts, Some(&["x".to_string()]), true)
        .err()
        .unwrap();
    assert!(matches!(err, PipelineError::InvalidInput { .. }), "{err}");
    let (_, none) = encoder.encode_prompt(&prompts, None, false).unwrap();
    assert!(none.is_none());
}
