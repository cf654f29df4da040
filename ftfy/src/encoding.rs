//! `fix_encoding`: while the text looks like mojibake, find the first single-byte codec that
//! can encode it and whose bytes decode as UTF-8 (after putting back lost `A0` bytes and
//! marking lossy sequences), and take that decoding; failing that, repair UTF-8 mojibake
//! embedded in otherwise consistent text, then Latin-1 read as Windows-1252, then C1 controls.

use std::sync::LazyLock;

use regex::Regex;

use crate::badness::is_bad;
use crate::codecs::{charmaps, decode_utf8_variants, decode_windows_1252};
use crate::fixes::{fix_c1_controls, replace_lossy_sequences, restore_byte_a0, ALTERED_UTF8};
use crate::pyregex::class;
use crate::tables::{
    UTF8_CONTINUATION, UTF8_CONTINUATION_STRICT, UTF8_FIRST_OF_2, UTF8_FIRST_OF_3, UTF8_FIRST_OF_4,
};
use crate::TextFixerConfig;

/// `ftfy.fix_encoding(text, config)`: one repair after another until none applies.
pub fn fix_encoding(text: &str, config: &TextFixerConfig) -> String {
    let mut text = text.to_string();
    loop {
        let fixed = fix_one_step(&text, config);
        if fixed == text {
            return text;
        }
        text = fixed;
    }
}

/// One step of the repair (`_fix_encoding_one_step_and_explain`).
fn fix_one_step(text: &str, config: &TextFixerConfig) -> String {
    if text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut encodable_as_latin_1 = false;
    for codec in charmaps() {
        let Some(mut bytes) = codec.encode(text) else {
            continue;
        };
        encodable_as_latin_1 |= codec.name == "latin-1";
        if config.restore_byte_a0 && codec.name != "macroman" && ALTERED_UTF8.is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if config.replace_lossy_sequences && codec.is_sloppy() {
            bytes = replace_lossy_sequences(&bytes).into_owned();
        }
        let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if let Some(fixed) = decoded {
            return fixed;
        }
    }
    if config.decode_inconsistent_utf8 && utf8_detector().is_match(text) {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    // The reference skips this when "windows-1252" is among the codecs that fit, a name its
    // list never holds (it has the sloppy one): the step always runs for Latin-1 text.
    if encodable_as_latin_1 {
        let bytes: Vec<u8> = text.chars().map(|c| c as u32 as u8).collect();
        if let Some(fixed) = decode_windows_1252(&bytes) {
            if fixed != text {
                return fixed;
            }
        }
    }
    if config.fix_c1_controls && text.contains(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

/// Runs of characters that look like UTF-8 read as a single-byte codec: a lead character of a
/// 2-, 3- or 4-byte sequence and its continuations (`UTF8_DETECTOR_RE` without its look-behind,
/// which [`decode_inconsistent_utf8`] checks).
fn utf8_detector() -> &'static Regex {
    static DETECTOR: LazyLock<Regex> = LazyLock::new(|| {
        let cont = class(&[UTF8_CONTINUATION]);
        let pattern = format!(
            "(?:{}{cont}|{}{cont}{{2}}|{}{cont}{{3}})+",
            class(&[UTF8_FIRST_OF_2]),
            class(&[UTF8_FIRST_OF_3]),
            class(&[UTF8_FIRST_OF_4]),
        );
        Regex::new(&pattern).expect("UTF-8 detector pattern")
    });
    &DETECTOR
}

/// True for the characters a run may not follow: a run right after one is the tail of a longer
/// sequence, not a sequence of its own.
fn is_strict_continuation(c: char) -> bool {
    static STRICT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!("^{}$", class(&[UTF8_CONTINUATION_STRICT]))).expect("class")
    });
    let mut buf = [0u8; 4];
    STRICT.is_match(c.encode_utf8(&mut buf))
}

/// Repairs each run of UTF-8 mojibake on its own, where the run is shorter than the text and
/// looks bad: mojibake pasted into text of another encoding.
fn decode_inconsistent_utf8(text: &str) -> String {
    let detector = utf8_detector();
    let default = TextFixerConfig::default();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(m) = detector.find_at(text, search) {
        let preceded = text[..m.start()].chars().next_back();
        if preceded.is_some_and(is_strict_continuation) {
            // The look-behind fails here; the next run may start one character later.
            search = m.start() + text[m.start()..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        let run = m.as_str();
        out.push_str(&text[copied..m.start()]);
        if run.len() < text.len() && is_bad(run) {
            out.push_str(&fix_encoding(run, &default));
        } else {
            out.push_str(run);
        }
        copied = m.end();
        search = m.end();
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(text: &str) -> String {
        fix_encoding(text, &TextFixerConfig::default())
    }

    #[test]
    fn repairs_mojibake_like_the_reference() {
        // Expected values from ftfy 6.3.1's docstrings and `fix_encoding`.
        assert_eq!(fix("sÃ³"), "só");
        assert_eq!(fix("voilÃ le travail"), "voilà le travail");
        assert_eq!(fix("Ã³"), "ó");
        assert_eq!(fix("&ATILDE;&SUP3;"), "&ATILDE;&SUP3;");
        assert_eq!(fix("ï»¿"), "\u{feff}");
        assert_eq!(fix("â€œ like this â€\u{fffd}"), "“ like this \u{fffd}");
    }

    #[test]
    fn latin_1_text_is_read_as_windows_1252_without_the_c1_fixer() {
        // Expected values from ftfy 6.3.1's `fix_encoding(text, fix_c1_controls=False)`.
        let config = TextFixerConfig {
            fix_c1_controls: false,
            ..TextFixerConfig::default()
        };
        assert_eq!(fix_encoding("\u{93}quoted\u{94}", &config), "“quoted”");
        assert_eq!(
            fix_encoding("\u{93}quoted\u{94} \u{81}", &config),
            "\u{93}quoted\u{94} \u{81}"
        );
    }
}
