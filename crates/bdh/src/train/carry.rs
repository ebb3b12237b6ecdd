//! Training with the synapse state carried from batch to batch (truncated
//! backpropagation through time, as the paper trains BDH): each batch row reads its
//! own stream, the state ρ at the end of one batch is where the next starts, RoPE
//! positions keep counting, and the gradient stops at the batch boundary.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::state::{self, Unversioned};
use crate::model::bdh::State;
use crate::model::{Model, ModelConfig};

/// File of a checkpoint that holds the carried state, in the format of
/// [`crate::io::state`].
const FILE: &str = "carry.safetensors";

/// The state a run carries, and how its gradient is taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Carry {
    /// ρ of every batch row, (L, B, H, N, D), and the position of the next token.
    pub state: State,
    /// No gradient through the read of the carried state (paper Sec. 7.2's variant).
    pub detach: bool,
}

impl Carry {
    /// An empty state for `rows` streams of `model` (BDH only).
    pub fn new(model: &ModelConfig, rows: usize, detach: bool) -> Result<Self> {
        let ModelConfig::Bdh(c) = model else { return Err(no_state(model)) };
        Ok(Carry { state: State::rows(c, rows)?, detach })
    }

    /// Empties the state: the streams start over (ρ, the write key's traces and the
    /// queued writes all cleared).
    pub fn restart(&mut self) {
        self.state.rho.clear();
        self.state.keys.fill(0.0);
        self.state.queue.fill(0.0);
        self.state.pos = 0;
    }

    /// Writes the state into checkpoint directory `dir`, whose model is `model`.
    pub fn save(&self, dir: &Path, model: &Model) -> Result<()> {
        let Model::Bdh(m) = model else { return Err(no_state(&model.config())) };
        let rows = self.state.rho.len() / State::shape(&m.config).iter().product::<usize>().max(1);
        state::write(&dir.join(FILE), m, &self.state, rows)
    }

    /// Reads the state (`rows` streams) a checkpoint holds beside its model `model`,
    /// which must be the model that wrote it (a file of before the state format's
    /// version names none, and only its sizes and values are checked).
    pub fn load(dir: &Path, model: &Model, rows: usize, detach: bool) -> Result<Self> {
        let Model::Bdh(m) = model else { return Err(no_state(&model.config())) };
        let mut state = state::read(&dir.join(FILE), m, rows, Unversioned::Carried)?;
        // (training carries f32: a 16-bit file is widened, which is exact)
        state.rho = state.rho.converted(crate::model::bdh::StateDtype::F32)?;
        Ok(Carry { state, detach })
    }
}

/// Only BDH has a synapse state to carry.
fn no_state(model: &ModelConfig) -> Error {
    Error::Config(format!("training.carry_state carries BDH's synapse state; a {} has none", model.describe()))
}
