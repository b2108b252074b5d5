//! Flags several subcommands share: the model to load ([`ModelArgs`]) and the decoding options
//! ([`DecodingArgs`], spelled as Hugging Face's `generate` spells them). Each decoding command
//! states which of the decoding flags it takes and their defaults in a [`Profile`]; the others
//! are hidden from its help and refused before any model loads.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Arg, Args, ValueEnum};

// The model to load: `--model`, `--adapter`, `--dequantize`. (No doc comment: on a flattened
// struct it would become the command's description.)
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model: a GGUF file (Llama architecture), a Hugging Face Llama or GPT-2 folder, or a
    /// decodex checkpoint folder.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// A LoRA adapter folder (PEFT layout, as `decodex finetune` writes) merged into a
    /// Llama-family model at load (the weights are then f32).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Run a GGUF model's matrices dequantized to f32 instead of quantized (always so with
    /// --adapter).
    #[arg(long)]
    pub dequantize: bool,
    /// A quantized GGUF model's attention: llama.cpp's flash attention (`on`, its default on a
    /// CPU: tiled prompts) or its attention without (`off`); each is reproduced bit for bit
    /// (docs/decoding.md).
    #[arg(long, value_enum, default_value = "on", value_name = "on|off")]
    pub flash_attn: OnOff,
}

/// A switch spelled as llama.cpp spells its own (`-fa on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

// `--force`, taken by every command that writes an output. (No doc comment: on a flattened
// struct it would become the command's description.)
#[derive(Args, Debug, Clone, Copy, Default)]
pub struct Force {
    /// Overwrite the output if it exists (without it, an existing file or non-empty folder is
    /// refused and left as it is).
    #[arg(long)]
    pub force: bool,
}

impl Force {
    /// Refuses an existing output `path` (a file, or a folder that is not empty) unless
    /// --force; `flag` names the option that gave it.
    pub fn check(self, path: &Path, flag: &str) -> Result<()> {
        if !self.force && occupied(path) {
            bail!(
                "{}: already exists; pass --force to overwrite it or choose another {flag}",
                path.display()
            );
        }
        Ok(())
    }

    /// [`Force::check`] for a run that `--resume` can continue: nothing to check when resuming.
    pub fn check_run(self, out: &Path, resume: bool) -> Result<()> {
        if !resume && !self.force && occupied(out) {
            bail!(
                "{}: already exists; pass --resume to continue the run there, --force to start over, or choose another --out",
                out.display()
            );
        }
        Ok(())
    }
}

/// Whether `path` is a file, or a folder with anything in it.
fn occupied(path: &Path) -> bool {
    match std::fs::read_dir(path) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => path.exists(),
    }
}

// The prompt: `--prompt TEXT` or `--prompt-file PATH`, at most one of them. (No doc comment:
// on a flattened struct it would become the command's description.)
#[derive(Args, Debug, Clone, Default)]
pub struct PromptArgs {
    /// The prompt, used as is unless --chat.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this UTF-8 file (`-`: standard input), for prompts longer than one
    /// command-line argument may be (128 KiB); one final newline is dropped.
    #[arg(long, value_name = "PATH")]
    pub prompt_file: Option<PathBuf>,
}

impl PromptArgs {
    /// Whether a prompt was given (by either flag).
    pub fn given(&self) -> bool {
        self.prompt.is_some() || self.prompt_file.is_some()
    }

    /// The prompt of --prompt, or the text of --prompt-file; `None` when neither was given.
    pub fn read(&self) -> Result<Option<String>> {
        let Some(path) = &self.prompt_file else {
            return Ok(self.prompt.clone());
        };
        let bytes = if path.as_os_str() == "-" {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                .map_err(|e| anyhow::anyhow!("--prompt-file -: reading standard input: {e}"))?;
            b
        } else {
            std::fs::read(path).map_err(|e| decodex::error::Error::io(path, e))?
        };
        let mut text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!(
                "{}: the prompt is not valid UTF-8 (first bad byte at offset {})",
                path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(Some(text))
    }
}

/// How tokens are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// The most likely token at each step.
    Greedy,
    /// A token drawn from the processed distribution (--temperature, --top-k, --top-p, ...).
    Sample,
    /// Beam search over --num-beams hypotheses.
    Beam,
}

