//! The prompt path of diffusers' `WanPipeline` (`pipelines/wan/pipeline_wan.py`): cleaning,
//! T5 tokenization and umT5 encoding into the `(B, max_sequence_length, d_model)` embeddings the
//! transformer cross-attends to.
//!
//! # Layout
//! - [`prompt_clean`] / [`basic_clean`] / [`whitespace_clean`]: the reference's text cleaning.
//! - [`html`]: Python's `html.unescape` (HTML5 rules, from `t2v-ftfy`), used twice by
//!   [`basic_clean`].
//! - [`tokenizer`]: `T5Tokenizer` rebuilt from `tokenizer/tokenizer.json` as transformers 5 does.
//! - [`TextEncoder`]: tokenizer + `UMT5EncoderModel`; `_get_t5_prompt_embeds` and `encode_prompt`.
//!
//! # ftfy
//! diffusers runs `ftfy.fix_text` first when the `ftfy` package is importable, and Wan's
//! requirements install it; [`basic_clean`] does the same with `t2v_ftfy::fix_text` (ftfy 6.3.1's
//! default behaviour), so curly quotes, full-width letters, ligatures, stray controls and
//! mojibake are cleaned exactly as the reference cleans them.

pub mod tokenizer;
pub use t2v_ftfy::html;

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::error::{PipelineError, Result};
use crate::wan::text_encoder::UMT5EncoderModel;
pub use tokenizer::{T5Tokenizer, TokenBatch};

/// `max_sequence_length` of `WanPipeline.__call__` (and Wan's `text_len`).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// The negative prompt `encode_prompt` uses when none is given: the empty string. (The pipeline
/// has no built-in negative prompt; Wan's official one lives in its examples.)
pub const DEFAULT_NEGATIVE_PROMPT: &str = "";

/// `basic_clean`: `ftfy.fix_text`, `html.unescape` twice, then Python's `str.strip()`.
pub fn basic_clean(text: &str) -> String {
    let fixed = t2v_ftfy::fix_text(text);
    let once = html::unescape(&fixed);
    let twice = html::unescape(&once);
    py_strip(&twice).to_string()
}

/// `whitespace_clean`: every run of `\s` (the `regex` module's: Unicode White_Space) becomes one
/// space, then Python's `str.strip()`.
pub fn whitespace_clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    py_strip(&out).to_string()
}

/// `prompt_clean(text) = whitespace_clean(basic_clean(text))`.
pub fn prompt_clean(text: &str) -> String {
    whitespace_clean(&basic_clean(text))
}

