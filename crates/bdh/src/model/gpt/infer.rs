//! GPT generation with a KV cache: each block's keys and values of the tokens read
//! so far are kept, so a new token costs one row of every product.
//!
//! Past `block_size` tokens the window slides, as nanoGPT's `generate` crops its
//! input: each further token re-reads the last `block_size` tokens from position 0
//! (the learned position embeddings end there), so it costs a forward over the window.

use bdh_kernels::{gelu, layer_norm, softmax_attention_step, KvCache};

use super::forward::{forward, linear, Activations};
use super::params::{weights, Affine};
use super::Gpt;
use crate::error::{Error, Result};
use crate::model::{check_tokens, zeroed, Mode};

/// A GPT ready for generation.
#[derive(Clone, Debug)]
pub struct Prepared {
    model: Gpt,
}

/// One sequence: the tokens of the window and the keys and values of each block.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Tokens read so far (all of them, not only the window's).
    pub pos: usize,
    /// The window: the last ≤ block_size tokens read.
    window: Vec<u32>,
    /// Positions cached: keys and values of `window[..len]`.
    len: usize,
    /// (L, block_size, D) keys and values.
    k: Vec<f32>,
    v: Vec<f32>,
}

/// One worker's buffers for a step.
#[derive(Debug)]
pub struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    branch: Vec<f32>,
    fc: Vec<f32>,
    act: Vec<f32>,
    rstd: [f32; 1],
    logits: Vec<f32>,
    window: Option<Activations>,
}

impl State {
    /// The window: the last ≤ block_size tokens read.
    pub fn window(&self) -> &[u32] {
        &self.window
    }

    /// Bytes the state occupies.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4 + self.window.capacity() * 4
    }
}

impl Prepared {
    /// Prepares `model`.
    pub fn new(model: Gpt) -> Result<Self> {
        Ok(Prepared { model })
    }

    /// The model.
    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// The empty state of a new sequence.
    pub fn state(&self) -> Result<State> {
        let c = &self.model.config;
        let n = c.n_layer.checked_mul(c.block_size).and_then(|x| x.checked_mul(c.n_embd));
        crate::memory::ensure_fits(crate::memory::f32_bytes(n.and_then(|n| n.checked_mul(2))), "a GPT's KV cache")?;
        let dims = [c.n_layer, c.block_size, c.n_embd];
        let (k, v) = (zeroed(&dims)?, zeroed(&dims)?);
        crate::infer::count_state();
        Ok(State { pos: 0, window: Vec::with_capacity(c.block_size), len: 0, k, v })
    }

    /// Bytes a state of this model occupies, without making one:
    /// (L, block_size, D) keys and values and a window of block_size tokens.
    pub fn state_bytes(&self) -> usize {
        let c = &self.model.config;
        let kv = [c.n_layer, c.block_size, c.n_embd, 2, 4].iter().try_fold(1usize, |p, &x| p.checked_mul(x));
        kv.and_then(|kv| kv.checked_add(c.block_size.checked_mul(4)?)).unwrap_or(usize::MAX)
    }

    /// Buffers for one worker.
    pub fn scratch(&self) -> Scratch {
        let c = &self.model.config;
        let d = c.n_embd;
        Scratch {
            x: vec![0.0; d],
            h: vec![0.0; d],
            qkv: vec![0.0; 3 * d],
            att: vec![0.0; d],
            branch: vec![0.0; d],
            fc: vec![0.0; 4 * d],
            act: vec![0.0; 4 * d],
            rstd: [0.0],
            logits: vec![0.0; c.vocab_size],
            window: None,
        }
    }

