//! Embeddings and vector indexes: all-MiniLM-L6-v2 against sentence-transformers (fixture
//! from scripts/gen_minilm_fixture.py), STS-B test against the published Spearman, decoder
//! embeddings, and index build / append / reopen / HNSW recall / bad input through the CLI.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_clear_error, decodex, decodex_json, minilm};
use decodex::search::{embed::SentenceEncoder, read_npy, Embedder};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/minilm")
        .join(name)
}

fn texts(path: &Path) -> Vec<String> {
    decodex::search::open_records(path)
        .unwrap()
        .read_all()
        .unwrap()
        .into_iter()
        .map(|r| r.text)
        .collect()
}

use decodex::eval::sts::cosine;

/// `decodex index build --model M --corpus C --out DIR EXTRA...`.
fn build(m: &Path, corpus: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "index",
        "build",
        "--model",
        s(m),
        "--corpus",
        s(corpus),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    decodex(&args)
}

fn ok_json(out: std::process::Output) -> serde_json::Value {
    common::json_of(&out, "index build")
}

#[test]
fn minilm_embeddings_equal_sentence_transformers() {
    let enc = SentenceEncoder::load(&minilm()).unwrap();
    assert_eq!((enc.max_len, enc.normalize), (256, true));
    let sentences = texts(&fixture("sentences.jsonl"));
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();

    // Token ids, truncation included, for the first 50 texts.
    let ids = enc.tokenize(&refs).unwrap();
    let tokens = std::fs::read_to_string(fixture("tokens.jsonl")).unwrap();
    for line in tokens.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let i = v["index"].as_u64().unwrap() as usize;
        let want: Vec<u32> = v["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids[i], want, "token ids of text {i}");
    }

    let (want, rows, dim) = read_npy(&fixture("embeddings.npy")).unwrap();
    assert_eq!((rows, dim), (sentences.len(), 384));
    let got = enc.embed(&refs).unwrap();
    assert_eq!(got.len(), want.len());
    let (mut worst, mut worst_i, mut max_abs) = (1f64, 0, 0f32);
    for (i, (g, w)) in got
        .chunks_exact(dim)
        .zip(want.chunks_exact(dim))
        .enumerate()
    {
        let c = cosine(g, w);
        if c.is_nan() || c < worst {
            (worst, worst_i) = (c, i);
        }
        for (a, b) in g.iter().zip(w) {
            max_abs = common::nan_max(max_abs, (a - b).abs());
        }
    }
    println!(
        "EMBEDDINGS {} texts: min cosine {worst:.12} (1 - cosine = {:.2e}, text {worst_i}), max |diff| {max_abs:.3e}",
        rows,
        1.0 - worst
    );
    // README: 1 - cosine <= 1.3e-12 (issue 7's target was cosine >= 0.99999); headroom for
    // other CPUs' summation orders.
    assert!(1.0 - worst <= 1e-10, "text {worst_i}: cosine {worst}");
    // README: max |diff| 2.9e-7. sentence-transformers' own runs differ by up to 2.3e-7 between
    // batch sizes and threads.
    assert!(max_abs <= 1e-6, "max |diff| {max_abs}");
}

#[test]
fn stsb_test_spearman_matches_the_published_figure() {
    let data = decodex::train::config::resolve_data_path(Path::new("search/stsb/sts-test.csv"));
    let m = minilm();
    let v = decodex_json(&[
        "eval",
        "sts",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
    ]);
    let s = v["spearman"].as_f64().unwrap();
    println!("STS-B test: {} pairs, Spearman {s:.4}", v["pairs"]);
    assert_eq!(v["pairs"], 1379);
    // MTEB's all-MiniLM-L6-v2 STSBenchmark test figure.
    assert!((s - 0.8203).abs() <= 0.005, "Spearman {s}");
}

