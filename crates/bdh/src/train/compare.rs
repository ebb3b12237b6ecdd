//! BDH against the GPT baseline at matched sizes: the run configs of a fair
//! comparison and the numbers that make it one. Both families of a size train on
//! the same batches in the same order (same data, seed, batch, context and token
//! budget, the same schedule shape), each with its own weight-decay rule and the
//! dropout of its `small` preset (BDH 0.1, GPT 0), and each at the learning rate
//! that a sweep of its own chose ([`rates`], [`choose`]). Losses are also read at
//! equal training compute ([`loss_at`]), and beside the loss of the data's byte
//! frequencies, the plateau a language model leaves first ([`unigram_loss`]).

use std::path::Path;

use super::config::RunConfig;
use crate::data::DataConfig;
use crate::error::{Error, Result};
use crate::io::run_dir::{Checkpoint, RunDir};
use crate::model::bdh::BdhConfig;
use crate::model::gpt::GptConfig;
use crate::model::ModelConfig;

/// Context of every run of a comparison (the presets' `block_size`).
pub const BLOCK: usize = 256;

/// One size: a BDH and a GPT of about the same number of trained parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Size {
    /// Short name (`xs`, `s`, `m`).
    pub name: &'static str,
    /// The BDH.
    pub bdh: BdhConfig,
    /// The GPT, with the same depth where the widths allow it.
    pub gpt: GptConfig,
}

/// The sizes, smallest first. At equal depth a GPT has 12·D² parameters a block
/// against BDH's 3·mult·D² for the whole model; `xs` and `s` match with equal
/// widths, `m` (the `small` preset) with a wider GPT.
pub fn sizes() -> Vec<Size> {
    let bdh = |n_layer, n_embd, n_head, mult| BdhConfig {
        n_layer,
        n_embd,
        n_head,
        mlp_internal_dim_multiplier: mult,
        vocab_size: 256,
        dropout: 0.1,
        ..BdhConfig::default()
    };
    let gpt = |n_layer, n_embd, n_head| GptConfig {
        block_size: BLOCK,
        vocab_size: 256,
        n_layer,
        n_head,
        n_embd,
        dropout: 0.0,
        bias: false,
    };
    vec![
        Size { name: "xs", bdh: bdh(2, 64, 2, 8), gpt: gpt(2, 64, 2) },
        Size { name: "s", bdh: bdh(4, 96, 4, 16), gpt: gpt(4, 96, 4) },
        Size { name: "m", bdh: bdh(4, 128, 4, 32), gpt: gpt(4, 180, 6) },
    ]
}

/// The sizes named in `names` (all if empty), in the order given.
pub fn pick(names: &[String]) -> Result<Vec<Size>> {
    let all = sizes();
    if names.is_empty() {
        return Ok(all);
    }
    names
        .iter()
        .map(|n| {
            all.iter().find(|s| s.name == n.as_str()).cloned().ok_or_else(|| {
                let have: Vec<&str> = all.iter().map(|s| s.name).collect();
                Error::Config(format!("no comparison size `{n}` (have: {})", have.join(", ")))
            })
        })
        .collect()
}

/// The preset a family's comparison runs take their training settings from.
fn preset(model: &ModelConfig) -> &'static str {
    match model {
        ModelConfig::Bdh(_) => "small",
        ModelConfig::Gpt(_) => "gpt-small",
    }
}

