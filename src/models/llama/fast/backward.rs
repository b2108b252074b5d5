//! The backward of `FtModel::forward`.

use rayon::prelude::*;

use super::*;

impl FtModel {
    /// The backward of `forward` for `scale` × the summed loss: accumulates into `grads` (laid
    /// out as `params()`).
    pub fn backward(&self, b: &Packed, acts: Activations, scale: f32, grads: &mut [f32]) {
        assert_eq!(
            grads.len(),
            self.params().data.len(),
            "gradient buffer size"
        );
        let (c, n, m) = (self.cfg.hidden_size, b.ids.len(), b.targets.len());
        let full = matches!(self.method, Method::Full);
        let mut acts = acts;
        let mut layers = std::mem::take(&mut acts.layers);
        let tail = acts;
        let mut dx = vec![0f32; n * c];
        let mut scratch_c = vec![0f32; c];
        if m > 0 {
            let Activations {
                mut logits,
                lse,
                targets,
                xt,
                rstd_f,
                ht,
                ..
            } = tail;
            self.head_backward(
                b,
                (&mut logits, &lse, &targets),
                (&xt, &rstd_f, &ht),
                scale,
                &mut dx,
                grads,
                &mut scratch_c,
            );
        }
        let mut tmp = vec![0f32; n * c];
        for (ids, a) in self.ids.iter().zip(layers.iter_mut()).rev() {
            let mut dh = self.mlp_backward(ids, a, b, &mut dx, &mut tmp, grads, &mut scratch_c);
            self.attn_backward(ids, a, b, &mut dx, &mut dh, &mut tmp, grads, &mut scratch_c);
            // This layer's activations are spent.
            *a = LayerActs::empty();
        }
        if full {
            let e = &self.base.entries[self.embed];
            let de = &mut grads[e.offset..e.offset + e.len];
            for (row, &id) in dx.chunks_exact(c).zip(&b.ids) {
                add(&mut de[id as usize * c..(id as usize + 1) * c], row);
            }
        }
    }

