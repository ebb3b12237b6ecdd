//! Reads PyTorch `torch.save(state_dict)` files (zip + pickle) without executing
//! anything: a small pickle machine that knows only the opcodes such files use and
//! accepts only the globals that rebuild plain tensors.
//!
//! The file may be hostile, so no size in it is trusted: the pickle machine is
//! bounded in the values it makes (memo copies included), their nesting and its
//! memo; a zip entry's claimed size is checked against the archive's real length
//! before a buffer is reserved; and every tensor's extent is checked against the
//! real size of its storage before any tensor data is read, so refusing a bogus
//! file costs about as much as reading its pickle.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{Tensor, TensorData, TensorMap};
use pickle::Machine;

mod pickle;
use crate::error::{Error, Result};

/// Values the pickle machine may make in all, copies out of the memo included. A
/// torch state_dict costs about 60 per tensor, so this admits some 70 000 tensors
/// while keeping the machine's memory under ~150 MB whatever the pickle does.
const MAX_OBJECTS: usize = 1 << 22;
/// Bytes of text (names, storage keys) the machine may make in all, copies included.
const MAX_TEXT: usize = 64 << 20;
/// Nesting of tuples, lists and dicts. A state_dict needs 4 levels; values nested
/// much deeper would overflow the thread's stack when dropped.
const MAX_DEPTH: usize = 64;
/// Memo entries; torch memoises about 10 values per tensor.
const MAX_MEMO: usize = 1 << 20;
/// Dimensions of one tensor.
const MAX_DIMS: usize = 64;
/// Tensors may view one storage more than once (tied weights), but all of them
/// together may read no more than this many times the archive's length.
const MAX_VIEW_FACTOR: u64 = 4;
/// Longest name or string quoted whole in an error message.
const QUOTE_LEN: usize = 100;

/// The outcome of a step whose error is completed with the file's path by the caller.
type Step<T> = std::result::Result<T, String>;

/// The callables a plain tensor state_dict may name; anything else is refused.
const ALLOWED_GLOBALS: [&str; 3] =
    ["collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"];

/// Element types of the storages we can read.
#[derive(Clone, Copy, Debug, PartialEq)]
enum StorageType {
    F32,
    F64,
    I64,
    I32,
}

impl StorageType {
    fn from_global(name: &str) -> Option<Self> {
        match name {
            "torch.FloatStorage" => Some(StorageType::F32),
            "torch.DoubleStorage" => Some(StorageType::F64),
            "torch.LongStorage" => Some(StorageType::I64),
            "torch.IntStorage" => Some(StorageType::I32),
            _ => None,
        }
    }
    fn width(self) -> usize {
        match self {
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F64 | StorageType::I64 => 8,
        }
    }
}

/// A value on the pickle machine's stack.
#[derive(Clone, Debug)]
enum Value {
    Mark,
    None,
    Bool,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String),
    Storage { key: String, ty: StorageType },
    // Boxed so that every other value stays small: the limits count values.
    Tensor(Box<View>),
}

