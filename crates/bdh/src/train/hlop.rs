//! Continual learning by Hebbian orthogonal projection (HLOP): a run that starts from
//! an earlier model (`training.init_from`) with `training.continual = "hlop"` keeps
//! what that model learnt by training only in the directions its earlier inputs did
//! not use.
//!
//! At the run's start, the earlier model reads batches of its own training data (the
//! data its run directory names), and for each weight a population of Hebbian units
//! learns the principal subspace of that weight's inputs by Sanger's rule —
//! `Δw_i = η y_i (x − Σ_{j≤i} y_j w_j)`, `y = W x`, on unit-length inputs — which
//! converges to the top k eigenvectors of the inputs' second moment, in order. The
//! weights and their inputs: `encoder` (the residual stream v, D), `encoder_v` (the
//! normalised attention read of every head, D), `decoder` (x ⊙ y of all heads, H·N)
//! and `lm_head` (the last v, D), every layer's inputs pooled (the layers share them);
//! and `embed.weight`, whose inputs are one-hot tokens: their second moment is diagonal,
//! so its principal subspace is that of the k most frequent tokens, taken as counted.
//! The subspaces are saved in the run directory (`subspaces.safetensors`) and read back
//! on resume. Every step, each of those weights' gradient G (input × output) becomes
//! `G − Pᵀ(P G)` with P the subspace's orthonormal rows (k × input) before the optimizer,
//! and so does the step the optimizer takes (AdamW's per-element scaling and weight decay
//! would otherwise move the weights inside the subspaces): to first order the new task's
//! steps leave the earlier inputs' outputs as they were.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use bdh_kernels::{matmul, MatMul};

use crate::data::Corpus;
use crate::error::{Error, Result};
use crate::io::{encode_safetensors, read_safetensors, write_atomic};
use crate::model::bdh::{forward, Activations, Bdh, Pass};
use crate::params::Params;

/// Training batches of the earlier run's data its model reads to learn the subspaces.
pub const EXTRACT_BATCHES: usize = 16;
/// The run directory's file of the earlier model's input subspaces.
pub const SUBSPACES_FILE: &str = "subspaces.safetensors";
/// The most components a subspace may have.
pub const MAX_COMPONENTS: usize = 1024;
/// Sanger's rule's learning rate, on unit-length inputs.
const RATE: f32 = 0.005;

/// How a run keeps what its starting model learnt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Continual {
    /// Plain fine-tuning.
    #[default]
    None,
    /// Gradients projected off the earlier inputs' top `components` directions.
    Hlop {
        /// k: the components of each weight's subspace.
        components: usize,
    },
}

impl TryFrom<String> for Continual {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        let bad = || {
            format!(
                "training.continual `{s}`: expected \"none\", \"hlop\" or \"hlop:k\" with k in 1..={MAX_COMPONENTS}"
            )
        };
        match s.as_str() {
            "none" => Ok(Continual::None),
            "hlop" => Ok(Continual::Hlop { components: 32 }),
            _ => match s.strip_prefix("hlop:").map(str::parse::<usize>) {
                Some(Ok(k)) if (1..=MAX_COMPONENTS).contains(&k) => Ok(Continual::Hlop { components: k }),
                _ => Err(bad()),
            },
        }
    }
}

impl From<Continual> for String {
    fn from(c: Continual) -> Self {
        match c {
            Continual::None => "none".into(),
            Continual::Hlop { components } => format!("hlop:{components}"),
        }
    }
}

impl Continual {
    /// Whether this is plain fine-tuning.
    pub fn is_none(&self) -> bool {
        *self == Continual::None
    }
}

/// Sets up `trainer`'s projection for a run of `continual` in `dir`: on a fresh run,
/// learnt from the model the run starts from (`init_from`) on its own run's data and
/// saved in `dir` (by the process that writes the run); on a resumed one, read back from `dir`. Nothing for plain runs.
pub(crate) fn prepare(
    continual: Continual,
    init_from: Option<&Path>,
    (dir, writer): (&Path, bool),
    resumed: bool,
    trainer: &mut super::Trainer,
) -> Result<()> {
    let Continual::Hlop { components } = continual else { return Ok(()) };
    let crate::model::Model::Bdh(model) = &trainer.model else {
        return Err(Error::Config("training.continual = \"hlop\" projects BDH's gradients; this is a GPT".into()));
    };
    let file = dir.join(SUBSPACES_FILE);
    let spaces = if resumed {
        Subspaces::load(&file, model)?
    } else {
        let from = init_from.ok_or_else(|| Error::Config("training.continual needs training.init_from".into()))?;
        let earlier = crate::io::run_dir::RunDir::of_model(from).ok_or_else(|| {
            Error::Config(format!(
                "{}: training.continual = \"hlop\" learns the earlier model's inputs on its own run's data, and this \
                 is not a run directory or one of its checkpoints (whose config.toml names that data)",
                from.display()
            ))
        })?;
        let run = earlier.config(&[])?;
        let corpus = run.data.corpus(run.training.block_size)?;
        let shape = (run.training.batch_size, run.training.block_size);
        let spaces = Subspaces::extract(model, &corpus, shape, EXTRACT_BATCHES, components)?;
        if writer {
            spaces.save(&file)?;
        }
        spaces
    };
    trainer.projection = Some(spaces);
    Ok(())
}