    /// Reads `tokens` after what `state` has read; returns the logits after the last.
    pub fn prefill<'s>(&self, state: &mut State, scratch: &'s mut Scratch, tokens: &[u32]) -> Result<&'s [f32]> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill: no tokens".into()));
        }
        let c = &self.model.config;
        check_tokens(tokens, c.vocab_size, "prefill")?;
        if state.len == 0 && tokens.len() <= c.block_size {
            // One parallel forward over the whole prompt, its keys and values kept.
            self.reread(state, scratch, tokens)?;
            state.pos += tokens.len();
            return Ok(&scratch.logits);
        }
        for &tok in tokens {
            self.step(state, scratch, tok)?;
        }
        Ok(&scratch.logits)
    }

    /// Reads one token; returns the logits for the next.
    pub fn step<'s>(&self, state: &mut State, scratch: &'s mut Scratch, token: u32) -> Result<&'s [f32]> {
        let c = &self.model.config;
        check_tokens(&[token], c.vocab_size, "step")?;
        if state.len == c.block_size {
            // The window is full: slide it and re-read it from position 0. The state
            // changes only once the re-read has succeeded.
            let window: Vec<u32> = state.window[1..].iter().copied().chain([token]).collect();
            self.reread(state, scratch, &window)?;
        } else {
            self.cached_step(state, scratch, token);
        }
        state.pos += 1;
        Ok(&scratch.logits)
    }

    /// Forgets the cache and reads `window` (≤ block_size tokens) from position 0.
    fn reread(&self, state: &mut State, scratch: &mut Scratch, window: &[u32]) -> Result<()> {
        let c = &self.model.config;
        let (t, d, v) = (window.len(), c.n_embd, c.vocab_size);
        if scratch.window.as_ref().is_none_or(|a| a.dims.t != t) {
            drop(scratch.window.take());
            scratch.window = Some(Activations::new(&self.model, 1, t)?);
        }
        let acts = scratch.window.as_mut().expect("just made");
        forward(&self.model, window, acts, Mode::Eval)?;
        for (l, blk) in acts.blocks.iter().enumerate() {
            for (i, row) in blk.qkv.chunks_exact(3 * d).enumerate() {
                state.k[(l * c.block_size + i) * d..][..d].copy_from_slice(&row[d..2 * d]);
                state.v[(l * c.block_size + i) * d..][..d].copy_from_slice(&row[2 * d..]);
            }
        }
        scratch.logits.copy_from_slice(&acts.logits[(t - 1) * v..]);
        state.window.clear();
        state.window.extend_from_slice(window);
        state.len = t;
        Ok(())
    }

    /// One token at position `state.len` < block_size, through the cache.
    fn cached_step(&self, state: &mut State, s: &mut Scratch, token: u32) {
        let c = &self.model.config;
        let w = weights(c, &self.model.params);
        let (d, at) = (c.n_embd, state.len);
        let wte = &w.wte[token as usize * d..][..d];
        s.x.iter_mut().zip(wte).zip(&w.wpe[at * d..][..d]).for_each(|((x, &a), &b)| *x = a + b);
        for (l, wb) in w.blocks.iter().enumerate() {
            norm(&mut s.h, &s.x, &wb.ln_1, &mut s.rstd);
            linear(&mut s.qkv, &s.h, &wb.c_attn, 1);
            let cache_row = (l * c.block_size + at) * d;
            state.k[cache_row..][..d].copy_from_slice(&s.qkv[d..2 * d]);
            state.v[cache_row..][..d].copy_from_slice(&s.qkv[2 * d..]);
            let block = l * c.block_size * d..(l + 1) * c.block_size * d;
            let cache = KvCache { k: &state.k[block.clone()], v: &state.v[block], len: at + 1, ld: d };
            softmax_attention_step(&mut s.att, &s.qkv[..d], cache, c.n_head, d / c.n_head);
            linear(&mut s.branch, &s.att, &wb.attn_proj, 1);
            s.x.iter_mut().zip(&s.branch).for_each(|(x, &y)| *x += y);
            norm(&mut s.h, &s.x, &wb.ln_2, &mut s.rstd);
            linear(&mut s.fc, &s.h, &wb.c_fc, 1);
            gelu(&mut s.act, &s.fc);
            linear(&mut s.branch, &s.act, &wb.mlp_proj, 1);
            s.x.iter_mut().zip(&s.branch).for_each(|(x, &y)| *x += y);
        }
        norm(&mut s.h, &s.x, &w.ln_f, &mut s.rstd);
        bdh_kernels::matmul(&mut s.logits, &s.h, w.wte, bdh_kernels::MatMul::new(1, d, c.vocab_size).b_t());
        state.window.push(token);
        state.len += 1;
    }
}

/// `out = LayerNorm(x)` with `p`'s weight and bias, for one row.
fn norm(out: &mut [f32], x: &[f32], p: &Affine<&[f32]>, rstd: &mut [f32; 1]) {
    out.copy_from_slice(x);
    layer_norm(out, rstd, out.len());
    bdh_kernels::affine(out, p.weight, p.bias.unwrap_or(&[]));
}
