//! rnn-seq2seq: the recurrent encoder–decoder with attention of Bahdanau et al. (2015, "Neural
//! Machine Translation by Jointly Learning to Align and Translate") and Luong et al. (2015,
//! "Effective Approaches to Attention-based Neural Machine Translation").
//!
//! - Encoder: a bidirectional GRU or LSTM over the source embeddings; each position's state is
//!   [forward; backward] (2·hidden).
//! - The decoder's first state: tanh(W [last forward state; first backward state]).
//! - Bahdanau (additive) attention, scored from the previous decoder state: e_j =
//!   vᵀ tanh(W_s s_{t−1} + W_h h_j); the decoder cell reads [embedding; context].
//! - Luong attention, scored from the new decoder state: dot (s_t · W_h h_j, the encoder states
//!   projected to the decoder's size once) or general (s_t · W_a W_h h_j); the cell reads the
//!   embedding alone.
//! - Output: tanh(W_o [s_t; context; embedding]) of the embedding size, times the target
//!   embedding table (tied) plus a bias, gives the logits.
//! - Teacher forcing with a ratio: at each training step the next input is the reference token
//!   with that probability, the model's own best guess otherwise.
//!
//! Decoding runs through the shared engine on an [`EncodedRnn`]: the encoder states and their
//! attention projections are computed once per source and live in the cache with the decoder
//! state, so beam search reorders them together.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::{Cache, Decoder};
use crate::nn::linear::{maybe_dropout, Dropout, Linear};
use crate::nn::params::{Init, Params};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    Gru,
    Lstm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionKind {
    Bahdanau,
    LuongDot,
    LuongGeneral,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RnnConfig {
    /// Filled in from the tokenizer when training starts.
    #[serde(default)]
    pub vocab_size: usize,
    pub cell: CellKind,
    pub attention: AttentionKind,
    pub emb_dim: usize,
    /// Encoder state size per direction.
    pub enc_hidden: usize,
    pub dec_hidden: usize,
    /// Attention's hidden size (Bahdanau).
    #[serde(default = "default_attn")]
    pub attn_dim: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f32,
    /// Probability that a training step feeds the reference token rather than the model's own.
    #[serde(default = "one")]
    pub teacher_forcing: f64,
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default = "yes")]
    pub share_embeddings: bool,
    #[serde(default)]
    pub bos_id: u32,
    #[serde(default)]
    pub eos_id: u32,
    #[serde(default)]
    pub pad_id: u32,
}

fn default_attn() -> usize {
    256
}
fn default_dropout() -> f32 {
    0.3
}
fn one() -> f64 {
    1.0
}
fn default_max_len() -> usize {
    128
}
fn yes() -> bool {
    true
}

impl RnnConfig {
    pub fn validate(&self) -> Result<()> {
        if self.emb_dim == 0 || self.enc_hidden == 0 || self.dec_hidden == 0 {
            return Err(Error::Invalid(
                "emb_dim, enc_hidden and dec_hidden must be positive".into(),
            ));
        }
        if self.max_len < 2 {
            return Err(Error::Invalid(format!(
                "max_len ({}) must be at least 2",
                self.max_len
            )));
        }
        if !(0.0..=1.0).contains(&self.teacher_forcing) {
            return Err(Error::Invalid(format!(
                "teacher_forcing ({}) must be between 0 and 1",
                self.teacher_forcing
            )));
        }
        Ok(())
    }
}

/// A recurrent state: h, and the memory cell of an LSTM.
#[derive(Debug, Clone)]
pub struct State {
    h: Tensor,
    c: Option<Tensor>,
}

/// One GRU or LSTM cell in PyTorch's gate layout (GRU r, z, n; LSTM i, f, g, o), with the
/// input-to-hidden product passed in so that a whole sequence's can be computed in one matmul.
#[derive(Debug, Clone)]
struct Cell {
    kind: CellKind,
    ih: Linear,
    hh: Linear,
    hidden: usize,
}