/// Python's `str.strip()`: `str.isspace()` is Unicode White_Space plus U+001C..U+001F, which
/// Python counts as separators but the `regex` module's `\s` does not.
fn py_strip(text: &str) -> &str {
    text.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The umT5 text side of a Wan checkpoint: `tokenizer/` + `text_encoder/`.
pub struct TextEncoder {
    tokenizer: T5Tokenizer,
    model: UMT5EncoderModel,
    max_sequence_length: usize,
}

impl TextEncoder {
    /// Loads `model_dir/tokenizer/` and `model_dir/text_encoder/` (weights in `kind` on `device`).
    pub fn load(model_dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let tokenizer = T5Tokenizer::from_dir(&model_dir.join("tokenizer"))?;
        let model = UMT5EncoderModel::load(&model_dir.join("text_encoder"), kind, device)?;
        Ok(Self::new(tokenizer, model))
    }

    /// Bundles a tokenizer and an encoder, with `max_sequence_length` 512.
    pub fn new(tokenizer: T5Tokenizer, model: UMT5EncoderModel) -> Self {
        Self {
            tokenizer,
            model,
            max_sequence_length: MAX_SEQUENCE_LENGTH,
        }
    }

    /// Sets `max_sequence_length` (the padded length of ids and embeddings).
    pub fn with_max_sequence_length(mut self, max_sequence_length: usize) -> Self {
        self.max_sequence_length = max_sequence_length;
        self
    }

    pub fn max_sequence_length(&self) -> usize {
        self.max_sequence_length
    }

    pub fn tokenizer(&self) -> &T5Tokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &UMT5EncoderModel {
        &self.model
    }

    /// Tokens the cleaned prompt takes, `</s>` included, before truncation. Prompts with more
    /// than [`Self::max_sequence_length`] are silently truncated by [`Self::encode`], as in
    /// the reference; callers that want to refuse them compare this count to their limit.
    pub fn count_tokens(&self, prompt: &str) -> Result<usize> {
        self.tokenizer.count_tokens(&prompt_clean(prompt))
    }

    /// `_get_t5_prompt_embeds(prompts, num_videos_per_prompt=1, max_sequence_length)`:
    /// `(B, max_sequence_length, d_model)` in the encoder's dtype on its device, each row the
    /// encoder output up to the prompt's true length and exact zeros after it.
    pub fn encode(&self, prompts: &[String]) -> Result<Tensor> {
        if prompts.is_empty() {
            return Err(PipelineError::invalid("prompt", "no prompt given"));
        }
        // 1. clean and tokenize: padding="max_length", truncation, add_special_tokens
        let cleaned: Vec<String> = prompts.iter().map(|p| prompt_clean(p)).collect();
        let batch = self
            .tokenizer
            .tokenize(&cleaned, self.max_sequence_length)?;
        // 2. encode with the attention mask
        let device = self.model.device();
        let hidden = self.model.forward(
            &batch.input_ids.to_device(device),
            &batch.attention_mask.to_device(device),
        )?;
        // 3. keep each row's first seq_len vectors, zero the rest (`u[:v]` then `new_zeros`)
        let rows: Vec<Tensor> = batch
            .lengths
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let row = hidden.get(i as i64);
                let kept = row.narrow(0, 0, len as i64);
                let zeros = row.new_zeros(
                    [(self.max_sequence_length - len) as i64, row.size()[1]],
                    (row.kind(), row.device()),
                );
                Tensor::cat(&[kept, zeros], 0)
            })
            .collect();
        Ok(Tensor::stack(&rows, 0))
    }

    /// `encode_prompt(prompt, negative_prompt, do_classifier_free_guidance)` with one video
    /// per prompt: the prompt embeddings, and with guidance the negative ones (`""` for each
    /// prompt when `negative` is `None`; otherwise one negative per prompt).
    pub fn encode_prompt(
        &self,
        prompts: &[String],
        negative: Option<&[String]>,
        do_classifier_free_guidance: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let embeds = self.encode(prompts)?;
        if !do_classifier_free_guidance {
            return Ok((embeds, None));
        }
        let defaults;
        let negative = match negative {
            Some(negative) => negative,
            None => {
                defaults = vec![DEFAULT_NEGATIVE_PROMPT.to_string(); prompts.len()];
                &defaults
            }
        };
        if negative.len() != prompts.len() {
            return Err(PipelineError::invalid(
                "negative_prompt",
                format!(
                    "{} negative prompts for {} prompts — give one per prompt or none",
                    negative.len(),
                    prompts.len()
                ),
            ));
        }
        Ok((embeds, Some(self.encode(negative)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_like_the_reference() {
        // Expected values from diffusers' prompt_clean with ftfy 6.3.1 installed.
        assert_eq!(prompt_clean("  a\t\tb\n c  "), "a b c");
        assert_eq!(prompt_clean("Tom &amp;amp; Jerry &lt;3"), "Tom & Jerry <3");
        assert_eq!(prompt_clean("\u{1c} x\u{1c}y \u{1f}"), "xy");
        assert_eq!(prompt_clean("x\u{3000}\u{a0}\u{200b}y"), "x \u{200b}y");
        assert_eq!(prompt_clean("&nbsp;"), "");
        assert_eq!(
            prompt_clean("it’s “quiet” — ﬁne ＡＢＣ café"),
            "it's \"quiet\" — fine ABC café"
        );
        assert_eq!(prompt_clean("CafÃ© â€œau laitâ€\u{9d}"), "Café \"au lait\"");
    }
}