/// A population of Hebbian units learning the principal subspace of their inputs by
/// Sanger's rule.
#[derive(Clone, Debug)]
pub struct Hebbian {
    w: Vec<f32>, // (k, dim)
    k: usize,
    dim: usize,
}

impl Hebbian {
    /// k units over inputs of `dim`, drawn small from `seed`.
    pub fn new(k: usize, dim: usize, seed: u64) -> Self {
        let normal = Normal::new(0.0f32, 0.1 / (dim as f32).sqrt()).expect("a valid std");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Hebbian { w: (0..k * dim).map(|_| normal.sample(&mut rng)).collect(), k, dim }
    }

    /// One update from input `x` (dim), taken at unit length (a zero input teaches nothing).
    pub fn learn(&mut self, x: &[f32]) {
        let norm = x.iter().map(|&v| v * v).sum::<f32>().sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return;
        }
        let x: Vec<f32> = x.iter().map(|&v| v / norm).collect();
        let y: Vec<f32> = self.w.chunks_exact(self.dim).map(|w| w.iter().zip(&x).map(|(a, b)| a * b).sum()).collect();
        // residual_i = x − Σ_{j≤i} y_j w_j, built up unit by unit
        let mut residual = x;
        for (w, &yi) in self.w.chunks_exact_mut(self.dim).zip(&y) {
            residual.iter_mut().zip(w.iter()).for_each(|(r, &wv)| *r -= yi * wv);
            w.iter_mut().zip(&residual).for_each(|(wv, &r)| *wv += RATE * yi * r);
        }
    }

    /// The learnt directions made orthonormal (Gram–Schmidt in the units' order),
    /// (k, dim) row by row; a unit that learnt nothing new is left out.
    pub fn basis(&self) -> Vec<f32> {
        let mut rows: Vec<Vec<f64>> = Vec::with_capacity(self.k);
        for w in self.w.chunks_exact(self.dim) {
            let mut v: Vec<f64> = w.iter().map(|&x| x as f64).collect();
            for u in &rows {
                let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm > 1e-6 {
                rows.push(v.into_iter().map(|a| a / norm).collect());
            }
        }
        rows.into_iter().flatten().map(|a| a as f32).collect()
    }
}

/// The earlier model's input subspaces, one per projected weight: (name, input
/// width, orthonormal rows (k, input)).
#[derive(Clone, Debug, PartialEq)]
pub struct Subspaces {
    /// (weight, input width, rows).
    pub spaces: Vec<(String, usize, Vec<f32>)>,
}

impl Subspaces {
    /// Learns the subspaces of `model`'s inputs on `batches` training batches (B, T)
    /// of `corpus`, k components each.
    pub fn extract(model: &Bdh, corpus: &Corpus, (b, t): (usize, usize), batches: usize, k: usize) -> Result<Self> {
        let c = &model.config;
        let (d, h, n) = (c.n_embd, c.n_head, c.n_neurons());
        if k > d {
            return Err(Error::Config(format!("training.continual = \"hlop:{k}\": more components than n_embd = {d}")));
        }
        let mut units = [("encoder", d), ("encoder_v", d), ("decoder", h * n), ("lm_head", d)]
            .map(|(name, dim)| (name, Hebbian::new(k, dim, 0x686c_6f70 ^ dim as u64)));
        let mut acts = Activations::new(model, b, t)?;
        let mut counts = vec![0u64; c.vocab_size];
        for index in 0..batches as u64 {
            let batch = corpus.train_batch(0x686c_6f70, index, b, t);
            batch.tokens.iter().for_each(|&tok| counts[tok as usize] += 1);
            forward(model, &batch.tokens, &mut acts, Pass::default())?;
            for l in 0..c.n_layer {
                acts.residual(l).chunks_exact(d).for_each(|v| units[0].1.learn(v));
                acts.attention_read(l).chunks_exact(d).for_each(|a| units[1].1.learn(a));
                let (x, y) = (acts.x(l), acts.y(l));
                let mut z = vec![0.0f32; h * n];
                for row in 0..b {
                    for pos in 0..t {
                        for hi in 0..h {
                            let at = ((row * h + hi) * t + pos) * n;
                            let out = &mut z[hi * n..(hi + 1) * n];
                            out.iter_mut().zip(&x[at..at + n]).zip(&y[at..at + n]).for_each(|((o, &a), &b)| *o = a * b);
                        }
                        units[2].1.learn(&z);
                    }
                }
            }
            acts.residual(c.n_layer).chunks_exact(d).for_each(|v| units[3].1.learn(v));
        }
        let mut spaces: Vec<_> = units.into_iter().map(|(name, u)| (name.to_string(), u.dim, u.basis())).collect();
        // The embedding's inputs are one-hot tokens: their second moment is diagonal,
        // its top k directions the k most frequent tokens' (those that occurred).
        let v = c.vocab_size;
        let mut order: Vec<usize> = (0..v).filter(|&tok| counts[tok] > 0).collect();
        order.sort_by_key(|&tok| (std::cmp::Reverse(counts[tok]), tok));
        let rows = order.iter().take(k).flat_map(|&tok| (0..v).map(move |j| if j == tok { 1.0 } else { 0.0 }));
        spaces.insert(0, ("embed.weight".to_string(), v, rows.collect()));
        Ok(Subspaces { spaces })
    }

