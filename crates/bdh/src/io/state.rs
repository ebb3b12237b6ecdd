//! Synapse states in files: the whole memory of a session, saved to continue it
//! later or elsewhere, and the streams a training run carries from batch to batch,
//! kept in its checkpoints. Both are one format, written by [`save`] and
//! [`Carry::save`](crate::train::carry::Carry::save), read by [`load`] and
//! [`Carry::load`](crate::train::carry::Carry::load) through one reader. A BDH state
//! is its position and ρ, of a size fixed by the model however long the text it has
//! read.
//!
//! # The format, version 1
//!
//! A safetensors file. Its metadata (strings):
//! - `format` = `bdh-state` and `version` = `1`. A version above the newest this
//!   build knows is refused as written by a newer bdh.
//! - `config`: the model's config as JSON, and `weights`: a fingerprint (FNV-1a) of
//!   its weights' bits, so that a state is only ever continued by the model that
//!   wrote it (the config is compared by value, so a field added later with a
//!   default does not orphan older files). A carried state names the model of its
//!   own checkpoint, and a resumed run checks it as a session's is checked: the
//!   weights lie in the same directory, so the check costs one pass over them and
//!   catches a state copied in from another run.
//!
//! Its tensors, by name:
//! - `rho`: f32, (L, B, H, N, D), layer-major as the forward reads it: ρ of every
//!   layer for B streams (B = 1 for a session; a run carries one stream per batch
//!   row).
//! - `position`: i64, \[1\]: the position of the next token, at most 2^24 (past it
//!   positions are no longer exact in f32).
//!
//! The reader skips nothing: a metadata key or tensor name the version does not
//! define is refused, as are a missing one, another type or shape, a value that is
//! not finite and a position out of range; a file longer than a state of the model
//! can be is refused before it is read. A mechanism with per-stream state (a trace,
//! a delay queue) adds its tensor to the list of a state's tensors, `fields`, with
//! its shape derived from the config, in a new version; the reader and writer then
//! take and give it by name beside ρ.
//!
//! # Version 2
//!
//! Version 1 and, for a model whose write key has traces (`trace`, `astrocyte`),
//! the tensor `keys`: f32, (L, B, H, W), W the traces' values per head (N per
//! mechanism); for a model with delays, `queue`: f32, (L, B, H, W'), the writes not
//! yet due, W' = slots · (N + D) with slots the most writes a head holds (max δ + 1
//! for fixed delays, M for `"learned:M"`). A model without either writes version 1,
//! so its files stay readable by builds that know only that.
//!
//! # Version 3
//!
//! Version 2 with `rho` stored in 16 bits: BF16 or F16 (safetensors' types), the same
//! shape — a state made with `--state-dtype bf16|f16`. An f32 state is written as
//! version 1 or 2, so builds that know only those read it.
//!
//! # Older files
//!
//! Files written before the format had a version have no `format` in their
//! metadata and still load, each where it was written for:
//! - a saved session: metadata `config` and `weights` (checked as above), `rho` f32
//!   flat \[L·H·N·D\], `position` i64 \[1\];
//! - a carried state (`carry.safetensors` in a checkpoint): no metadata, so no model
//!   to check, only its sizes and values; `rho` f32 flat \[B·L·H·N·D\] and `pos` f32
//!   \[1\].

use std::collections::HashMap;
use std::path::Path;

use bdh_kernels::Half;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{le_values, write_atomic};
use crate::error::{Error, Result};
use crate::infer::{Prepared, State};
use crate::model::bdh::delay::Queue;
use crate::model::bdh::key::KeySite;
use crate::model::bdh::{self, Bdh, BdhConfig, StateDtype};
use crate::model::{ModelConfig, MAX_POSITION};

/// What a state file names its format in the metadata key `format`.
pub const FORMAT: &str = "bdh-state";

/// The version of the format this build writes: the newest it reads.
pub const VERSION: u32 = 3;

/// Bytes a state file may hold besides its tensors' values: its header.
const HEADER_LIMIT: u64 = 1 << 16;

/// Writes `state`, read by the model of `prepared`, to `path` (atomically).
pub fn save(prepared: &Prepared, state: &State, path: &Path) -> Result<()> {
    let (Prepared::Bdh(p), State::Bdh(s)) = (prepared, state) else { return Err(not_bdh()) };
    write(path, p.model(), s, 1)
}

/// Reads a state saved by [`save`], or by a bdh of before the format's version, for
/// the model of `prepared`: the file's length is checked before it is read, the
/// config and weights against the metadata, every value for being finite. ρ comes
/// back in the type `prepared` makes states of, converted if the file holds another.
pub fn load(prepared: &Prepared, path: &Path) -> Result<State> {
    load_noting(prepared, path).map(|(state, _)| state)
}

