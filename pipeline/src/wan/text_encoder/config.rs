//! `UMT5Config`: `text_encoder/config.json` as transformers writes it
//! (`models/umt5/configuration_umt5.py`).
//!
//! Architecture fields are parsed (with transformers' aliases `hidden_size`, `num_attention_heads`,
//! `num_hidden_layers`, `head_dim`); the metadata, training, generation and decoder fields
//! transformers writes are accepted and ignored; any other field is an error naming it, so a
//! config for something this encoder does not implement fails at load instead of running wrong.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConfigProblem, Result};

/// Fields accepted and ignored: they do not change the encoder's forward pass.
#[rustfmt::skip]
const IGNORED_FIELDS: &[&str] = &[
    // metadata
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
    "_commit_hash", "_attn_implementation", "_attn_implementation_autoset", "tokenizer_class",
    "name_or_path", "auto_map", "output_past",
    // google/umt5-* configs carry it from the T5X export; transformers never reads it (every
    // UMT5 layer has its own relative bias regardless)
    "scalable_attention",
    // training only (dropout is off at inference)
    "dropout_rate", "classifier_dropout", "initializer_factor", "gradient_checkpointing",
    "use_bfloat16", "tf_legacy_loss", "problem_type", "finetuning_task", "id2label", "label2id",
    "num_labels", "pruned_heads",
    // decoder / seq2seq / generation (the encoder alone never reads them)
    "num_decoder_layers", "is_encoder_decoder", "use_cache", "pad_token_id", "eos_token_id",
    "bos_token_id", "sep_token_id", "decoder_start_token_id", "tie_word_embeddings",
    "scale_decoder_outputs", "tie_encoder_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "task_specific_params", "prefix", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "chunk_size_feed_forward",
    // output switches
    "return_dict", "output_hidden_states", "output_attentions", "torchscript",
];

/// The activation of the feed-forward layer (transformers' `ACT2FN` names it supports here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, written out as transformers does.
    GeluNew,
    /// `gelu_pytorch_tanh`: `torch.nn.functional.gelu(x, approximate="tanh")`.
    GeluTanh,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" => Self::GeluNew,
            "gelu_pytorch_tanh" => Self::GeluTanh,
            "gelu" => Self::Gelu,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }
}

/// `text_encoder/config.json` of a Wan checkpoint. Defaults are transformers' `UMT5Config`
/// defaults (used only where the file leaves a field out).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct UMT5Config {
    pub vocab_size: i64,
    #[serde(alias = "hidden_size")]
    pub d_model: i64,
    #[serde(alias = "head_dim")]
    pub d_kv: i64,
    pub d_ff: i64,
    #[serde(alias = "num_hidden_layers")]
    pub num_layers: i64,
    #[serde(alias = "num_attention_heads")]
    pub num_heads: i64,
    pub relative_attention_num_buckets: i64,
    pub relative_attention_max_distance: i64,
    pub layer_norm_epsilon: f64,
    /// `"gated-gelu"`, `"relu"`, `"gated-silu"`, … (`[gated-]ACT`).
    pub feed_forward_proj: String,
    /// Written by transformers; when present it wins over what `feed_forward_proj` implies
    /// (`UMT5Config` sets the attribute from the file after deriving it).
    pub dense_act_fn: Option<String>,
    pub is_gated_act: Option<bool>,
    /// Must be false: this is the encoder.
    pub is_decoder: bool,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

impl Default for UMT5Config {
    /// transformers 5.24 `UMT5Config()` (google/umt5-small sizes).
    fn default() -> Self {
        Self {
            vocab_size: 250_112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            dense_act_fn: None,
            is_gated_act: None,
            is_decoder: false,
            other: BTreeMap::new(),
        }
    }
}

impl UMT5Config {
    /// The google/umt5-xxl encoder Wan uses (its `config.json`: vocab 256384, dim 4096, ffn
    /// 10240, 64 heads of 64, 24 layers); the other fields are `UMT5Config` defaults.
    pub fn umt5_xxl() -> Self {
        Self {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            ..Self::default()
        }
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: Self = crate::loader::read_json(path, "text encoder config")?;
        config.validate().map_err(|problem| problem.in_file(path))?;
        Ok(config)
    }

