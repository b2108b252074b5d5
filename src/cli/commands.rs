//! One function per subcommand: validate, call the library, print.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde_json::json;

use decodex::data::{self, PrepareOptions};
use decodex::models::gpt::checkpoint;
use decodex::tokenizer::{Tokenizer, TokenizerKind};
use decodex::train::{self, Event, TrainOptions};

use super::{
    BenchCmd, BleuArgs, Command, DataCmd, EvalCmd, GenerateArgs, Kind, TokenizerCmd, TrainArgs,
};

pub fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Quickstart(a) => quickstart(a),
        Command::Tokenizer(t) => tokenizer(t),
        Command::Data(d) => data_cmd(d),
        Command::Train(a) => {
            let text = std::fs::read_to_string(&a.config).unwrap_or_default();
            if train::seq2seq::is_seq2seq_config(&text) {
                train_seq2seq_cmd(&a)
            } else {
                train_cmd(&a).map(|_| ())
            }
        }
        Command::Translate(a) => translate_cmd(&a),
        Command::Finetune(a) => finetune_cmd(&a),
        Command::Summarize(a) => super::tasks::summarize(&a),
        Command::Answer(a) => super::tasks::answer(&a),
        Command::Merge(a) => super::tasks::merge(&a),
        Command::Embed(a) => super::search::embed(&a),
        Command::Index(c) => super::search::index_cmd(&c),
        Command::Eval(EvalCmd::Retrieval(a)) => super::search::eval_retrieval(&a),
        Command::Eval(EvalCmd::Sts(a)) => super::search::eval_sts(&a),
        Command::Bench(BenchCmd::Embed(a)) => super::search::bench_embed(&a),
        Command::Generate(a) => super::generate::generate_cmd(&a),
        Command::Chat(a) => super::generate::chat(&a),
        Command::Export(a) => export(&a.model, &a.format, &a.out, a.json),
        Command::Plot(a) => {
            let logs = decodex::plot::read_metrics(&a.metrics)?;
            decodex::plot::plot_losses(&logs, &a.title, &a.out)?;
            emit(
                a.json,
                json!({"plot": a.out, "points": logs.len()}),
                &format!("wrote {}", a.out.display()),
            )
        }
        Command::Bench(BenchCmd::Decode {
            model,
            prompt_tokens,
            new_tokens,
            reps,
            dequantize,
            beam,
            json,
        }) => super::generate::bench_decode(
            &model,
            prompt_tokens,
            new_tokens,
            reps,
            dequantize,
            beam,
            json,
        ),
        Command::Bench(BenchCmd::Train {
            config,
            iters,
            warmup,
            json,
        }) => {
            if iters == 0 {
                bail!("--iters must be at least 1");
            }
            let r = decodex::train::bench::bench_train(&config, iters, warmup)?;
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
            emit(json, serde_json::to_value(&r)?, &human)
        }
        Command::Logits(a) => logits(&a.model, &a.text, &a.out, a.adapter.as_deref(), a.json),
        Command::Eval(EvalCmd::Bleu(a)) => bleu(&a),
        Command::Eval(EvalCmd::Rouge(a)) => {
            let r = decodex::eval::rouge::evaluate_files(&a.hyp, &a.refs, !a.no_stemmer)?;
            let human = format!(
                "ROUGE-1 {:.2}  ROUGE-2 {:.2}  ROUGE-L {:.2}  ({} summaries, stemmer {})",
                r.rouge1,
                r.rouge2,
                r.rouge_l,
                r.pairs,
                if r.stemmer { "on" } else { "off" }
            );
            emit(a.json, serde_json::to_value(&r)?, &human)
        }
        Command::Eval(EvalCmd::Squad(a)) => {
            use decodex::eval::squad;
            let ds = squad::read_dataset(&a.data)?;
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
                    a.data.display()
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
            emit(a.json, serde_json::to_value(&r)?, &human)
        }
        Command::Eval(EvalCmd::Perplexity(a)) => {
            if a.batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let loaded = checkpoint::load_model(&a.model)?;
            let text = data::read_corpus(&a.text_file)?;
            let gpt = loaded.gpt(&Device::Cpu)?;
            let r = decodex::eval::perplexity(
                &gpt,
                &loaded.tokenizer,
                &text,
                &a.text_file,
                a.batch_size,
                &Device::Cpu,
            )?;
            let human = format!(
                "{}: {} tokens, loss {:.4} nats/token, perplexity {:.2}, {:.4} bits/byte",
                r.file, r.tokens, r.loss, r.perplexity, r.bits_per_byte
            );
            emit(a.json, serde_json::to_value(&r)?, &human)
        }
    }
}

