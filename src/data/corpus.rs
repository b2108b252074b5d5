//! Reading a text corpus: plain or gzip-compressed UTF-8, with the SHA-256 of the file as stored.

use std::io::Read;
use std::path::Path;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A corpus in memory.
pub(super) struct Corpus {
    pub text: String,
    /// Hex SHA-256 of the file's bytes on disk (compressed, for a .gz), as `sha256sum` prints it.
    pub sha256: String,
}

/// Reads `path`, decompressing it when it starts with the gzip magic bytes (`.txt.gz`). Errors:
/// those of [`decode_text`], and an empty text (`EmptyCorpus`).
pub(super) fn read_corpus(path: &Path) -> Result<Corpus> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let sha256 = Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = decode_text(path, raw)?;
    if text.is_empty() {
        return Err(Error::EmptyCorpus {
            path: path.to_path_buf(),
        });
    }
    Ok(Corpus { text, sha256 })
}

/// The text of `raw`, the bytes of `path`: gunzipped when they start with the gzip magic bytes,
/// then checked as UTF-8. Errors: corrupt gzip (`Data`), invalid UTF-8 (`NotUtf8`, with the
/// offset into the decompressed text).
pub(super) fn decode_text(path: &Path, raw: Vec<u8>) -> Result<String> {
    // 0x1f 0x8b cannot start UTF-8 text (0x8b is a continuation byte), so sniffing is unambiguous.
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 3);
        MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Data {
                path: path.to_path_buf(),
                msg: format!("not a valid gzip file ({e}); decompress it or download it again"),
            })?;
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| Error::NotUtf8 {
        path: path.to_path_buf(),
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Splits `text` at char index `floor(n_chars * (1 - val_fraction))`, nanoGPT's
/// `data[:int(n*0.9)]`, `data[int(n*0.9):]` on a Python `str`.
pub(super) fn split_at_fraction(text: &str, val_fraction: f64) -> (&str, &str) {
    let n = text.chars().count();
    let k = (n as f64 * (1.0 - val_fraction)) as usize;
    let at = text.char_indices().nth(k).map_or(text.len(), |(i, _)| i);
    text.split_at(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_at_a_char_boundary_like_nanogpt() {
        // 10 chars, 3 of them multi-byte: int(10 * 0.9) = 9 chars of train.
        let (train, val) = split_at_fraction("aé✓bcdefgh", 0.1);
        assert_eq!((train, val), ("aé✓bcdefg", "h"));
        // Tiny Shakespeare: 1115394 chars -> 1003854 train chars (nanoGPT's printed count).
        assert_eq!((1115394.0 * (1.0 - 0.1)) as usize, 1003854);
    }

    #[test]
    fn gzip_is_decompressed_and_hashed_as_stored() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all("hello\nwörld\n".as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let corpus = read_corpus(&path).unwrap();
        assert_eq!(corpus.text, "hello\nwörld\n");
        let expected: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(corpus.sha256, expected);
    }

    #[test]
    fn corrupt_gzip_is_a_data_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt.gz");
        std::fs::write(&path, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
        let err = read_corpus(&path).err().unwrap();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        assert!(err.to_string().contains("c.txt.gz"), "{err}");
    }
}