    /// The output layer's backward at the target rows: cross-entropy, head and final RMSNorm;
    /// adds the rows' input gradients into `dx`.
    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        &self,
        b: &Packed,
        (logits, lse, targets): (&mut Vec<f32>, &[f32], &[u32]),
        (xt, rstd_f, ht): (&[f32], &[f32], &[f32]),
        scale: f32,
        dx: &mut [f32],
        grads: &mut [f32],
        scratch_c: &mut [f32],
    ) {
        let (c, m, vocab) = (self.cfg.hidden_size, b.targets.len(), self.cfg.vocab_size);
        let full = matches!(self.method, Method::Full);
        // logits → dlogits, in place.
        let mut dlogits = vec![0f32; m * vocab];
        cross_entropy_backward(&mut dlogits, logits, lse, targets, scale);
        logits.clear();
        let head = self.base.get(self.head);
        let mut dht = vec![0f32; m * c];
        matmul(
            (m, c, vocab),
            &mut dht,
            false,
            Op::N(&dlogits),
            Op::N(head),
            1.0,
        );
        if full {
            let e = &self.base.entries[self.head];
            let dw = &mut grads[e.offset..e.offset + e.len];
            matmul((vocab, c, m), dw, true, Op::T(&dlogits), Op::N(ht), 1.0);
        }
        drop(dlogits);
        let mut dxt = vec![0f32; m * c];
        let dnorm = if full {
            let e = &self.base.entries[self.norm];
            &mut grads[e.offset..e.offset + e.len]
        } else {
            &mut scratch_c[..]
        };
        rmsnorm_backward(
            &mut dxt,
            dnorm,
            &dht,
            xt,
            self.base.get(self.norm),
            rstd_f,
            c,
        );
        for (row, &(r, _)) in dxt.chunks_exact(c).zip(&b.targets) {
            add(&mut dx[r * c..(r + 1) * c], row);
        }
    }

    /// The MLP half of a block's backward: from dx (the block output's gradient) to the gradient
    /// of the MLP norm's input, added into `dx`; returns a (n, C) buffer for reuse.
    #[allow(clippy::too_many_arguments)]
    fn mlp_backward(
        &self,
        ids: &LayerIds,
        a: &LayerActs,
        b: &Packed,
        dx: &mut [f32],
        tmp: &mut [f32],
        grads: &mut [f32],
        scratch_c: &mut [f32],
    ) -> Vec<f32> {
        let (c, _, _, _, inter) = self.dims();
        let n = b.ids.len();
        let full = matches!(self.method, Method::Full);
        let pr = |p: Proj| ids.proj[proj_index(p)];
        let la = |i: usize| a.lora[i].as_ref();
        // x_out = x2 + down(swiglu(gate(h2), up(h2))), h2 = norm(x2).
        let ni = n * inter;
        let mut dact = vec![0f32; ni];
        self.linear_backward(
            &mut dact,
            false,
            dx,
            &a.act,
            pr(Proj::Down),
            Proj::Down,
            la(6),
            grads,
        );
        let (mut dgate, mut dup) = (vec![0f32; ni], vec![0f32; ni]);
        swiglu_backward(&mut dgate, &mut dup, &dact, &a.gate, &a.up);
        drop(dact);
        let mut dh = vec![0f32; n * c];
        self.linear_backward(
            &mut dh,
            false,
            &dgate,
            &a.h2,
            pr(Proj::Gate),
            Proj::Gate,
            la(4),
            grads,
        );
        self.linear_backward(
            &mut dh,
            true,
            &dup,
            &a.h2,
            pr(Proj::Up),
            Proj::Up,
            la(5),
            grads,
        );
        drop((dgate, dup));
        let dw = self.norm_grad(ids.mlp_norm, full, grads, scratch_c);
        rmsnorm_backward(
            tmp,
            dw,
            &dh,
            &a.x2,
            self.base.get(ids.mlp_norm),
            &a.rstd2,
            c,
        );
        add(dx, tmp);
        dh
    }

    /// The attention half of a block's backward, adding into `dx` the gradient of the attention
    /// norm's input; `dh` is scratch of (n, C).
    #[allow(clippy::too_many_arguments)]
    fn attn_backward(
        &self,
        ids: &LayerIds,
        a: &LayerActs,
        b: &Packed,
        dx: &mut [f32],
        dh: &mut [f32],
        tmp: &mut [f32],
        grads: &mut [f32],
        scratch_c: &mut [f32],
    ) {
        let (c, nh, nkv, hd, _) = self.dims();
        let n = b.ids.len();
        let (qw, kvw) = (nh * hd, nkv * hd);
        let (c3, group) = (3 * qw, nh / nkv);
        let full = matches!(self.method, Method::Full);
        let pr = |p: Proj| ids.proj[proj_index(p)];
        let la = |i: usize| a.lora[i].as_ref();
        // x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm(x).
        let mut datt = vec![0f32; n * qw];
        self.linear_backward(
            &mut datt,
            false,
            dx,
            &a.att,
            pr(Proj::O),
            Proj::O,
            la(3),
            grads,
        );
        let mut dqkv = vec![0f32; n * c3];
        for &(s, len) in &b.seqs {
            attention_backward(
                &mut dqkv[s * c3..(s + len) * c3],
                &datt[s * qw..(s + len) * qw],
                &a.qkv[s * c3..(s + len) * c3],
                &a.att[s * qw..(s + len) * qw],
                &a.lse[s * nh..(s + len) * nh],
                AttShape {
                    b: 1,
                    t: len,
                    c: qw,
                    nh,
                },
                self.prec,
            );
        }
        drop(datt);
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
        dq.par_chunks_mut(qw)
            .zip(dk.par_chunks_mut(kvw).zip(dv.par_chunks_mut(kvw)))
            .zip(dqkv.par_chunks(c3))
            .for_each(|((dq, (dk, dv)), row)| {
                dq.copy_from_slice(&row[..qw]);
                for h in 0..nh {
                    let dst = (h / group) * hd;
                    add(&mut dk[dst..dst + hd], &row[qw + h * hd..qw + (h + 1) * hd]);
                    add(
                        &mut dv[dst..dst + hd],
                        &row[2 * qw + h * hd..2 * qw + (h + 1) * hd],
                    );
                }
            });
        drop(dqkv);
        rope(&mut dq, nh, hd, &b.seqs, &self.cos, &self.sin, true);
        rope(&mut dk, nkv, hd, &b.seqs, &self.cos, &self.sin, true);
        self.linear_backward(dh, false, &dq, &a.h1, pr(Proj::Q), Proj::Q, la(0), grads);
        self.linear_backward(dh, true, &dk, &a.h1, pr(Proj::K), Proj::K, la(1), grads);
        self.linear_backward(dh, true, &dv, &a.h1, pr(Proj::V), Proj::V, la(2), grads);
        let dw = self.norm_grad(ids.attn_norm, full, grads, scratch_c);
        rmsnorm_backward(tmp, dw, dh, &a.x, self.base.get(ids.attn_norm), &a.rstd1, c);
        add(dx, tmp);
    }

    /// The gradient slot of a norm weight: its place in `grads` (full) or a scratch buffer.
    fn norm_grad<'a>(
        &self,
        id: usize,
        full: bool,
        grads: &'a mut [f32],
        scratch: &'a mut [f32],
    ) -> &'a mut [f32] {
        if full {
            let e = &self.base.entries[id];
            &mut grads[e.offset..e.offset + e.len]
        } else {
            scratch.fill(0.0);
            scratch
        }
    }
}
