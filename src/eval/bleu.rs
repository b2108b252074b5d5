//! Corpus BLEU and chrF as sacreBLEU 2.4.3 computes them with its defaults, to the last bit: the
//! `13a` tokenizer (mteval-v13a, `sacrebleu/tokenizers/tokenizer_13a.py`), BLEU over 1- to
//! 4-grams with `exp` smoothing and the closest reference length (`sacrebleu/metrics/bleu.py`),
//! and chrF2 over character 1- to 6-grams with whitespace removed and sacreBLEU's effective-order
//! average (`sacrebleu/metrics/chrf.py`, `eps_smoothing=False`).
//!
//! Both metrics sum integer statistics over the segments first and compute one score from the
//! sums, so a corpus score is not the mean of sentence scores. The floating-point operations are
//! sacreBLEU's, in its order, so the scores agree bit for bit rather than to a tolerance.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// The sacreBLEU release whose figures these functions reproduce; it ends every signature.
pub const SACREBLEU_VERSION: &str = "2.4.3";
/// BLEU's n-gram orders: precisions of 1- to 4-grams.
pub const MAX_NGRAM_ORDER: usize = 4;
/// chrF's character n-gram orders: 1 to 6.
pub const CHAR_ORDER: usize = 6;
/// chrF's β: recall weighs β² = 4 times as much as precision (chrF2).
pub const BETA: u32 = 2;

// ---------------------------------------------------------------------------------------------
// Python's whitespace and the 13a tokenizer
// ---------------------------------------------------------------------------------------------

/// Python's `str.isspace`, which `str.split()` and `str.rstrip()` use: Unicode's White_Space
/// (Rust's `char::is_whitespace`, U+202F and U+00A0 included) plus the four ASCII information
/// separators U+001C..U+001F, which Python counts as whitespace and Unicode does not.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: the runs of non-whitespace.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// The ASCII punctuation that 13a pads with spaces: `[\{-\~\[-\` -\&\(-\+\:-\@\/]`, every
/// printable ASCII symbol except `'`, `,`, `-` and `.` (space is in the class; padding it is a
/// no-op once spaces are collapsed).
fn is_13a_symbol(c: char) -> bool {
    matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/')
}

/// `re.sub` of a two-character pattern `(A)(B)`: scans left to right and, where `a(x) && b(y)`
/// holds for the characters `x y` at the current position, writes `replace(x, y)` and skips
/// both; matches never overlap, as in Python.
fn sub_pairs(
    s: &[char],
    a: impl Fn(char) -> bool,
    b: impl Fn(char) -> bool,
    replace: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 2);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && a(s[i]) && b(s[i + 1]) {
            replace(s[i], s[i + 1], &mut out);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// sacreBLEU's default `13a` tokenizer, the tokenization of WMT's mteval-v13a.pl:
///
/// 1. drop `<skipped>`, join `-` + newline, turn newlines into spaces;
/// 2. unescape `&quot;`, `&amp;`, `&lt;`, `&gt;`, in that order, each once over the line (so
///    `&amp;lt;` becomes `<` but `&amp;quot;` stays `&quot;`);
/// 3. pad the line with a space at each end, then apply four substitutions in turn: space around
///    every ASCII symbol but `' , - .`; a period or comma after a non-digit gets a space on each
///    side; a period or comma before a non-digit too; a dash after a digit too;
/// 4. collapse whitespace (Python's, so U+00A0 and U+202F separate tokens) to single spaces.
///
/// ```
/// use decodex::eval::bleu::tokenize_13a;
/// assert_eq!(tokenize_13a("pi=3.14. Yes, 1,000!"), "pi = 3.14 . Yes , 1,000 !");
/// ```
pub fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    // The padding matters: it lets a period at either end of the line meet a non-digit.
    let mut s: Vec<char> = Vec::with_capacity(line.len() * 2 + 2);
    s.push(' ');
    for c in line.chars() {
        if is_13a_symbol(c) {
            s.extend([' ', c, ' ']);
        } else {
            s.push(c);
        }
    }
    s.push(' ');
    let digit = |c: char| c.is_ascii_digit();
    let not_digit = |c: char| !c.is_ascii_digit();
    let period_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> \1 \2 (space after)
    let s = sub_pairs(&s, not_digit, period_comma, |x, y, o| {
        o.extend([x, ' ', y, ' '])
    });
    // ([\.,])([^0-9]) -> ' \1 \2' (space before)
    let s = sub_pairs(&s, period_comma, not_digit, |x, y, o| {
        o.extend([' ', x, ' ', y])
    });
    // ([0-9])(-) -> \1 \2 (space after)
    let s = sub_pairs(
        &s,
        digit,
        |c| c == '-',
        |x, y, o| o.extend([x, ' ', y, ' ']),
    );
    let s: String = s.into_iter().collect();
    py_split(&s).collect::<Vec<_>>().join(" ")
}

