//! Activations: GELU with the linear layer's bias, and the SwiGLU gate of a Llama MLP (Shazeer
//! 2020, as `LlamaMLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`).

use rayon::prelude::*;

use super::simd::{self, simd_fn};
use super::{add_assign, rows_per_task, TASK_ELEMS};

simd_fn! {
    fn bias_gelu_rows(
        h: &mut [f32],
        out: &mut [f32],
        bias: Option<&[f32]>,
        oc: usize,
        exact: bool,
    ) {
        for (h, o) in h.chunks_exact_mut(oc).zip(out.chunks_exact_mut(oc)) {
            if let Some(bias) = bias {
                add_assign(h, bias);
            }
            if exact {
                for (o, h) in o.iter_mut().zip(h.iter_mut()) {
                    (*o, *h) = simd::gelu_erf_and_grad(*h);
                }
            } else {
                for (o, h) in o.iter_mut().zip(h.iter_mut()) {
                    (*o, *h) = simd::gelu_tanh_and_grad(*h);
                }
            }
        }
    }
}

/// out (N, OC) = gelu(h + bias) for the c_fc output h, which is replaced by gelu′(h + bias):
/// all the backward needs, so that it is a multiplication.
pub fn bias_gelu_forward(
    h: &mut [f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    oc: usize,
    exact: bool,
) {
    let chunk = oc * rows_per_task(oc);
    h.par_chunks_mut(chunk)
        .zip(out.par_chunks_mut(chunk))
        .for_each(|(h, o)| bias_gelu_rows(h, o, bias, oc, exact));
}

/// σ(x) = 1 / (1 + e^(−x)), finite everywhere (`simd::exp` clamps its argument).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + simd::exp(-x))
}

simd_fn! {
    fn swiglu_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

/// out = silu(gate) · up element-wise, silu(g) = g σ(g); gate and up are the (N, I) outputs of
/// `gate_proj` and `up_proj`.
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    out.par_chunks_mut(TASK_ELEMS)
        .zip(gate.par_chunks(TASK_ELEMS).zip(up.par_chunks(TASK_ELEMS)))
        .for_each(|(o, (g, u))| swiglu_chunk(o, g, u));
}

simd_fn! {
    fn swiglu_backward_chunk(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        let grads = dgate.iter_mut().zip(dup.iter_mut());
        for ((dg, du), ((&d, &g), &u)) in grads.zip(dout.iter().zip(gate).zip(up)) {
            // silu′(g) = σ(g) (1 + g (1 − σ(g)))
            let s = sigmoid(g);
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
    }
}

/// Backward of `swiglu_forward`: dgate = dout · up · silu′(gate), dup = dout · silu(gate), both
/// overwritten.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = dout.len();
    assert!(dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n);
    dgate
        .par_chunks_mut(TASK_ELEMS)
        .zip(dup.par_chunks_mut(TASK_ELEMS))
        .zip(dout.par_chunks(TASK_ELEMS))
        .zip(gate.par_chunks(TASK_ELEMS).zip(up.par_chunks(TASK_ELEMS)))
        .for_each(|(((dg, du), d), (g, u))| swiglu_backward_chunk(dg, du, d, g, u));
}
