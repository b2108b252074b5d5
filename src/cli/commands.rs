//! One function per subcommand: validate, call the library, print.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::json;

use decodex::data::{self, PrepareOptions};
use decodex::models::gpt::checkpoint;
use decodex::tokenizer::{Tokenizer, TokenizerKind};

use super::{
    BenchCmd, BleuArgs, Command, DataCmd, EvalCmd, ExportArgs, Kind, LogitsArgs, TokenizerCmd,
};

pub fn dispatch(cmd: Command, json: bool) -> Result<()> {
    match cmd {
        Command::Quickstart(a) => super::train::quickstart(a, json),
        Command::Tokenizer(t) => tokenizer(t, json),
        Command::Data(d) => data_cmd(d, json),
        Command::Train(a) => super::train::train_any(&a, json),
        Command::Translate(a) => super::tasks::translate(&a, json),
        Command::Finetune(a) => super::train::finetune_cmd(&a, json),
        Command::Summarize(a) => super::tasks::summarize(&a, json),
        Command::Answer(a) => super::tasks::answer(&a, json),
        Command::Merge(a) => super::tasks::merge(&a, json),
        Command::Embed(a) => super::search::embed(&a, json),
        Command::Index(c) => super::search::index_cmd(&c, json),
        Command::Serve(a) => super::serve::serve(&a, json),
        Command::Generate(mut a) => {
            a.json = json;
            super::generate::generate_cmd(&a)
        }
        Command::Chat(a) => super::generate::chat(&a, json),
        Command::Export(a) => export(&a, json),
        Command::Plot(a) => {
            a.force.check(&a.out, "--out")?;
            let logs = decodex::plot::read_metrics(&a.metrics)?;
            decodex::plot::plot_losses(&logs, &a.title, &a.out)?;
            emit(
                json,
                json!({"plot": a.out, "points": logs.len()}),
                &format!("wrote {}", a.out.display()),
            )
        }
        Command::Bench(b) => bench(b, json),
        Command::Logits(a) => logits(&a, json),
        Command::Eval(e) => eval(e, json),
    }
}

/// A benchmark's JSON object with the kernel tier that ran and the CPU features found.
pub(super) fn with_isa(mut v: serde_json::Value) -> serde_json::Value {
    use decodex::kernels::isa;
    if let Some(o) = v.as_object_mut() {
        o.insert("isa".into(), isa::Isa::current().name().into());
        o.insert("cpu_features".into(), isa::cpu_features().into());
    }
    v
}

fn bench(cmd: BenchCmd, json: bool) -> Result<()> {
    match cmd {
        BenchCmd::Decode(a) => super::generate::bench_decode(&a, json),
        BenchCmd::Embed(a) => super::search::bench_embed(&a, json),
        BenchCmd::Serve(a) => super::serve::bench_serve(&a, json),
        BenchCmd::Train {
            config,
            max_steps,
            warmup,
        } => {
            if max_steps == 0 {
                bail!("--max-steps must be at least 1");
            }
            let r = decodex::train::bench::bench_train(&config, max_steps, warmup)?;
            let human = format!(
                "{} backend, {} threads: {:.0} tokens/s (median step {:.1} ms over {} steps), {:.0} GFLOP/s = MFU {:.0}% of the measured matmul peak {:.0} GFLOP/s, peak RSS {:.0} MiB",
                r.backend,
                r.threads,
                r.tokens_per_sec,
                r.step_ms_median,
                r.iters,
                r.achieved_gflops,
                100.0 * r.mfu,
                r.matmul_peak_gflops,
                r.peak_rss_mb
            );
            emit(json, with_isa(serde_json::to_value(&r)?), &human)
        }
    }
}

