//! The torch side of unpickling: the few callables `torch.save` pickles call (`REDUCE`, `NEWOBJ`) and
//! the storages its persistent ids name (`BINPERSID`). Nothing is imported or executed; an unknown
//! callable gives an opaque [`Value::Object`]. Errors are reasons; the VM adds opcode and offset.

use std::cell::RefCell;
use std::rc::Rc;

use super::pickle::{StorageDType, StorageRef, TensorRef, Value};

/// `v` as a non-negative int; `what` names it in the message.
fn usize_of(v: &Value, what: &str) -> std::result::Result<usize, String> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => Err(format!(
            "{what}: expected a non-negative int, got {}",
            other.kind()
        )),
    }
}

/// `v` as a tuple (or list) of non-negative ints.
fn usizes_of(v: &Value, what: &str) -> std::result::Result<Vec<usize>, String> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| usize_of(x, what)).collect(),
        Value::List(l) => l.borrow().iter().map(|x| usize_of(x, what)).collect(),
        other => Err(format!("{what}: expected a tuple of ints, got {}", other.kind())),
    }
}

/// The items of a tuple.
fn tuple_items(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Tuple(t) => Some(t.to_vec()),
        _ => None,
    }
}

/// Interprets a call `callable(*args)` for the callables `torch.save` uses.
pub(crate) fn call(callable: &Value, args: &Value) -> std::result::Result<Value, String> {
    let Value::Global(g) = callable else {
        // Calling an opaque object or a non-global: the result is opaque too.
        return Ok(Value::Object(Rc::new(("<call>".into(), callable.kind().into()))));
    };
    let (module, name) = (g.0.as_str(), g.1.as_str());
    let a = tuple_items(args).unwrap_or_default();
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            if a.len() < 4 {
                return Err(format!("{module}.{name} with {} arguments", a.len()));
            }
            let Value::Storage(storage) = &a[0] else {
                return Err(format!(
                    "{module}.{name}: first argument is a {}, not a storage",
                    a[0].kind()
                ));
            };
            let offset = usize_of(&a[1], "storage offset")?;
            let shape = usizes_of(&a[2], "tensor size")?;
            let strides = usizes_of(&a[3], "tensor stride")?;
            if shape.len() != strides.len() {
                return Err(format!("size {shape:?} and stride {strides:?} differ in rank"));
            }
            Ok(Value::Tensor(Rc::new(TensorRef {
                storage: (**storage).clone(),
                offset,
                shape,
                strides,
            })))
        }
        ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => a
            .first()
            .cloned()
            .ok_or_else(|| format!("{module}.{name} without arguments")),
        ("torch._tensor", "_rebuild_from_type_v2") => {
            if a.len() < 3 {
                return Err(format!("{module}.{name} with {} arguments", a.len()));
            }
            call(&a[0], &a[2])
        }
        ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
            Ok(Value::Dict(Rc::default()))
        }
        ("builtins", "set")
        | ("__builtin__", "set")
        | ("builtins", "frozenset")
        | ("__builtin__", "frozenset") => {
            let items = match a.first() {
                Some(Value::List(l)) => l.borrow().clone(),
                Some(Value::Tuple(t)) => t.to_vec(),
                _ => Vec::new(),
            };
            Ok(Value::List(Rc::new(RefCell::new(items))))
        }
        _ => Ok(Value::Object(Rc::new((module.to_string(), name.to_string())))),
    }
}

/// The object `cls.__new__(cls, ...)`: an `OrderedDict` is a dict, anything else opaque.
pub(crate) fn new_object(cls: &Value) -> Value {
    match cls {
        Value::Global(g) if matches!((g.0.as_str(), g.1.as_str()), ("collections", "OrderedDict")) => {
            Value::Dict(Rc::default())
        }
        Value::Global(g) => Value::Object(g.clone()),
        other => Value::Object(Rc::new(("<new>".into(), other.kind().into()))),
    }
}

/// The storage of the persistent id `('storage', torch.<T>Storage, key, location, numel)`.
pub(crate) fn storage(pid: &Value) -> std::result::Result<Value, String> {
    let Some(t) = tuple_items(pid) else {
        return Err(format!("persistent id is a {}, not a tuple", pid.kind()));
    };
    if t.first().and_then(Value::as_str) != Some("storage") || t.len() < 5 {
        return Err(format!(
            "persistent id {:?} is not ('storage', type, key, location, numel)",
            t.first().and_then(Value::as_str)
        ));
    }
    let type_name = match &t[1] {
        Value::Global(g) => g.1.clone(),
        other => return Err(format!("storage type is a {}", other.kind())),
    };
    let key = match &t[2] {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        other => return Err(format!("storage key is a {}", other.kind())),
    };
    let numel = usize_of(&t[4], "storage numel")?;
    Ok(Value::Storage(Rc::new(StorageRef {
        key,
        dtype: StorageDType::from_storage_name(&type_name),
        type_name,
        numel,
    })))
}
