//! Unicode normalization as the reference's `unicodedata` does it. `unicode-normalization`
//! carries a newer Unicode version than the reference (`tables::UNICODE_VERSION`); normalization
//! is stable for characters both versions assign, so the only differences are characters the
//! reference does not know: to it they have no decomposition, combining class 0 and compose with
//! nothing, so they split the text into runs that are normalized apart and copied through as is.

use unicode_normalization::UnicodeNormalization;

use crate::tables;

/// The normalization form applied last (ftfy's `normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalization {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
}

/// `unicodedata.normalize(form, text)` in the reference's Unicode version.
pub fn normalize(text: &str, form: Normalization) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run_start = 0;
    for (at, c) in text.char_indices() {
        if !is_assigned(c) {
            push_normalized(&mut out, &text[run_start..at], form);
            out.push(c);
            run_start = at + c.len_utf8();
        }
    }
    push_normalized(&mut out, &text[run_start..], form);
    out
}

fn push_normalized(out: &mut String, run: &str, form: Normalization) {
    match form {
        Normalization::Nfc => out.extend(run.nfc()),
        Normalization::Nfd => out.extend(run.nfd()),
        Normalization::Nfkc => out.extend(run.nfkc()),
        Normalization::Nfkd => out.extend(run.nfkd()),
    }
}

/// Whether the reference's Unicode version assigns `c`.
fn is_assigned(c: char) -> bool {
    let code = c as u32;
    tables::ASSIGNED
        .binary_search_by(|&(lo, hi)| {
            if hi < code {
                std::cmp::Ordering::Less
            } else if lo > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_what_both_versions_know() {
        assert_eq!(normalize("e\u{301}", Normalization::Nfc), "é");
        assert_eq!(
            normalize("한", Normalization::Nfd),
            "\u{1112}\u{1161}\u{11ab}"
        );
        assert_eq!(normalize("ﬁ²", Normalization::Nfkc), "fi2");
    }

    #[test]
    fn characters_newer_than_the_reference_pass_through() {
        // Kirat Rai (Unicode 16): U+16D63 U+16D67 composes to U+16D69 in the crate's data, but
        // the reference (Unicode 14) does not know these characters and leaves them as they are.
        assert!(tables::UNICODE_VERSION < unicode_normalization::UNICODE_VERSION);
        let kirat_rai = "\u{16d63}\u{16d67}";
        assert_eq!(kirat_rai.nfc().collect::<String>(), "\u{16d69}");
        assert_eq!(normalize(kirat_rai, Normalization::Nfc), kirat_rai);
        assert_eq!(normalize("\u{16d69}", Normalization::Nfd), "\u{16d69}");
    }
}