fn eval(cmd: EvalCmd, json: bool) -> Result<()> {
    match cmd {
        EvalCmd::Retrieval(a) => super::search::eval_retrieval(&a, json),
        EvalCmd::Sts(a) => super::search::eval_sts(&a, json),
        EvalCmd::Bleu(a) => bleu(&a, json),
        EvalCmd::Rouge(a) => {
            let r = decodex::eval::rouge::evaluate_files(&a.hyp, &a.refs, !a.no_stemmer)?;
            let human = format!(
                "ROUGE-1 {:.2}  ROUGE-2 {:.2}  ROUGE-L {:.2}  ({} summaries, stemmer {})",
                r.rouge1,
                r.rouge2,
                r.rouge_l,
                r.pairs,
                if r.stemmer { "on" } else { "off" }
            );
            emit(json, with_isa(serde_json::to_value(&r)?), &human)
        }
        EvalCmd::Squad(a) => {
            use decodex::eval::squad;
            let ds = squad::read_dataset(&a.input)?;
            let preds = squad::read_predictions(&a.predictions)?;
            let r = squad::evaluate(&ds, &preds);
            // Predictions that answer no question (made for another dataset) are refused, not
            // scored 0; questions some predictions leave unanswered score 0, as the official
            // script scores them.
            if r.answered == 0 {
                bail!(
                    "{}: none of its {} predictions answers a question of {}; give the predictions made for this dataset",
                    a.predictions.display(),
                    preds.len(),
                    a.input.display()
                );
            }
            if r.answered < r.total {
                tracing::warn!(
                    "{} of {} questions have no prediction and score 0",
                    r.total - r.answered,
                    r.total
                );
            }
            let human = format!(
                "exact match {:.2}  F1 {:.2}  ({} questions, {} answered)",
                r.exact_match, r.f1, r.total, r.answered
            );
            emit(json, with_isa(serde_json::to_value(&r)?), &human)
        }
        EvalCmd::Perplexity(a) => {
            if a.batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let text = data::read_corpus(&a.input)?;
            let model = decodex::models::pretrained::load(&a.model, false, None)?;
            let (m, tok) = (model.decoder(), &model.tokenizer);
            let r = decodex::eval::perplexity(m, tok, &text, &a.input, a.batch_size)?;
            let human = format!(
                "{}: {} tokens, loss {:.4} nats/token, perplexity {:.2}, {:.4} bits/byte",
                r.file, r.tokens, r.loss, r.perplexity, r.bits_per_byte
            );
            emit(json, with_isa(serde_json::to_value(&r)?), &human)
        }
    }
}

fn bleu(a: &BleuArgs, json: bool) -> Result<()> {
    let opts = decodex::eval::bleu::BleuOptions {
        lowercase: a.lowercase,
    };
    let r = decodex::eval::bleu::evaluate_files(&a.hyp, &a.refs, &opts)?;
    let (b, c) = (&r.bleu, &r.chrf);
    let human = format!(
        "{}\n{}\nBLEU signature: {}\nchrF2 signature: {}",
        b.line(),
        c.line(),
        b.signature,
        c.signature
    );
    emit(
        json,
        json!({
            "hyp": r.hyp,
            "refs": r.refs,
            "lines": r.lines,
            "bleu": b.score,
            "chrf": c.score,
            "signature_bleu": b.signature,
            "signature_chrf": c.signature,
            "precisions": b.precisions,
            "counts": b.counts,
            "totals": b.totals,
            "bp": b.bp,
            "ratio": b.ratio,
            "sys_len": b.sys_len,
            "ref_len": b.ref_len,
        }),
        &human,
    )
}

/// Prints `value` as one JSON line, or `human`.
pub(super) fn emit(json: bool, value: serde_json::Value, human: &str) -> Result<()> {
    emit_lines(json, value, &[human])
}

/// Prints `value` as one JSON line, or each of the `human` lines.
pub(super) fn emit_lines(
    json: bool,
    value: serde_json::Value,
    human: &[impl AsRef<str>],
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{value}")?;
    } else {
        for line in human {
            writeln!(out, "{}", line.as_ref())?;
        }
    }
    Ok(())
}

/// Refuses an `--out` folder that is the `model` being read (by any spelling: a trailing slash,
/// `..`, a symlink), which writing would replace.
pub(super) fn check_out_is_not(out: &Path, model: &Path) -> Result<()> {
    if let (Ok(o), Ok(m)) = (out.canonicalize(), model.canonicalize()) {
        if o == m {
            bail!(
                "{}: --out is the model directory itself; choose another folder",
                out.display()
            );
        }
    }
    Ok(())
}

fn kind(k: Kind) -> TokenizerKind {
    match k {
        Kind::Char => TokenizerKind::Char,
        Kind::Bpe => TokenizerKind::Bpe,
    }
}

fn tokenizer(t: TokenizerCmd, json: bool) -> Result<()> {
    match t {
        TokenizerCmd::Train {
            input,
            kind: k,
            vocab_size,
            out,
            force,
        } => {
            if k == Kind::Bpe && vocab_size.is_none() {
                bail!("--vocab-size is required with --kind bpe");
            }
            force.check(&out, "--out")?;
            let text = data::read_corpus(&input)?;
            let tok = match k {
                Kind::Char => Tokenizer::train_char(&text)?,
                Kind::Bpe => Tokenizer::train_bpe(&[text.as_str()], vocab_size.unwrap())?,
            };
            tok.save(&out)?;
            emit(
                json,
                json!({"tokenizer": out, "kind": tok.kind(), "vocab_size": tok.vocab_size()}),
                &format!(
                    "wrote {} ({:?}, {} tokens)",
                    out.display(),
                    tok.kind(),
                    tok.vocab_size()
                ),
            )
        }
        TokenizerCmd::Encode {
            tokenizer_file,
            text,
        } => {
            let tok = Tokenizer::from_file(&tokenizer_file)?;
            let ids = tok.encode(&text)?;
            let human = ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ");
            emit(json, json!({"ids": ids, "tokens": ids.len()}), &human)
        }
    }
}