fn bleu(a: &BleuArgs) -> Result<()> {
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
        a.json,
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
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{human}")?;
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

fn quickstart(a: super::QuickstartArgs) -> Result<()> {
    let out = a.out.clone();
    // Running quickstart again continues (or, when finished, just samples from) the same run.
    let resume = out.join(checkpoint::STATE_FILE).exists();
    let t = TrainArgs {
        config: a.config,
        out: a.out,
        max_iters: a.max_iters,
        resume,
        json: a.json,
    };
    train_cmd(&t)?;
    /// The sampling command's arguments, parsed like the command line.
    #[derive(clap::Parser)]
    struct Sample {
        #[command(flatten)]
        args: GenerateArgs,
    }
    let model = out.to_string_lossy().into_owned();
    // A char model starts from a newline, as nanoGPT's sample.py starts from token 0.
    let mut argv = vec!["generate", "--model", &model, "--prompt", "\n"];
    argv.extend([
        "--max-new-tokens",
        "500",
        "--temperature",
        "0.8",
        "--top-k",
        "200",
    ]);
    if a.json {
        argv.push("--json");
    }
    let g = <Sample as clap::Parser>::parse_from(argv).args;
    if !a.json {
        println!("\n--- sample (temperature 0.8, top-k 200) ---");
    }
    super::generate::generate_cmd(&g)
}

fn tokenizer(t: TokenizerCmd) -> Result<()> {
    match t {
        TokenizerCmd::Train {
            input,
            kind: k,
            vocab_size,
            out,
            json,
        } => {
            if k == Kind::Bpe && vocab_size.is_none() {
                bail!("--vocab-size is required with --kind bpe");
            }
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
            tokenizer,
            text,
            json,
        } => {
            let tok = Tokenizer::from_file(&tokenizer)?;
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

fn data_cmd(d: DataCmd) -> Result<()> {
    let DataCmd::Prepare {
        input,
        tokenizer,
        vocab_size,
        tokenizer_file,
        val_input,
        val_fraction,
        out,
        json,
    } = d;
    if tokenizer == Some(Kind::Bpe) && vocab_size.is_none() {
        bail!("--vocab-size is required with --tokenizer bpe");
    }
    let r = data::prepare(&PrepareOptions {
        input,
        val_input,
        tokenizer: kind(tokenizer.unwrap_or(Kind::Bpe)),
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

/// `decodex train` on a sequence-to-sequence config: one line per logged step (JSON or text),
/// then the summary.
fn train_seq2seq_cmd(a: &TrainArgs) -> Result<()> {
    if a.resume || a.max_iters.is_some() {
        bail!("--resume and --max-iters apply to language-model configs; a seq2seq config sets epochs and max_minutes");
    }
    let json = a.json;
    let summary = train::seq2seq::train_seq2seq(&a.config, &a.out, |log| {
        if json {
            println!("{}", serde_json::to_string(log).unwrap_or_default());
        } else if let Some(v) = log.val_loss {
            eprintln!(
                "epoch {} step {}: val loss {v:.4} (ppl {:.2}), {:.0} tok/s, {:.0} s",
                log.epoch,
                log.step,
                log.val_ppl.unwrap_or(f64::NAN),
                log.tokens_per_sec,
                log.elapsed_s
            );
        } else if let Some(l) = log.train_loss {
            eprintln!(
                "epoch {} step {}: loss {l:.4}, lr {:.2e}, {:.0} tok/s",
                log.epoch, log.step, log.lr, log.tokens_per_sec
            );
        }
    })?;
    let human = format!(
        "trained {:.2}M parameters for {} steps ({:.2} epochs) in {:.0} s: best val loss {:.4} (ppl {:.2}), {:.0} tok/s, peak RSS {:.0} MiB; model in {}",
        summary.params as f64 / 1e6,
        summary.steps,
        summary.epochs_done,
        summary.elapsed_s,
        summary.best_val_loss,
        summary.best_val_ppl,
        summary.tokens_per_sec,
        summary.peak_rss_mb,
        summary.out_dir.display()
    );
    emit(json, json!({"event": "done", "summary": summary}), &human)
}

/// `decodex translate`: one translation per input line, in order.
fn translate_cmd(a: &super::TranslateArgs) -> Result<()> {
    if a.beam == 0 {
        bail!("--beam must be at least 1 (1 is greedy search)");
    }
    if a.n_best == 0 || a.n_best > a.beam {
        bail!(
            "--n-best ({}) must be between 1 and --beam ({})",
            a.n_best,
            a.beam
        );
    }
    if a.sample && a.beam > 1 {
        bail!("--sample decodes with --beam 1; choose one search");
    }
    let (model, tok) = decodex::models::seq2seq::load_seq2seq(&a.model, &candle_core::Device::Cpu)?;
    let text =
        std::fs::read_to_string(&a.input).map_err(|e| decodex::error::Error::io(&a.input, e))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let opts = decodex::decode::translate::TranslateOptions {
        beam: a.beam,
        length_penalty: a.length_penalty,
        n_best: a.n_best,
        sampling: a.sample.then(|| decodex::decode::SamplingConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            ..Default::default()
        }),
        batch_size: a.batch_size,
    };
    let found = decodex::decode::translate::translate_n(&model, &tok, &a.input, &lines, &opts)?;
    let out: Vec<String> = found
        .iter()
        .map(|h| h.first().map(|h| h.text.clone()).unwrap_or_default())
        .collect();
    if let Some(png) = &a.attention_png {
        let i = a.attention_line.saturating_sub(1);
        let (Some(line), Some(hyp)) = (lines.get(i), out.get(i)) else {
            bail!(
                "{}: --attention-line {} is past the last line",
                a.input.display(),
                a.attention_line
            );
        };
        let src = tok.encode(line.trim())?;
        let mut tgt = tok.encode(hyp)?;
        tgt.extend(tok.eos_id());
        if src.is_empty() {
            bail!(
                "{}: line {} is empty; there is no attention to draw",
                a.input.display(),
                a.attention_line
            );
        }
        let weights = model.attention_map(&src, &tgt)?;
        let label = |ids: &[u32]| -> Result<Vec<String>> {
            ids.iter()
                .map(|&t| {
                    Ok(if Some(t) == tok.eos_id() {
                        "</s>".to_string()
                    } else {
                        tok.decode(&[t])?.trim().to_string()
                    })
                })
                .collect()
        };
        decodex::plot::attention_heatmap(&label(&src)?, &label(&tgt)?, &weights, hyp, png)?;
    }
    let mut stdout = std::io::stdout().lock();
    for (i, hyps) in found.iter().enumerate() {
        let best = hyps.first().map(|h| h.text.as_str()).unwrap_or_default();
        if a.json {
            let mut v = json!({ "text": best });
            if let Some(score) = hyps.first().and_then(|h| h.score) {
                v["score"] = json!(score);
            }
            if a.n_best > 1 {
                v["nbest"] = json!(hyps);
            }
            writeln!(stdout, "{v}")?;
        } else if a.n_best > 1 {
            // n-best: one "line ||| text ||| score" per hypothesis (0-based line), Moses style.
            for h in hyps {
                let score = h.score.map_or(String::new(), |s| s.to_string());
                writeln!(stdout, "{i} ||| {} ||| {score}", h.text)?;
            }
        } else {
            writeln!(stdout, "{best}")?;
        }
    }
    Ok(())
}

fn train_cmd(a: &TrainArgs) -> Result<train::TrainSummary> {
    if a.max_iters == Some(0) {
        bail!("--max-iters must be at least 1");
    }
    let _ = ctrlc::set_handler(|| {
        train::trainer::STOP.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let opts = TrainOptions {
        config: a.config.clone(),
        out: a.out.clone(),
        max_iters: a.max_iters,
        resume: a.resume,
    };
    let mut bar: Option<indicatif::ProgressBar> = None;
    let mut write_err: Option<std::io::Error> = None;
    let json = a.json;
    let summary = train::train(&opts, |ev| match ev {
        Event::Start {
            start,
            end,
            params,
            backend,
            data_dir,
        } => {
            if json {
                let line = json!({"event": "start", "start_step": start, "end_step": end, "params": params, "backend": backend, "data": data_dir});
                if let Err(e) = writeln!(std::io::stdout(), "{line}") {
                    write_err.get_or_insert(e);
                }
            } else {
                if start >= end {
                    eprintln!("the run is already at step {start} of {end}; nothing to train");
                } else {
                    eprintln!(
                        "training {:.2}M parameters ({backend} backend), steps {}..{end}, data in {}",
                        *params as f64 / 1e6,
                        start + 1,
                        data_dir.display()
                    );
                }
                let pb = indicatif::ProgressBar::new(*end as u64);
                pb.set_position(*start as u64);
                pb.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                    )
                    .expect("valid template"),
                );
                bar = Some(pb);
            }
        }
        Event::Step(log) => {
            if json {
                if let Err(e) =
                    writeln!(std::io::stdout(), "{}", serde_json::to_string(log).unwrap())
                {
                    write_err.get_or_insert(e);
                }
            } else if let Some(pb) = &bar {
                pb.set_position(log.step as u64);
                pb.set_message(format!(
                    "loss {:.4}, {:.0} tok/s, lr {:.2e}",
                    log.train_loss, log.tokens_per_sec, log.lr
                ));
                if let Some(v) = log.val_loss {
                    pb.println(format!(
                        "step {:>6}: train loss {:.4}, val loss {:.4}",
                        log.step, log.train_loss, v
                    ));
                }
            }
        }
        Event::Checkpoint { .. } => {}
    })?;
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let human = format!(
        "step {}: val loss {}, checkpoint in {} ({:.0} s){}",
        summary.step,
        summary
            .final_val_loss
            .map_or("-".into(), |v| format!("{v:.4}")),
        summary.out.display(),
        summary.elapsed_s,
        if summary.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    if json {
        emit(true, json!({"event": "done", "summary": summary}), "")?;
    } else {
        eprintln!("{human}");
    }
    Ok(summary)
}

fn export(model: &Path, format: &str, out: &Path, json: bool) -> Result<()> {
    if format != "hf" {
        bail!("--format {format:?} is not supported; use \"hf\"");
    }
    check_out_is_not(out, model)?;
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
    super::generate::check_context("tokens of --text", ids.len(), 0, context)
}

fn logits(model: &Path, text: &str, out: &Path, adapter: Option<&Path>, json: bool) -> Result<()> {
    use decodex::models::pretrained::{self, Network};
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

fn finetune_cmd(a: &super::FinetuneArgs) -> Result<()> {
    use decodex::models::llama::lora::{LoraSpec, Proj};
    use decodex::train::finetune::run::{finetune, FinetuneOptions};
    let lora = match a.method.as_str() {
        "lora" => {
            let targets = a
                .targets
                .split(',')
                .map(|t| {
                    Proj::parse(t).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown LoRA target {t:?} (choose from q,k,v,o,gate,up,down)"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let spec = LoraSpec {
                rank: a.rank,
                alpha: a.alpha,
                dropout: a.dropout,
                targets,
            };
            spec.validate()?;
            Some(spec)
        }
        "full" => None,
        m => bail!("--method {m:?}: choose lora or full"),
    };
    let opts = FinetuneOptions {
        base: a.base.clone(),
        data: a.data.clone(),
        eval: a.eval.clone(),
        task: a.task,
        lr: a.lr.unwrap_or(if lora.is_some() { 2e-4 } else { 2e-5 }),
        lora,
        out: a.out.clone(),
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup_steps,
        batch_tokens: a.batch_tokens,
        max_steps: a.max_steps,
        time_limit_min: a.time_limit_min,
        pause_at: a.pause_at,
        max_len: a.max_len,
        overlong: a.overlong,
        train_examples: a.train_examples,
        eval_examples: a.eval_examples,
        eval_every: a.eval_every,
        save_every: a.save_every,
        grad_clip: a.grad_clip,
        seed: a.seed,
        resume: a.resume,
    };
    let json = a.json;
    let bar = (!json).then(|| {
        let b = indicatif::ProgressBar::new(if a.max_steps < 1_000_000 {
            a.max_steps as u64
        } else {
            0
        });
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} step {pos} {elapsed_precise} {msg}")
                .expect("template"),
        );
        b
    });
    finetune(&opts, |ev| {
        if json {
            println!("{ev}");
            return;
        }
        let bar = bar.as_ref().expect("human output");
        match ev["event"].as_str() {
            Some("start") => bar.println(format!(
                "fine-tuning {} parameters ({}), {} train / {} eval examples; data: {}",
                ev["trainable_params"],
                ev["method"].as_str().unwrap_or(""),
                ev["train_examples"],
                ev["eval_examples"],
                ev["train"]
            )),
            Some("step") => {
                bar.set_position(ev["step"].as_u64().unwrap_or(0));
                bar.set_message(format!(
                    "loss {:.4} lr {:.2e} {:.0} tok/s",
                    ev["train_loss"].as_f64().unwrap_or(f64::NAN),
                    ev["lr"].as_f64().unwrap_or(0.0),
                    ev["tokens_per_sec"].as_f64().unwrap_or(0.0)
                ));
            }
            Some("eval") => bar.println(format!(
                "step {}: eval loss {:.4}",
                ev["step"],
                ev["val_loss"].as_f64().unwrap_or(f64::NAN)
            )),
            Some("done") => {
                bar.finish_and_clear();
                println!("{ev}");
            }
            _ => {}
        }
    })?;
    Ok(())
}
