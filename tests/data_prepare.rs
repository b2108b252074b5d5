//! Data preparation on the real corpora from the data folder (`DECODEX_DATA`): nanoGPT's token
//! counts for Tiny Shakespeare, and a lossless BPE round trip on Gutenberg.

use std::path::Path;

use decodex::data::{prepare, Meta, PrepareOptions, TokenFile, TOKENIZER_FILE, VAL_FILE};
use decodex::tokenizer::{Tokenizer, TokenizerKind};
use decodex::train::config::resolve_data_path;

/// A dataset under the data folder; a missing one fails the test, naming the folder to set.
fn data(rel: &str) -> std::path::PathBuf {
    let p = resolve_data_path(Path::new(rel));
    assert!(
        p.exists(),
        "{}: missing (set DECODEX_DATA to the data folder)",
        p.display()
    );
    p
}

/// nanoGPT's `data/shakespeare_char/prepare.py` prints: vocab size 65, train has 1,003,854
/// tokens, val has 111,540 tokens (the first 90% of the characters, then the rest).
#[test]
fn tiny_shakespeare_char_counts_match_nanogpt() {
    let input = data("lm/tinyshakespeare/input.txt");
    let out = tempfile::tempdir().unwrap();
    let report = prepare(&PrepareOptions::new(
        &input,
        TokenizerKind::Char,
        out.path(),
    ))
    .unwrap();
    println!("{report:?}");
    assert_eq!(report.vocab_size, 65);
    assert_eq!(report.train_tokens, 1_003_854);
    assert_eq!(report.val_tokens, 111_540);
    // nanoGPT's stoi: the sorted characters, so '\n' is 0, ' ' 1 and '!' 2.
    let tok = Tokenizer::from_file(&out.path().join(TOKENIZER_FILE)).unwrap();
    assert_eq!(tok.encode("\n !").unwrap(), vec![0, 1, 2]);
    let text = std::fs::read_to_string(&input).unwrap();
    assert_eq!(tok.encode(&text).unwrap().len(), 1_115_394);
}

/// Byte-level BPE with 8,192 entries trained on the 25 MB Gutenberg train set: the validation
/// file's tokens decode back to its exact text.
#[test]
fn gutenberg_bpe_8192_round_trips_the_validation_text() {
    let base = data("lm/gutenberg");
    let out = tempfile::tempdir().unwrap();
    let mut opts = PrepareOptions::new(base.join("train.txt.gz"), TokenizerKind::Bpe, out.path());
    opts.val_input = Some(base.join("valid.txt"));
    opts.vocab_size = Some(8192);
    let report = prepare(&opts).unwrap();
    println!("{report:?}");
    assert_eq!(report.vocab_size, 8192);
    let meta = Meta::load(out.path()).unwrap();
    let val = TokenFile::open(&out.path().join(VAL_FILE), &meta.dtype).unwrap();
    assert_eq!(val.len(), report.val_tokens);
    let ids: Vec<u32> = (0..val.len()).map(|i| val.get(i)).collect();
    let tok = Tokenizer::from_file(&out.path().join(TOKENIZER_FILE)).unwrap();
    let text = std::fs::read_to_string(base.join("valid.txt")).unwrap();
    assert!(
        tok.decode(&ids).unwrap() == text,
        "the validation tokens do not decode to valid.txt"
    );
    // Compression: about 4 bytes of English per token at this vocabulary size.
    let bytes_per_token = text.len() as f64 / ids.len() as f64;
    println!("{bytes_per_token:.2} bytes per token");
    assert!(
        bytes_per_token > 3.0,
        "{bytes_per_token:.2} bytes per token"
    );
}