/// A tensor as the pickle describes it: a strided view of a storage.
#[derive(Clone, Debug)]
struct View {
    key: String,
    ty: StorageType,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl Value {
    /// A short description for error messages: never the whole of a large value.
    fn brief(&self) -> String {
        match self {
            Value::Mark => "a MARK".into(),
            Value::None => "None".into(),
            Value::Bool => "a bool".into(),
            Value::Int(i) => format!("the integer {i}"),
            Value::Str(s) => format!("the string {:?}", cut(s)),
            Value::Tuple(v) => format!("a tuple of {} items", v.len()),
            Value::List(v) => format!("a list of {} items", v.len()),
            Value::Dict(v) => format!("a dict of {} items", v.len()),
            Value::Global(g) => format!("`{g}`"),
            Value::Storage { key, .. } => format!("storage {:?}", cut(key)),
            Value::Tensor(v) => format!("a tensor of shape {:?}", v.shape),
        }
    }
}

/// `s` for an error message: cut short, and its length given, if long.
fn cut(s: &str) -> String {
    match s.char_indices().nth(QUOTE_LEN) {
        Some((end, _)) => format!("{}… ({} bytes)", &s[..end], s.len()),
        None => s.to_string(),
    }
}

/// Reads every tensor of a `.pt` state_dict.
pub fn read_state_dict(path: &Path) -> Result<TensorMap> {
    let bad = |msg: String| Error::format(path, msg);
    let mut archive = Archive::open(path)?;
    let pkl_name = archive
        .zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_string)
        .ok_or_else(|| bad("no data.pkl inside: not a torch.save file".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let byteorder = format!("{prefix}byteorder");
    if archive.zip.index_for_name(&byteorder).is_some() && archive.read(&byteorder)? != b"little" {
        return Err(bad("big-endian checkpoints are not supported".into()));
    }
    let pickle = archive.read(&pkl_name)?;
    let root = Machine::default().run(&pickle).map_err(|m| bad(format!("data.pkl: {m}")))?;
    let views = views_of(root).map_err(bad)?;

    // Every view is checked against the size of its storage before any data is read.
    let budget = MAX_VIEW_FACTOR.saturating_mul(archive.len);
    let mut total = 0u64;
    let mut by_storage: BTreeMap<String, Vec<(String, View, usize)>> = BTreeMap::new();
    for (name, view) in views {
        let entry = format!("{prefix}data/{}", view.key);
        let bytes = archive.size(&entry)?;
        let count = extent(&view, bytes).map_err(|m| bad(format!("tensor `{}`: {m}", cut(&name))))?;
        total = total.saturating_add(count as u64 * view.ty.width() as u64);
        if total > budget {
            return Err(bad(format!(
                "its tensors would read over {total} bytes from a file of {}; more than {MAX_VIEW_FACTOR}× \
                 its length is not a plain state_dict",
                archive.len
            )));
        }
        by_storage.entry(entry).or_default().push((name, view, count));
    }
    // Each storage is read once, however many tensors view it.
    let mut out = TensorMap::new();
    for (entry, views) in by_storage {
        let raw = archive.read(&entry)?;
        for (name, view, count) in views {
            let data = gather(&raw, &view, count).map_err(|m| bad(format!("tensor `{}`: {m}", cut(&name))))?;
            out.insert(name, Tensor { shape: view.shape, data });
        }
    }
    Ok(out)
}

/// The state_dict's tensors, by name, from the pickle's root value.
fn views_of(root: Value) -> Step<Vec<(String, View)>> {
    let Value::Dict(items) = root else {
        return Err(format!("data.pkl holds {}, not a state_dict (a dict of tensors)", root.brief()));
    };
    let mut seen = HashSet::new();
    items
        .into_iter()
        .map(|(k, v)| {
            let Value::Str(name) = k else {
                return Err(format!("state_dict key {} is not a string", k.brief()));
            };
            let Value::Tensor(view) = v else {
                return Err(format!("state_dict entry `{}` is not a plain tensor", cut(&name)));
            };
            if !seen.insert(name.clone()) {
                return Err(format!("state_dict names `{}` twice", cut(&name)));
            }
            Ok((name, *view))
        })
        .collect()
}

/// The zip archive, whose entries are read only at sizes checked against its length.
struct Archive<'p> {
    zip: zip::ZipArchive<File>,
    len: u64,
    path: &'p Path,
}

impl<'p> Archive<'p> {
    fn open(path: &'p Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("reading", path, e))?;
        let len = file.metadata().map_err(|e| Error::io("reading", path, e))?.len();
        let zip = zip::ZipArchive::new(file)
            .map_err(|e| Error::format(path, format!("not a PyTorch zip checkpoint: {e}")))?;
        Ok(Archive { zip, len, path })
    }

    /// The size entry `name` claims, refused if larger than the whole archive:
    /// torch stores entries uncompressed, so none can hold more than the file.
    fn size(&mut self, name: &str) -> Result<u64> {
        let (path, len) = (self.path, self.len);
        let bad = |msg: String| Error::format(path, msg);
        let claimed = self.zip.by_name(name).map_err(|e| bad(format!("entry {name}: {e}")))?.size();
        if claimed > len {
            return Err(bad(format!("entry {name} claims {claimed} bytes, more than the whole file ({len} bytes)")));
        }
        Ok(claimed)
    }