/// [`load`], and a note when the file's ρ was of another type than `prepared`'s
/// states and was converted (rounded to nearest when narrower).
pub fn load_noting(prepared: &Prepared, path: &Path) -> Result<(State, Option<String>)> {
    load_in(prepared, path, Some(prepared.state_dtype()))
}

/// [`load_noting`] with ρ in `dtype` (`None`: the file's own type), refused where
/// the model's decay is too slow for it (as [`Prepared::state_of`] refuses).
pub fn load_in(prepared: &Prepared, path: &Path, dtype: Option<StateDtype>) -> Result<(State, Option<String>)> {
    let Prepared::Bdh(p) = prepared else { return Err(not_bdh()) };
    let state = read(path, p.model(), 1, Unversioned::Session)?;
    let from = state.rho.dtype();
    let to = dtype.unwrap_or(from);
    p.holds(to)?;
    if from == to {
        return Ok((State::Bdh(state), None));
    }
    let note = format!("{} holds ρ in {from}: converted to {to}", path.display());
    Ok((State::Bdh(state.converted(to)?), Some(note)))
}

/// Whether `path` is a saved state, of any version (a safetensors file whose
/// metadata names this format, or that holds `rho`); reads only its header.
pub fn is_state(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else { return false };
    let mut len = [0u8; 8];
    if file.read_exact(&mut len).is_err() || u64::from_le_bytes(len) > HEADER_LIMIT {
        return false;
    }
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    let Ok(v) = file.read_exact(&mut header).map(|()| serde_json::from_slice::<serde_json::Value>(&header)) else {
        return false;
    };
    v.is_ok_and(|v| v["__metadata__"]["format"] == FORMAT || v.get("rho").is_some())
}

/// Who wrote a file without a version: each kind had its own layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unversioned {
    /// A saved session: `rho` flat, `position` i64, the model in the metadata.
    Session,
    /// A carried state: `rho` flat, `pos` f32, no metadata.
    Carried,
}

/// The layout of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// Version 1 of the format.
    V1,
    /// Version 2: version 1, the write key's traces and the queued writes.
    V2,
    /// Version 3: version 2 with ρ in 16 bits (its dtype).
    V3(Dtype),
    /// A file of before the format had a version.
    Unversioned(Unversioned),
}

/// A tensor of a state file: its name, element type and shape.
struct Field {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl Field {
    /// Bytes of its values (saturating: only compared against a file's length).
    fn bytes(&self) -> u64 {
        self.shape.iter().fold((self.dtype.bitsize() / 8) as u64, |p, &x| p.saturating_mul(x as u64))
    }
}

/// Every tensor a file of `layout` holds for `rows` streams of `cfg`. Per-stream
/// mechanism state (a trace, a delay queue) is declared here beside ρ, its shape
/// derived from `cfg`, in a new version.
fn fields(layout: Layout, cfg: &BdhConfig, rows: usize) -> Vec<Field> {
    let field = |name, dtype, shape| Field { name, dtype, shape };
    let rho = rho_shape(cfg, rows);
    let flat = vec![rho.iter().fold(1usize, |p, &x| p.saturating_mul(x))];
    match layout {
        Layout::V1 => vec![field("rho", Dtype::F32, rho), field("position", Dtype::I64, vec![1])],
        Layout::V3(half) => {
            let mut v2 = fields(Layout::V2, cfg, rows);
            v2[0].dtype = half;
            v2
        }
        Layout::V2 => {
            let mut v1 = fields(Layout::V1, cfg, rows);
            for (name, width) in [("keys", KeySite::width(cfg)), ("queue", Queue::width(cfg))] {
                if width > 0 {
                    v1.push(field(name, Dtype::F32, vec![cfg.n_layer, rows, cfg.n_head, width]));
                }
            }
            v1
        }
        Layout::Unversioned(Unversioned::Session) => {
            vec![field("rho", Dtype::F32, flat), field("position", Dtype::I64, vec![1])]
        }
        Layout::Unversioned(Unversioned::Carried) => {
            vec![field("rho", Dtype::F32, flat), field("pos", Dtype::F32, vec![1])]
        }
    }
}

/// What a file of `layout` is, in words.
fn describe(layout: Layout) -> &'static str {
    match layout {
        Layout::V1 => "a state of version 1",
        Layout::V2 => "a state of version 2",
        Layout::V3(_) => "a state of version 3",
        Layout::Unversioned(Unversioned::Session) => "a session saved before the format had a version",
        Layout::Unversioned(Unversioned::Carried) => "a carried state written before the format had a version",
    }
}

/// The metadata keys of a file of `layout`, every one required (the format and
/// version by `layout`, the model by `check_owner`).
fn keys(layout: Layout) -> &'static [&'static str] {
    match layout {
        Layout::V1 | Layout::V2 | Layout::V3(_) => &["format", "version", "config", "weights"],
        Layout::Unversioned(Unversioned::Session) => &["config", "weights"],
        Layout::Unversioned(Unversioned::Carried) => &[],
    }
}

