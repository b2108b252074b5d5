//! What each subcommand without another behaviour test does, checked on its output rather than
//! its exit code: `logits` against transformers' logits (tests/fixtures/llama_tiny.json,
//! gpt2_tiny.safetensors) and the library's forward; `chat` turn by turn against `generate` on
//! the rendered conversation; `summarize` and `answer` against `eval rouge` and `eval squad` on
//! the files they wrote; `eval retrieval` against nDCG, MRR and recall worked out by hand;
//! `bench decode` and `bench embed` on the counts they were asked for; `quickstart` through
//! training, continuing and sampling.
//!
//! SmolLM2 runs with `--dequantize` (f32 matrices): on a CPU without AVX512-VNNI the Q4_1
//! matmul takes its portable path, about ten times slower, and these tests check what the
//! commands do, not the quantized kernels (tests/llama.rs does).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{Device, Tensor};
use common::decodex;
use serde_json::{json, Value};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The JSON objects of a successful run's stdout, one per line (at least one).
fn json_lines(out: &Output, what: &str) -> Vec<Value> {
    assert!(
        out.status.success(),
        "decodex {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: not JSON: {l}: {e}")))
        .collect();
    assert!(!lines.is_empty(), "decodex {what} printed nothing");
    lines
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// `decodex logits --model MODEL --text TEXT --out OUT --json`: the file's ids, shape and logits,
/// after checking the JSON line counts the same tokens.
fn run_logits(model: &Path, text: &str, out: &Path) -> (Vec<u32>, Vec<usize>, Vec<f32>) {
    let args = [
        "logits",
        "--model",
        s(model),
        "--text",
        text,
        "--out",
        s(out),
        "--json",
    ];
    let v = json_lines(&decodex(&args), "logits");
    let got = read_logits(out);
    assert_eq!(v[0]["tokens"], got.0.len(), "tokens reported");
    got
}

/// `input_ids` (1, T) and `logits` (1, T, V) of a file `decodex logits` wrote.
fn read_logits(path: &Path) -> (Vec<u32>, Vec<usize>, Vec<f32>) {
    let st = decodex::nn::tensor_io::load_tensors(path).unwrap();
    let (ishape, ids) = &st.tensors["input_ids"];
    let (lshape, logits) = &st.tensors["logits"];
    assert_eq!(ishape.len(), 2);
    assert_eq!(lshape.len(), 3);
    assert_eq!(ishape[1], lshape[1], "one row of logits per input id");
    let ids = ids.iter().map(|&x| x as u32).collect();
    (ids, lshape.clone(), logits.clone())
}

/// `decodex logits` on a Hugging Face Llama folder: the ids are the tokenizer's, there is one
/// row of V = 96 logits per id, every row equals the library's forward, and the last equals
/// transformers' (llama_tiny.json, scripts/gen_llama_tiny_fixture.py).
#[test]
fn logits_of_a_llama_folder_equal_transformers_and_the_library() {
    let d = tempfile::tempdir().unwrap();
    let model = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("llama_tiny.json")).unwrap())
            .unwrap();
    let want_ids = u32s(&fx["input_ids"]);
    let want_last: Vec<f32> = fx["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!((want_ids.len(), want_last.len()), (7, 96));
    let tok = decodex::tokenizer::Tokenizer::from_file(&model.join("tokenizer.json")).unwrap();
    let text = tok.decode(&want_ids).unwrap();
    assert_eq!(tok.encode(&text).unwrap(), want_ids, "text {text:?}");

    let (ids, shape, logits) = run_logits(&model, &text, &d.path().join("logits.safetensors"));
    assert_eq!(ids, want_ids);
    assert_eq!(shape, vec![1, 7, 96]);

    let d_hf = common::max_abs_diff(&logits[6 * 96..], &want_last);
    println!("logits (llama_tiny, last position) vs transformers max|diff| {d_hf:.2e}");
    assert!(d_hf < 1e-4, "max |diff| {d_hf}");

    let m = decodex::models::Llama::from_hf_dir(&model, &Device::Cpu).unwrap();
    let x = Tensor::from_slice(&want_ids, (1, 7), &Device::Cpu).unwrap();
    let lib = m.forward(&x, &mut m.candle_cache()).unwrap();
    let lib = lib.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d_lib = common::max_abs_diff(&logits, &lib);
    println!("logits (llama_tiny, all 7 positions) vs Llama::forward max|diff| {d_lib:.2e}");
    assert!(d_lib < 1e-5, "max |diff| {d_lib}");
}