/// Counts the n-grams (windows of `n` items) of `items` into `counts`.
fn count_ngrams<'a, T: Eq + Hash>(items: &'a [T], n: usize, counts: &mut HashMap<&'a [T], u32>) {
    for w in items.windows(n) {
        *counts.entry(w).or_default() += 1;
    }
}

/// Checks that every reference stream has one line per hypothesis.
fn check_streams<S, R: AsRef<[S]>>(hyps: usize, refs: &[R]) -> Result<()> {
    if refs.is_empty() {
        return Err(Error::Invalid(
            "BLEU and chrF need at least one reference stream".into(),
        ));
    }
    for (k, r) in refs.iter().enumerate() {
        let n = r.as_ref().len();
        if n != hyps {
            return Err(Error::Invalid(format!(
                "reference stream {} has {n} lines, but there are {hyps} hypotheses",
                k + 1
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// BLEU
// ---------------------------------------------------------------------------------------------

/// How BLEU preprocesses text; everything else is sacreBLEU's default (tokenizer `13a`,
/// smoothing `exp`, 4-grams, no effective order).
#[derive(Debug, Clone, Copy, Default)]
pub struct BleuOptions {
    /// Lowercase hypotheses and references first (sacreBLEU's `-lc`, `case:lc`).
    pub lowercase: bool,
}

impl BleuOptions {
    /// sacreBLEU's signature for these options, e.g.
    /// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.4.3`.
    pub fn signature(&self, nrefs: usize) -> String {
        let case = if self.lowercase { "lc" } else { "mixed" };
        format!("nrefs:{nrefs}|case:{case}|eff:no|tok:13a|smooth:exp|version:{SACREBLEU_VERSION}")
    }

    /// sacreBLEU's `BLEU._preprocess_segment`: lowercase (Python's `str.lower`, which like
    /// Rust's `to_lowercase` maps a final Σ to ς), strip trailing whitespace, tokenize.
    fn preprocess(&self, sent: &str) -> String {
        let sent = if self.lowercase {
            sent.to_lowercase()
        } else {
            sent.to_owned()
        };
        tokenize_13a(sent.trim_end_matches(is_py_space))
    }
}

/// A corpus BLEU score with its sufficient statistics, sacreBLEU's `BLEUScore`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleuScore {
    /// BLEU × 100.
    pub score: f64,
    /// Modified n-gram precisions × 100, 1- to 4-grams (after smoothing).
    pub precisions: [f64; MAX_NGRAM_ORDER],
    /// Matched n-grams per order, clipped by the (maximum over references) reference counts.
    pub counts: [u64; MAX_NGRAM_ORDER],
    /// Hypothesis n-grams per order.
    pub totals: [u64; MAX_NGRAM_ORDER],
    /// Brevity penalty: `exp(1 - ref_len / sys_len)` when the hypotheses are shorter, else 1.
    pub bp: f64,
    /// Hypothesis tokens.
    pub sys_len: u64,
    /// Reference tokens: per segment, the reference length closest to the hypothesis's (the
    /// shorter one on a tie).
    pub ref_len: u64,
    /// `sys_len / ref_len`, 0 when there are no reference tokens.
    pub ratio: f64,
    pub signature: String,
}

impl BleuScore {
    /// sacreBLEU's one-line summary, e.g.
    /// `BLEU = 36.12 67.1/42.3/28.9/19.0 (BP = 0.987 ratio = 0.987 hyp_len = 1230 ref_len = 1246)`.
    pub fn line(&self) -> String {
        let precisions: Vec<String> = self.precisions.iter().map(|p| format!("{p:.1}")).collect();
        format!(
            "BLEU = {:.2} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            self.score,
            precisions.join("/"),
            self.bp,
            self.ratio,
            self.sys_len,
            self.ref_len
        )
    }
}

/// BLEU's sufficient statistics, summed over segments.
#[derive(Debug, Clone, Copy, Default)]
struct BleuStats {
    sys_len: u64,
    ref_len: u64,
    correct: [u64; MAX_NGRAM_ORDER],
    total: [u64; MAX_NGRAM_ORDER],
}

/// The statistics of one preprocessed segment against its preprocessed references (sacreBLEU's
/// `_extract_reference_info` and `_compute_segment_statistics`).
fn bleu_segment(hyp: &str, refs: &[String]) -> BleuStats {
    let hyp: Vec<&str> = py_split(hyp).collect();
    let refs: Vec<Vec<&str>> = refs.iter().map(|r| py_split(r).collect()).collect();
    // Each reference n-gram counts as often as it occurs in the reference holding it most.
    let mut max_ref: HashMap<&[&str], u32> = HashMap::new();
    for r in &refs {
        let mut counts = HashMap::new();
        for n in 1..=MAX_NGRAM_ORDER {
            count_ngrams(r, n, &mut counts);
        }
        for (ngram, c) in counts {
            let m = max_ref.entry(ngram).or_default();
            *m = (*m).max(c);
        }
    }
    let hyp_len = hyp.len();
    // The closest reference length, the shorter on a tie (`_get_closest_ref_len`).
    let ref_len = refs
        .iter()
        .map(Vec::len)
        .min_by_key(|&r| (r.abs_diff(hyp_len), r))
        .unwrap_or(0);
    let mut stats = BleuStats {
        sys_len: hyp_len as u64,
        ref_len: ref_len as u64,
        ..Default::default()
    };
    let mut counts = HashMap::new();
    for n in 1..=MAX_NGRAM_ORDER {
        count_ngrams(&hyp, n, &mut counts);
    }
    for (ngram, c) in counts {
        let n = ngram.len() - 1;
        stats.total[n] += c as u64;
        stats.correct[n] += c.min(max_ref.get(ngram).copied().unwrap_or(0)) as u64;
    }
    stats
}

/// sacreBLEU's `my_log`: the natural log, with log 0 floored to -9999999999.
fn floored_ln(x: f64) -> f64 {
    if x == 0.0 {
        -9999999999.0
    } else {
        x.ln()
    }
}

/// The score from summed statistics (sacreBLEU's `BLEU.compute_bleu` with `smooth_method='exp'`
/// and `effective_order=False`).
///
/// `exp` smoothing (NIST's, Chen and Cherry 2014 method 3): the k-th order without a match gets
/// precision `100 / (2^k · total)`. An order with no hypothesis n-grams at all ends the loop and
/// leaves that precision and the higher ones at 0, so the score is 0, as when nothing matches.
fn bleu_from_stats(s: &BleuStats, signature: String) -> BleuScore {
    let (sys_len, ref_len) = (s.sys_len, s.ref_len);
    let bp = if sys_len < ref_len {
        if sys_len > 0 {
            (1.0 - ref_len as f64 / sys_len as f64).exp()
        } else {
            0.0
        }
    } else {
        1.0
    };
    let ratio = if ref_len > 0 {
        sys_len as f64 / ref_len as f64
    } else {
        0.0
    };
    let mut precisions = [0.0; MAX_NGRAM_ORDER];
    let mut score = 0.0;
    // sacreBLEU stops early when no n-gram of any order matches (its issue #141).
    if s.correct.iter().any(|&c| c > 0) {
        let mut smooth = 1.0f64;
        for (p, (&correct, &total)) in precisions.iter_mut().zip(s.correct.iter().zip(&s.total)) {
            if total == 0 {
                break;
            }
            *p = if correct == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        let log_sum = precisions.iter().fold(0.0, |acc, &p| acc + floored_ln(p));
        score = bp * (log_sum / MAX_NGRAM_ORDER as f64).exp();
    }
    BleuScore {
        score,
        precisions,
        counts: s.correct,
        totals: s.total,
        bp,
        sys_len,
        ref_len,
        ratio,
        signature,
    }
}

/// Corpus BLEU of `hyps` against one or more reference streams (`refs[k][i]` is the k-th
/// reference of segment `i`), as sacreBLEU 2.4.3's `BLEU(lowercase=...).corpus_score(hyps,
/// refs)`. Empty lines are ordinary segments of no tokens; a corpus with no matching n-gram
/// scores 0.
///
/// Errors: no reference stream, or a stream whose length differs from `hyps`'s (`Invalid`).
pub fn corpus_bleu<S: AsRef<str>, R: AsRef<[S]>>(
    hyps: &[S],
    refs: &[R],
    opts: &BleuOptions,
) -> Result<BleuScore> {
    check_streams(hyps.len(), refs)?;
    let mut total = BleuStats::default();
    for (i, hyp) in hyps.iter().enumerate() {
        let seg_refs: Vec<String> = refs
            .iter()
            .map(|r| opts.preprocess(r.as_ref()[i].as_ref()))
            .collect();
        let s = bleu_segment(&opts.preprocess(hyp.as_ref()), &seg_refs);
        total.sys_len += s.sys_len;
        total.ref_len += s.ref_len;
        for n in 0..MAX_NGRAM_ORDER {
            total.correct[n] += s.correct[n];
            total.total[n] += s.total[n];
        }
    }
    Ok(bleu_from_stats(&total, opts.signature(refs.len())))
}

// ---------------------------------------------------------------------------------------------
// chrF
// ---------------------------------------------------------------------------------------------

/// sacreBLEU's chrF signature: `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.4.3`.
pub fn chrf_signature(nrefs: usize) -> String {
    format!(
        "nrefs:{nrefs}|case:mixed|eff:yes|nc:{CHAR_ORDER}|nw:0|space:no|version:{SACREBLEU_VERSION}"
    )
}

/// A corpus chrF score, sacreBLEU's `CHRFScore`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChrfScore {
    /// chrF2 × 100.
    pub score: f64,
    pub signature: String,
}

impl ChrfScore {
    /// sacreBLEU's one-line summary, e.g. `chrF2 = 61.23`.
    pub fn line(&self) -> String {
        format!("chrF{BETA} = {:.2}", self.score)
    }
}

/// Per character order: hypothesis n-grams (counted only where the reference has n-grams of that
/// order), reference n-grams, matched n-grams.
type ChrfStats = [[u64; 3]; CHAR_ORDER];

/// The character n-gram counts of `chars`, orders 1 to 6.
fn char_ngrams(chars: &[char]) -> Vec<HashMap<&[char], u32>> {
    (1..=CHAR_ORDER)
        .map(|n| {
            let mut counts = HashMap::new();
            count_ngrams(chars, n, &mut counts);
            counts
        })
        .collect()
}

/// sacreBLEU's `CHRF._compute_f_score` with `eps_smoothing=False`: average precision and recall
/// over the orders where both hypothesis and reference have n-grams (the "effective order"),
/// then one F-β of the two averages.
fn chrf_f_score(stats: &ChrfStats) -> f64 {
    let factor = (BETA * BETA) as f64;
    let (mut avg_prec, mut avg_rec, mut effective_order) = (0.0f64, 0.0f64, 0u32);
    for &[n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            effective_order += 1;
        }
    }
    if effective_order > 0 {
        avg_prec /= effective_order as f64;
        avg_rec /= effective_order as f64;
    }
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    let score = (1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec);
    100.0 * score
}

/// The statistics of one segment against the reference that gives it the best chrF (the first
/// of equals), as sacreBLEU's `CHRF._compute_segment_statistics`.
fn chrf_segment(hyp: &str, refs: &[&str]) -> ChrfStats {
    let hyp: Vec<char> = hyp.chars().filter(|&c| !is_py_space(c)).collect();
    let hyp_ngrams = char_ngrams(&hyp);
    let mut best = ([[0u64; 3]; CHAR_ORDER], -1.0f64);
    for r in refs {
        let r: Vec<char> = r.chars().filter(|&c| !is_py_space(c)).collect();
        let mut stats = [[0u64; 3]; CHAR_ORDER];
        for (n, ref_ngrams) in char_ngrams(&r).iter().enumerate() {
            let (mut n_hyp, mut n_match) = (0u64, 0u64);
            for (ngram, &c) in &hyp_ngrams[n] {
                n_hyp += c as u64;
                n_match += c.min(ref_ngrams.get(ngram).copied().unwrap_or(0)) as u64;
            }
            // Hypothesis n-grams count only where the reference has n-grams of this order.
            let n_hyp = if ref_ngrams.is_empty() { 0 } else { n_hyp };
            stats[n] = [n_hyp, ref_ngrams.values().map(|&c| c as u64).sum(), n_match];
        }
        let f = chrf_f_score(&stats);
        if f > best.1 {
            best = (stats, f);
        }
    }
    best.0
}

/// Corpus chrF2 of `hyps` against one or more reference streams, as sacreBLEU 2.4.3's
/// `CHRF().corpus_score(hyps, refs)`: character 1- to 6-grams, no word n-grams, whitespace
/// removed, case kept. Errors as [`corpus_bleu`]'s.
pub fn corpus_chrf<S: AsRef<str>, R: AsRef<[S]>>(hyps: &[S], refs: &[R]) -> Result<ChrfScore> {
    check_streams(hyps.len(), refs)?;
    let mut total: ChrfStats = [[0; 3]; CHAR_ORDER];
    for (i, hyp) in hyps.iter().enumerate() {
        let seg_refs: Vec<&str> = refs.iter().map(|r| r.as_ref()[i].as_ref()).collect();
        let s = chrf_segment(hyp.as_ref(), &seg_refs);
        for (t, s) in total.iter_mut().zip(s) {
            for k in 0..3 {
                t[k] += s[k];
            }
        }
    }
    Ok(ChrfScore {
        score: chrf_f_score(&total),
        signature: chrf_signature(refs.len()),
    })
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// The lines of a hypothesis or reference file as the `sacrebleu` command reads them: UTF-8
/// (plain or gzip-compressed), split on `\n` only, each line stripped of trailing whitespace
/// (Python's, so a `\r` or a final U+202F goes too). An empty file has no lines.
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = crate::data::read_text(path)?;
    Ok(text
        .split_inclusive('\n')
        .map(|l| l.trim_end_matches(is_py_space).to_owned())
        .collect())
}

/// The lines of a hypothesis file and of each reference file, which must have as many; an empty
/// hypothesis file is refused.
pub fn read_aligned(hyp: &Path, refs: &[PathBuf]) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let hyps = read_lines(hyp)?;
    // sacreBLEU refuses an empty system output too; a score of nothing would read as a result.
    if hyps.is_empty() {
        return Err(Error::Data {
            path: hyp.to_path_buf(),
            msg: "the hypothesis file is empty; give one line per segment".into(),
        });
    }
    let mut streams = Vec::with_capacity(refs.len());
    for r in refs {
        let lines = read_lines(r)?;
        if lines.len() != hyps.len() {
            return Err(Error::LineCount {
                path: r.clone(),
                lines: lines.len(),
                hyp: hyp.to_path_buf(),
                hyp_lines: hyps.len(),
            });
        }
        streams.push(lines);
    }
    Ok((hyps, streams))
}

/// BLEU and chrF of a hypothesis file against reference files, the figures of `sacrebleu REF...
/// -i HYP -m bleu chrf` (`-lc` with `opts.lowercase`; as there, chrF stays cased).
#[derive(Debug, Clone, Serialize)]
pub struct BleuReport {
    pub hyp: PathBuf,
    pub refs: Vec<PathBuf>,
    /// Segments (lines) scored.
    pub lines: usize,
    pub bleu: BleuScore,
    pub chrf: ChrfScore,
}

/// Reads the files and scores them. Errors name the file: missing, unreadable or not UTF-8,
/// and a reference file whose line count differs from the hypothesis file's (`LineCount`).
pub fn evaluate_files(hyp: &Path, refs: &[PathBuf], opts: &BleuOptions) -> Result<BleuReport> {
    let (hyps, streams) = read_aligned(hyp, refs)?;
    Ok(BleuReport {
        hyp: hyp.to_path_buf(),
        refs: refs.to_vec(),
        lines: hyps.len(),
        bleu: corpus_bleu(&hyps, &streams, opts)?,
        chrf: corpus_chrf(&hyps, &streams)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings and their tokenization by sacreBLEU 2.4.3's `Tokenizer13a()` (run in Python).
    const TOKENIZED_BY_SACREBLEU: &[(&str, &str)] = &[
        ("Hello, world.", "Hello , world ."),
        (
            "3.14 and 1,000 but a.b and x,y",
            "3.14 and 1,000 but a . b and x , y",
        ),
        ("pi=3.14.", "pi = 3.14 ."),
        (".5 ,5 5. 5,", ". 5 , 5 5 . 5 ,"),
        ("a.. b,, c.,d", "a . . b , , c . , d"),
        ("2024-01-05 7- -7 a-b", "2024 - 01 - 05 7 - -7 a-b"),
        (
            "&quot;Hi&quot; &amp;amp; &lt;b&gt; &amp;quot; &apos;",
            "\" Hi \" & amp ; < b > & quot ; & apos ;",
        ),
        ("<skipped>Start <skipped> end", "Start end"),
        ("line-\nbreak and\nnewline", "linebreak and newline"),
        (
            "What?! (yes) [no] {maybe} @u #h 50% $5 ^_` ~|",
            "What ? ! ( yes ) [ no ] { maybe } @ u # h 50 % $ 5 ^ _ ` ~ |",
        ),
        ("don't 'quote'", "don't 'quote'"),
        ("", ""),
        ("   ", ""),
        ("Vous venez\u{202f}? Oui\u{a0}!", "Vous venez ? Oui !"),
        (
            "tab\tand\u{1f}sep\u{1c}x\u{3000}y\u{2028}z",
            "tab and sep x y z",
        ),
        ("東京は日本の首都です。", "東京は日本の首都です。"),
        ("Emoji 👍🏽, ok.", "Emoji 👍🏽 , ok ."),
        ("...", ". . ."),
        ("9.9.9", "9.9.9"),
        ("U.S.A.", "U . S . A ."),
        ("1-2-3", "1 - 2 - 3"),
        ("end.", "end ."),
    ];

    #[test]
    fn tokenize_13a_matches_sacrebleu() {
        for &(input, expected) in TOKENIZED_BY_SACREBLEU {
            assert_eq!(tokenize_13a(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn python_whitespace_includes_the_information_separators() {
        for c in [
            '\u{1c}', '\u{1d}', '\u{1e}', '\u{1f}', '\u{202f}', '\u{a0}', '\u{85}',
        ] {
            assert!(is_py_space(c), "{c:?}");
        }
        // Not whitespace in Python either: zero-width space, BOM, Mongolian vowel separator.
        for c in ['\u{200b}', '\u{feff}', '\u{180e}'] {
            assert!(!is_py_space(c), "{c:?}");
        }
    }

    #[test]
    fn closest_reference_length_prefers_the_shorter_on_a_tie() {
        // Hypothesis of 3 tokens, references of 2 and 4: both 1 away, 2 is taken.
        let s = bleu_segment("a b c", &["a b".into(), "a b c d".into()]);
        assert_eq!((s.sys_len, s.ref_len), (3, 2));
        // Reference n-grams are clipped by the maximum count over references.
        let s = bleu_segment("x x x", &["x".into(), "x x".into()]);
        assert_eq!((s.correct[0], s.total[0]), (2, 3));
    }

    #[test]
    fn sentence_figures_match_sacrebleu() {
        // sacreBLEU: BLEU().corpus_score(['a b c'], [['a b c']]) -> 0.0 (no 4-grams), precisions
        // 100/100/100/0; CHRF() -> 100.0.
        let b = corpus_bleu(&["a b c"], &[["a b c"]], &BleuOptions::default()).unwrap();
        assert_eq!(b.score, 0.0);
        assert_eq!(b.precisions, [100.0, 100.0, 100.0, 0.0]);
        let c = corpus_chrf(&["a b c"], &[["a b c"]]).unwrap();
        assert_eq!(c.score, 100.0);
        assert_eq!(c.line(), "chrF2 = 100.00");
    }

    #[test]
    fn misaligned_streams_are_refused() {
        let err = corpus_bleu(&["a", "b"], &[["a"]], &BleuOptions::default()).unwrap_err();
        assert!(err.to_string().contains("1 lines"), "{err}");
        let none: [[&str; 0]; 0] = [];
        assert!(corpus_chrf(&[] as &[&str], &none).is_err());
    }
}
