//! Embeddings, vector indexes and their evaluations: `embed`, `index build|add|query|bench`,
//! `eval retrieval`, `eval sts` and `bench embed`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use decodex::eval::{retrieval, sts};
use decodex::search::index::{self, BuildOptions, HnswParams, Index};
use decodex::search::query::{self, index_embedder};
use decodex::search::{self, load_embedder, open_records, VectorWriter};
use decodex::train::bench::peak_rss_mb;

use super::commands::emit;
use super::Force;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A sentence-transformers / Hugging Face BERT folder, a decodex GPT checkpoint folder, a
    /// Hugging Face Llama folder or a GGUF file (decoders: mean-pooled last hidden state).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts: a .txt file (one per line) or JSON lines with "text" (and "title", "_id"/"id");
    /// .gz accepted. Read in chunks, so it may be larger than memory.
    #[arg(long)]
    pub input: PathBuf,
    /// Output: .npy (float32, rows × dim) or .safetensors (tensor "embeddings", the model in
    /// the metadata). Rows follow the input's order.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: Force,
    /// Texts embedded per step.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub chunk: usize,
}

#[derive(Subcommand, Debug)]
pub enum IndexCmd {
    /// Embed a corpus and write an index folder (vectors, documents, and an HNSW graph from
    /// --hnsw-threshold vectors on).
    Build(IndexBuildArgs),
    /// Append a corpus to an index (same model; ids must stay unique).
    Add(IndexAddArgs),
    /// The k nearest documents of a query text.
    Query(IndexQueryArgs),
    /// Recall@k of the HNSW search against exact search, and queries per second of both.
    Bench(IndexBenchArgs),
}

#[derive(Args, Debug)]
pub struct IndexBuildArgs {
    /// The embedding model, as for `embed --model`.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The corpus: records as for `embed --input`.
    #[arg(long, value_name = "FILE", alias = "corpus")]
    pub input: PathBuf,
    /// The index folder (must not exist, or be empty, unless --force).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: Force,
    /// Build an HNSW graph from this many vectors on; smaller indexes search exactly.
    #[arg(long, default_value_t = 20_000)]
    pub hnsw_threshold: usize,
    /// HNSW neighbours per node (M).
    #[arg(long, default_value_t = 24)]
    pub m: usize,
    /// HNSW candidates explored per inserted vector.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub ef_construction: usize,
    /// Texts embedded per step.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub chunk: usize,
}

#[derive(Args, Debug)]
pub struct IndexAddArgs {
    /// The index folder.
    pub index: PathBuf,
    /// The corpus to append: records as for `embed --input`.
    #[arg(long, value_name = "FILE", alias = "corpus")]
    pub input: PathBuf,
    /// The model (default: the one the index records; another one is refused).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Texts embedded per step.
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub chunk: usize,
}

#[derive(Args, Debug)]
pub struct IndexQueryArgs {
    /// The index folder.
    pub index: PathBuf,
    /// The query text.
    #[arg(long)]
    pub query: String,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Scan every vector instead of using the graph.
    #[arg(long)]
    pub exact: bool,
    /// The model (default: the one the index records; another one is refused).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

/// How many neighbours a vector search returns and how widely the graph is explored.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Neighbours returned per query (recall@k in `index bench`).
    #[arg(
        short,
        long = "top-k",
        alias = "k",
        default_value_t = 10,
        value_name = "K"
    )]
    pub k: usize,
    /// HNSW candidates explored per query.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub ef: usize,
}

