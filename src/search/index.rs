//! An on-disk vector index: one folder holding
//! - `index.json`: the model that made the vectors ([`ModelInfo`]), their count and dimension,
//!   the HNSW parameters, and every other file's size (a truncated file is caught on open);
//! - `vectors.f32`: the L2-normalised vectors, (count, dim) little-endian f32, memory-mapped;
//! - `docs.jsonl`: one `{"id", "text"}` line per vector, in the same order;
//! - `hnsw.hnsw.graph` and `hnsw.hnsw.data`: an HNSW graph (Malkov & Yashunin 2018) built by the
//!   `hnsw_rs` crate, once the index holds `hnsw_threshold` vectors or more.
//!
//! Scores are cosine similarities (dot products of unit vectors). Below the threshold every
//! query is exact: a scan of all vectors, which is also what `--exact` asks for at any size.
//! `add` appends records: the vectors and documents are extended and the graph gets the new
//! points inserted, written beside the old files and swapped in when complete.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo, ReloadOptions};
use memmap2::Mmap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::embed::{l2_normalize, Embedder, ModelInfo};
use super::{open_records, Record};
use crate::error::{Error, Result};
use crate::kernels::simd;

const META: &str = "index.json";
const VECTORS: &str = "vectors.f32";
const DOCS: &str = "docs.jsonl";
const HNSW_BASE: &str = "hnsw";
const HNSW_GRAPH: &str = "hnsw.hnsw.graph";
const HNSW_DATA: &str = "hnsw.hnsw.data";
const FORMAT: u32 = 1;

/// Cosine distance between unit vectors, 1 − a·b, clamped at 0 (rounding can put a·a above 1).
/// hnsw_rs's own `DistDot` asserts instead of clamping.
#[derive(Default, Clone, Copy)]
pub struct CosineDistance;

simd::simd_fn! {
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        simd::dot(a, b)
    }
}

impl Distance<f32> for CosineDistance {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// The HNSW graph's parameters.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct HnswParams {
    /// Neighbours kept per node and layer (M).
    pub m: usize,
    /// Candidates explored while inserting.
    pub ef_construction: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 24,
            ef_construction: 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexMeta {
    pub format: u32,
    pub model: ModelInfo,
    pub dim: usize,
    pub count: usize,
    /// From this many vectors on, queries go through the HNSW graph.
    pub hnsw_threshold: usize,
    pub hnsw: HnswParams,
    /// Whether the graph files exist (count ≥ hnsw_threshold).
    pub has_graph: bool,
    /// Size in bytes of every file of the index but index.json.
    pub files: BTreeMap<String, u64>,
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub hnsw_threshold: usize,
    pub hnsw: HnswParams,
    /// Records embedded per step: what bounds memory while the corpus streams through.
    pub chunk: usize,
    /// Replace an index (or any folder) already at the output once the new one is complete;
    /// without it an existing index or non-empty folder is refused.
    pub replace: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            hnsw_threshold: 20_000,
            hnsw: HnswParams::default(),
            chunk: 8192,
            replace: false,
        }
    }
}

/// What a build or append did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub dir: PathBuf,
    pub added: usize,
    pub count: usize,
    pub dim: usize,
    pub embed_seconds: f64,
    pub graph_seconds: f64,
    pub total_seconds: f64,
    pub disk_bytes: u64,
    pub has_graph: bool,
}

/// One search result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    /// Row of the vector in the index.
    pub row: usize,
}

fn data_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(12).collect()
}