fn data_cmd(d: DataCmd, json: bool) -> Result<()> {
    let DataCmd::Prepare {
        input,
        kind: k,
        vocab_size,
        tokenizer_file,
        val_input,
        val_fraction,
        out,
        force,
    } = d;
    if k == Some(Kind::Bpe) && vocab_size.is_none() {
        bail!("--vocab-size is required with --kind bpe");
    }
    force.check(&out, "--out")?;
    let r = data::prepare(&PrepareOptions {
        input,
        val_input,
        tokenizer: kind(k.unwrap_or(Kind::Bpe)),
        vocab_size,
        val_fraction,
        tokenizer_file,
        out,
    })?;
    emit(
        json,
        json!({"out": r.out, "train_tokens": r.train_tokens, "val_tokens": r.val_tokens, "vocab_size": r.vocab_size, "seconds": r.seconds}),
        &format!(
            "wrote {}: {} train tokens, {} val tokens, vocabulary {} ({:.1} s)",
            r.out.display(),
            r.train_tokens,
            r.val_tokens,
            r.vocab_size,
            r.seconds
        ),
    )
}

fn export(a: &ExportArgs, json: bool) -> Result<()> {
    let (model, out) = (a.model.as_path(), a.out.as_path());
    let super::ExportFormat::Hf = a.format;
    check_out_is_not(out, model)?;
    a.force.check(out, "--out")?;
    let loaded = checkpoint::load_model(model)?;
    checkpoint::save_model(
        out,
        &loaded.cfg,
        &loaded.params,
        loaded.tokenizer.eos_id(),
        None,
        true,
    )?;
    loaded
        .tokenizer
        .save(&out.join(checkpoint::TOKENIZER_FILE))?;
    emit(
        json,
        json!({"out": out, "format": "hf"}),
        &format!(
            "exported {} to {} (Hugging Face GPT-2 layout)",
            model.display(),
            out.display()
        ),
    )
}

/// `logits --text` as `ids`: at least one token, and no more than the model's `context`.
fn check_text(ids: &[u32], context: usize) -> Result<()> {
    if ids.is_empty() {
        bail!("--text encodes to no tokens");
    }
    Ok(decodex::decode::generate::check_context(
        "tokens of --text",
        ids.len(),
        0,
        context,
    )?)
}

fn logits(a: &LogitsArgs, json: bool) -> Result<()> {
    use decodex::models::pretrained::{self, Network};
    if a.model.dequantize {
        bail!("--dequantize does not apply to `decodex logits`: it runs every model in f32");
    }
    let (model, text, out) = (a.model.model.as_path(), a.text.as_str(), a.out.as_path());
    a.force.check(out, "--out")?;
    let adapter = a.model.adapter.as_deref();
    let device = Device::Cpu;
    let is_llama = model.is_file()
        || std::fs::read_to_string(model.join("config.json")).is_ok_and(|c| {
            c.contains("\"model_type\": \"llama\"") || c.contains("\"model_type\":\"llama\"")
        });
    let (ids, l) = if is_llama || adapter.is_some() {
        let m = pretrained::load_with_adapter(model, true, None, adapter)?;
        let Network::Llama(llama) = &m.network else {
            bail!("{}: --adapter needs a Llama-family model", model.display());
        };
        let ids = m.tokenizer.encode(text)?;
        check_text(&ids, m.context_len())?;
        let x = candle_core::Tensor::from_slice(&ids, (1, ids.len()), &device)?;
        let l = llama.forward(&x, &mut llama.candle_cache())?;
        (ids, l)
    } else {
        let loaded = checkpoint::load_model(model)?;
        let gpt = loaded.gpt(&device)?;
        let ids = loaded.tokenizer.encode(text)?;
        check_text(&ids, loaded.cfg.block_size)?;
        let x = candle_core::Tensor::from_slice(&ids, (1, ids.len()), &device)?;
        let l = gpt.forward(&x, None, None)?;
        (ids, l)
    };
    let (_, t, v) = l.dims3()?;
    let flat = l.flatten_all()?.to_vec1::<f32>()?;
    let ids_f: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    decodex::nn::tensor_io::save_tensors(
        out,
        &[
            ("input_ids".into(), vec![1, t], &ids_f[..]),
            ("logits".into(), vec![1, t, v], &flat[..]),
        ],
        Default::default(),
    )
    .with_context(|| format!("writing {}", out.display()))?;
    emit(
        json,
        json!({"out": out, "tokens": t}),
        &format!("wrote logits of {t} tokens to {}", out.display()),
    )
}
