//! Many sequences advanced by one token together: the recurrent step of B streams,
//! each with its own state ρ and position, as a server decodes its live requests.
//!
//! The products with weights every stream shares become B-row matrix products:
//! `x = relu(v · encoder_h)` (B, D)·(D, N) per head and `logits = v · lm_head`
//! (B, D)·(D, V), each weight read once for all B rows instead of once per row. What
//! depends on a stream's own neurons stays per row and sparse, exactly as in
//! [`Prepared::step`]: the read and write of its ρ, `y = relu(a · encoder_v)` on its
//! active neurons only and the decoder product over its non-zero `x ⊙ y` (a dense
//! B-row product there would multiply mostly zeros). Up to 16 rows the matrix
//! product sums in the order of one row's, so each row's logits are bit for bit
//! those of [`Prepared::step`]; beyond, the blocked product rounds differently
//! (within a few ulps).

use bdh_kernels::{layer_norm, matmul, parallel_each, MatMul};

use super::edit::NO_EDITS;
use super::recurrent::{head_step, At, Head, HeadWeights};
use super::rope::{cos_sin, MAX_POSITION};
use super::{Prepared, State};
use crate::error::{Error, Result};

/// Buffers of a batched step, grown to the largest batch seen and reused.
#[derive(Debug, Default)]
pub struct BatchScratch {
    v: Vec<f32>,                 // (B, D) residual streams
    u: Vec<f32>,                 // (B, D) decoder outputs
    x: Vec<f32>,                 // (B, N) one head's neurons for every row
    rstd: Vec<f32>,              // (B)
    rows: Vec<Row>,              // (≥ B) kept from the largest batch
    logits: Vec<f32>,            // (B, V)
    dims: (usize, usize, usize), // (D, N, H) the rows were made for
}

/// One stream's per-head scratch and the rotation of its position.
#[derive(Clone, Debug)]
struct Row {
    heads: Vec<Head>, // (H)
    cos: Vec<f32>,    // (N/2)
    sin: Vec<f32>,    // (N/2)
}

/// One (row, head) of a layer's step: the unit of parallel work.
struct Work<'a> {
    row: usize,
    head: usize,
    pos: usize,
    hd: &'a mut Head,
    rho: &'a mut [f32], // (N, D) this head's ρ in this layer of this row's state
    cos: &'a [f32],
    sin: &'a [f32],
}

