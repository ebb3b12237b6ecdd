//! The GPT's parallel forward, as nanoGPT's `GPT.forward`:
//!
//! ```text
//! x = drop(wte[tok] + wpe[pos])
//! per block:  x = x + drop(c_proj(attn(ln_1(x))))        attn: causal softmax, heads of D/H
//!             x = x + drop(mlp.c_proj(gelu(c_fc(ln_2(x)))))
//! logits = ln_f(x) · wteᵀ                                  (lm_head tied to wte)
//! ```
//!
//! Every activation the backward needs is kept, in buffers allocated once per (B, T).

use bdh_kernels::{add_bias, affine, causal_softmax_attention, gelu, layer_norm, matmul, MatMul, SoftmaxAttention};

use super::params::{weights, Affine};
use super::Gpt;
use crate::error::{Error, Result};
use crate::model::{dropout, zeroed, Mode};

/// Sizes of one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// Batch rows.
    pub b: usize,
    /// Positions.
    pub t: usize,
    /// Width.
    pub d: usize,
    /// Heads.
    pub h: usize,
    /// Vocabulary.
    pub v: usize,
    /// Blocks.
    pub l: usize,
}

/// A LayerNorm's saved normalised input and 1/σ per row, and its output.
#[derive(Debug)]
pub(crate) struct Norm {
    pub(crate) xhat: Vec<f32>, // (B·T, D)
    pub(crate) rstd: Vec<f32>, // (B·T)
    pub(crate) out: Vec<f32>,  // (B·T, D)
}

/// What one block keeps for the backward.
#[derive(Debug)]
pub(crate) struct BlockActs {
    pub(crate) ln_1: Norm,
    pub(crate) qkv: Vec<f32>, // (B·T, 3D)
    pub(crate) att: Vec<f32>, // (B·T, D) heads side by side
    pub(crate) lse: Vec<f32>, // (B, H, T)
    pub(crate) ln_2: Norm,
    pub(crate) fc: Vec<f32>,        // (B·T, 4D) before GELU
    pub(crate) gelu: Vec<f32>,      // (B·T, 4D)
    pub(crate) keep_attn: Vec<f32>, // (B·T, D) dropout scale of the attention branch; empty without
    pub(crate) keep_mlp: Vec<f32>,  // (B·T, D) of the MLP branch
}

/// Buffers of a (B, T) forward, reused across passes.
#[derive(Debug)]
pub struct Activations {
    /// Sizes.
    pub dims: Dims,
    pub(crate) tokens: Vec<u32>,
    pub(crate) keep_embed: Vec<f32>, // (B·T, D)
    pub(crate) blocks: Vec<BlockActs>,
    pub(crate) ln_f: Norm,
    /// (B, T, V).
    pub logits: Vec<f32>,
    /// The attention dropout of the last pass: (probability, seed), 0 without.
    pub(crate) attn_dropout: (f32, u64),
    /// Residual stream scratch, (B·T, D).
    pub(crate) x: Vec<f32>,
    pub(crate) branch: Vec<f32>,
}

impl Norm {
    fn new(rows: usize, d: usize) -> Result<Self> {
        Ok(Norm { xhat: zeroed(&[rows, d])?, rstd: zeroed(&[rows])?, out: zeroed(&[rows, d])? })
    }

    /// LayerNorm of `x` with `p`'s weight and bias, keeping x̂ and 1/σ.
    fn run(&mut self, x: &[f32], p: &Affine<&[f32]>) {
        self.xhat.copy_from_slice(x);
        layer_norm(&mut self.xhat, &mut self.rstd, p.weight.len());
        self.out.copy_from_slice(&self.xhat);
        affine(&mut self.out, p.weight, p.bias.unwrap_or(&[]));
    }
}

