//! Flat token files (`train.bin`, `val.bin`): little-endian `u16` ids as nanoGPT writes them with
//! `np.array(ids, dtype=np.uint16).tofile(...)`, or `u32` when the vocabulary does not fit in 16 bits.

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// Element type of a token file; `meta.json` stores it as `"u16"` or `"u32"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDtype {
    U16,
    U32,
}

impl TokenDtype {
    /// `u16` when every id fits (vocab_size <= 65536), else `u32`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "u16" => Some(TokenDtype::U16),
            "u32" => Some(TokenDtype::U32),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenDtype::U16 => "u16",
            TokenDtype::U32 => "u32",
        }
    }

    /// Bytes per token.
    pub fn size(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }

    /// The file bytes of `ids` (little-endian). Ids must fit the dtype (checked by debug asserts;
    /// [`TokenDtype::for_vocab`] guarantees it).
    pub fn to_bytes(self, ids: &[u32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(ids.len() * self.size());
        match self {
            TokenDtype::U16 => {
                for &id in ids {
                    debug_assert!(id <= u16::MAX as u32, "token id {id} does not fit in u16");
                    bytes.extend_from_slice(&(id as u16).to_le_bytes());
                }
            }
            TokenDtype::U32 => {
                for &id in ids {
                    bytes.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        bytes
    }
}

/// A memory-mapped token file.
pub struct TokenFile {
    mmap: Mmap,
    dtype: TokenDtype,
    len: usize,
    path: PathBuf,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl TokenFile {
    /// Maps `path` as a file of `dtype` ("u16" or "u32") tokens. The file must hold at least one
    /// token and its length must be a multiple of the token size.
    pub fn open(path: &Path, dtype: &str) -> Result<Self> {
        let data_err = |msg: String| Error::Data {
            path: path.to_path_buf(),
            msg,
        };
        let dtype = TokenDtype::parse(dtype).ok_or_else(|| {
            data_err(format!(
                "unknown token dtype {dtype:?}; expected \"u16\" or \"u32\" (see meta.json)"
            ))
        })?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
        if bytes == 0 {
            return Err(data_err(
                "the token file is empty; run prepare again".to_string(),
            ));
        }
        if !bytes.is_multiple_of(dtype.size()) {
            return Err(data_err(format!(
                "the token file is {bytes} bytes, not a multiple of {} ({}); it is truncated or \
                 meta.json names the wrong dtype; run prepare again",
                dtype.size(),
                dtype.as_str()
            )));
        }
        // SAFETY: the map is read-only; prepare replaces token files by rename (write_atomic), so
        // a mapped file is never modified in place by this crate.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(TokenFile {
            len: bytes / dtype.size(),
            mmap,
            dtype,
            path: path.to_path_buf(),
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: an empty token file is refused by [`TokenFile::open`].
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> TokenDtype {
        self.dtype
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token `i`. Panics when `i >= len()`.
    pub fn get(&self, i: usize) -> u32 {
        assert!(
            i < self.len,
            "token index {i} out of range (len {})",
            self.len
        );
        let b = &self.mmap[..];
        match self.dtype {
            TokenDtype::U16 => u16::from_le_bytes([b[2 * i], b[2 * i + 1]]) as u32,
            TokenDtype::U32 => u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()),
        }
    }

    /// Copies `out.len()` tokens starting at `start`. Panics when they run past the end.
    pub fn read_into(&self, start: usize, out: &mut [u32]) {
        let end = start + out.len();
        assert!(
            end <= self.len,
            "tokens {start}..{end} out of range (len {})",
            self.len
        );
        let size = self.dtype.size();
        let bytes = &self.mmap[start * size..end * size];
        match self.dtype {
            TokenDtype::U16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = u16::from_le_bytes([c[0], c[1]]) as u32;
                }
            }
            TokenDtype::U32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn dtype_follows_vocab_size() {
        assert_eq!(TokenDtype::for_vocab(65), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65536), TokenDtype::U16);
        assert_eq!(TokenDtype::for_vocab(65537), TokenDtype::U32);
    }

    #[test]
    fn reads_u16_file() {
        let dir = tempfile::tempdir().unwrap();
        let ids = [0u32, 1, 65535, 300, 7];
        let path = write(dir.path(), "t.bin", &TokenDtype::U16.to_bytes(&ids));
        let file = TokenFile::open(&path, "u16").unwrap();
        assert_eq!(file.len(), 5);
        assert_eq!((0..5).map(|i| file.get(i)).collect::<Vec<_>>(), ids);
        let mut out = [0u32; 3];
        file.read_into(2, &mut out);
        assert_eq!(out, [65535, 300, 7]);
    }

    #[test]
    fn reads_hand_written_u32_file() {
        let dir = tempfile::tempdir().unwrap();
        // 70000 = 0x00011170, little-endian.
        let bytes = [
            0x70, 0x11, 0x01, 0x00, //
            0x01, 0x00, 0x00, 0x00, //
            0xff, 0xff, 0xff, 0x00,
        ];
        let path = write(dir.path(), "t.bin", &bytes);
        let file = TokenFile::open(&path, "u32").unwrap();
        assert_eq!(file.len(), 3);
        assert_eq!(file.get(0), 70000);
        assert_eq!(file.get(2), 0xff_ffff);
        let mut out = [0u32; 2];
        file.read_into(1, &mut out);
        assert_eq!(out, [1, 0xff_ffff]);
        assert_eq!(TokenDtype::U32.to_bytes(&[70000, 1, 0xff_ffff]), bytes);
    }

    #[test]
    fn length_not_a_multiple_of_dtype_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "odd.bin", &[1, 2, 3, 4, 5, 6]);
        let err = TokenFile::open(&path, "u32").unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        assert!(err.to_string().contains("odd.bin"), "{err}");
        assert!(TokenFile::open(&path, "u16").is_ok());
    }

    #[test]
    fn empty_file_and_unknown_dtype_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(dir.path(), "empty.bin", &[]);
        let err = TokenFile::open(&empty, "u16").unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        let path = write(dir.path(), "t.bin", &[0, 0]);
        let err = TokenFile::open(&path, "f32").unwrap_err();
        assert!(err.to_string().contains("f32"), "{err}");
        let err = TokenFile::open(&dir.path().join("missing.bin"), "u16").unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
