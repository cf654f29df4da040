//! ftfy's mojibake heuristic (`badness.is_bad`): text is "bad" when it holds a juxtaposition of
//! characters that almost only happens when UTF-8 was decoded with a single-byte codec —
//! C1 controls, accented letters next to currency signs, box drawing next to letters, and a
//! list of sequences specific to each code page. The categories are the reference's data
//! (`tables::MOJIBAKE_*`); the alternatives below are its pattern, one per line.

use std::sync::LazyLock;

use regex::Regex;

use crate::pyregex::{class, literal, space, word};
use crate::tables::{
    MOJIBAKE_BAD as BAD, MOJIBAKE_BOX as BOX, MOJIBAKE_C1 as C1, MOJIBAKE_COMMON as COMMON,
    MOJIBAKE_CURRENCY as CURRENCY, MOJIBAKE_END_PUNCTUATION as END_PUNCT,
    MOJIBAKE_KAOMOJI as KAOMOJI, MOJIBAKE_LAW as LAW, MOJIBAKE_LOWER_ACCENTED as LOWER_ACC,
    MOJIBAKE_LOWER_COMMON as LOWER_COMMON, MOJIBAKE_NUMERIC as NUMERIC,
    MOJIBAKE_START_PUNCTUATION as START_PUNCT, MOJIBAKE_UPPER_ACCENTED as UPPER_ACC,
    MOJIBAKE_UPPER_COMMON as UPPER_COMMON,
};

/// True when `text` looks like it contains mojibake.
pub fn is_bad(text: &str) -> bool {
    static BADNESS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(&badness_pattern()).expect("the badness pattern compiles"));
    BADNESS.is_match(text)
}

fn badness_pattern() -> String {
    let (s, w) = (space(), word());
    let arabic = class(&[COMMON, CURRENCY, BAD, NUMERIC, START_PUNCT, "ŸŠ®°µ»"]);
    let alternatives = [
        class(&[C1]),
        class(&[
            BAD,
            LOWER_ACC,
            UPPER_ACC,
            BOX,
            START_PUNCT,
            END_PUNCT,
            CURRENCY,
            NUMERIC,
            LAW,
        ]) + &class(&[BAD]),
        class(&["a-zA-Z"]) + &class(&[LOWER_COMMON, UPPER_COMMON]) + &class(&[BAD]),
        class(&[BAD])
            + &class(&[
                LOWER_ACC,
                UPPER_ACC,
                BOX,
                START_PUNCT,
                END_PUNCT,
                CURRENCY,
                NUMERIC,
                LAW,
            ]),
        class(&[LOWER_ACC, LOWER_COMMON, BOX, END_PUNCT, CURRENCY, NUMERIC]) + &class(&[UPPER_ACC]),
        class(&[BOX, END_PUNCT, CURRENCY, NUMERIC]) + &class(&[LOWER_ACC]),
        class(&[LOWER_ACC, BOX, END_PUNCT]) + &class(&[CURRENCY]),
        s.clone() + &class(&[UPPER_ACC]) + &class(&[CURRENCY]),
        class(&[UPPER_ACC, BOX]) + &class(&[NUMERIC, LAW]),
        class(&[LOWER_ACC, UPPER_ACC, BOX, CURRENCY, END_PUNCT])
            + &class(&[START_PUNCT])
            + &class(&[NUMERIC]),
        class(&[LOWER_ACC, UPPER_ACC, CURRENCY, NUMERIC, BOX, LAW])
            + &class(&[END_PUNCT])
            + &class(&[START_PUNCT]),
        class(&[CURRENCY, NUMERIC, BOX]) + &class(&[START_PUNCT]),
        class(&["a-z"]) + &class(&[UPPER_ACC]) + &class(&[START_PUNCT, CURRENCY]),
        class(&[BOX]) + &class(&[KAOMOJI]),
        class(&[
            LOWER_ACC,
            UPPER_ACC,
            CURRENCY,
            NUMERIC,
            START_PUNCT,
            END_PUNCT,
            LAW,
        ]) + &class(&[BOX]),
        class(&[BOX]) + &class(&[END_PUNCT]),
        class(&[LOWER_ACC, UPPER_ACC]) + &class(&[START_PUNCT, END_PUNCT]) + &w,
        // œ not followed by an unaccented Latin letter
        class(&["Œœ"]) + "[^A-Za-z]",
        // a degree sign after a capital letter
        class(&[UPPER_ACC]) + &literal("°"),
        // two-character Windows-1252 mojibake the lines above miss
        class(&["ÂÃÎÐ"]) + &class(&["€œŠš¢£Ÿž\u{a0}\u{ad}®©°·»", START_PUNCT, END_PUNCT, "–—´"]),
        literal("×") + &class(&["²³"]),
        // Windows-1252 mojibake of Arabic, which needs four characters to be sure
        class(&["ØÙ"]) + &arabic + &class(&["ØÙ"]) + &arabic,
        // the start of three-character sequences of some South Asian scripts
        literal("à") + &class(&["²µ¹¼½¾"]),
        // MacRoman
        literal("√") + &class(&["±∂†≠®™´≤≥¥µø"]),
        literal("≈") + &class(&["°¢"]),
        literal("‚Ä") + &class(&["ìîïòôúùû†°¢π"]),
        literal("‚") + &class(&["âó"]) + &class(&["àä°ê"]),
        // Windows-1251 mojibake of U+2000..U+206F
        literal("вЂ"),
        // Windows-1251 mojibake of Latin-1 or Cyrillic, three characters
        class(&["ВГРС"])
            + &class(&[C1, BAD, START_PUNCT, END_PUNCT, CURRENCY, "°µ"])
            + &class(&["ВГРС"]),
        // Windows-1251 on top of Latin-1 mojibake of Windows-1252, near a Latin letter
        literal("ГўВЂВ") + "." + &class(&["A-Za-z "]),
        // Windows-1252 encodings of à, á and a no-break space
        literal("Ã") + &class(&["\u{a0}¡"]),
        class(&["a-z"]) + &s + "?" + &class(&["ÃÂ"]) + &class(&[" "]),
        "^".to_string() + &class(&["ÃÂ"]) + &class(&[" "]),
        // Â encoding the very character that follows it
        class(&["a-z.,?!", END_PUNCT]) + &literal("Â") + &class(&[" ", START_PUNCT, END_PUNCT]),
        // Windows-1253 mojibake of U+2000..U+206F
        literal("β€") + &class(&["™\u{a0}Ά\u{ad}®°"]),
        // Windows-1253 mojibake of Latin-1 or Greek, three characters
        class(&["ΒΓΞΟ"])
            + &class(&[C1, BAD, START_PUNCT, END_PUNCT, CURRENCY, "°"])
            + &class(&["ΒΓΞΟ"]),
        // Windows-1257 mojibake of U+2000..U+206F
        literal("ā€"),
    ];
    alternatives.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mojibake_is_bad_and_ordinary_text_is_not() {
        for bad in ["sÃ³", "âœ”", "Ã la", "вЂ”", "ÐŸÑ€Ð¸Ð²ÐµÑ‚", "\u{85}"]
        {
            assert!(is_bad(bad), "{bad:?}");
        }
        for good in [
            "só",
            "✔ done",
            "à la carte",
            "Привет",
            "日本語のテキスト",
            "naïve café",
        ] {
            assert!(!is_bad(good), "{good:?}");
        }
    }
}