#[derive(Args, Debug)]
pub struct IndexBenchArgs {
    /// The index folder.
    pub index: PathBuf,
    /// Query texts, as for `embed --input`.
    #[arg(long, value_name = "FILE")]
    pub queries: PathBuf,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Only the first N queries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The model (default: the one the index records; another one is refused).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RetrievalArgs {
    /// The index folder (of the BEIR corpus).
    #[arg(long, value_name = "DIR")]
    pub index: PathBuf,
    /// BEIR queries.jsonl.
    #[arg(long, value_name = "FILE")]
    pub queries: PathBuf,
    /// BEIR qrels TSV (query-id, corpus-id, score); only its queries are run.
    #[arg(long, value_name = "FILE")]
    pub qrels: PathBuf,
    /// The model (default: the one the index records; another one is refused).
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Documents retrieved per query.
    #[arg(
        short = 'k',
        long,
        alias = "k",
        default_value_t = 100,
        value_name = "K"
    )]
    pub top_k: usize,
    /// HNSW candidates explored per query.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub ef: usize,
    /// Scan every vector instead of using the graph.
    #[arg(long)]
    pub exact: bool,
    /// Keep hits whose document id equals the query id (BEIR drops them by default).
    #[arg(long)]
    pub keep_identical_ids: bool,
}

#[derive(Args, Debug)]
pub struct StsArgs {
    /// The embedding model, as for `embed --model`.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// An STS Benchmark file (sts-test.csv: TAB-separated, score in column 5, sentences in 6
    /// and 7).
    #[arg(long, value_name = "FILE", alias = "data")]
    pub input: PathBuf,
}

#[derive(Args, Debug)]
pub struct BenchEmbedArgs {
    /// The embedding model, as for `embed --model`.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Texts, as for `embed --input`.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Timed rounds over all the texts (after one warm-up round).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub rounds: usize,
}

fn progress_bar(total: Option<usize>, json: bool) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let pb = match total {
        Some(n) => indicatif::ProgressBar::new(n as u64),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} texts {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb
}

pub fn embed(a: &EmbedArgs, json: bool) -> Result<()> {
    if a.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    search::VectorFormat::from_path(&a.out)?;
    a.force.check(&a.out, "--out")?;
    let model = load_embedder(&a.model)?;
    let rows = search::count_records(&a.input)?;
    if rows == 0 {
        bail!("{}: no texts to embed", a.input.display());
    }
    let info = model.info().clone();
    let meta = vec![
        ("model".to_string(), serde_json::to_string(&info)?),
        ("rows".to_string(), rows.to_string()),
    ];
    let mut out = VectorWriter::create(&a.out, rows, model.dim(), meta)?;
    let mut done = 0;
    let mut reader = open_records(&a.input)?;
    let pb = progress_bar(Some(rows), json);
    let t0 = Instant::now();
    loop {
        let chunk = reader.next_chunk(a.chunk)?;
        if chunk.is_empty() {
            break;
        }
        let texts: Vec<&str> = chunk.iter().map(|r| r.text.as_str()).collect();
        out.write(&model.embed(&texts)?)?;
        done += chunk.len();
        pb.set_position(done as u64);
    }
    out.finish()?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    emit(
        json,
        json!({"out": a.out, "rows": rows, "dim": info.dim, "model": info.name,
               "seconds": secs, "texts_per_s": rows as f64 / secs, "peak_rss_mib": peak_rss_mb()}),
        &format!(
            "wrote {} embeddings of dimension {} to {} ({:.0} texts/s, peak RSS {:.0} MiB)",
            rows,
            info.dim,
            a.out.display(),
            rows as f64 / secs,
            peak_rss_mb()
        ),
    )
}

fn report_build(r: &index::BuildReport, json: bool, what: &str) -> Result<()> {
    emit(
        json,
        json!({"index": r.dir, "added": r.added, "count": r.count, "dim": r.dim,
               "embed_seconds": r.embed_seconds, "graph_seconds": r.graph_seconds,
               "total_seconds": r.total_seconds, "disk_bytes": r.disk_bytes,
               "hnsw": r.has_graph, "peak_rss_mib": peak_rss_mb()}),
        &format!(
            "{what} {}: {} vectors added, {} in all (dim {}); embedding {:.1} s, graph {:.1} s, total {:.1} s; {:.1} MiB on disk; {}; peak RSS {:.0} MiB",
            r.dir.display(),
            r.added,
            r.count,
            r.dim,
            r.embed_seconds,
            r.graph_seconds,
            r.total_seconds,
            r.disk_bytes as f64 / (1 << 20) as f64,
            if r.has_graph { "HNSW graph" } else { "exact search" },
            peak_rss_mb()
        ),
    )
}

