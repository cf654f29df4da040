"""Reference outputs of ftfy.fix_text (ftfy 6.3.1, default configuration) for t2v-ftfy,
compared by ftfy/tests/corpus.rs.

Writes ROOT/ftfy_corpus.jsonl, one {"source", "input", "expected"} object per line, for:
  - every input of the committed corpus, ftfy/tests/corpus/*.jsonl (ftfy's own test cases and
    prompts written for this test: many scripts, emoji, controls, HTML, widths, mojibake);
  - mojibake generated from the corpus's non-ASCII text (seeded): UTF-8 read as each single-byte
    codec ftfy knows and several it does not, double and triple encodings, mojibake of one word
    inside correct text, no-break spaces turned into spaces, lossy decodings with U+FFFD, CESU-8;
  - random strings over the characters ftfy's heuristics look at, some with any code point
    (seeded);
  - long lines that cross max_decode_length, and multi-line text mixing all of the above.

Usage: python pipeline/parity/ftfy_corpus.py --out ROOT
"""

import argparse
import json
import os
import random
from pathlib import Path

import ftfy

CORPUS_DIR = Path(__file__).resolve().parents[2] / "ftfy" / "tests" / "corpus"
SEED = 20240607

# Codecs mojibake comes from: UTF-8 bytes read as one of these.
MOJIBAKE_CODECS = [
    "latin-1",
    "sloppy-windows-1252",
    "sloppy-windows-1251",
    "sloppy-windows-1250",
    "sloppy-windows-1253",
    "sloppy-windows-1254",
    "sloppy-windows-1257",
    "iso-8859-2",
    "macroman",
    "cp437",
    "windows-1252",
    "cp850",
    "koi8-r",
    "windows-1256",
    "iso-8859-15",
]
# Legacy encodings text may have been written in before being read as UTF-8.
LEGACY_CODECS = ["latin-1", "windows-1251", "windows-1252", "shift_jis", "gbk", "euc-kr", "cp437"]