/// Refuses to mix models: `model` must be the one the index was built with.
pub fn check_model(meta: &IndexMeta, model: &ModelInfo, dir: &Path) -> Result<()> {
    if model.dim != meta.dim {
        return Err(data_err(
            &dir.join(META),
            format!(
                "the index holds {}-dimensional vectors of model {}, but model {} gives {} dimensions; query it with the model it was built with",
                meta.dim, meta.model.name, model.name, model.dim
            ),
        ));
    }
    if model.fingerprint != meta.model.fingerprint || model.kind != meta.model.kind {
        return Err(data_err(
            &dir.join(META),
            format!(
                "the index was built with model {} ({} {}…), not with {} ({} {}…); query it with the model it was built with",
                meta.model.name,
                meta.model.kind,
                short(&meta.model.fingerprint),
                model.name,
                model.kind,
                short(&model.fingerprint)
            ),
        ));
    }
    Ok(())
}

/// Streams `corpus` through the embedder into the files of `dir` (vectors and documents
/// appended), checking ids against `seen`. Returns the number of records added and the
/// embedding time.
fn append_records(
    embedder: &dyn Embedder,
    corpus: &Path,
    dir: &Path,
    seen: &mut HashMap<String, usize>,
    chunk: usize,
    progress: &dyn Fn(usize),
) -> Result<(usize, f64)> {
    use std::io::Write;
    let open = |name: &str| -> Result<std::io::BufWriter<std::fs::File>> {
        let p = dir.join(name);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        Ok(std::io::BufWriter::with_capacity(1 << 20, f))
    };
    let (mut vec_out, mut doc_out) = (open(VECTORS)?, open(DOCS)?);
    let mut reader = open_records(corpus)?;
    let (mut added, mut seconds) = (0, 0.0);
    let dim = embedder.dim();
    loop {
        let records: Vec<Record> = reader.next_chunk(chunk)?;
        if records.is_empty() {
            break;
        }
        for r in &records {
            if let Some(first) = seen.insert(r.id.clone(), r.line) {
                let where_ = match first {
                    0 => "already in the index".to_string(),
                    n => format!("first on line {n}"),
                };
                return Err(data_err(
                    corpus,
                    format!(
                        "line {}: duplicate id {:?} ({where_}); ids must be unique in an index",
                        r.line, r.id
                    ),
                ));
            }
        }
        let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
        let t0 = Instant::now();
        let mut v = embedder.embed(&texts)?;
        seconds += t0.elapsed().as_secs_f64();
        l2_normalize(&mut v, dim);
        let io = |e| Error::io(dir.join(VECTORS), e);
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        vec_out.write_all(&bytes).map_err(io)?;
        for r in &records {
            let json = serde_json::json!({"id": r.id, "text": r.text});
            writeln!(doc_out, "{json}").map_err(|e| Error::io(dir.join(DOCS), e))?;
        }
        added += records.len();
        progress(added);
    }
    vec_out
        .flush()
        .map_err(|e| Error::io(dir.join(VECTORS), e))?;
    doc_out.flush().map_err(|e| Error::io(dir.join(DOCS), e))?;
    Ok((added, seconds))
}

/// A fresh folder next to `dir` for an index being written, removed again (by the guard)
/// unless the write completes.
fn make_stage(dir: &Path) -> Result<(PathBuf, Cleanup)> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let stage = dir.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    let registered = crate::error::TempPath::register(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| Error::io(&stage, e))?;
    Ok((
        stage.clone(),
        Cleanup {
            path: Some(stage),
            _registered: registered,
        },
    ))
}

/// Removes a staging folder when dropped unless disarmed (a failed build leaves nothing
/// behind); registered, so that an interrupted process removes it too.
struct Cleanup {
    path: Option<PathBuf>,
    _registered: crate::error::TempPath,
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn file_sizes(dir: &Path, has_graph: bool) -> Result<BTreeMap<String, u64>> {
    let mut names = vec![VECTORS, DOCS];
    if has_graph {
        names.extend([HNSW_GRAPH, HNSW_DATA]);
    }
    names
        .into_iter()
        .map(|n| {
            let p = dir.join(n);
            let len = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            Ok((n.to_string(), len))
        })
        .collect()
}

fn dump_graph(hnsw: &Hnsw<f32, CosineDistance>, dir: &Path) -> Result<()> {
    // A reloaded graph refuses to overwrite its files (it may map them): none may be there.
    for f in [HNSW_GRAPH, HNSW_DATA] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let name = hnsw
        .file_dump(dir, HNSW_BASE)
        .map_err(|e| data_err(dir, format!("writing the HNSW graph: {e}")))?;
    if name != HNSW_BASE {
        return Err(data_err(dir, format!("hnsw_rs wrote basename {name}")));
    }
    Ok(())
}

/// The index as it stood before an append: its folder and metadata.
struct Previous<'a> {
    dir: &'a Path,
    meta: &'a IndexMeta,
}