impl Prepared {
    /// Consumes one token per state (`tokens[b]` after what `states[b]` has read) and
    /// returns the logits for the next token of every stream, (B, V). Each state keeps
    /// its own position; B = 0 does nothing.
    pub fn step_batch<'s>(
        &self,
        states: &mut [&mut State],
        scratch: &'s mut BatchScratch,
        tokens: &[u32],
    ) -> Result<&'s [f32]> {
        let m = self.model();
        let c = &m.config;
        let p = m.weights();
        let (d, h, n, vocab, b) = (c.n_embd, c.n_head, c.n_neurons(), c.vocab_size, tokens.len());
        if states.len() != b {
            return Err(Error::Input(format!("step_batch: {} states for {b} tokens", states.len())));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Input(format!("token id {bad} ≥ vocab_size {vocab}")));
        }
        for st in states.iter() {
            st.check(c)?;
            if st.pos >= MAX_POSITION {
                return Err(Error::Input(format!(
                    "a state is at position {}: past 2^24 ({MAX_POSITION}) positions are no longer exact in f32",
                    st.pos
                )));
            }
        }
        let s = scratch;
        s.resize(b, d, n, h, vocab);
        if b == 0 {
            return Ok(&s.logits);
        }
        // The rotation of each stream's position.
        for (row, st) in s.rows.iter_mut().zip(states.iter()) {
            for (j, (cj, sj)) in row.cos.iter_mut().zip(row.sin.iter_mut()).enumerate() {
                (*cj, *sj) = cos_sin(st.pos, m.freqs[2 * j]);
            }
        }
        // v = LN(embed[token])                                            (B, D)
        for (vb, &tok) in s.v.chunks_exact_mut(d).zip(tokens) {
            vb.copy_from_slice(&p.embed[tok as usize * d..(tok as usize + 1) * d]);
        }
        layer_norm(&mut s.v, &mut s.rstd, d);
        for l in 0..c.n_layer {
            // x_h = relu(v · encoder_h), one (B, D)·(D, N) product per head (H, B, N)
            for (hi, x) in s.x.chunks_exact_mut(b * n).enumerate() {
                let encoder = &p.encoder[hi * d * n..(hi + 1) * d * n];
                matmul(x, &s.v, encoder, MatMul::new(b, d, n).relu().par());
            }
            // Per stream and head: ρ read and write, y, x ⊙ y, the decoder share.
            let mut work = Vec::with_capacity(b * h);
            for (ri, (row, st)) in s.rows.iter_mut().zip(states.iter_mut()).enumerate() {
                let Row { heads, cos, sin } = row;
                let rho_l = &mut st.rho[l * h * n * d..(l + 1) * h * n * d];
                for (hi, (hd, rho)) in heads.iter_mut().zip(rho_l.chunks_exact_mut(n * d)).enumerate() {
                    work.push(Work { row: ri, head: hi, pos: st.pos, hd, rho, cos, sin });
                }
            }
            let (v, x) = (&s.v, &s.x);
            parallel_each(&mut work, |w| {
                let weights = HeadWeights {
                    encoder: &p.encoder[w.head * d * n..(w.head + 1) * d * n],
                    encoder_v_t: &self.encoder_v_t()[w.head * n * d..(w.head + 1) * n * d],
                    decoder: &p.decoder[w.head * n * d..(w.head + 1) * n * d],
                };
                let at = At { layer: l, head: w.head, pos: w.pos, edits: &NO_EDITS };
                let vb = &v[w.row * d..(w.row + 1) * d];
                let xb = &x[(w.head * b + w.row) * n..(w.head * b + w.row + 1) * n];
                self.decay(w.head, w.rho);
                head_step(w.hd, w.rho, vb, Some(xb), weights, (w.cos, w.sin), false, at);
            });
            drop(work);
            // u = Σ_h z_h · decoder_h;  v = LN(v + LN(u))                  (B, D)
            for (ub, row) in s.u.chunks_exact_mut(d).zip(&s.rows) {
                ub.fill(0.0);
                for hd in &row.heads {
                    ub.iter_mut().zip(hd.u()).for_each(|(o, &x)| *o += x);
                }
            }
            layer_norm(&mut s.u, &mut s.rstd, d);
            s.v.iter_mut().zip(&s.u).for_each(|(vi, &ui)| *vi += ui);
            layer_norm(&mut s.v, &mut s.rstd, d);
        }
        // logits = v · lm_head                                            (B, V)
        matmul(&mut s.logits, &s.v, p.lm_head, MatMul::new(b, d, vocab).par());
        for st in states.iter_mut() {
            st.pos += 1;
        }
        Ok(&s.logits)
    }
}

impl BatchScratch {
    /// Sizes every buffer for `b` streams, keeping what earlier batches allocated.
    fn resize(&mut self, b: usize, d: usize, n: usize, h: usize, vocab: usize) {
        if self.dims != (d, n, h) {
            self.rows.clear();
            self.dims = (d, n, h);
        }
        self.v.resize(b * d, 0.0);
        self.u.resize(b * d, 0.0);
        self.x.resize(h * b * n, 0.0);
        self.rstd.resize(b, 0.0);
        self.logits.resize(b * vocab, 0.0);
        // Rows are only ever added, so a batch that shrinks and grows again reuses them.
        let more = b.saturating_sub(self.rows.len());
        self.rows.extend(
            std::iter::repeat_with(|| Row {
                heads: vec![Head::new(d, n); h],
                cos: vec![0.0; n / 2],
                sin: vec![0.0; n / 2],
            })
            .take(more),
        );
    }
}