    /// Checks the fields this encoder cannot honour; the message names the field.
    pub fn validate(&self) -> std::result::Result<(), ConfigProblem> {
        if let Some(field) = self
            .other
            .keys()
            .find(|k| !IGNORED_FIELDS.contains(&k.as_str()))
        {
            return Err(format!(
                "unknown field `{field}` — not a umT5 encoder setting this implementation knows; \
                 is this a UMT5EncoderModel config?"
            )
            .into());
        }
        if self.is_decoder {
            return Err("`is_decoder` is true — this is the umT5 encoder".into());
        }
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ] {
            if value < 1 {
                return Err(format!("`{name}` is {value}, it must be positive").into());
            }
        }
        if self.num_layers < 0 {
            return Err(format!("`num_layers` is {}", self.num_layers).into());
        }
        if self.relative_attention_num_buckets < 4 {
            return Err(format!(
                "`relative_attention_num_buckets` is {}, at least 4 are needed",
                self.relative_attention_num_buckets
            )
            .into());
        }
        self.activation().map(|_| ())
    }

    /// `is_gated_act` as transformers resolves it.
    pub fn gated(&self) -> bool {
        self.is_gated_act
            .unwrap_or_else(|| self.feed_forward_proj.split('-').next() == Some("gated"))
    }

    /// `dense_act_fn` as transformers resolves it (`gated-gelu` means `gelu_new`).
    pub fn activation(&self) -> std::result::Result<Activation, ConfigProblem> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        if parts.len() > 2 || (parts.len() == 2 && parts[0] != "gated") {
            return Err(format!(
                "`feed_forward_proj` `{}` must be `gated-ACT` or `ACT`",
                self.feed_forward_proj
            )
            .into());
        }
        let derived = match self.feed_forward_proj.as_str() {
            "gated-gelu" => "gelu_new",
            _ => parts[parts.len() - 1],
        };
        let name = self.dense_act_fn.as_deref().unwrap_or(derived);
        Activation::parse(name).ok_or_else(|| {
            format!("activation `{name}` is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu, silu)").into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> std::result::Result<UMT5Config, String> {
        let config: UMT5Config = serde_json::from_str(json).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string()).map(|_| config)
    }

    #[test]
    fn accepts_what_transformers_writes_and_names_unknown_fields() {
        let config = parse(
            r#"{"architectures": ["UMT5EncoderModel"], "dtype": "bfloat16", "model_type": "umt5",
                "transformers_version": "4.43.3", "torch_dtype": "float32", "d_model": 64,
                "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": true,
                "output_past": true, "tie_word_embeddings": false, "num_decoder_layers": 24,
                "scalable_attention": true, "tokenizer_class": "T5Tokenizer", "is_decoder": false}"#,
        )
        .unwrap();
        assert_eq!(config.d_model, 64);
        assert_eq!(config.activation(), Ok(Activation::GeluNew));
        assert!(config.gated());

        let err = parse(r#"{"d_model": 64, "rope_theta": 10000.0}"#).unwrap_err();
        assert!(err.contains("`rope_theta`"), "{err}");
        let err = parse(r#"{"feed_forward_proj": "gated-mish"}"#).unwrap_err();
        assert!(err.contains("mish"), "{err}");
        assert!(parse(r#"{"is_decoder": true}"#).is_err());
    }

    #[test]
    fn activation_follows_transformers() {
        let relu = parse(r#"{"feed_forward_proj": "relu"}"#).unwrap();
        assert_eq!(
            (relu.activation(), relu.gated()),
            (Ok(Activation::Relu), false)
        );
        // The file's dense_act_fn / is_gated_act win, as UMT5Config.from_dict does.
        let written =
            parse(r#"{"feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_pytorch_tanh"}"#)
                .unwrap();
        assert_eq!(written.activation(), Ok(Activation::GeluTanh));
        let aliases = parse(r#"{"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1, "head_dim": 4}"#).unwrap();
        assert_eq!(
            (
                aliases.d_model,
                aliases.num_heads,
                aliases.num_layers,
                aliases.d_kv
            ),
            (8, 2, 1, 4)
        );
    }
}