impl Cell {
    fn new(p: &mut Params, name: &str, kind: CellKind, d_in: usize, hidden: usize) -> Result<Self> {
        let gates = match kind {
            CellKind::Gru => 3,
            CellKind::Lstm => 4,
        };
        Ok(Cell {
            kind,
            ih: Linear::new(p, &format!("{name}.ih"), d_in, gates * hidden, true)?,
            hh: Linear::new(p, &format!("{name}.hh"), hidden, gates * hidden, true)?,
            hidden,
        })
    }

    fn zero(&self, batch: usize, device: &Device) -> Result<State> {
        let z = Tensor::zeros((batch, self.hidden), DType::F32, device)?;
        Ok(State {
            h: z.clone(),
            c: (self.kind == CellKind::Lstm).then_some(z),
        })
    }

    /// The next state from the input's projection `xi` (B, gates·H) and the state.
    fn step(&self, xi: &Tensor, s: &State) -> Result<State> {
        let h = self.hidden;
        let hh = self.hh.forward(&s.h)?;
        match self.kind {
            CellKind::Gru => {
                let rz = (xi.narrow(1, 0, 2 * h)? + hh.narrow(1, 0, 2 * h)?)?;
                let rz = candle_nn::ops::sigmoid(&rz)?;
                let (r, z) = (rz.narrow(1, 0, h)?, rz.narrow(1, h, h)?);
                let n = (xi.narrow(1, 2 * h, h)? + (r * hh.narrow(1, 2 * h, h)?)?)?.tanh()?;
                // h' = (1 − z)·n + z·h = n + z·(h − n)
                let next = (&n + (z * (&s.h - &n)?)?)?;
                Ok(State { h: next, c: None })
            }
            CellKind::Lstm => {
                let g = (xi + hh)?;
                let i = candle_nn::ops::sigmoid(&g.narrow(1, 0, h)?)?;
                let f = candle_nn::ops::sigmoid(&g.narrow(1, h, h)?)?;
                let gg = g.narrow(1, 2 * h, h)?.tanh()?;
                let o = candle_nn::ops::sigmoid(&g.narrow(1, 3 * h, h)?)?;
                let c_prev = s.c.as_ref().expect("an LSTM state has a memory cell");
                let c = ((f * c_prev)? + (i * gg)?)?;
                let next = (o * c.tanh()?)?;
                Ok(State {
                    h: next,
                    c: Some(c),
                })
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct RnnSeq2Seq {
    pub cfg: RnnConfig,
    src_embed: Tensor,
    tgt_embed: Tensor,
    fwd: Cell,
    bwd: Cell,
    init: Linear,
    /// Encoder states → attention space (Bahdanau: attn_dim; Luong: dec_hidden).
    mem_proj: Linear,
    /// Bahdanau: decoder state → attention space, and the scoring vector.
    query: Option<Linear>,
    score_v: Option<Tensor>,
    /// Luong general: s_t W_a.
    general: Option<Linear>,
    dec: Cell,
    pre_out: Linear,
    out_bias: Tensor,
}

impl RnnSeq2Seq {
    pub fn new(cfg: &RnnConfig, p: &mut Params) -> Result<Self> {
        cfg.validate()?;
        let (v, e, he, hd) = (cfg.vocab_size, cfg.emb_dim, cfg.enc_hidden, cfg.dec_hidden);
        let init = Init::Normal((e as f32).powf(-0.5));
        let (src_embed, tgt_embed) = if cfg.share_embeddings {
            let t = p.get("shared.weight", &[v, e], init)?;
            (t.clone(), t)
        } else {
            (
                p.get("encoder.embed.weight", &[v, e], init)?,
                p.get("decoder.embed.weight", &[v, e], init)?,
            )
        };
        let bahdanau = cfg.attention == AttentionKind::Bahdanau;
        let attn_out = if bahdanau { cfg.attn_dim } else { hd };
        let dec_in = if bahdanau { e + 2 * he } else { e };
        Ok(RnnSeq2Seq {
            cfg: cfg.clone(),
            src_embed,
            tgt_embed,
            fwd: Cell::new(p, "encoder.forward", cfg.cell, e, he)?,
            bwd: Cell::new(p, "encoder.backward", cfg.cell, e, he)?,
            init: Linear::new(p, "decoder.init", 2 * he, hd, true)?,
            mem_proj: Linear::new(p, "attention.memory", 2 * he, attn_out, !bahdanau)?,
            query: match bahdanau {
                true => Some(Linear::new(p, "attention.query", hd, cfg.attn_dim, true)?),
                false => None,
            },
            score_v: match bahdanau {
                true => Some(p.get("attention.v", &[cfg.attn_dim, 1], Init::Xavier)?),
                false => None,
            },
            general: match cfg.attention {
                AttentionKind::LuongGeneral => {
                    Some(Linear::new(p, "attention.general", hd, hd, false)?)
                }
                _ => None,
            },
            dec: Cell::new(p, "decoder.cell", cfg.cell, dec_in, hd)?,
            pre_out: Linear::new(p, "decoder.pre_out", hd + 2 * he + e, e, true)?,
            out_bias: p.get("decoder.out_bias", &[v], Init::Zeros)?,
        })
    }

    /// Encoder states (B, S, 2·H) for source ids (B, S) of lengths `lens`: padding positions
    /// are skipped by both directions (the backward direction starts at each row's last token),
    /// and their states are zero.
    fn encode(&self, src: &Tensor, lens: &[usize], rng: Dropout) -> Result<(Tensor, State)> {
        let (b, s) = src.dims2()?;
        let dev = src.device();
        let x = embed(&self.src_embed, src)?;
        let x = maybe_dropout(&x, self.cfg.dropout, rng)?;
        let xf = self.fwd.ih.forward(&x)?;
        let xb = self.bwd.ih.forward(&x)?;
        // valid[t] (B, 1): 1 where position t is a real token.
        let valid: Vec<Tensor> = (0..s)
            .map(|t| {
                let m: Vec<f32> = lens.iter().map(|&l| (t < l) as u8 as f32).collect();
                Tensor::from_vec(m, (b, 1), dev)
            })
            .collect::<candle_core::Result<_>>()?;
        // A state moves only where the position is real: s' = s + valid·(cell(s) − s).
        let advance = |cell: &Cell, xi: &Tensor, st: &State, m: &Tensor| -> Result<State> {
            let n = cell.step(xi, st)?;
            let mix = |new: &Tensor, old: &Tensor| -> Result<Tensor> {
                Ok((old + m.broadcast_mul(&(new - old)?)?)?)
            };
            Ok(State {
                h: mix(&n.h, &st.h)?,
                c: match (&n.c, &st.c) {
                    (Some(a), Some(o)) => Some(mix(a, o)?),
                    _ => None,
                },
            })
        };
        let mut sf = self.fwd.zero(b, dev)?;
        let mut outs_f = Vec::with_capacity(s);
        for (t, m) in valid.iter().enumerate() {
            sf = advance(&self.fwd, &xf.i((.., t))?, &sf, m)?;
            outs_f.push(m.broadcast_mul(&sf.h)?);
        }
        let mut sb = self.bwd.zero(b, dev)?;
        let mut outs_b = vec![None; s];
        for t in (0..s).rev() {
            sb = advance(&self.bwd, &xb.i((.., t))?, &sb, &valid[t])?;
            outs_b[t] = Some(valid[t].broadcast_mul(&sb.h)?);
        }
        let outs_b: Vec<Tensor> = outs_b.into_iter().flatten().collect();
        let hf = Tensor::stack(&outs_f, 1)?;
        let hb = Tensor::stack(&outs_b, 1)?;
        let memory = Tensor::cat(&[&hf, &hb], 2)?;
        let h0 = self
            .init
            .forward(&Tensor::cat(&[&sf.h, &sb.h], 1)?)?
            .tanh()?;
        let c0 = (self.cfg.cell == CellKind::Lstm)
            .then(|| h0.zeros_like())
            .transpose()?;
        Ok((memory, State { h: h0, c: c0 }))
    }

    /// Attention weights (B, S) and context (B, 2·H) for query state `q` (B, dec_hidden).
    fn attend(
        &self,
        q: &Tensor,
        mem: &Tensor,
        keys: &Tensor,
        mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let scores = match self.cfg.attention {
            AttentionKind::Bahdanau => {
                let qp = self
                    .query
                    .as_ref()
                    .expect("bahdanau has a query layer")
                    .forward(q)?;
                let hidden = keys.broadcast_add(&qp.unsqueeze(1)?)?.tanh()?;
                let v = self.score_v.as_ref().expect("bahdanau has a score vector");
                let (b, s, a) = hidden.dims3()?;
                hidden.reshape((b * s, a))?.matmul(v)?.reshape((b, s))?
            }
            AttentionKind::LuongDot | AttentionKind::LuongGeneral => {
                let q = match &self.general {
                    Some(g) => g.forward(q)?,
                    None => q.clone(),
                };
                keys.matmul(&q.unsqueeze(2)?)?.squeeze(2)?
            }
        };
        let w = candle_nn::ops::softmax(&(scores + mask)?, D::Minus1)?;
        let ctx = w.unsqueeze(1)?.matmul(mem)?.squeeze(1)?;
        Ok((w, ctx))
    }

    /// One decoder step: logits (B, V), the new state and the attention weights (B, S).
    fn dec_step(
        &self,
        tok: &Tensor,
        st: &State,
        enc: &Memory,
        rng: Dropout,
    ) -> Result<(Tensor, State, Tensor)> {
        let emb = maybe_dropout(&self.tgt_embed.index_select(tok, 0)?, self.cfg.dropout, rng)?;
        let (next, w, ctx) = self.recur(&emb, st, enc)?;
        let logits = self.output(&next.h, &ctx, &emb, rng)?;
        Ok((logits, next, w))
    }

    /// The recurrent half of a decoder step, from the input embedding (B, E): the new state,
    /// the attention weights (B, S) and the context (B, 2·H).
    fn recur(&self, emb: &Tensor, st: &State, enc: &Memory) -> Result<(State, Tensor, Tensor)> {
        Ok(match self.cfg.attention {
            AttentionKind::Bahdanau => {
                let (w, ctx) = self.attend(&st.h, &enc.memory, &enc.keys, &enc.mask)?;
                let xi = self.dec.ih.forward(&Tensor::cat(&[emb, &ctx], 1)?)?;
                (self.dec.step(&xi, st)?, w, ctx)
            }
            _ => {
                let next = self.dec.step(&self.dec.ih.forward(emb)?, st)?;
                let (w, ctx) = self.attend(&next.h, &enc.memory, &enc.keys, &enc.mask)?;
                (next, w, ctx)
            }
        })
    }

    /// The output half: logits (N, V) from the states (N, dec_hidden), contexts (N, 2·H) and
    /// input embeddings (N, E) of any number of steps at once.
    fn output(&self, h: &Tensor, ctx: &Tensor, emb: &Tensor, rng: Dropout) -> Result<Tensor> {
        let pre = self
            .pre_out
            .forward(&Tensor::cat(&[h, ctx, emb], 1)?)?
            .tanh()?;
        let pre = maybe_dropout(&pre, self.cfg.dropout, rng)?;
        Ok(pre
            .matmul(&self.tgt_embed.t()?)?
            .broadcast_add(&self.out_bias)?)
    }

    fn memory(&self, src_rows: &[Vec<u32>], rng: Dropout) -> Result<(Memory, State)> {
        let device = self.src_embed.device();
        let (ids, mask) = crate::models::seq2seq::source_batch(src_rows, self.cfg.pad_id, device)?;
        let lens: Vec<usize> = src_rows.iter().map(Vec::len).collect();
        let (memory, st) = self.encode(&ids, &lens, rng)?;
        let keys = self.mem_proj.forward(&memory)?;
        let (b, s) = ids.dims2()?;
        Ok((
            Memory {
                memory,
                keys,
                mask: mask.reshape((b, s))?,
            },
            st,
        ))
    }

    /// Training logits (B, T, V) for the decoder inputs (B, T) (start token + target). With
    /// teacher forcing below 1, each step after the first feeds, per batch, the reference token
    /// with that probability and the model's previous best token otherwise.
    pub fn forward(&self, src_rows: &[Vec<u32>], tgt_in: &Tensor, rng: Dropout) -> Result<Tensor> {
        let (enc, mut st) = self.memory(src_rows, rng)?;
        let (b, t) = tgt_in.dims2()?;
        if rng.is_none() || self.cfg.teacher_forcing >= 1.0 {
            // Every input is known up front: look the embeddings up once, run only the
            // recurrence step by step, and compute the output layer for all steps in one
            // product (one gradient for the tied table instead of one per step).
            let e = self.cfg.emb_dim;
            let emb = maybe_dropout(&embed(&self.tgt_embed, tgt_in)?, self.cfg.dropout, rng)?;
            let (mut hs, mut ctxs) = (Vec::with_capacity(t), Vec::with_capacity(t));
            for i in 0..t {
                let (next, _, ctx) = self.recur(&emb.i((.., i))?, &st, &enc)?;
                hs.push(next.h.clone());
                ctxs.push(ctx);
                st = next;
            }
            let h = Tensor::stack(&hs, 1)?.reshape((b * t, ()))?;
            let ctx = Tensor::stack(&ctxs, 1)?.reshape((b * t, ()))?;
            let logits = self.output(&h, &ctx, &emb.reshape((b * t, e))?, rng)?;
            return Ok(logits.reshape((b, t, ()))?);
        }
        let mut logits = Vec::with_capacity(t);
        let mut tok = tgt_in.i((.., 0))?.contiguous()?;
        for i in 0..t {
            let (l, next, _) = self.dec_step(&tok, &st, &enc, rng)?;
            st = next;
            if i + 1 < t {
                let forced = match rng {
                    Some(r) => r.borrow_mut().gen::<f64>() < self.cfg.teacher_forcing,
                    None => true,
                };
                tok = if forced {
                    tgt_in.i((.., i + 1))?.contiguous()?
                } else {
                    l.detach().argmax(D::Minus1)?
                };
            }
            logits.push(l);
        }
        Ok(Tensor::stack(&logits, 1)?)
    }

    /// Encodes source id rows for decoding.
    pub fn encode_sources(&self, rows: &[Vec<u32>]) -> Result<EncodedRnn<'_>> {
        let (enc, st) = self.memory(rows, None)?;
        Ok(EncodedRnn {
            model: self,
            enc,
            start: st,
        })
    }

    /// The attention weights (target tokens × source tokens) of decoding `tgt` (without the
    /// start token) after `src`, teacher-forced.
    pub fn attention_map(&self, src: &[u32], tgt: &[u32]) -> Result<Vec<Vec<f32>>> {
        let (enc, mut st) = self.memory(&[src.to_vec()], None)?;
        let dev = self.src_embed.device();
        let mut rows = Vec::new();
        let mut prev = self.cfg.bos_id;
        for &t in tgt {
            let tok = Tensor::new(&[prev], dev)?;
            let (_, next, w) = self.dec_step(&tok, &st, &enc, None)?;
            rows.push(w.flatten_all()?.to_vec1::<f32>()?);
            st = next;
            prev = t;
        }
        Ok(rows)
    }
}

/// Rows of `table` for the ids (B, T): (B, T, E).
fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    Ok(table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, table.dim(1)?))?)
}