def load_corpus():
    rows = []
    for path in sorted(CORPUS_DIR.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                rows.append((f"{path.name}: {row['source']}", row["input"]))
    return rows


def mojibake(text, codec, errors="replace"):
    return text.encode("utf-8").decode(codec, errors=errors)


def cesu8(text):
    out = bytearray()
    for c in text:
        if ord(c) < 0x10000:
            out += c.encode("utf-8")
        else:
            for unit in c.encode("utf-16-be", "surrogatepass").hex(" ", 2).split():
                out += chr(int(unit, 16)).encode("utf-8", "surrogatepass")
    return bytes(out)


def generated_mojibake(texts, rng):
    cases = []
    for text in texts:
        for codec in MOJIBAKE_CODECS:
            cases.append((f"utf-8 as {codec}", mojibake(text, codec)))
        codec = rng.choice(MOJIBAKE_CODECS[:10])
        once = mojibake(text, codec)
        cases.append((f"utf-8 as {codec}, twice", mojibake(once, codec)))
        twice = mojibake(mojibake(text, "sloppy-windows-1252"), "sloppy-windows-1252")
        cases.append(("utf-8 as sloppy-windows-1252, three times", mojibake(twice, "sloppy-windows-1252")))
        cases.append((f"utf-8 as {codec}, no-break spaces as spaces", once.replace("\xa0", " ")))
        cases.append(("utf-8 as windows-1252 with U+FFFD", mojibake(text, "windows-1252", "replace")))
        cases.append(("utf-8 as windows-1252, undefined bytes dropped", mojibake(text, "windows-1252", "ignore")))
        cases.append(("cesu-8 as sloppy-windows-1252", cesu8(text).decode("sloppy-windows-1252")))
        cut = rng.randrange(len(once) + 1)
        cases.append((f"utf-8 as {codec}, cut", once[:cut]))
        words = text.split(" ")
        i = rng.randrange(len(words))
        words[i] = mojibake(words[i], rng.choice(MOJIBAKE_CODECS[:10]))
        cases.append(("one word of mojibake", " ".join(words)))
        legacy = rng.choice(LEGACY_CODECS)
        try:
            cases.append((f"{legacy} read as utf-8", text.encode(legacy).decode("utf-8", "replace")))
        except UnicodeEncodeError:
            pass
    return cases


def interesting_chars():
    """Characters the heuristics and codecs care about, plus some ordinary ones."""
    chars = set()
    for codec in ["latin-1", "windows-1252", "windows-1251", "windows-1250", "windows-1253",
                  "windows-1254", "windows-1257", "iso-8859-2", "macroman", "cp437"]:
        chars.update(bytes(range(0x80, 0x100)).decode(codec, errors="ignore"))
    chars.update("abcxyzAQZ019 .,?!;:'\"&#<>-_\n\r\t\x1a\x1b\x1c\x1f[m١\u0301\ufffd\u2028\u3000ﬁＡｱ😀日本")
    return sorted(chars)


def any_char(rng):
    """Any code point but a surrogate, weighted towards combining marks and newer planes, so
    characters the reference's Unicode version does not assign come up too."""
    while True:
        code = rng.choice([
            rng.randrange(0x80, 0x800),
            rng.randrange(0x300, 0x370),
            rng.randrange(0x800, 0x10000),
            rng.randrange(0x10000, 0x32000),
            rng.randrange(0xE0000, 0xE0080),
        ])
        if not 0xD800 <= code <= 0xDFFF:
            return chr(code)


def random_strings(rng, count):
    pool = interesting_chars()
    cases = [
        ("random", "".join(rng.choice(pool) for _ in range(rng.randint(1, 12))))
        for _ in range(count)
    ]
    cases += [
        ("random, any code point", "".join(
            rng.choice(pool) if rng.random() < 0.7 else any_char(rng) for _ in range(rng.randint(1, 25))
        ))
        for _ in range(count // 3)
    ]
    return cases


def long_cases(texts, rng):
    """Lines longer than max_decode_length (1,000,000 characters) and many-line text."""
    limit = 1_000_000
    filler = "a quiet lake at dawn, "
    body = (filler * (limit // len(filler) + 1))[: limit - 3]
    moji = mojibake("été à Paris", "sloppy-windows-1252")
    across = body + moji + " and more"
    # "Ã©" cut in two by the limit: each half is left alone, so the mojibake stays.
    split = body[:2] + body[: limit - 3] + "Ã©tÃ©" + " fin"
    lines = [rng.choice(texts) for _ in range(200)]
    lines = [mojibake(t, "sloppy-windows-1252") if i % 3 == 0 else t for i, t in enumerate(lines)]
    return [
        ("long line, mojibake across the segment limit", across),
        ("long line, a mojibake pair split by the segment limit", split),
        ("long line of mojibake", mojibake("Привет, мир! ", "sloppy-windows-1252") * 20_000),
        ("many lines, some mojibake", "\n".join(lines)),
        ("many lines, html after a tag line", "&amp;\n<p>\n&amp;\n" + "\n".join(lines[:20])),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    assert ftfy.__version__ == "6.3.1", f"the reference is ftfy 6.3.1, found {ftfy.__version__}"
    rng = random.Random(SEED)

    corpus = load_corpus()
    texts = [text for _, text in corpus if any(ord(c) > 0x7F for c in text) and len(text) < 400]
    cases = corpus + generated_mojibake(texts, rng) + random_strings(rng, 3000) + long_cases(texts, rng)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "ftfy_corpus.jsonl")
    changed = 0
    with open(path, "w", encoding="utf-8") as f:
        for source, text in cases:
            expected = ftfy.fix_text(text)
            changed += expected != text
            row = {"source": source, "input": text, "expected": expected}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"ftfy_corpus: {len(cases)} cases ({changed} changed by fix_text) -> {path}")


if __name__ == "__main__":
    main()
