//! Semantic textual similarity: the STS Benchmark files and the figures an STS evaluation
//! reports, Spearman's and Pearson's correlation between gold scores and cosine similarities,
//! as `scipy.stats.spearmanr` and `scipy.stats.pearsonr` (scipy 1.17.1) compute them
//! (tests/retrieval_metrics.rs checks both against scripts/gen_retrieval_fixture.py's fixture).

use std::path::Path;

use crate::error::{Error, Result};

/// One line of an STS Benchmark file: the gold similarity (0 to 5) and the two sentences.
#[derive(Debug, Clone, PartialEq)]
pub struct StsPair {
    pub score: f64,
    pub s1: String,
    pub s2: String,
}

/// Reads an STS Benchmark file (sts-train.csv, sts-dev.csv, sts-test.csv): TAB-separated, no
/// header, no quoting; columns genre, file, year, id, score, sentence 1, sentence 2, and on some
/// lines further columns (the sources), which are ignored. The file is read to be correlated
/// with: one that has fewer than 2 pairs, or gold scores that are all equal, is an error (its
/// correlation is undefined).
pub fn read_sts(path: &Path) -> Result<Vec<StsPair>> {
    let text = crate::data::read_text(path)?;
    let mut pairs = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::Data {
            path: path.to_path_buf(),
            msg: format!(
                "line {}: {why}; expected genre, file, year, id, score, sentence 1, sentence 2 \
                 separated by TABs",
                i + 1
            ),
        };
        let cols: Vec<&str> = line.splitn(8, '\t').collect();
        if cols.len() < 7 {
            return Err(bad(format!("{} column(s)", cols.len())));
        }
        let score: f64 = cols[4]
            .trim()
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite())
            .ok_or_else(|| bad(format!("score {:?} is not a number", cols[4])))?;
        pairs.push(StsPair {
            score,
            s1: cols[5].to_string(),
            s2: cols[6].to_string(),
        });
    }
    let no_correlation = |msg: String| {
        Err(Error::Data {
            path: path.to_path_buf(),
            msg: format!("{msg}; give an STS Benchmark file such as sts-test.csv"),
        })
    };
    match pairs.as_slice() {
        [] => no_correlation("no sentence pairs".into()),
        [_] => no_correlation("1 sentence pair, and a correlation needs at least 2".into()),
        [first, rest @ ..] if rest.iter().all(|p| p.score == first.score) => {
            no_correlation(format!(
                "every gold score is {}, and a correlation needs scores that differ",
                first.score
            ))
        }
        _ => Ok(pairs),
    }
}

fn check_lengths(x: &[f64], y: &[f64]) -> Result<()> {
    if x.len() != y.len() {
        return Err(Error::Invalid(format!(
            "correlation of vectors of different lengths ({} and {})",
            x.len(),
            y.len()
        )));
    }
    if x.len() < 2 {
        return Err(Error::Invalid(format!(
            "correlation needs at least 2 values, got {}",
            x.len()
        )));
    }
    Ok(())
}

/// Pearson's r, `scipy.stats.pearsonr(x, y).statistic`: NaN when either vector is constant
/// (scipy warns and returns NaN), clipped to [-1, 1].
pub fn pearson(x: &[f64], y: &[f64]) -> Result<f64> {
    check_lengths(x, y)?;
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return Ok(f64::NAN);
    }
    Ok((sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0))
}

/// Ranks from 1, tied values sharing the mean of their ranks:
/// `scipy.stats.rankdata(x, method="average")`.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && x[order[j]] == x[order[i]] {
            j += 1;
        }
        // Positions i..j (0-based) hold one value: ranks i+1..=j, mean (i + 1 + j) / 2.
        let r = (i + 1 + j) as f64 / 2.0;
        for &o in &order[i..j] {
            ranks[o] = r;
        }
        i = j;
    }
    ranks
}

/// Spearman's rho, `scipy.stats.spearmanr(x, y).statistic`: Pearson's r of the average ranks
/// (NaN when either vector is constant or holds a NaN, scipy's `nan_policy="propagate"`).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    check_lengths(x, y)?;
    if x.iter().chain(y).any(|v| v.is_nan()) {
        return Ok(f64::NAN);
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Cosine similarity, accumulated in f64. A zero vector gives 0, as sentence-transformers'
/// `cos_sim` does (it divides by max(norm, 1e-12)).
///
/// # Panics
/// When the vectors have different lengths (embeddings of one model never do).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt().max(1e-12) * bb.sqrt().max(1e-12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_ranks_share_ties() {
        assert_eq!(
            average_ranks(&[3.0, 1.0, 3.0, 2.0, 3.0]),
            [4.0, 1.0, 4.0, 2.0, 4.0]
        );
        assert_eq!(average_ranks(&[-0.0, 0.0]), [1.5, 1.5]);
    }

    #[test]
    fn correlations() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]).unwrap() - 1.0).abs() < 1e-15);
        assert!((spearman(&x, &[1.0, 10.0, 100.0, 1000.0]).unwrap() - 1.0).abs() < 1e-15);
        assert!(pearson(&x, &[5.0; 4]).unwrap().is_nan());
        assert!(pearson(&x, &[1.0]).is_err());
        assert!(spearman(&[1.0], &[1.0]).is_err());
    }

    #[test]
    fn cosine_of_simple_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert_eq!(cosine(&[2.0, 0.0], &[-3.0, 0.0]), -1.0);
    }
}
