//! Parallel corpora for sequence-to-sequence models: aligned source/target files (line i of one
//! is the translation of line i of the other) or tab-separated pairs, a seeded train/valid/test
//! split, and length-bucketed batches sized in tokens.
//!
//! Documented behaviour on awkward input:
//! - files with different line counts are an error naming both files;
//! - a pair with an empty side cannot be trained on: `clean` drops it and counts it, and
//!   `decodex translate` turns an empty input line into an empty output line;
//! - pairs longer than the model's maximum (in tokens) are dropped from training by `clean`
//!   and counted; at translation time a longer source is an error naming its line.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Aligned sentence pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    pub src: Vec<String>,
    pub tgt: Vec<String>,
}

impl Pairs {
    pub fn len(&self) -> usize {
        self.src.len()
    }

    pub fn is_empty(&self) -> bool {
        self.src.is_empty()
    }

    /// The pairs at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Pairs {
        Pairs {
            src: idx.iter().map(|&i| self.src[i].clone()).collect(),
            tgt: idx.iter().map(|&i| self.tgt[i].clone()).collect(),
        }
    }

    /// Swaps the two sides (en→fr from a fr→en corpus).
    pub fn reversed(self) -> Pairs {
        Pairs {
            src: self.tgt,
            tgt: self.src,
        }
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    // A final newline ends the last line; it does not start an empty one.
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    Ok(text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect())
}

/// Reads aligned files: line i of `src` with line i of `tgt`.
pub fn read_aligned(src: &Path, tgt: &Path) -> Result<Pairs> {
    let (s, t) = (read_lines(src)?, read_lines(tgt)?);
    if s.len() != t.len() {
        return Err(Error::Data {
            path: src.to_path_buf(),
            msg: format!(
                "has {} lines but {} has {}: parallel files must be aligned line by line",
                s.len(),
                tgt.display(),
                t.len()
            ),
        });
    }
    if s.is_empty() {
        return Err(Error::Data {
            path: src.to_path_buf(),
            msg: "the parallel corpus is empty".into(),
        });
    }
    Ok(Pairs { src: s, tgt: t })
}

/// Reads tab-separated pairs (`source<TAB>target`, extra columns ignored, as the Tatoeba/Anki
/// files carry an attribution column). A line without a tab is an error naming its number.
pub fn read_tsv(path: &Path) -> Result<Pairs> {
    let mut pairs = Pairs::default();
    for (i, line) in read_lines(path)?.iter().enumerate() {
        let mut cols = line.split('\t');
        match (cols.next(), cols.next()) {
            (Some(s), Some(t)) => {
                pairs.src.push(s.to_string());
                pairs.tgt.push(t.to_string());
            }
            _ => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    msg: format!("line {} has no tab between source and target", i + 1),
                })
            }
        }
    }
    if pairs.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: "the parallel corpus is empty".into(),
        });
    }
    Ok(pairs)
}

/// Where a corpus comes from: a pair of aligned files, or one TSV file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum PairSource {
    Aligned { src: PathBuf, tgt: PathBuf },
    Tsv { tsv: PathBuf },
}

impl PairSource {
    /// Reads the pairs, with relative paths taken under `root`.
    pub fn read(&self, root: &Path) -> Result<Pairs> {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                root.join(p)
            }
        };
        match self {
            PairSource::Aligned { src, tgt } => read_aligned(&at(src), &at(tgt)),
            PairSource::Tsv { tsv } => read_tsv(&at(tsv)),
        }
    }
}

/// A seeded split of `n` items into (train, valid, test) index lists: a permutation from `seed`,
/// then the first `valid` items, the next `test` items, and the rest for training, each list in
/// corpus order. The same (n, seed, valid, test) always gives the same split.
pub fn split_indices(
    n: usize,
    seed: u64,
    valid: usize,
    test: usize,
) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    if valid + test >= n {
        return Err(Error::Invalid(format!(
            "a split of {valid} valid + {test} test pairs leaves nothing to train on out of {n}"
        )));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut v = idx[..valid].to_vec();
    let mut t = idx[valid..valid + test].to_vec();
    let mut tr = idx[valid + test..].to_vec();
    for x in [&mut v, &mut t, &mut tr] {
        x.sort_unstable();
    }
    Ok((tr, v, t))
}

/// Tokenized pairs ready for batching, with what was dropped.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub src: Vec<Vec<u32>>,
    pub tgt: Vec<Vec<u32>>,
    /// Pairs with an empty side.
    pub dropped_empty: usize,
    /// Pairs with a side longer than the maximum.
    pub dropped_long: usize,
}

