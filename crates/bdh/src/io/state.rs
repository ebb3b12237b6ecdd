//! Saved inference states: a sequence's whole memory in one safetensors file, to
//! restore it later or elsewhere (a BDH state is its position and ρ, of a size fixed
//! by the model, however long the text it has read).

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use super::{read_safetensors, write_atomic, TensorData};
use crate::error::{Error, Result};
use crate::infer::{Prepared, State};
use crate::model::bdh;
use crate::model::ModelConfig;

/// Writes `state` to `path` (atomically): `rho` (L·H·N·D values) as f32 and `position`
/// as one i64.
pub fn save(state: &State, path: &Path) -> Result<()> {
    let State::Bdh(s) = state;
    let rho: Vec<u8> = s.rho.iter().flat_map(|v| v.to_le_bytes()).collect();
    let pos = (s.pos as i64).to_le_bytes();
    let bad = |e: safetensors::SafeTensorError| Error::Input(format!("state: {e}"));
    let views = [
        ("rho".to_string(), TensorView::new(Dtype::F32, vec![s.rho.len()], &rho).map_err(bad)?),
        ("position".to_string(), TensorView::new(Dtype::I64, vec![1], &pos).map_err(bad)?),
    ];
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Input(format!("serialising state: {e}")))?;
    write_atomic(path, &bytes)
}

/// Reads a state saved by [`save`] for a model of `prepared`'s config.
pub fn load(prepared: &Prepared, path: &Path) -> Result<State> {
    let mut tensors = read_safetensors(path)?;
    let ModelConfig::Bdh(cfg) = prepared.config();
    let want: usize = bdh::State::shape(&cfg).iter().product();
    let rho = tensors.remove("rho").ok_or_else(|| Error::MissingTensor { path: path.into(), name: "rho".into() })?;
    let pos = tensors
        .remove("position")
        .ok_or_else(|| Error::MissingTensor { path: path.into(), name: "position".into() })?;
    let TensorData::F32(rho) = rho.data else { return Err(Error::format(path, "rho is not floating point")) };
    if rho.len() != want {
        return Err(Error::format(path, format!("a state of {} values, but this model's ρ has {want}", rho.len())));
    }
    let pos = match pos.data {
        TensorData::I64(p) if p.len() == 1 && p[0] >= 0 => p[0] as usize,
        _ => return Err(Error::format(path, "position is not one non-negative integer")),
    };
    if rho.iter().any(|x| !x.is_finite()) {
        return Err(Error::format(path, "ρ holds values that are not finite"));
    }
    Ok(State::Bdh(bdh::State { pos, rho }))
}