    /// `G ← G − Pᵀ(P G)` for each projected weight's gradient in `grads` (stored with
    /// its input first: (H, D, N) per head, (H·N, D), (D, V)).
    pub fn project(&self, grads: &mut Params) {
        for (name, dim, p) in &self.spaces {
            // each head's (D, N) of a (H, D, N) tensor, else the whole (input, output)
            let Some(shape) = grads.slot(name).map(|s| s.shape.clone()) else { continue };
            let block = if shape.len() == 3 { shape[1] * shape[2] } else { shape.iter().product() };
            let (k, g) = (p.len() / dim, grads.get_mut(name).expect("the slot above"));
            if k == 0 || block == 0 {
                continue;
            }
            for m in g.chunks_exact_mut(block) {
                let cols = m.len() / dim;
                let mut c = vec![0.0f32; k * cols];
                matmul(&mut c, p, m, MatMul::new(k, *dim, cols));
                c.iter_mut().for_each(|x| *x = -*x);
                matmul(m, p, &c, MatMul::new(*dim, k, cols).a_t().acc());
            }
        }
    }

    /// The projected weights of `params`, as [`Subspaces::project_step`] takes them.
    pub fn weights_of(&self, params: &Params) -> Vec<Vec<f32>> {
        self.spaces.iter().map(|(name, _, _)| params.get(name).map(<[f32]>::to_vec).unwrap_or_default()).collect()
    }

    /// Projects the step the optimizer just took, `params − before` (`before` from
    /// [`Subspaces::weights_of`]), the same way: AdamW rescales each gradient element by
    /// its own second moment (and decays the weights), which takes a projected
    /// gradient's step back into the subspaces.
    pub fn project_step(&self, params: &mut Params, before: &[Vec<f32>]) {
        let mut step = params.zeros_like();
        for ((name, _, _), was) in self.spaces.iter().zip(before) {
            let (Some(now), Some(d)) = (params.get(name), step.get_mut(name)) else { continue };
            d.iter_mut().zip(now.iter().zip(was)).for_each(|(d, (&a, &b))| *d = a - b);
        }
        self.project(&mut step);
        for ((name, _, _), was) in self.spaces.iter().zip(before) {
            let (Some(now), Some(d)) = (params.get_mut(name), step.get(name)) else { continue };
            now.iter_mut().zip(was.iter().zip(d)).for_each(|(p, (&b, &d))| *p = b + d);
        }
    }

    /// Writes them to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: Vec<(String, Vec<usize>, &[f32])> =
            self.spaces.iter().map(|(name, dim, p)| (name.clone(), vec![p.len() / dim, *dim], &p[..])).collect();
        write_atomic(path, &encode_safetensors(&tensors)?)
    }

    /// Reads those [`Subspaces::save`] wrote for `model`, checking each against its
    /// input width.
    pub fn load(path: &Path, model: &Bdh) -> Result<Self> {
        let c = &model.config;
        let mut tensors = read_safetensors(path)?;
        let mut spaces = Vec::new();
        let widths = [
            ("embed.weight", c.vocab_size),
            ("encoder", c.n_embd),
            ("encoder_v", c.n_embd),
            ("decoder", c.total_neurons()),
            ("lm_head", c.n_embd),
        ];
        for (name, dim) in widths {
            let t = tensors.remove(name).ok_or_else(|| Error::format(path, format!("no subspace of `{name}`")))?;
            let rows = t.f32s(name)?;
            if t.shape.len() != 2
                || t.shape[1] != dim
                || t.shape[0] > c.n_embd.min(MAX_COMPONENTS) // (k ≤ n_embd, as the config checks)
                || !rows.iter().all(|x| x.is_finite())
            {
                return Err(Error::format(
                    path,
                    format!("the subspace of `{name}` is not finite rows of {dim}: {:?}", t.shape),
                ));
            }
            spaces.push((name.to_string(), dim, rows.to_vec()));
        }
        Ok(Subspaces { spaces })
    }
}
