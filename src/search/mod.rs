//! Semantic search: text embeddings ([`embed`]), an on-disk vector index with exact and HNSW
//! search ([`index`]), and the streaming pieces both share: a reader of text records and a
//! writer of embedding files (.npy or safetensors).

pub mod embed;
pub mod index;
pub mod query;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::eval::bleu::is_py_space;
pub use embed::{load_embedder, Embedder, ModelInfo, SentenceEncoder};

/// One text to embed, with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub text: String,
    /// The record's line in its file (1-based).
    pub line: usize,
}

/// Reads records from a text file (one text per line, ids "0", "1", … by line) or JSON lines
/// (`.jsonl`/`.json`, optionally `.gz`; gzip is recognised by its content): `text`, an optional `title` (the text is then
/// `(title + " " + text).strip()`, else `text.strip()`, as BEIR builds document texts), and an
/// id from `_id` or `id` (else the record's number). Blank JSONL lines are skipped. Records stream: nothing is
/// held but the current line.
pub struct RecordReader {
    path: PathBuf,
    lines: Box<dyn BufRead + Send>,
    jsonl: bool,
    line_no: usize,
    count: usize,
    buf: String,
}

/// Opens `path` for reading records (see [`RecordReader`]).
pub fn open_records(path: &Path) -> Result<RecordReader> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let name = path.to_string_lossy().to_lowercase();
    let stem = name.trim_end_matches(".gz");
    let jsonl = stem.ends_with(".jsonl") || stem.ends_with(".json");
    let mut raw = BufReader::new(file);
    // gzip by its magic bytes, as `data::read_text` decides (they cannot start UTF-8 text).
    let gz = raw
        .fill_buf()
        .map_err(|e| Error::io(path, e))?
        .starts_with(&[0x1f, 0x8b]);
    let lines: Box<dyn BufRead + Send> = if gz {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(raw)))
    } else {
        Box::new(raw)
    };
    Ok(RecordReader {
        path: path.to_path_buf(),
        lines,
        jsonl,
        line_no: 0,
        count: 0,
        buf: String::new(),
    })
}

impl RecordReader {
    fn data_error(&self, msg: String) -> Error {
        Error::Data {
            path: self.path.clone(),
            msg: format!("line {}: {msg}", self.line_no),
        }
    }

    fn parse(&self, line: &str) -> Result<Record> {
        if !self.jsonl {
            return Ok(Record {
                id: self.count.to_string(),
                text: line.to_string(),
                line: self.line_no,
            });
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| self.data_error(format!("not a JSON object: {e}")))?;
        let text = match v.get("text") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(self.data_error("\"text\" is not a string".into())),
            None => return Err(self.data_error("no \"text\" field".into())),
        };
        // BEIR's document text: `(title + " " + text).strip()`, or `text.strip()`.
        let text = match v.get("title") {
            Some(Value::String(t)) => format!("{t} {text}"),
            Some(Value::Null) | None => text.to_string(),
            Some(_) => return Err(self.data_error("\"title\" is not a string".into())),
        };
        let text = text.trim_matches(is_py_space).to_string();
        let id = match v.get("_id").or_else(|| v.get("id")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(self.data_error("the id is not a string or number".into())),
            None => self.count.to_string(),
        };
        Ok(Record {
            id,
            text,
            line: self.line_no,
        })
    }

    /// Up to `n` more records; empty at the end of the file.
    pub fn next_chunk(&mut self, n: usize) -> Result<Vec<Record>> {
        let mut out = Vec::with_capacity(n.min(1 << 16));
        while out.len() < n {
            self.buf.clear();
            let read = self
                .lines
                .read_line(&mut self.buf)
                .map_err(|e| Error::io(&self.path, e))?;
            if read == 0 {
                break;
            }
            self.line_no += 1;
            let line = self.buf.strip_suffix('\n').unwrap_or(&self.buf);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if self.jsonl && line.trim().is_empty() {
                continue;
            }
            let rec = self.parse(line)?;
            self.count += 1;
            out.push(rec);
        }
        Ok(out)
    }

    /// Every remaining record.
    pub fn read_all(mut self) -> Result<Vec<Record>> {
        let mut all = Vec::new();
        loop {
            let chunk = self.next_chunk(1 << 16)?;
            if chunk.is_empty() {
                return Ok(all);
            }
            all.extend(chunk);
        }
    }
}

/// Number of records in a file, read once without keeping them.
pub fn count_records(path: &Path) -> Result<usize> {
    let mut r = open_records(path)?;
    let mut n = 0;
    loop {
        let chunk = r.next_chunk(1 << 14)?;
        if chunk.is_empty() {
            return Ok(n);
        }
        n += chunk.len();
    }
}

/// The format of an embeddings file, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VectorFormat {
    /// NumPy .npy, float32 (rows, dim), C order.
    Npy,
    /// safetensors with one F32 tensor `embeddings` (rows, dim) and the ids and model in the
    /// metadata.
    Safetensors,
}

impl VectorFormat {
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => Ok(Self::Npy),
            Some("safetensors") => Ok(Self::Safetensors),
            _ => Err(Error::Invalid(format!(
                "{}: the output must end in .npy or .safetensors",
                path.display()
            ))),
        }
    }
}

/// Writes (rows, dim) f32 vectors to a file whose row count is known up front, row blocks at a
/// time, into a temporary file that `finish` renames into place.
pub struct VectorWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    rows: usize,
    dim: usize,
    written: usize,
    /// Removed if the process is interrupted.
    _registered: crate::error::TempPath,
}

