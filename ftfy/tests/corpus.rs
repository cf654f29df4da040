//! `fix_text` against ftfy 6.3.1 itself: every case of `$T2V_FIXTURES/ftfy_corpus.jsonl`
//! (written by `pipeline/parity/ftfy_corpus.py` from the committed corpus in `tests/corpus/`
//! plus generated mojibake and random strings) must come out identical.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Root of the reference fixtures (`make fixtures`); `T2V_FIXTURES` overrides the default
/// `<workspace>/build/fixtures`, as for the pipeline's parity tests.
fn fixtures_root() -> PathBuf {
    std::env::var_os("T2V_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../build/fixtures"))
}

struct Case {
    source: String,
    input: String,
    expected: String,
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} — run `make fixtures` (writes it with Python's ftfy)",
            path.display()
        )
    });
    text.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn field(row: &Value, name: &str) -> String {
    row[name]
        .as_str()
        .unwrap_or_else(|| panic!("a corpus row without string field {name:?}"))
        .to_string()
}

fn reference_cases() -> Vec<Case> {
    read_jsonl(&fixtures_root().join("ftfy_corpus.jsonl"))
        .iter()
        .map(|row| Case {
            source: field(row, "source"),
            input: field(row, "input"),
            expected: field(row, "expected"),
        })
        .collect()
}

/// Code points past printable ASCII as `\u{…}`, so differences in invisible characters show.
fn escaped(text: &str) -> String {
    const SHOWN: usize = 300;
    let mut out: String = text
        .chars()
        .take(SHOWN)
        .map(|c| match c {
            ' '..='~' => c.to_string(),
            c => format!("\\u{{{:x}}}", c as u32),
        })
        .collect();
    if text.chars().count() > SHOWN {
        out.push_str(&format!("… ({} characters)", text.chars().count()));
    }
    out
}

#[test]
fn fix_text_matches_ftfy_on_the_whole_corpus() {
    let cases = reference_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let ours = t2v_ftfy::fix_text(&case.input);
        if ours != case.expected {
            failures.push(format!(
                "[{}]\n   input:    {}\n   expected: {}\n   ours:     {}",
                case.source,
                escaped(&case.input),
                escaped(&case.expected),
                escaped(&ours)
            ));
        }
    }
    let changed = cases.iter().filter(|c| c.input != c.expected).count();
    println!(
        "ftfy corpus: {} of {} cases identical to ftfy 6.3.1 ({changed} of them changed by fix_text)",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from ftfy 6.3.1; the first ones:\n{}",
        failures.len(),
        cases.len(),
        failures
            .iter()
            .take(15)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        cases.len() > 10_000,
        "the corpus has shrunk to {} cases",
        cases.len()
    );
}

#[test]
fn the_fixture_covers_the_committed_corpus() {
    let in_fixture: HashSet<String> = reference_cases().into_iter().map(|c| c.input).collect();
    let corpus_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus_dir)
        .expect("tests/corpus exists")
        .map(|entry| entry.expect("a readable entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus files in {}",
        corpus_dir.display()
    );
    for file in files {
        for row in read_jsonl(&file) {
            let input = field(&row, "input");
            assert!(
                in_fixture.contains(&input),
                "{}: input {} is not in the fixture — it predates this corpus; delete \
                 build/fixtures/.ftfy_corpus.py.sha and run `make fixtures`",
                file.display(),
                escaped(&input)
            );
        }
    }
}