/// The shape of ρ of `rows` streams in a file: (L, B, H, N, D), as the state holds it.
fn rho_shape(cfg: &BdhConfig, rows: usize) -> Vec<usize> {
    let [l, h, n, d] = bdh::State::shape(cfg);
    vec![l, rows, h, n, d]
}

/// Writes `state`, of `rows` streams of `model`, to `path` (atomically) in the
/// newest version of the format.
pub(crate) fn write(path: &Path, model: &Bdh, state: &bdh::State, rows: usize) -> Result<()> {
    state.check_rows(&model.config, rows)?;
    let (rho, rho_dtype): (Vec<u8>, _) = match &state.rho {
        bdh::Rho::F32(v) => (v.iter().flat_map(|v| v.to_le_bytes()).collect(), Dtype::F32),
        bdh::Rho::Half(v, half) => (v.iter().flat_map(|v| v.to_le_bytes()).collect(), dtype_of(*half)),
    };
    let pos = (state.pos as i64).to_le_bytes();
    let keys: Vec<u8> = state.keys.iter().flat_map(|v| v.to_le_bytes()).collect();
    let queue: Vec<u8> = state.queue.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bad = |e: safetensors::SafeTensorError| Error::Input(format!("state: {e}"));
    let cfg = &model.config;
    let mut views = vec![
        ("rho", TensorView::new(rho_dtype, rho_shape(cfg, rows), &rho).map_err(bad)?),
        ("position", TensorView::new(Dtype::I64, vec![1], &pos).map_err(bad)?),
    ];
    let version = match (rho_dtype, keys.is_empty() && queue.is_empty()) {
        (Dtype::F32, true) => 1,
        (Dtype::F32, false) => 2,
        _ => 3,
    };
    for (name, width, bytes) in [("keys", KeySite::width(cfg), &keys), ("queue", Queue::width(cfg), &queue)] {
        if width > 0 {
            let shape = vec![cfg.n_layer, rows, cfg.n_head, width];
            views.push((name, TensorView::new(Dtype::F32, shape, bytes).map_err(bad)?));
        }
    }
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), version.to_string()),
        ("config".to_string(), ModelConfig::Bdh(model.config.clone()).to_json()),
        ("weights".to_string(), model.params.fingerprint()),
    ]);
    write_atomic(path, &safetensors::serialize(views, Some(metadata)).map_err(bad)?)
}

