//! Compatibility with the Python tools, checked without Python: the fixtures under
//! tests/fixtures/compat/ hold decodex's files as `transformers`, PEFT, `tokenizers` and numpy
//! read them, and those tools' answers (made by scripts/gen_compat_fixtures.py, which records
//! their versions). Here decodex computes the same answers and rewrites the same files:
//! - a GPT export: `GPT2LMHeadModel` logits (README: within 5.7e-6; checked at 1e-5), and
//!   `decodex export` of the committed checkpoint gives the committed export, tensor for tensor;
//! - a LoRA adapter: `PeftModel.from_pretrained` logits with it (merged: 1e-5; unmerged: 2e-5)
//!   and without it (1e-5), the adapter moves them, and decodex rewrites the adapter's files
//!   unchanged;
//! - tokenizer.json files: Python `tokenizers` ids and decoded strings, exactly;
//! - .npy: numpy's files read (and the ones decodex cannot read refused), decodex's file read by
//!   numpy rewritten byte for byte;
//! - `base_unchanged`: the frozen base after a LoRA run, checked from the tensors.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use decodex::models::llama::{adapter, fast, lora as model};
use decodex::models::pretrained::{self, Network};
use decodex::search::{read_npy, VectorWriter};
use decodex::tokenizer::{Tokenizer, TokenizerKind};
use decodex::train::finetune::{data, run};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Logits against `transformers` / PEFT in float32 (README: the export within 5.7e-6).
const LOGITS_TOL: f32 = 1e-5;
/// decodex's `--adapter` against PEFT's unmerged adapter: decodex adds (α/r)·BA into the base
/// weights in float32, as PEFT's `merge_and_unload` does, and that rounding alone moves a logit of
/// this sharp tiny model by up to 1.25e-5 (PEFT merged vs a float64 reference; unmerged float32
/// is within 4.2e-6 of it). Against PEFT's merged model decodex stays within `LOGITS_TOL`.
const UNMERGED_TOL: f32 = 2e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/compat")
        .join(name)
}

/// `v[key]`, failing the test when the fixture lacks it.
fn key<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| {
        let at: String = v.to_string().chars().take(200).collect();
        panic!("the fixture lacks {k:?} (regenerate it?) in {at}")
    })
}

fn array<'a>(v: &'a Value, k: &str) -> &'a Vec<Value> {
    key(v, k)
        .as_array()
        .unwrap_or_else(|| panic!("{k:?} is not a list"))
}

fn string<'a>(v: &'a Value, k: &str) -> &'a str {
    key(v, k)
        .as_str()
        .unwrap_or_else(|| panic!("{k:?} is not a string"))
}

fn u32s(v: &Value, k: &str) -> Vec<u32> {
    array(v, k)
        .iter()
        .map(|x| x.as_u64().expect("an unsigned integer") as u32)
        .collect()
}

/// A fixture's JSON, checked to say which tools made it.
fn fixture_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).expect("the fixture exists");
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    let gen = key(&v, "generator");
    assert_eq!(string(gen, "script"), "scripts/gen_compat_fixtures.py");
    for tool in [
        "python",
        "numpy",
        "tokenizers",
        "torch",
        "transformers",
        "peft",
    ] {
        assert!(!string(gen, tool).is_empty(), "generator.{tool}");
    }
    v
}

/// A temporary folder, removed when the test ends.
fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("decodex-compat-{name}-"))
        .tempdir()
        .unwrap()
}

/// Every tensor of a safetensors file: name -> (dtype, shape, raw bytes), read with the
/// `safetensors` crate (not decodex's loader), plus the metadata.
type RawTensors = (
    BTreeMap<String, (String, Vec<usize>, Vec<u8>)>,
    HashMap<String, String>,
);

fn raw_tensors(path: &Path) -> RawTensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                (
                    format!("{:?}", t.dtype()),
                    t.shape().to_vec(),
                    t.data().to_vec(),
                ),
            )
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A float32 tensor of a safetensors file: (shape, values).
fn f32_tensor(t: &RawTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let (dtype, shape, bytes) =
        t.0.get(name)
            .unwrap_or_else(|| panic!("no tensor {name:?}"));
    assert_eq!(dtype, "F32", "{name}");
    (shape.clone(), f32s(bytes))
}

