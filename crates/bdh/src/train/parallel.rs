//! What a run on K processes (data parallelism) adds to the loop of one: every
//! process checks it runs the same config, starts from process 0's model and
//! optimizer state, draws its own rows of each step's batch, and agrees with the
//! others on the loss and on when to stop. With one process each is the identity.
//!
//! Process r of K with a local batch of B rows draws rows r·B … (r+1)·B − 1 of the
//! global batch of K·B rows, so K processes of B rows see exactly the sequences one
//! process of K·B rows would, and a run is reproducible and resumable with the same K.

use std::ops::Range;

use super::run::TrainerState;
use super::{Collective, RunConfig, Trainer};
use crate::error::{Error, Result};

/// The rows of each step's global batch that this process draws, for `b` rows
/// per process.
pub fn rows(collective: &dyn Collective, b: usize) -> Range<usize> {
    let r = collective.rank();
    r * b..(r + 1) * b
}

/// The seed of the dropout masks of micro-batch `index` on process `rank`:
/// process 0's is a single process's, the others' differ from it.
pub fn dropout_seed(seed: u64, index: u64, rank: usize) -> u64 {
    seed ^ index.wrapping_mul(0x9e37_79b9) ^ (rank as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Whether any process has `flag` set: every process stops at the same step.
pub fn any(collective: &dyn Collective, flag: bool) -> Result<bool> {
    if collective.size() == 1 {
        return Ok(flag);
    }
    let mut buf = [flag as u8 as f32];
    collective.all_reduce_mean(&mut buf)?;
    Ok(buf[0] > 0.0)
}

/// The mean over processes of each one's `loss`.
pub fn mean(collective: &dyn Collective, loss: f32) -> Result<f32> {
    let mut buf = [loss];
    collective.all_reduce_mean(&mut buf)?;
    Ok(buf[0])
}

/// An error unless this process's run config is process 0's, naming the settings
/// that differ; and an error for settings a run on several processes cannot take.
pub fn check_config(collective: &dyn Collective, run: &RunConfig) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    if run.training.carry_state {
        return Err(Error::Config(format!(
            "training.carry_state carries the synapse state of each batch row on one process; it does not \
             run on {} processes",
            collective.size()
        )));
    }
    let mut text = run.to_toml().into_bytes();
    collective.broadcast_bytes(&mut text, 0)?;
    let first = String::from_utf8_lossy(&text);
    let origin = std::path::Path::new("process 0's run config");
    let theirs = RunConfig::from_toml(&first, origin, &[])?;
    if theirs != *run {
        return Err(Error::Config(format!(
            "process {} runs another config than process 0: {}",
            collective.rank(),
            run.changes(&theirs).join("; ")
        )));
    }
    Ok(())
}

/// Gives every process process 0's parameters, optimizer moments and step (so the
/// others neither read a checkpoint nor depend on initialising alike).
pub fn share_start(collective: &dyn Collective, trainer: &mut Trainer, state: &mut TrainerState) -> Result<()> {
    if collective.size() == 1 {
        return Ok(());
    }
    collective.broadcast(trainer.model.params_mut().data_mut(), 0)?;
    collective.broadcast(trainer.opt.m.data_mut(), 0)?;
    collective.broadcast(trainer.opt.v.data_mut(), 0)?;
    let mut json = serde_json::json!({"state": state, "optimizer_step": trainer.opt.step}).to_string().into_bytes();
    collective.broadcast_bytes(&mut json, 0)?;
    let bad = |e: String| Error::Config(format!("process 0's trainer state did not arrive whole: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    *state = serde_json::from_value(value["state"].clone()).map_err(|e| bad(e.to_string()))?;
    trainer.opt.step = value["optimizer_step"].as_u64().ok_or_else(|| bad("no optimizer_step".into()))?;
    Ok(())
}
