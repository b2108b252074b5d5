//! Tests of `kv_attention`: every path against the definition, and llama.cpp's flash paths
//! against a transcription of ggml's code, bit for bit.

use super::*;

use crate::testutil::{fill, rel_l2};

/// A paged cache of `len` positions for `batch` rows from flat (row, kv head, pos, hd) data.
fn pages<T: KvValue>(data: &[f32], batch: usize, nkv: usize, len: usize, hd: usize) -> Vec<Vec<T>> {
    let n = len.div_ceil(KV_PAGE);
    let mut out = vec![vec![T::default(); batch * nkv * KV_PAGE * hd]; n];
    for b in 0..batch {
        for kh in 0..nkv {
            for p in 0..len {
                let src = ((b * nkv + kh) * len + p) * hd;
                let dst = ((b * nkv + kh) * KV_PAGE + p % KV_PAGE) * hd;
                T::narrow(&data[src..src + hd], &mut out[p / KV_PAGE][dst..dst + hd]);
            }
        }
    }
    out
}

/// The definition: softmax(q·kᵀ/√hd) v per query, in f64, over the keys it sees.
#[allow(clippy::too_many_arguments)]
fn reference(q: &[f32], k: &[f32], v: &[f32], s: KvShape, len: usize, pads: &[usize]) -> Vec<f32> {
    let (hd, group) = (s.hd, s.nh / s.nkv);
    let mut out = vec![0f32; q.len()];
    for b in 0..s.batch {
        for i in 0..s.t {
            for h in 0..s.nh {
                let (lo, hi) = s.keys(pads, b, s.start + i);
                let qv = &q[((b * s.t + i) * s.nh + h) * hd..][..hd];
                let kv = |p: usize| ((b * s.nkv + h / group) * len + p) * hd;
                let sc: Vec<f64> = (lo..=hi)
                    .map(|p| {
                        let kr = &k[kv(p)..kv(p) + hd];
                        qv.iter()
                            .zip(kr)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let o = &mut out[((b * s.t + i) * s.nh + h) * hd..][..hd];
                for (w, p) in e.iter().zip(lo..=hi) {
                    for (o, &x) in o.iter_mut().zip(&v[kv(p)..kv(p) + hd]) {
                        *o += (w / z * x as f64) as f32;
                    }
                }
            }
        }
    }
    out
}

/// Every path (tiled f32, llama.cpp's tiled, one-row and split flash attention, and its
/// unflashed attention) against the definition, across page and tile edges, grouped heads,
/// padding and several rows.
#[test]
fn every_path_matches_the_definition() {
    let cases = [
        // (batch, t, start, nh, nkv, hd, pads)
        (1, 200, 0, 6, 2, 64, vec![0]),
        (1, 1, 700, 9, 3, 64, vec![0]),
        (1, 5, 300, 4, 4, 32, vec![0]),
        (2, 40, 30, 4, 2, 48, vec![0, 13]),
        (3, 1, 90, 2, 1, 64, vec![0, 5, 60]),
        (1, 70, 250, 3, 1, 64, vec![0]),
    ];
    for (batch, t, start, nh, nkv, hd, pads) in cases {
        let s = KvShape {
            batch,
            t,
            start,
            nh,
            nkv,
            hd,
        };
        let len = start + t;
        let q = fill(batch * t * nh * hd, 1);
        let (k, v) = (
            fill(batch * nkv * len * hd, 2),
            fill(batch * nkv * len * hd, 3),
        );
        let want = reference(&q, &k, &v, s, len, &pads);
        for how in [KvNumerics::F32, KvNumerics::GgmlFlash, KvNumerics::Ggml] {
            let mut got = vec![f32::NAN; q.len()];
            if how == KvNumerics::F32 {
                let (kp, vp) = (
                    pages::<f32>(&k, batch, nkv, len, hd),
                    pages::<f32>(&v, batch, nkv, len, hd),
                );
                let view = |p| KvPages { pages: p, nkv, hd };
                kv_attention(&mut got, &q, view(&kp), view(&vp), s, &pads, how);
            } else {
                let (kp, vp) = (
                    pages::<f16>(&k, batch, nkv, len, hd),
                    pages::<f16>(&v, batch, nkv, len, hd),
                );
                let view = |p| KvPages { pages: p, nkv, hd };
                kv_attention(&mut got, &q, view(&kp), view(&vp), s, &pads, how);
            }
            let e = rel_l2(&want, &got);
            println!("{s:?} {how:?}: rel err {e:.1e}");
            let limit = if how == KvNumerics::F32 { 1e-5 } else { 5e-3 };
            assert!(e < limit, "{s:?} {how:?}: {e}");
        }
    }
}

/// The tiled flash attention gives every query row the same bits whatever the block it
/// shares and whatever the thread count: as in llama.cpp, a row's result depends on its
/// keys only (the chunked prompt relies on it).
#[test]
fn flash_rows_do_not_depend_on_their_block() {
    let (nh, nkv, hd, len) = (4, 2, 64, 300);
    let q = fill(len * nh * hd, 4);
    let (k, v) = (fill(nkv * len * hd, 5), fill(nkv * len * hd, 6));
    let (kp, vp) = (
        pages::<f16>(&k, 1, nkv, len, hd),
        pages::<f16>(&v, 1, nkv, len, hd),
    );
    let view = |p| KvPages { pages: p, nkv, hd };
    let run = |start: usize, t: usize| {
        let s = KvShape {
            batch: 1,
            t,
            start,
            nh,
            nkv,
            hd,
        };
        let mut o = vec![0f32; t * nh * hd];
        let qs = &q[start * nh * hd..(start + t) * nh * hd];
        kv_attention(
            &mut o,
            qs,
            view(&kp),
            view(&vp),
            s,
            &[0],
            KvNumerics::GgmlFlash,
        );
        o
    };
    let whole = run(0, len);
    let (a, b) = (run(0, 150), run(150, 150));
    let parts: Vec<f32> = a.into_iter().chain(b).collect();
    assert!(whole
        .iter()
        .zip(&parts)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let serial = one.install(|| run(0, len));
    assert!(whole
        .iter()
        .zip(&serial)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

/// llama.cpp's flash attention for one query over keys lo..=hi of `keys`/`vals` (rows of hd,
/// f16 values), transcribed from ggml-cpu/ops.cpp as literally as Rust allows: the tiled path
/// (`tiled`) or the one-row path key by key with an `f16` accumulator. Returns (m, s, acc),
/// acc not yet divided by s.
fn ggml_reference(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    (lo, hi): (usize, usize),
    tiled: bool,
) -> (f32, f32, Vec<f32>) {
    let hd = q.len();
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
    if !tiled {
        let q16: Vec<f32> = q.iter().map(|&x| ggml::round_f16(x)).collect();
        let mut acc = vec![f16::ZERO; hd];
        for j in lo..=hi {
            let mut dot = [0f32];
            ggml::dots_f16(F16Dot::Vec, &keys[j * hd..(j + 1) * hd], &q16, &mut dot);
            let x = dot[0] * scale;
            let (ms, vs);
            if x > m {
                ms = (m - x).exp();
                m = x;
                vs = 1.0;
                acc.iter_mut()
                    .for_each(|a| *a = f16::from_f32(a.to_f32() * ms));
            } else {
                ms = 1.0;
                vs = (x - m).exp();
            }
            for (a, &v) in acc.iter_mut().zip(&vals[j * hd..(j + 1) * hd]) {
                *a = f16::from_f32(v.mul_add(vs, a.to_f32()));
            }
            // `S = S*ms + vs`, which GCC contracts into one fma.
            s = s.mul_add(ms, vs);
        }
        return (m, s, acc.iter().map(|a| a.to_f32()).collect());
    }
    let mut acc = vec![0f32; hd];
    for j0 in (0..=hi).step_by(KV_TILE) {
        let live = |j: usize| j >= lo && j <= hi;
        if !(j0..j0 + KV_TILE).any(live) {
            continue;
        }
        let mut kq = [0f32; KV_TILE];
        for (jj, x) in kq.iter_mut().enumerate() {
            let j = j0 + jj;
            *x = if live(j) {
                let mut a = 0f32;
                for d in 0..hd {
                    a = q[d].mul_add(keys[j * hd + d], a);
                }
                a * scale
            } else {
                f32::NEG_INFINITY
            };
        }
        let tile_max = kq.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let m_new = m.max(tile_max);
        if m_new > m {
            let ms = (m - m_new).exp();
            acc.iter_mut().for_each(|a| *a *= ms);
            s *= ms;
        }
        m = m_new;
        let mut sum = 0f64;
        for c in kq.chunks_exact_mut(16) {
            c.iter_mut().for_each(|x| *x = ggml::expf(*x - m));
            sum += ggml::reduce16(&<[f32; 16]>::try_from(&*c).unwrap()) as f64;
        }
        s = (s as f64 + sum) as f32;
        for (d, a) in acc.iter_mut().enumerate() {
            for (jj, &p) in kq.iter().enumerate() {
                let x = vals.get((j0 + jj) * hd + d).copied().unwrap_or(0.0);
                *a = p.mul_add(x, *a);
            }
        }
    }
    (m, s, acc)
}

/// The flash paths give the transcription's bits: the tiled one for 64 rows and more, the
/// one-row one below that (and for beams), and the split over the threads for a decoding
/// row at 512 cached positions or more, merged as `ggml_flash_attn_ext_reduce_partials`.
#[test]
fn flash_paths_equal_the_transcribed_ggml_bit_for_bit() {
    let (nh, nkv, hd) = (6, 2, 64);
    let group = nh / nkv;
    for (batch, t, start, pads) in [
        (1, 100, 150, vec![0]),
        (1, 7, 300, vec![0]),
        (2, 1, 40, vec![0, 9]),
        (1, 1, 900, vec![0]),
    ] {
        let len = start + t;
        let s = KvShape {
            batch,
            t,
            start,
            nh,
            nkv,
            hd,
        };
        let q = fill(batch * t * nh * hd, 7);
        // f16 values, as the cache holds them.
        let mut k = fill(batch * nkv * len * hd, 8);
        let mut v = fill(batch * nkv * len * hd, 9);
        ggml::round_f16_all(&mut k);
        ggml::round_f16_all(&mut v);
        let (kp, vp) = (
            pages::<f16>(&k, batch, nkv, len, hd),
            pages::<f16>(&v, batch, nkv, len, hd),
        );
        let view = |p| KvPages { pages: p, nkv, hd };
        let mut got = vec![0f32; q.len()];
        kv_attention(
            &mut got,
            &q,
            view(&kp),
            view(&vp),
            s,
            &pads,
            KvNumerics::GgmlFlash,
        );
        let tiled = batch * t >= FA_TILE_Q;
        let split = batch * t == 1 && padded_kv_len(len) >= SPLIT_KV_MIN;
        let mut want = vec![0f32; q.len()];
        for b in 0..batch {
            for i in 0..t {
                for h in 0..nh {
                    let at = ((b * t + i) * nh + h) * hd;
                    let base = (b * nkv + h / group) * len * hd;
                    let (keys, vals) = (&k[base..base + len * hd], &v[base..base + len * hd]);
                    let qv = &q[at..at + hd];
                    let (lo, hi) = s.keys(&pads, b, start + i);
                    let (m, sum, acc) = if split {
                        let nth = rayon::current_num_threads().max(1);
                        let chunk = padded_kv_len(len).div_ceil(nth);
                        let (mut m, mut sum, mut acc) = (f32::NEG_INFINITY, 0f32, vec![0f32; hd]);
                        for c in 0..nth {
                            let (a, z) = (c * chunk, ((c + 1) * chunk).min(hi + 1));
                            if a >= z {
                                continue;
                            }
                            let (mc, sc, part) = ggml_reference(qv, keys, vals, (a, z - 1), false);
                            let mn = m.max(mc);
                            let (fo, fnew) = ((m - mn).exp(), (mc - mn).exp());
                            for (x, &y) in acc.iter_mut().zip(&part) {
                                *x = x.mul_add(fo, y * fnew);
                            }
                            sum = sum.mul_add(fo, sc * fnew);
                            m = mn;
                        }
                        (m, sum, acc)
                    } else {
                        ggml_reference(qv, keys, vals, (lo, hi), tiled)
                    };
                    let _ = m;
                    let inv = 1.0 / sum;
                    for (w, &a) in want[at..at + hd].iter_mut().zip(&acc) {
                        *w = a * inv;
                    }
                }
            }
        }
        let same = want
            .iter()
            .zip(&got)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        println!(
            "{s:?} tiled {tiled} split {split}: {same} of {} values bit-identical",
            want.len()
        );
        assert_eq!(same, want.len(), "{s:?}");
    }
}