/// The peak learning rates a comparison tries for `model`'s family, around its
/// preset's (BDH `small` 2e-3, `gpt-small` 4e-3), smallest first. At the smallest
/// size both families' best lay at the top of a grid that ended a step lower.
pub fn rates(model: &ModelConfig) -> Vec<f64> {
    match model {
        ModelConfig::Bdh(_) => vec![1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
        ModelConfig::Gpt(_) => vec![1e-3, 2e-3, 4e-3, 1e-2, 2e-2],
    }
}

/// The learning rate of the lowest loss among `(rate, loss)` (the smaller rate on
/// a tie; a run whose loss is not a number loses), or `None` if there is none.
pub fn choose(tried: &[(f64, f64)]) -> Option<f64> {
    let key = |l: f64| if l.is_nan() { f64::INFINITY } else { l };
    tried.iter().copied().min_by(|a, b| key(a.1).total_cmp(&key(b.1)).then(a.0.total_cmp(&b.0))).map(|(r, _)| r)
}

/// The value of the piecewise-linear `curve` (points sorted by x) at `x`, if `x`
/// lies within it (up to a thousandth of its last x past its end).
pub fn loss_at(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let (first, last) = (curve.first()?, curve.last()?);
    if x < first.0 || x > last.0 * 1.001 {
        return None;
    }
    if x >= last.0 {
        return Some(last.1);
    }
    let i = curve.partition_point(|p| p.0 <= x);
    let (a, b) = (curve[i - 1], curve[i]);
    Some(a.1 + (b.1 - a.1) * (x - a.0) / (b.0 - a.0))
}

/// Training batches whose tokens count the unigram frequencies.
const UNIGRAM_BATCHES: u64 = 64;

/// The loss (nats per token) of predicting every validation token from the token
/// frequencies of `UNIGRAM_BATCHES` training batches (add-one smoothed): what a
/// model scores before it uses any context, on the same `batches` validation
/// batches of `b` × `t` as the runs' evaluations.
pub fn unigram_loss(corpus: &crate::data::Corpus, batches: usize, b: usize, t: usize) -> f64 {
    let v = corpus.tokenizer().vocab_size();
    let mut counts = vec![1.0f64; v];
    for i in 0..UNIGRAM_BATCHES {
        for &tok in &corpus.train_batch(0, i, b, t).targets {
            counts[tok as usize] += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    let (mut loss, mut n) = (0.0, 0usize);
    for i in 0..batches {
        for &tok in &corpus.val_batch(i, batches, b, t).targets {
            loss -= (counts[tok as usize] / total).ln();
            n += 1;
        }
    }
    loss / n.max(1) as f64
}

/// The run config of `model` in a comparison at peak learning rate `lr` (decaying
/// to a tenth) and seed `seed`: its family's preset (`small` or `gpt-small`) for the
/// other training settings, `tokens` training tokens in steps of batch × [`BLOCK`],
/// an evaluation every eighth of the run, on `data`.
pub fn run_config(model: ModelConfig, tokens: usize, data: &DataConfig, lr: f64, seed: u64) -> Result<RunConfig> {
    let mut run = RunConfig::resolve(preset(&model), &[])?;
    let t = &mut run.training;
    t.lr = lr;
    t.min_lr = lr / 10.0;
    t.seed = seed;
    let per_step = t.batch_size * t.block_size;
    t.max_steps = (tokens / per_step).max(1);
    t.warmup_steps = t.warmup_steps.min(t.max_steps / 10);
    t.eval_interval = (t.max_steps / 8).max(1);
    t.sample_interval = 0;
    run.model = model;
    run.data = data.clone();
    run.validate()?;
    Ok(run)
}

/// Whether `run` continues a run in `dir`: yes if `dir` holds one started with the
/// same settings, no if it holds none; refused if it holds one started with others.
pub fn continues(run: &RunConfig, dir: &Path) -> Result<bool> {
    let Some(existing) = RunDir::open(dir).ok().filter(|r| r.has(Checkpoint::Last)) else { return Ok(false) };
    let changes = run.changes(&existing.config(&[])?);
    if changes.is_empty() {
        return Ok(true);
    }
    Err(Error::Refused(format!(
        "{} holds a run made with other settings ({}); give another --out, or the same flags as before",
        dir.display(),
        changes.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_loss_chooses_the_rate_and_a_tie_the_smaller_rate() {
        assert_eq!(choose(&[(1e-3, 1.2), (2e-3, 1.1), (4e-3, 1.3)]), Some(2e-3));
        assert_eq!(choose(&[(4e-3, 1.0), (1e-3, 1.0)]), Some(1e-3));
        assert_eq!(choose(&[(1e-2, f64::NAN), (1e-3, 5.0)]), Some(1e-3), "a diverged run never wins");
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn a_curve_is_read_between_its_points_and_not_past_them() {
        let curve = [(100.0, 4.0), (200.0, 2.0), (400.0, 1.0)];
        assert_eq!(loss_at(&curve, 150.0), Some(3.0));
        assert_eq!(loss_at(&curve, 300.0), Some(1.5));
        assert_eq!(loss_at(&curve, 100.0), Some(4.0));
        assert_eq!(loss_at(&curve, 400.2), Some(1.0), "a rounding past the end is the end");
        assert_eq!(loss_at(&curve, 99.0), None);
        assert_eq!(loss_at(&curve, 401.0), None);
        assert_eq!(loss_at(&[], 1.0), None);
    }

    #[test]
    fn every_family_sweeps_around_its_presets_rate() {
        for size in sizes() {
            for model in [ModelConfig::Bdh(size.bdh.clone()), ModelConfig::Gpt(size.gpt.clone())] {
                let preset_lr = RunConfig::resolve(preset(&model), &[]).unwrap().training.lr;
                let r = rates(&model);
                assert!(r.contains(&preset_lr) && r.windows(2).all(|w| w[0] < w[1]), "{r:?} around {preset_lr}");
                let run = run_config(model, 100_000, &DataConfig::default(), r[0], 7).unwrap();
                assert_eq!((run.training.lr, run.training.min_lr, run.training.seed), (r[0], r[0] / 10.0, 7));
            }
        }
    }
}