/// `decodex logits` on a GPT-2 folder (transformers' GPT2LMHeadModel weights of
/// gpt2_tiny.safetensors, saved as a decodex checkpoint with a 37-char tokenizer): every one of
/// the 16 rows equals transformers' logits.
#[test]
fn logits_of_a_gpt2_folder_equal_transformers() {
    let fx_path = fixtures().join("gpt2_tiny.safetensors");
    let cfg_json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("gpt2_tiny.json")).unwrap())
            .unwrap();
    let mut c = cfg_json.as_object().unwrap().clone();
    c.remove("batch_size");
    c.remove("seq_len");
    let cfg: decodex::models::gpt::GptConfig = serde_json::from_value(Value::Object(c)).unwrap();
    let loaded = decodex::nn::tensor_io::load_tensors(&fx_path).unwrap();
    let flat = decodex::models::gpt::checkpoint::flat_params(&cfg, &loaded, &fx_path).unwrap();
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("gpt2");
    decodex::models::gpt::checkpoint::save_model(&model, &cfg, &flat, None, None, true).unwrap();
    let chars = "abcdefghijklmnopqrstuvwxyz0123456789.";
    let tok = decodex::tokenizer::Tokenizer::train_char(chars).unwrap();
    assert_eq!(tok.vocab_size(), cfg.vocab_size);
    tok.save(&model.join("tokenizer.json")).unwrap();

    // The fixture's first input row (int64 in the file) and its logits (3, 16, 37).
    let bytes = std::fs::read(&fx_path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let inputs = st.tensor("inputs").unwrap();
    assert_eq!(inputs.shape(), &[3, 16]);
    let row: Vec<u32> = inputs.data()[..16 * 8]
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let (lshape, want) = &loaded.tensors["logits"];
    assert_eq!(lshape, &vec![3, 16, 37]);
    let want = &want[..16 * 37];
    let text = tok.decode(&row).unwrap();
    assert_eq!(tok.encode(&text).unwrap(), row, "text {text:?}");

    let (ids, shape, logits) = run_logits(&model, &text, &d.path().join("gpt2_logits.safetensors"));
    assert_eq!(ids, row);
    assert_eq!(shape, vec![1, 16, 37]);
    let diff = common::max_abs_diff(&logits, want);
    println!("logits (gpt2_tiny, 16 positions) vs transformers max|diff| {diff:.2e}");
    assert!(diff < 1e-4, "max |diff| {diff}");
}

/// Greedy `generate` on SmolLM2: the new tokens of a `--json` run.
fn greedy_tokens(args: &[&str], max_new: &str) -> Vec<u32> {
    let m = common::smollm2();
    let mut a = vec![
        "generate",
        "--model",
        s(&m),
        "--greedy",
        "--max-new-tokens",
        max_new,
        "--dequantize",
        "--json",
    ];
    a.extend_from_slice(args);
    let v = json_lines(&decodex(&a), "generate");
    assert_eq!(v.len(), 1);
    u32s(&v[0]["tokens"])
}