impl VectorWriter {
    /// `metadata` goes into a safetensors header (ignored for .npy).
    pub fn create(
        path: &Path,
        rows: usize,
        dim: usize,
        metadata: Vec<(String, String)>,
    ) -> Result<Self> {
        let format = VectorFormat::from_path(path)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
        let registered = crate::error::TempPath::register(&tmp);
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        let header = match format {
            VectorFormat::Npy => npy_header(rows, dim),
            VectorFormat::Safetensors => safetensors_header(rows, dim, metadata),
        };
        file.write_all(&header).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file,
            rows,
            dim,
            written: 0,
            _registered: registered,
        })
    }

    /// Appends whole rows.
    pub fn write(&mut self, vectors: &[f32]) -> Result<()> {
        let n = vectors.len() / self.dim;
        if self.written + n > self.rows {
            return Err(Error::Invalid(format!(
                "{}: more rows than the {} announced",
                self.path.display(),
                self.rows
            )));
        }
        for v in vectors {
            self.file
                .write_all(&v.to_le_bytes())
                .map_err(|e| Error::io(&self.tmp, e))?;
        }
        self.written += n;
        Ok(())
    }

    pub fn finish(mut self) -> Result<()> {
        if self.written != self.rows {
            return Err(Error::Invalid(format!(
                "{}: {} rows written, {} announced (the input changed while it was read)",
                self.path.display(),
                self.written,
                self.rows
            )));
        }
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for VectorWriter {
    fn drop(&mut self) {
        // After `finish` the temporary file is gone; after an error it must not stay behind.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// An .npy v1.0 header for float32 (rows, dim), padded so the data starts 64-byte aligned.
fn npy_header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let unpadded = 10 + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend(((total - 10) as u16).to_le_bytes());
    h.extend(dict.as_bytes());
    h.resize(total - 1, b' ');
    h.push(b'\n');
    h
}

/// A safetensors header for one F32 tensor `embeddings` (rows, dim).
fn safetensors_header(rows: usize, dim: usize, metadata: Vec<(String, String)>) -> Vec<u8> {
    let meta: serde_json::Map<String, Value> = metadata
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let json = serde_json::json!({
        "__metadata__": meta,
        "embeddings": {"dtype": "F32", "shape": [rows, dim], "data_offsets": [0, rows * dim * 4]},
    });
    let mut text = serde_json::to_vec(&json).expect("a JSON value serializes");
    // Pad with spaces to a multiple of 8 so the data is aligned, as the reference writer does.
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut h = (text.len() as u64).to_le_bytes().to_vec();
    h.extend(text);
    h
}

/// Reads an .npy float32 (rows, dim) file written by `VectorWriter` or NumPy (v1/v2 headers,
/// little-endian f4, C order).
pub fn read_npy(path: &Path) -> Result<(Vec<f32>, usize, usize)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: &str| Error::Data {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    if bytes.len() < 12 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(bytes.get(start..start + hlen).ok_or(bad("short header"))?)
        .map_err(|_| bad("header is not text"))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(bad("only little-endian float32 in C order is read"));
    }
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or(bad("no shape"))?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().map_err(|_| bad("bad shape")))
        .collect::<Result<_>>()?;
    let (rows, dim) = match dims[..] {
        [r, d] => (r, d),
        [r] => (r, 1),
        _ => return Err(bad("not a 2-d array")),
    };
    let data = &bytes[start + hlen..];
    if data.len() != rows * dim * 4 {
        return Err(bad(
            "the data is shorter or longer than the shape (truncated?)",
        ));
    }
    let v = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((v, rows, dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_records_join_title_and_text_like_beir() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let lines = [
            r#"{"_id": "a", "title": "T", "text": "body "}"#,
            r#"{"_id": "b", "title": "", "text": " body"}"#,
            "",
            r#"{"id": 7, "text": "\u001fbody\n"}"#,
            r#"{"text": "no id"}"#,
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let pairs = |p: &std::path::Path| -> Vec<(String, String)> {
            let records = open_records(p).unwrap().read_all().unwrap();
            records.into_iter().map(|r| (r.id, r.text)).collect()
        };
        let got = pairs(&p);
        let want = [
            ("a", "T body"),
            ("b", "body"),
            ("7", "body"),
            ("3", "no id"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(i, t)| (i.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want);
        // The same records gzip-compressed.
        let gz = dir.path().join("c.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, lines.join("\n").as_bytes()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let again = pairs(&gz);
        assert_eq!(again, want);
        std::fs::write(&p, "{\"_id\": \"a\", \"text\": 3}\n").unwrap();
        let err = open_records(&p)
            .unwrap()
            .read_all()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1") && err.contains("not a string"),
            "{err}"
        );
    }

    #[test]
    fn npy_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.npy");
        let mut w = VectorWriter::create(&p, 3, 2, vec![]).unwrap();
        w.write(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        w.write(&[5.0, 6.0]).unwrap();
        w.finish().unwrap();
        assert_eq!(
            read_npy(&p).unwrap(),
            (vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3, 2)
        );
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!((bytes.len() - 6 * 4) % 64, 0, "data 64-byte aligned");
        // Fewer rows than announced is an error, and leaves no file.
        let q = dir.path().join("w.npy");
        let mut w = VectorWriter::create(&q, 3, 2, vec![]).unwrap();
        w.write(&[1.0, 2.0]).unwrap();
        assert!(w.finish().is_err());
        assert!(!q.exists());
    }
}
