//! Splits the Gutenberg corpus of ../shared/data into sentences, for the vector index benchmark
//! (scripts/bench_index.sh): paragraphs (blank-line separated) are joined into one line, then cut
//! after `.`, `!` or `?` (and any closing quotes or brackets) where a space and an upper-case
//! letter or opening quote follow, unless the word before the stop is a common abbreviation.
//! Sentences of 4 to 60 words are kept, each text once, in corpus order.
//!
//!     cargo run --release --example gutenberg_sentences -- FILE[.gz] OUT.jsonl N [ID_PREFIX]
//!
//! writes the first N sentences of FILE as JSON lines {"_id": "PREFIX<i>", "text": ...}.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};

const ABBREVIATIONS: &[&str] = &[
    "Mr", "Mrs", "Ms", "Dr", "St", "Sr", "Jr", "Mt", "Messrs", "Mme", "Mlle", "Capt", "Col", "Gen",
    "Lieut", "Rev", "Prof", "Hon", "No", "vol", "ch", "viz", "cf", "i.e", "e.g", "etc",
];

fn closing(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '»')
}

fn opening(c: char) -> bool {
    c.is_uppercase() || matches!(c, '"' | '\'' | '(' | '[' | '“' | '‘' | '«')
}

/// The sentences of one paragraph (whitespace already collapsed).
fn split(par: &str) -> Vec<&str> {
    let chars: Vec<(usize, char)> = par.char_indices().collect();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < chars.len() {
        let (pos, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && (closing(chars[j].1) || matches!(chars[j].1, '.' | '!' | '?'))
            {
                j += 1;
            }
            let next_is_start = j + 1 < chars.len() && chars[j].1 == ' ' && opening(chars[j + 1].1);
            let word = par[start..pos].rsplit(' ').next().unwrap_or("");
            let abbrev = c == '.'
                && (ABBREVIATIONS.contains(&word)
                    || (word.chars().count() == 1 && word.chars().all(char::is_uppercase)));
            if next_is_start && !abbrev {
                let end = chars[j].0;
                out.push(par[start..end].trim());
                start = chars[j + 1].0;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push(par[start..].trim());
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: gutenberg_sentences FILE[.gz] OUT.jsonl N [ID_PREFIX]");
        std::process::exit(2);
    }
    let (input, out_path) = (&args[0], &args[1]);
    let n: usize = args[2].parse().expect("N is a number");
    let prefix = args.get(3).map_or("g", String::as_str);
    let file = std::fs::File::open(input).unwrap_or_else(|e| {
        eprintln!("error: {input}: {e}");
        std::process::exit(2)
    });
    let reader: Box<dyn Read> = if input.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(out_path).expect("output"));
    let mut seen = HashSet::new();
    let mut par = String::new();
    let mut written = 0;
    let mut flush = |par: &mut String, written: &mut usize| {
        let text = par.split_whitespace().collect::<Vec<_>>().join(" ");
        par.clear();
        for s in split(&text) {
            let words = s.split(' ').count();
            if *written < n && (4..=60).contains(&words) && seen.insert(s.to_string()) {
                let line = serde_json::json!({"_id": format!("{prefix}{written}"), "text": s});
                writeln!(out, "{line}").expect("write");
                *written += 1;
            }
        }
    };
    for line in BufReader::new(reader).lines() {
        let line = line.expect("UTF-8 text");
        if line.trim().is_empty() {
            flush(&mut par, &mut written);
            if written >= n {
                break;
            }
        } else {
            par.push_str(&line);
            par.push(' ');
        }
    }
    flush(&mut par, &mut written);
    eprintln!("{written} sentences written to {out_path}");
}
