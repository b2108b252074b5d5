//! Scalar math written so that LLVM vectorizes it (no libm calls, no reductions that would need
//! reassociation), and `simd_fn!`, which compiles a kernel a second time for AVX2 + FMA and picks
//! that version when the process's tier (`kernels::isa`) is AVX2 or wider. The crate is built for the baseline x86-64
//! target (SSE2), so without this the element-wise kernels would run four lanes wide.

/// Defines a function whose body is compiled twice: for AVX2 + FMA, used when the tier
/// (`Isa::current`, chosen once) is AVX2 or wider, and for the baseline target. Helpers the body
/// calls must be `#[inline(always)]` to be compiled with the wider instruction set.
macro_rules! simd_fn {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::kernels::isa::Isa::current() >= $crate::kernels::isa::Isa::Avx2 {
                    // SAFETY: the CPU supports the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Number of independent accumulators in reductions: wide enough for 2 AVX2 registers.
const LANES: usize = 16;

/// Σ exp(x − max) with `LANES` partial sums (and `exp` below), so that the loop vectorizes: the
/// normalizer of every softmax and cross-entropy over a vocabulary row.
#[inline(always)]
pub fn sum_exp(x: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - max)).sum();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += exp(v - max);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of `x`, with `LANES` partial sums so that the loop vectorizes.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product of `a` and `b` (same length), vectorized like `sum`.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += xa[i] * xb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum of `x` (−∞ for an empty slice).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(tail, |m, &v| m.max(v))
}

/// e^x in f32, within 2 ulp for x in [−87, 88] (clamped outside, so e^x ≥ 1.6e−38 and finite).
/// Cephes `expf`: x = n ln2 + r with |r| ≤ ln2/2, a degree-7 polynomial for e^r, then 2^n
/// built in the exponent bits. Rounding uses the 1.5·2^23 trick so no `round` call is needed.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: x + MAGIC rounds x to an integer
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * (r * r) + r + 1.0;
    e * f32::from_bits(((ni + 127) as u32) << 23)
}

/// sqrt(2/π), the tanh GELU's inner scale.
const GELU_K: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// GPT-2's `gelu_new`, 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))), and its derivative. Computed
/// as x σ(2u) with the identity 0.5 (1 + tanh u) = σ(2u) = 1 / (1 + e^(−2u)); the derivative is
/// σ + x σ (1 − σ) 2u′ with u′ = √(2/π)(1 + 3·0.044715 x²), and 1 − σ = e^(−2u) σ avoids the
/// cancellation of 1 − σ when σ ≈ 1.
#[inline(always)]
pub fn gelu_tanh_and_grad(x: f32) -> (f32, f32) {
    let x2 = x * x;
    let u = GELU_K * (x + GELU_C * x2 * x);
    let e = exp(-2.0 * u);
    let s = 1.0 / (1.0 + e);
    let du = GELU_K * (1.0 + 3.0 * GELU_C * x2);
    (x * s, s + x * s * (e * s) * 2.0 * du)
}

/// erfc(z) for z ≥ 0: Numerical Recipes' `erfcc` (Press et al., *Numerical Recipes in C*, 2nd
/// ed., §6.2), a Chebyshev fit with relative error below 1.2e−7 everywhere. Evaluated in f32 the
/// error is a few 1e−7, growing with z² (the rounding of −z² in the exponent).
#[inline(always)]
fn erfc_nonneg(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp(-z * z + poly)
}

/// The standard normal CDF Φ(x) = 0.5 erfc(−x/√2), accurate relative to Φ also in the left tail.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_nonneg(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x > 0.0 {
        1.0 - half_tail
    } else {
        half_tail
    }
}

/// The exact GELU, x Φ(x) = 0.5 x (1 + erf(x/√2)) (`"gelu"` in Hugging Face configs), for
/// inference: `gelu_erf_and_grad` without the derivative.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// The exact GELU, x Φ(x) = 0.5 x (1 + erf(x/√2)) (`"gelu"` in Hugging Face configs), and its
/// derivative Φ(x) + x φ(x), φ(x) = e^(−x²/2)/√(2π).
#[inline(always)]
pub fn gelu_erf_and_grad(x: f32) -> (f32, f32) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let cdf = normal_cdf(x);
    (x * cdf, cdf + x * INV_SQRT_2PI * exp(-0.5 * x * x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{erf_f64, erfc_f64};

    fn grid() -> impl Iterator<Item = f32> {
        (-12000..=12000).map(|i| i as f32 * 1e-3)
    }

    #[test]
    fn exp_is_accurate() {
        for x in (-8700..=8800).map(|i| i as f32 * 0.01) {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(
                ((got - want) / want).abs() < 3e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_and_gelus_are_accurate() {
        for x in grid() {
            let xd = x as f64;
            if x >= 0.0 {
                let (got, want) = (erfc_nonneg(x) as f64, erfc_f64(xd));
                assert!(
                    (got - want).abs() <= (4e-7 + 1.5e-7 * xd * xd) * want + 1e-37,
                    "erfc({x}) = {got}, want {want}"
                );
            }
            // x Φ(x), through erfc in the left tail where 1 + erf cancels
            let g = 0.5 * xd * erfc_f64(-xd / 2f64.sqrt());
            let tol = 1e-6 * g.abs() + 1e-9;
            assert!(
                (gelu_erf_and_grad(x).0 as f64 - g).abs() < tol,
                "gelu_erf({x}) = {}, want {g}",
                gelu_erf_and_grad(x).0
            );
            let gt = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            let tol = 1e-6 * gt.abs() + 1e-9;
            assert!(
                (gelu_tanh_and_grad(x).0 as f64 - gt).abs() < tol,
                "gelu_tanh({x}) = {}, want {gt}",
                gelu_tanh_and_grad(x).0
            );
        }
    }

    #[test]
    fn gelu_grads_match_central_differences() {
        let f64_erf = |x: f64| 0.5 * x * (1.0 + erf_f64(x / 2f64.sqrt()));
        let f64_tanh = |x: f64| {
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        };
        let h = 1e-5;
        for x in grid().step_by(7) {
            let xd = x as f64;
            let want = (f64_erf(xd + h) - f64_erf(xd - h)) / (2.0 * h);
            assert!(
                (gelu_erf_and_grad(x).1 as f64 - want).abs() < 1e-6,
                "gelu_erf'({x})"
            );
            let want = (f64_tanh(xd + h) - f64_tanh(xd - h)) / (2.0 * h);
            assert!(
                (gelu_tanh_and_grad(x).1 as f64 - want).abs() < 1e-6,
                "gelu_tanh'({x})"
            );
        }
    }

    #[test]
    fn reductions_match_naive_sums() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum(&x) as f64 - naive).abs() < 1e-5);
        let naive: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((dot(&x, &y) as f64 - naive).abs() < 1e-5);
        assert_eq!(max(&x), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
    }
}
