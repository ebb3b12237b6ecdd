//! The GPT baseline on a device: its forward and backward beside the CPU's
//! (`bdh::model::gpt::forward` and `backward`, nanoGPT's `GPT.forward`), product
//! for product, every activation the backward needs kept. Dropout is not drawn
//! here: a GPT with dropout trains on the CPU.

use bdh::model::gpt::params::{Affine, Tensors};
use bdh::model::gpt::{Dims, Gpt, GptConfig};
use bdh::{Error, Result};
use bdh_kernels::{Batch, MatMul};
use cubecl::prelude::Runtime;

use crate::backward::ByToken;
use crate::device::{Buf, Device, Heads};
use crate::optim::Slots;

mod run;
mod train;
pub(crate) use run::GptRunner;
pub(crate) use train::{trains, GptTrainer};

/// A LayerNorm's normalised input, 1/σ per row, and output.
struct Norm {
    xhat: Buf,
    rstd: Buf,
    out: Buf,
}

/// What one block keeps.
struct Block {
    ln_1: Norm,
    qkv: Buf, // (B·T, 3D)
    att: Buf, // (B·T, D)
    lse: Buf, // (B, H, T)
    ln_2: Norm,
    fc: Buf,   // (B·T, 4D) before GELU
    gelu: Buf, // (B·T, 4D)
}

/// The buffers of a (B, T) pass, kept for the backward.
pub struct Pass {
    pub dims: Dims,
    blocks: Vec<Block>,
    ln_f: Norm,
    x: Buf,      // (B·T, D) the residual stream
    branch: Buf, // (B·T, D)
    pub logits: Buf,
    pub losses: Buf, // (B·T)
}

/// The backward's scratch.
pub struct Scratch {
    dlogits: Buf, // (B·T, V)
    dx: Buf,      // (B·T, D)
    dd: Buf,      // (B·T, D)
    da: Buf,      // (B·T, D)
    d3: Buf,      // (B·T, 3D)
    d4: Buf,      // (B·T, 4D)
}

/// Values a pass and the backward's scratch of `dims` hold.
pub fn values(dims: &Dims) -> Option<usize> {
    let Dims { b, t, d, h, v, l } = *dims;
    let bt = b.checked_mul(t)?;
    let per_block = bt.checked_mul(d)?.checked_mul(3 + 3 + 1 + 1 + 4 + 4)?.checked_add(bt.checked_mul(2 + h)?)?;
    let rest = bt.checked_mul(d)?.checked_mul(3 + 2 + 3 + 3 + 4)?.checked_add(bt.checked_mul(2 * v + 2)?)?;
    per_block.checked_mul(l)?.checked_add(rest)
}

impl Pass {
    /// Buffers for B sequences of T ≤ block_size tokens of `model`.
    pub fn new<R: Runtime>(dev: &Device<R>, model: &Gpt, b: usize, t: usize) -> Result<Self> {
        let c = &model.config;
        if b == 0 || t == 0 || t > c.block_size {
            return Err(Error::Input(format!("a GPT pass of B={b}, T={t} (block_size {})", c.block_size)));
        }
        let dims = Dims { b, t, d: c.n_embd, h: c.n_head, v: c.vocab_size, l: c.n_layer };
        let bytes = values(&dims).and_then(|n| n.checked_mul(4)).map(|n| n as u64);
        if let (Some(free), Some(need)) = (dev.free_bytes(), bytes) {
            if need > free {
                let what = format!("a GPT pass of B={b}, T={t} on the GPU ({})", dev.name);
                return Err(Error::TooLarge { what, need: Some(need), have: Some(free) });
            }
        }
        let (bt, d) = (b * t, c.n_embd);
        let s = |len: usize, what: &str| dev.scratch(len, what);
        let norm = || -> Result<Norm> {
            Ok(Norm {
                xhat: s(bt * d, "LayerNorm input")?,
                rstd: s(bt, "LayerNorm statistics")?,
                out: s(bt * d, "LayerNorm output")?,
            })
        };
        let block = || -> Result<Block> {
            Ok(Block {
                ln_1: norm()?,
                qkv: s(bt * 3 * d, "q, k, v")?,
                att: s(bt * d, "attention output")?,
                lse: s(b * c.n_head * t, "log-sum-exp")?,
                ln_2: norm()?,
                fc: s(bt * 4 * d, "MLP")?,
                gelu: s(bt * 4 * d, "MLP")?,
            })
        };
        Ok(Pass {
            dims,
            blocks: (0..c.n_layer).map(|_| block()).collect::<Result<_>>()?,
            ln_f: norm()?,
            x: s(bt * d, "residual stream")?,
            branch: s(bt * d, "residual branch")?,
            logits: s(bt * c.vocab_size, "logits")?,
            losses: s(bt, "losses")?,
        })
    }
}