/// Reads a state of `rows` streams of `model` from `path`, in any version of the
/// format, or in the layout `unversioned` wrote before the format had a version.
pub(crate) fn read(path: &Path, model: &Bdh, rows: usize, unversioned: Unversioned) -> Result<bdh::State> {
    let cfg = &model.config;
    let bad = |m: String| Error::format(path, m);
    let layouts = [Layout::V1, Layout::V2, Layout::Unversioned(unversioned)];
    let largest =
        layouts.iter().map(|&l| fields(l, cfg, rows).iter().fold(0u64, |s, f| s.saturating_add(f.bytes()))).max();
    let most = largest.unwrap_or(0).saturating_add(HEADER_LIMIT);
    let bytes = super::read_bounded(path, most).map_err(|e| match e {
        Error::Format { .. } => bad(format!("more than {most} bytes, which is more than a state of this model can be")),
        other => other,
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a saved state: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a saved state: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    // (no `rho` at all is named as missing below, whatever the version)
    let rho_dtype = st.tensor("rho").map(|t| t.dtype()).unwrap_or(Dtype::BF16);
    let layout = layout(&meta, unversioned, rho_dtype).map_err(bad)?;
    if let Some(key) = meta.keys().find(|k| !keys(layout).contains(&k.as_str())) {
        let has = if keys(layout).is_empty() { "none".to_string() } else { format!("{:?}", keys(layout)) };
        return Err(bad(format!("unknown metadata `{key}`: {} has {has}", describe(layout))));
    }
    check_owner(&meta, layout, model).map_err(bad)?;

    let fields = fields(layout, cfg, rows);
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    if let Some(name) = st.names().into_iter().find(|n| !names.contains(n)) {
        return Err(bad(format!("unknown tensor `{name}`: {} holds {names:?}", describe(layout))));
    }
    for f in &fields {
        let t = st.tensor(f.name).map_err(|_| Error::MissingTensor { path: path.into(), name: f.name.into() })?;
        if t.dtype() != f.dtype || t.shape() != f.shape {
            let (dtype, shape) = (t.dtype(), t.shape());
            return Err(bad(format!(
                "{} is {dtype:?} {shape:?}; for {rows} stream(s) of this model it is {:?} {:?}",
                f.name, f.dtype, f.shape
            )));
        }
    }
    // The tensors are there, of the right types and shapes.
    let data = |name: &str| st.tensor(name).map(|t| t.data()).unwrap_or_default();
    let pos = match layout {
        Layout::Unversioned(Unversioned::Carried) => {
            let p = le_values(data("pos"), f32::from_le_bytes).first().copied().unwrap_or(f32::NAN);
            if p.fract() != 0.0 {
                return Err(bad(format!("position {p} is not a whole number")));
            }
            p as i64
        }
        _ => i64::from_le_bytes(data("position").try_into().map_err(|_| bad("position is not one i64".into()))?),
    };
    let pos = usize::try_from(pos).map_err(|_| bad(format!("position {pos} is negative")))?;
    if pos > MAX_POSITION {
        return Err(bad(format!(
            "position {pos} is past 2^24 ({MAX_POSITION}), where positions are no longer exact in f32"
        )));
    }
    let rho = match half_of(rho_dtype) {
        Some(half) if matches!(layout, Layout::V3(_)) => {
            bdh::Rho::Half(le_values(data("rho"), u16::from_le_bytes), half)
        }
        _ => bdh::Rho::F32(le_values(data("rho"), f32::from_le_bytes)),
    };
    if !rho.all_finite() {
        return Err(bad("ρ holds values that are not finite".into()));
    }
    let keys = le_values(data("keys"), f32::from_le_bytes);
    if keys.iter().any(|x| !x.is_finite()) {
        return Err(bad("the write key's traces hold values that are not finite".into()));
    }
    let queue = le_values(data("queue"), f32::from_le_bytes);
    if queue.iter().any(|x| !x.is_finite()) {
        return Err(bad("the delayed writes hold values that are not finite".into()));
    }
    let state = bdh::State { pos, rho, keys, queue };
    // (a version-1 file for a model with traces lacks them: refused by name)
    state.check_rows(cfg, rows).map_err(|e| bad(e.to_string()))?;
    Ok(state)
}

/// The layout `meta` declares: a version of the format, or none (`unversioned`).
fn layout(meta: &HashMap<String, String>, unversioned: Unversioned, rho: Dtype) -> std::result::Result<Layout, String> {
    match (meta.get("format"), meta.get("version")) {
        (None, None) => Ok(Layout::Unversioned(unversioned)),
        (Some(f), _) if f != FORMAT => Err(format!("its format is `{f}`, not `{FORMAT}`: not a saved state")),
        (None, Some(_)) => Err(format!("a `version` but no `format` in its metadata: not a `{FORMAT}` file")),
        (Some(_), None) => Err(format!("no `version` in its metadata: `{FORMAT}` files name theirs")),
        (Some(_), Some(v)) => match v.parse::<u64>() {
            Ok(1) => Ok(Layout::V1),
            Ok(2) => Ok(Layout::V2),
            Ok(3) if half_of(rho).is_some() => Ok(Layout::V3(rho)),
            Ok(3) => Err(format!("a state of version 3 holds ρ in BF16 or F16, and this one's is {rho:?}")),
            Ok(newer) if newer > u64::from(VERSION) => Err(format!(
                "written by a newer bdh: version {newer} of the state format, and this build reads versions up to \
                 {VERSION}"
            )),
            _ => Err(format!("version `{v}` is not a version of the state format (a whole number from 1)")),
        },
    }
}

/// The safetensors type of a 16-bit ρ.
fn dtype_of(half: Half) -> Dtype {
    match half {
        Half::Bf16 => Dtype::BF16,
        Half::F16 => Dtype::F16,
    }
}

/// The 16-bit format of a safetensors type, if it is one.
fn half_of(dtype: Dtype) -> Option<Half> {
    match dtype {
        Dtype::BF16 => Some(Half::Bf16),
        Dtype::F16 => Some(Half::F16),
        _ => None,
    }
}

/// An error unless `meta` names `model` as the one that wrote the state (a carried
/// state of before the format's version names none).
fn check_owner(meta: &HashMap<String, String>, layout: Layout, model: &Bdh) -> std::result::Result<(), String> {
    if layout == Layout::Unversioned(Unversioned::Carried) {
        return Ok(());
    }
    let get = |key: &str| meta.get(key).ok_or_else(|| format!("no `{key}` in its metadata to check the model by"));
    let theirs: ModelConfig = serde_json::from_str(get("config")?)
        .map_err(|e| format!("its metadata's config is not a model config: {e}"))?;
    let ours = ModelConfig::Bdh(model.config.clone());
    if theirs != ours {
        return Err(format!(
            "saved by another model: its config ({}) differs from this model's ({})",
            theirs.describe(),
            ours.describe()
        ));
    }
    if *get("weights")? != model.params.fingerprint() {
        return Err("saved by another model: its config is this model's, but its weights differ".into());
    }
    Ok(())
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