/// Appends the records of `corpus` to the staged index in `stage` (empty for a build, the old
/// vectors and documents for an append), brings the graph up to date and writes index.json.
/// `meta` carries the model and HNSW settings; its count, graph flag and file sizes are
/// replaced.
#[allow(clippy::too_many_arguments)]
fn stage_records(
    embedder: &dyn Embedder,
    corpus: &Path,
    stage: &Path,
    prev: Option<Previous>,
    mut meta: IndexMeta,
    seen: &mut HashMap<String, usize>,
    chunk: usize,
    progress: &dyn Fn(usize),
) -> Result<(IndexMeta, usize, f64, f64)> {
    let (added, embed_seconds) = append_records(embedder, corpus, stage, seen, chunk, progress)?;
    if added == 0 {
        return Err(data_err(
            corpus,
            "the corpus has no records; nothing to index",
        ));
    }
    let (dim, start) = (meta.dim, meta.count);
    let count = start + added;
    let t1 = Instant::now();
    let has_graph = count >= meta.hnsw_threshold;
    if has_graph {
        let map = map_vectors(&stage.join(VECTORS), count * dim)?;
        // Insert the new points into the old graph, or every point into a new one.
        let (hnsw, first) = match prev {
            Some(p) if p.meta.has_graph => {
                let mut g = load_graph(p.dir, start)?;
                // A reloaded graph extends candidates when inserting; a new one does not.
                g.set_extend_candidates(false);
                (g, start)
            }
            _ => {
                let p = meta.hnsw;
                (
                    Hnsw::new(p.m, count, 16, p.ef_construction, CosineDistance),
                    0,
                )
            }
        };
        let rows: Vec<(&[f32], usize)> = as_f32(&map)[first * dim..]
            .chunks_exact(dim)
            .zip(first..count)
            .collect();
        hnsw.parallel_insert_slice(&rows);
        dump_graph(&hnsw, stage)?;
    }
    let graph_seconds = t1.elapsed().as_secs_f64();
    meta.count = count;
    meta.has_graph = has_graph;
    meta.files = file_sizes(stage, has_graph)?;
    write_meta(stage, &meta)?;
    Ok((meta, added, embed_seconds, graph_seconds))
}

/// Builds a new index in `dir` (which must not exist, or be an empty folder) from the records
/// of `corpus`, streamed in chunks.
pub fn build(
    embedder: &dyn Embedder,
    corpus: &Path,
    dir: &Path,
    opts: &BuildOptions,
    progress: &dyn Fn(usize),
) -> Result<BuildReport> {
    let t0 = Instant::now();
    if dir.join(META).exists() && !opts.replace {
        return Err(data_err(
            dir,
            "an index already exists here; append with `index add`, replace it with --force or choose another folder",
        ));
    }
    if !opts.replace
        && dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_some()
    {
        return Err(data_err(
            dir,
            "the folder exists and is not empty; pass --force to replace it or choose another folder",
        ));
    }
    let (stage, mut cleanup) = make_stage(dir)?;
    let empty = IndexMeta {
        format: FORMAT,
        model: embedder.info().clone(),
        dim: embedder.dim(),
        count: 0,
        hnsw_threshold: opts.hnsw_threshold,
        hnsw: opts.hnsw,
        has_graph: false,
        files: BTreeMap::new(),
    };
    let mut seen = HashMap::new();
    let (meta, added, embed_s, graph_s) = stage_records(
        embedder, corpus, &stage, None, empty, &mut seen, opts.chunk, progress,
    )?;
    swap_in(&stage, dir)?;
    cleanup.path = None;
    Ok(BuildReport::new(dir, &meta, added, embed_s, graph_s, t0))
}