/// Keeps the pairs whose sides are non-empty and at most `max_len` tokens (the target counted
/// with the start and end tokens the decoder adds).
pub fn clean(src: Vec<Vec<u32>>, tgt: Vec<Vec<u32>>, max_len: usize) -> Encoded {
    let mut out = Encoded::default();
    for (s, t) in src.into_iter().zip(tgt) {
        if s.is_empty() || t.is_empty() {
            out.dropped_empty += 1;
        } else if s.len() > max_len || t.len() + 1 > max_len {
            out.dropped_long += 1;
        } else {
            out.src.push(s);
            out.tgt.push(t);
        }
    }
    out
}

/// Batches of pair indices whose padded size (rows × longest side) stays within `max_tokens`:
/// pairs sorted by length (ties broken randomly, so batches differ between epochs), cut into
/// batches, and the batches shuffled. Every pair appears once.
pub fn token_batches(
    src: &[Vec<u32>],
    tgt: &[Vec<u32>],
    max_tokens: usize,
    rng: &mut impl Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize, u32)> = (0..src.len())
        .map(|i| (src[i].len(), tgt[i].len(), rng.gen()))
        .enumerate()
        .map(|(i, (s, t, r))| (i, s.max(t + 1), r))
        .collect();
    order.sort_unstable_by_key(|&(_, len, r)| (len, r));
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for (i, len, _) in order {
        let l = longest.max(len);
        if !cur.is_empty() && l * (cur.len() + 1) > max_tokens {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(len);
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches.shuffle(rng);
    batches
}

/// Right-pads rows to the longest with `pad`: (ids (rows × longest), longest, lengths).
pub fn pad_rows(rows: &[&[u32]], pad: u32) -> (Vec<u32>, usize, Vec<usize>) {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * longest);
    for r in rows {
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, longest - r.len()));
    }
    (ids, longest, rows.iter().map(|r| r.len()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn misaligned_files_are_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.de", "eins\nzwei\n");
        let b = write(dir.path(), "b.en", "one\n");
        let err = read_aligned(&a, &b).unwrap_err().to_string();
        assert!(
            err.contains("a.de") && err.contains("b.en") && err.contains("2 lines"),
            "{err}"
        );
    }

    #[test]
    fn empty_lines_are_kept_aligned_then_dropped_by_clean() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", "x\n\nz\r\n");
        let b = write(dir.path(), "b", "1\n2\n3\n");
        let p = read_aligned(&a, &b).unwrap();
        assert_eq!(p.src, vec!["x", "", "z"]);
        let src = vec![vec![1], vec![], vec![1, 2, 3, 4]];
        let tgt = vec![vec![5], vec![6], vec![7]];
        let e = clean(src, tgt, 3);
        assert_eq!((e.src.len(), e.dropped_empty, e.dropped_long), (1, 1, 1));
    }

    #[test]
    fn tsv_needs_a_tab() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(dir.path(), "ok.txt", "Go.\tVa !\tCC-BY\nHi.\tSalut.\n");
        let p = read_tsv(&ok).unwrap();
        assert_eq!(p.tgt, vec!["Va !", "Salut."]);
        let bad = write(dir.path(), "bad.txt", "Go.\tVa !\nHi.\n");
        let err = read_tsv(&bad).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (tr, v, t) = split_indices(100, 7, 10, 20).unwrap();
        assert_eq!((tr.len(), v.len(), t.len()), (70, 10, 20));
        let mut all: Vec<usize> = tr.iter().chain(&v).chain(&t).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split_indices(100, 7, 10, 20).unwrap().1, v);
        assert_ne!(split_indices(100, 8, 10, 20).unwrap().1, v);
        assert!(split_indices(10, 0, 5, 5).is_err());
    }

    #[test]
    fn batches_respect_the_token_budget_and_cover_every_pair() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let src: Vec<Vec<u32>> = (0..200).map(|i| vec![1; 1 + i % 37]).collect();
        let tgt: Vec<Vec<u32>> = (0..200).map(|i| vec![1; 1 + (i * 7) % 23]).collect();
        let batches = token_batches(&src, &tgt, 256, &mut rng);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        for b in &batches {
            let longest = b
                .iter()
                .map(|&i| src[i].len().max(tgt[i].len() + 1))
                .max()
                .unwrap();
            assert!(b.len() == 1 || longest * b.len() <= 256);
        }
    }
}
