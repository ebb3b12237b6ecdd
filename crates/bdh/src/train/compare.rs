//! BDH against the GPT baseline at matched sizes: the run configs of a fair
//! comparison. Both families of a size train on the same batches in the same order
//! (same data, seed, batch, context and token budget, the same schedule shape),
//! each with its own preset's learning rate and weight-decay rule, and the dropout
//! of its `small` preset (BDH 0.1, GPT 0).

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

/// The run config of `model` in a comparison: its family's preset (`small` or
/// `gpt-small`) for the training settings, `tokens` training tokens in steps of
/// batch × [`BLOCK`], an evaluation every eighth of the run, on `data`.
pub fn run_config(model: ModelConfig, tokens: usize, data: &DataConfig) -> Result<RunConfig> {
    let preset = match model {
        ModelConfig::Bdh(_) => "small",
        ModelConfig::Gpt(_) => "gpt-small",
    };
    let mut run = RunConfig::resolve(preset, &[])?;
    let t = &mut run.training;
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