impl Scratch {
    /// Scratch for the backward of passes of `dims`.
    pub fn new<R: Runtime>(dev: &Device<R>, dims: Dims) -> Result<Self> {
        let (bt, d) = (dims.b * dims.t, dims.d);
        let s = |len: usize| dev.scratch(len, "the GPT backward's scratch");
        Ok(Scratch {
            dlogits: s(bt * dims.v)?,
            dx: s(bt * d)?,
            dd: s(bt * d)?,
            da: s(bt * d)?,
            d3: s(bt * 3 * d)?,
            d4: s(bt * 4 * d)?,
        })
    }
}

/// The tensors of `slots` (a GPT's, laid out for `c`) by role.
fn view<'a>(c: &GptConfig, slots: &'a Slots) -> Tensors<&'a Buf> {
    Tensors::from_slots(c, slots.0.iter())
}

/// One product over all rows.
const ONE: Batch = Batch { count: [1, 1], a: [0, 0], b: [0, 0], c: [0, 0] };

/// `out = x · wᵀ + b` over `rows` rows of a Linear `p` (weight (out, in)).
fn linear<R: Runtime>(dev: &Device<R>, out: &Buf, x: &Buf, p: &Affine<&Buf>, rows: usize) {
    let (n_in, n_out) = (x.len() / rows, out.len() / rows);
    dev.matmul(out, x, p.weight, MatMul::new(rows, n_in, n_out).b_t(), ONE, false);
    if let Some(b) = p.bias {
        dev.add_bias(out, b);
    }
}

/// LayerNorm of `x` with `p`'s weight and bias into `n`.
fn norm<R: Runtime>(dev: &Device<R>, n: &Norm, x: &Buf, p: &Affine<&Buf>) {
    dev.copy(x, &n.xhat);
    dev.layer_norm(&n.xhat, &n.rstd, p.weight.len());
    dev.affine(&n.out, &n.xhat, p.weight, p.bias);
}

/// Runs the GPT on `ids` (B, T): every activation into `pass`, the logits included.
pub fn forward<R: Runtime>(dev: &Device<R>, c: &GptConfig, w: &Slots, pass: &Pass, ids: &Buf) {
    let Dims { b, t, d, h, v, .. } = pass.dims;
    let (w, bt) = (view(c, w), b * t);
    // x = wte[tok] + wpe[pos]
    dev.embed_positions(w.wte, w.wpe, ids, &pass.x, t, d);
    for (a, wb) in pass.blocks.iter().zip(&w.blocks) {
        // x = x + c_proj(attn(ln_1(x)))
        norm(dev, &a.ln_1, &pass.x, &wb.ln_1);
        linear(dev, &a.qkv, &a.ln_1.out, &wb.c_attn, bt);
        dev.attention(&a.qkv, &a.att, &a.lse, Heads { b, t, h, s: d / h });
        linear(dev, &pass.branch, &a.att, &wb.attn_proj, bt);
        dev.add_into(&pass.x, &pass.branch);
        // x = x + mlp.c_proj(gelu(c_fc(ln_2(x))))
        norm(dev, &a.ln_2, &pass.x, &wb.ln_2);
        linear(dev, &a.fc, &a.ln_2.out, &wb.c_fc, bt);
        dev.gelu(&a.gelu, &a.fc);
        linear(dev, &pass.branch, &a.gelu, &wb.mlp_proj, bt);
        dev.add_into(&pass.x, &pass.branch);
    }
    // logits = ln_f(x) · wteᵀ
    norm(dev, &pass.ln_f, &pass.x, &w.ln_f);
    dev.matmul(&pass.logits, &pass.ln_f.out, w.wte, MatMul::new(bt, d, v).b_t(), ONE, false);
}

