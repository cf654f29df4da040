//! `ftfy.fix_text` (ftfy 6.3.1) in Rust: repairs mojibake, decodes HTML entities, straightens
//! curly quotes, narrows full-width forms, splits Latin ligatures, drops stray control
//! characters and normalizes to NFC — with output identical to the Python package on every
//! input, so that prompt cleaning matches diffusers with `ftfy` installed.
//!
//! ```
//! assert_eq!(t2v_ftfy::fix_text("it’s “quiet” — ﬁne ＡＢＣ"), "it's \"quiet\" — fine ABC");
//! assert_eq!(t2v_ftfy::fix_text("schÃ¶n"), "schön");
//! ```
//!
//! Input is a Rust `&str`, so it never holds the lone UTF-16 surrogates ftfy's `fix_surrogates`
//! repairs, and no step here can create one: that fixer has nothing to do and is absent.
//!
//! # Layout
//! - [`fix_text`] / [`fix_text_with`] and [`TextFixerConfig`]: the entry points, the per-line
//!   segmentation and the loop that applies every fix until the text stops changing.
//! - `encoding`: `fix_encoding`, the search for the codec pair that undoes mojibake.
//! - `badness`: the heuristic that says whether text looks like mojibake.
//! - `codecs`: the single-byte codecs ftfy tries and its lenient `utf-8-variants` decoder.
//! - `fixes`: the small text-to-text fixes (quotes, widths, ligatures, controls, …).
//! - [`html`]: Python's `html.unescape`, and ftfy's stricter `unescape_html`.
//! - `normalize`: Unicode normalization as the reference's (older) Unicode version does it.
//! - `pyregex`: Python `re` character classes rebuilt for the `regex` crate.
//! - `tables`: data generated from ftfy and Python's `unicodedata` (`generate_tables.py`).

mod badness;
mod codecs;
mod encoding;
mod fixes;
pub mod html;
mod normalize;
mod pyregex;
mod tables;

pub use normalize::Normalization;

/// The Unicode version `fix_text` follows: that of the reference's Python `unicodedata`.
pub const UNICODE_VERSION: (u8, u8, u8) = tables::UNICODE_VERSION;

/// When `unescape_html` decodes HTML entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlUnescape {
    /// Decode, unless a literal `<` says the text is real HTML (ftfy's `"auto"`); once a line
    /// holds a `<`, the rest of the text is left alone too, as in the reference.
    Auto,
    Always,
    Never,
}

/// ftfy's `TextFixerConfig` without `explain` (never computed here). [`Default`] is ftfy's
/// default, which is what [`fix_text`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextFixerConfig {
    pub unescape_html: HtmlUnescape,
    pub remove_terminal_escapes: bool,
    pub fix_encoding: bool,
    pub restore_byte_a0: bool,
    pub replace_lossy_sequences: bool,
    pub decode_inconsistent_utf8: bool,
    pub fix_c1_controls: bool,
    pub fix_latin_ligatures: bool,
    pub fix_character_width: bool,
    pub uncurl_quotes: bool,
    pub fix_line_breaks: bool,
    pub remove_control_chars: bool,
    pub normalization: Option<Normalization>,
    /// The longest segment, in characters, fixed at once when a line is longer.
    pub max_decode_length: usize,
}

impl Default for TextFixerConfig {
    fn default() -> Self {
        Self {
            unescape_html: HtmlUnescape::Auto,
            remove_terminal_escapes: true,
            fix_encoding: true,
            restore_byte_a0: true,
            replace_lossy_sequences: true,
            decode_inconsistent_utf8: true,
            fix_c1_controls: true,
            fix_latin_ligatures: true,
            fix_character_width: true,
            uncurl_quotes: true,
            fix_line_breaks: true,
            remove_control_chars: true,
            normalization: Some(Normalization::Nfc),
            max_decode_length: 1_000_000,
        }
    }
}

/// `ftfy.fix_text(text)` with the default configuration.
pub fn fix_text(text: &str) -> String {
    fix_text_with(text, &TextFixerConfig::default())
}

