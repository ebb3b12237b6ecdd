//! Reads PyTorch `torch.save(state_dict)` files (zip + pickle) without executing
//! anything: a small pickle machine that knows only the opcodes such files use and
//! accepts only the globals that rebuild plain tensors.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::{le_values, Tensor, TensorData, TensorMap};
use crate::error::{Error, Result};

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
    Tensor { key: String, ty: StorageType, offset: usize, shape: Vec<usize>, stride: Vec<usize> },
}

/// Reads every tensor of a `.pt` state_dict.
pub fn read_state_dict(path: &Path) -> Result<TensorMap> {
    let bad = |msg: String| Error::format(path, msg);
    let file = File::open(path).map_err(|e| Error::io("reading", path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a PyTorch zip checkpoint: {e}")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .map(str::to_string)
        .ok_or_else(|| bad("no data.pkl inside: not a torch.save file".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let read_entry = |zip: &mut zip::ZipArchive<File>, name: &str| -> Result<Vec<u8>> {
        let mut entry = zip.by_name(name).map_err(|e| bad(format!("entry {name}: {e}")))?;
        let mut buf = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut buf).map_err(|e| bad(format!("reading entry {name}: {e}")))?;
        Ok(buf)
    };
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        if order != b"little" {
            return Err(bad("big-endian checkpoints are not supported".into()));
        }
    }
    let pickle = read_entry(&mut zip, &pkl_name)?;
    let root = Machine::default().run(&pickle).map_err(|m| bad(format!("data.pkl: {m}")))?;
    let Value::Dict(items) = root else {
        return Err(bad("data.pkl does not hold a state_dict (a dict of tensors)".into()));
    };
    let mut out = TensorMap::new();
    for (k, v) in items {
        let Value::Str(name) = k else {
            return Err(bad(format!("state_dict key {k:?} is not a string")));
        };
        let Value::Tensor { key, ty, offset, shape, stride } = v else {
            return Err(bad(format!("state_dict entry `{name}` is not a plain tensor")));
        };
        let raw = read_entry(&mut zip, &format!("{prefix}data/{key}"))?;
        let data = gather(&raw, ty, offset, &shape, &stride).ok_or_else(|| {
            bad(format!(
                "tensor `{name}`: shape {shape:?} / stride {stride:?} at offset {offset} runs past its storage"
            ))
        })?;
        out.insert(name, Tensor { shape, data });
    }
    Ok(out)
}

/// Reads the strided view `(offset, shape, stride)` of a storage into row-major values.
fn gather(raw: &[u8], ty: StorageType, offset: usize, shape: &[usize], stride: &[usize]) -> Option<TensorData> {
    let numel_storage = raw.len() / ty.width();
    let count = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s))?;
    if count > 0 {
        let last = shape.iter().zip(stride).try_fold(offset, |a, (&s, &st)| a.checked_add((s - 1).checked_mul(st)?))?;
        if last >= numel_storage {
            return None;
        }
    }
    let mut idx = Vec::with_capacity(count);
    let mut pos = vec![0usize; shape.len()];
    for _ in 0..count {
        idx.push(offset + pos.iter().zip(stride).map(|(p, s)| p * s).sum::<usize>());
        for k in (0..shape.len()).rev() {
            pos[k] += 1;
            if pos[k] < shape[k] {
                break;
            }
            pos[k] = 0;
        }
    }
    Some(match ty {
        StorageType::F32 => {
            let all = le_values(raw, f32::from_le_bytes);
            TensorData::F32(idx.iter().map(|&i| all[i]).collect())
        }
        StorageType::F64 => {
            let all = le_values(raw, f64::from_le_bytes);
            TensorData::F32(idx.iter().map(|&i| all[i] as f32).collect())
        }
        StorageType::I64 => {
            let all = le_values(raw, i64::from_le_bytes);
            TensorData::I64(idx.iter().map(|&i| all[i]).collect())
        }
        StorageType::I32 => {
            let all = le_values(raw, |b| i32::from_le_bytes(b) as i64);
            TensorData::I64(idx.iter().map(|&i| all[i]).collect())
        }
    })
}

/// The pickle machine: a stack, a memo, and nothing that can run code.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

type Step<T> = std::result::Result<T, String>;

