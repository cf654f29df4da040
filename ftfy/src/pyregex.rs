//! Python `re` pieces rebuilt for the `regex` crate. ftfy writes its character classes as
//! strings of characters with `a-b` ranges; `\s`, `\w` and `\d` follow Python's `str` methods
//! in the reference's Unicode version, which differ from the `regex` crate's Unicode classes
//! (Python's `\w` has no combining marks, its `\s` includes U+001C..U+001F).

use crate::tables;

/// A `[...]` class holding every character of `parts` (concatenated as the reference does), a
/// `-` between two characters making a range. Each character is written as an escape, so no
/// character of the data can act as class syntax.
pub fn class(parts: &[&str]) -> String {
    let chars: Vec<char> = parts.concat().chars().collect();
    let mut out = String::from("[");
    let mut i = 0;
    while i < chars.len() {
        out.push_str(&escape(chars[i]));
        if chars.get(i + 1) == Some(&'-') && i + 2 < chars.len() {
            out.push('-');
            out.push_str(&escape(chars[i + 2]));
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push(']');
    out
}

/// `c` as a `regex` escape.
fn escape(c: char) -> String {
    format!("\\x{{{:X}}}", c as u32)
}

/// A literal string as a `regex` sequence of escapes.
pub fn literal(text: &str) -> String {
    text.chars().map(escape).collect()
}

/// Python's `\s` (`str.isspace`).
pub fn space() -> String {
    format!("[{}]", tables::PY_SPACE_CLASS)
}

/// Python's `\w` (`str.isalnum` or `_`).
pub fn word() -> String {
    format!("[{}]", tables::PY_WORD_CLASS)
}

/// Python's `\d` (decimal digits).
pub fn digit() -> String {
    format!("[{}]", tables::PY_DIGIT_CLASS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn classes_keep_ranges_and_literal_dashes() {
        let re = Regex::new(&format!("^{}$", class(&["a-c", "x-"]))).unwrap();
        for ok in ["a", "b", "c", "x", "-"] {
            assert!(re.is_match(ok), "{ok}");
        }
        assert!(!re.is_match("d"));
    }

    #[test]
    fn python_classes_differ_from_the_regex_crates_where_python_does() {
        let space = Regex::new(&format!("^{}$", space())).unwrap();
        assert!(
            space.is_match("\u{1c}") && space.is_match("\u{85}") && !space.is_match("\u{200b}")
        );
        let word = Regex::new(&format!("^{}$", word())).unwrap();
        assert!(word.is_match("_") && word.is_match("é") && word.is_match("²"));
        assert!(
            !word.is_match("\u{301}"),
            "combining marks are not \\w in Python"
        );
        let digit = Regex::new(&format!("^{}$", digit())).unwrap();
        assert!(digit.is_match("٣") && !digit.is_match("²"));
    }
}