/// Writes `n` records of real sentences (STS-B test) as JSONL with ids `prefix{i}`.
fn write_corpus(path: &Path, prefix: &str, skip: usize, n: usize) {
    let data = decodex::train::config::resolve_data_path(Path::new("search/stsb/sts-test.csv"));
    let pairs = decodex::eval::sts::read_sts(&data).unwrap();
    let lines: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.s1.clone(), p.s2.clone()])
        .skip(skip)
        .take(n)
        .enumerate()
        .map(|(i, t)| serde_json::json!({"_id": format!("{prefix}{i}"), "text": t}).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn index_builds_appends_reopens_and_its_graph_finds_the_exact_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let m = minilm();
    let part = |name: &str, skip, n| {
        let p = dir.path().join(name);
        write_corpus(&p, name.trim_end_matches(".jsonl"), skip, n);
        p
    };
    let (a, b, c) = (
        part("a.jsonl", 0, 600),
        part("b.jsonl", 600, 300),
        part("c.jsonl", 900, 100),
    );
    let idx = dir.path().join("idx");
    // The graph starts at 800 vectors: the build searches exactly, the first append crosses
    // the threshold and builds the graph, the second inserts into it.
    let built = ok_json(build(
        &m,
        &a,
        &idx,
        &["--hnsw-threshold", "800", "--chunk", "256", "--json"],
    ));
    assert_eq!(
        (built["count"].as_u64(), built["hnsw"].as_bool()),
        (Some(600), Some(false))
    );
    for (corpus, count) in [(&b, 900), (&c, 1000)] {
        let added = decodex_json(&["index", "add", s(&idx), "--corpus", s(corpus), "--json"]);
        assert_eq!(
            (added["count"].as_u64(), added["hnsw"].as_bool()),
            (Some(count), Some(true))
        );
    }

    // A query finds its own sentence first, from each part, through the reopened graph.
    for (corpus, i, id) in [(&a, 17, "a17"), (&b, 123, "b123"), (&c, 42, "c42")] {
        let query = texts(corpus)[i].clone();
        let out = decodex(&[
            "index",
            "query",
            s(&idx),
            "--query",
            &query,
            "-k",
            "3",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let first: serde_json::Value =
            serde_json::from_slice(out.stdout.split(|&c| c == b'\n').next().unwrap()).unwrap();
        assert_eq!(first["id"], id, "{first}");
        assert!(first["score"].as_f64().unwrap() > 0.999);
        assert_eq!(first["text"], query.as_str());
    }

    // Recall of the graph against exact search on held-out sentences.
    let q = part("q.jsonl", 1000, 200);
    let bench = decodex_json(&[
        "index",
        "bench",
        s(&idx),
        "--queries",
        s(&q),
        "-k",
        "10",
        "--json",
    ]);
    let recall = bench["recall_at_k"].as_f64().unwrap();
    println!("HNSW recall@10 on 1,000 vectors: {recall:.4}");
    assert_eq!(bench["hnsw"], true);
    assert!(recall >= 0.95, "{bench}");

    // The library view agrees with the files: 1,000 unit vectors, ids in order.
    let index = decodex::search::index::Index::open(&idx).unwrap();
    assert_eq!(index.len(), 1000);
    assert_eq!(
        (index.ids[0].as_str(), index.ids[999].as_str()),
        ("a0", "c99")
    );
    let norm: f32 = index.vectors()[..384].iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-5);
    // No staging or set-aside folders are left.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn embed_streams_texts_to_npy_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let m = minilm();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, "first line\n\nthird line, after an empty one\n").unwrap();
    let npy = dir.path().join("e.npy");
    let v = decodex_json(&[
        "embed",
        "--model",
        s(&m),
        "--input",
        s(&input),
        "--out",
        s(&npy),
        "--chunk",
        "2",
        "--json",
    ]);
    assert_eq!(v["rows"], 3);
    let (got, rows, dim) = read_npy(&npy).unwrap();
    assert_eq!((rows, dim), (3, 384));
    let enc = SentenceEncoder::load(&m).unwrap();
    let want = enc
        .embed(&["first line", "", "third line, after an empty one"])
        .unwrap();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6);
    }
    let st = dir.path().join("e.safetensors");
    decodex_json(&[
        "embed",
        "--model",
        s(&m),
        "--input",
        s(&input),
        "--out",
        s(&st),
        "--json",
    ]);
    let loaded = decodex::nn::tensor_io::load_tensors(&st).unwrap();
    let (shape, data) = &loaded.tensors["embeddings"];
    assert_eq!(shape, &vec![3, 384]);
    assert_eq!(data, &got);
    assert!(loaded.metadata["model"].contains("all-MiniLM-L6-v2"));
}

