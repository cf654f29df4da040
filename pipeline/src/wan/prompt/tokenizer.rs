//! The T5 tokenizer of a Wan checkpoint (`tokenizer/tokenizer.json`), made to tokenize exactly
//! as transformers 5 `T5Tokenizer` does.
//!
//! transformers 5 does not run `tokenizer.json` as saved: `T5Tokenizer.__init__` rebuilds the
//! pipeline from the file's Unigram vocabulary and SentencePiece charsmap (`models/t5/
//! tokenization_t5.py`): normalizer = the `Precompiled` charsmap alone (a `Replace`/`Strip`
//! after it is dropped), pre-tokenizer = `WhitespaceSplit` then `Metaspace("▁", always,
//! split)`, model = `Unigram(unk_id=2, byte_fallback=False)`, post-processor = `$A </s>`. The
//! added (special) tokens of the file are kept. We apply the same rewrite to the JSON before
//! handing it to the `tokenizers` crate.
//!
//! Truncation and padding follow `set_truncation_and_padding` + the `tokenizers` library:
//! the text is cut to `max_length − 1` tokens, `</s>` is appended, then `<pad>` fills up to
//! `max_length` (sides from `tokenizer_config.json`, right by default).

use std::path::Path;

use serde_json::{json, Value};
use tch::Tensor;
use tokenizers::{Encoding, PaddingDirection, PostProcessor, Tokenizer, TruncationDirection};

use crate::error::{ConfigProblem, PipelineError, Result};

/// Tokenizer classes whose loading the rewrite above reproduces.
const T5_CLASSES: [&str; 2] = ["T5Tokenizer", "T5TokenizerFast"];

/// `T5Tokenizer` builds its Unigram model with this unknown-token id, whatever the file says.
const UNK_ID: u64 = 2;

/// A tokenized batch as `_get_t5_prompt_embeds` receives it.
#[derive(Debug)]
pub struct TokenBatch {
    /// `(B, max_length)` int64 token ids.
    pub input_ids: Tensor,
    /// `(B, max_length)` int64, 1 on tokens and 0 on padding.
    pub attention_mask: Tensor,
    /// Tokens per row after truncation, `</s>` included (`mask.gt(0).sum(1)`).
    pub lengths: Vec<usize>,
}

/// The T5 tokenizer of a Wan checkpoint.
pub struct T5Tokenizer {
    inner: Tokenizer,
    pad_id: u32,
    pad_token: String,
    padding_side: PaddingDirection,
    truncation_side: TruncationDirection,
    /// Tokens the post-processor adds to one sequence (`</s>`: 1).
    added_tokens: usize,
}

