//! Files: tensors in safetensors and PyTorch `.pt` files, checkpoints of models,
//! run directories, and saved inference states. Every write goes to a temporary
//! file and is renamed into place.

pub mod checkpoint;
pub(crate) mod owned;
mod pt;
pub mod run_dir;
pub mod state;

pub use pt::read_state_dict;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::error::{Error, Result};

/// Element values of a tensor read from a file.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Floating point, widened or kept as f32.
    F32(Vec<f32>),
    /// Integers (token ids), widened to i64.
    I64(Vec<i64>),
}

/// A named tensor read from a safetensors or `.pt` file: shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: TensorData,
}

impl Tensor {
    /// The values as f32, or a [`Error::Shape`] naming `name` if they are integers.
    pub fn f32s(&self, name: &str) -> Result<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Ok(v),
            TensorData::I64(_) => Err(shape_err(name, "floating point values", "integers")),
        }
    }
}

/// Tensors of one file, by name.
pub type TensorMap = BTreeMap<String, Tensor>;

pub(crate) fn shape_err(name: &str, expected: impl ToString, found: impl ToString) -> Error {
    Error::Shape { name: name.into(), expected: expected.to_string(), found: found.to_string() }
}

/// Largest config or small JSON file read (a run's `config.toml`, a model's
/// `config.json`, `trainer.json`): far past any real one.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Largest safetensors header read: the `safetensors` crate's own limit.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The whole file at `path`, refused once more than `limit` bytes have been read.
/// The bound holds on the read itself, so a device, a pipe or a file that grows
/// (`/dev/zero`, whose size says 0) is cut off at `limit`, not read to the end.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| Error::io("reading", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::format(path, format!("more than {limit} bytes: past the most this reads")));
    }
    Ok(bytes)
}

/// [`read_bounded`] of a UTF-8 text.
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_bounded(path, limit)?)
        .map_err(|e| Error::format(path, format!("not UTF-8 text (at byte {})", e.utf8_error().valid_up_to())))
}

/// The size a safetensors file's header says the file has: its 8-byte length,
/// the header and the end of its last tensor, so the file is read to that and no
/// further (a device or a corrupt length is refused before a large read).
fn safetensors_size(path: &Path) -> Result<u64> {
    let bad = |m: String| Error::format(path, format!("not a valid safetensors file: {m}"));
    let mut file = fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut head = [0u8; 8];
    file.read_exact(&mut head).map_err(|e| bad(format!("reading its header's length: {e}")))?;
    let n = u64::from_le_bytes(head);
    if n == 0 || n > MAX_HEADER_BYTES {
        return Err(bad(format!("a header of {n} bytes (1 to {MAX_HEADER_BYTES})")));
    }
    let mut header = Vec::new();
    file.take(n).read_to_end(&mut header).map_err(|e| Error::io("reading", path, e))?;
    let json: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("its header: {e}")))?;
    let end = json
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    Ok(8u64.saturating_add(n).saturating_add(end))
}

/// Reads every tensor of a safetensors file (f32, f64, f16, bf16 as f32; i64, i32 as i64).
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    // Read to the size the header gives: a file shorter than it claims is read as
    // it is, and found wanting by the parser.
    let size = safetensors_size(path)?;
    let bytes = read_bounded(path, size).map_err(|e| match e {
        Error::Format { .. } => {
            Error::format(path, format!("not a valid safetensors file: longer than the {size} bytes its header gives"))
        }
        other => other,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = TensorMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => TensorData::F32(le_values(raw, f32::from_le_bytes)),
            Dtype::F64 => TensorData::F32(le_values(raw, |b| f64::from_le_bytes(b) as f32)),
            Dtype::I64 => TensorData::I64(le_values(raw, i64::from_le_bytes)),
            Dtype::I32 => TensorData::I64(le_values(raw, |b| i32::from_le_bytes(b) as i64)),
            other => return Err(Error::format(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        out.insert(name, Tensor { shape: view.shape().to_vec(), data });
    }
    Ok(out)
}

/// Decodes little-endian values of `W` bytes each.
pub(crate) fn le_values<T, const W: usize>(raw: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
    raw.chunks_exact(W).map(|c| f(c.try_into().expect("chunks_exact gives W bytes"))).collect()
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a
/// rename, so a crash never leaves a half-written file in place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes. The temporary file is one made here
/// under a name nobody held, so a failed write removes nothing of anyone else's.
pub(crate) fn write_atomic_with(path: &Path, write: impl FnOnce(&mut fs::File) -> std::io::Result<()>) -> Result<()> {
    let (tmp, mut f) = owned::create_temp(path)?;
    let written = write(&mut f).and_then(|_| f.sync_all()).map_err(|e| Error::io("writing", &tmp, e));
    fault_point("file written");
    let renamed = written.and_then(|_| fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e)));
    if renamed.is_err() {
        let _ = fs::remove_file(&tmp); // a failed write leaves nothing behind
    }
    fault_point("file renamed");
    renamed
}

/// Writes `bytes` to `path` as [`write_atomic`] does, but only if nothing is there:
/// the temporary file is linked in under its final name, which fails on a file
/// that exists (made meanwhile, too), so nobody's file is ever replaced. Where
/// the file system has no links, it is renamed into place after a last look.
pub fn write_atomic_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let exists = || Error::io("writing", path, std::io::ErrorKind::AlreadyExists.into());
    let (tmp, mut f) = owned::create_temp(path)?;
    let placed =
        f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| Error::io("writing", &tmp, e)).and_then(|_| {
            match fs::hard_link(&tmp, path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
                Err(_) if fs::symlink_metadata(path).is_ok() => Err(exists()),
                Err(_) => fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e)),
            }
        });
    let _ = fs::remove_file(&tmp); // linked or failed: the temporary name goes either way
    placed
}

/// Named f32 tensors `(name, shape, values)` as safetensors bytes.
pub fn encode_safetensors(tensors: &[(String, Vec<usize>, &[f32])]) -> Result<Vec<u8>> {
    let encoded: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, data)| data.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), bytes) in tensors.iter().zip(&encoded) {
        let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
            .map_err(|e| Error::Input(format!("tensor `{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    safetensors::serialize(views, None).map_err(|e| Error::Input(format!("serialising: {e}")))
}

/// Where a test of crash safety may stop the process: with `BDH_FAULT_AT=k` in a
/// debug build, the k-th such point of the process (counted from 1) aborts it, as a
/// kill at that instant would.
pub(crate) fn fault_point(_what: &str) {
    if cfg!(debug_assertions) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static PASSED: AtomicUsize = AtomicUsize::new(0);
        let k = PASSED.fetch_add(1, Ordering::SeqCst) + 1;
        if std::env::var("BDH_FAULT_AT").ok().and_then(|v| v.parse::<usize>().ok()) == Some(k) {
            std::process::abort();
        }
    }
}