/// `decodex chat` reads turns from stdin until EOF and answers each with the whole conversation
/// (system message, earlier turns and replies) rendered by the chat template: with temperature
/// 0 each reply is `generate --greedy` on that rendering, and the second reply is not the one
/// the second message alone would get.
#[test]
fn chat_replies_to_each_turn_with_the_whole_conversation() {
    let m = common::smollm2();
    let system = "You are a terse assistant.";
    let turns = ["My name is Ada. Please remember it.", "What is my name?"];
    let max_new = "12";
    let out = common::decodex_stdin(
        &[
            "chat",
            "--model",
            s(&m),
            "--system",
            system,
            "--temperature",
            "0",
            "--repetition-penalty",
            "1",
            "--max-new-tokens",
            max_new,
            "--dequantize",
            "--json",
        ],
        &format!("{}\n{}\n", turns[0], turns[1]),
    );
    let replies = json_lines(&out, "chat");
    assert_eq!(replies.len(), 2, "one reply per turn: {replies:?}");
    let tokens: Vec<Vec<u32>> = replies.iter().map(|r| u32s(&r["tokens"])).collect();
    for (r, t) in replies.iter().zip(&tokens) {
        assert!(!t.is_empty() && t.len() <= 12, "{r}");
        assert!(r["reply"].is_string(), "{r}");
    }
    println!(
        "chat replies: {:?} / {:?}",
        replies[0]["reply"], replies[1]["reply"]
    );

    // The conversation as the chat template renders it before each reply.
    let pre = decodex::models::pretrained::load(&m, false, None).unwrap();
    let reply0 = replies[0]["reply"].as_str().unwrap();
    let first = pre
        .chat_prompt_for(&[("system", system), ("user", turns[0])])
        .unwrap();
    let second = pre
        .chat_prompt_for(&[
            ("system", system),
            ("user", turns[0]),
            ("assistant", reply0),
            ("user", turns[1]),
        ])
        .unwrap();
    assert!(second.starts_with(first.trim_end()) && second.contains(reply0));
    assert_eq!(tokens[0], greedy_tokens(&["--prompt", &first], max_new));
    assert_eq!(tokens[1], greedy_tokens(&["--prompt", &second], max_new));
    // Without the first turn the second message gets another reply.
    let alone = pre
        .chat_prompt_for(&[("system", system), ("user", turns[1])])
        .unwrap();
    assert_ne!(tokens[1], greedy_tokens(&["--prompt", &alone], max_new));
}

/// An empty line ends the conversation: the turn after it is never answered.
#[test]
fn chat_stops_at_an_empty_line() {
    let m = common::smollm2();
    let out = common::decodex_stdin(
        &[
            "chat",
            "--model",
            s(&m),
            "--temperature",
            "0",
            "--max-new-tokens",
            "3",
            "--dequantize",
            "--json",
        ],
        "Hello\n\nThis is never read\n",
    );
    assert_eq!(json_lines(&out, "chat").len(), 1);
}

/// Three short dialogues with reference summaries (DialogSum's fields).
const DIALOGUES: [(&str, &str); 3] = [
    (
        "#Person1#: Did you finish the report for Mr. Smith?\n#Person2#: Yes, I sent it to him this morning.\n#Person1#: Great, thank you.",
        "#Person2# sent the report to Mr. Smith this morning.",
    ),
    (
        "#Person1#: I want to buy a train ticket to Boston.\n#Person2#: One way or return?\n#Person1#: Return, please. I come back on Friday.",
        "#Person1# buys a return train ticket to Boston and comes back on Friday.",
    ),
    (
        "#Person1#: It is raining so hard today.\n#Person2#: Let's stay home and watch a movie.\n#Person1#: Good idea, I will make popcorn.",
        "Because of the rain, they decide to stay home, watch a movie and eat popcorn.",
    ),
];

