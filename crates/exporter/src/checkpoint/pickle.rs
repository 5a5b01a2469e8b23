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

/// The pickletools name of an opcode byte (`unknown` for a byte that is no opcode).
pub fn opcode_name(op: u8) -> &'static str {
    OpCode::from_byte(op).map_or("unknown", OpCode::name)
}

/// Declares [`OpCode`] from one table: variant, byte, pickletools name.
macro_rules! opcodes {
    ($($variant:ident = $byte:literal, $name:literal;)*) => {
        /// A pickle opcode (protocols 0 to 5), its discriminant the opcode byte.
        #[repr(u8)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum OpCode {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant = $byte,
            )*
        }

        impl OpCode {
            /// The opcode of a byte, `None` for a byte that is no opcode.
            fn from_byte(byte: u8) -> Option<Self> {
                match byte {
                    $($byte => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// The pickletools name.
            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

opcodes! {
    Mark = b'(', "MARK";
    Stop = b'.', "STOP";
    Pop = b'0', "POP";
    PopMark = b'1', "POP_MARK";
    Dup = b'2', "DUP";
    Float = b'F', "FLOAT";
    Int = b'I', "INT";
    BinInt = b'J', "BININT";
    BinInt1 = b'K', "BININT1";
    Long = b'L', "LONG";
    BinInt2 = b'M', "BININT2";
    None = b'N', "NONE";
    PersId = b'P', "PERSID";
    BinPersId = b'Q', "BINPERSID";
    Reduce = b'R', "REDUCE";
    String = b'S', "STRING";
    BinString = b'T', "BINSTRING";
    ShortBinString = b'U', "SHORT_BINSTRING";
    Unicode = b'V', "UNICODE";
    BinUnicode = b'X', "BINUNICODE";
    Append = b'a', "APPEND";
    Build = b'b', "BUILD";
    Global = b'c', "GLOBAL";
    Dict = b'd', "DICT";
    EmptyDict = b'}', "EMPTY_DICT";
    Appends = b'e', "APPENDS";
    Get = b'g', "GET";
    BinGet = b'h', "BINGET";
    Inst = b'i', "INST";
    LongBinGet = b'j', "LONG_BINGET";
    List = b'l', "LIST";
    EmptyList = b']', "EMPTY_LIST";
    Obj = b'o', "OBJ";
    Put = b'p', "PUT";
    BinPut = b'q', "BINPUT";
    LongBinPut = b'r', "LONG_BINPUT";
    SetItem = b's', "SETITEM";
    Tuple = b't', "TUPLE";
    EmptyTuple = b')', "EMPTY_TUPLE";
    SetItems = b'u', "SETITEMS";
    BinFloat = b'G', "BINFLOAT";
    BinBytes = b'B', "BINBYTES";
    ShortBinBytes = b'C', "SHORT_BINBYTES";
    Proto = 0x80, "PROTO";
    NewObj = 0x81, "NEWOBJ";
    Ext1 = 0x82, "EXT1";
    Ext2 = 0x83, "EXT2";
    Ext4 = 0x84, "EXT4";
    Tuple1 = 0x85, "TUPLE1";
    Tuple2 = 0x86, "TUPLE2";
    Tuple3 = 0x87, "TUPLE3";
    NewTrue = 0x88, "NEWTRUE";
    NewFalse = 0x89, "NEWFALSE";
    Long1 = 0x8a, "LONG1";
    Long4 = 0x8b, "LONG4";
    ShortBinUnicode = 0x8c, "SHORT_BINUNICODE";
    BinUnicode8 = 0x8d, "BINUNICODE8";
    BinBytes8 = 0x8e, "BINBYTES8";
    EmptySet = 0x8f, "EMPTY_SET";
    AddItems = 0x90, "ADDITEMS";
    FrozenSet = 0x91, "FROZENSET";
    NewObjEx = 0x92, "NEWOBJ_EX";
    StackGlobal = 0x93, "STACK_GLOBAL";
    Memoize = 0x94, "MEMOIZE";
    Frame = 0x95, "FRAME";
    ByteArray8 = 0x96, "BYTEARRAY8";
    NextBuffer = 0x97, "NEXT_BUFFER";
    ReadonlyBuffer = 0x98, "READONLY_BUFFER";
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
        if !items.len().is_multiple_of(2) {
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

    /// Runs opcodes until `STOP` and returns the value it pops.
    fn run(&mut self) -> R<Value> {
        loop {
            self.op_at = self.pos;
            self.op = 0;
            let byte = self.u8()?;
            self.op = byte;
            let Some(op) = OpCode::from_byte(byte) else {
                return self.err("unknown opcode");
            };
            if let Some(root) = self.step(op)? {
                return Ok(root);
            }
        }
    }

    /// Executes one opcode (its arguments follow at `pos`); `Some` is the root value at `STOP`.
    fn step(&mut self, op: OpCode) -> R<Option<Value>> {
        use OpCode as O;
        match op {
            O::Stop => return self.pop().map(Some),
            O::Proto | O::Frame | O::Mark | O::Pop | O::PopMark | O::Dup => self.control(op)?,
            O::None
            | O::NewTrue
            | O::NewFalse
            | O::BinInt1
            | O::BinInt2
            | O::BinInt
            | O::Long1
            | O::Long4
            | O::Int
            | O::Long
            | O::BinFloat
            | O::Float => self.push_number(op)?,
            O::BinUnicode
            | O::ShortBinUnicode
            | O::BinUnicode8
            | O::Unicode
            | O::String
            | O::BinString
            | O::ShortBinString
            | O::ShortBinBytes
            | O::BinBytes
            | O::BinBytes8
            | O::ByteArray8 => self.push_text(op)?,
            O::EmptyTuple
            | O::Tuple
            | O::Tuple1
            | O::Tuple2
            | O::Tuple3
            | O::EmptyList
            | O::List
            | O::EmptyDict
            | O::Dict
            | O::EmptySet
            | O::FrozenSet => self.build_container(op)?,
            O::AddItems | O::Append | O::Appends | O::SetItem | O::SetItems => self.extend_container(op)?,
            O::BinPut | O::LongBinPut | O::Memoize | O::Put | O::BinGet | O::LongBinGet | O::Get => {
                self.memo_op(op)?
            }
            O::Global
            | O::StackGlobal
            | O::Reduce
            | O::NewObj
            | O::NewObjEx
            | O::Obj
            | O::Inst
            | O::Build
            | O::BinPersId => self.global_or_reduce(op)?,
            O::PersId => return self.err("text persistent ids are not used by torch.save"),
            O::Ext1 | O::Ext2 | O::Ext4 => return self.err("extension registry codes are not supported"),
            O::NextBuffer | O::ReadonlyBuffer => return self.err("out-of-band buffers are not supported"),
        }
        Ok(None)
    }

    /// Protocol and framing headers, `MARK` and the plain stack operations.
    fn control(&mut self, op: OpCode) -> R<()> {
        match op {
            OpCode::Proto => {
                let p = self.u8()?;
                if p > 5 {
                    return self.err(format!("pickle protocol {p} is newer than 5"));
                }
            }
            OpCode::Frame => {
                self.u64()?; // FRAME: the frame length is only a read-ahead hint
            }
            OpCode::Mark => self.marks.push(self.stack.len()),
            OpCode::Pop => {
                self.pop()?;
            }
            OpCode::PopMark => {
                self.pop_mark()?;
            }
            OpCode::Dup => {
                let v = self.top()?.clone();
                self.stack.push(v);
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        }
        Ok(())
    }

    /// Pushes a `None`, bool, int or float literal.
    fn push_number(&mut self, op: OpCode) -> R<()> {
        let v = match op {
            OpCode::None => Value::None,
            OpCode::NewTrue => Value::Bool(true),
            OpCode::NewFalse => Value::Bool(false),
            OpCode::BinInt1 => Value::Int(self.u8()?.into()),
            OpCode::BinInt2 => Value::Int(self.u16()?.into()),
            OpCode::BinInt => Value::Int((self.u32()? as i32).into()),
            OpCode::Long1 => {
                let n = self.u8()? as usize;
                Self::long(self.take(n)?)
            }
            OpCode::Long4 => {
                let n = self.u32()? as usize;
                Self::long(self.take(n)?)
            }
            OpCode::Int | OpCode::Long => {
                let s = self.line()?.trim_end_matches('L');
                match s {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    s => match s.parse::<i64>() {
                        Ok(i) => Value::Int(i),
                        Err(_) => Value::BigInt(Rc::new(s.as_bytes().to_vec())),
                    },
                }
            }
            OpCode::BinFloat => {
                let b = self.take(8)?;
                Value::Float(f64::from_be_bytes(b.try_into().expect("8 bytes")))
            }
            OpCode::Float => {
                let s = self.line()?;
                match s.trim().parse::<f64>() {
                    Ok(f) => Value::Float(f),
                    Err(_) => return self.err(format!("bad float literal '{s}'")),
                }
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        };
        self.stack.push(v);
        Ok(())
    }

    /// Pushes a `str` or `bytes` literal.
    fn push_text(&mut self, op: OpCode) -> R<()> {
        let v = match op {
            OpCode::BinUnicode => {
                let n = self.u32()? as usize;
                self.string(n)?
            }
            OpCode::ShortBinUnicode => {
                let n = self.u8()? as usize;
                self.string(n)?
            }
            OpCode::BinUnicode8 => {
                let n = self.u64()?;
                let n = self.len(n)?;
                self.string(n)?
            }
            OpCode::Unicode => {
                // raw-unicode-escape text: good enough for ASCII names
                Value::Str(Rc::from(self.line()?))
            }
            OpCode::String => {
                let s = self.line()?;
                let s = s.trim();
                let unq = s
                    .strip_prefix('\'')
                    .and_then(|x| x.strip_suffix('\''))
                    .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                    .unwrap_or(s);
                Value::Str(Rc::from(unq))
            }
            OpCode::BinString | OpCode::BinBytes => {
                let n = self.u32()? as usize;
                Value::Bytes(Rc::new(self.take(n)?.to_vec()))
            }
            OpCode::ShortBinString | OpCode::ShortBinBytes => {
                let n = self.u8()? as usize;
                Value::Bytes(Rc::new(self.take(n)?.to_vec()))
            }
            OpCode::BinBytes8 | OpCode::ByteArray8 => {
                let n = self.u64()?;
                let n = self.len(n)?;
                Value::Bytes(Rc::new(self.take(n)?.to_vec()))
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        };
        self.stack.push(v);
        Ok(())
    }

    /// Pushes a new tuple, list, dict or set (empty, or of the items above the mark or the top few).
    fn build_container(&mut self, op: OpCode) -> R<()> {
        let v = match op {
            OpCode::EmptyTuple => Value::Tuple(Rc::new(Vec::new())),
            OpCode::Tuple => Value::Tuple(Rc::new(self.pop_mark()?)),
            OpCode::Tuple1 | OpCode::Tuple2 | OpCode::Tuple3 => {
                let n = match op {
                    OpCode::Tuple1 => 1,
                    OpCode::Tuple2 => 2,
                    _ => 3,
                };
                if self.stack.len() < n {
                    return self.err("stack underflow");
                }
                Value::Tuple(Rc::new(self.stack.split_off(self.stack.len() - n)))
            }
            OpCode::EmptyList | OpCode::EmptySet => Value::List(Rc::default()),
            OpCode::List | OpCode::FrozenSet => Value::List(Rc::new(RefCell::new(self.pop_mark()?))),
            OpCode::EmptyDict => Value::Dict(Rc::default()),
            OpCode::Dict => {
                let items = self.pop_mark()?;
                let d = Value::Dict(Rc::default());
                self.set_items(&d, items)?;
                d
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        };
        self.stack.push(v);
        Ok(())
    }

    /// Adds items to the list, set or dict below them (`APPEND(S)`, `ADDITEMS`, `SETITEM(S)`).
    fn extend_container(&mut self, op: OpCode) -> R<()> {
        match op {
            OpCode::Append => {
                let v = self.pop()?;
                let target = self.top()?.clone();
                self.append(&target, vec![v])
            }
            OpCode::Appends | OpCode::AddItems => {
                let items = self.pop_mark()?;
                let target = self.top()?.clone();
                self.append(&target, items)
            }
            OpCode::SetItem => {
                let v = self.pop()?;
                let k = self.pop()?;
                let target = self.top()?.clone();
                self.set_items(&target, vec![k, v])
            }
            OpCode::SetItems => {
                let items = self.pop_mark()?;
                let target = self.top()?.clone();
                self.set_items(&target, items)
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        }
    }

    /// Stores the stack top in the memo (`PUT`s, `MEMOIZE`) or pushes a memoized value (`GET`s).
    fn memo_op(&mut self, op: OpCode) -> R<()> {
        match op {
            OpCode::BinPut => {
                let i = self.u8()?;
                self.memo_put(i.into())
            }
            OpCode::LongBinPut => {
                let i = self.u32()?;
                self.memo_put(i.into())
            }
            OpCode::Memoize => {
                let i = self.memo.len() as u64;
                self.memo_put(i)
            }
            OpCode::Put => {
                let s = self.line()?;
                match s.trim().parse::<u64>() {
                    Ok(i) => self.memo_put(i),
                    Err(_) => self.err(format!("bad memo key '{s}'")),
                }
            }
            OpCode::BinGet => {
                let i = self.u8()?;
                let v = self.memo_get(i.into())?;
                self.stack.push(v);
                Ok(())
            }
            OpCode::LongBinGet => {
                let i = self.u32()?;
                let v = self.memo_get(i.into())?;
                self.stack.push(v);
                Ok(())
            }
            OpCode::Get => {
                let s = self.line()?;
                let v = match s.trim().parse::<u64>() {
                    Ok(i) => self.memo_get(i)?,
                    Err(_) => return self.err(format!("bad memo key '{s}'")),
                };
                self.stack.push(v);
                Ok(())
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        }
    }

    /// Globals, calls, object construction, `BUILD` and persistent ids (storages): nothing is imported,
    /// the torch callables are interpreted by `torch_objects`.
    fn global_or_reduce(&mut self, op: OpCode) -> R<()> {
        let v = match op {
            OpCode::Global => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                global(&module, &name)
            }
            OpCode::StackGlobal => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module.as_str(), name.as_str()) {
                    (Some(m), Some(n)) => global(m, n),
                    _ => return self.err("STACK_GLOBAL needs two strings"),
                }
            }
            OpCode::Reduce => {
                let args = self.pop()?;
                let f = self.pop()?;
                match torch_objects::call(&f, &args) {
                    Ok(v) => v,
                    Err(e) => return self.err(e),
                }
            }
            OpCode::NewObj => {
                let _args = self.pop()?;
                let cls = self.pop()?;
                torch_objects::new_object(&cls)
            }
            OpCode::NewObjEx => {
                let _kwargs = self.pop()?;
                let _args = self.pop()?;
                let cls = self.pop()?;
                torch_objects::new_object(&cls)
            }
            OpCode::Obj => {
                let mut items = self.pop_mark()?;
                if items.is_empty() {
                    return self.err("OBJ without a class");
                }
                let cls = items.remove(0);
                torch_objects::new_object(&cls)
            }
            OpCode::Inst => {
                let module = self.line()?.to_string();
                let name = self.line()?.to_string();
                self.pop_mark()?;
                Value::Object(Rc::new((module, name)))
            }
            OpCode::Build => {
                // BUILD sets instance state (`__setstate__` / `__dict__`); for the values this reader
                // interprets (dicts, tensors) that state is attributes such as `_metadata`, never items.
                let _state = self.pop()?;
                self.top()?;
                return Ok(());
            }
            OpCode::BinPersId => {
                let pid = self.pop()?;
                self.persistent(pid)?
            }
            _ => unreachable!("{op:?} is dispatched elsewhere"),
        };
        self.stack.push(v);
        Ok(())
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
    fn opcode_table_round_trips() {
        let mut known = 0;
        for b in 0..=u8::MAX {
            if let Some(op) = OpCode::from_byte(b) {
                assert_eq!(op as u8, b, "{op:?}");
                assert_eq!(opcode_name(b), op.name());
                known += 1;
            } else {
                assert_eq!(opcode_name(b), "unknown");
            }
        }
        assert_eq!(known, 68);
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