impl StrategyArg {
    pub fn name(self) -> &'static str {
        match self {
            StrategyArg::Greedy => "greedy",
            StrategyArg::Sample => "sample",
            StrategyArg::Beam => "beam",
        }
    }

    /// The engine's strategy: `None` for beam search.
    pub fn sampling(self) -> Option<decodex::decode::Strategy> {
        match self {
            StrategyArg::Greedy => Some(decodex::decode::Strategy::Greedy),
            StrategyArg::Sample => Some(decodex::decode::Strategy::Sample),
            StrategyArg::Beam => None,
        }
    }
}

/// When beam search stops (Hugging Face's `early_stopping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EarlyStoppingArg {
    /// As soon as --num-beams hypotheses have finished.
    True,
    /// When the best candidate, at its current length, cannot beat the worst finished one
    /// (Hugging Face's heuristic).
    False,
    /// When no hypothesis can become better (the exact criterion).
    Never,
}

impl From<EarlyStoppingArg> for decodex::decode::EarlyStopping {
    fn from(e: EarlyStoppingArg) -> Self {
        match e {
            EarlyStoppingArg::True => Self::True,
            EarlyStoppingArg::False => Self::False,
            EarlyStoppingArg::Never => Self::Never,
        }
    }
}

/// The help heading of the decoding flags; [`adapt`] recognizes them by it.
const HEADING: &str = "Decoding options";

// Decoding options, named as in Hugging Face's `GenerationConfig`. Every value is optional
// here: a command's `Profile` gives the defaults of the flags it takes.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = HEADING)]
pub struct DecodingArgs {
    /// Tokens generated at most after the prompt.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Tokens generated at least before an end-of-sequence token may end the text.
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// How tokens are chosen.
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Same as --strategy greedy.
    #[arg(long)]
    pub greedy: bool,
    /// Sample each token instead of taking the most likely one (--strategy sample).
    #[arg(long, alias = "sample")]
    pub do_sample: bool,
    /// Sampling temperature (generate, chat: 0 decodes greedily).
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Sampling: keep the k most likely tokens.
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sampling: keep the smallest set of tokens whose probability reaches p (nucleus).
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Sampling: drop tokens less likely than this fraction of the most likely one.
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    /// Sampling: locally typical sampling with this mass (1 = off).
    #[arg(long, value_name = "P")]
    pub typical_p: Option<f32>,
    /// Divide the logit of every token already in the context by this (CTRL's penalty; 1 = off).
    #[arg(long, value_name = "X")]
    pub repetition_penalty: Option<f32>,
    /// Subtract this from the logit of every token already generated (0 = off).
    #[arg(long, value_name = "X")]
    pub presence_penalty: Option<f32>,
    /// Subtract this times its count from the logit of every token already generated (0 = off).
    #[arg(long, value_name = "X")]
    pub frequency_penalty: Option<f32>,
    /// Never repeat an n-gram of this size (0 = off).
    #[arg(long, value_name = "N")]
    pub no_repeat_ngram_size: Option<usize>,
    /// Token ids never generated (repeatable).
    #[arg(long, value_name = "ID", visible_alias = "ban")]
    pub suppress_tokens: Vec<u32>,
    /// Stop when this string is generated (repeatable); the text is cut before it. The escapes
    /// \n, \t, \\ and \" stand for a newline, a tab, a backslash and a quote, so that
    /// `--stop "\n\n"` stops at a blank line.
    #[arg(long, value_name = "TEXT", visible_alias = "stop", value_parser = unescape)]
    pub stop_strings: Vec<String>,
    /// Random seed of sampling (return sequence or line i uses seed + i).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Beams of beam search (translate: 1 is greedy search).
    #[arg(long, value_name = "N", alias = "beam")]
    pub num_beams: Option<usize>,
    /// Sequences returned per input (beam search: the best ones, best first; sampling: one per
    /// seed).
    #[arg(long, value_name = "N", alias = "n-best")]
    pub num_return_sequences: Option<usize>,
    /// Beam scores are log-probability / length^this.
    #[arg(long, value_name = "X")]
    pub length_penalty: Option<f64>,
    /// When beam search stops.
    #[arg(long, value_enum)]
    pub early_stopping: Option<EarlyStoppingArg>,
    /// Diverse beam search: groups of beams penalized for repeating other groups' tokens.
    #[arg(long, value_name = "N")]
    pub num_beam_groups: Option<usize>,
    /// Diverse beam search: the penalty per token another group already chose at a step.
    #[arg(long, value_name = "X")]
    pub diversity_penalty: Option<f32>,
}