/// `decodex logits` of `text`: (input ids, (T, V) shape, logits).
fn decodex_logits(
    model: &Path,
    adapter: Option<&Path>,
    text: &str,
    out: &Path,
) -> (Vec<u32>, Vec<usize>, Vec<f32>) {
    let mut args = vec![
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter", a.to_str().unwrap()]);
    }
    common::decodex_json(&args);
    let t = raw_tensors(out);
    let (ishape, ids) = f32_tensor(&t, "input_ids");
    let (shape, logits) = f32_tensor(&t, "logits");
    assert_eq!(ishape, [1, ids.len()]);
    assert_eq!(shape.len(), 3);
    (
        ids.iter().map(|&i| i as u32).collect(),
        shape[1..].to_vec(),
        logits,
    )
}

// ---------------------------------------------------------------------------------------------
// 1. GPT export vs transformers' GPT2LMHeadModel
// ---------------------------------------------------------------------------------------------

#[test]
fn gpt_export_logits_match_transformers_gpt2() {
    let fx = fixture_json("gpt_export.json");
    let reference = raw_tensors(&fixture("gpt_logits.safetensors"));
    let models = key(&fx, "models").as_object().expect("an object");
    let names: Vec<&str> = models.keys().map(|s| s.as_str()).collect();
    assert_eq!(names, ["bpe", "char"]);
    let tmp = tmpdir("gpt");
    let mut compared = 0;
    for (name, m) in models {
        let cases = array(m, "cases");
        assert!(cases.len() >= 3, "{name}: {} texts", cases.len());
        let vocab = key(key(m, "config"), "vocab_size").as_u64().unwrap() as usize;
        for (i, case) in cases.iter().enumerate() {
            let text = string(case, "text");
            let want_ids = u32s(case, "ids");
            let (shape, want) = f32_tensor(&reference, string(case, "tensor"));
            assert_eq!(shape, [want_ids.len(), vocab], "{name}: reference shape");
            // The reference is a real function of the input: its logits spread out.
            let spread = want.iter().cloned().fold(f32::MIN, f32::max)
                - want.iter().cloned().fold(f32::MAX, f32::min);
            assert!(spread > 1.0, "{name} {i}: logits spread {spread}");
            // The export as transformers loads it, and the checkpoint it came from.
            for dir in ["export", "checkpoint"] {
                let model = fixture(string(m, dir));
                let out = tmp.path().join(format!("{name}-{i}-{dir}.safetensors"));
                let (ids, got_shape, got) = decodex_logits(&model, None, text, &out);
                assert_eq!(ids, want_ids, "{name} {dir}: ids of {text:?}");
                assert_eq!(got_shape, shape, "{name} {dir}");
                let d = common::max_abs_diff(&got, &want);
                println!(
                    "gpt {name} {dir:10} text {i} ({} tokens) logits max|diff| {d:.2e}",
                    ids.len()
                );
                assert!(d <= LOGITS_TOL, "{name} {dir} text {i}: max|diff| {d:e}");
                compared += got.len();
            }
        }
    }
    assert!(compared > 10_000, "{compared} logits compared");
}