/// `decodex summarize` writes one summary per document read (`--limit` of them), and the ROUGE
/// it prints is `decodex eval rouge` on the file it wrote against the references; greedy
/// batches of 2 give the summaries one at a time gives.
#[test]
fn summarize_writes_a_summary_per_document_scored_as_eval_rouge() {
    let d = tempfile::tempdir().unwrap();
    let m = common::smollm2();
    let input = d.path().join("dialogsum.jsonl");
    let lines: Vec<String> = DIALOGUES
        .iter()
        .enumerate()
        .map(|(i, (doc, sum))| json!({"id": i, "document": doc, "summary": sum}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let run = |out: &Path, limit: &str, batch: &str| {
        json_lines(
            &decodex(&[
                "summarize",
                "--model",
                s(&m),
                "--input",
                s(&input),
                "--out",
                s(out),
                "--limit",
                limit,
                "--batch-size",
                batch,
                "--max-new-tokens",
                "24",
                "--dequantize",
                "--json",
            ]),
            "summarize",
        )
    };
    let hyp = d.path().join("summaries.txt");
    let report = run(&hyp, "2", "2");
    assert_eq!(report.len(), 1);
    let r = &report[0];
    assert_eq!(r["documents"], 2, "{r}");
    assert_eq!(r["strategy"], "greedy");
    let written = std::fs::read_to_string(&hyp).unwrap();
    let summaries: Vec<&str> = written.lines().collect();
    assert_eq!(summaries.len(), 2, "{written:?}");
    assert!(
        summaries.iter().all(|l| !l.trim().is_empty()),
        "{written:?}"
    );
    println!("summaries: {summaries:?}");

    let refs = d.path().join("refs.txt");
    std::fs::write(&refs, format!("{}\n{}\n", DIALOGUES[0].1, DIALOGUES[1].1)).unwrap();
    let e = common::decodex_json(&[
        "eval",
        "rouge",
        "--hyp",
        s(&hyp),
        "--ref",
        s(&refs),
        "--json",
    ]);
    assert_eq!(e["pairs"], 2);
    let mut worst = 0f64;
    for (ours, theirs) in [
        ("rouge1", "rouge1"),
        ("rouge2", "rouge2"),
        ("rougeL", "rougeL"),
    ] {
        let (a, b) = (r[ours].as_f64().unwrap(), e[theirs].as_f64().unwrap());
        worst = common::nan_max(worst, (a - b).abs());
    }
    println!(
        "summarize ROUGE-1/2/L {:.2}/{:.2}/{:.2}, vs eval rouge max|diff| {worst:.2e}",
        r["rouge1"], r["rouge2"], r["rougeL"]
    );
    assert!(worst < 1e-9, "summarize {r} vs eval rouge {e}");
    assert!(r["rouge1"].as_f64().unwrap() > 0.0, "{r}");

    // One prompt at a time: the same greedy summaries.
    let one = d.path().join("one.txt");
    run(&one, "2", "1");
    assert_eq!(std::fs::read_to_string(&one).unwrap(), written);
}

/// A SQuAD v1.1 file of one paragraph and three questions.
fn squad_file(dir: &Path) -> PathBuf {
    let ds = json!({"version": "1.1", "data": [{"title": "Test", "paragraphs": [{
    "context": "The Eiffel Tower is in Paris. It was built in 1889 by the company of Gustave Eiffel. It is 330 metres tall.",
    "qas": [
        {"id": "q-city", "question": "In which city is the Eiffel Tower?",
         "answers": [{"text": "Paris", "answer_start": 23}]},
        {"id": "q-year", "question": "When was the Eiffel Tower built?",
         "answers": [{"text": "1889", "answer_start": 46}, {"text": "in 1889", "answer_start": 43}]},
        {"id": "q-height", "question": "How tall is the Eiffel Tower?",
         "answers": [{"text": "330 metres", "answer_start": 93}]}
    ]}]}]});
    let p = dir.join("squad.json");
    std::fs::write(&p, ds.to_string()).unwrap();
    p
}

/// `decodex answer` writes a prediction per question (ids as in the file, `--limit` of them),
/// its EM and F1 are `decodex eval squad` on that file, and `--question --context` gives the
/// answer the file gives for the same question.
#[test]
fn answer_writes_squad_predictions_scored_as_eval_squad() {
    let d = tempfile::tempdir().unwrap();
    let m = common::smollm2();
    let data = squad_file(d.path());
    let run = |out: &Path, limit: &str| {
        json_lines(
            &decodex(&[
                "answer",
                "--model",
                s(&m),
                "--input",
                s(&data),
                "--out",
                s(out),
                "--limit",
                limit,
                "--max-new-tokens",
                "10",
                "--dequantize",
                "--json",
            ]),
            "answer",
        )
    };
    let preds_path = d.path().join("preds.json");
    let r = run(&preds_path, "3").remove(0);
    assert_eq!(r["questions"], 3, "{r}");
    let preds: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&preds_path).unwrap()).unwrap();
    let mut keys: Vec<&str> = preds.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["q-city", "q-height", "q-year"]);
    println!("answers: {preds:?}");
    let e = common::decodex_json(&[
        "eval",
        "squad",
        "--data",
        s(&data),
        "--predictions",
        s(&preds_path),
        "--json",
    ]);
    assert_eq!(
        (e["total"].as_u64(), e["answered"].as_u64()),
        (Some(3), Some(3))
    );
    let dem = (r["exact_match"].as_f64().unwrap() - e["exact_match"].as_f64().unwrap()).abs();
    let df1 = (r["f1"].as_f64().unwrap() - e["f1"].as_f64().unwrap()).abs();
    println!(
        "answer EM {:.2} F1 {:.2}, vs eval squad max|diff| {:.2e}",
        r["exact_match"],
        r["f1"],
        dem.max(df1)
    );
    assert!(dem < 1e-9 && df1 < 1e-9, "answer {r} vs eval squad {e}");
    assert!(r["f1"].as_f64().unwrap() > 0.0, "{r}");

    // --limit 2: the first two questions only.
    let two = d.path().join("two.json");
    assert_eq!(run(&two, "2")[0]["questions"], 2);
    let p2: serde_json::Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&two).unwrap()).unwrap();
    let mut k2: Vec<&str> = p2.keys().map(String::as_str).collect();
    k2.sort_unstable();
    assert_eq!(k2, ["q-city", "q-year"]);

    // One question from the command line.
    let one = json_lines(
        &decodex(&[
            "answer",
            "--model",
            s(&m),
            "--question",
            "In which city is the Eiffel Tower?",
            "--context",
            "The Eiffel Tower is in Paris. It was built in 1889 by the company of Gustave Eiffel. It is 330 metres tall.",
            "--max-new-tokens",
            "10",
            "--dequantize",
            "--json",
        ]),
        "answer --question",
    );
    assert_eq!(one[0]["answer"], preds["q-city"], "{}", one[0]);
}