#[test]
fn decoder_embeddings_are_mean_pooled_unit_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::trained_model(dir.path(), 5);
    let input = dir.path().join("t.txt");
    std::fs::write(&input, "ROMEO: hello\nJULIET: good night\n").unwrap();
    let out = dir.path().join("e.npy");
    let v = decodex_json(&[
        "embed",
        "--model",
        s(&run),
        "--input",
        s(&input),
        "--out",
        s(&out),
        "--json",
    ]);
    assert_eq!(v["rows"], 2);
    let (got, rows, dim) = read_npy(&out).unwrap();
    assert_eq!(rows, 2);
    for row in got.chunks_exact(dim) {
        let n: f32 = row.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
    }
    // The mean of the final hidden states, recomputed here from the model.
    let model = decodex::models::pretrained::load(&run, false, None).unwrap();
    let ids = model.tokenizer.encode("ROMEO: hello").unwrap();
    let decodex::models::pretrained::Network::Gpt(gpt) = &model.network else {
        panic!("a GPT checkpoint")
    };
    let t = ids.len();
    let idx = candle_core::Tensor::from_vec(ids, (1, t), &candle_core::Device::Cpu).unwrap();
    let hidden = gpt.hidden(&idx, None, None).unwrap().squeeze(0).unwrap();
    let rows: Vec<Vec<f32>> = hidden.to_vec2().unwrap();
    let mut mean = vec![0f32; dim];
    for r in &rows {
        mean.iter_mut().zip(r).for_each(|(m, v)| *m += v / t as f32);
    }
    let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (g, m) in got[..dim].iter().zip(&mean) {
        assert!((g - m / norm).abs() < 1e-5, "{g} vs {}", m / norm);
    }

    // A pretrained Llama-family decoder (GGUF): 576-dimensional unit vectors, and a paraphrase
    // sits closer than an unrelated sentence.
    let smol = decodex::search::load_embedder(&common::smollm2()).unwrap();
    assert_eq!((smol.dim(), smol.info().kind.as_str()), (576, "llama"));
    let v = smol
        .embed(&[
            "The cat sat on the mat.",
            "A cat was sitting on the mat.",
            "Stock markets fell sharply on Monday.",
        ])
        .unwrap();
    let (a, b, c) = (&v[..576], &v[576..1152], &v[1152..]);
    // Mean-pooled then L2-normalised: each vector has unit length.
    for (i, v) in [a, b, c].iter().enumerate() {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "vector {i} has norm {norm}");
    }
    assert!(
        cosine(a, b) > cosine(a, c),
        "{} vs {}",
        cosine(a, b),
        cosine(a, c)
    );
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = minilm();
    let p = |n: &str| dir.path().join(n);

    // An empty corpus.
    std::fs::write(p("empty.jsonl"), "").unwrap();
    let out = build(&m, &p("empty.jsonl"), &p("i0"), &[]);
    assert_clear_error(&out, &["empty.jsonl", "no records"]);
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("i0")
        })
        .count();
    assert_eq!(leftovers, 0, "a failed build leaves nothing behind");

    // Duplicate ids.
    std::fs::write(
        p("dup.jsonl"),
        "{\"_id\": \"x\", \"text\": \"one\"}\n{\"_id\": \"y\", \"text\": \"two\"}\n{\"_id\": \"x\", \"text\": \"three\"}\n",
    )
    .unwrap();
    let out = build(&m, &p("dup.jsonl"), &p("i1"), &[]);
    assert_clear_error(
        &out,
        &["dup.jsonl", "line 3: duplicate id \"x\" (first on line 1)"],
    );

    // A good index, then appending an id it already has.
    write_corpus(&p("c.jsonl"), "c", 0, 50);
    let idx = p("idx");
    ok_json(build(&m, &p("c.jsonl"), &idx, &["--json"]));
    let meta = std::fs::read(idx.join("index.json")).unwrap();
    let out = decodex(&["index", "add", s(&idx), "--corpus", s(&p("c.jsonl"))]);
    assert_clear_error(&out, &["duplicate id \"c0\" (already in the index)"]);
    assert_eq!(
        std::fs::read(idx.join("index.json")).unwrap(),
        meta,
        "a failed add changes nothing"
    );
    // Building over an existing index is refused.
    let out = build(&m, &p("c.jsonl"), &idx, &[]);
    assert_clear_error(&out, &["already exists"]);

    // Another model: a decoder of another dimension, and a changed copy of the same encoder.
    let run = common::trained_model(dir.path(), 2);
    let out = decodex(&[
        "index",
        "query",
        s(&idx),
        "--query",
        "hi",
        "--model",
        s(&run),
    ]);
    assert_clear_error(&out, &["index.json", "384-dimensional", "built with"]);
    let other = p("other-minilm");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(m.join(f), other.join(f)).unwrap();
    }
    let cfg = std::fs::read_to_string(m.join("config.json")).unwrap();
    std::fs::write(other.join("config.json"), cfg.replace("0.02", "0.021")).unwrap();
    let out = decodex(&[
        "index",
        "query",
        s(&idx),
        "--query",
        "hi",
        "--model",
        s(&other),
    ]);
    assert_clear_error(&out, &["index.json", "built with model all-MiniLM-L6-v2"]);
    let out = decodex(&[
        "index",
        "add",
        s(&idx),
        "--corpus",
        s(&p("c.jsonl")),
        "--model",
        s(&other),
    ]);
    assert_clear_error(&out, &["built with model all-MiniLM-L6-v2"]);

    // A truncated index file.
    let vectors = idx.join("vectors.f32");
    let len = std::fs::metadata(&vectors).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&vectors)
        .unwrap();
    f.set_len(len - 100).unwrap();
    let out = decodex(&["index", "query", s(&idx), "--query", "hi"]);
    assert_clear_error(&out, &["vectors.f32", "truncated"]);
    // A graph file damaged in place (same size): hnsw_rs's reader asserts; one error line.
    let g = p("g");
    ok_json(build(
        &m,
        &p("c.jsonl"),
        &g,
        &["--hnsw-threshold", "10", "--json"],
    ));
    let graph = g.join("hnsw.hnsw.graph");
    let mut bytes = std::fs::read(&graph).unwrap();
    let n = bytes.len();
    bytes[..n / 2].iter_mut().for_each(|b| *b = 0xff);
    std::fs::write(&graph, bytes).unwrap();
    let out = decodex(&["index", "query", s(&g), "--query", "hi"]);
    assert_clear_error(&out, &["hnsw.hnsw.graph", "corrupt HNSW graph"]);
    // Not an index at all.
    let out = decodex(&["index", "query", s(dir.path()), "--query", "hi"]);
    assert_clear_error(&out, &["not an index"]);
    // An output that is neither .npy nor .safetensors.
    let out = decodex(&[
        "embed",
        "--model",
        s(&m),
        "--input",
        s(&p("c.jsonl")),
        "--out",
        s(&p("e.bin")),
    ]);
    assert_clear_error(&out, &["e.bin", ".npy or .safetensors"]);
}