/// Encoder states of a batch of sources, their attention projections, and the padding mask.
#[derive(Debug, Clone)]
pub struct Memory {
    memory: Tensor,
    keys: Tensor,
    /// (B, S) additive.
    mask: Tensor,
}

pub struct EncodedRnn<'m> {
    model: &'m RnnSeq2Seq,
    enc: Memory,
    start: State,
}

#[derive(Debug, Clone)]
pub struct RnnCache {
    enc: Memory,
    state: State,
    pos: usize,
}

impl Decoder for EncodedRnn<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn context_len(&self) -> usize {
        self.model.cfg.max_len
    }

    fn new_cache(&self, batch: usize) -> Result<Cache> {
        let rows = self.enc.memory.dim(0)?;
        if batch != rows {
            return Err(Error::Invalid(format!(
                "a cache of {batch} rows for {rows} encoded sources"
            )));
        }
        Ok(Cache::new(RnnCache {
            enc: self.enc.clone(),
            state: self.start.clone(),
            pos: 0,
        }))
    }

    fn step(&self, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>> {
        let cache = cache.get::<RnnCache>()?;
        let t = tokens.len() / batch.max(1);
        if t == 0 || t * batch != tokens.len() {
            return Err(Error::Invalid(format!(
                "step: {} tokens do not form {batch} rows",
                tokens.len()
            )));
        }
        let dev = self.enc.memory.device();
        // Only the last token's logits are returned: earlier ones run the recurrence alone.
        for i in 0..t - 1 {
            let col: Vec<u32> = (0..batch).map(|r| tokens[r * t + i]).collect();
            let emb = self
                .model
                .tgt_embed
                .index_select(&Tensor::from_vec(col, batch, dev)?, 0)?;
            cache.state = self.model.recur(&emb, &cache.state, &cache.enc)?.0;
        }
        let col: Vec<u32> = (0..batch).map(|r| tokens[r * t + t - 1]).collect();
        let tok = Tensor::from_vec(col, batch, dev)?;
        let (l, next, _) = self.model.dec_step(&tok, &cache.state, &cache.enc, None)?;
        cache.state = next;
        cache.pos += t;
        Ok(l.flatten_all()?.to_vec1()?)
    }

    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> Result<()> {
        let cache = cache.get::<RnnCache>()?;
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            self.enc.memory.device(),
        )?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        cache.enc = Memory {
            memory: pick(&cache.enc.memory)?,
            keys: pick(&cache.enc.keys)?,
            mask: pick(&cache.enc.mask)?,
        };
        cache.state = State {
            h: pick(&cache.state.h)?,
            c: cache.state.c.as_ref().map(pick).transpose()?,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_abs_diff;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn tiny(cell: CellKind, attention: AttentionKind) -> RnnConfig {
        RnnConfig {
            vocab_size: 13,
            cell,
            attention,
            emb_dim: 6,
            enc_hidden: 5,
            dec_hidden: 7,
            attn_dim: 4,
            dropout: 0.0,
            teacher_forcing: 1.0,
            max_len: 16,
            share_embeddings: true,
            bos_id: 0,
            eos_id: 0,
            pad_id: 0,
        }
    }

    /// Stepping the decoder through the engine's trait gives the teacher-forced logits, for
    /// every cell and attention, and a padded source gives what it gives alone.
    #[test]
    fn incremental_decoding_matches_teacher_forcing() {
        for cell in [CellKind::Gru, CellKind::Lstm] {
            for att in [
                AttentionKind::Bahdanau,
                AttentionKind::LuongDot,
                AttentionKind::LuongGeneral,
            ] {
                let cfg = tiny(cell, att);
                let mut p = Params::init(ChaCha8Rng::seed_from_u64(3), &Device::Cpu);
                let m = RnnSeq2Seq::new(&cfg, &mut p).unwrap();
                let src = vec![vec![3, 4, 5, 6], vec![7, 8]];
                let tgt = [0u32, 5, 2, 9];
                let tgt_in = Tensor::from_vec([tgt, tgt].concat(), (2, 4), &Device::Cpu).unwrap();
                let full = m.forward(&src, &tgt_in, None).unwrap();
                let enc = m.encode_sources(&src).unwrap();
                let mut cache = enc.new_cache(2).unwrap();
                for (i, &tok) in tgt.iter().enumerate() {
                    let got = enc.step(&[tok, tok], 2, &mut cache).unwrap();
                    let want: Vec<f32> = full
                        .i((.., i, ..))
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let d = max_abs_diff(&got, &want);
                    assert!(d < 1e-5, "{cell:?} {att:?} step {i}: {d}");
                }
                let alone = m.encode_sources(&src[1..]).unwrap();
                let mut c1 = alone.new_cache(1).unwrap();
                let got = alone.step(&[0], 1, &mut c1).unwrap();
                let want: Vec<f32> = full.i((1, 0, ..)).unwrap().to_vec1().unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(
                    d < 1e-5,
                    "{cell:?} {att:?}: padding changed the result by {d}"
                );
            }
        }
    }

    /// Training's two decoder paths agree: with the reference fed at every step, the per-step
    /// path (teacher forcing below 1) gives the batched path's logits; with teacher forcing 0
    /// each step is fed the previous step's best token, so the logits are greedy decoding's.
    #[test]
    fn teacher_forcing_paths_match() {
        let dev = Device::Cpu;
        for att in [AttentionKind::Bahdanau, AttentionKind::LuongGeneral] {
            let mut cfg = tiny(CellKind::Gru, att);
            let mut p = Params::init(ChaCha8Rng::seed_from_u64(7), &dev);
            let m = RnnSeq2Seq::new(&cfg, &mut p).unwrap();
            let src = vec![vec![3, 4, 5, 6]];
            let tgt_in = Tensor::new(&[[0u32, 5, 2, 9, 4]], &dev).unwrap();
            let batched = m.forward(&src, &tgt_in, None).unwrap();
            // Several tokens in one decoder step return the last one's logits.
            let enc = m.encode_sources(&src).unwrap();
            let mut cache = enc.new_cache(1).unwrap();
            let got = enc.step(&[0, 5, 2, 9, 4], 1, &mut cache).unwrap();
            let want: Vec<f32> = batched.i((0, 4)).unwrap().to_vec1().unwrap();
            assert!(
                max_abs_diff(&got, &want) < 1e-5,
                "{att:?}: multi-token step"
            );
            let rng = std::cell::RefCell::new(ChaCha8Rng::seed_from_u64(1));
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();

            // A ratio this close to 1 feeds the reference on every one of these few draws.
            cfg.teacher_forcing = 1.0 - 1e-9;
            let per_step = RnnSeq2Seq {
                cfg: cfg.clone(),
                ..m.clone()
            };
            let got = per_step.forward(&src, &tgt_in, Some(&rng)).unwrap();
            let d = max_abs_diff(&flat(&got), &flat(&batched));
            assert!(d < 1e-6, "{att:?}: per-step vs batched {d}");

            cfg.teacher_forcing = 0.0;
            let free = RnnSeq2Seq { cfg, ..m.clone() };
            let got = free.forward(&src, &tgt_in, Some(&rng)).unwrap();
            let enc = m.encode_sources(&src).unwrap();
            let mut cache = enc.new_cache(1).unwrap();
            let mut tok = 0u32;
            for i in 0..5 {
                let want = enc.step(&[tok], 1, &mut cache).unwrap();
                let row: Vec<f32> = got.i((0, i)).unwrap().to_vec1().unwrap();
                let d = max_abs_diff(&row, &want);
                assert!(d < 1e-5, "{att:?} step {i}: {d}");
                tok = crate::decode::processors::argmax(&want);
            }
        }
    }

    /// The GRU cell is PyTorch's: h' = (1 − z) n + z h, n = tanh(x_n + r (W_hn h + b_hn)).
    #[test]
    fn gru_cell_matches_its_formula() {
        let mut p = Params::init(ChaCha8Rng::seed_from_u64(5), &Device::Cpu);
        let cell = Cell::new(&mut p, "c", CellKind::Gru, 3, 2).unwrap();
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0]], &Device::Cpu).unwrap();
        let h = Tensor::new(&[[0.3f32, -0.2]], &Device::Cpu).unwrap();
        let xi = cell.ih.forward(&x).unwrap();
        let got = cell
            .step(
                &xi,
                &State {
                    h: h.clone(),
                    c: None,
                },
            )
            .unwrap()
            .h
            .to_vec2::<f32>()
            .unwrap();
        let xi = xi.to_vec2::<f32>().unwrap()[0].clone();
        let hh = cell.hh.forward(&h).unwrap().to_vec2::<f32>().unwrap()[0].clone();
        let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
        let hv = [0.3f32, -0.2];
        for j in 0..2 {
            let r = sig(xi[j] + hh[j]);
            let z = sig(xi[2 + j] + hh[2 + j]);
            let n = (xi[4 + j] + r * hh[4 + j]).tanh();
            let want = (1.0 - z) * n + z * hv[j];
            assert!((got[0][j] - want).abs() < 1e-6);
        }
    }
}
