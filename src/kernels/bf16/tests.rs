use super::*;

use crate::testutil::fill;

/// A view of the (r, c) matrix `x` stored row-major, or as its row-major transpose.
fn view(x: &[f32], r: usize, c: usize, trans: bool) -> Mat {
    let (rs, cs) = if trans { (1, r) } else { (c, 1) };
    Mat {
        ptr: x.as_ptr(),
        rs,
        cs,
    }
}

#[test]
fn round_bf16_is_nearest_even() {
    assert_eq!(round_bf16(1.0), 1.0);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
    assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(round_bf16(-2.5e-40), -0.0);
    assert!(round_bf16(f32::NAN).is_nan());
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
}

/// `vdpbf16ps`'s lane as the SDM defines it: two roundings (not one of the exact sum), the
/// odd (high) pair first, denormals flushed.
#[test]
fn dot_pair_is_two_fmas_high_pair_first() {
    use emulated::dot_pair;
    let p = |lo: f32, hi: f32| pair(lo, hi);
    let tiny = 2f32.powi(-24); // half an ulp of 1.0: a tie, which rounds to even (1.0)
    assert_eq!(dot_pair(1.0, p(1.0, 1.0), p(tiny, tiny)), 1.0);
    // High first: (1 - 1) + 2^-30 = 2^-30; low first would give (1 + 2^-30) - 1 = 0.
    let small = 2f32.powi(-15);
    assert_eq!(dot_pair(1.0, p(small, -1.0), p(small, 1.0)), 2f32.powi(-30));
    // A denormal accumulator reads as zero; a denormal result is flushed to zero.
    let denormal = f32::from_bits(1);
    assert_eq!(dot_pair(denormal, p(0.0, 0.0), p(0.0, 0.0)), 0.0);
    let (m, n) = (2f32.powi(-64), 2f32.powi(-63));
    assert_eq!(dot_pair(0.0, p(0.0, m), p(0.0, m)), 0.0); // 2^-128 is denormal
    assert_eq!(dot_pair(0.0, p(0.0, n), p(0.0, n)), 2f32.powi(-126));
}

/// The bf16 GEMM against an f64 GEMM of the bf16-rounded inputs: with f32 accumulation the
/// error is a few f32 ulps of Σ|a·b|. Runs the hardware kernel where the CPU has
/// AVX512-BF16, the software emulation elsewhere.
#[test]
fn gemm_matches_f64_reference_on_rounded_inputs() {
    let shapes = [
        (1, 1, 1),
        (3, 5, 7),
        (12, 32, 2),
        (13, 33, 3),
        (25, 70, 385),
        (47, 31, 800),
        (250, 65, 64),
        (64, 600, 129),
        (2100, 40, 17),
    ];
    let mut seed = 1;
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            for beta in [0.0f32, 1.0] {
                seed += 1;
                let (a, b) = (fill(m * k, seed), fill(k * n, seed + 100));
                let c0 = fill(m * n, seed + 200);
                let alpha = 0.5;
                let mut c = c0.clone();
                let (am, bm) = (view(&a, m, k, ta), view(&b, k, n, tb));
                // SAFETY: the buffers hold the matrices.
                unsafe { gemm((m, n, k), c.as_mut_ptr(), n, beta, am, bm, alpha) };
                let mut worst = 0f64;
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut mag) = (0f64, 0f64);
                        for p in 0..k {
                            let x = round_bf16(a[i * am.rs + p * am.cs]) as f64;
                            let y = round_bf16(b[p * bm.rs + j * bm.cs]) as f64;
                            s += x * y;
                            mag += (x * y).abs();
                        }
                        let want = beta as f64 * c0[i * n + j] as f64 + alpha as f64 * s;
                        let err = (c[i * n + j] as f64 - want).abs() / (mag + 1.0);
                        worst = crate::testutil::nan_max(worst, err);
                    }
                }
                assert!(
                    worst < 1e-5,
                    "{m}x{n}x{k} ta={ta} tb={tb} beta={beta}: error {worst:e}"
                );
            }
        }
    }
}

#[test]
fn gemm_is_deterministic_across_thread_counts() {
    let (m, n, k) = (300, 200, 500);
    let (a, b) = (fill(m * k, 7), fill(k * n, 8));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = vec![0f32; m * n];
        let (am, bm) = (
            Mat {
                ptr: a.as_ptr(),
                rs: k,
                cs: 1,
            },
            Mat {
                ptr: b.as_ptr(),
                rs: n,
                cs: 1,
            },
        );
        // SAFETY: the buffers hold the matrices.
        pool.install(|| unsafe { gemm((m, n, k), c.as_mut_ptr(), n, 0.0, am, bm, 1.0) });
        c
    };
    let one = run(1);
    assert_eq!(one, run(2));
    assert_eq!(one, run(3));
    assert_eq!(run(2), run(2));
}

/// The software emulation gives the AVX512-BF16 kernels' bits, for every operand layout
/// (both packing routines), partial tiles, beta 0 and 1, and values that underflow. Needs
/// a CPU with AVX512-BF16: elsewhere the harness reports it ignored (build.rs sets the cfg
/// from the build machine's CPU).
#[test]
#[cfg_attr(
    not(decodex_avx512bf16),
    ignore = "needs AVX512-BF16 (the build machine lacks it)"
)]
fn emulation_equals_the_hardware_bit_for_bit() {
    assert!(available(), "this CPU lacks AVX512-BF16");
    let shapes = [(3, 5, 7), (13, 33, 3), (47, 31, 800), (64, 600, 129)];
    let mut seed = 500;
    let mut cells = 0;
    for &(m, n, k) in &shapes {
        for (ta, tb) in [(false, false), (true, true)] {
            for beta in [0.0f32, 1.0] {
                seed += 1;
                // Some tiny values, so that products and sums reach the denormal range.
                let scaled = |len, s| {
                    let mut v = fill(len, s);
                    v.iter_mut().step_by(7).for_each(|x| *x *= 1e-38);
                    v
                };
                let (a, b) = (scaled(m * k, seed), scaled(k * n, seed + 100));
                let c0 = fill(m * n, seed + 200);
                let (am, bm) = (view(&a, m, k, ta), view(&b, k, n, tb));
                let run = |emulate: bool| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .unwrap();
                    let mut c = c0.clone();
                    pool.install(|| {
                        FORCE_EMULATION.with(|f| f.set(emulate));
                        // SAFETY: the buffers hold the matrices.
                        unsafe { gemm((m, n, k), c.as_mut_ptr(), n, beta, am, bm, 0.5) };
                        FORCE_EMULATION.with(|f| f.set(false));
                    });
                    c
                };
                let (hw, sw) = (run(false), run(true));
                for (i, (x, y)) in hw.iter().zip(&sw).enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        y.to_bits(),
                        "{m}x{n}x{k} ta={ta} tb={tb} beta={beta} element {i}: {x} vs {y}"
                    );
                }
                cells += hw.len();
            }
        }
    }
    println!("{cells} elements: the emulation equals AVX512-BF16 bit for bit");
}