#[test]
fn gpt_export_is_what_decodex_export_writes_today() {
    let fx = fixture_json("gpt_export.json");
    let tmp = tmpdir("export");
    let models = key(&fx, "models").as_object().expect("an object");
    assert_eq!(models.len(), 2);
    for (name, m) in models {
        let ckpt = fixture(string(m, "checkpoint"));
        let committed = fixture(string(m, "export"));
        let out = tmp.path().join(name);
        common::decodex_json(&[
            "export",
            "--model",
            ckpt.to_str().unwrap(),
            "--format",
            "hf",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ]);
        for f in ["config.json", "tokenizer.json"] {
            let read = |d: &Path| -> Value {
                serde_json::from_str(&std::fs::read_to_string(d.join(f)).unwrap()).unwrap()
            };
            assert_eq!(read(&out), read(&committed), "{name}: {f} changed");
        }
        let (now, now_meta) = raw_tensors(&out.join("model.safetensors"));
        let (then, then_meta) = raw_tensors(&committed.join("model.safetensors"));
        assert_eq!(now_meta, then_meta, "{name}: metadata");
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            then.keys().collect::<Vec<_>>(),
            "{name}: tensor names"
        );
        for (t, (dtype, shape, bytes)) in &then {
            let (d2, s2, b2) = &now[t];
            assert_eq!((dtype, shape), (d2, s2), "{name}: {t}");
            assert!(bytes == b2, "{name}: {t} values changed");
        }
        println!(
            "export {name}: {} tensors, config and tokenizer identical to the committed export",
            then.len()
        );
        // The char model has no biases: the export adds zero ones and says bias = true, so that
        // GPT2LMHeadModel (which always has biases) computes the same function.
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap())
                .unwrap();
        let hf: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(hf["bias"], true, "{name}");
        let (ck, _) = raw_tensors(&ckpt.join("model.safetensors"));
        let added: Vec<&String> = then.keys().filter(|k| !ck.contains_key(*k)).collect();
        if name == "char" {
            assert_eq!(cfg["bias"], false);
            // 2 layers x (ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj) + ln_f.
            assert_eq!(added.len(), 13, "{added:?}");
            for k in added {
                assert!(k.ends_with(".bias"), "{k}");
                assert!(then[k].2.iter().all(|&b| b == 0), "{k} is not zero");
            }
        } else {
            assert_eq!(cfg["bias"], true);
            assert!(added.is_empty(), "{added:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. LoRA adapter vs PEFT
// ---------------------------------------------------------------------------------------------

#[test]
fn lora_adapter_logits_match_peft_and_move_off_the_base() {
    let fx = fixture_json("peft.json");
    let reference = raw_tensors(&fixture("peft_logits.safetensors"));
    let tmp = tmpdir("peft");
    let base = common::tiny_llama(tmp.path(), "base", string(&fx, "tokenizer_chars"));
    let lora = fixture(string(&fx, "adapter"));
    let cases = array(&fx, "cases");
    assert!(cases.len() >= 3, "{} texts", cases.len());
    let (mut worst, mut moved_peft, mut moved_decodex) = (0f32, 0f32, 0f32);
    for (i, case) in cases.iter().enumerate() {
        let text = string(case, "text");
        let want_ids = u32s(case, "ids");
        let (shape, want) = f32_tensor(&reference, string(case, "adapter"));
        let (bshape, want_base) = f32_tensor(&reference, string(case, "base"));
        let (mshape, want_merged) = f32_tensor(&reference, string(case, "merged"));
        assert_eq!(shape, [want_ids.len(), 96]);
        assert_eq!((&bshape, &mshape), (&shape, &shape));
        let out = tmp.path().join(format!("a{i}.safetensors"));
        let (ids, got_shape, got) = decodex_logits(&base, Some(&lora), text, &out);
        assert_eq!(ids, want_ids, "ids of {text:?}");
        assert_eq!(got_shape, shape);
        let d = common::max_abs_diff(&got, &want);
        let dm = common::max_abs_diff(&got, &want_merged);
        let out = tmp.path().join(format!("b{i}.safetensors"));
        let (_, _, got_base) = decodex_logits(&base, None, text, &out);
        let db = common::max_abs_diff(&got_base, &want_base);
        println!(
            "peft text {i} ({} tokens) logits max|diff|: adapter vs PEFT {d:.2e}, vs PEFT merged {dm:.2e}; base {db:.2e}",
            ids.len()
        );
        assert!(
            d <= UNMERGED_TOL,
            "text {i}: with the adapter max|diff| {d:e}"
        );
        assert!(
            dm <= LOGITS_TOL,
            "text {i}: vs PEFT merged max|diff| {dm:e}"
        );
        assert!(db <= LOGITS_TOL, "text {i}: base max|diff| {db:e}");
        worst = common::nan_max(worst, d);
        moved_peft = moved_peft.max(common::max_abs_diff(&want, &want_base));
        moved_decodex = moved_decodex.max(common::max_abs_diff(&got, &got_base));
    }
    println!(
        "peft: worst max|diff| {worst:.2e}; the adapter moves the logits by {moved_peft:.3} (PEFT), {moved_decodex:.3} (decodex)"
    );
    // Not a no-op: far above the agreement, in both tools.
    assert!(moved_peft > 0.5 && moved_decodex > 0.5);
    let recorded = key(&fx, "adapter_moves_logits_by").as_f64().unwrap() as f32;
    assert!(
        (recorded - moved_peft).abs() < 1e-4,
        "{recorded} vs {moved_peft}"
    );
}

#[test]
fn lora_adapter_is_what_decodex_writes_today() {
    let fx = fixture_json("peft.json");
    let tmp = tmpdir("adapter");
    let base = common::tiny_llama(tmp.path(), "base", string(&fx, "tokenizer_chars"));
    let pre = pretrained::load(&base, true, None).unwrap();
    let Network::Llama(llama) = &pre.network else {
        panic!("llama_tiny is a Llama")
    };
    let committed = fixture(string(&fx, "adapter"));
    let (spec, params) = adapter::load(&committed, &llama.cfg).unwrap();
    assert_eq!((spec.rank, spec.alpha), (4, 8.0));
    assert_eq!(spec.targets, model::Proj::ALL.to_vec());
    let out = tmp.path().join("again");
    // The generator ran `decodex finetune --base base` from the base's parent folder.
    adapter::save(&out, &llama.cfg, &spec, &params, "base").unwrap();
    let read = |d: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(d.join(adapter::CONFIG_FILE)).unwrap())
            .unwrap()
    };
    assert_eq!(read(&out), read(&committed), "adapter_config.json changed");
    let (now, now_meta) = raw_tensors(&out.join(adapter::WEIGHTS_FILE));
    let (then, then_meta) = raw_tensors(&committed.join(adapter::WEIGHTS_FILE));
    assert_eq!(now_meta, then_meta);
    assert_eq!(
        then.len(),
        2 * 7 * 2,
        "A and B of 7 projections in 2 layers"
    );
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        then.keys().collect::<Vec<_>>()
    );
    for (t, v) in &then {
        assert!(&now[t] == v, "{t} changed");
        assert!(
            t.starts_with("base_model.model.model.layers."),
            "PEFT's naming: {t}"
        );
        // Trained: B starts at zero, so a zero B would be an adapter that does nothing.
        if t.contains("lora_B") {
            assert!(f32s(&v.2).iter().any(|&x| x != 0.0), "{t} is zero");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. tokenizer.json vs Python tokenizers
// ---------------------------------------------------------------------------------------------

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn tokenizer_json_ids_match_python_tokenizers() {
    let fx = fixture_json("tokenizers.json");
    let toks = key(&fx, "tokenizers").as_object().expect("an object");
    assert_eq!(toks.keys().collect::<Vec<_>>(), ["bpe", "char"]);
    let long = key(&fx, "long");
    let repeat = key(long, "repeat").as_u64().unwrap() as usize;
    let long_text = string(long, "unit").repeat(repeat);
    assert!(
        long_text.len() > 64 * 1024,
        "past the parallel-encoding cut"
    );
    for (name, t) in toks {
        let tok = Tokenizer::from_file(&fixture(string(t, "file"))).unwrap();
        let kind = if name == "char" {
            TokenizerKind::Char
        } else {
            TokenizerKind::Bpe
        };
        assert_eq!(tok.kind(), kind, "{name}");
        assert_eq!(
            tok.vocab_size() as u64,
            key(t, "vocab_size").as_u64().unwrap(),
            "{name}"
        );
        let cases = array(t, "cases");
        assert!(cases.len() >= 20, "{name}: {} texts", cases.len());
        let (mut exact, mut refused, mut ids_total) = (0, 0, 0);
        for case in cases {
            let text = string(case, "text");
            let want = u32s(case, "ids");
            let decoded = string(case, "decoded");
            // The characters of the text a char vocabulary lacks (byte-level BPE lacks none).
            let unknown: Vec<char> = if kind == TokenizerKind::Char {
                array(case, "unknown")
                    .iter()
                    .map(|c| c.as_str().unwrap().chars().next().unwrap())
                    .collect()
            } else {
                assert!(case.get("unknown").is_none(), "bpe: {text:?}");
                Vec::new()
            };
            if unknown.is_empty() {
                let got = tok.encode(text).unwrap();
                assert_eq!(got, want, "{name}: ids of {text:?}");
                assert_eq!(
                    tok.decode(&got).unwrap(),
                    decoded,
                    "{name}: decode {text:?}"
                );
                exact += 1;
                ids_total += got.len();
            } else {
                // Python's tokenizer drops characters outside the vocabulary; decodex refuses
                // them, naming the first, and its inner tokenizer agrees with Python.
                let (offset, first) = text
                    .char_indices()
                    .find(|(_, c)| unknown.contains(c))
                    .expect("the text holds its unknown characters");
                match tok.encode(text) {
                    Err(decodex::Error::UnknownChar { ch, offset: o }) => {
                        assert_eq!((ch, o), (first, offset), "{name}: {text:?}")
                    }
                    other => panic!("{name}: {text:?} should be refused, got {other:?}"),
                }
                assert_eq!(tok.encode_inner(text).unwrap(), want, "{name}: {text:?}");
                refused += 1;
            }
        }
        // The long text, cut and encoded in parallel by decodex.
        let lw = key(t, "long");
        let ids = tok.encode(&long_text).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        assert_eq!(
            ids.len() as u64,
            key(lw, "n_ids").as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(ids[..64], u32s(lw, "head")[..], "{name}");
        assert_eq!(
            sha256_hex(&bytes),
            string(lw, "ids_sha256"),
            "{name}: long ids"
        );
        let back = tok.decode(&ids).unwrap();
        assert_eq!(
            sha256_hex(back.as_bytes()),
            string(lw, "decoded_sha256"),
            "{name}"
        );
        assert_eq!(key(lw, "decodes_back"), true);
        println!(
            "tokenizer {name}: {exact} texts identical ({ids_total} ids), {refused} refused for unknown characters, long text {} ids identical",
            ids.len()
        );
        assert!(exact >= 10, "{name}: only {exact} texts compared");
        if name == "char" {
            assert!(
                refused >= 3,
                "char: {refused} texts with unknown characters"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. .npy vs numpy
// ---------------------------------------------------------------------------------------------

/// Parses an .npy file as NumPy's format spec says (numpy/lib/format.py): magic, version,
/// little-endian header length (u16 for 1.0, u32 for 2.0 and 3.0), a Python dict literal padded
/// with spaces and ended by '\n', the whole header a multiple of 64 bytes. Returns
/// (version, descr, fortran_order, shape, data offset).
fn parse_npy_header(bytes: &[u8]) -> ((u8, u8), String, bool, Vec<usize>, usize) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "magic");
    let version = (bytes[6], bytes[7]);
    let (len, start) = match version.0 {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => panic!("format version {v}"),
    };
    let end = start + len;
    assert_eq!(end % 64, 0, "data offset {end} is 64-byte aligned");
    assert_eq!(bytes[end - 1], b'\n', "the header ends in a newline");
    let dict = std::str::from_utf8(&bytes[start..end]).unwrap().trim_end();
    assert!(dict.starts_with('{') && dict.ends_with('}'), "{dict}");
    let field = |k: &str| -> &str {
        let at = dict
            .find(&format!("'{k}': "))
            .unwrap_or_else(|| panic!("{k} in {dict}"));
        &dict[at + k.len() + 4..]
    };
    let descr = field("descr")[1..].split('\'').next().unwrap().to_string();
    let fortran = field("fortran_order").starts_with("True");
    let shape_text = &field("shape")[1..];
    let shape = shape_text[..shape_text.find(')').unwrap()]
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    (version, descr, fortran, shape, end)
}

fn bits_of(v: &Value, k: &str) -> Vec<f32> {
    u32s(v, k).into_iter().map(f32::from_bits).collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn npy_files_written_by_numpy_are_read_or_refused_cleanly() {
    let fx = fixture_json("npy.json");
    let values = key(&fx, "values");
    let want = bits_of(values, "f32_bits");
    assert_eq!(want.len(), 15);
    assert!(want[3].is_nan() && want[1].is_infinite() && want[0].is_sign_negative());
    let files = key(&fx, "files");
    // float32 (5, 3), C order, in each format version: read exactly, NaN and -0 included.
    for (f, version) in [
        ("numpy_c.npy", (1, 0)),
        ("numpy_v2.npy", (2, 0)),
        ("numpy_v3.npy", (3, 0)),
    ] {
        let info = key(files, f);
        assert_eq!(u32s(info, "version"), [version.0, version.1], "{f}");
        let (got, rows, dim) = read_npy(&fixture(&format!("npy/{f}"))).unwrap();
        assert_eq!((rows, dim), (5, 3), "{f}");
        assert!(same_bits(&got, &want), "{f}: {got:?}");
        let bytes = std::fs::read(fixture(&format!("npy/{f}"))).unwrap();
        let (v, descr, fortran, shape, offset) = parse_npy_header(&bytes);
        assert_eq!(
            (v.0 as u32, descr.as_str(), fortran),
            (version.0, "<f4", false)
        );
        assert_eq!(shape, [5, 3]);
        assert_eq!(
            offset as u64,
            key(info, "data_offset").as_u64().unwrap(),
            "{f}"
        );
    }
    // What decodex does not read: an error naming the file and what it reads.
    for (f, descr) in [
        ("numpy_fortran.npy", "<f4"),
        ("numpy_f64.npy", "<f8"),
        ("numpy_be.npy", ">f4"),
        ("numpy_3d.npy", "<f4"),
    ] {
        assert_eq!(string(key(files, f), "descr"), descr, "{f}");
        let path = fixture(&format!("npy/{f}"));
        let err = read_npy(&path).expect_err(f).to_string();
        println!("npy {f}: refused: {err}");
        assert!(err.contains(f), "{err}");
        assert!(
            err.contains("float32 in C order") || err.contains("2-d"),
            "{f}: {err}"
        );
    }
    assert!(key(key(files, "numpy_fortran.npy"), "fortran_order") == true);
    assert_eq!(u32s(key(files, "numpy_3d.npy"), "shape"), [5, 3, 1]);
    // decodex's writer on the same values: the header fields numpy wrote, the same data bytes.
    let tmp = tmpdir("npy");
    let p = tmp.path().join("same.npy");
    let mut w = VectorWriter::create(&p, 5, 3, vec![]).unwrap();
    w.write(&want).unwrap();
    w.finish().unwrap();
    let (ours, theirs) = (
        std::fs::read(&p).unwrap(),
        std::fs::read(fixture("npy/numpy_c.npy")).unwrap(),
    );
    let (v1, d1, f1, s1, o1) = parse_npy_header(&ours);
    let (v2, d2, f2, s2, o2) = parse_npy_header(&theirs);
    assert_eq!((v1, d1, f1, s1), (v2, d2, f2, s2));
    assert_eq!(ours[o1..], theirs[o2..], "data bytes");
    // numpy pads its header with room to grow the shape and then to 64 bytes; decodex pads to
    // 64 bytes only, which for a 2-d float32 array lands on the same length: the same file.
    assert!(
        ours == theirs,
        "decodex's file differs from numpy's np.save"
    );
    println!(
        "npy: decodex's writer gives numpy's np.save bytes ({o1}-byte header, {} data bytes)",
        ours.len() - o1
    );
}

#[test]
fn npy_written_by_decodex_reads_in_numpy_and_is_rewritten_byte_for_byte() {
    let fx = fixture_json("npy.json");
    let emb = key(&fx, "decodex_embed");
    let shape = u32s(emb, "shape");
    let values = bits_of(emb, "f32_bits");
    let (rows, dim) = (shape[0] as usize, shape[1] as usize);
    assert_eq!((rows, dim), (4, 32));
    assert_eq!(values.len(), rows * dim);
    let info = key(key(&fx, "files"), "decodex_embed.npy");
    assert_eq!(string(info, "dtype"), "float32");
    assert_eq!(u32s(info, "np_shape"), shape);
    assert!(key(info, "fortran_order") == false);
    assert!(key(emb, "numpy_save_is_byte_identical") == true);
    let committed = std::fs::read(fixture("npy/decodex_embed.npy")).unwrap();
    let offset = key(info, "data_offset").as_u64().unwrap() as usize;
    assert_eq!(committed.len(), offset + rows * dim * 4);
    // The values numpy read, written again by decodex's writer: the committed file exactly.
    let tmp = tmpdir("npy-decodex");
    let again = tmp.path().join("again.npy");
    let mut w = VectorWriter::create(&again, rows, dim, vec![]).unwrap();
    w.write(&values[..dim]).unwrap();
    w.write(&values[dim..]).unwrap();
    w.finish().unwrap();
    assert!(
        std::fs::read(&again).unwrap() == committed,
        "decodex's .npy bytes changed"
    );
    // And `decodex embed` writes that file today: the same header, the same vectors (up to
    // this CPU's rounding).
    let texts = fixture(string(emb, "texts"));
    let out = tmp.path().join("embed.npy");
    common::decodex_json(&[
        "embed",
        "--model",
        fixture(string(emb, "model")).to_str().unwrap(),
        "--input",
        texts.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    let fresh = std::fs::read(&out).unwrap();
    assert_eq!(fresh[..offset], committed[..offset], "header");
    let d = common::max_abs_diff(&f32s(&fresh[offset..]), &values);
    println!("npy: decodex embed vs numpy's reading of the committed file max|diff| {d:.2e}");
    assert!(d <= 1e-5, "max|diff| {d:e}");
}

// ---------------------------------------------------------------------------------------------
// 5. The frozen base after LoRA, from the tensors
// ---------------------------------------------------------------------------------------------

/// `finetune` reports `base_unchanged` from a checksum of its own memory. Here the test checks
/// it from the outside: the base on disk is what `load_base` reads, bit for bit; that base with
/// the saved adapter reproduces the run's final eval loss bit for bit (a frozen weight that had
/// moved by one ulp changes it, as the control shows); and `merge` leaves every tensor LoRA does
/// not touch bit-identical and adds exactly (α/r)·BA to the others (up to f32 rounding).
#[test]
fn lora_finetune_leaves_the_frozen_base_bit_identical() {
    let tmp = tmpdir("frozen");
    let base = common::tiny_llama(tmp.path(), "base", common::LLAMA_CHARS);
    let mut train = String::new();
    for i in 0..24 {
        let w = ["red", "blue", "green", "black"][i % 4];
        train.push_str(&format!(
            "{{\"prompt\":\"say {w} {i}: \",\"completion\":\"{w} {w}\"}}\n"
        ));
    }
    let eval_text: String = train.lines().take(8).map(|l| format!("{l}\n")).collect();
    let (train_path, eval_path) = (
        tmp.path().join("train.jsonl"),
        tmp.path().join("eval.jsonl"),
    );
    std::fs::write(&train_path, &train).unwrap();
    std::fs::write(&eval_path, eval_text).unwrap();
    let weights = base.join("model.safetensors");
    let disk_before = std::fs::read(&weights).unwrap();
    let spec = model::LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        targets: vec![model::Proj::Q, model::Proj::V, model::Proj::Down],
    };
    let out = tmp.path().join("lora");
    let o = run::FinetuneOptions {
        base: base.clone(),
        data: train_path,
        eval: Some(eval_path.clone()),
        task: data::Task::Raw,
        lora: Some(spec.clone()),
        out: out.clone(),
        lr: 1e-2,
        // Decay and dropout on, so that an optimizer or a dropout that reached the frozen
        // weights would move them.
        weight_decay: 0.1,
        warmup_steps: 2,
        batch_tokens: 64,
        max_steps: 30,
        time_limit_min: 0.0,
        pause_at: None,
        max_len: 1024,
        overlong: data::Overlong::Skip,
        train_examples: None,
        eval_examples: 8,
        eval_every: 0,
        save_every: 0,
        grad_clip: 1.0,
        seed: 7,
        resume: false,
    };
    let done = run::finetune(&o, |_| {}).unwrap();
    let reported = key(&done, "eval_loss").as_f64().expect("an eval loss");
    assert!(
        std::fs::read(&weights).unwrap() == disk_before,
        "the base file changed"
    );

    // The base as finetune loads it is the file's tensors, bit for bit.
    let (pre, flat) = run::load_base(&base).unwrap();
    let disk = raw_tensors(&weights);
    assert_eq!(flat.entries.len(), disk.0.len());
    for e in &flat.entries {
        let (_, want) = f32_tensor(&disk, &e.name);
        let got = &flat.data[e.offset..e.offset + e.len];
        assert!(same_bits(got, &want), "{}: load_base differs", e.name);
    }
    let Network::Llama(llama) = &pre.network else {
        panic!("a Llama")
    };
    let cfg = llama.cfg.clone();
    let (saved_spec, params) = adapter::load(&out, &cfg).unwrap();
    assert_eq!(saved_spec.targets, spec.targets);
    assert!(
        params
            .entries
            .iter()
            .filter(|e| e.name.contains("lora_B"))
            .all(|e| params.data[e.offset..e.offset + e.len]
                .iter()
                .any(|&x| x != 0.0)),
        "every B trained"
    );

    // The original base + the saved adapter: the run's final eval loss, to the bit.
    let records = data::read_records(&eval_path, data::Task::Raw, Some(8)).unwrap();
    let max_len = 1024.min(cfg.max_position_embeddings);
    let (evals, _) =
        data::tokenize(&pre, &records, max_len, data::Overlong::Skip, &eval_path).unwrap();
    assert_eq!(evals.len(), 8);
    let loss_of = |base: decodex::nn::params::Flat| -> f64 {
        let method = fast::Method::Lora {
            spec: saved_spec.clone(),
            params: params.clone(),
        };
        let m = fast::FtModel::new(cfg.clone(), base, method).unwrap();
        run::eval_loss(&m, &evals, o.batch_tokens)
    };
    let again = loss_of(flat.clone());
    // Control: one frozen tensor one ulp off (away from zero) is seen.
    let mut nudged = flat.clone();
    let id = nudged.id("model.layers.1.mlp.up_proj.weight").unwrap();
    for x in nudged.get_mut(id) {
        *x = f32::from_bits(x.to_bits() + 1);
    }
    let off = loss_of(nudged);
    println!(
        "frozen base: run's eval loss {reported:.17}, original base + saved adapter {again:.17}, with one tensor 1 ulp off {off:.17}"
    );
    assert_eq!(again.to_bits(), reported.to_bits(), "the run's base moved");
    assert_ne!(off.to_bits(), reported.to_bits(), "the control is not seen");
    assert_eq!(done["base_unchanged"], true, "the run's own report agrees");

    // `decodex merge`: untouched tensors bit-identical, adapted ones base + (α/r)·BA.
    let merged = tmp.path().join("merged");
    common::decodex_json(&[
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        out.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--json",
    ]);
    let m = raw_tensors(&merged.join("model.safetensors"));
    assert_eq!(m.0.len(), disk.0.len());
    let (mut same, mut worst) = (0, 0f64);
    for e in &flat.entries {
        let (shape, got) = f32_tensor(&m, &e.name);
        assert_eq!(shape, e.shape, "{}", e.name);
        let want = &flat.data[e.offset..e.offset + e.len];
        let adapted = (0..cfg.num_hidden_layers).find_map(|l| {
            spec.targets
                .iter()
                .find(|p| e.name == format!("model.layers.{l}.{}.weight", p.path()))
                .map(|&p| (l, p))
        });
        let Some((l, p)) = adapted else {
            assert!(same_bits(&got, want), "{} changed in the merge", e.name);
            same += 1;
            continue;
        };
        let a = params.get(params.id(&model::lora_name(l, p, "A")).unwrap());
        let b = params.get(params.id(&model::lora_name(l, p, "B")).unwrap());
        let (rows, cols, r) = (e.shape[0], e.shape[1], spec.rank);
        let s = spec.alpha / r as f64;
        for i in 0..rows {
            for j in 0..cols {
                let ba: f64 = (0..r)
                    .map(|k| b[i * r + k] as f64 * a[k * cols + j] as f64)
                    .sum();
                let d = (got[i * cols + j] as f64 - (want[i * cols + j] as f64 + s * ba)).abs();
                worst = common::nan_max(worst, d);
            }
        }
    }
    println!("merge: {same} tensors bit-identical to the base, adapted ones within {worst:.2e} of base + (α/r)·BA");
    assert_eq!(same, flat.entries.len() - 2 * spec.targets.len());
    assert!(worst < 1e-5, "{worst:e}");
}