/// For a Linear `y = x·wᵀ + b` over `rows` rows: `dw += dyᵀ x`, `db += Σ dy`, and
/// `dx = dy · w` (overwritten).
fn linear_backward<R: Runtime>(
    dev: &Device<R>,
    dx: &Buf,
    dy: &Buf,
    x: &Buf,
    w: &Affine<&Buf>,
    g: &Affine<&Buf>,
    rows: usize,
) {
    let (n_in, n_out) = (x.len() / rows, dy.len() / rows);
    dev.matmul(g.weight, dy, x, MatMul::new(n_out, rows, n_in).a_t().acc(), ONE, false);
    if let Some(db) = g.bias {
        dev.column_sums(db, dy);
    }
    dev.matmul(dx, dy, w.weight, MatMul::new(rows, n_out, n_in), ONE, false);
}

/// A LayerNorm's backward: `g` holds the gradient of its output on entry, of its
/// input on return.
fn norm_backward<R: Runtime>(dev: &Device<R>, g: &Buf, n: &Norm, w: &Affine<&Buf>, dw: &Affine<&Buf>) {
    dev.affine_backward(g, &n.xhat, w.weight, dw.weight, dw.bias);
    dev.layer_norm_backward(g, &n.xhat, &n.rstd, w.weight.len());
}

/// Adds d loss / d every weight of the last forward (in `pass`) to `grads`, for the
/// mean cross-entropy against `targets`.
#[allow(clippy::too_many_arguments)]
pub fn backward<R: Runtime>(
    dev: &Device<R>,
    c: &GptConfig,
    w: &Slots,
    grads: &Slots,
    pass: &Pass,
    s: &Scratch,
    by_token: &ByToken,
    targets: &Buf,
) {
    let Dims { b, t, d, h, v, .. } = pass.dims;
    let (w, g, bt) = (view(c, w), view(c, grads), b * t);
    // logits = ln_f(x) · wteᵀ
    dev.cross_entropy_backward(&pass.logits, targets, &s.dlogits, v, 1.0 / bt as f32);
    dev.matmul(g.wte, &s.dlogits, &pass.ln_f.out, MatMul::new(v, bt, d).a_t().acc(), ONE, false);
    dev.matmul(&s.dx, &s.dlogits, w.wte, MatMul::new(bt, v, d), ONE, false);
    norm_backward(dev, &s.dx, &pass.ln_f, &w.ln_f, &g.ln_f);
    for ((a, wb), gb) in pass.blocks.iter().zip(&w.blocks).zip(&g.blocks).rev() {
        // x = x + mlp.c_proj(gelu(c_fc(ln_2(x)))): the branch's gradient is dx's
        linear_backward(dev, &s.d4, &s.dx, &a.gelu, &wb.mlp_proj, &gb.mlp_proj, bt);
        dev.gelu_backward(&s.d4, &a.fc);
        linear_backward(dev, &s.dd, &s.d4, &a.ln_2.out, &wb.c_fc, &gb.c_fc, bt);
        norm_backward(dev, &s.dd, &a.ln_2, &wb.ln_2, &gb.ln_2);
        dev.add_into(&s.dx, &s.dd);
        // x = x + c_proj(attn(ln_1(x)))
        linear_backward(dev, &s.da, &s.dx, &a.att, &wb.attn_proj, &gb.attn_proj, bt);
        dev.attention_backward(&s.d3, &s.da, &a.qkv, &a.att, &a.lse, Heads { b, t, h, s: d / h });
        linear_backward(dev, &s.dd, &s.d3, &a.ln_1.out, &wb.c_attn, &gb.c_attn, bt);
        norm_backward(dev, &s.dd, &a.ln_1, &wb.ln_1, &gb.ln_1);
        dev.add_into(&s.dx, &s.dd);
    }
    // x = wte[tok] + wpe[pos]
    by_token.embed_backward(dev, g.wte, &s.dx, d);
    dev.positions_backward(g.wpe, &s.dx, b, t, d);
}