/// `ftfy.fix_text(text, config)`: fixes each line (each `max_decode_length` characters of a
/// longer one) as its own segment, so a mojibake repair in one line cannot affect another.
pub fn fix_text_with(text: &str, config: &TextFixerConfig) -> String {
    let mut config = config.clone();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = segment_end(rest, config.max_decode_length);
        let (segment, tail) = rest.split_at(end);
        // The reference turns "auto" off for good at the first segment holding a `<`.
        if config.unescape_html == HtmlUnescape::Auto && segment.contains('<') {
            config.unescape_html = HtmlUnescape::Never;
        }
        out.push_str(&fix_segment(segment, &config));
        rest = tail;
    }
    out
}

/// Byte length of the next segment: through the first `\n`, at most `max_chars` characters.
fn segment_end(text: &str, max_chars: usize) -> usize {
    let max_chars = max_chars.max(1);
    for (count, (at, c)) in text.char_indices().enumerate() {
        if count == max_chars {
            return at;
        }
        if c == '\n' {
            return at + 1;
        }
    }
    text.len()
}

/// One of the text-to-text fixes.
type Fix = fn(&str) -> String;

/// `ftfy.fix_and_explain(segment, config).text`: every enabled fix, in the reference's order,
/// repeated until a whole round leaves the text unchanged.
fn fix_segment(segment: &str, config: &TextFixerConfig) -> String {
    let unescape = match config.unescape_html {
        HtmlUnescape::Auto => !segment.contains('<'),
        HtmlUnescape::Always => true,
        HtmlUnescape::Never => false,
    };
    let mut text = segment.to_string();
    loop {
        let original = text.clone();
        if unescape {
            text = html::unescape_entities(&text);
        }
        if config.fix_encoding {
            text = encoding::fix_encoding(&text, config);
        }
        let steps: [(bool, Fix); 7] = [
            (config.fix_c1_controls, fixes::fix_c1_controls),
            (config.fix_latin_ligatures, fixes::fix_latin_ligatures),
            (config.fix_character_width, fixes::fix_character_width),
            (config.uncurl_quotes, fixes::uncurl_quotes),
            (config.fix_line_breaks, fixes::fix_line_breaks),
            (
                config.remove_terminal_escapes,
                fixes::remove_terminal_escapes,
            ),
            (config.remove_control_chars, fixes::remove_control_chars),
        ];
        for (enabled, fix) in steps {
            if enabled {
                text = fix(&text);
            }
        }
        if let Some(form) = config.normalization {
            text = normalize::normalize(&text, form);
        }
        if text == original {
            return text;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_the_references_docstring_examples() {
        // Expected values from ftfy 6.3.1 (its docstring shows "..." for the ellipsis, but the
        // package keeps U+2026).
        assert_eq!(fix_text("âœ” No problems"), "✔ No problems");
        assert_eq!(fix_text("&macr;\\_(ã\u{83}\u{84})_/&macr;"), "¯\\_(ツ)_/¯");
        assert_eq!(
            fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"),
            "Broken text… it's flubberific!"
        );
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
    }

    #[test]
    fn a_line_with_html_stops_entity_decoding_for_the_rest() {
        // ftfy's test_entities: "&amp;\n<html>\n&amp;" → "&\n<html>\n&amp;".
        assert_eq!(fix_text("&amp;\n<html>\n&amp;"), "&\n<html>\n&amp;");
        let always = TextFixerConfig {
            unescape_html: HtmlUnescape::Always,
            ..TextFixerConfig::default()
        };
        assert_eq!(
            fix_text_with("&amp;\n<html>\n&amp;", &always),
            "&\n<html>\n&"
        );
    }

    #[test]
    fn segments_are_lines_or_bounded_runs() {
        assert_eq!(segment_end("ab\ncd", 10), 3);
        assert_eq!(segment_end("abcdef", 4), 4);
        assert_eq!(segment_end("éé", 1), 2);
        assert_eq!(segment_end("", 4), 0);
    }
}
