//! The pickle machine: the opcodes a plain tensor `state_dict` uses, bounded in the
//! values it makes, their nesting and its memo.

use super::*;

/// A value on the stack or in the memo, with its nesting depth and the values and
/// bytes of text it holds, kept so that a copy can be charged without a walk.
#[derive(Clone)]
struct Item {
    value: Value,
    depth: usize,
    objects: usize,
    text: usize,
}

/// The pickle machine: a stack, a memo, and nothing that can run code.
#[derive(Default)]
pub(super) struct Machine {
    stack: Vec<Item>,
    memo: HashMap<u32, Item>,
    /// Values and bytes of text made so far, copies included.
    objects: usize,
    text: usize,
}

impl Machine {
    pub(super) fn run(mut self, code: &[u8]) -> Step<Value> {
        let mut r = Reader { code, pos: 0 };
        loop {
            let op = r.u8()?;
            match op {
                0x80 => _ = r.u8()?,    // PROTO n
                0x95 => _ = r.take(8)?, // FRAME length
                b'.' => return Ok(self.pop()?.value),
                b'(' => self.push(Value::Mark)?,
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?, // NEWTRUE, NEWFALSE
                b'K' => self.push(Value::Int(r.u8()? as i64))?,
                b'M' => self.push(Value::Int(u16::from_le_bytes(r.array()?) as i64))?,
                b'J' => self.push(Value::Int(i32::from_le_bytes(r.array()?) as i64))?,
                0x8a => {
                    let n = r.u8()? as usize;
                    let bytes = r.take(n)?;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes is too large"));
                    }
                    let mut buf = if bytes.last().is_some_and(|&b| b & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'X' | 0x8c => {
                    let n = if op == b'X' { u32::from_le_bytes(r.array()?) as usize } else { r.u8()? as usize };
                    let s = r.string(n)?;
                    self.push(Value::Str(s))?;
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
                b'q' | b'r' | 0x94 => {
                    let k = match op {
                        b'q' => r.u8()? as u32,
                        b'r' => u32::from_le_bytes(r.array()?),
                        _ => self.memo.len() as u32,
                    };
                    self.memoize(k)?;
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { r.u8()? as u32 } else { u32::from_le_bytes(r.array()?) };
                    self.recall(k)?;
                }
                b')' => self.push_container(Vec::new(), Value::Tuple)?,
                b']' => self.push_container(Vec::new(), Value::List)?,
                b'}' => self.push_container(Vec::new(), |_| Value::Dict(Vec::new()))?,
                0x85..=0x87 | b't' | b'l' => {
                    let tuple_n = (0x85..=0x87).contains(&op);
                    let items = if tuple_n { self.pop_n((op - 0x84) as usize)? } else { self.pop_to_mark()? };
                    self.push_container(items, if op == b'l' { Value::List } else { Value::Tuple })?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_to_mark()? };
                    self.extend_top(items, false)?;
                }
                b's' | b'u' => {
                    let items = if op == b's' { self.pop_n(2)? } else { self.pop_to_mark()? };
                    self.extend_top(items, true)?;
                }
                b'Q' | b'R' => {
                    let arg = self.pop()?.value;
                    let made = if op == b'Q' { persistent_load(arg)? } else { reduce(self.pop()?.value, arg)? };
                    self.push(made)?;
                }
                b'b' => {
                    // BUILD sets attributes (the state_dict's `_metadata`); tensors need none.
                    self.pop()?;
                    if !matches!(self.stack.last().map(|i| &i.value), Some(Value::Dict(_) | Value::Tensor(_))) {
                        return Err("BUILD on something that is not a dict or tensor".into());
                    }
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {}", r.pos - 1)),
            }
        }
    }

    /// Counts `objects` values and `text` bytes about to be made against the limits.
    fn charge(&mut self, objects: usize, text: usize) -> Step<()> {
        self.objects += objects;
        self.text += text;
        if self.objects > MAX_OBJECTS {
            return Err(format!(
                "makes more than {MAX_OBJECTS} values (a memoised value copied over and over?); refusing it"
            ));
        }
        if self.text > MAX_TEXT {
            return Err(format!("makes more than {MAX_TEXT} bytes of strings; refusing it"));
        }
        Ok(())
    }

    /// Pushes a new value that holds no others.
    fn push(&mut self, value: Value) -> Step<()> {
        let text = match &value {
            Value::Str(s) | Value::Global(s) | Value::Storage { key: s, .. } => s.len(),
            Value::Tensor(v) => v.key.len(),
            _ => 0,
        };
        self.charge(1, text)?;
        self.stack.push(Item { value, depth: 0, objects: 1, text });
        Ok(())
    }

    /// Pushes a new tuple or list made of `items`.
    fn push_container(&mut self, items: Vec<Item>, make: fn(Vec<Value>) -> Value) -> Step<()> {
        let (depth, objects, text) = measure(&items)?;
        self.charge(1, 0)?;
        let value = make(items.into_iter().map(|i| i.value).collect());
        self.stack.push(Item { value, depth, objects: objects + 1, text });
        Ok(())
    }

    /// Adds `items` to the list (or, for `dict`, key-value pairs to the dict) on top.
    fn extend_top(&mut self, items: Vec<Item>, dict: bool) -> Step<()> {
        let (depth, objects, text) = measure(&items)?;
        let Some(top) = self.stack.last_mut() else { return Err("stack underflow".into()) };
        let values = items.into_iter().map(|i| i.value);
        match &mut top.value {
            Value::List(l) if !dict => l.extend(values),
            Value::Dict(d) if dict => {
                if values.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                let mut it = values;
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            _ if dict => return Err(format!("SETITEM onto {}, not a dict", top.value.brief())),
            _ => return Err(format!("APPEND onto {}, not a list", top.value.brief())),
        }
        top.depth = top.depth.max(depth);
        top.objects += objects;
        top.text += text;
        Ok(())
    }

    fn push_global(&mut self, name: String) -> Step<()> {
        if ALLOWED_GLOBALS.contains(&name.as_str()) || StorageType::from_global(&name).is_some() {
            self.push(Value::Global(name))
        } else {
            Err(format!("refers to `{}`, which is not part of a plain tensor state_dict; refusing it", cut(&name)))
        }
    }

    /// Stores a copy of the top of the stack in the memo under `k`.
    fn memoize(&mut self, k: u32) -> Step<()> {
        let top = self.stack.last().ok_or("memo write on an empty stack")?;
        let (objects, text) = (top.objects, top.text);
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&k) {
            return Err(format!("memoises more than {MAX_MEMO} values; refusing it"));
        }
        self.charge(objects, text)?;
        self.memo.insert(k, self.stack.last().expect("checked above").clone());
        Ok(())
    }

    /// Pushes a copy of memo entry `k`, charged for everything it holds.
    fn recall(&mut self, k: u32) -> Step<()> {
        let item = self.memo.get(&k).ok_or(format!("memo {k} read before written"))?;
        let (objects, text) = (item.objects, item.text);
        self.charge(objects, text)?;
        self.stack.push(self.memo[&k].clone());
        Ok(())
    }

    fn pop(&mut self) -> Step<Item> {
        match self.stack.pop() {
            Some(Item { value: Value::Mark, .. }) | None => Err("stack underflow".into()),
            Some(v) => Ok(v),
        }
    }

    /// The top `n` values, none of them a MARK.
    fn pop_n(&mut self, n: usize) -> Step<Vec<Item>> {
        let at = self.stack.len().checked_sub(n).ok_or("stack underflow")?;
        if self.stack[at..].iter().any(|i| matches!(i.value, Value::Mark)) {
            return Err("stack underflow".into());
        }
        Ok(self.stack.split_off(at))
    }

    fn pop_str(&mut self) -> Step<String> {
        match self.pop()?.value {
            Value::Str(s) => Ok(s),
            v => Err(format!("expected a string, found {}", v.brief())),
        }
    }

    fn pop_to_mark(&mut self) -> Step<Vec<Item>> {
        let at = self.stack.iter().rposition(|i| matches!(i.value, Value::Mark)).ok_or("no MARK on the stack")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }
}

/// The depth of a container holding `items` (refused if too deep), and the values
/// and bytes of text they hold.
fn measure(items: &[Item]) -> Step<(usize, usize, usize)> {
    let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return Err(format!("nests values more than {MAX_DEPTH} deep; refusing it"));
    }
    Ok(items.iter().fold((depth, 0, 0), |(d, o, t), i| (d, o + i.objects, t + i.text)))
}

/// `persistent_load(('storage', StorageType, key, location, numel))`.
fn persistent_load(pid: Value) -> Step<Value> {
    let Value::Tuple(items) = pid else { return Err(format!("persistent id is {}, not a tuple", pid.brief())) };
    match items.as_slice() {
        [Value::Str(kind), Value::Global(ty), Value::Str(key), ..] if kind == "storage" => {
            let ty = StorageType::from_global(ty).ok_or(format!("unsupported storage type {ty}"))?;
            if key.contains('/') || key.contains("..") {
                return Err(format!("storage key {:?} is not a plain name", cut(key)));
            }
            Ok(Value::Storage { key: key.clone(), ty })
        }
        _ => Err(format!("unsupported persistent id: {}", briefs(&items))),
    }
}

/// Calls one of the allowed globals.
fn reduce(func: Value, args: Value) -> Step<Value> {
    let Value::Global(name) = func else { return Err(format!("REDUCE on {}, not a callable", func.brief())) };
    let Value::Tuple(args) = args else { return Err(format!("arguments of {name} are {}, not a tuple", args.brief())) };
    let sizes = |v: &Value| -> Step<Vec<usize>> {
        let Value::Tuple(xs) = v else { return Err(format!("expected a tuple of sizes, found {}", v.brief())) };
        if xs.len() > MAX_DIMS {
            return Err(format!("a tensor of {} dimensions (at most {MAX_DIMS} are read)", xs.len()));
        }
        xs.iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(format!("expected a size, found {}", x.brief())),
            })
            .collect()
    };
    match (name.as_str(), args.as_slice()) {
        ("collections.OrderedDict", []) => Ok(Value::Dict(Vec::new())),
        ("torch._utils._rebuild_tensor_v2", [Value::Storage { key, ty }, Value::Int(offset), size, stride, ..]) => {
            let (shape, stride) = (sizes(size)?, sizes(stride)?);
            if shape.len() != stride.len() || *offset < 0 {
                return Err(format!("tensor with size {shape:?}, stride {stride:?} and offset {offset}"));
            }
            Ok(Value::Tensor(Box::new(View { key: key.clone(), ty: *ty, offset: *offset as usize, shape, stride })))
        }
        ("torch._utils._rebuild_parameter", [t @ Value::Tensor(_), ..]) => Ok(t.clone()),
        _ => Err(format!("unexpected call {name}{}", briefs(&args))),
    }
}

/// Short descriptions of (at most 8 of) `items`, for an error message.
fn briefs(items: &[Value]) -> String {
    let parts: Vec<String> = items.iter().take(8).map(Value::brief).collect();
    format!("({}{})", parts.join(", "), if items.len() > 8 { ", …" } else { "" })
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
