//! Saved inference states: a sequence's whole memory in one safetensors file, to
//! restore it later or elsewhere (a BDH state is its position and ρ, of a size fixed
//! by the model, however long the text it has read).
//!
//! The file holds `rho` (f32, L·H·N·D values) and `position` (one i64), and in its
//! metadata the model's config and a fingerprint of its weights, so a state is only
//! ever continued by the model that wrote it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::write_atomic;
use crate::error::{Error, Result};
use crate::infer::{Prepared, State};
use crate::model::{bdh, ModelConfig};

/// Bytes a state file may hold besides ρ and the position: its header.
const HEADER_LIMIT: u64 = 1 << 16;

/// Writes `state`, read by the model of `prepared`, to `path` (atomically).
pub fn save(prepared: &Prepared, state: &State, path: &Path) -> Result<()> {
    let State::Bdh(s) = state else { return Err(not_bdh()) };
    let rho: Vec<u8> = s.rho.iter().flat_map(|v| v.to_le_bytes()).collect();
    let pos = (s.pos as i64).to_le_bytes();
    let bad = |e: safetensors::SafeTensorError| Error::Input(format!("state: {e}"));
    let views = [
        ("rho".to_string(), TensorView::new(Dtype::F32, vec![s.rho.len()], &rho).map_err(bad)?),
        ("position".to_string(), TensorView::new(Dtype::I64, vec![1], &pos).map_err(bad)?),
    ];
    let bytes = safetensors::serialize(views, Some(identity(prepared))).map_err(bad)?;
    write_atomic(path, &bytes)
}

/// Reads a state saved by [`save`] for the model of `prepared`: the sizes are checked
/// against the file's length before it is read, the config and weights against the
/// metadata, every value for being finite.
pub fn load(prepared: &Prepared, path: &Path) -> Result<State> {
    let ModelConfig::Bdh(cfg) = prepared.config() else { return Err(not_bdh()) };
    let want: usize = bdh::State::shape(&cfg).iter().product();
    let bad = |m: String| Error::format(path, m);
    let len = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?.len();
    let most = (want as u64) * 4 + 8 + HEADER_LIMIT;
    if len > most {
        return Err(bad(format!("{len} bytes is more than a state of this model can be ({most} at most)")));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a saved state: {e}")))?;
    if st.len() != 2 {
        return Err(bad(format!("{} tensors; a state holds `rho` and `position`", st.len())));
    }
    let tensor =
        |name: &str| st.tensor(name).map_err(|_| Error::MissingTensor { path: path.into(), name: name.into() });
    let (rho, pos) = (tensor("rho")?, tensor("position")?);
    if rho.dtype() != Dtype::F32 || rho.shape() != [want] {
        return Err(bad(format!("rho is {:?} {:?}; this model's is F32 [{want}]", rho.dtype(), rho.shape())));
    }
    if pos.dtype() != Dtype::I64 || pos.shape() != [1] {
        return Err(bad(format!("position is {:?} {:?}, not one i64", pos.dtype(), pos.shape())));
    }
    let pos = i64::from_le_bytes(pos.data().try_into().expect("one i64 is 8 bytes"));
    let pos = usize::try_from(pos).map_err(|_| bad(format!("position {pos} is negative")))?;
    let rho: Vec<f32> =
        rho.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    if rho.iter().any(|x| !x.is_finite()) {
        return Err(bad("ρ holds values that are not finite".into()));
    }
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a saved state: {e}")))?;
    if meta.metadata().as_ref() != Some(&identity(prepared)) {
        return Err(bad("saved by another model (its config or weights differ from this one's)".into()));
    }
    let state = bdh::State { pos, rho };
    state.check(&cfg)?;
    Ok(State::Bdh(state))
}

/// The metadata that ties a state to its model: the config and a fingerprint
/// (FNV-1a) of the weights' bits.
fn identity(prepared: &Prepared) -> HashMap<String, String> {
    let hash = match prepared {
        Prepared::Bdh(p) => p.model().params.fingerprint(),
        Prepared::Gpt(p) => p.model().params.fingerprint(),
    };
    HashMap::from([("config".to_string(), prepared.config().to_json()), ("weights".to_string(), hash)])
}

/// An error unless states of `prepared`'s family can be saved (BDH's can; a GPT's not).
pub fn supported(prepared: &Prepared) -> Result<()> {
    match prepared {
        Prepared::Bdh(_) => Ok(()),
        Prepared::Gpt(_) => Err(not_bdh()),
    }
}

/// Saved states are BDH's: a GPT's memory is its KV cache, which grows with the text.
fn not_bdh() -> Error {
    Error::Input(
        "saved states are for BDH models, whose state has a fixed size; a GPT's memory is its KV cache, \
         which grows with the text (keep the text and give it as the prompt instead)"
            .into(),
    )
}
