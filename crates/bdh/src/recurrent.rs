//! The recurrent form: one token at a time with a synapse state ρ per layer.
//!
//! Attention is strictly causal and has no softmax, so
//! `a_t = Σ_{τ<t} (R_t x_t · R_τ x_τ) v_τ = ρ_tᵀ R_t x_t` with `ρ_t = Σ_{τ<t} R_τ x_τ ⊗ v_τ`:
//! read `a_t` from ρ, then write `ρ += R_t x_t ⊗ v_t`. This equals the parallel
//! forward at every position, in memory that does not grow with the context.

use bdh_kernels::{
    gather_matvec, layer_norm, matmul, rho_update, sparse_row_sum, MatMul,
};

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

/// Runs a model one token at a time; holds the state and per-step scratch.
#[derive(Debug)]
pub struct Recurrent<'m> {
    model: &'m Model,
    /// The sequence's state.
    pub state: State,
    v: Vec<f32>,       // (D) residual stream
    x: Vec<f32>,       // (N) neurons of one head
    xr: Vec<f32>,      // (N) rotated neurons, zero outside active pairs
    a: Vec<f32>,       // (D) attention readout of one head
    y: Vec<f32>,       // (active) y on the active neurons of one head
    z: Vec<f32>,       // (H·N) x ⊙ y of all heads
    u: Vec<f32>,       // (D) decoder output
    rows: Vec<u32>,    // rotated-neuron rows of active RoPE pairs of one head
    cols: Vec<u32>,    // active neurons of one head
    z_rows: Vec<u32>,  // non-zero entries of z
    logits: Vec<f32>,  // (V)
}

impl<'m> Recurrent<'m> {
    /// A runner over `model` starting from the empty state.
    pub fn new(model: &'m Model) -> Self {
        let c = &model.config;
        let (d, n, hn) = (c.n_embd, c.n_neurons(), c.total_neurons());
        Recurrent {
            model,
            state: State::new(model),
            v: vec![0.0; d],
            x: vec![0.0; n],
            xr: vec![0.0; n],
            a: vec![0.0; d],
            y: Vec::with_capacity(n),
            z: vec![0.0; hn],
            u: vec![0.0; d],
            rows: Vec::with_capacity(n),
            cols: Vec::with_capacity(n),
            z_rows: Vec::with_capacity(hn),
            logits: vec![0.0; c.vocab_size],
        }
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

        // v = LN(embed[token])                                              (D)
        self.v.copy_from_slice(&p.embed[token as usize * d..(token as usize + 1) * d]);
        layer_norm(&mut self.v, &mut rstd, d);
        for l in 0..c.n_layer {
            self.z_rows.clear();
            for hi in 0..h {
                let encoder = &p.encoder[hi * d * n..(hi + 1) * d * n];
                let encoder_v = &p.encoder_v[hi * d * n..(hi + 1) * d * n];
                let rho = &mut self.state.rho[(l * h + hi) * n * d..(l * h + hi + 1) * n * d];

                // x = relu(v · encoder_h)                                   (N)
                matmul(&mut self.x, &self.v, encoder, MatMul::new(1, d, n));
                self.x.iter_mut().for_each(|xi| *xi = xi.max(0.0));
                // R_t x on the RoPE pairs with an active neuron                (N)
                self.rows.clear();
                self.cols.clear();
                for j in 0..n / 2 {
                    let (x0, x1) = (self.x[2 * j], self.x[2 * j + 1]);
                    if x0 > 0.0 || x1 > 0.0 {
                        let (cs, sn) = cos_sin(t, m.freqs[2 * j]);
                        self.xr[2 * j] = x0 * cs - x1 * sn;
                        self.xr[2 * j + 1] = x1 * cs + x0 * sn;
                        self.rows.extend([2 * j as u32, 2 * j as u32 + 1]);
                        self.cols.extend((x0 > 0.0).then_some(2 * j as u32));
                        self.cols.extend((x1 > 0.0).then_some(2 * j as u32 + 1));
                    }
                }
                // a = LN(ρᵀ R_t x), read before the write ρ += R_t x ⊗ v      (D)
                sparse_row_sum(&mut self.a, &self.xr, rho, &self.rows);
                rho_update(rho, &self.xr, &self.v, &self.rows);
                layer_norm(&mut self.a, &mut rstd, d);
                // y = relu(a · encoder_v_h), needed only where x > 0;  z = x ⊙ y
                self.y.resize(self.cols.len(), 0.0);
                gather_matvec(&mut self.y, &self.a, encoder_v, n, &self.cols);
                for (&col, &yi) in self.cols.iter().zip(&self.y) {
                    let zi = self.x[col as usize] * yi.max(0.0);
                    if zi != 0.0 {
                        let row = hi * n + col as usize;
                        self.z[row] = zi;
                        self.z_rows.push(row as u32);
                    }
                }
            }
            // u = z · decoder over the non-zero z;  v = LN(v + LN(u))       (D)
            sparse_row_sum(&mut self.u, &self.z, &p.decoder, &self.z_rows);
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