/// Appends the records of `corpus` to the index in `dir`, which must have been built with the
/// same model. The new state is written beside the old one and swapped in at the end.
pub fn add(
    embedder: &dyn Embedder,
    corpus: &Path,
    dir: &Path,
    chunk: usize,
    progress: &dyn Fn(usize),
) -> Result<BuildReport> {
    let t0 = Instant::now();
    let old = Index::open(dir)?;
    check_model(&old.meta, embedder.info(), dir)?;
    // Ids already in the index map to line 0.
    let mut seen: HashMap<String, usize> = old.ids.iter().map(|id| (id.clone(), 0)).collect();
    let (stage, mut cleanup) = make_stage(dir)?;
    for f in [VECTORS, DOCS] {
        std::fs::copy(dir.join(f), stage.join(f)).map_err(|e| Error::io(stage.join(f), e))?;
    }
    let prev = Previous {
        dir,
        meta: &old.meta,
    };
    let (meta, added, embed_s, graph_s) = stage_records(
        embedder,
        corpus,
        &stage,
        Some(prev),
        old.meta.clone(),
        &mut seen,
        chunk,
        progress,
    )?;
    drop(old);
    swap_in(&stage, dir)?;
    cleanup.path = None;
    Ok(BuildReport::new(dir, &meta, added, embed_s, graph_s, t0))
}

/// Moves a complete staged folder to `dir`. A folder already there is set aside, the new one
/// moved in and the old one removed; if the move fails the old one is put back, so a write
/// either completes or changes nothing.
fn swap_in(stage: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return std::fs::rename(stage, dir).map_err(|e| Error::io(dir, e));
    }
    let aside = dir.with_file_name(format!(
        ".{}.old{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::rename(dir, &aside).map_err(|e| Error::io(dir, e))?;
    if let Err(e) = std::fs::rename(stage, dir) {
        let _ = std::fs::rename(&aside, dir);
        return Err(Error::io(dir, e));
    }
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

impl BuildReport {
    fn new(
        dir: &Path,
        meta: &IndexMeta,
        added: usize,
        embed_s: f64,
        graph_s: f64,
        t0: Instant,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            added,
            count: meta.count,
            dim: meta.dim,
            embed_seconds: embed_s,
            graph_seconds: graph_s,
            total_seconds: t0.elapsed().as_secs_f64(),
            disk_bytes: meta.files.values().sum(),
            has_graph: meta.has_graph,
        }
    }
}

fn write_meta(dir: &Path, meta: &IndexMeta) -> Result<()> {
    let text = serde_json::to_string_pretty(meta).expect("metadata serializes");
    crate::error::write_atomic(&dir.join(META), text.as_bytes())
}

fn map_vectors(path: &Path, floats: usize) -> Result<Mmap> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the index's files are not modified while an index is open (appends write new
    // files and rename them into place).
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    if map.len() != floats * 4 {
        return Err(data_err(
            path,
            format!("{} bytes, {} expected", map.len(), floats * 4),
        ));
    }
    Ok(map)
}

fn as_f32(map: &Mmap) -> &[f32] {
    let (head, body, tail) = unsafe { map.align_to::<f32>() };
    // A page-aligned map of whole f32s has neither head nor tail.
    assert!(head.is_empty() && tail.is_empty());
    body
}

