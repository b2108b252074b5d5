//! Queries against an index as the command line runs them: the embedder an index was built
//! with, one search for exact and graph lookups, BEIR-style retrieval runs, and the recall and
//! speed of the graph against exact search.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use super::index::{check_model, Hit, Index};
use super::{load_embedder, Embedder};
use crate::error::Result;
use crate::eval::retrieval::Run;
use crate::eval::sts;

/// The embedder for the index in `dir`: `model`, or the model the index records; either must
/// be the model the index was built with.
pub fn index_embedder(dir: &Path, model: Option<&Path>) -> Result<Box<dyn Embedder>> {
    let meta = Index::read_meta(dir)?;
    let path = model
        .map(Path::to_path_buf)
        .unwrap_or(meta.model.path.clone());
    let m = load_embedder(&path)?;
    check_model(&meta, m.info(), dir)?;
    Ok(m)
}

impl Index {
    /// The `k` nearest rows of a unit vector: by scanning every vector when `exact`, else
    /// through the graph exploring `ef` candidates.
    pub fn nearest(&self, q: &[f32], k: usize, ef: usize, exact: bool) -> Result<Vec<Hit>> {
        if exact {
            Ok(self.search_exact(q, k))
        } else {
            self.search(q, k, ef)
        }
    }
}

/// The `top_k` hits (id, score) of each query (id, vector of `q`), as BEIR's evaluation takes
/// them: unless `keep_identical_ids`, a hit with the query's own id is dropped (one more is
/// searched for, so that `top_k` remain).
pub fn retrieve(
    idx: &Index,
    ids: &[&str],
    q: &[f32],
    (top_k, ef, exact): (usize, usize, bool),
    keep_identical_ids: bool,
) -> Result<Run> {
    let k = top_k + usize::from(!keep_identical_ids);
    let mut run = Run::new();
    for (&id, v) in ids.iter().zip(q.chunks_exact(idx.meta.dim)) {
        let hits = idx.nearest(v, k, ef, exact)?;
        let mut hits: Vec<(String, f32)> = hits.into_iter().map(|h| (h.id, h.score)).collect();
        if !keep_identical_ids {
            hits.retain(|(d, _)| d != id);
        }
        hits.truncate(top_k);
        run.insert(id.to_string(), hits);
    }
    Ok(run)
}

/// The graph search of `index bench` against exact search.
#[derive(Debug, Clone)]
pub struct QueryBench {
    /// The first query's search, which loads the graph and warms the caches.
    pub graph_load_seconds: f64,
    pub graph_seconds: f64,
    pub exact_seconds: f64,
    /// The mean over queries of the share of exact top-k rows the graph search found.
    pub recall_at_k: f64,
}

/// Times graph and exact top-`k` search of every query of `q` (unit vectors, at least one)
/// and measures the graph's recall against exact search.
pub fn bench_queries(idx: &Index, q: &[f32], k: usize, ef: usize) -> Result<QueryBench> {
    let dim = idx.meta.dim;
    let t_load = Instant::now();
    idx.search(&q[..dim], k, ef)?;
    let graph_load_seconds = t_load.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let approx: Vec<Vec<Hit>> = q
        .chunks_exact(dim)
        .map(|v| idx.search(v, k, ef))
        .collect::<Result<_>>()?;
    let graph_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let exact: Vec<Vec<Hit>> = q
        .chunks_exact(dim)
        .map(|v| idx.search_exact(v, k))
        .collect();
    let exact_seconds = t1.elapsed().as_secs_f64();
    let recall_at_k = approx
        .iter()
        .zip(&exact)
        .map(|(a, e)| {
            let rows: HashSet<usize> = e.iter().map(|h| h.row).collect();
            a.iter().filter(|h| rows.contains(&h.row)).count() as f64 / e.len().max(1) as f64
        })
        .sum::<f64>()
        / exact.len() as f64;
    Ok(QueryBench {
        graph_load_seconds,
        graph_seconds,
        exact_seconds,
        recall_at_k,
    })
}

/// The Spearman and Pearson correlations of `model`'s embedding cosines with the gold scores
/// of STS `pairs`.
pub fn sts_correlations(model: &dyn Embedder, pairs: &[sts::StsPair]) -> Result<(f64, f64)> {
    let s1: Vec<&str> = pairs.iter().map(|p| p.s1.as_str()).collect();
    let s2: Vec<&str> = pairs.iter().map(|p| p.s2.as_str()).collect();
    let (e1, e2) = (model.embed(&s1)?, model.embed(&s2)?);
    let dim = model.dim();
    let cos: Vec<f64> = e1
        .chunks_exact(dim)
        .zip(e2.chunks_exact(dim))
        .map(|(a, b)| sts::cosine(a, b))
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    Ok((sts::spearman(&cos, &gold)?, sts::pearson(&cos, &gold)?))
}
