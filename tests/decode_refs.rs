//! Decoding against independent references. Diverse (group) beam search on the tiny random Llama
//! and chat-template rendering against Hugging Face `transformers` 4.46.3, from the fixtures
//! `scripts/gen_decode_refs.py` wrote (tests/fixtures/decode_refs/); sampling frequencies against
//! the distribution HF's logits warpers define, computed here in f64 from their definitions
//! (`generation/logits_process.py`) and compared by a chi-square goodness-of-fit test.

mod common;

use std::path::Path;

use candle_core::Device;
use decodex::decode::processors::{SamplingConfig, Strategy};
use decodex::decode::{beam_search, generate_ids, BeamConfig, Cache, Decoder, EarlyStopping};
use decodex::models::pretrained::{self, Pretrained};
use decodex::models::Llama;
use decodex::train::finetune::data::{tokenize_record, Record};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/decode_refs")
        .join(name);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/gen_decode_refs.py)", p.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let g = &v["generator"];
    for key in ["script", "python", "torch", "transformers"] {
        assert!(g[key].is_string(), "{name}: generator.{key} is missing");
    }
    v
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an id list: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("fixture lacks the list {key:?}"))
}

// ---------------------------------------------------------------------------------------------
// Diverse (group) beam search.

/// transformers' `_group_beam_search` on tests/fixtures/llama_tiny: 6 settings (4 or 6 beams in
/// 2 to 4 groups, diversity penalty 0.5 or 1.0, length_penalty -0.5 to 2.0, early_stopping
/// true/false/never, EOS on a frequent token or none) × 3 prompts. Every returned sequence must
/// be identical and every `sequences_scores` within 2e-6 of its size. A score is a sum of 1 to
/// 16 log-probabilities (about -2 each) times len^-length_penalty, so its f32 rounding and the
/// ~1e-6 logit differences of the two forwards scale with it: with length_penalty 1 the
/// absolute differences stay under 1e-6 (README: ordinary beam search on SmolLM2 within
/// 1.4e-6), with 0 or -0.5 (scores of -20 to -90) under 4e-5. The fixture is not degenerate:
/// every case's sequences change when decodex runs it without the diversity penalty, and
/// hypotheses finish on EOS under each early-stopping rule.
#[test]
fn group_beam_search_matches_transformers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    let model = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap();
    let fx = fixture("group_beam.json");
    let cases = array(&fx, "cases");
    assert_eq!(cases.len(), 18, "6 settings x 3 prompts");
    let (mut worst, mut worst_rel, mut sequences, mut finished) = (0f32, 0f32, 0, 0);
    let (mut mismatches, mut insensitive) = (Vec::new(), Vec::new());
    for c in cases {
        let eos: Vec<u32> = c["eos"].as_u64().map(|e| e as u32).into_iter().collect();
        if !c["eos"].is_null() {
            assert_eq!(eos.len(), 1, "eos {:?}", c["eos"]);
        }
        let count = |key: &str| c[key].as_u64().unwrap() as usize;
        let cfg = BeamConfig {
            num_beams: count("num_beams"),
            num_beam_groups: count("num_beam_groups"),
            diversity_penalty: c["diversity_penalty"].as_f64().unwrap() as f32,
            length_penalty: c["length_penalty"].as_f64().unwrap(),
            early_stopping: serde_json::from_value::<EarlyStopping>(c["early_stopping"].clone())
                .unwrap(),
            num_return_sequences: count("num_return_sequences"),
            eos_ids: eos.clone(),
            max_new_tokens: count("max_new_tokens"),
            ..BeamConfig::default()
        };
        assert!(cfg.num_beam_groups > 1 && cfg.diversity_penalty > 0.0);
        let want: Vec<Vec<u32>> = array(c, "sequences").iter().map(ids).collect();
        let scores: Vec<f32> = array(c, "scores")
            .iter()
            .map(|s| s.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(want.len(), cfg.num_return_sequences);
        assert_eq!(scores.len(), cfg.num_return_sequences);
        let got = beam_search(&model, &ids(&c["prompt"]), &cfg).unwrap();
        let case = format!(
            "beams {}/{} penalty {} lp {} early_stopping {} eos {:?} prompt {}",
            cfg.num_beams,
            cfg.num_beam_groups,
            cfg.diversity_penalty,
            cfg.length_penalty,
            c["early_stopping"],
            eos,
            c["prompt"]
        );
        let (mut d, mut rel) = (0f32, 0f32);
        let got_tokens: Vec<&Vec<u32>> = got.iter().map(|h| &h.tokens).collect();
        if got.len() != want.len() || got_tokens.iter().zip(&want).any(|(g, w)| *g != w) {
            mismatches.push(format!("{case}\n  got  {got_tokens:?}\n  want {want:?}"));
        }
        for (h, (w, s)) in got.iter().zip(want.iter().zip(&scores)) {
            d = common::nan_max(d, (h.score - s).abs());
            rel = common::nan_max(rel, (h.score - s).abs() / s.abs().max(1.0));
            // HF only ends a hypothesis with EOS when it finished on it.
            assert_eq!(h.finished, eos.last() == w.last(), "{case}");
            finished += h.finished as usize;
        }
        // The reference depends on the diversity penalty: without it the groups search alike.
        let alike = beam_search(
            &model,
            &ids(&c["prompt"]),
            &BeamConfig {
                diversity_penalty: 0.0,
                ..cfg.clone()
            },
        )
        .unwrap();
        if alike.iter().map(|h| &h.tokens).eq(want.iter()) {
            insensitive.push(case.clone());
        }
        sequences += want.len();
        println!("{case}: scores max|diff| {d:.2e} (relative {rel:.2e})");
        worst = common::nan_max(worst, d);
        worst_rel = worst_rel.max(rel);
    }
    println!(
        "{sequences} sequences identical ({finished} finished on EOS), scores max|diff| \
         {worst:.2e}, relative {worst_rel:.2e}"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
    assert!(
        finished >= 10,
        "too few hypotheses finished on EOS ({finished}) to test the rules"
    );
    assert!(
        worst_rel <= 2e-6,
        "scores differ by {worst_rel:.2e} of their size"
    );
}

// ---------------------------------------------------------------------------------------------
// Chat templates.

/// SmolLM2-135M-Instruct with its GGUF chat template, bos and eos tokens.
fn smollm2() -> Pretrained {
    pretrained::load(&common::smollm2(), false, None).unwrap()
}

/// (role, content) pairs of a fixture conversation.
fn messages(fx: &Value, name: &str) -> Vec<(String, String)> {
    let conv = array(&fx["conversations"], name);
    assert!(!conv.is_empty(), "conversation {name} is empty");
    conv.iter()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap().to_string();
            (s("role"), s("content"))
        })
        .collect()
}