/// Loads the HNSW graph of the index in `dir`, its vectors memory-mapped (hnsw_rs's data file)
/// rather than copied. hnsw_rs asserts on malformed files instead of returning errors, so the
/// load runs under `catch_unwind` and a panic becomes a corrupt-file error; the file sizes were
/// checked against index.json before.
fn load_graph(dir: &Path, count: usize) -> Result<Hnsw<'static, f32, CosineDistance>> {
    let corrupt =
        |msg: String| data_err(&dir.join(HNSW_GRAPH), format!("corrupt HNSW graph: {msg}"));
    // The loaded graph borrows its loader for its whole life: the loader (paths, options and
    // the data map) is leaked once per load.
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new_with_options(
        dir,
        HNSW_BASE,
        ReloadOptions::default().set_mmap(true),
    )));
    // Silence the default hook meanwhile, so that a failure is one error line, not a panic
    // message too.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    fn load(io: &'static mut HnswIo) -> anyhow::Result<Hnsw<'static, f32, CosineDistance>> {
        io.load_hnsw::<f32, CosineDistance>()
    }
    let mut io = Some(io);
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        load(io.take().expect("called once"))
    }));
    std::panic::set_hook(hook);
    let g = match loaded {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return Err(corrupt(e.to_string())),
        Err(_) => {
            return Err(corrupt(
                "the graph reader failed on it; rebuild the index".into(),
            ))
        }
    };
    if g.get_nb_point() != count {
        return Err(corrupt(format!(
            "{} points for {count} vectors; rebuild the index",
            g.get_nb_point()
        )));
    }
    Ok(g)
}

/// An open index.
pub struct Index {
    pub dir: PathBuf,
    pub meta: IndexMeta,
    vectors: Mmap,
    pub ids: Vec<String>,
    /// Byte offset of each document line in docs.jsonl.
    doc_offsets: Vec<usize>,
    docs: Mmap,
    graph: std::sync::OnceLock<Hnsw<'static, f32, CosineDistance>>,
}

impl Index {
    /// Reads and checks `index.json` of the index in `dir`, and that every file has the size
    /// it records, without reading the files.
    pub fn read_meta(dir: &Path) -> Result<IndexMeta> {
        let meta_path = dir.join(META);
        if !meta_path.exists() {
            return Err(data_err(
                dir,
                "not an index: index.json is missing (build one with `index build`)",
            ));
        }
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta: IndexMeta = serde_json::from_str(&text)
            .map_err(|e| data_err(&meta_path, format!("corrupt index metadata: {e}")))?;
        if meta.format != FORMAT {
            return Err(data_err(
                &meta_path,
                format!("index format {} (this build reads {FORMAT})", meta.format),
            ));
        }
        let bytes = meta
            .count
            .checked_mul(meta.dim)
            .and_then(|n| n.checked_mul(4));
        if meta.dim == 0 || meta.count == 0 || bytes.is_none() {
            return Err(data_err(
                &meta_path,
                format!(
                    "corrupt index metadata: count {} × dim {}",
                    meta.count, meta.dim
                ),
            ));
        }
        for (name, &want) in &meta.files {
            let p = dir.join(name);
            let got = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
            if got != want {
                return Err(data_err(
                    &p,
                    format!("{got} bytes, but the index recorded {want}: the file is truncated or was modified; rebuild the index"),
                ));
            }
        }
        Ok(meta)
    }

