//! The recurrent form: one token at a time with a synapse state ρ per layer.
//!
//! Attention is strictly causal and has no softmax, so
//! `a_t = Σ_{τ<t} (R_t x_t · R_τ x_τ) v_τ = ρ_tᵀ R_t x_t` with `ρ_t = Σ_{τ<t} R_τ x_τ ⊗ v_τ`:
//! read `a_t` from ρ, then write `ρ += R_t x_t ⊗ v_t`. This equals the parallel
//! forward at every position, in memory that does not grow with the context.

use bdh_kernels::{gather_dot, layer_norm, matmul, rho_read_write, sparse_row_sum, transpose, MatMul};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::forward::{forward, Activations, Mode};
use crate::params::Model;
use crate::rope::cos_sin;

/// Everything a running sequence remembers: its position and ρ of each layer.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Tokens consumed so far (the position of the next one).
    pub pos: usize,
    /// ρ per layer and head, (L, H, N, D): `Σ_τ R_τ x_τ ⊗ v_τ`.
    pub rho: Vec<f32>,
}

impl State {
    /// The empty state of a sequence that has seen nothing.
    pub fn new(model: &Model) -> Self {
        let c = &model.config;
        State { pos: 0, rho: vec![0.0; c.n_layer * c.n_head * c.n_neurons() * c.n_embd] }
    }

    /// Bytes the state occupies.
    pub fn bytes(&self) -> usize {
        self.rho.len() * std::mem::size_of::<f32>()
    }
}

/// Per-head scratch of one step.
#[derive(Clone, Debug)]
struct Head {
    x: Vec<f32>,      // (N) neurons
    xr: Vec<f32>,     // (N) rotated neurons, valid on `rows`
    a: Vec<f32>,      // (D) attention readout
    y: Vec<f32>,      // (|cols|) y on the active neurons
    z: Vec<f32>,      // (N) x ⊙ y, valid on `z_rows`
    u: Vec<f32>,      // (D) this head's share of the decoder output
    rows: Vec<u32>,   // rows of the active RoPE pairs
    cols: Vec<u32>,   // active neurons
    z_rows: Vec<u32>, // non-zero entries of z
}

/// Runs a model one token at a time; holds the state and per-step scratch.
#[derive(Debug)]
pub struct Recurrent<'m> {
    model: &'m Model,
    encoder_v_t: Vec<f32>, // (H, N, D) encoder_v with each neuron's weights contiguous
    /// The sequence's state.
    pub state: State,
    v: Vec<f32>,       // (D) residual stream
    u: Vec<f32>,       // (D) decoder output
    heads: Vec<Head>,  // (H)
    logits: Vec<f32>,  // (V)
    cos: Vec<f32>,     // (N/2) RoPE rotation of the current position, per pair
    sin: Vec<f32>,     // (N/2)
    skip_silent: bool, // touch only rows of active neurons (false: every row, for comparison)
}

impl<'m> Recurrent<'m> {
    /// A runner over `model` starting from the empty state.
    pub fn new(model: &'m Model) -> Self {
        let c = &model.config;
        let (d, n, hn) = (c.n_embd, c.n_neurons(), c.total_neurons());
        // encoder_v transposed per head, (H, D, N) → (H, N, D), for the gathered products.
        let mut encoder_v_t = vec![0.0; hn * d];
        for (src, dst) in model.params.encoder_v.chunks_exact(d * n).zip(encoder_v_t.chunks_exact_mut(n * d)) {
            transpose(dst, src, d, n);
        }
        let head = Head {
            x: vec![0.0; n],
            xr: vec![0.0; n],
            a: vec![0.0; d],
            y: Vec::with_capacity(n),
            z: vec![0.0; n],
            u: vec![0.0; d],
            rows: Vec::with_capacity(n),
            cols: Vec::with_capacity(n),
            z_rows: Vec::with_capacity(n),
        };
        Recurrent {
            model,
            encoder_v_t,
            state: State::new(model),
            v: vec![0.0; d],
            u: vec![0.0; d],
            heads: vec![head; c.n_head],
            logits: vec![0.0; c.vocab_size],
            cos: vec![0.0; n / 2],
            sin: vec![0.0; n / 2],
            skip_silent: true,
        }
    }

    /// A runner that reads and writes every row of ρ, `encoder_v` and `decoder`
    /// whether its neuron fired or not: the same numbers, without the sparse
    /// savings, as a baseline for them.
    pub fn dense(model: &'m Model) -> Self {
        Recurrent { skip_silent: false, ..Recurrent::new(model) }
    }

