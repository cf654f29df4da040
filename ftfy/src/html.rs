//! HTML character references, two ways:
//! - [`unescape`]: Python's `html.unescape` (`html/__init__.py`, HTML5 rules): numeric
//!   references with the WHATWG replacements for invalid code points, and named references from
//!   the full HTML5 table, including the longest-prefix match of the legacy names that may appear
//!   without a `;` (`&ampx` → `&x`, `&notit;` → `¬it;`).
//! - [`unescape_entities`]: ftfy's `unescape_html`, which only decodes unambiguous references —
//!   `&name;` with its `;`, numeric ones whose digits run to the `;`, and the all-caps forms of
//!   lower-case names (`&EACUTE;` → `É`) — so informal text such as `this&not that` survives.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use regex::Regex;

use crate::tables::UPPERCASE_ENTITIES;

/// The HTML5 table (`html.entities.html5`), generated from Python; see the file's header.
const ENTITIES_TSV: &str = include_str!("html5_entities.tsv");

/// Longest name the reference's pattern `[^\t\n\f <&#;]{1,32};?` can capture, in characters.
const MAX_NAME_CHARS: usize = 32;

/// The named character references: name (with its `;` where the table has one) → replacement.
pub fn named_references() -> &'static HashMap<&'static str, String> {
    static TABLE: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    TABLE.get_or_init(|| {
        ENTITIES_TSV
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (name, hex) = line.split_once('\t').expect("entity line is name<TAB>hex");
                let text = hex
                    .split(' ')
                    .map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32))
                    .collect::<Option<String>>()
                    .expect("entity table holds valid code points");
                (name, text)
            })
            .collect()
    })
}

/// ftfy's `unescape_html`: each `&#?[0-9A-Za-z]{1,24};` that is an HTML5 name (or the all-caps
/// form of a lower-case one) becomes its text; a numeric one becomes what `html.unescape` makes
/// of it, unless that leaves a `;` behind (the digits stopped early, or the value was `;`).
pub fn unescape_entities(text: &str) -> String {
    static ENTITY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new("&#?[0-9A-Za-z]{1,24};").expect("entity pattern"));
    static UPPERCASE: LazyLock<HashMap<&'static str, &'static str>> =
        LazyLock::new(|| UPPERCASE_ENTITIES.iter().copied().collect());
    if !text.contains('&') {
        return text.to_string();
    }
    ENTITY
        .replace_all(text, |caps: &regex::Captures<'_>| {
            let entity = &caps[0];
            if let Some(replacement) = named_references().get(&entity[1..]) {
                return replacement.clone();
            }
            if let Some(replacement) = UPPERCASE.get(entity) {
                return replacement.to_string();
            }
            if entity.starts_with("&#") {
                let decoded = unescape(entity);
                if !decoded.contains(';') {
                    return decoded.into_owned();
                }
            }
            entity.to_string()
        })
        .into_owned()
}

