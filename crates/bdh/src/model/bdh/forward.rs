//! The parallel forward pass, line for line beside bdh.py's `BDH.forward`.
//!
//! Every activation the backward needs lives in an [`Activations`] sized once per
//! (B, T); a step allocates nothing.

use bdh_kernels::{causal_linear_attention, gated_product, layer_norm, matmul, relu, rope, MatMul, RopeDirection};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::params::Model;
use crate::rope::RopeTable;
use crate::BdhConfig;

/// Sizes of one forward pass: B, T and the model's D, H, N, V, L.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// B: sequences in the batch.
    pub b: usize,
    /// T: tokens per sequence.
    pub t: usize,
    /// D: residual width.
    pub d: usize,
    /// H: heads.
    pub h: usize,
    /// N: neurons per head.
    pub n: usize,
    /// V: vocabulary.
    pub v: usize,
    /// L: layers.
    pub l: usize,
}

impl Dims {
    /// The sizes of a (B, T) pass of a model with config `cfg`.
    pub fn new(cfg: &BdhConfig, b: usize, t: usize) -> Self {
        Dims { b, t, d: cfg.n_embd, h: cfg.n_head, n: cfg.n_neurons(), v: cfg.vocab_size, l: cfg.n_layer }
    }
}

/// Whether dropout is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `model.eval()`: no dropout.
    Eval,
    /// `model.train()`: dropout on x⊙y with masks drawn from `seed` (one stream per
    /// layer, batch row and head, so the masks do not depend on the thread count).
    Train {
        /// Seed of this step's dropout masks.
        seed: u64,
    },
}

/// The activations of one forward pass, kept for the backward.
#[derive(Debug)]
pub struct Activations {
    /// The sizes these buffers hold.
    pub dims: Dims,
    pub(crate) rope: RopeTable,
    pub(crate) tokens: Vec<u32>, // (B, T)
    pub(crate) v: Vec<f32>,      // (L+1, B, T, D) residual stream into each layer, then the output
    pub(crate) rstd_v: Vec<f32>, // (L+1, B, T)
    pub(crate) x: Vec<f32>,      // (L, B, H, T, N) sparse neurons
    pub(crate) xr: Vec<f32>,     // (L, B, H, T, N) x rotated by RoPE
    pub(crate) scores: Vec<f32>, // (L, B, H, T, T) tril₋₁(xr xrᵀ)
    pub(crate) a: Vec<f32>,      // (L, B, H, T, D) attention output after LN
    pub(crate) rstd_a: Vec<f32>, // (L, B, H, T)
    pub(crate) y: Vec<f32>,      // (L, B, H, T, N)
    pub(crate) keep: Vec<f32>,   // (L, B, H, T, N) dropout scale 0 or 1/(1−p); empty in eval
    pub(crate) z: Vec<f32>,      // (B, H, T, N) scratch: dropout(x ⊙ y) of the current layer
    pub(crate) w: Vec<f32>,      // (L, B, T, D) LN(decoder output)
    pub(crate) rstd_w: Vec<f32>, // (L, B, T)
    /// Output of the last forward, (B, T, V).
    pub logits: Vec<f32>,
}

impl Activations {
    /// Buffers for a (B, T) pass of `model`.
    pub fn new(model: &Model, b: usize, t: usize) -> Self {
        let dm = Dims::new(&model.config, b, t);
        let Dims { d, h, n, v, l, .. } = dm;
        let (bt, bht) = (b * t, b * h * t);
        Activations {
            dims: dm,
            rope: RopeTable::new(&model.freqs, t),
            tokens: vec![0; bt],
            v: vec![0.0; (l + 1) * bt * d],
            rstd_v: vec![0.0; (l + 1) * bt],
            x: vec![0.0; l * bht * n],
            xr: vec![0.0; l * bht * n],
            scores: vec![0.0; l * bht * t],
            a: vec![0.0; l * bht * d],
            rstd_a: vec![0.0; l * bht],
            y: vec![0.0; l * bht * n],
            keep: Vec::new(),
            z: vec![0.0; bht * n],
            w: vec![0.0; l * bt * d],
            rstd_w: vec![0.0; l * bt],
            logits: vec![0.0; bt * v],
        }
    }