    /// Consumes `tokens` with the parallel forward, sets ρ to what the recurrent
    /// steps would have built, and returns the logits after the last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill: empty prompt".into()));
        }
        if self.state.pos != 0 {
            // A parallel pass starts at position 0; continue a sequence step by step.
            for &tok in tokens {
                self.step(tok)?;
            }
            return Ok(&self.logits);
        }
        let c = &self.model.config;
        let (t, d, h, n, v) = (tokens.len(), c.n_embd, c.n_head, c.n_neurons(), c.vocab_size);
        let mut acts = Activations::new(self.model, 1, t);
        forward(self.model, tokens, &mut acts, Mode::Eval)?;
        for l in 0..c.n_layer {
            let v_in = acts.residual(l); //                                   (T, D)
            for hi in 0..h {
                // ρ = Σ_τ R_τ x_τ ⊗ v_τ = R(x)ᵀ · v                           (N, D)
                let xr = &acts.x_rotated(l)[hi * t * n..(hi + 1) * t * n];
                let rho = &mut self.state.rho[(l * h + hi) * n * d..(l * h + hi + 1) * n * d];
                matmul(rho, xr, v_in, MatMul::new(n, t, d).a_t());
            }
        }
        self.state.pos = t;
        self.logits.copy_from_slice(&acts.logits[(t - 1) * v..t * v]);
        Ok(&self.logits)
    }

    /// Consumes one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        let m = self.model;
        let c = &m.config;
        let p = &m.params;
        let (d, h, n, vocab) = (c.n_embd, c.n_head, c.n_neurons(), c.vocab_size);
        if token as usize >= vocab {
            return Err(Error::Input(format!("token id {token} ≥ vocab_size {vocab}")));
        }
        let t = self.state.pos;
        let mut rstd = [0.0f32];
        // The rotation of position t, shared by every layer and head.
        for (j, (c, s)) in self.cos.iter_mut().zip(self.sin.iter_mut()).enumerate() {
            (*c, *s) = cos_sin(t, m.freqs[2 * j]);
        }

        // v = LN(embed[token])                                              (D)
        self.v.copy_from_slice(&p.embed[token as usize * d..(token as usize + 1) * d]);
        layer_norm(&mut self.v, &mut rstd, d);
        for l in 0..c.n_layer {
            // Heads are independent until the decoder sums them: one task each.
            let rho_l = &mut self.state.rho[l * h * n * d..(l + 1) * h * n * d];
            let (v, cos, sin, dense) = (&self.v, &self.cos, &self.sin, !self.skip_silent);
            let enc_v_t = &self.encoder_v_t;
            self.heads.par_iter_mut().zip(rho_l.par_chunks_mut(n * d)).enumerate().for_each(|(hi, (hd, rho))| {
                let encoder = &p.encoder[hi * d * n..(hi + 1) * d * n];
                let encoder_v_t = &enc_v_t[hi * n * d..(hi + 1) * n * d];
                let decoder = &p.decoder[hi * n * d..(hi + 1) * n * d];
                head_step(hd, rho, v, (encoder, encoder_v_t, decoder), (cos, sin), dense);
            });
            // u = Σ_h z_h · decoder_h;  v = LN(v + LN(u))                   (D)
            self.u.fill(0.0);
            for hd in &self.heads {
                self.u.iter_mut().zip(&hd.u).for_each(|(o, &x)| *o += x);
            }
            layer_norm(&mut self.u, &mut rstd, d);
            self.v.iter_mut().zip(&self.u).for_each(|(vi, &ui)| *vi += ui);
            layer_norm(&mut self.v, &mut rstd, d);
        }
        // logits = v · lm_head                                              (V)
        matmul(&mut self.logits, &self.v, &p.lm_head, MatMul::new(1, d, vocab));
        self.state.pos += 1;
        Ok(&self.logits)
    }
}

/// One head of one layer at the current position: x, the synapse read and write,
/// y on the active neurons, and this head's decoder output `hd.u`.
fn head_step(
    hd: &mut Head,
    rho: &mut [f32],
    v: &[f32],
    (encoder, encoder_v_t, decoder): (&[f32], &[f32], &[f32]),
    (cos, sin): (&[f32], &[f32]),
    dense: bool,
) {
    let mut rstd = [0.0f32];
    // x = relu(v · encoder_h)                                               (N)
    let (d, n) = (v.len(), hd.x.len());
    matmul(&mut hd.x, v, encoder, MatMul::new(1, d, n));
    hd.x.iter_mut().for_each(|xi| *xi = xi.max(0.0));
    // R_t x on the RoPE pairs with an active neuron                            (N)
    hd.rows.clear();
    hd.cols.clear();
    for (j, (&cs, &sn)) in cos.iter().zip(sin).enumerate() {
        let (x0, x1) = (hd.x[2 * j], hd.x[2 * j + 1]);
        if x0 > 0.0 || x1 > 0.0 || dense {
            hd.xr[2 * j] = x0 * cs - x1 * sn;
            hd.xr[2 * j + 1] = x1 * cs + x0 * sn;
            let pair = 2 * j as u32;
            hd.rows.extend([pair, pair + 1]);
            hd.cols.extend((x0 > 0.0 || dense).then_some(pair));
            hd.cols.extend((x1 > 0.0 || dense).then_some(pair + 1));
        }
    }
    // a = LN(ρᵀ R_t x), read before the write ρ += R_t x ⊗ v                  (D)
    rho_read_write(&mut hd.a, rho, &hd.xr, v, &hd.rows);
    layer_norm(&mut hd.a, &mut rstd, v.len());
    // y = relu(a · encoder_v_h), needed only where x > 0;  z = x ⊙ y
    hd.y.resize(hd.cols.len(), 0.0);
    gather_dot(&mut hd.y, &hd.a, encoder_v_t, &hd.cols);
    hd.z_rows.clear();
    for (&col, &yi) in hd.cols.iter().zip(&hd.y) {
        let zi = hd.x[col as usize] * yi.max(0.0);
        if zi != 0.0 || dense {
            hd.z[col as usize] = zi;
            hd.z_rows.push(col);
        }
    }
    // u_h = z_h · decoder_h over the non-zero z                              (D)
    sparse_row_sum(&mut hd.u, &hd.z, decoder, &hd.z_rows);
}