impl Machine {
    fn run(mut self, code: &[u8]) -> Step<Value> {
        let mut r = Reader { code, pos: 0 };
        loop {
            let op = r.u8()?;
            match op {
                0x80 => {
                    r.u8()?; // PROTO n
                }
                0x95 => {
                    r.take(8)?; // FRAME length
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Bool), // NEWTRUE, NEWFALSE
                b'K' => self.stack.push(Value::Int(r.u8()? as i64)),
                b'M' => self.stack.push(Value::Int(u16::from_le_bytes(r.array()?) as i64)),
                b'J' => self.stack.push(Value::Int(i32::from_le_bytes(r.array()?) as i64)),
                0x8a => {
                    let n = r.u8()? as usize;
                    let bytes = r.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes is too large"));
                    }
                    let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(bytes);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'X' => {
                    let n = u32::from_le_bytes(r.array()?) as usize;
                    self.stack.push(Value::Str(r.string(n)?));
                }
                0x8c => {
                    let n = r.u8()? as usize;
                    self.stack.push(Value::Str(r.string(n)?));
                }
                b'c' => {
                    let module = r.line()?;
                    let name = r.line()?;
                    self.push_global(format!("{module}.{name}"))?;
                }
                0x93 => {
                    let name = self.pop_str()?;
                    let module = self.pop_str()?;
                    self.push_global(format!("{module}.{name}"))?;
                }
                b'q' => {
                    let k = r.u8()? as u32;
                    self.memoize(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(r.array()?);
                    self.memoize(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memoize(k)?;
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { r.u8()? as u32 } else { u32::from_le_bytes(r.array()?) };
                    let v = self.memo.get(&k).cloned().ok_or(format!("memo {k} read before written"))?;
                    self.stack.push(v);
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_to_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_to_mark()? };
                    match self.stack.last_mut() {
                        Some(Value::List(l)) => l.extend(items),
                        _ => return Err("APPEND onto something that is not a list".into()),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        vec![self.pop()?, v]
                    } else {
                        self.pop_to_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let Some(Value::Dict(d)) = self.stack.last_mut() else {
                        return Err("SETITEM onto something that is not a dict".into());
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.stack.push(persistent_load(pid)?);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.stack.push(reduce(func, args)?);
                }
                b'b' => {
                    // BUILD sets attributes (the state_dict's `_metadata`); tensors need none.
                    self.pop()?;
                    if !matches!(self.stack.last(), Some(Value::Dict(_)) | Some(Value::Tensor { .. })) {
                        return Err("BUILD on something that is not a dict or tensor".into());
                    }
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", r.pos - 1)),
            }
        }
    }

    fn push_global(&mut self, name: String) -> Step<()> {
        if ALLOWED_GLOBALS.contains(&name.as_str()) || StorageType::from_global(&name).is_some() {
            self.stack.push(Value::Global(name));
            Ok(())
        } else {
            Err(format!("refers to `{name}`, which is not part of a plain tensor state_dict; refusing it"))
        }
    }

    fn memoize(&mut self, k: u32) -> Step<()> {
        let top = self.stack.last().cloned().ok_or("memo write on an empty stack")?;
        self.memo.insert(k, top);
        Ok(())
    }

    fn pop(&mut self) -> Step<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => Err("stack underflow".into()),
            Some(v) => Ok(v),
        }
    }

    fn pop_str(&mut self) -> Step<String> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            v => Err(format!("expected a string, found {v:?}")),
        }
    }

    fn pop_to_mark(&mut self) -> Step<Vec<Value>> {
        let at = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or("no MARK on the stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
}

/// `persistent_load(('storage', StorageType, key, location, numel))`.
fn persistent_load(pid: Value) -> Step<Value> {
    let Value::Tuple(items) = pid else { return Err("persistent id is not a tuple".into()) };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(ty), Value::Str(key), ..] if kind == "storage" => {
            let ty = StorageType::from_global(ty).ok_or(format!("unsupported storage type {ty}"))?;
            if key.contains('/') || key.contains("..") {
                return Err(format!("storage key {key:?} is not a plain name"));
            }
            Ok(Value::Storage { key: key.clone(), ty })
        }
        _ => Err(format!("unsupported persistent id {items:?}")),
    }
}

/// Calls one of the allowed globals.
fn reduce(func: Value, args: Value) -> Step<Value> {
    let Value::Global(name) = func else { return Err("REDUCE on something that is not a callable".into()) };
    let Value::Tuple(args) = args else { return Err(format!("arguments of {name} are not a tuple")) };
    let ints = |v: &Value| -> Step<Vec<usize>> {
        let Value::Tuple(xs) = v else { return Err(format!("expected a tuple of sizes, found {v:?}")) };
        xs.iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(format!("expected a size, found {x:?}")),
            })
            .collect()
    };
    match (name.as_str(), args.as_slice()) {
        ("collections.OrderedDict", []) => Ok(Value::Dict(Vec::new())),
        ("torch._utils._rebuild_tensor_v2", [Value::Storage { key, ty }, Value::Int(offset), size, stride, ..]) => {
            let (shape, stride) = (ints(size)?, ints(stride)?);
            if shape.len() != stride.len() || *offset < 0 {
                return Err(format!("tensor with size {shape:?} and stride {stride:?}"));
            }
            Ok(Value::Tensor { key: key.clone(), ty: *ty, offset: *offset as usize, shape, stride })
        }
        ("torch._utils._rebuild_parameter", [t @ Value::Tensor { .. }, ..]) => Ok(t.clone()),
        _ => Err(format!("unexpected call {name}{args:?}")),
    }
}

/// A cursor over the pickle bytes.
struct Reader<'a> {
    code: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.code.len()).ok_or("pickle ends early")?;
        let s = &self.code[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }
    fn array<const W: usize>(&mut self) -> Step<[u8; W]> {
        Ok(self.take(W)?.try_into().expect("take gives W bytes"))
    }
    fn string(&mut self, n: usize) -> Step<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".into())
    }
    fn line(&mut self) -> Step<String> {
        let rest = &self.code[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("GLOBAL without a newline")?;
        let s = String::from_utf8(rest[..end].to_vec()).map_err(|_| "GLOBAL name is not UTF-8")?;
        self.pos += end + 1;
        Ok(s)
    }
}