    /// The bytes of entry `name`, which must be as many as it claims.
    fn read(&mut self, name: &str) -> Result<Vec<u8>> {
        let claimed = self.size(name)?;
        let path = self.path;
        let bad = |msg: String| Error::format(path, msg);
        let mut entry = self.zip.by_name(name).map_err(|e| bad(format!("entry {name}: {e}")))?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(claimed as usize)
            .map_err(|_| bad(format!("entry {name}: cannot reserve memory for its {claimed} bytes")))?;
        // One byte more than claimed: enough to see a lie, and to reach the end of
        // the entry, where its checksum is verified.
        (&mut entry).take(claimed + 1).read_to_end(&mut buf).map_err(|e| bad(format!("reading entry {name}: {e}")))?;
        if buf.len() as u64 != claimed {
            let held = if buf.len() as u64 > claimed { "more".to_string() } else { buf.len().to_string() };
            return Err(bad(format!("entry {name} claims {claimed} bytes but holds {held}")));
        }
        Ok(buf)
    }
}

/// The number of values `view` reads, once sure that every one lies inside a storage
/// of `bytes` bytes and that it reads no more values than the storage holds (a
/// stride-0 view could otherwise ask for terabytes of a one-value storage).
fn extent(view: &View, bytes: u64) -> Step<usize> {
    let numel = bytes / view.ty.width() as u64;
    let what = || format!("shape {:?} / stride {:?} at offset {}", view.shape, view.stride, view.offset);
    let count = view.shape.iter().try_fold(1u64, |a, &s| a.checked_mul(s as u64));
    let Some(count) = count else {
        return Err(format!("{} has more elements than can be counted", what()));
    };
    if count == 0 {
        return Ok(0);
    }
    let last = view
        .shape
        .iter()
        .zip(&view.stride)
        .try_fold(view.offset as u64, |a, (&s, &st)| a.checked_add((s as u64 - 1).checked_mul(st as u64)?));
    if last.is_none_or(|l| l >= numel) {
        return Err(format!("{} runs past its storage of {numel} values", what()));
    }
    if count > numel {
        return Err(format!("{} reads {count} values from a storage of only {numel}", what()));
    }
    Ok(count as usize)
}

/// Reads the strided view of a storage into `count` row-major values.
fn gather(raw: &[u8], view: &View, count: usize) -> Step<TensorData> {
    // `raw` was read at the size `extent` was checked against; checking again is
    // cheap and makes the indexing below in bounds by construction, not by trust.
    extent(view, raw.len() as u64)?;
    Ok(match view.ty {
        StorageType::F32 => TensorData::F32(collect(view, count, |i| f32::from_le_bytes(at(raw, i)))?),
        StorageType::F64 => TensorData::F32(collect(view, count, |i| f64::from_le_bytes(at(raw, i)) as f32)?),
        StorageType::I64 => TensorData::I64(collect(view, count, |i| i64::from_le_bytes(at(raw, i)))?),
        StorageType::I32 => TensorData::I64(collect(view, count, |i| i32::from_le_bytes(at(raw, i)) as i64)?),
    })
}

/// The `i`-th value of `W` bytes of a storage.
fn at<const W: usize>(raw: &[u8], i: usize) -> [u8; W] {
    raw[i * W..(i + 1) * W].try_into().expect("extent keeps every index inside the storage")
}

/// `decode` of each storage index of the view in row-major order, into a vector
/// reserved fallibly (so that running out of memory is an error). The indices
/// advance like an odometer: O(1) amortised each.
fn collect<T>(view: &View, count: usize, decode: impl Fn(usize) -> T) -> Step<Vec<T>> {
    let mut out = Vec::new();
    out.try_reserve_exact(count).map_err(|_| format!("cannot reserve memory for {count} values"))?;
    // Dimensions of size 1 never move; without them every step is short.
    let dims: Vec<_> = view.shape.iter().zip(&view.stride).filter(|(&s, _)| s > 1).collect();
    let (mut pos, mut at) = (vec![0; dims.len()], view.offset);
    for _ in 0..count {
        out.push(decode(at));
        for (k, (&size, &stride)) in dims.iter().enumerate().rev() {
            if pos[k] + 1 < size {
                pos[k] += 1;
                at += stride;
                break;
            }
            at -= stride * (size - 1);
            pos[k] = 0;
        }
    }
    Ok(out)
}