fn borrowed(msgs: &[(String, String)]) -> Vec<(&str, &str)> {
    msgs.iter().map(|(r, c)| (r.as_str(), c.as_str())).collect()
}

/// Sets `model`'s template and special tokens to a fixture template's.
fn use_template(model: &mut Pretrained, t: &Value) {
    model.chat_template = Some(t["template"].as_str().unwrap().to_string());
    model.bos_token = t["bos_token"].as_str().map(String::from);
    model.eos_token = Some(t["eos_token"].as_str().unwrap().to_string());
}

/// Where two strings first differ, with some context, for the failure message.
fn first_difference(got: &str, want: &str) -> String {
    let at = got
        .char_indices()
        .zip(want.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or(got.len().min(want.len()));
    let from = got[..at].char_indices().rev().nth(20).map_or(0, |(i, _)| i);
    let wfrom = from.min(want.len());
    format!(
        "at byte {at}: got {:?} want {:?}",
        got.get(from..)
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>(),
        want.get(wfrom..)
            .unwrap_or("")
            .chars()
            .take(60)
            .collect::<String>()
    )
}

/// The fixture's templates, SmolLM2's first after checking that `pretrained::load` reads the
/// same template, bos and eos from the GGUF.
fn templates<'a>(fx: &'a Value, model: &Pretrained) -> &'a Vec<Value> {
    let templates = array(fx, "templates");
    let names: Vec<&str> = templates
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["smollm2", "llama3.1", "qwen2.5", "zephyr"]);
    let smol = &templates[0];
    assert_eq!(model.chat_template.as_deref(), smol["template"].as_str());
    assert_eq!(model.bos_token.as_deref(), smol["bos_token"].as_str());
    assert_eq!(model.eos_token.as_deref(), smol["eos_token"].as_str());
    templates
}