impl Activations {
    /// Buffers for B sequences of T ≤ block_size tokens.
    pub fn new(model: &Gpt, b: usize, t: usize) -> Result<Self> {
        let c = &model.config;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("a pass needs B, T > 0 (B={b}, T={t})")));
        }
        if t > c.block_size {
            return Err(Error::Input(format!(
                "{t} positions exceed this GPT's block_size {} (its learned position embeddings)",
                c.block_size
            )));
        }
        let dims = Dims { b, t, d: c.n_embd, h: c.n_head, v: c.vocab_size, l: c.n_layer };
        crate::memory::ensure_fits(
            Self::bytes(&dims).unwrap_or(usize::MAX),
            &format!("GPT activations for B={b}, T={t}"),
        )?;
        let bt = b * t;
        let d = c.n_embd;
        let blocks = (0..c.n_layer)
            .map(|_| {
                Ok(BlockActs {
                    ln_1: Norm::new(bt, d)?,
                    qkv: zeroed(&[bt, 3 * d])?,
                    att: zeroed(&[bt, d])?,
                    lse: zeroed(&[b, c.n_head, t])?,
                    ln_2: Norm::new(bt, d)?,
                    fc: zeroed(&[bt, 4 * d])?,
                    gelu: zeroed(&[bt, 4 * d])?,
                    keep_attn: Vec::new(),
                    keep_mlp: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Activations {
            dims,
            tokens: vec![0; bt],
            keep_embed: Vec::new(),
            blocks,
            ln_f: Norm::new(bt, d)?,
            logits: zeroed(&[bt, c.vocab_size])?,
            attn_dropout: (0.0, 0),
            x: zeroed(&[bt, d])?,
            branch: zeroed(&[bt, d])?,
        })
    }

    /// Bytes these buffers take, dropout masks included, or `None` on overflow.
    fn bytes(d: &Dims) -> Option<usize> {
        let bt = d.b.checked_mul(d.t)?;
        // ln_1 (x̂, out), qkv, att, ln_2 (x̂, out), fc, gelu, two dropout masks; lse.
        let per_block = bt.checked_mul(d.d)?.checked_mul(2 + 3 + 1 + 2 + 4 + 4 + 2)?.checked_add(d.b * d.h * d.t)?;
        let total = per_block.checked_mul(d.l)?.checked_add(bt.checked_mul(d.d * 5 + d.v)?)?;
        total.checked_mul(4)
    }
}

/// Fills `keep` (resized to `len`) with dropout scales 0 or 1/(1−p), the whole
/// mask one block from stream `stream` of `seed`.
fn draw(keep: &mut Vec<f32>, len: usize, seed: u64, stream: u64, p: f32) {
    keep.resize(len, 0.0);
    dropout::draw(keep, len, seed, stream, p);
}

/// `out = x · wᵀ + b` for a Linear `p` with weight (out, in), over `rows` rows.
pub(crate) fn linear(out: &mut [f32], x: &[f32], p: &Affine<&[f32]>, rows: usize) {
    let n = p.weight.len() / (x.len() / rows);
    matmul(out, x, p.weight, MatMul::new(rows, x.len() / rows, n).b_t().par());
    if let Some(b) = p.bias {
        add_bias(out, b);
    }
}

/// Runs `model` on `tokens` (B, T) and fills `acts`, logits included.
pub fn forward(model: &Gpt, tokens: &[u32], acts: &mut Activations, mode: Mode) -> Result<()> {
    let Dims { b, t, d, h, v, l: _ } = acts.dims;
    crate::model::check_batch(tokens, (b, t), v, "forward")?;
    let w = weights(&model.config, &model.params);
    let p = model.config.dropout;
    let dropout = match mode {
        Mode::Train { seed } if p > 0.0 => Some(seed),
        _ => None,
    };
    let bt = b * t;
    acts.tokens.copy_from_slice(tokens);
    // x = drop(wte[tok] + wpe[pos])
    for (r, &tok) in tokens.iter().enumerate() {
        let (row, pos) = (&mut acts.x[r * d..][..d], r % t);
        row.copy_from_slice(&w.wte[tok as usize * d..][..d]);
        row.iter_mut().zip(&w.wpe[pos * d..][..d]).for_each(|(x, &e)| *x += e);
    }
    match dropout {
        Some(seed) => {
            draw(&mut acts.keep_embed, bt * d, seed, 0, p);
            acts.x.iter_mut().zip(&acts.keep_embed).for_each(|(x, &k)| *x *= k);
        }
        None => acts.keep_embed.clear(),
    }
    acts.attn_dropout = dropout.map_or((0.0, 0), |seed| (p, seed ^ 0x5eed_a77e));
    let (attn_p, attn_seed) = acts.attn_dropout;
    let Activations { blocks, x, branch, .. } = &mut *acts;
    for (layer, (a, wb)) in blocks.iter_mut().zip(&w.blocks).enumerate() {
        // x = x + drop(c_proj(attn(ln_1(x))))
        a.ln_1.run(x, &wb.ln_1);
        linear(&mut a.qkv, &a.ln_1.out, &wb.c_attn, bt);
        let attn = SoftmaxAttention { b, t, h, s: d / h, dropout: attn_p, seed: attn_seed.wrapping_add(layer as u64) };
        causal_softmax_attention(&mut a.att, &mut a.lse, &a.qkv, attn);
        linear(branch, &a.att, &wb.attn_proj, bt);
        residual(x, branch, &mut a.keep_attn, dropout.map(|s| (s, 1 + 2 * layer as u64, p)));
        // x = x + drop(mlp.c_proj(gelu(c_fc(ln_2(x)))))
        a.ln_2.run(x, &wb.ln_2);
        linear(&mut a.fc, &a.ln_2.out, &wb.c_fc, bt);
        gelu(&mut a.gelu, &a.fc);
        linear(branch, &a.gelu, &wb.mlp_proj, bt);
        residual(x, branch, &mut a.keep_mlp, dropout.map(|s| (s, 2 + 2 * layer as u64, p)));
    }
    // logits = ln_f(x) · wteᵀ
    acts.ln_f.run(&acts.x, &w.ln_f);
    matmul(&mut acts.logits, &acts.ln_f.out, w.wte, MatMul::new(bt, d, v).b_t().par());
    Ok(())
}

/// `x += drop(branch)`, drawing the mask into `keep` (seed, stream, p) or clearing it.
fn residual(x: &mut [f32], branch: &[f32], keep: &mut Vec<f32>, dropout: Option<(u64, u64, f32)>) {
    match dropout {
        Some((seed, stream, p)) => {
            draw(keep, x.len(), seed, stream, p);
            x.iter_mut().zip(branch).zip(keep.iter()).for_each(|((x, &y), &k)| *x += y * k);
        }
        None => {
            keep.clear();
            x.iter_mut().zip(branch).for_each(|(x, &y)| *x += y);
        }
    }
}