/// A flag value with the escapes \n, \t, \\ and \" turned into the characters they stand for
/// (the shell passes `"\n"` as a backslash and an n). Any other backslash is refused.
pub fn unescape(s: &str) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('t') => '\t',
            Some('\\') => '\\',
            Some('"') => '"',
            Some(other) => {
                return Err(format!(
                    "unknown escape \\{other} (known: \\n, \\t, \\\\, \\\"; write \\\\ for a backslash)"
                ))
            }
            None => return Err("a lone backslash at the end (write \\\\ for a backslash)".into()),
        });
    }
    Ok(out)
}

/// The decoding flags one command takes (by id, the field name) with their default values.
pub type Profile = &'static [(&'static str, Option<&'static str>)];

pub const GENERATE: Profile = &[
    ("max_new_tokens", Some("200")),
    ("min_new_tokens", Some("0")),
    ("strategy", Some("sample")),
    ("greedy", None),
    ("do_sample", None),
    ("temperature", Some("0.8")),
    ("top_k", None),
    ("top_p", None),
    ("min_p", None),
    ("typical_p", None),
    ("repetition_penalty", Some("1.0")),
    ("presence_penalty", Some("0.0")),
    ("frequency_penalty", Some("0.0")),
    ("no_repeat_ngram_size", Some("0")),
    ("suppress_tokens", None),
    ("stop_strings", None),
    ("seed", Some("1337")),
    ("num_beams", Some("4")),
    ("num_return_sequences", Some("1")),
    ("length_penalty", Some("1.0")),
    ("early_stopping", Some("false")),
    ("num_beam_groups", Some("1")),
    ("diversity_penalty", Some("0.0")),
];

pub const CHAT: Profile = &[
    ("max_new_tokens", Some("256")),
    ("temperature", Some("0.7")),
    ("top_p", Some("0.9")),
    ("repetition_penalty", Some("1.1")),
    ("seed", Some("1337")),
];

pub const TRANSLATE: Profile = &[
    ("do_sample", None),
    ("temperature", Some("1.0")),
    ("top_k", Some("0")),
    ("top_p", Some("1.0")),
    ("seed", Some("0")),
    ("num_beams", Some("1")),
    ("num_return_sequences", Some("1")),
    ("length_penalty", Some("1.0")),
];

/// summarize and answer.
pub const TASK: Profile = &[
    ("max_new_tokens", Some("96")),
    ("strategy", Some("greedy")),
    ("no_repeat_ngram_size", Some("0")),
    ("num_beams", Some("4")),
    ("length_penalty", Some("1.0")),
];

/// Applies `profile` to one argument of a command: a decoding flag it takes gets its default,
/// one it does not take is hidden (and refused by [`DecodingArgs::check_profile`]).
pub fn adapt(a: Arg, profile: Profile) -> Arg {
    if a.get_help_heading() != Some(HEADING) {
        return a;
    }
    match profile.iter().find(|(id, _)| a.get_id() == *id) {
        Some((_, Some(default))) => a.default_value(*default),
        Some((_, None)) => a,
        None => a.hide(true),
    }
}

pub fn for_generate(a: Arg) -> Arg {
    adapt(a, GENERATE)
}
pub fn for_chat(a: Arg) -> Arg {
    adapt(a, CHAT)
}
pub fn for_translate(a: Arg) -> Arg {
    adapt(a, TRANSLATE)
}
pub fn for_task(a: Arg) -> Arg {
    adapt(a, TASK)
}

/// `--flag` of a field id.
pub fn flag(id: &str) -> String {
    format!("--{}", id.replace('_', "-"))
}