/// Python's `html.unescape(s)`.
pub fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match reference(after) {
            Some((consumed, replacement)) => {
                out.push_str(&replacement);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Matches one reference right after a `&`: returns the bytes consumed and the replacement, or
/// `None` where the reference pattern does not match (the `&` then stays as it is).
fn reference(after: &str) -> Option<(usize, String)> {
    if let Some(number) = after.strip_prefix('#') {
        return numeric(number).map(|(len, text)| (1 + len, text));
    }
    // `[^\t\n\f <&#;]{1,32};?`
    let mut end = 0;
    for (count, (i, c)) in after.char_indices().enumerate() {
        if count == MAX_NAME_CHARS
            || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';')
        {
            break;
        }
        end = i + c.len_utf8();
    }
    if end == 0 {
        return None;
    }
    if after[end..].starts_with(';') {
        end += 1;
    }
    Some((end, named(&after[..end])))
}

/// `#[0-9]+;?` or `#[xX][0-9a-fA-F]+;?` (the text after `#`).
fn numeric(number: &str) -> Option<(usize, String)> {
    let (radix, digits_at) = match number.as_bytes().first() {
        Some(b'x' | b'X') => (16, 1),
        _ => (10, 0),
    };
    let digits = number[digits_at..]
        .bytes()
        .take_while(|b| match radix {
            16 => b.is_ascii_hexdigit(),
            _ => b.is_ascii_digit(),
        })
        .count();
    if digits == 0 {
        return None;
    }
    let mut consumed = digits_at + digits;
    if number[consumed..].starts_with(';') {
        consumed += 1;
    }
    // Anything past U+10FFFF is replaced alike, so saturate instead of using big integers.
    let value = number[digits_at..digits_at + digits]
        .chars()
        .fold(0u64, |acc, d| {
            (acc * radix as u64 + d.to_digit(radix).unwrap_or(0) as u64).min(0x11_0000)
        });
    Some((consumed, numeric_replacement(value)))
}

/// The replacement of `&#value;`: the WHATWG table for C1 controls and NUL/CR, U+FFFD for
/// surrogates and values past Unicode, nothing for the invalid code points, else the character.
fn numeric_replacement(value: u64) -> String {
    if let Some(c) = invalid_charref(value) {
        return c.to_string();
    }
    if (0xD800..=0xDFFF).contains(&value) || value > 0x10_FFFF {
        return '\u{FFFD}'.to_string();
    }
    if is_invalid_codepoint(value) {
        return String::new();
    }
    char::from_u32(value as u32)
        .map(String::from)
        .unwrap_or_default()
}

/// Python's `_invalid_charrefs`.
fn invalid_charref(value: u64) -> Option<char> {
    // Windows-1252 meanings of 0x80..=0x9F; the undefined ones map to themselves.
    const C1: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    match value {
        0x00 => Some('\u{FFFD}'),
        0x0D => Some('\r'),
        0x80..=0x9F => Some(C1[(value - 0x80) as usize]),
        _ => None,
    }
}

/// Python's `_invalid_codepoints`: controls, non-characters U+FDD0..U+FDEF and U+xFFFE/U+xFFFF.
fn is_invalid_codepoint(value: u64) -> bool {
    matches!(value, 0x01..=0x08 | 0x0B | 0x0E..=0x1F | 0x7F..=0x9F | 0xFDD0..=0xFDEF)
        || (value & 0xFFFE == 0xFFFE && value <= 0x10_FFFF)
}

/// A named reference: the whole name, else its longest known prefix of at least two characters
/// followed by the rest of the name, else the text unchanged (`&` + name).
fn named(name: &str) -> String {
    let table = named_references();
    if let Some(text) = table.get(name) {
        return text.clone();
    }
    let boundaries: Vec<usize> = name.char_indices().map(|(i, _)| i).collect();
    for &cut in boundaries.iter().skip(2).rev() {
        if let Some(text) = table.get(&name[..cut]) {
            return format!("{text}{}", &name[cut..]);
        }
    }
    format!("&{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_like_python() {
        // Expected values from Python 3.11 `html.unescape`.
        let cases = [
            ("no entities", "no entities"),
            ("&amp;lt;", "&lt;"),
            ("&ampx &AMP; &lt &LT;x", "&x & < <x"),
            ("&notit; &notin;", "¬it; ∉"),
            ("&#65;&#x42;&#X43;&#0068 &#x45z", "ABCD Ez"),
            ("&#;&#x;&#xZ", "&#;&#x;&#xZ"),
            (
                "&#0;&#13;&#128;&#1;&#xD800;&#x110000;",
                "\u{FFFD}\r\u{20AC}\u{FFFD}\u{FFFD}",
            ),
            ("&#xFFFE;&#x10FFFF;&#x1FFFF;", ""),
            ("&nosuchentity; &; & &&amp;", "&nosuchentity; &; & &&"),
            ("&fjlig;", "fj"),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape(input), expected, "unescape({input:?})");
        }
    }

    #[test]
    fn ftfy_unescapes_only_unambiguous_references() {
        // Expected values from ftfy 6.3.1's `unescape_html` (its docstring and test_entities).
        let cases = [
            ("&lt;tag&gt;", "<tag>"),
            ("&Jscr;ohn &HilbertSpace;ancock", "𝒥ohn ℋancock"),
            ("P&EACUTE;REZ", "PÉREZ"),
            ("BUNDESSTRA&SZLIG;E", "BUNDESSTRASSE"),
            ("&ntilde; &Ntilde; &NTILDE; &nTILDE;", "ñ Ñ Ñ &nTILDE;"),
            ("euro &#x80;", "euro €"),
            ("not an entity &#20x6;", "not an entity &#20x6;"),
            ("&#xffff;", ""),
            ("&#xffffffff;", "\u{fffd}"),
            ("&#59; &amp &not that", "&#59; &amp &not that"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                unescape_entities(input),
                expected,
                "unescape_entities({input:?})"
            );
        }
    }

    #[test]
    fn names_are_capped_at_32_characters() {
        let long = format!("&{};", "a".repeat(40));
        assert_eq!(unescape(&long), long);
    }
}