/// `decodex eval retrieval` on a six-document index: nDCG@10, MRR@10 and Recall@100 equal the
/// values worked out by hand from the ranking `index query --exact` gives, `--top-k` cuts the
/// list before scoring, and a hit with the query's own id is dropped unless
/// `--keep-identical-ids`.
#[test]
fn eval_retrieval_scores_a_known_ranking() {
    let d = tempfile::tempdir().unwrap();
    let m = common::minilm();
    let docs = [
        "The cat sleeps on the warm windowsill.",
        "Stock markets fell sharply on Monday morning.",
        "A recipe for chocolate cake with dark cocoa.",
        "The football team won the championship final.",
        "Volcanoes erupt when magma rises to the surface.",
        "Kittens like to nap in sunny spots by the window.",
    ];
    let corpus = d.path().join("corpus.jsonl");
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"_id": format!("d{i}"), "text": t}).to_string())
        .collect();
    std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
    let idx = d.path().join("idx");
    let built = common::decodex_json(&[
        "index",
        "build",
        "--model",
        s(&m),
        "--corpus",
        s(&corpus),
        "--out",
        s(&idx),
        "--json",
    ]);
    assert_eq!(built["count"], 6);
    // The exact ranking of all six documents for a query text.
    let ranking = |q: &str| -> Vec<String> {
        let hits = json_lines(
            &decodex(&[
                "index",
                "query",
                s(&idx),
                "--query",
                q,
                "-k",
                "6",
                "--exact",
                "--json",
            ]),
            "index query",
        );
        assert_eq!(hits.len(), 6);
        hits.iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (qa, qb) = (docs[0], docs[3]);
    let (ra, rb) = (ranking(qa), ranking(qb));
    assert_eq!((ra[0].as_str(), rb[0].as_str()), ("d0", "d3"));
    // qa: its own document, relevant at rank 1. qb: only the document ranked third is
    // relevant (grade 2). qc: a query without judgments, which is not scored.
    let queries = d.path().join("queries.jsonl");
    std::fs::write(
        &queries,
        [
            json!({"_id": "qa", "text": qa}),
            json!({"_id": "qb", "text": qb}),
            json!({"_id": "qc", "text": "an unjudged query"}),
        ]
        .map(|v| v.to_string())
        .join("\n")
            + "\n",
    )
    .unwrap();
    let qrels = d.path().join("qrels.tsv");
    std::fs::write(
        &qrels,
        format!("query-id\tcorpus-id\tscore\nqa\td0\t1\nqb\t{}\t2\n", rb[2]),
    )
    .unwrap();
    let eval = |extra: &[&str]| -> Value {
        let mut a = vec![
            "eval",
            "retrieval",
            "--index",
            s(&idx),
            "--queries",
            s(&queries),
            "--qrels",
            s(&qrels),
            "--json",
        ];
        a.extend_from_slice(extra);
        common::decodex_json(&a)
    };
    let check = |v: &Value, ndcg: f64, mrr: f64, recall: f64| {
        let got = [
            v["ndcg@10"].as_f64().unwrap(),
            v["mrr@10"].as_f64().unwrap(),
            v["recall@100"].as_f64().unwrap(),
        ];
        let diff = got
            .iter()
            .zip([ndcg, mrr, recall])
            .map(|(g, w)| (g - w).abs())
            .fold(0f64, common::nan_max);
        println!(
            "eval retrieval {got:?} vs by hand [{ndcg}, {mrr}, {recall}]: max|diff| {diff:.2e}"
        );
        assert!(diff < 1e-12, "{v}");
    };
    // qb: DCG = 2 / log2(3 + 1) = 1, ideal DCG = 2 / log2(2) = 2: nDCG 0.5; reciprocal rank 1/3.
    let all = eval(&[]);
    assert_eq!(all["queries"], 2, "{all}");
    assert_eq!(all["exact"], true);
    check(&all, (1.0 + 0.5) / 2.0, (1.0 + 1.0 / 3.0) / 2.0, 1.0);
    // Two hits per query: qb's relevant document is not retrieved.
    check(&eval(&["--top-k", "2"]), 0.5, 0.5, 0.5);

    // A query whose id is a document's: its own document (ranked first) is dropped by default,
    // which puts the one judged relevant (ranked second) first.
    let q4 = docs[4];
    let r4 = ranking(q4);
    assert_eq!(r4[0], "d4");
    std::fs::write(
        &queries,
        json!({"_id": "d4", "text": q4}).to_string() + "\n",
    )
    .unwrap();
    std::fs::write(
        &qrels,
        format!("query-id\tcorpus-id\tscore\nd4\t{}\t1\n", r4[1]),
    )
    .unwrap();
    check(&eval(&[]), 1.0, 1.0, 1.0);
    let third = 1.0 / 3f64.log2();
    check(&eval(&["--keep-identical-ids"]), third, 0.5, 1.0);
}