impl DecodingArgs {
    /// The ids of the flags that hold a value (given, or defaulted by the command's profile).
    fn set(&self) -> Vec<&'static str> {
        let d = self;
        let set = [
            ("max_new_tokens", d.max_new_tokens.is_some()),
            ("min_new_tokens", d.min_new_tokens.is_some()),
            ("strategy", d.strategy.is_some()),
            ("greedy", d.greedy),
            ("do_sample", d.do_sample),
            ("temperature", d.temperature.is_some()),
            ("top_k", d.top_k.is_some()),
            ("top_p", d.top_p.is_some()),
            ("min_p", d.min_p.is_some()),
            ("typical_p", d.typical_p.is_some()),
            ("repetition_penalty", d.repetition_penalty.is_some()),
            ("presence_penalty", d.presence_penalty.is_some()),
            ("frequency_penalty", d.frequency_penalty.is_some()),
            ("no_repeat_ngram_size", d.no_repeat_ngram_size.is_some()),
            ("suppress_tokens", !d.suppress_tokens.is_empty()),
            ("stop_strings", !d.stop_strings.is_empty()),
            ("seed", d.seed.is_some()),
            ("num_beams", d.num_beams.is_some()),
            ("num_return_sequences", d.num_return_sequences.is_some()),
            ("length_penalty", d.length_penalty.is_some()),
            ("early_stopping", d.early_stopping.is_some()),
            ("num_beam_groups", d.num_beam_groups.is_some()),
            ("diversity_penalty", d.diversity_penalty.is_some()),
        ];
        set.iter().filter(|(_, s)| *s).map(|(id, _)| *id).collect()
    }

    /// Refuses a decoding flag that `command` does not take (those are hidden from its help).
    pub fn check_profile(&self, command: &str, profile: Profile) -> Result<()> {
        for id in self.set() {
            if !profile.iter().any(|(p, _)| *p == id) {
                bail!("{} does not apply to `decodex {command}`", flag(id));
            }
        }
        Ok(())
    }
}

/// A value the command's profile defaults: present once clap has parsed the flags.
pub fn given<T>(v: Option<T>, id: &str) -> T {
    v.unwrap_or_else(|| panic!("{} has a default in this command's profile", flag(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    /// Every decoding flag is listed by `set` (so `check_profile` sees it) and every profile
    /// names only decoding flags.
    #[test]
    fn unescape_turns_escapes_into_characters() {
        assert_eq!(unescape(r"\n\n").unwrap(), "\n\n");
        assert_eq!(unescape(r#"a\tb\\c\"d"#).unwrap(), "a\tb\\c\"d");
        assert_eq!(unescape("plain ü").unwrap(), "plain ü");
        assert!(unescape(r"\q").unwrap_err().contains("unknown escape \\q"));
        assert!(unescape("end\\").unwrap_err().contains("lone backslash"));
    }

    #[test]
    fn profiles_and_set_cover_the_decoding_flags() {
        let cmd = DecodingArgs::augment_args(Command::new("x"));
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        let all = DecodingArgs {
            max_new_tokens: Some(1),
            min_new_tokens: Some(1),
            strategy: Some(StrategyArg::Beam),
            greedy: true,
            do_sample: true,
            temperature: Some(1.0),
            top_k: Some(1),
            top_p: Some(1.0),
            min_p: Some(0.0),
            typical_p: Some(1.0),
            repetition_penalty: Some(1.0),
            presence_penalty: Some(0.0),
            frequency_penalty: Some(0.0),
            no_repeat_ngram_size: Some(0),
            suppress_tokens: vec![1],
            stop_strings: vec!["x".into()],
            seed: Some(0),
            num_beams: Some(1),
            num_return_sequences: Some(1),
            length_penalty: Some(1.0),
            early_stopping: Some(EarlyStoppingArg::True),
            num_beam_groups: Some(1),
            diversity_penalty: Some(0.0),
        };
        assert_eq!(all.set(), ids);
        for p in [GENERATE, CHAT, TRANSLATE, TASK] {
            for (id, _) in p {
                assert!(ids.iter().any(|i| i == id), "{id}");
            }
        }
        assert!(all.check_profile("generate", GENERATE).is_ok());
        let e = all.check_profile("chat", CHAT).unwrap_err().to_string();
        assert!(e.contains("does not apply to `decodex chat`"), "{e}");
    }
}
