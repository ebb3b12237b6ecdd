//! The GPT's trained tensors in the flat parameter buffer, with nanoGPT's
//! `state_dict` names, shapes, order and initialisation. `lm_head.weight` is tied
//! to `transformer.wte.weight`: one tensor, held once.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::config::GptConfig;
use crate::error::Result;
use crate::params::Params;

/// The name nanoGPT's `state_dict` gives the output head (the same tensor as `WTE`).
pub const LM_HEAD: &str = "lm_head.weight";
/// The token embedding.
pub const WTE: &str = "transformer.wte.weight";

/// (name, shape) of every trained tensor, in nanoGPT's `state_dict` order. Linear
/// weights are (out, in), as `nn.Linear` stores them.
pub fn layout(c: &GptConfig) -> Vec<(String, Vec<usize>)> {
    let d = c.n_embd;
    let mut out =
        vec![(WTE.to_string(), vec![c.vocab_size, d]), ("transformer.wpe.weight".into(), vec![c.block_size, d])];
    let mut push = |name: String, shape: Vec<usize>, bias: Option<usize>| {
        out.push((format!("{name}.weight"), shape));
        if let (true, Some(n)) = (c.bias, bias) {
            out.push((format!("{name}.bias"), vec![n]));
        }
    };
    for i in 0..c.n_layer {
        let h = format!("transformer.h.{i}");
        push(format!("{h}.ln_1"), vec![d], Some(d));
        push(format!("{h}.attn.c_attn"), vec![3 * d, d], Some(3 * d));
        push(format!("{h}.attn.c_proj"), vec![d, d], Some(d));
        push(format!("{h}.ln_2"), vec![d], Some(d));
        push(format!("{h}.mlp.c_fc"), vec![4 * d, d], Some(4 * d));
        push(format!("{h}.mlp.c_proj"), vec![d, 4 * d], Some(d));
    }
    push("transformer.ln_f".into(), vec![d], Some(d));
    out
}

/// A zeroed buffer laid out for `c`.
pub fn zeros(c: &GptConfig) -> Result<Params> {
    let l = layout(c);
    Params::zeros(&named(&l))
}

/// `layout` with borrowed names, as [`Params`] takes them.
pub fn named(layout: &[(String, Vec<usize>)]) -> Vec<(&str, Vec<usize>)> {
    layout.iter().map(|(n, s)| (n.as_str(), s.clone())).collect()
}

/// nanoGPT's initialisation: Linear and Embedding weights N(0, 0.02²), every
/// `c_proj.weight` N(0, (0.02/√(2L))²), biases 0, LayerNorm weights 1.
pub fn init(c: &GptConfig, seed: u64) -> Result<Params> {
    let mut p = zeros(c)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 0.02).expect("valid std");
    let proj = Normal::new(0.0f32, 0.02 / (2.0 * c.n_layer as f32).sqrt()).expect("valid std");
    for slot in p.slots().to_vec() {
        let values = &mut p.data_mut()[slot.range.clone()];
        let name = slot.name.as_str();
        if name.ends_with(".bias") {
            values.fill(0.0);
        } else if name.contains(".ln_") {
            values.fill(1.0);
        } else if name.ends_with("c_proj.weight") {
            values.iter_mut().for_each(|v| *v = proj.sample(&mut rng));
        } else {
            values.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
        }
    }
    Ok(p)
}

/// A Linear layer or a LayerNorm: weight and optional bias.
#[derive(Debug)]
pub struct Affine<S> {
    /// Linear: (out, in); LayerNorm: (D).
    pub weight: S,
    /// (out) or (D), if the config has biases.
    pub bias: Option<S>,
}

/// The tensors of one transformer block.
#[derive(Debug)]
pub struct Block<S> {
    /// LayerNorm before attention.
    pub ln_1: Affine<S>,
    /// q, k, v projection, (3D, D).
    pub c_attn: Affine<S>,
    /// Attention output projection, (D, D).
    pub attn_proj: Affine<S>,
    /// LayerNorm before the MLP.
    pub ln_2: Affine<S>,
    /// MLP up-projection, (4D, D).
    pub c_fc: Affine<S>,
    /// MLP down-projection, (D, 4D).
    pub mlp_proj: Affine<S>,
}

/// Every tensor of a GPT buffer by role, as `&[f32]` (weights) or `&mut [f32]` (gradients).
#[derive(Debug)]
pub struct Tensors<S> {
    /// Token embedding and tied output head, (V, D).
    pub wte: S,
    /// Position embedding, (block_size, D).
    pub wpe: S,
    /// The blocks.
    pub blocks: Vec<Block<S>>,
    /// Final LayerNorm.
    pub ln_f: Affine<S>,
}

impl<S> Tensors<S> {
    /// Assigns the slices of a buffer laid out by [`layout`], in order.
    pub fn from_slots(c: &GptConfig, slices: impl IntoIterator<Item = S>) -> Self {
        let mut it = slices.into_iter();
        let mut next = || it.next().expect("a slice per slot of the GPT layout");
        let (wte, wpe) = (next(), next());
        let affine = |next: &mut dyn FnMut() -> S| Affine { weight: next(), bias: c.bias.then(&mut *next) };
        let blocks = (0..c.n_layer)
            .map(|_| Block {
                ln_1: affine(&mut next),
                c_attn: affine(&mut next),
                attn_proj: affine(&mut next),
                ln_2: affine(&mut next),
                c_fc: affine(&mut next),
                mlp_proj: affine(&mut next),
            })
            .collect();
        let ln_f = affine(&mut next);
        Tensors { wte, wpe, blocks, ln_f }
    }
}

/// The weights of `p` (laid out for `c`) by role.
pub fn weights<'a>(c: &GptConfig, p: &'a Params) -> Tensors<&'a [f32]> {
    let data = p.data();
    Tensors::from_slots(c, p.slots().iter().map(|s| &data[s.range.clone()]))
}

/// The gradient buffer `p` (laid out for `c`) by role, writable.
pub fn weights_mut<'a>(c: &GptConfig, p: &'a mut Params) -> Tensors<&'a mut [f32]> {
    Tensors::from_slots(c, p.split_mut())
}

/// Whether AdamW decays the tensor `name`: nanoGPT decays every tensor of two or
/// more dimensions (weights, embeddings) and no bias or LayerNorm weight.
pub fn decays(shape: &[usize]) -> bool {
    shape.len() >= 2
}
