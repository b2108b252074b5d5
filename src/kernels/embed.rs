//! Token and position embeddings, and the rotary tables of RoPE.

use rayon::prelude::*;

use super::{add_assign, rows_per_task};

/// out (B, T, C) = wte[idx] + wpe[pos].
pub fn encoder_forward(out: &mut [f32], idx: &[u32], wte: &[f32], wpe: &[f32], t: usize) {
    let c = out.len() / idx.len();
    let rows = rows_per_task(c);
    out.par_chunks_mut(c * rows)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (j, o) in chunk.chunks_exact_mut(c).enumerate() {
                let r = ci * rows + j;
                let (tok, pos) = (idx[r] as usize, r % t);
                let (e, p) = (&wte[tok * c..(tok + 1) * c], &wpe[pos * c..(pos + 1) * c]);
                for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
                    *o = e + p;
                }
            }
        });
}

/// Backward of `encoder_forward`: dwte[idx[r]] += dout[r], dwpe[pos] += Σ_b dout[b, pos].
pub fn encoder_backward(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], idx: &[u32], t: usize) {
    let c = dout.len() / idx.len();
    rayon::join(
        || {
            // Tokens repeat, so each task owns a range of vocabulary rows and scans all positions
            // for the tokens in it: no two tasks write the same row.
            let v = dwte.len() / c;
            let vrows = v.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
            dwte.par_chunks_mut(vrows * c)
                .enumerate()
                .for_each(|(ci, d)| {
                    let lo = ci * vrows;
                    for (r, &tok) in idx.iter().enumerate() {
                        let tok = tok as usize;
                        if (lo..lo + vrows).contains(&tok) {
                            let (i, o) = ((tok - lo) * c, r * c);
                            add_assign(&mut d[i..i + c], &dout[o..o + c]);
                        }
                    }
                });
        },
        || {
            let b = idx.len() / t;
            dwpe[..t * c]
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(pos, d)| {
                    for bi in 0..b {
                        let o = (bi * t + pos) * c;
                        add_assign(d, &dout[o..o + c]);
                    }
                });
        },
    );
}

// ------------------------------------------------------------------------------------------------

/// How rotary angles are computed: decodex matches three references, each to the bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RopeAngles {
    /// llama.cpp's (`ggml_rope_cache_init` without scaling): θ starts at p and is multiplied by
    /// base^(−2/dims) (f32 `powf`) for each next pair.
    Ggml,
    /// Hugging Face's and candle's: inv_freq_i = 1 / base^(2i/dims) (f64, rounded to f32), angle
    /// p · inv_freq_i in f32.
    F32,
    /// The same inv_freq_i, angle p · inv_freq_i in f64 rounded to f32 (the fine-tuning path).
    F64,
}

/// RoPE's tables: cos and sin (f32 `cosf`/`sinf`) of the angle of position p and pair i, each
/// (positions, dims / 2).
pub fn rope_tables(
    positions: usize,
    dims: usize,
    base: f64,
    how: RopeAngles,
) -> (Vec<f32>, Vec<f32>) {
    let inv_freq = |i: usize| 1.0 / base.powf(2.0 * i as f64 / dims as f64);
    let theta_scale = (base as f32).powf(-2.0 / dims as f32);
    let angles: Vec<f32> = (0..positions)
        .flat_map(|p| {
            let mut theta = p as f32;
            (0..dims / 2).map(move |i| match how {
                RopeAngles::Ggml => {
                    let a = theta;
                    theta *= theta_scale;
                    a
                }
                RopeAngles::F32 => p as f32 * inv_freq(i) as f32,
                RopeAngles::F64 => (p as f64 * inv_freq(i)) as f32,
            })
        })
        .collect();
    let (cos, sin) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
    (cos, sin)
}
