//! A minimal pickle virtual machine for the subset `torch.save` writes (protocol 2; the opcodes of
//! protocols 0 to 5 are understood as far as they build plain data).
//!
//! Nothing is ever imported or executed. `GLOBAL`/`STACK_GLOBAL` push a [`Value::Global`] naming the
//! callable; `REDUCE`/`NEWOBJ`/`BUILD` interpret the few callables `torch.save` needs and turn every
//! other one into an opaque [`Value::Object`] (the interpretation lives in the private module
//! `checkpoint::torch_objects`):
//!
//! * `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`
//!   and `_rebuild_tensor` give a [`Value::Tensor`] (a description only: storage key, dtype, offset,
//!   shape, strides; no tensor data is read here);
//! * `torch._utils._rebuild_parameter[_with_state](data, ...)` and
//!   `torch._tensor._rebuild_from_type_v2(func, type, args, state)` give the tensor they wrap;
//! * `collections.OrderedDict()` gives a dict; `builtins.set`/`frozenset` give a list.
//!
//! Storages come from `BINPERSID` with the persistent id
//! `('storage', torch.<T>Storage, key, location, numel)`. Optimizer state, callbacks and
//! hyper-parameters of arbitrary classes become opaque objects whose tensors are never read. An
//! opcode outside the supported set (`EXT*`, out-of-band buffers, text `PERSID`) is an error naming
//! the opcode and its byte offset.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use super::torch_objects;

/// Element type of a torch storage (`torch.<Name>Storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDType {
    /// `FloatStorage`
    F32,
    /// `HalfStorage`
    F16,
    /// `BFloat16Storage`
    BF16,
    /// `DoubleStorage`
    F64,
    /// `LongStorage`
    I64,
    /// `IntStorage`
    I32,
    /// `ShortStorage`
    I16,
    /// `CharStorage`
    I8,
    /// `ByteStorage` (also `UntypedStorage`)
    U8,
    /// `BoolStorage`
    Bool,
}

impl StorageDType {
    /// From the class name of `torch.<Name>Storage`.
    pub fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" | "UntypedStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A storage referenced by a persistent id.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// Record name inside the archive (`data/<key>`).
    pub key: String,
    /// Element type, `None` for storage classes this reader does not know.
    pub dtype: Option<StorageDType>,
    /// Storage class name as written (`FloatStorage`, ...).
    pub type_name: String,
    /// Number of elements of the storage.
    pub numel: usize,
}

/// A tensor description from `_rebuild_tensor_v2`: nothing is read until someone asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage holding the values.
    pub storage: StorageRef,
    /// Offset into the storage, in elements.
    pub offset: usize,
    /// Shape.
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub strides: Vec<usize>,
}

/// A pickled value. Containers are shared (`Rc`) as in Python, so memoized references alias.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// `int` that fits in i64.
    Int(i64),
    /// `int` that does not fit in i64 (little-endian two's complement bytes).
    BigInt(Rc<Vec<u8>>),
    /// `float`
    Float(f64),
    /// `str`
    Str(Rc<str>),
    /// `bytes` / `bytearray`
    Bytes(Rc<Vec<u8>>),
    /// `tuple`
    Tuple(Rc<Vec<Value>>),
    /// `list` (and sets, as lists)
    List(Rc<RefCell<Vec<Value>>>),
    /// `dict` / `OrderedDict`, in insertion order
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A global name (`module.name`) that was never called.
    Global(Rc<(String, String)>),
    /// An instance of a class this reader does not interpret.
    Object(Rc<(String, String)>),
    /// A storage from a persistent id.
    Storage(Rc<StorageRef>),
    /// A tensor.
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// The Python type name, for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Object(_) => "object",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entries, if this is a dict (a snapshot; later mutation is not seen).
    pub fn dict_items(&self) -> Option<Vec<(Value, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().clone()),
            _ => None,
        }
    }

    /// Looks up a string key of a dict (the last occurrence wins, as in Python).
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d
                .borrow()
                .iter()
                .rev()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    }
}

/// A failure of the VM: the opcode (name and byte), its offset and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    /// Byte offset of the opcode in the pickle.
    pub offset: usize,
    /// The opcode byte (0 when the stream ended).
    pub opcode: u8,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pickle opcode 0x{:02x} ({}) at byte {}: {}",
            self.opcode,
            opcode_name(self.opcode),
            self.offset,
            self.reason
        )
    }
}

impl std::error::Error for PickleError {}

/// The pickletools name of an opcode.
pub fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_at: usize,
    op: u8,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Value>,
}

type R<T> = std::result::Result<T, PickleError>;