impl T5Tokenizer {
    /// Loads `dir/tokenizer.json`, with `dir/tokenizer_config.json` when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            crate::loader::read_json::<Value>(&config_path, "tokenizer config")?
        } else {
            json!({})
        };
        Self::from_file(&dir.join("tokenizer.json"), &config, &config_path)
    }

    /// Builds the tokenizer from `tokenizer.json` and an already parsed `tokenizer_config.json`
    /// (`config_path` is only used in error messages).
    pub fn from_file(path: &Path, config: &Value, config_path: &Path) -> Result<Self> {
        let config_error = |message: String| PipelineError::Config {
            path: config_path.to_path_buf(),
            message,
        };
        if let Some(class) = config.get("tokenizer_class").and_then(Value::as_str) {
            if !T5_CLASSES.contains(&class) {
                return Err(config_error(format!(
                    "tokenizer_class `{class}` is not a T5 tokenizer — Wan uses T5Tokenizer (umT5)"
                )));
            }
        }
        let mut file: Value = crate::loader::read_json(path, "tokenizer file (tokenizer.json)")?;
        rebuild_as_t5(&mut file).map_err(|problem| problem.in_file(path))?;
        let mut inner: Tokenizer =
            file.to_string()
                .parse()
                .map_err(|e: tokenizers::Error| PipelineError::Config {
                    path: path.to_path_buf(),
                    message: format!("the tokenizers library rejects it: {e}"),
                })?;
        let token = |key: &str, default: &str| special_token(config, key, default);
        let id_of = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| PipelineError::Config {
                    path: path.to_path_buf(),
                    message: format!("the special token `{token}` is not in the vocabulary"),
                })
        };
        let pad_token = token("pad_token", "<pad>");
        let pad_id = id_of(&pad_token)?;
        let eos_id = id_of(&token("eos_token", "</s>"))?;
        let post_processor = json!({
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}
            ],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [eos_id], "tokens": ["</s>"]}}
        });
        inner.with_post_processor(Some(
            serde_json::from_value::<tokenizers::PostProcessorWrapper>(post_processor)
                .map_err(|e| config_error(format!("T5 post-processor: {e}")))?,
        ));
        let added_tokens = inner
            .get_post_processor()
            .map_or(0, |processor| processor.added_tokens(false));
        Ok(Self {
            inner,
            pad_id,
            pad_token,
            padding_side: match side(config, "padding_side").map_err(|p| config_error(p.message))? {
                Side::Left => PaddingDirection::Left,
                Side::Right => PaddingDirection::Right,
            },
            truncation_side: match side(config, "truncation_side")
                .map_err(|p| config_error(p.message))?
            {
                Side::Left => TruncationDirection::Left,
                Side::Right => TruncationDirection::Right,
            },
            added_tokens,
        })
    }

    /// Token ids of `text` with `</s>`, neither truncated nor padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_raw(text, true)?.get_ids().to_vec())
    }

    /// How many tokens `text` takes, `</s>` included, before any truncation.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode_raw(text, true)?.len())
    }

    /// `tokenizer(texts, padding="max_length", max_length, truncation=True,
    /// add_special_tokens=True, return_attention_mask=True)`.
    pub fn tokenize(&self, texts: &[String], max_length: usize) -> Result<TokenBatch> {
        if max_length < self.added_tokens.max(1) {
            return Err(PipelineError::invalid(
                "max_sequence_length",
                format!(
                    "{max_length} leaves no room for the end-of-sequence token; use at least 1"
                ),
            ));
        }
        let mut ids = Vec::with_capacity(texts.len() * max_length);
        let mut mask = Vec::with_capacity(texts.len() * max_length);
        let mut lengths = Vec::with_capacity(texts.len());
        for text in texts {
            // 1. the text's own tokens, cut to leave room for `</s>`
            let mut encoding = self.encode_raw(text, false)?;
            let room = max_length - self.added_tokens;
            if encoding.len() > room {
                encoding.truncate(room, 0, self.truncation_side);
            }
            // 2. `$A </s>`
            let mut encoding = self
                .inner
                .post_process(encoding, None, true)
                .map_err(|e| PipelineError::invalid("prompt", e.to_string()))?;
            lengths.push(encoding.len());
            // 3. pad to max_length
            encoding.pad(
                max_length,
                self.pad_id,
                0,
                &self.pad_token,
                self.padding_side,
            );
            ids.extend(encoding.get_ids().iter().map(|&id| i64::from(id)));
            mask.extend(encoding.get_attention_mask().iter().map(|&m| i64::from(m)));
        }
        let shape = [texts.len() as i64, max_length as i64];
        Ok(TokenBatch {
            input_ids: Tensor::from_slice(&ids).reshape(shape),
            attention_mask: Tensor::from_slice(&mask).reshape(shape),
            lengths,
        })
    }

    /// The `tokenizers` pipeline as rebuilt (for inspection and tests).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    fn encode_raw(&self, text: &str, add_special_tokens: bool) -> Result<Encoding> {
        self.inner
            .encode(text, add_special_tokens)
            .map_err(|e| PipelineError::invalid("prompt", format!("cannot tokenize: {e}")))
    }
}

/// Rewrites a `tokenizer.json` the way transformers 5 rebuilds `T5Tokenizer` (module docs).
fn rebuild_as_t5(file: &mut Value) -> std::result::Result<(), ConfigProblem> {
    let model = file
        .get_mut("model")
        .and_then(Value::as_object_mut)
        .ok_or("no `model` section")?;
    match model.get("type").and_then(Value::as_str) {
        Some("Unigram") => {}
        other => {
            return Err(format!(
                "model type {other:?}, a T5 tokenizer needs a Unigram (SentencePiece) model"
            )
            .into())
        }
    }
    model.insert("unk_id".into(), json!(UNK_ID));
    model.insert("byte_fallback".into(), json!(false));

    let normalizer = file
        .get("normalizer")
        .map(precompiled)
        .unwrap_or(Value::Null);
    file["normalizer"] = normalizer;
    file["pre_tokenizer"] = json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}
        ]
    });
    file["post_processor"] = Value::Null;
    file["truncation"] = Value::Null;
    file["padding"] = Value::Null;
    Ok(())
}

/// The `Precompiled` normalizer found at the top or inside a `Sequence`, else `null`.
fn precompiled(normalizer: &Value) -> Value {
    let is_precompiled = |n: &&Value| {
        n.get("type").and_then(Value::as_str) == Some("Precompiled")
            && n.get("precompiled_charsmap").is_some()
    };
    match normalizer.get("type").and_then(Value::as_str) {
        Some("Sequence") => normalizer
            .get("normalizers")
            .and_then(Value::as_array)
            .and_then(|list| list.iter().find(is_precompiled))
            .cloned()
            .unwrap_or(Value::Null),
        _ => Some(normalizer)
            .filter(is_precompiled)
            .cloned()
            .unwrap_or(Value::Null),
    }
}

/// A special token of `tokenizer_config.json`: a string or an `AddedToken` object.
fn special_token(config: &Value, key: &str, default: &str) -> String {
    match config.get(key) {
        Some(Value::String(token)) => token.clone(),
        Some(Value::Object(token)) => token
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    }
}

enum Side {
    Left,
    Right,
}

fn side(config: &Value, key: &str) -> std::result::Result<Side, ConfigProblem> {
    match config.get(key).and_then(Value::as_str) {
        None | Some("right") => Ok(Side::Right),
        Some("left") => Ok(Side::Left),
        Some(other) => Err(format!("{key} `{other}` must be \"left\" or \"right\"").into()),
    }
}
