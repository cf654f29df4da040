//! The text-to-text fixes of `ftfy.fixes` that `fix_text` runs after `fix_encoding`, and the
//! byte-level ones `fix_encoding` uses between encoding and decoding.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::bytes::{NoExpand, Regex as BytesRegex};
use regex::Regex;

use crate::codecs::charmap;
use crate::pyregex::digit;
use crate::tables;

/// C1 controls U+0080..U+009F as the Windows-1252 characters of those bytes, as browsers read
/// them (the bytes Windows-1252 leaves undefined stay as they are).
pub fn fix_c1_controls(text: &str) -> String {
    let sloppy = charmap("sloppy-windows-1252");
    text.chars()
        .map(|c| match c {
            '\u{80}'..='\u{9f}' => sloppy.decode_byte(c as u8),
            c => c,
        })
        .collect()
}

/// Latin ligatures (`ﬁ`, `ĳ`, `ǆ`, …) as the letters they join.
pub fn fix_latin_ligatures(text: &str) -> String {
    map_chars(text, |c| {
        Some(match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => return None,
        })
    })
}

/// Full-width ASCII, half-width katakana and Hangul, and the ideographic space in their
/// standard widths (the NFKC forms of U+FF01..U+FFEF, and U+3000 as a space).
pub fn fix_character_width(text: &str) -> String {
    map_chars(text, |c| {
        if c == '\u{3000}' {
            return Some(" ");
        }
        tables::WIDTH_MAP
            .binary_search_by_key(&c, |&(from, _)| from)
            .ok()
            .map(|i| tables::WIDTH_MAP[i].1)
    })
}

/// Curly single quotes (and U+02BC) as `'`, curly double quotes as `"`.
pub fn uncurl_quotes(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
            '\u{201c}'..='\u{201f}' => '"',
            c => c,
        })
        .collect()
}

/// CRLF, CR, U+2028, U+2029 and U+0085 as `\n`.
pub fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n")
        .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// ANSI terminal escapes (`ESC [ digits-and-semicolons letter`) removed.
pub fn remove_terminal_escapes(text: &str) -> String {
    static ANSI: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(&format!(r"\x1b\[(?:{}|;)*[a-zA-Z]", digit())).expect("ANSI pattern")
    });
    ANSI.replace_all(text, "").into_owned()
}

/// Control characters with no visible effect removed: C0 controls other than `\t \n \f \r`,
/// DEL, the deprecated Arabic format characters, interlinear annotation marks, the object
/// replacement character and the byte order mark.
pub fn remove_control_chars(text: &str) -> String {
    text.chars()
        .filter(|c| {
            !matches!(c,
                '\u{0}'..='\u{8}'
                | '\u{b}'
                | '\u{e}'..='\u{1f}'
                | '\u{7f}'
                | '\u{206a}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffc}')
        })
        .collect()
}

/// Applies a character → string mapping (`str.translate`).
fn map_chars(text: &str, map: impl Fn(char) -> Option<&'static str>) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match map(c) {
            Some(replacement) => out.push_str(replacement),
            None => out.push(c),
        }
    }
    out
}

/// UTF-8 sequences whose `A0` byte became a space, as bytes (`ALTERED_UTF8_RE`).
pub static ALTERED_UTF8: LazyLock<BytesRegex> = LazyLock::new(|| {
    BytesRegex::new(
        r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
    )
    .expect("altered UTF-8 pattern")
});

/// Puts back the `A0` bytes that became spaces inside UTF-8 sequences. A lone `Ã ` (the
/// mojibake of `à` before a space) keeps its space after the restored byte — "à la", not
/// "àla" — except before the Portuguese `às`, `àquele`, `àquela`, `àquilo`.
pub fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    let mut spaced = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xC3 && bytes.get(i + 1) == Some(&b' ') {
            let after = &bytes[i + 2..];
            let keeps_word = [&b" "[..], b"quele", b"quela", b"quilo", b"s "]
                .iter()
                .any(|word| after.starts_with(word));
            if !keeps_word {
                spaced.extend_from_slice(b"\xc3\xa0 ");
                i += 2;
                continue;
            }
        }
        spaced.push(bytes[i]);
        i += 1;
    }
    ALTERED_UTF8
        .replace_all(&spaced, |m: &regex::bytes::Captures<'_>| {
            m[0].iter()
                .map(|&b| if b == b' ' { 0xA0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// UTF-8 sequences that lost bytes to a sloppy codec's `1A` (or to `?`) become the UTF-8 of
/// U+FFFD, as does any other `1A` (`LOSSY_UTF8_RE`).
pub fn replace_lossy_sequences(bytes: &[u8]) -> Cow<'_, [u8]> {
    static LOSSY: LazyLock<BytesRegex> = LazyLock::new(|| {
        BytesRegex::new(concat!(
            r"(?-u)[\xc2-\xdf][\x1a]",
            r"|[\xc2-\xc3][?]",
            r"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]",
            r"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]",
            r"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]",
            r"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]",
            r"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]",
            r"|\x1a",
        ))
        .expect("lossy UTF-8 pattern")
    });
    LOSSY.replace_all(bytes, NoExpand("\u{fffd}".as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_fixes_match_the_references_docstrings() {
        assert_eq!(fix_latin_ligatures("ﬂuﬃeﬆ"), "fluffiest");
        assert_eq!(fix_character_width("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(fix_character_width("Ｕﾀｰﾝ"), "Uターン");
        assert_eq!(
            uncurl_quotes("\u{201c}here\u{2019}s a test\u{201d}"),
            "\"here's a test\""
        );
        assert_eq!(
            fix_line_breaks("a\r\nb\rc\u{2028}d\u{2029}e\u{85}f"),
            "a\nb\nc\nd\ne\nf"
        );
        assert_eq!(
            remove_terminal_escapes("\x1b[36;44mI'm blue, da ba dee\x1b[0m"),
            "I'm blue, da ba dee"
        );
        assert_eq!(
            remove_control_chars("a\u{0}\t\u{1b}b\u{feff}\u{200d}"),
            "a\tb\u{200d}"
        );
        assert_eq!(fix_c1_controls("\u{80}\u{81}\u{93}"), "€\u{81}“");
    }

    #[test]
    fn restores_a0_bytes_but_keeps_a_grave_words_apart() {
        assert_eq!(restore_byte_a0(b"voil\xc3 le"), b"voil\xc3\xa0 le");
        assert_eq!(restore_byte_a0(b"\xc3 s "), b"\xc3\xa0s ");
        assert_eq!(restore_byte_a0(b"\xe2\x80 x"), b"\xe2\x80\xa0x");
    }

    #[test]
    fn lossy_sequences_become_replacement_characters() {
        assert_eq!(
            replace_lossy_sequences(b"\xe2\x80\x1a x \x1a"),
            "\u{fffd} x \u{fffd}".as_bytes()
        );
    }
}
