//! Helpers shared by the unit tests and the integration tests (`tests/common`).

/// `len` deterministic pseudo-random values in [-1, 1) (xorshift64 from `seed`).
pub fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `m.max(d)` that keeps a NaN: `f32::max`/`f64::max` return the other operand when one is NaN,
/// so a `max |diff| <= tol` check folded with them passes on NaN outputs.
pub fn nan_max<T: PartialOrd + Copy>(m: T, d: T) -> T {
    #[allow(clippy::eq_op)] // x != x: NaN, for any float type
    let nan = |x: T| x != x;
    if nan(m) || (!nan(d) && d <= m) {
        m
    } else {
        d
    }
}

/// The largest |a_i − b_i| over two equally long, non-empty slices (NaN if a difference is NaN),
/// so that a tolerance check on it cannot pass on nothing or on NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    assert!(!a.is_empty(), "nothing to compare");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, nan_max)
}

/// ‖a − b‖ / ‖a‖ in f64 (the norm floored at 1e−30).
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum();
    let norm: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
    (diff / norm.max(1e-30)).sqrt()
}

/// erfc in f64 to ~1e−13 relative: 1 − the Maclaurin series of erf for |x| < 3, the
/// continued fraction of erfc beyond.
pub fn erfc_f64(x: f64) -> f64 {
    if x < 3.0 {
        return 1.0 - erf_f64(x);
    }
    // erfc(x) = e^(−x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))
    let mut f = x;
    for k in (1..80).rev() {
        f = x + (k as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// erf in f64 to ~1e−14.
pub fn erf_f64(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        let (mut term, mut s, mut n) = (a, a, 0.0f64);
        while term.abs() > 1e-17 * s.abs() {
            n += 1.0;
            term *= -a * a / n;
            s += term / (2.0 * n + 1.0);
        }
        s * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        1.0 - erfc_f64(a)
    };
    r.copysign(x)
}