    /// The residual stream leaving layer `l − 1` (entering layer `l`), (B, T, D);
    /// `l = L` is the final one that `lm_head` reads.
    pub fn residual(&self, l: usize) -> &[f32] {
        let bt = self.dims.b * self.dims.t;
        &self.v[l * bt * self.dims.d..(l + 1) * bt * self.dims.d]
    }

    /// x of layer `l`, (B, H, T, N).
    pub fn x(&self, l: usize) -> &[f32] {
        let Dims { b, h, t, n, .. } = self.dims;
        &self.x[l * b * h * t * n..(l + 1) * b * h * t * n]
    }

    /// x rotated by RoPE of layer `l`, (B, H, T, N).
    pub fn x_rotated(&self, l: usize) -> &[f32] {
        let Dims { b, h, t, n, .. } = self.dims;
        &self.xr[l * b * h * t * n..(l + 1) * b * h * t * n]
    }

    /// y of layer `l`, (B, H, T, N).
    pub fn y(&self, l: usize) -> &[f32] {
        let Dims { b, h, t, n, .. } = self.dims;
        &self.y[l * b * h * t * n..(l + 1) * b * h * t * n]
    }
}

/// Checks a (B, T) batch of token ids against the vocabulary and the buffers.
pub(crate) fn check_tokens(tokens: &[u32], dims: &Dims, what: &str) -> Result<()> {
    if dims.b == 0 || dims.t == 0 {
        return Err(Error::Input(format!("{what}: empty batch (B={}, T={})", dims.b, dims.t)));
    }
    if tokens.len() != dims.b * dims.t {
        return Err(Error::Input(format!("{what}: {} ids for a batch of B={} × T={}", tokens.len(), dims.b, dims.t)));
    }
    if let Some(&bad) = tokens.iter().find(|&&tok| tok as usize >= dims.v) {
        return Err(Error::Input(format!("{what}: token id {bad} ≥ vocab_size {}", dims.v)));
    }
    Ok(())
}

