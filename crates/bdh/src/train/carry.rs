//! Training with the synapse state carried from batch to batch (truncated
//! backpropagation through time, as the paper trains BDH): each batch row reads its
//! own stream, the state ρ at the end of one batch is where the next starts, RoPE
//! positions keep counting, and the gradient stops at the batch boundary.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{encode_safetensors, read_safetensors, write_atomic};
use crate::model::bdh::State;
use crate::model::{Model, ModelConfig};

/// File of a checkpoint that holds the carried state.
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
        let ModelConfig::Bdh(c) = model else {
            return Err(Error::Config(format!(
                "training.carry_state carries BDH's synapse state; a {} has none",
                model.describe()
            )));
        };
        Ok(Carry { state: State::rows(c, rows)?, detach })
    }

    /// Empties the state: the streams start over.
    pub fn restart(&mut self) {
        self.state.rho.fill(0.0);
        self.state.pos = 0;
    }

    /// Writes the state into checkpoint directory `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let pos = [self.state.pos as f32];
        let tensors = vec![
            ("rho".to_string(), vec![self.state.rho.len()], &self.state.rho[..]),
            // A position is a whole number below 2²⁴, exact in f32.
            ("pos".to_string(), vec![1], &pos[..]),
        ];
        write_atomic(&dir.join(FILE), &encode_safetensors(&tensors)?)
    }

    /// Reads the state a checkpoint of `model` (`rows` streams) holds.
    pub fn load(dir: &Path, model: &Model, rows: usize, detach: bool) -> Result<Self> {
        let path = dir.join(FILE);
        let mut carry = Carry::new(&model.config(), rows, detach)?;
        let mut tensors = read_safetensors(&path)?;
        let mut take = |name: &str| {
            tensors.remove(name).ok_or_else(|| Error::MissingTensor { path: path.clone(), name: name.into() })
        };
        let (rho, pos) = (take("rho")?, take("pos")?);
        let (rho, pos) = (rho.f32s("rho")?, pos.f32s("pos")?);
        let pos = pos.first().copied().unwrap_or(-1.0);
        if rho.len() != carry.state.rho.len()
            || rho.iter().any(|v| !v.is_finite())
            || !(0.0..16_777_216.0).contains(&pos)
            || pos.fract() != 0.0
        {
            return Err(Error::format(&path, "the carried state does not fit this run, or holds bad values"));
        }
        carry.state.rho.copy_from_slice(rho);
        carry.state.pos = pos as usize;
        Ok(carry)
    }
}
