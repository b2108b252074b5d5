#!/usr/bin/env python3
"""Reference figures for decodex's corpus BLEU and chrF, from sacreBLEU 2.4.3.

Writes tests/fixtures/bleu/: hypothesis and reference files for each pair (copies of the data
lines they use, so the tests need no data folder) and expected.json, sacreBLEU's figures for each
pair: BLEU cased and lowercased (score, precisions, counts, totals, bp, sys_len, ref_len,
signature, summary line), chrF (score, signature, summary line), every float also as its IEEE-754
bits (`f64_bits`), and the 13a tokenization of every line of the small pairs.

Files are read the way the `sacrebleu` command reads them: UTF-8, lines split on "\\n" only,
each line right-stripped (Python's `str.rstrip`).

Usage: DECODEX_DATA=/path/to/shared/data python3 scripts/gen_bleu_fixture.py
(DECODEX_DATA defaults to ../shared/data next to the repository.)
Needs: pip install sacrebleu==2.4.3
"""
import json
import os
import pathlib
import random
import struct
import unicodedata

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

assert sacrebleu.__version__ == "2.4.3", sacrebleu.__version__

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "bleu"
DATA = pathlib.Path(os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data")))


def read_lines(path):
    """Lines of `path` as the sacrebleu command reads them (sacrebleu.py, `smart_open`)."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip() for line in f]


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))


def strip_accents(s):
    return "".join(c for c in unicodedata.normalize("NFD", s) if not unicodedata.combining(c))


def perturb(line, rng, vocab, p_empty=0.06):
    """A system-like copy of `line`: some words dropped, replaced, swapped or re-cased, some
    final periods lost, and a few lines emptied."""
    if rng.random() < p_empty:
        return ""
    words = line.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < 0.08:
            continue  # dropped
        if r < 0.15:
            w = rng.choice(vocab)  # replaced
        elif r < 0.19:
            w = w.upper() if rng.random() < 0.5 else w.lower()  # re-cased: lowercase BLEU differs
        elif r < 0.21:
            w = w + "," if not w.endswith(",") else w[:-1]
        out.append(w)
    for i in range(len(out) - 1):
        if rng.random() < 0.05:
            out[i], out[i + 1] = out[i + 1], out[i]  # swapped with the next word
    s = " ".join(out)
    if s.endswith(".") and rng.random() < 0.2:
        s = s[:-1]
    if rng.random() < 0.05:
        s = s + " " + rng.choice(vocab)  # an extra word: some hypotheses are longer
    return s


def multi30k_lines(n, start=0, step=5):
    lines = read_lines(DATA / "mt" / "multi30k" / "test2016.en")
    return [lines[i] for i in range(start, len(lines), step)][:n]


def french_lines():
    """French side of eng-fra: 60 sentences with a narrow no-break space (U+202F before ! ? ;
    :), 60 with a no-break space (U+00A0) or accents, every one from a fixed stride."""
    pairs = read_lines(DATA / "mt" / "eng-fra" / "eng-fra.txt")
    fr = [p.split("\t")[1] for p in pairs]
    nnbsp = [s for s in fr if "\u202f" in s][::90][:60]
    other = [s for s in fr if "\u202f" not in s and ("\u00a0" in s or strip_accents(s) != s)]
    other = [s for s in other if len(s) > 30][::400][:60]
    return [s for pair in zip(nnbsp, other) for s in pair]


def perturb_french(line, rng, vocab):
    s = perturb(line, rng, vocab)
    r = rng.random()
    if r < 0.2:
        s = s.replace("\u202f", " ")  # ASCII space instead of U+202F
    elif r < 0.35:
        s = s.replace("\u202f", "")  # "Cours!" glued
    if rng.random() < 0.15:
        s = strip_accents(s)
    return s


# Every 13a rule: entities (and the order they are unescaped in), <skipped>, the punctuation
# class, period and comma next to digits or not, dash after a digit, runs of punctuation, lines
# of punctuation only, and whitespace that Python splits on.
ENTITIES_REF = [
    "He said &quot;hello&quot; &amp; left.",
    "Prices: $5.00, 1,000 items, 3.14 pi; ratio 1:2 (approx.)",
    "Use &lt;b&gt; tags &amp;amp; entities like &amp;quot; or &apos;.",
    "Pages 10-12 and 3-4, but not well-known or x-ray.",
    "What?! No... really!!! (yes) [no] {maybe} <tag> @user #hash 50% ^caret_ `tick` ~tilde |pipe",
    "...",
    "!!! ??? ,,, ;;;",
    "e.g. i.e. etc. U.S.A. 2.5. 1,2,3 a,b,c .5 ,5 5. 5, x.y",
    "<skipped> The segment was <skipped> partly skipped.",
    "Tab\tseparated\x1ffields\x1cand\u2028separators\u3000here.",
    "A dash-after-digit: 2024-01-05, 7- and -7 and 7 - 8.",
    "Quote's apostrophe isn't split; 'single' quotes stay.",
    "",
    "\"Double\" quotes, 'single' ones, and /slashes/ and back\\slashes.",
    "Final period.",
]
ENTITIES_HYP = [
    "He said \"hello\" & left .",
    "Prices : $5.00 , 1,000 items , 3.14 pi ; ratio 1 : 2 (approx.)",
    "Use <b> tags &amp; entities like &quot; or &apos;.",
    "Pages 10 - 12 and 3-4 , but not well-known or x-ray.",
    "What ? ! No ... really ! ! ! (yes) [no] {maybe} &lt;tag&gt; @user #hash 50 % ^caret_ `tick`",
    ". . .",
    "!!!???,,,;;;",
    "e.g. i.e. etc. U.S.A. 2.5 . 1,2,3 a, b, c .5 , 5 5 . 5 , x.y",
    "The segment was partly skipped.",
    "Tab separated\x1ffields\x1cand separators here.",
    "A dash-after-digit : 2024 - 01 - 05 , 7 - and -7 and 7 - 8 .",
    "Quote 's apostrophe isn't split; 'single' quotes stay.",
    "-",
    "&quot;Double&quot; quotes, 'single' ones, and / slashes / and back \\ slashes.",
    "Final period",
]

# Unicode: German umlauts and ß/ẞ, French with U+202F and U+00A0, CJK (no spaces), emoji with
# modifiers and ZWJ, Greek final sigma and Turkish dotted I (lowercasing), RTL script, combining
# marks, a BOM-like U+FEFF inside a line.
UNICODE_REF = [
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "Die Straße ist groß; GROẞE Füße gehen über Brücken.",
    "Vous venez\u202f? Oui\u202f! C'est l'été\u00a0: très chaud.",
    "我们今天去公园散步，天气很好。",
    "東京は日本の首都です。人口は約1400万人です。",
    "Emoji test 😀 👍🏽 👨‍👩‍👧 🇫🇷 done.",
    "ΟΔΟΣ ΚΑΙ ΣΟΦΙΑ. Η Σοφία λέει: «καλημέρα».",
    "İstanbul'da IŞIK var; ıslak İNCİR.",
    "مرحبا بالعالم، كيف حالك؟",
    "Cafe\u0301 crème brûlée naïve coöperate.",
    "Zero\u200bwidth space and \ufeffBOM inside.",
    "한국어 문장도 있습니다.",
]
UNICODE_HYP = [
    "Über den Wolken muss die Freiheit grenzenlos sein.",
    "Die Strasse ist gross; große Füsse gehen über Brücken.",
    "Vous venez ? Oui! C'est l'ete : très chaud.",
    "我们今天去公园散步，天气不错。",
    "東京は日本の首都です。人口は1400万人です。",
    "Emoji test 😀 👍 👨‍👩‍👧 🇫🇷 done!",
    "ΟΔΟΣ και σοφια. Η ΣΟΦΙΑ λέει: «Καλημέρα».",
    "istanbul'da ışık var; ISLAK incir.",
    "مرحبا بالعالم كيف حالك ؟",
    "Café crème brulee naive cooperate.",
    "Zero width space and BOM inside.",
    "한국어 문장이 있습니다.",
]

# Lines of three tokens or fewer: no 4-gram is ever hypothesised, so BLEU is 0 (sacreBLEU stops
# at the first order with no n-grams), while chrF is not.
SHORT_REF = ["A dog runs", "Two cats", "Hello", "Red ball here", "", "Go!"]
SHORT_HYP = ["A dog runs", "Two cats", "Hi", "A red ball", "Oops", "Go!"]


def bits(x):
    """The IEEE-754 bits of `x` as an integer: JSON readers need not round decimals correctly
    (serde_json without `float_roundtrip` can be one ulp off), integers they read exactly."""
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def bleu_figures(metric, hyps, refs):
    s = metric.corpus_score(hyps, refs)
    return {
        "score": s.score,
        "precisions": s.precisions,
        "counts": [int(c) for c in s.counts],
        "totals": [int(t) for t in s.totals],
        "bp": s.bp,
        "sys_len": s.sys_len,
        "ref_len": s.ref_len,
        "signature": str(metric.get_signature()),
        "line": str(s),
        "f64_bits": {
            "score": bits(s.score),
            "bp": bits(s.bp),
            "precisions": [bits(p) for p in s.precisions],
        },
    }


def chrf_figures(hyps, refs):
    metric = CHRF()
    s = metric.corpus_score(hyps, refs)
    return {
        "score": s.score,
        "signature": str(metric.get_signature()),
        "line": str(s),
        "f64_bits": {"score": bits(s.score)},
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = {}  # name -> (hyp lines, [ref lines per reference], keep 13a tokenization)

    ref = multi30k_lines(200)
    vocab = sorted({w for line in ref for w in line.split()})
    rng = random.Random(30)
    pairs["multi30k_perturbed"] = ([perturb(s, rng, vocab) for s in ref], [ref], False)

    pairs["multi30k_perfect"] = (multi30k_lines(60, start=3), [multi30k_lines(60, start=3)], False)

    ref = multi30k_lines(150, start=1)
    rng = random.Random(2)
    hyp = [perturb(s, rng, vocab, p_empty=0.0) for s in ref]
    ref2 = [perturb(s, rng, vocab, p_empty=0.1) for s in ref]  # some second references empty
    pairs["multi30k_two_refs"] = (hyp, [ref, ref2], False)

    # Scrambled word order: unigrams and bigrams match, few longer n-grams do, so the exp
    # smoothing of orders without a match matters.
    ref = multi30k_lines(6, start=2)
    rng = random.Random(7)
    hyp = []
    for s in ref:
        w = s.split()
        rng.shuffle(w)
        hyp.append(" ".join(w[: max(1, len(w) - 2)]))
    pairs["multi30k_scrambled"] = (hyp, [ref], False)

    ref = french_lines()
    fvocab = sorted({w for line in ref for w in line.split()})
    rng = random.Random(1789)
    pairs["eng_fra_french"] = ([perturb_french(s, rng, fvocab) for s in ref], [ref], True)

    ref = multi30k_lines(40, start=4)
    rng = random.Random(11)
    hyp = [perturb(s, rng, vocab) for s in ref]
    for i in range(0, 40, 4):
        hyp[i] = ""  # empty hypothesis
    for i in range(1, 40, 5):
        ref[i] = ""  # empty reference
    for i in (6, 13, 26, 33):
        hyp[i] = ref[i] = ""  # both empty
    pairs["empty_lines"] = (hyp, [ref], True)

    pairs["all_empty"] = ([""] * 5, [[""] * 5], True)
    pairs["short_lines"] = (SHORT_HYP, [SHORT_REF], True)
    pairs["unicode"] = (UNICODE_HYP, [UNICODE_REF], True)
    pairs["entities_punct"] = (ENTITIES_HYP, [ENTITIES_REF], True)

    tok = Tokenizer13a()
    expected = {"sacrebleu_version": sacrebleu.__version__, "pairs": {}}
    for name, (hyp, refs, keep_tokens) in pairs.items():
        hyp_file = f"{name}.hyp"
        ref_files = [f"{name}.ref" if k == 0 else f"{name}.ref{k + 1}" for k in range(len(refs))]
        write_lines(OUT / hyp_file, hyp)
        for f, r in zip(ref_files, refs):
            write_lines(OUT / f, r)
        # Score what was written, read back as the sacrebleu command reads it.
        hyp = read_lines(OUT / hyp_file)
        refs = [read_lines(OUT / f) for f in ref_files]
        assert all(len(r) == len(hyp) for r in refs), name
        entry = {
            "hyp": hyp_file,
            "refs": ref_files,
            "lines": len(hyp),
            "bleu": bleu_figures(BLEU(), hyp, refs),
            "bleu_lowercase": bleu_figures(BLEU(lowercase=True), hyp, refs),
            "chrf": chrf_figures(hyp, refs),
        }
        if keep_tokens:
            entry["tok_13a"] = {
                "hyp": [tok(s) for s in hyp],
                "refs": [[tok(s) for s in r] for r in refs],
            }
        expected["pairs"][name] = entry
        print(f"{name:20s} {entry['bleu']['line']}  {entry['chrf']['line']}")
    with open(OUT / "expected.json", "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