    /// Opens the index in `dir` (see [`Index::read_meta`] for the checks).
    pub fn open(dir: &Path) -> Result<Self> {
        let meta = Self::read_meta(dir)?;
        let vectors = map_vectors(&dir.join(VECTORS), meta.count * meta.dim)?;
        let docs_path = dir.join(DOCS);
        let f = std::fs::File::open(&docs_path).map_err(|e| Error::io(&docs_path, e))?;
        // SAFETY: as for the vectors.
        let docs = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&docs_path, e))?;
        let mut ids = Vec::with_capacity(meta.count);
        let mut doc_offsets = Vec::with_capacity(meta.count);
        let mut off = 0;
        for line in docs.split(|&b| b == b'\n') {
            if !line.is_empty() {
                #[derive(Deserialize)]
                struct Id {
                    id: String,
                }
                let id: Id = serde_json::from_slice(line)
                    .map_err(|e| data_err(&docs_path, format!("line {}: {e}", ids.len() + 1)))?;
                ids.push(id.id);
                doc_offsets.push(off);
            }
            off += line.len() + 1;
        }
        if ids.len() != meta.count {
            return Err(data_err(
                &docs_path,
                format!("{} documents for {} vectors", ids.len(), meta.count),
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            meta,
            vectors,
            ids,
            doc_offsets,
            docs,
            graph: std::sync::OnceLock::new(),
        })
    }

    pub fn len(&self) -> usize {
        self.meta.count
    }

    pub fn is_empty(&self) -> bool {
        self.meta.count == 0
    }

    pub fn vectors(&self) -> &[f32] {
        as_f32(&self.vectors)
    }

    /// The text stored for row `row`.
    pub fn text(&self, row: usize) -> String {
        let start = self.doc_offsets[row];
        let end = self.docs[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(self.docs.len(), |p| start + p);
        serde_json::from_slice::<serde_json::Value>(&self.docs[start..end])
            .ok()
            .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(String::from))
            .unwrap_or_default()
    }

    /// The HNSW graph, loaded from disk on first use.
    fn graph(&self) -> Result<&Hnsw<'static, f32, CosineDistance>> {
        if let Some(g) = self.graph.get() {
            return Ok(g);
        }
        let g = load_graph(&self.dir, self.meta.count)?;
        Ok(self.graph.get_or_init(|| g))
    }

    /// Exact top-k by cosine for one unit query vector: a scan of every vector.
    pub fn search_exact(&self, q: &[f32], k: usize) -> Vec<Hit> {
        let dim = self.meta.dim;
        let rows_per_task = 4096;
        let best: Vec<(f32, usize)> = self
            .vectors()
            .par_chunks(dim * rows_per_task)
            .enumerate()
            .map(|(t, block)| {
                let scores = block
                    .chunks_exact(dim)
                    .enumerate()
                    .map(|(i, v)| (dot(q, v), t * rows_per_task + i));
                top_k(scores, k)
            })
            .reduce(Vec::new, |a, b| top_k(a.into_iter().chain(b), k));
        self.hits(best)
    }

    /// Top-k through the HNSW graph (exploring `ef` candidates, at least k), or exact below
    /// the threshold. Scores are recomputed from the stored vectors.
    pub fn search(&self, q: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>> {
        if !self.meta.has_graph {
            return Ok(self.search_exact(q, k));
        }
        let g = self.graph()?;
        let dim = self.meta.dim;
        let found = g.search(q, k, ef.max(k));
        let scored = found
            .into_iter()
            .map(|n| n.d_id)
            .filter(|&row| row < self.meta.count)
            .map(|row| (dot(q, &self.vectors()[row * dim..(row + 1) * dim]), row));
        Ok(self.hits(top_k(scored, k)))
    }

    fn hits(&self, best: Vec<(f32, usize)>) -> Vec<Hit> {
        best.into_iter()
            .map(|(score, row)| Hit {
                id: self.ids[row].clone(),
                score,
                row,
            })
            .collect()
    }
}

/// The k highest (score, row) pairs, best first; ties go to the lower row.
fn top_k(items: impl Iterator<Item = (f32, usize)>, k: usize) -> Vec<(f32, usize)> {
    let mut v: Vec<(f32, usize)> = items.collect();
    let cmp = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if v.len() > k {
        v.select_nth_unstable_by(k, cmp);
        v.truncate(k);
    }
    v.sort_by(cmp);
    v
}

/// Embeds `texts` with the index's model check and returns unit vectors (n, dim).
pub fn embed_queries(embedder: &dyn Embedder, index: &Index, texts: &[&str]) -> Result<Vec<f32>> {
    check_model(&index.meta, embedder.info(), &index.dir)?;
    let mut v = embedder.embed(texts)?;
    l2_normalize(&mut v, embedder.dim());
    Ok(v)
}
