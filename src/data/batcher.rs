//! Random (x, y) blocks from a token file, as nanoGPT's `get_batch` samples them:
//! `ix = torch.randint(len(data) - block_size, (batch_size,))`,
//! `x = data[i:i+block_size]`, `y = data[i+1:i+1+block_size]`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::TokenFile;
use crate::error::{Error, Result};

/// Samples batches with its own ChaCha8 stream, whose position a checkpoint can save and restore.
#[derive(Debug)]
pub struct Batcher {
    file: TokenFile,
    batch_size: usize,
    block_size: usize,
    seed: u64,
    rng: ChaCha8Rng,
}

impl Batcher {
    /// Errors when a size is zero or the file holds fewer than `block_size + 1` tokens.
    pub fn new(file: TokenFile, batch_size: usize, block_size: usize, seed: u64) -> Result<Self> {
        if batch_size == 0 || block_size == 0 {
            return Err(Error::Invalid(format!(
                "batch_size ({batch_size}) and block_size ({block_size}) must be positive"
            )));
        }
        if file.len() < block_size + 1 {
            return Err(Error::Data {
                path: file.path().to_path_buf(),
                msg: format!(
                    "holds {} tokens, fewer than block_size + 1 = {}; use a smaller block_size \
                     or more text",
                    file.len(),
                    block_size + 1
                ),
            });
        }
        Ok(Batcher {
            file,
            batch_size,
            block_size,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// Fills `x` and `y` with `batch_size * block_size` ids each, row-major (B, T); row b is the
    /// block at a random offset o and `y` is `x` shifted by one: `y[b, t] = tokens[o + t + 1]`.
    /// Offsets are uniform in `[0, len - T)`, nanoGPT's range (the last block ends at the last token).
    pub fn next_batch(&mut self, x: &mut Vec<u32>, y: &mut Vec<u32>) {
        let (b, t) = (self.batch_size, self.block_size);
        x.clear();
        x.resize(b * t, 0);
        y.clear();
        y.resize(b * t, 0);
        // Sample as u64 so the stream does not depend on the platform's usize.
        let offsets = (self.file.len() - t) as u64;
        for (xr, yr) in x.chunks_exact_mut(t).zip(y.chunks_exact_mut(t)) {
            let o = self.rng.gen_range(0..offsets) as usize;
            self.file.read_into(o, xr);
            self.file.read_into(o + 1, yr);
        }
    }

    /// The seed and the stream position (`ChaCha8Rng::get_word_pos`): saving both in a checkpoint
    /// lets [`Batcher::set_rng_state`] resume the exact sequence of batches.
    pub fn rng_state(&self) -> (u64, u128) {
        (self.seed, self.rng.get_word_pos())
    }

    pub fn set_rng_state(&mut self, seed: u64, word_pos: u128) {
        self.seed = seed;
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.rng.set_word_pos(word_pos);
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn file(&self) -> &TokenFile {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TokenDtype;
    use std::path::Path;

    /// A u16 token file whose token i is i (mod 65536), so a block reveals its offset.
    fn counting_file(dir: &Path, n: usize) -> TokenFile {
        let ids: Vec<u32> = (0..n as u32).map(|i| i % 65536).collect();
        let path = dir.join("tokens.bin");
        std::fs::write(&path, TokenDtype::U16.to_bytes(&ids)).unwrap();
        TokenFile::open(&path, "u16").unwrap()
    }

    #[test]
    fn batches_are_contiguous_blocks_with_y_shifted_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let (n, b, t) = (100, 8, 10);
        let mut batcher = Batcher::new(counting_file(dir.path(), n), b, t, 1337).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..50 {
            batcher.next_batch(&mut x, &mut y);
            assert_eq!((x.len(), y.len()), (b * t, b * t));
            for (xr, yr) in x.chunks(t).zip(y.chunks(t)) {
                let o = xr[0] as usize;
                assert!(o < n - t, "offset {o}");
                for i in 0..t {
                    assert_eq!(xr[i] as usize, o + i);
                    assert_eq!(yr[i] as usize, o + i + 1);
                }
            }
        }
    }

    #[test]
    fn shortest_file_has_one_block() {
        let dir = tempfile::tempdir().unwrap();
        let mut batcher = Batcher::new(counting_file(dir.path(), 5), 2, 4, 0).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        batcher.next_batch(&mut x, &mut y);
        assert_eq!(x, [0, 1, 2, 3, 0, 1, 2, 3]);
        assert_eq!(y, [1, 2, 3, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn file_shorter_than_block_plus_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Batcher::new(counting_file(dir.path(), 4), 2, 4, 0).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        assert!(err.to_string().contains("tokens.bin"), "{err}");
        let err = Batcher::new(counting_file(dir.path(), 40), 0, 4, 0).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err}");
    }

    #[test]
    fn same_seed_gives_same_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Batcher::new(counting_file(dir.path(), 1000), 4, 16, 42).unwrap();
        let mut b = Batcher::new(counting_file(dir.path(), 1000), 4, 16, 42).unwrap();
        let mut c = Batcher::new(counting_file(dir.path(), 1000), 4, 16, 43).unwrap();
        let (mut xa, mut ya, mut xb, mut yb, mut xc, mut yc) = Default::default();
        let mut differs = false;
        for _ in 0..10 {
            a.next_batch(&mut xa, &mut ya);
            b.next_batch(&mut xb, &mut yb);
            c.next_batch(&mut xc, &mut yc);
            assert_eq!((&xa, &ya), (&xb, &yb));
            differs |= xa != xc;
        }
        assert!(differs, "a different seed gives different batches");
    }

    #[test]
    fn restored_rng_state_resumes_the_exact_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Batcher::new(counting_file(dir.path(), 1000), 4, 16, 7).unwrap();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            a.next_batch(&mut x, &mut y);
        }
        let (seed, word_pos) = a.rng_state();
        assert_eq!(seed, 7);
        let expected: Vec<(Vec<u32>, Vec<u32>)> = (0..5)
            .map(|_| {
                a.next_batch(&mut x, &mut y);
                (x.clone(), y.clone())
            })
            .collect();

        // A fresh batcher (as after loading a checkpoint) with another seed, then restored.
        let mut b = Batcher::new(counting_file(dir.path(), 1000), 4, 16, 999).unwrap();
        b.set_rng_state(seed, word_pos);
        assert_eq!(b.rng_state(), (seed, word_pos));
        for (ex, ey) in &expected {
            b.next_batch(&mut x, &mut y);
            assert_eq!((&x, &y), (ex, ey));
        }
    }
}