/// Runs the pickle in `data` and returns the unpickled root value.
pub fn load(data: &[u8]) -> R<Value> {
    let mut vm = Vm {
        data,
        pos: 0,
        op_at: 0,
        op: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    vm.run()
}

fn global(module: &str, name: &str) -> Value {
    Value::Global(Rc::new((module.to_string(), name.to_string())))
}

impl<'a> Vm<'a> {
    fn err<T>(&self, reason: impl Into<String>) -> R<T> {
        Err(PickleError {
            offset: self.op_at,
            opcode: self.op,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(e) => {
                let s = &self.data[self.pos..e];
                self.pos = e;
                Ok(s)
            }
            None => self.err(format!(
                "needs {n} bytes but the pickle ends at byte {}",
                self.data.len()
            )),
        }
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn len(&mut self, n: u64) -> R<usize> {
        match usize::try_from(n) {
            Ok(n) => Ok(n),
            Err(_) => self.err(format!("length {n} overflows")),
        }
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("unterminated text argument");
        };
        self.pos += n + 1;
        match std::str::from_utf8(&rest[..n]) {
            Ok(s) => Ok(s),
            Err(_) => self.err("text argument is not UTF-8"),
        }
    }

    fn string(&mut self, n: usize) -> R<Value> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Value::Str(Rc::from(s))),
            Err(_) => self.err("string is not valid UTF-8"),
        }
    }

    fn pop(&mut self) -> R<Value> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err("stack underflow"),
        }
    }

    fn top(&mut self) -> R<&mut Value> {
        if self.stack.is_empty() {
            return self.err("stack underflow");
        }
        Ok(self.stack.last_mut().expect("non-empty"))
    }

    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return self.err("no MARK on the stack");
        };
        if m > self.stack.len() {
            return self.err("MARK above the stack top");
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_get(&self, i: u64) -> R<Value> {
        match self.memo.get(&i) {
            Some(v) => Ok(v.clone()),
            None => self.err(format!("memo key {i} was never stored")),
        }
    }

    fn memo_put(&mut self, i: u64) -> R<()> {
        let v = match self.stack.last() {
            Some(v) => v.clone(),
            None => return self.err("stack underflow"),
        };
        self.memo.insert(i, v);
        Ok(())
    }

    fn long(bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::Int(0);
        }
        if bytes.len() <= 8 {
            let neg = bytes[bytes.len() - 1] & 0x80 != 0;
            let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
            buf[..bytes.len()].copy_from_slice(bytes);
            return Value::Int(i64::from_le_bytes(buf));
        }
        Value::BigInt(Rc::new(bytes.to_vec()))
    }

    fn set_items(&mut self, target: &Value, items: Vec<Value>) -> R<()> {
        if items.len() % 2 != 0 {
            return self.err("odd number of items for a dict");
        }
        match target {
            Value::Dict(d) => {
                let mut d = d.borrow_mut();
                for kv in items.chunks_exact(2) {
                    d.push((kv[0].clone(), kv[1].clone()));
                }
                Ok(())
            }
            // Items of a dict subclass we do not interpret.
            Value::Object(_) => Ok(()),
            other => self.err(format!("SETITEM(S) on a {}", other.kind())),
        }
    }

    fn append(&mut self, target: &Value, items: Vec<Value>) -> R<()> {
        match target {
            Value::List(l) => {
                l.borrow_mut().extend(items);
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => self.err(format!("APPEND(S) on a {}", other.kind())),
        }
    }

    /// `BINPERSID`: the storage named by the persistent id `pid`.
    fn persistent(&mut self, pid: Value) -> R<Value> {
        match torch_objects::storage(&pid) {
            Ok(v) => Ok(v),
            Err(e) => self.err(e),
        }
    }

    fn run(&mut self) -> R<Value> {
        loop {
            self.op_at = self.pos;
            self.op = 0;
            let op = self.u8()?;
            self.op = op;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("pickle protocol {p} is newer than 5"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: the frame length is only a read-ahead hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Self::long(b))
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Self::long(b))
                }
                b'I' | b'L' => {
                    let s = self.line()?.trim_end_matches('L');
                    let v = match s {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => match s.parse::<i64>() {
                            Ok(i) => Value::Int(i),
                            Err(_) => Value::BigInt(Rc::new(s.as_bytes().to_vec())),
                        },
                    };
                    self.stack.push(v)
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack
                        .push(Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes"))))
                }
                b'F' => {
                    let s = self.line()?;
                    match s.trim().parse::<f64>() {
                        Ok(f) => self.stack.push(Value::Float(f)),
                        Err(_) => return self.err(format!("bad float literal '{s}'")),
                    }
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                b'V' => {
                    // raw-unicode-escape text: good enough for ASCII names
                    let s = self.line()?;
                    self.stack.push(Value::Str(Rc::from(s)))
                }
                b'S' => {
                    let s = self.line()?;
                    let s = s.trim();
                    let unq = s
                        .strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                        .unwrap_or(s);
                    self.stack.push(Value::Str(Rc::from(unq)))
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b.to_vec())))
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b.to_vec())))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b.to_vec())))
                }
                0x8e | 0x96 => {
                    let n = self.u64()?;
                    let n = self.len(n)?;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(Rc::new(b.to_vec())))
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return self.err("stack underflow");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                b']' => self.stack.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = Value::Dict(Rc::default());
                    self.set_items(&d, items)?;
                    self.stack.push(d)
                }
                0x8f => self.stack.push(Value::List(Rc::default())),
                0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))))
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let target = self.top()?.clone();
                    self.append(&target, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.append(&target, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    self.set_items(&target, items)?;
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i.into())?
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?
                }
                b'p' => {
                    let s = self.line()?;
                    match s.trim().parse::<u64>() {
                        Ok(i) => self.memo_put(i)?,
                        Err(_) => return self.err(format!("bad memo key '{s}'")),
                    }
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.stack.push(v)
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i.into())?;
                    self.stack.push(v)
                }
                b'g' => {
                    let s = self.line()?;
                    let v = match s.trim().parse::<u64>() {
                        Ok(i) => self.memo_get(i)?,
                        Err(_) => return self.err(format!("bad memo key '{s}'")),
                    };
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.stack.push(global(&module, &name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => self.stack.push(global(m, n)),
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    match torch_objects::call(&f, &args) {
                        Ok(v) => self.stack.push(v),
                        Err(e) => return self.err(e),
                    }
                }
                0x81 => {
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(torch_objects::new_object(&cls));
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let _args = self.pop()?;
                    let cls = self.pop()?;
                    self.stack.push(torch_objects::new_object(&cls));
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return self.err("OBJ without a class");
                    }
                    let cls = items.remove(0);
                    self.stack.push(torch_objects::new_object(&cls));
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.pop_mark()?;
                    self.stack.push(Value::Object(Rc::new((module, name))));
                }
                b'b' => {
                    // BUILD sets instance state (`__setstate__` / `__dict__`); for the values this reader
                    // interprets (dicts, tensors) that state is attributes such as `_metadata`, never items.
                    let _state = self.pop()?;
                    self.top()?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.stack.push(v)
                }
                b'P' => return self.err("text persistent ids are not used by torch.save"),
                0x82..=0x84 => return self.err("extension registry codes are not supported"),
                0x97 | 0x98 => return self.err("out-of-band buffers are not supported"),
                _ => return self.err("unknown opcode"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pickle.dumps({'a': [1, -2, 3.5, 'x', None, True], 'b': (b'z', 300, 2**40)}, protocol=2)`
    const SIMPLE: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03N\x88eX\x01\x00\x00\x00bq\x04c_codecs\nencode\nq\x05X\x01\x00\x00\x00zq\x06X\x06\x00\x00\x00latin1q\x07\x86q\x08Rq\tM,\x01\x8a\x06\x00\x00\x00\x00\x00\x01\x87q\nu.";

    #[test]
    fn plain_values() {
        let v = load(SIMPLE).unwrap();
        let a = v.get("a").unwrap();
        let Value::List(l) = a else { panic!() };
        let l = l.borrow();
        assert!(matches!(l[0], Value::Int(1)));
        assert!(matches!(l[1], Value::Int(-2)));
        assert!(matches!(l[2], Value::Float(f) if f == 3.5));
        assert_eq!(l[3].as_str(), Some("x"));
        assert!(matches!(l[4], Value::None));
        assert!(matches!(l[5], Value::Bool(true)));
        let Value::Tuple(b) = v.get("b").unwrap() else {
            panic!()
        };
        // protocol 2 bytes go through _codecs.encode: an opaque object here
        assert!(matches!(&b[0], Value::Object(g) if g.1 == "encode"));
        assert!(matches!(b[1], Value::Int(300)));
        assert!(matches!(b[2], Value::Int(v) if v == 1 << 40));
    }

    #[test]
    fn errors_name_opcode_and_offset() {
        let e = load(b"\x80\x02\x97.").unwrap_err();
        assert_eq!(e.offset, 2);
        assert!(e.to_string().contains("0x97 (NEXT_BUFFER) at byte 2"), "{e}");
        let e = load(b"\x80\x02K").unwrap_err();
        assert!(e.to_string().contains("BININT1"), "{e}");
        assert!(load(b"\x80\x02h\x05.")
            .unwrap_err()
            .to_string()
            .contains("memo key 5"));
    }

    #[test]
    fn long_and_memo() {
        // LONG1 with 9 bytes stays a big int; negative LONG1 sign-extends
        let v = load(b"\x80\x02\x8a\x02\x00\xffq\x00h\x00\x86.").unwrap();
        let Value::Tuple(t) = v else { panic!() };
        assert!(matches!(t[0], Value::Int(-256)));
        assert!(matches!(t[1], Value::Int(-256)));
        assert!(matches!(
            load(b"\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.").unwrap(),
            Value::BigInt(_)
        ));
    }
}
