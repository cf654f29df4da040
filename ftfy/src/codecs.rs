//! The codecs `fix_encoding` moves text through: ftfy's single-byte codecs (Latin-1, its
//! "sloppy" Windows code pages that map undefined bytes to the same-numbered code point and
//! byte 0x1A to U+FFFD, ISO-8859-2, MacRoman, CP437), strict Windows-1252, and the
//! `utf-8-variants` decoder that also accepts CESU-8 surrogate pairs and Java's `C0 80` NUL.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::tables;

/// A single-byte codec: each byte's character and back.
pub struct Charmap {
    pub name: &'static str,
    decode: [char; 256],
    encode: HashMap<char, u8>,
}

impl Charmap {
    fn new(name: &'static str, table: &str) -> Self {
        let decode: [char; 256] = table
            .chars()
            .collect::<Vec<_>>()
            .try_into()
            .expect("a generated charmap has 256 characters");
        let encode = decode
            .iter()
            .enumerate()
            .map(|(byte, &c)| (c, byte as u8))
            .collect();
        Self {
            name,
            decode,
            encode,
        }
    }

    /// `text.encode(codec)`, or `None` when a character has no byte (the reference's
    /// `possible_encoding` is false for exactly those texts).
    pub fn encode(&self, text: &str) -> Option<Vec<u8>> {
        text.chars().map(|c| self.encode.get(&c).copied()).collect()
    }

    pub fn decode_byte(&self, byte: u8) -> char {
        self.decode[byte as usize]
    }

    pub fn is_sloppy(&self) -> bool {
        self.name.starts_with("sloppy")
    }
}

/// The codecs `fix_encoding` tries, in the reference's order (`CHARMAP_ENCODINGS`).
pub fn charmaps() -> &'static [Charmap] {
    static CHARMAPS: LazyLock<Vec<Charmap>> = LazyLock::new(|| {
        tables::CHARMAPS
            .iter()
            .map(|&(name, table)| Charmap::new(name, table))
            .collect()
    });
    &CHARMAPS
}

/// The codec named `name` among [`charmaps`].
pub fn charmap(name: &str) -> &'static Charmap {
    charmaps()
        .iter()
        .find(|c| c.name == name)
        .expect("a codec of CHARMAP_ENCODINGS")
}

/// `bytes.decode("windows-1252")`: the sloppy table where the code page defines the byte
/// (byte 0x1A is itself there), `None` at a byte Windows-1252 leaves undefined.
pub fn decode_windows_1252(bytes: &[u8]) -> Option<String> {
    let sloppy = charmap("sloppy-windows-1252");
    bytes
        .iter()
        .map(|&b| match b {
            0x1A => Some('\u{1a}'),
            b if tables::WINDOWS_1252_UNDEFINED.contains(&b) => None,
            b => Some(sloppy.decode_byte(b)),
        })
        .collect()
}

/// `bytes.decode("utf-8-variants")`: standard UTF-8, plus a six-byte CESU-8 surrogate pair as
/// the supplementary character and `C0 80` as NUL; `None` where the reference raises.
///
/// Python's `$` in the reference's patterns also matches before a final `\n`, so `C0` or a
/// CESU-8 pair's last byte may "end" right before a closing newline, which is then consumed as
/// part of the sequence: `b"x\xc0\n"` decodes to `"x\0"`. That is kept.
pub fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut pos = 0;
    while pos < bytes.len() {
        let Some(special) = next_special(bytes, pos) else {
            out.push_str(std::str::from_utf8(&bytes[pos..]).ok()?);
            break;
        };
        out.push_str(std::str::from_utf8(&bytes[pos..special]).ok()?);
        let rest = &bytes[special..];
        if rest[0] == 0xC0 {
            if rest.len() == 1 {
                return None;
            }
            out.push('\0');
            pos = special + 2;
        } else {
            out.push(cesu8_pair(bytes, special)?);
            pos = special + 6;
        }
    }
    Some(out)
}

/// Where Python's `$` matches in `bytes`: at the end, or before a final `\n`.
fn at_end(bytes: &[u8], at: usize) -> bool {
    at == bytes.len() || (at + 1 == bytes.len() && bytes[at] == b'\n')
}

/// The next position at or after `from` where the reference stops plain UTF-8 decoding:
/// `C0` followed by `80` or the end, or `ED` followed by `A0..=BF` or the end.
fn next_special(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| {
        let follows = |range: std::ops::RangeInclusive<u8>| {
            at_end(bytes, at + 1) || bytes.get(at + 1).is_some_and(|b| range.contains(b))
        };
        match bytes[at] {
            0xC0 => follows(0x80..=0x80),
            0xED => follows(0xA0..=0xBF),
            _ => false,
        }
    })
}

/// The supplementary character of the CESU-8 pair at `at`, or `None` where the reference
/// raises (fewer than six bytes left, or not a pair).
fn cesu8_pair(bytes: &[u8], at: usize) -> Option<char> {
    let pair = bytes.get(at..at + 6)?;
    // `\xed ([\xa0-\xaf]|$) ([\x80-\xbf]|$) (\xed|$) ([\xb0-\xbf]|$) ([\x80-\xbf]|$)`: with six
    // bytes present, `$` can only match before a final `\n` in the last place.
    let expected: [std::ops::RangeInclusive<u8>; 6] = [
        0xED..=0xED,
        0xA0..=0xAF,
        0x80..=0xBF,
        0xED..=0xED,
        0xB0..=0xBF,
        0x80..=0xBF,
    ];
    let matches = pair
        .iter()
        .zip(&expected)
        .enumerate()
        .all(|(i, (b, range))| range.contains(b) || (i == 5 && at_end(bytes, at + 5)));
    if !matches {
        return None;
    }
    let code = (((pair[1] & 0x0F) as u32) << 16)
        + (((pair[2] & 0x3F) as u32) << 10)
        + (((pair[4] & 0x0F) as u32) << 6)
        + (pair[5] & 0x3F) as u32
        + 0x10000;
    char::from_u32(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charmaps_are_ascii_below_0x80_except_the_sloppy_substitute() {
        for codec in charmaps() {
            for byte in 0u8..0x80 {
                let expected = if byte == 0x1A && codec.is_sloppy() {
                    '\u{fffd}'
                } else {
                    byte as char
                };
                assert_eq!(
                    codec.decode_byte(byte),
                    expected,
                    "{} {byte:#x}",
                    codec.name
                );
            }
        }
    }

    #[test]
    fn utf8_variants_decodes_like_the_reference() {
        // Expected values from ftfy 6.3.1's `utf-8-variants` codec.
        let decode = decode_utf8_variants;
        assert_eq!(
            decode(b"here comes a null! \xc0\x80").unwrap(),
            "here comes a null! \0"
        );
        assert_eq!(decode(b"\xed\xa0\xbd\xed\xb8\x8d").unwrap(), "😍");
        assert_eq!(decode(b"abc\xc0\n").unwrap(), "abc\0");
        assert_eq!(decode("한국어".as_bytes()).unwrap(), "한국어");
        assert_eq!(decode(b"\xed\xa0\xbd"), None);
        assert_eq!(decode(b"\xc0"), None);
        assert_eq!(decode(b"\xc0\x81"), None);
        assert_eq!(decode(b"ok \xed\xa0\x80\xed\xb0"), None);
    }

    #[test]
    fn strict_windows_1252_refuses_undefined_bytes() {
        assert_eq!(decode_windows_1252(b"\x80\x1a").unwrap(), "€\u{1a}");
        assert_eq!(decode_windows_1252(b"\x81"), None);
    }
}