/// `decodex bench decode` times exactly the prompt and new tokens asked for, on the threads
/// asked for, and times beam search only with `--beam` (llama_tiny: 64 positions hold the
/// 16-token prompt and the beam's 32 new tokens).
#[test]
fn bench_decode_reports_what_it_measured() {
    let d = tempfile::tempdir().unwrap();
    let m = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let run = |beam: bool| -> Value {
        let mut a = vec![
            "--threads",
            "1",
            "bench",
            "decode",
            "--model",
            s(&m),
            "--prompt-tokens",
            "16",
            "--new-tokens",
            "7",
            "--reps",
            "2",
            "--json",
        ];
        if beam {
            a.push("--beam");
        }
        let v = json_lines(&decodex(&a), "bench decode");
        assert_eq!(v.len(), 1);
        v[0].clone()
    };
    let v = run(false);
    println!("bench decode: {v}");
    assert_eq!(
        (
            v["prompt_tokens"].as_u64(),
            v["new_tokens"].as_u64(),
            v["reps"].as_u64(),
            v["threads"].as_u64()
        ),
        (Some(16), Some(7), Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(v["model"], s(&m));
    for k in [
        "prompt_tokens_per_sec",
        "decode_tokens_per_sec",
        "peak_rss_mb",
    ] {
        let x = v[k].as_f64().unwrap_or(f64::NAN);
        assert!(x.is_finite() && x > 0.0, "{k}: {v}");
    }
    assert!(v["beam4_tokens_per_sec"].is_null(), "{v}");
    // llama-bench's `-p 0 -n 5 -d 8`: the generation test alone, after 8 tokens.
    let a = [
        "--threads",
        "1",
        "bench",
        "decode",
        "--model",
        s(&m),
        "--prompt-tokens",
        "0",
        "--new-tokens",
        "5",
        "--depth",
        "8",
        "--reps",
        "1",
        "--json",
    ];
    let d = &json_lines(&decodex(&a), "bench decode --depth")[0];
    assert_eq!(d["depth"].as_u64(), Some(8), "{d}");
    assert!(d["prompt_tokens_per_sec"].is_null(), "{d}");
    assert!(
        d["decode_tokens_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{d}"
    );
    let b = run(true);
    let x = b["beam4_tokens_per_sec"].as_f64().unwrap_or(f64::NAN);
    assert!(x.is_finite() && x > 0.0, "{b}");
}

/// `decodex bench embed` embeds every text of the input in each of `--rounds` rounds, and its
/// rate is sentences / seconds.
#[test]
fn bench_embed_counts_every_text_in_every_round() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("texts.jsonl");
    let texts = [
        "The cat sleeps.",
        "Markets fell on Monday.",
        "A chocolate cake.",
        "The team won the final.",
        "Magma rises to the surface.",
    ];
    let lines: Vec<String> = texts
        .iter()
        .map(|t| json!({"text": t}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let m = common::minilm();
    let v = json_lines(
        &decodex(&[
            "--threads",
            "1",
            "bench",
            "embed",
            "--model",
            s(&m),
            "--input",
            s(&input),
            "--rounds",
            "3",
            "--json",
        ]),
        "bench embed",
    );
    assert_eq!(v.len(), 3, "one line per round: {v:?}");
    for (i, r) in v.iter().enumerate() {
        assert_eq!(r["round"], i as u64, "{r}");
        assert_eq!(r["sentences"], 5, "{r}");
        assert_eq!(r["threads"], 1, "{r}");
        let (secs, rate) = (
            r["seconds"].as_f64().unwrap(),
            r["sentences_per_s"].as_f64().unwrap(),
        );
        assert!(secs > 0.0 && rate.is_finite(), "{r}");
        assert!((rate * secs - 5.0).abs() < 1e-9, "{r}");
    }
}

/// `decodex quickstart` trains the preset into `--out`, stopping at `--max-iters` with the
/// preset's schedule, and prints a 500-token sample; run again it continues the same run.
#[test]
fn quickstart_trains_samples_and_continues() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("shakespeare-char");
    let quick = |iters: &str| {
        json_lines(
            &decodex(&[
                "quickstart",
                "--out",
                s(&run),
                "--max-iters",
                iters,
                "--json",
            ]),
            "quickstart",
        )
    };
    let t0 = std::time::Instant::now();
    let lines = quick("2");
    println!(
        "quickstart --max-iters 2: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let start = lines.iter().find(|l| l["event"] == "start").unwrap();
    assert_eq!(
        start["params"], 809_856,
        "the preset's 4 layers of 128: {start}"
    );
    assert_eq!(
        (start["start_step"].as_u64(), start["end_step"].as_u64()),
        (Some(0), Some(2))
    );
    let steps: Vec<&Value> = lines.iter().filter(|l| l.get("step").is_some()).collect();
    assert_eq!(steps.len(), 2);
    // The preset warms up over 100 steps to 1e-3 (step s: 1e-3 * s / 101): a short run keeps
    // the preset's schedule.
    for (i, st) in steps.iter().enumerate() {
        let (lr, want) = (st["lr"].as_f64().unwrap(), 1e-3 * (i + 1) as f64 / 101.0);
        assert!((lr - want).abs() < 1e-12, "step {}: lr {lr}", i + 1);
    }
    let done = lines.iter().find(|l| l["event"] == "done").unwrap();
    assert_eq!(done["summary"]["step"], 2);
    let sample = lines.last().unwrap();
    assert_eq!(sample["new_tokens"], 500, "{sample}");
    assert_eq!(sample["text"].as_str().unwrap().chars().count(), 500);
    for f in ["model.safetensors", "tokenizer.json", "trainer_state.json"] {
        assert!(run.join(f).exists(), "{f}");
    }
    let again = quick("3");
    let start = again.iter().find(|l| l["event"] == "start").unwrap();
    assert_eq!(
        (start["start_step"].as_u64(), start["end_step"].as_u64()),
        (Some(2), Some(3))
    );
    let resumed: Vec<&Value> = again.iter().filter(|l| l.get("step").is_some()).collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0]["step"], 3);
    assert!((resumed[0]["lr"].as_f64().unwrap() - 3e-3 / 101.0).abs() < 1e-12);
}

/// `generate --chat` used to print the whole rendered template and a score with beam search
/// but only the reply with greedy search: with --chat, text mode prints the reply only, for
/// every strategy (and for batches).
#[test]
fn chat_prints_the_reply_only_whatever_the_strategy() {
    let d = tempfile::tempdir().unwrap();
    let model = common::tiny_llama(d.path(), "chatty", common::LLAMA_CHARS);
    let template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}<assistant>{% endif %}";
    std::fs::write(
        model.join("tokenizer_config.json"),
        json!({ "chat_template": template }).to_string(),
    )
    .unwrap();
    let prompts = d.path().join("prompts.jsonl");
    std::fs::write(&prompts, "\"hello there\"\n\"how are you\"\n").unwrap();
    let base = [
        "generate",
        "--model",
        s(&model),
        "--chat",
        "--max-new-tokens",
        "6",
    ];
    let strategies: [&[&str]; 4] = [
        &["--prompt", "hello there", "--strategy", "greedy"],
        &[
            "--prompt",
            "hello there",
            "--strategy",
            "beam",
            "--num-beams",
            "2",
        ],
        &[
            "--prompt",
            "hello there",
            "--strategy",
            "sample",
            "--seed",
            "3",
        ],
        &[
            "--prompts",
            s(&prompts),
            "--strategy",
            "greedy",
            "--batch-size",
            "2",
        ],
    ];
    for extra in strategies {
        let run = |json: bool| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            if json {
                a.push("--json");
            }
            decodex(&a)
        };
        let replies: Vec<String> = json_lines(&run(true), "generate --chat --json")
            .iter()
            .map(|v| v["text"].as_str().unwrap().to_string())
            .collect();
        let out = run(false);
        assert!(out.status.success(), "{extra:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let expected: String = replies.iter().map(|r| format!("{r}\n")).collect();
        assert_eq!(stdout, expected, "{extra:?}: the reply only");
    }
}