pub fn index_cmd(cmd: &IndexCmd, json: bool) -> Result<()> {
    match cmd {
        IndexCmd::Build(a) => {
            if a.chunk == 0 || a.m < 2 || a.m > 255 || a.ef_construction == 0 {
                bail!("--chunk and --ef-construction must be at least 1, --m between 2 and 255");
            }
            a.force.check(&a.out, "--out")?;
            let model = load_embedder(&a.model)?;
            let opts = BuildOptions {
                hnsw_threshold: a.hnsw_threshold,
                hnsw: HnswParams {
                    m: a.m,
                    ef_construction: a.ef_construction,
                },
                chunk: a.chunk,
                replace: a.force.force,
            };
            let pb = progress_bar(None, json);
            let r = index::build(model.as_ref(), &a.input, &a.out, &opts, &|n| {
                pb.set_position(n as u64)
            })?;
            pb.finish_and_clear();
            report_build(&r, json, "built")
        }
        IndexCmd::Add(a) => {
            if a.chunk == 0 {
                bail!("--chunk must be at least 1");
            }
            let model = index_embedder(&a.index, a.model.as_deref())?;
            let pb = progress_bar(None, json);
            let r = index::add(model.as_ref(), &a.input, &a.index, a.chunk, &|n| {
                pb.set_position(n as u64)
            })?;
            pb.finish_and_clear();
            report_build(&r, json, "appended to")
        }
        IndexCmd::Query(a) => {
            check_k(a.search.k, a.search.ef)?;
            let idx = Index::open(&a.index)?;
            let model = index_embedder(&a.index, a.model.as_deref())?;
            let q = index::embed_queries(model.as_ref(), &idx, &[a.query.as_str()])?;
            let hits = idx.nearest(&q, a.search.k, a.search.ef, a.exact)?;
            for (rank, h) in hits.iter().enumerate() {
                let text = idx.text(h.row);
                let short: String = text.chars().take(100).collect();
                emit(
                    json,
                    json!({"rank": rank + 1, "id": h.id, "score": h.score, "text": text}),
                    &format!("{:>3}  {:.4}  {}  {}", rank + 1, h.score, h.id, short),
                )?;
            }
            Ok(())
        }
        IndexCmd::Bench(a) => index_bench(a, json),
    }
}

/// -k and --ef must be at least 1.
fn check_k(k: usize, ef: usize) -> Result<()> {
    if k == 0 || ef == 0 {
        bail!("-k (--top-k) and --ef must be at least 1");
    }
    Ok(())
}

fn index_bench(a: &IndexBenchArgs, json: bool) -> Result<()> {
    check_k(a.search.k, a.search.ef)?;
    let t_open = Instant::now();
    let idx = Index::open(&a.index)?;
    let open_s = t_open.elapsed().as_secs_f64();
    let model = index_embedder(&a.index, a.model.as_deref())?;
    let mut records = open_records(&a.queries)?.read_all()?;
    if let Some(n) = a.limit {
        records.truncate(n);
    }
    if records.is_empty() {
        bail!("{}: no queries", a.queries.display());
    }
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    let q = index::embed_queries(model.as_ref(), &idx, &texts)?;
    let b = query::bench_queries(&idx, &q, a.search.k, a.search.ef)?;
    let (load_s, approx_s, exact_s, recall) = (
        b.graph_load_seconds,
        b.graph_seconds,
        b.exact_seconds,
        b.recall_at_k,
    );
    let n = records.len();
    let disk: u64 = idx.meta.files.values().sum();
    emit(
        json,
        json!({"index": a.index, "vectors": idx.len(), "queries": n, "k": a.search.k, "ef": a.search.ef,
               "hnsw": idx.meta.has_graph, "recall_at_k": recall,
               "qps": n as f64 / approx_s, "qps_exact": n as f64 / exact_s,
               "open_seconds": open_s, "graph_load_seconds": load_s,
               "disk_bytes": disk, "peak_rss_mib": peak_rss_mb(),
               "threads": rayon::current_num_threads()}),
        &format!(
            "{} vectors (opened in {:.2} s, graph loaded in {:.2} s), {} queries: recall@{} {:.4} against exact search; {:.0} queries/s (ef {}) vs {:.0} exact; {:.1} MiB on disk; peak RSS {:.0} MiB",
            idx.len(),
            open_s,
            load_s,
            n,
            a.search.k,
            recall,
            n as f64 / approx_s,
            a.search.ef,
            n as f64 / exact_s,
            disk as f64 / (1 << 20) as f64,
            peak_rss_mb()
        ),
    )
}