/// Runs the model on `tokens` (B, T) and fills `acts`, `acts.logits` included.
pub fn forward(model: &Model, tokens: &[u32], acts: &mut Activations, mode: Mode) -> Result<()> {
    let Dims { b, t, d, h, n, v: vocab, l: layers } = acts.dims;
    check_tokens(tokens, &acts.dims, "forward")?;
    let p = &model.params;
    let (bt, bhtn) = (b * t, b * h * t * n);
    let dropout = match mode {
        Mode::Train { seed } if model.config.dropout > 0.0 => Some((seed, model.config.dropout)),
        _ => None,
    };
    if dropout.is_some() && acts.keep.is_empty() {
        acts.keep = vec![0.0; layers * bhtn];
    }
    acts.tokens.copy_from_slice(tokens);

    // v = LN(embed[idx])                                               (B, T, D)
    let v0 = &mut acts.v[..bt * d];
    for (row, &tok) in v0.chunks_exact_mut(d).zip(tokens) {
        row.copy_from_slice(&p.embed[tok as usize * d..(tok as usize + 1) * d]);
    }
    layer_norm(v0, &mut acts.rstd_v[..bt], d);

    for l in 0..layers {
        let (v_prev, v_next) = acts.v[l * bt * d..(l + 2) * bt * d].split_at_mut(bt * d);
        let rstd_next = &mut acts.rstd_v[(l + 1) * bt..(l + 2) * bt];
        let x = &mut acts.x[l * bhtn..(l + 1) * bhtn];
        let xr = &mut acts.xr[l * bhtn..(l + 1) * bhtn];
        let y = &mut acts.y[l * bhtn..(l + 1) * bhtn];
        let scores = &mut acts.scores[l * b * h * t * t..(l + 1) * b * h * t * t];
        let a = &mut acts.a[l * b * h * t * d..(l + 1) * b * h * t * d];
        let rstd_a = &mut acts.rstd_a[l * b * h * t..(l + 1) * b * h * t];
        let keep: &[f32] = match dropout {
            Some((seed, prob)) => {
                let keep = &mut acts.keep[l * bhtn..(l + 1) * bhtn];
                keep.par_chunks_mut(t * n).enumerate().for_each(|(bh, k)| {
                    draw_dropout_mask(k, seed, (l * b * h + bh) as u64, prob);
                });
                keep
            }
            None => &[],
        };
        let rope_table = &acts.rope;
        let v_in: &[f32] = v_prev;

        (
            x.par_chunks_mut(t * n),
            xr.par_chunks_mut(t * n),
            scores.par_chunks_mut(t * t),
            a.par_chunks_mut(t * d),
            rstd_a.par_chunks_mut(t),
            y.par_chunks_mut(t * n),
            acts.z.par_chunks_mut(t * n),
        )
            .into_par_iter()
            .enumerate()
            .for_each(|(bh, (x, xr, scores, a, rstd_a, y, z))| {
                let (bi, hi) = (bh / h, bh % h);
                let v_b = &v_in[bi * t * d..(bi + 1) * t * d]; //                  (T, D)
                let encoder = &p.encoder[hi * d * n..(hi + 1) * d * n]; //        (D, N)
                let encoder_v = &p.encoder_v[hi * d * n..(hi + 1) * d * n]; //    (D, N)

                // x = relu(v · encoder_h)                                   (T, N)
                matmul(x, v_b, encoder, MatMul::new(t, d, n));
                relu(x);
                // a = LN(tril₋₁(R(x) R(x)ᵀ) · v)                            (T, D)
                rope(xr, x, &rope_table.cos, &rope_table.sin, n, RopeDirection::Forward);
                causal_linear_attention(a, scores, xr, v_b, t, n, d);
                layer_norm(a, rstd_a, d);
                // y = relu(a · encoder_v_h)                                 (T, N)
                matmul(y, a, encoder_v, MatMul::new(t, d, n));
                relu(y);
                // z = dropout(x ⊙ y)                                        (T, N)
                let keep = if keep.is_empty() { keep } else { &keep[bh * t * n..(bh + 1) * t * n] };
                gated_product(z, x, y, keep);
            });

        // u = concat_h(z) · decoder;  w = LN(u);  v = LN(v + w)             (B, T, D)
        let w = &mut acts.w[l * bt * d..(l + 1) * bt * d];
        let rstd_w = &mut acts.rstd_w[l * bt..(l + 1) * bt];
        let z: &[f32] = &acts.z;
        (w.par_chunks_mut(t * d), rstd_w.par_chunks_mut(t), v_next.par_chunks_mut(t * d), rstd_next.par_chunks_mut(t))
            .into_par_iter()
            .enumerate()
            .for_each(|(bi, (w, rstd_w, v_out, rstd_out))| {
                for hi in 0..h {
                    let z_bh = &z[(bi * h + hi) * t * n..(bi * h + hi + 1) * t * n];
                    let decoder_h = &p.decoder[hi * n * d..(hi + 1) * n * d];
                    let mm = MatMul::new(t, n, d);
                    matmul(w, z_bh, decoder_h, if hi == 0 { mm } else { mm.acc() });
                }
                layer_norm(w, rstd_w, d);
                let v_b = &v_in[bi * t * d..(bi + 1) * t * d];
                for ((o, &vi), &wi) in v_out.iter_mut().zip(v_b).zip(w.iter()) {
                    *o = vi + wi;
                }
                layer_norm(v_out, rstd_out, d);
            });
    }

    // logits = v · lm_head                                              (B, T, V)
    let v_last = &acts.v[layers * bt * d..];
    matmul(&mut acts.logits, v_last, &p.lm_head, MatMul::new(bt, d, vocab).par());
    Ok(())
}

/// Fills `keep` with 0 (dropped, probability `prob`) or `1/(1−prob)` (kept), as
/// `nn.Dropout` scales, from the ChaCha stream `stream` of `seed`.
fn draw_dropout_mask(keep: &mut [f32], seed: u64, stream: u64, prob: f32) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let scale = 1.0 / (1.0 - prob);
    keep.iter_mut().for_each(|k| *k = if rng.random::<f32>() < prob { 0.0 } else { scale });
}
