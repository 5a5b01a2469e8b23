//! `config.pbtxt`: Triton's `ModelConfig` in protobuf text format, read and written through prost-reflect over the
//! generated types ([`crate::pb`]).
//!
//! * [`parse`] is prost-reflect's text-format parser with Triton's schema: unknown fields, bad enum values, wrong
//!   types and syntax errors are errors with line and column.
//! * [`render`] walks the message by reflection in field-number order and formats every value with prost-reflect
//!   (strings, numbers, enum names); only map entries are ordered here (by key), because prost-reflect keeps maps
//!   in a hash map: the same config gives the same bytes in every process.

use crate::error::{Result, TritonError};
use crate::pb::inference::ModelConfig;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, Value,
};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::OnceLock;

/// The descriptor of `inference.ModelConfig`.
pub fn model_config_descriptor() -> MessageDescriptor {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::pb::DESCRIPTOR_SET).expect("the vendored descriptor set decodes")
    })
    .get_message_by_name("inference.ModelConfig")
    .expect("ModelConfig is in the descriptor set")
}

/// Parses the text of a `config.pbtxt` (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<ModelConfig> {
    let dynamic = DynamicMessage::parse_text_format(model_config_descriptor(), text).map_err(|e| {
        TritonError::Parse {
            path: path.to_path_buf(),
            message: describe_parse_error(text, &e),
        }
    })?;
    dynamic
        .transcode_to::<ModelConfig>()
        .map_err(|e| TritonError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// `line L, column C: message` for a text-format error.
fn describe_parse_error(text: &str, e: &prost_reflect::text_format::ParseError) -> String {
    let msg = e.to_string();
    let Some(span) = prost_reflect_span(e) else {
        return msg;
    };
    let before = &text[..span.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {col}: {msg}")
}

fn prost_reflect_span(e: &prost_reflect::text_format::ParseError) -> Option<usize> {
    // The byte range of the error in the input, from the error's Debug form (`span: 12..15`); the parser does not
    // expose it otherwise without the `miette` feature.
    let dbg = format!("{e:?}");
    let i = dbg.find("span: ")?;
    let digits: String = dbg[i..]
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Renders `cfg` as `config.pbtxt` text, after `header` comment lines (each prefixed with `# `).
pub fn render(cfg: &ModelConfig, header: &[&str]) -> String {
    let mut dynamic = DynamicMessage::new(model_config_descriptor());
    dynamic
        .transcode_from(cfg)
        .expect("a ModelConfig transcodes to its own descriptor");
    let mut out = String::new();
    for line in header {
        let _ = writeln!(out, "# {line}");
    }
    write_message(&mut out, &dynamic, 0);
    out
}

fn write_message(out: &mut String, m: &DynamicMessage, indent: usize) {
    let mut fields: Vec<(FieldDescriptor, &Value)> = m.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    for (field, value) in fields {
        write_field(out, &field, value, indent);
    }
}

fn write_field(out: &mut String, field: &FieldDescriptor, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::List(items) if !matches!(field.kind(), Kind::Message(_)) => {
            let list: Vec<String> = items.iter().map(|v| scalar_text(field, v)).collect();
            let _ = writeln!(out, "{pad}{}: [ {} ]", field.name(), list.join(", "));
        }
        Value::List(items) => {
            for item in items {
                write_single(out, field, item, indent);
            }
        }
        Value::Map(map) => {
            let entry = field.kind();
            let entry = entry.as_message().expect("map fields have an entry message");
            let value_field = entry.map_entry_value_field();
            let mut entries: Vec<(&MapKey, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| map_key_order(a.0, b.0));
            for (k, v) in entries {
                let _ = writeln!(out, "{pad}{} {{", field.name());
                let _ = writeln!(out, "{pad}  key: {}", Value::from(k.clone()));
                write_single(out, &value_field, v, indent + 2);
                let _ = writeln!(out, "{pad}}}");
            }
        }
        v => write_single(out, field, v, indent),
    }
}

fn write_single(out: &mut String, field: &FieldDescriptor, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match (value, field.kind()) {
        (Value::Message(m), _) => {
            let _ = writeln!(out, "{pad}{} {{", field.name());
            write_message(out, m, indent + 2);
            let _ = writeln!(out, "{pad}}}");
        }
        (v, _) => {
            let _ = writeln!(out, "{pad}{}: {}", field.name(), scalar_text(field, v));
        }
    }
}

/// A scalar in text format: enum values by name, everything else as prost-reflect formats it.
fn scalar_text(field: &FieldDescriptor, value: &Value) -> String {
    match (value, field.kind()) {
        (Value::EnumNumber(n), Kind::Enum(e)) => e
            .get_value(*n)
            .map_or_else(|| n.to_string(), |v| v.name().to_string()),
        (v, _) => v.to_string(),
    }
}

fn map_key_order(a: &MapKey, b: &MapKey) -> std::cmp::Ordering {
    Value::from(a.clone())
        .to_string()
        .cmp(&Value::from(b.clone()).to_string())
}