pub fn eval_retrieval(a: &RetrievalArgs, json: bool) -> Result<()> {
    check_k(a.top_k, a.ef)?;
    let idx = Index::open(&a.index)?;
    let model = index_embedder(&a.index, a.model.as_deref())?;
    let qrels = retrieval::read_qrels(&a.qrels)?;
    let queries: Vec<(String, String)> = retrieval::read_queries(&a.queries)?
        .into_iter()
        .filter(|(id, _)| qrels.contains_key(id))
        .collect();
    if queries.is_empty() {
        bail!(
            "{}: none of its queries has judgments in {}",
            a.queries.display(),
            a.qrels.display()
        );
    }
    let texts: Vec<&str> = queries.iter().map(|(_, t)| t.as_str()).collect();
    let t0 = Instant::now();
    let q = index::embed_queries(model.as_ref(), &idx, &texts)?;
    let ids: Vec<&str> = queries.iter().map(|(id, _)| id.as_str()).collect();
    let search = (a.top_k, a.ef, a.exact);
    let run = query::retrieve(&idx, &ids, &q, search, a.keep_identical_ids)?;
    let secs = t0.elapsed().as_secs_f64();
    let opts = retrieval::EvalOptions {
        ignore_identical_ids: !a.keep_identical_ids,
    };
    let s = retrieval::scores(&run, &qrels, &opts)?;
    emit(
        json,
        json!({"index": a.index, "queries": s.queries, "ndcg@10": s.ndcg_at_10,
               "mrr@10": s.mrr_at_10, "recall@100": s.recall_at_100,
               "exact": a.exact || !idx.meta.has_graph, "seconds": secs}),
        &format!(
            "{} queries: nDCG@10 {:.4}, MRR@10 {:.4}, Recall@100 {:.4}",
            s.queries, s.ndcg_at_10, s.mrr_at_10, s.recall_at_100
        ),
    )
}

pub fn eval_sts(a: &StsArgs, json: bool) -> Result<()> {
    let pairs = sts::read_sts(&a.input)?;
    let model = load_embedder(&a.model)?;
    let (spearman, pearson) = query::sts_correlations(model.as_ref(), &pairs)?;
    emit(
        json,
        json!({"data": a.input, "pairs": pairs.len(), "spearman": spearman, "pearson": pearson}),
        &format!(
            "{} pairs: cosine Spearman {:.4}, Pearson {:.4}",
            pairs.len(),
            spearman,
            pearson
        ),
    )
}

pub fn bench_embed(a: &BenchEmbedArgs, json: bool) -> Result<()> {
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let model = load_embedder(&a.model)?;
    let records = open_records(&a.input)?.read_all()?;
    if records.is_empty() {
        bail!("{}: no texts", a.input.display());
    }
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    model.embed(&texts)?; // warm-up
    for round in 0..a.rounds {
        let t0 = Instant::now();
        std::hint::black_box(model.embed(&texts)?);
        let s = t0.elapsed().as_secs_f64();
        emit(
            json,
            super::commands::with_isa(json!({"round": round, "sentences": texts.len(),
                   "seconds": s, "sentences_per_s": texts.len() as f64 / s,
                   "threads": rayon::current_num_threads()})),
            &format!(
                "round {round}: {} sentences in {s:.3} s = {:.1} sentences/s ({} threads)",
                texts.len(),
                texts.len() as f64 / s,
                rayon::current_num_threads()
            ),
        )?;
    }
    Ok(())
}