/// `chat_prompt_for` against transformers' add_generation_prompt=True renderings of every
/// template of the fixture, over five conversations: what differs.
fn check_renderings() -> Vec<String> {
    let fx = fixture("chat_templates.json");
    let mut model = smollm2();
    let mut failures = Vec::new();
    for t in templates(&fx, &model) {
        let name = t["name"].as_str().unwrap();
        use_template(&mut model, t);
        let renderings: Vec<&Value> = array(t, "renderings")
            .iter()
            .filter(|r| r["add_generation_prompt"] == true)
            .collect();
        assert_eq!(renderings.len(), 5, "{name}");
        let mut identical = 0;
        for r in &renderings {
            let conv = r["conversation"].as_str().unwrap();
            let want = r["text"].as_str().unwrap();
            match model.chat_prompt_for(&borrowed(&messages(&fx, conv))) {
                Ok(got) if got == want => identical += 1,
                Ok(got) => {
                    failures.push(format!("{name}/{conv}: {}", first_difference(&got, want)))
                }
                Err(e) => failures.push(format!("{name}/{conv}: {e}")),
            }
        }
        println!(
            "{name}: {identical}/{} renderings byte-identical",
            renderings.len()
        );
    }
    failures
}

/// `apply_chat_template(..., add_generation_prompt=True)` of transformers for SmolLM2's GGUF
/// template (with the bos and eos `pretrained::load` reads from the GGUF), Llama 3.1's, Qwen2.5's
/// and Zephyr's, over five conversations (system turn or none, several turns, whitespace and
/// unicode, text that looks like Jinja): byte-identical. Zephyr's template puts its block tags on
/// lines of their own, which transformers' trim_blocks and lstrip_blocks drop. (Regression:
/// decodex's minijinja environment set neither until issue 29, so Zephyr's renderings started
/// with "\n\n" and had blank lines between turns.)
#[test]
fn chat_templates_render_as_transformers() {
    let failures = check_renderings();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A fine-tuning chat record (`tokenize_record`: the template over the messages before the last,
/// with the generation prompt, then the assistant's reply and EOS) against transformers'
/// rendering of the whole conversation with add_generation_prompt=False, for the templates
/// of the fixture: the record's text must be that rendering up to the end-of-turn token, and for
/// SmolLM2 its tokens must be transformers' tokens of that rendering (the template's trailing
/// newline aside). What differs.
fn check_records() -> Vec<String> {
    let fx = fixture("chat_templates.json");
    let mut model = smollm2();
    let msgs = messages(&fx, "ends_with_assistant");
    let (last, before) = msgs.split_last().unwrap();
    assert_eq!(last.0, "assistant");
    let mut failures = Vec::new();
    for t in templates(&fx, &model) {
        let name = t["name"].as_str().unwrap();
        use_template(&mut model, t);
        let full: Vec<&Value> = array(t, "renderings")
            .iter()
            .filter(|r| r["add_generation_prompt"] == false)
            .collect();
        assert_eq!(
            full.len(),
            1,
            "{name}: one rendering without generation prompt"
        );
        assert_eq!(full[0]["conversation"], "ends_with_assistant");
        let want = full[0]["text"].as_str().unwrap();
        let record = match model.chat_prompt_for(&borrowed(before)) {
            Ok(prompt) => prompt + &last.1 + model.eos_token.as_deref().unwrap(),
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        match want.strip_prefix(&record) {
            Some(rest) if rest.trim().is_empty() => println!("{name}: record text = rendering"),
            _ => failures.push(format!("{name}: {}", first_difference(&record, want))),
        }
        if name == "smollm2" {
            let want_ids = ids(&full[0]["ids"]);
            let (p, c) = tokenize_record(
                &model,
                &Record::Chat {
                    messages: msgs.clone(),
                },
            )
            .unwrap();
            let got = [p, c].concat();
            assert!(got.len() > 20, "{got:?}");
            let rest = want_ids.get(got.len()..).unwrap_or(&[]);
            let tail = model.tokenizer.decode(rest).unwrap();
            if want_ids.starts_with(&got) && rest.len() <= 1 && tail.trim().is_empty() {
                println!("{name}: {} record tokens = transformers' ids", got.len());
            } else {
                failures.push(format!("{name}: tokens {got:?}\n  want {want_ids:?}"));
            }
        }
    }
    failures
}

#[test]
fn chat_records_tokenize_as_transformers_renders_them() {
    let failures = check_records();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Sampling frequencies.
//
// The reference warpers below follow HF 4.46.3 (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
// `TopPLogitsWarper`, `MinPLogitsWarper`, `TypicalLogitsWarper`, min_tokens_to_keep = 1, in
// `_get_logits_processor`'s order), in f64. Where PyTorch's sort leaves ties unspecified, ties go
// to the lower id, as decodex documents.

/// 32 logits from 2.3 down to -4.0, spread over the ids by i -> (7i + 3) mod 32 so that id order
/// and probability order differ.
fn spread_logits() -> Vec<f32> {
    const VALUES: [f32; 32] = [
        2.3, 2.0, 1.8, 1.5, 1.4, 1.1, 0.9, 0.8, 0.5, 0.3, 0.2, 0.0, -0.2, -0.4, -0.5, -0.7, -0.9,
        -1.0, -1.2, -1.4, -1.5, -1.7, -1.9, -2.0, -2.2, -2.4, -2.6, -2.8, -3.0, -3.3, -3.6, -4.0,
    ];
    let mut l = vec![0.0; 32];
    for (rank, v) in VALUES.iter().enumerate() {
        l[(7 * rank + 3) % 32] = *v;
    }
    l
}

fn softmax(l: &[f64]) -> Vec<f64> {
    let max = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|&x| (x - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|x| x / s).collect()
}

/// Ids by decreasing logit, ties by increasing id.
fn descending(l: &[f64]) -> Vec<usize> {
    let mut o: Vec<usize> = (0..l.len()).collect();
    o.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    o
}

/// `scores < topk(scores, k).values[-1]` is removed: ties with the k-th stay.
fn ref_top_k(l: &mut [f64], k: usize) {
    let kth = l[descending(l)[k - 1]];
    l.iter_mut()
        .filter(|x| **x < kth)
        .for_each(|x| *x = f64::NEG_INFINITY);
}

/// Ascending sort, cumulative probabilities; remove where cumsum <= 1 - p, but never the last
/// (most likely) token.
fn ref_top_p(l: &mut [f64], p: f64) {
    let probs = softmax(l);
    let mut asc = descending(l);
    asc.reverse();
    let mut cum = 0.0;
    for &i in &asc[..asc.len() - 1] {
        cum += probs[i];
        if cum <= 1.0 - p {
            l[i] = f64::NEG_INFINITY;
        }
    }
}

/// Removes the tokens whose probability p, with the top probability p_max, `drop(p, p_max)`
/// says, except the most likely token.
fn drop_by_probability(l: &mut [f64], drop: impl Fn(f64, f64) -> bool) {
    let probs = softmax(l);
    let top = probs.iter().copied().fold(0.0, f64::max);
    let best = descending(l)[0];
    for (i, x) in l.iter_mut().enumerate() {
        if i != best && drop(probs[i], top) {
            *x = f64::NEG_INFINITY;
        }
    }
}

/// Remove probs < min_p · max prob (the most likely token always stays).
fn ref_min_p(l: &mut [f64], min_p: f64) {
    drop_by_probability(l, |p, top| p < min_p * top);
}

/// Sort by |-log p - H| ascending; last_ind = #(cumsum < mass) (clamped); remove scores above
/// the last_ind-th's, never the first.
fn ref_typical(l: &mut [f64], mass: f64) {
    let probs = softmax(l);
    let ent: f64 = -probs
        .iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| p * p.ln())
        .sum::<f64>();
    let shifted: Vec<f64> = probs
        .iter()
        .map(|&p| {
            if p > 0.0 {
                (-p.ln() - ent).abs()
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let mut o: Vec<usize> = (0..l.len()).collect();
    o.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]).then(a.cmp(&b)));
    let mut cum = 0.0;
    let mut last = 0;
    for &i in &o {
        cum += probs[i];
        last += (cum < mass) as usize;
    }
    let cutoff = shifted[o[last.min(l.len() - 1)]];
    for &i in &o[1..] {
        if shifted[i] > cutoff {
            l[i] = f64::NEG_INFINITY;
        }
    }
}

/// Which reference to follow for one setting: HF's chain, or a plausible bug in it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    Hf,
    /// Temperature left out.
    NoTemperature,
    /// The filters on the T = 1 distribution, temperature after them.
    TemperatureLast,
    /// top-k keeps exactly k (ties with the k-th dropped).
    TopKExact,
    /// top-p also drops the token that makes the nucleus reach p.
    TopPExclusive,
    /// top-p keeps the set whose mass exceeds p (`>` for `>=`).
    TopPStrict,
    /// min-p threshold without the top probability (absolute min_p).
    MinPAbsolute,
    /// min-p removes probs <= the threshold.
    MinPInclusive,
    /// typical-p's mass taken as a nucleus of the most likely tokens (top-p).
    TypicalAsTopP,
}

/// The distribution HF's warpers give for `cfg` on `logits` (f64), or the distribution under
/// `variant`.
fn reference(logits: &[f32], cfg: &SamplingConfig, variant: Variant) -> Vec<f64> {
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let t = cfg.temperature as f64;
    let scale = |l: &mut Vec<f64>| l.iter_mut().for_each(|x| *x /= t);
    if t != 1.0 && variant != Variant::NoTemperature && variant != Variant::TemperatureLast {
        scale(&mut l);
    }
    if cfg.top_k != 0 {
        if variant == Variant::TopKExact {
            let o = descending(&l);
            o[cfg.top_k..]
                .iter()
                .for_each(|&i| l[i] = f64::NEG_INFINITY);
        } else {
            ref_top_k(&mut l, cfg.top_k);
        }
    }
    if cfg.top_p < 1.0 {
        let p = cfg.top_p as f64;
        match variant {
            Variant::TopPExclusive | Variant::TopPStrict => {
                // Descending: `above` is the mass of the more likely tokens.
                let probs = softmax(&l);
                let mut above = 0.0;
                for (rank, i) in descending(&l).into_iter().enumerate() {
                    let keep = match variant {
                        Variant::TopPStrict => above <= p,
                        _ => rank == 0 || above + probs[i] < p,
                    };
                    above += probs[i];
                    if !keep {
                        l[i] = f64::NEG_INFINITY;
                    }
                }
            }
            _ => ref_top_p(&mut l, p),
        }
    }
    if cfg.min_p > 0.0 {
        let m = cfg.min_p as f64;
        match variant {
            Variant::MinPAbsolute => drop_by_probability(&mut l, |p, _| p < m),
            Variant::MinPInclusive => drop_by_probability(&mut l, |p, top| p <= m * top),
            _ => ref_min_p(&mut l, m),
        }
    }
    if cfg.typical_p < 1.0 {
        if variant == Variant::TypicalAsTopP {
            ref_top_p(&mut l, cfg.typical_p as f64);
        } else {
            ref_typical(&mut l, cfg.typical_p as f64);
        }
    }
    if variant == Variant::TemperatureLast && t != 1.0 {
        scale(&mut l);
    }
    softmax(&l)
}

/// ln Γ(x), Lanczos (g = 7, 9 terms; |error| < 1e-14 for x > 0).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let a = C[0] + (1..9).map(|i| C[i] / (x + i as f64)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// P(χ²_df > x): the regularized upper incomplete gamma Q(df/2, x/2), by its series below
/// a + 1 and its continued fraction above (Numerical Recipes, `gammq`).
fn chi2_sf(x: f64, df: usize) -> f64 {
    let (a, x) = (df as f64 / 2.0, x / 2.0);
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * front
    } else {
        // Modified Lentz.
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        front * h
    }
}

/// Pearson's χ² of `counts` against `probs` and its degrees of freedom and p-value. Tokens
/// expected fewer than 5 times are pooled into one bin (itself merged into the smallest bin
/// while under 5); p = 0 when a token of probability 0 was drawn.
fn chi_square(counts: &[u64], probs: &[f64]) -> (f64, usize, f64) {
    let n: u64 = counts.iter().sum();
    assert!(n > 0 && counts.len() == probs.len());
    // (observed, expected) per bin.
    let mut bins: Vec<(f64, f64)> = Vec::new();
    let mut pooled = (0.0, 0.0);
    for (&c, &p) in counts.iter().zip(probs) {
        let e = p * n as f64;
        if p == 0.0 && c > 0 {
            return (f64::INFINITY, 0, 0.0);
        } else if e >= 5.0 {
            bins.push((c as f64, e));
        } else if p > 0.0 {
            pooled = (pooled.0 + c as f64, pooled.1 + e);
        }
    }
    if pooled.1 > 0.0 {
        let smallest = (0..bins.len()).min_by(|&a, &b| bins[a].1.total_cmp(&bins[b].1));
        match smallest {
            Some(i) if pooled.1 < 5.0 => bins[i] = (bins[i].0 + pooled.0, bins[i].1 + pooled.1),
            _ => bins.push(pooled),
        }
    }
    let stat: f64 = bins.iter().map(|(o, e)| (o - e).powi(2) / e).sum();
    let df = bins.len().saturating_sub(1).max(1);
    (stat, df, chi2_sf(stat, df))
}

#[test]
fn chi_square_tail_matches_tables() {
    // Critical values: χ²₁ 3.841 (5%), 23.928 (1e-6); χ²₁₀ 18.307 (5%); χ²₃₀ 43.773 (5%).
    for (x, df, p) in [
        (3.841_459, 1, 0.05),
        (23.928_127, 1, 1e-6),
        (18.307_038, 10, 0.05),
        (43.772_972, 30, 0.05),
        (2.0, 2, (-1.0f64).exp()),
    ] {
        let got = chi2_sf(x, df);
        assert!(
            (got / p - 1.0).abs() < 1e-5,
            "chi2_sf({x}, {df}) = {got:e}, want {p:e}"
        );
    }
    assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
    assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
}

/// A model whose next-token logits never change: sampling from it draws i.i.d. tokens.
struct FixedLogits(Vec<f32>);

impl Decoder for FixedLogits {
    fn vocab_size(&self) -> usize {
        self.0.len()
    }

    fn context_len(&self) -> usize {
        1 << 30
    }

    fn new_cache(&self, _batch: usize) -> decodex::Result<Cache> {
        Ok(Cache::new(()))
    }

    fn step(&self, _tokens: &[u32], batch: usize, _cache: &mut Cache) -> decodex::Result<Vec<f32>> {
        Ok(self.0.repeat(batch))
    }

    fn select_rows(&self, _cache: &mut Cache, _rows: &[usize]) -> decodex::Result<()> {
        Ok(())
    }
}

/// Draws per setting: a wrong kept set or a wrong temperature moves counts by thousands of
/// standard deviations at this size (every variant below is rejected at p < 1e-6).
const DRAWS: usize = 40_000;
/// The false-positive rate of each goodness-of-fit test.
const ALPHA: f64 = 1e-6;

/// The case with logits tied at the k-th place.
const TIE: &str = "top-k 3, tie at the 3rd";

struct Case {
    name: &'static str,
    logits: Vec<f32>,
    cfg: SamplingConfig,
    /// Plausible bugs the draws must reject.
    variants: Vec<Variant>,
    /// Built to sit exactly on a threshold or a tie, in f32 as in f64.
    on_threshold: bool,
}

fn cases() -> Vec<Case> {
    use Variant::*;
    let spread = spread_logits();
    let cfg = |temperature, top_k, top_p, min_p, typical_p| SamplingConfig {
        temperature,
        top_k,
        top_p,
        min_p,
        typical_p,
        seed: 1234,
        ..SamplingConfig::default()
    };
    // 16 equal logits on the odd ids (probability 1/16 each, exactly, in f32 too), the even ids
    // impossible: top_p 0.25 reaches p exactly after 4 tokens.
    let sixteen: Vec<f32> = (0..32)
        .map(|i| if i % 2 == 1 { 0.0 } else { f32::NEG_INFINITY })
        .collect();
    // A tie at the 3rd largest logit (2.5, 2.3, then three at 2.1): top_k 3 keeps 5 tokens.
    let mut tie = spread.clone();
    for (id, v) in [(4, 2.5), (9, 2.1), (20, 2.1), (27, 2.1)] {
        tie[id] = v;
    }
    vec![
        Case {
            name: "T 1",
            logits: spread.clone(),
            cfg: cfg(1.0, 0, 1.0, 0.0, 1.0),
            variants: vec![],
            on_threshold: false,
        },
        Case {
            name: "T 0.6",
            logits: spread.clone(),
            cfg: cfg(0.6, 0, 1.0, 0.0, 1.0),
            variants: vec![NoTemperature],
            on_threshold: false,
        },
        Case {
            name: "T 1.7, top-k 8",
            logits: spread.clone(),
            cfg: cfg(1.7, 8, 1.0, 0.0, 1.0),
            variants: vec![NoTemperature],
            on_threshold: false,
        },
        Case {
            name: TIE,
            logits: tie,
            cfg: cfg(1.0, 3, 1.0, 0.0, 1.0),
            variants: vec![TopKExact],
            on_threshold: true,
        },
        Case {
            name: "top-p 0.6",
            logits: spread.clone(),
            cfg: cfg(1.0, 0, 0.6, 0.0, 1.0),
            variants: vec![TopPExclusive],
            on_threshold: false,
        },
        Case {
            name: "T 0.8, top-p 0.9",
            logits: spread.clone(),
            cfg: cfg(0.8, 0, 0.9, 0.0, 1.0),
            variants: vec![NoTemperature, TemperatureLast, TopPExclusive],
            on_threshold: false,
        },
        Case {
            name: "top-p 0.25 reached exactly",
            logits: sixteen.clone(),
            cfg: cfg(1.0, 0, 0.25, 0.0, 1.0),
            variants: vec![TopPExclusive, TopPStrict],
            on_threshold: true,
        },
        Case {
            name: "T 1.5, min-p 0.1",
            logits: spread.clone(),
            cfg: cfg(1.5, 0, 1.0, 0.1, 1.0),
            variants: vec![NoTemperature, TemperatureLast, MinPAbsolute],
            on_threshold: false,
        },
        Case {
            name: "min-p 1.0 on equal logits",
            logits: sixteen,
            cfg: cfg(1.0, 0, 1.0, 1.0, 1.0),
            variants: vec![MinPInclusive],
            on_threshold: true,
        },
        Case {
            name: "typical-p 0.7",
            logits: spread.clone(),
            cfg: cfg(1.0, 0, 1.0, 0.0, 0.7),
            variants: vec![TypicalAsTopP],
            on_threshold: false,
        },
        Case {
            name: "T 1.3, top-k 20, top-p 0.95, min-p 0.05",
            logits: spread,
            cfg: cfg(1.3, 20, 0.95, 0.05, 1.0),
            variants: vec![NoTemperature, TemperatureLast, TopPExclusive, MinPAbsolute],
            on_threshold: false,
        },
    ]
}

/// The kept set is far from every threshold (unless the case sits on one by construction): moving
/// top_p, min_p or typical_p by 1e-4 keeps it, so f32 rounding in decodex cannot flip a token.
fn assert_margin(case: &Case, want: &[f64]) {
    if case.on_threshold {
        return;
    }
    let kept = |p: &[f64]| p.iter().map(|&x| x > 0.0).collect::<Vec<_>>();
    for delta in [-1e-4f32, 1e-4] {
        let mut c = case.cfg.clone();
        if c.top_p < 1.0 {
            c.top_p += delta;
        }
        if c.min_p > 0.0 {
            c.min_p += delta;
        }
        if c.typical_p < 1.0 {
            c.typical_p += delta;
        }
        let moved = reference(&case.logits, &c, Variant::Hf);
        assert_eq!(
            kept(&moved),
            kept(want),
            "{}: a threshold is within 1e-4",
            case.name
        );
    }
}

/// Checks `counts` against the reference of `case`: the printed line, or what is wrong. The
/// reference's own checks (margins, variants that differ from it) panic.
fn check_counts(case: &Case, counts: &[u64], sampler: &str) -> Result<String, String> {
    let want = reference(&case.logits, &case.cfg, Variant::Hf);
    assert_margin(case, &want);
    let n: u64 = counts.iter().sum();
    assert_eq!(n as usize, DRAWS, "{}", case.name);
    let name = format!("{sampler} {}", case.name);
    let kept = want.iter().filter(|&&p| p > 0.0).count();
    let (mut filtered, mut missing) = (Vec::new(), Vec::new());
    for (id, (&c, &p)) in counts.iter().zip(&want).enumerate() {
        let expected = p * n as f64;
        if p == 0.0 && c > 0 {
            filtered.push(format!("{id} ({c} times)"));
        }
        // A kept token expected 20 times or more shows up (P(none) < 3e-9).
        if expected >= 20.0 && c == 0 {
            missing.push(format!("{id} (expected {expected:.0} times)"));
        }
    }
    if !filtered.is_empty() || !missing.is_empty() {
        return Err(format!(
            "{name}: drew filtered tokens {filtered:?}, never drew kept tokens {missing:?}"
        ));
    }
    let (stat, df, pvalue) = chi_square(counts, &want);
    if pvalue <= ALPHA {
        let expected: Vec<f64> = want.iter().map(|p| (p * n as f64).round()).collect();
        return Err(format!(
            "{name}: chi2 {stat:.1} (df {df}), p {pvalue:.1e} <= {ALPHA:e}\n  counts   \
             {counts:?}\n  expected {expected:?}"
        ));
    }
    // Power: the draws tell each plausible bug from HF's chain.
    let mut rejected = Vec::new();
    for &v in &case.variants {
        let alt = reference(&case.logits, &case.cfg, v);
        let gap = alt
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            gap > 1e-3,
            "{}: variant {v:?} is HF's distribution",
            case.name
        );
        let (s, _, p) = chi_square(counts, &alt);
        if p >= ALPHA {
            return Err(format!(
                "{name}: the draws fit variant {v:?} too (chi2 {s:.1})"
            ));
        }
        rejected.push(format!("{v:?} chi2 {s:.0}"));
    }
    let rejected = if rejected.is_empty() {
        "-".to_string()
    } else {
        rejected.join(", ")
    };
    Ok(format!(
        "{sampler} {:<40} {kept:>2} kept, chi2 {stat:6.1} (df {df:>2}), p {pvalue:.2}; rejects \
         {rejected}",
        case.name
    ))
}

/// `generate_ids` with the `sample` strategy on fixed logits (one seeded stream of 40,000 draws
/// per setting) against HF's warpers: temperature, top-k (ties kept), top-p (smallest nucleus
/// reaching p, also exactly), min-p (strict), typical-p and a chain of four. Filtered tokens are
/// never drawn, every kept token is, the counts fit the reference (p > 1e-6) and reject each
/// listed plausible bug (p < 1e-6).
#[test]
fn sampling_frequencies_follow_hf_warpers() {
    let cases = cases();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for case in &cases {
        case.cfg.validate().unwrap();
        let model = FixedLogits(case.logits.clone());
        let out =
            generate_ids(&model, &[0], &case.cfg, Strategy::Sample, DRAWS, |_, _| {}).unwrap();
        let mut counts = vec![0u64; case.logits.len()];
        out.tokens.iter().for_each(|&t| counts[t as usize] += 1);
        match check_counts(case, &counts, "generate_ids") {
            Ok(line) => println!("{line}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
