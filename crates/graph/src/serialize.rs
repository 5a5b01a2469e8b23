//! Deterministic, streaming serialization to an ONNX file with optional external data.

use crate::graph::{Attr, Dim, Graph, Value};
use crate::tensor::TensorData;
use crate::DType;
use crate::{GraphError, Result};
use pixeldit_onnx_proto as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// When to put initializers into an external-data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalData {
    /// External when the total weight bytes exceed [`WriteOptions::auto_total_bytes`].
    Auto,
    /// Always external (for tensors at or above the threshold).
    Always,
    /// Never; fails past the 2 GB protobuf limit.
    Never,
}

/// Where a model write stands, passed to the [`Progress`] callback before each initializer is written.
#[derive(Debug, Clone, Copy)]
pub struct WriteProgress<'n> {
    /// Initializers written so far.
    pub tensors_done: usize,
    /// Initializers in the graph.
    pub tensors_total: usize,
    /// Bytes (as stored) of the initializers written so far.
    pub bytes_done: u64,
    /// Bytes (as stored) of all initializers.
    pub bytes_total: u64,
    /// Name of the initializer about to be written.
    pub name: &'n str,
}

/// Progress callback of [`write_model`].
pub type Progress<'a> = &'a dyn Fn(WriteProgress<'_>);

/// Options of [`write_model`].
pub struct WriteOptions<'a> {
    /// External-data policy.
    pub external: ExternalData,
    /// Tensors of at least this many bytes go to the external file when external data is on.
    pub threshold_bytes: usize,
    /// With [`ExternalData::Auto`], external data is used when weights exceed this many bytes.
    pub auto_total_bytes: usize,
    /// `producer_name` and `producer_version`.
    pub producer: (&'a str, &'a str),
    /// Progress callback, called before each initializer.
    pub progress: Option<Progress<'a>>,
}

impl Default for WriteOptions<'_> {
    fn default() -> Self {
        WriteOptions {
            external: ExternalData::Auto,
            threshold_bytes: 1024,
            auto_total_bytes: 512 << 20,
            producer: ("pixeldit", env!("CARGO_PKG_VERSION")),
            progress: None,
        }
    }
}

/// What [`write_model`] wrote.
#[derive(Debug, Clone, Default)]
pub struct WriteReport {
    /// The model file.
    pub model_path: PathBuf,
    /// Size of the model file.
    pub model_bytes: u64,
    /// The external-data file, if one was written.
    pub external_path: Option<PathBuf>,
    /// Size of the external-data file.
    pub external_bytes: u64,
    /// SHA-256 (hex) over every weight initializer: name, shape (u64 LE) and f32 LE values, in order.
    pub weights_sha256: String,
    /// Number of weight (deferred) initializers.
    pub weight_tensors: usize,
    /// Number of weight parameters.
    pub weight_params: usize,
}

const PROTO_LIMIT: u64 = 2 << 30;

/// Picks the IR version matching the default-domain opset (onnx `VERSION_TABLE`).
pub fn ir_version_for(opset: i64) -> i64 {
    match opset {
        ..=17 => 8,
        18..=19 => 9,
        20..=21 => 10,
        _ => 11,
    }
}

/// Values encoded per write when streaming external data (4 MiB of f32).
const ENCODE_CHUNK: usize = 1 << 20;

/// Writes `graph` to `path` (plus `<file>.data` with external data). `finalize` may add metadata once
/// the weight hash is known. Both files are written under temporary names and renamed at the end, so
/// a failure leaves nothing behind.
pub fn write_model(
    graph: &Graph,
    path: &Path,
    opts: &WriteOptions,
    finalize: impl FnOnce(&WriteReport, &mut Vec<(String, String)>),
) -> Result<WriteReport> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| GraphError::Write(format!("{} is not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let data_name = format!("{file_name}.data");
    let data_path = dir.join(&data_name);

    let weight_bytes: usize = graph
        .initializers
        .iter()
        .filter(|(_, i)| i.is_weight())
        .map(|(_, i)| i.numel() * i.dtype.size())
        .sum();
    let external = match opts.external {
        ExternalData::Always => true,
        ExternalData::Never => false,
        ExternalData::Auto => weight_bytes > opts.auto_total_bytes,
    };

    let mut data_tmp = if external {
        Some(
            tempfile::Builder::new()
                .prefix(&format!(".{data_name}."))
                .tempfile_in(dir)
                .map_err(io(dir))?,
        )
    } else {
        None
    };
    let mut offset: u64 = 0;
    let mut hasher = Sha256::new();
    let mut report = WriteReport {
        model_path: path.to_path_buf(),
        ..Default::default()
    };
    let total = graph.initializers.len();
    let mut initializers = Vec::with_capacity(total);
    let mut inline_bytes: u64 = 0;
    let stored = |i: &crate::tensor::Initializer| (i.numel() * i.dtype.size()) as u64;
    let bytes_total: u64 = graph.initializers.iter().map(|(_, i)| stored(i)).sum();
    let mut bytes_done: u64 = 0;

    for (n, (_, init)) in graph.initializers.iter().enumerate() {
        if let Some(cb) = opts.progress {
            cb(WriteProgress {
                tensors_done: n,
                tensors_total: total,
                bytes_done,
                bytes_total,
                name: &init.name,
            });
        }
        bytes_done += stored(init);
        let mut t = pb::TensorProto {
            dims: init.shape.iter().map(|d| *d as i64).collect(),
            data_type: Some(init.dtype.onnx()),
            name: Some(init.name.clone()),
            ..Default::default()
        };
        let values = match &init.data {
            TensorData::Bytes(_) => None,
            TensorData::Deferred { source, .. } => {
                let values = source.read().map_err(|e| match e {
                    GraphError::Tensor { .. } | GraphError::TensorSource { .. } => e,
                    other => GraphError::TensorSource {
                        name: init.name.clone(),
                        source: Box::new(other),
                    },
                })?;
                if values.len() != init.numel() {
                    return Err(GraphError::Tensor {
                        name: init.name.clone(),
                        reason: format!("source gave {} values for shape {:?}", values.len(), init.shape),
                    });
                }
                hasher.update(init.name.as_bytes());
                for d in &init.shape {
                    hasher.update((*d as u64).to_le_bytes());
                }
                for chunk in values.chunks(ENCODE_CHUNK) {
                    hasher.update(crate::encode_f32(chunk, DType::F32));
                }
                report.weight_tensors += 1;
                report.weight_params += values.len();
                Some(values)
            }
        };
        let len = stored(init) as usize;
        match data_tmp.as_mut() {
            Some(f) if len >= opts.threshold_bytes => {
                // Align each tensor to 64 bytes so that runtimes can map it directly.
                let pad = (64 - offset % 64) % 64;
                f.write_all(&vec![0u8; pad as usize]).map_err(io(&data_path))?;
                offset += pad;
                // Encoded and written in chunks: the f32 values are the only full copy in memory (a 2.4 GB
                // embedding table is not held twice).
                match (&init.data, &values) {
                    (TensorData::Deferred { encoding, .. }, Some(values)) => {
                        for (i, chunk) in values.chunks(ENCODE_CHUNK).enumerate() {
                            let bytes = encoding.encode_at(chunk, i * ENCODE_CHUNK, &init.shape);
                            f.write_all(&bytes).map_err(io(&data_path))?;
                        }
                    }
                    (TensorData::Bytes(b), _) => f.write_all(b).map_err(io(&data_path))?,
                    _ => unreachable!("deferred tensors have values"),
                }
                let entry = |k: &str, v: String| pb::StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(v),
                };
                t.external_data = vec![
                    entry("location", data_name.clone()),
                    entry("offset", offset.to_string()),
                    entry("length", len.to_string()),
                ];
                t.data_location = Some(pb::tensor_proto::DataLocation::External as i32);
                offset += len as u64;
            }
            _ => {
                inline_bytes += len as u64;
                if inline_bytes > PROTO_LIMIT {
                    return Err(GraphError::Write(format!(
                        "inline tensors pass the 2 GB protobuf limit at '{}': use external data",
                        init.name
                    )));
                }
                t.raw_data = Some(match (&init.data, values) {
                    (TensorData::Deferred { encoding, .. }, Some(values)) => {
                        encoding.encode(&values, &init.shape)
                    }
                    (TensorData::Bytes(b), _) => b.clone(),
                    _ => unreachable!("deferred tensors have values"),
                });
            }
        }
        initializers.push(t);
    }
    report.weights_sha256 = hex(&hasher.finalize());

    let mut metadata = graph.metadata.clone();
    finalize(&report, &mut metadata);

    let model = to_proto(graph, initializers, metadata, opts);
    let encoded = model.encode_to_vec();
    if encoded.len() as u64 > PROTO_LIMIT {
        return Err(GraphError::Write(format!(
            "model proto is {} bytes, past the 2 GB limit: use external data",
            encoded.len()
        )));
    }
    let mut model_tmp = tempfile::Builder::new()
        .prefix(&format!(".{file_name}."))
        .tempfile_in(dir)
        .map_err(io(dir))?;
    model_tmp.write_all(&encoded).map_err(io(path))?;
    model_tmp.flush().map_err(io(path))?;
    report.model_bytes = encoded.len() as u64;
    if let Some(f) = data_tmp {
        publish(f, &data_path)?;
        report.external_path = Some(data_path.clone());
        report.external_bytes = offset;
    } else if data_path.exists() {
        // A stale data file from an earlier export would be misleading next to an inline model.
        std::fs::remove_file(&data_path).map_err(io(&data_path))?;
    }
    publish(model_tmp, path)?;
    Ok(report)
}

/// Temporary files are created 0600; the final files get the usual 0644.
fn publish(tmp: tempfile::NamedTempFile, to: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644)).map_err(io(to))?;
    }
    tmp.persist(to).map_err(|e| GraphError::Io {
        path: to.display().to_string(),
        source: e.error,
    })?;
    Ok(())
}

fn io(p: &Path) -> impl Fn(std::io::Error) -> GraphError + '_ {
    move |source| GraphError::Io {
        path: p.display().to_string(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value_info(graph: &Graph, v: Value) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    let info = graph.info(v);
    let dims = info
        .shape
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Batch(1) => dimension::Value::DimParam(pixeldit_batch_name().into()),
                Dim::Batch(k) => dimension::Value::DimParam(format!("{}*{k}", pixeldit_batch_name())),
                Dim::Sym(_) => dimension::Value::DimParam(
                    graph
                        .dim_names
                        .get(d)
                        .cloned()
                        .unwrap_or_else(|| d.to_string().replace('B', pixeldit_batch_name())),
                ),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: Some(info.name.clone()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(info.dtype.onnx()),
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pixeldit_batch_name() -> &'static str {
    "batch"
}

fn attr(name: &str, a: &Attr) -> pb::AttributeProto {
    use pb::attribute_proto::AttributeType as T;
    let mut p = pb::AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.i = Some(*i);
            p.r#type = Some(T::Int as i32);
        }
        Attr::Float(f) => {
            p.f = Some(*f);
            p.r#type = Some(T::Float as i32);
        }
        Attr::Ints(v) => {
            p.ints = v.clone();
            p.r#type = Some(T::Ints as i32);
        }
        Attr::Str(s) => {
            p.s = Some(s.as_bytes().to_vec());
            p.r#type = Some(T::String as i32);
        }
    }
    p
}

fn to_proto(
    graph: &Graph,
    initializers: Vec<pb::TensorProto>,
    metadata: Vec<(String, String)>,
    opts: &WriteOptions,
) -> pb::ModelProto {
    let name_of = |v: Value| graph.info(v).name.clone();
    let nodes = graph
        .nodes
        .iter()
        .map(|n| pb::NodeProto {
            input: n
                .inputs
                .iter()
                .map(|i| i.map(name_of).unwrap_or_default())
                .collect(),
            output: n.outputs.iter().map(|o| name_of(*o)).collect(),
            name: Some(n.name.clone()),
            op_type: Some(n.op_type.clone()),
            domain: (!n.domain.is_empty()).then(|| n.domain.clone()),
            attribute: n.attrs.iter().map(|(k, a)| attr(k, a)).collect(),
            ..Default::default()
        })
        .collect();
    let mut opset_import = vec![pb::OperatorSetIdProto {
        domain: Some(String::new()),
        version: Some(graph.opset),
    }];
    for (d, v) in &graph.custom_domains {
        opset_import.push(pb::OperatorSetIdProto {
            domain: Some(d.clone()),
            version: Some(*v),
        });
    }
    pb::ModelProto {
        ir_version: Some(ir_version_for(graph.opset)),
        opset_import,
        producer_name: Some(opts.producer.0.to_string()),
        producer_version: Some(opts.producer.1.to_string()),
        doc_string: (!graph.doc.is_empty()).then(|| graph.doc.clone()),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: Some(graph.name.clone()),
            initializer: initializers,
            input: graph.inputs.iter().map(|v| value_info(graph, *v)).collect(),
            output: graph.outputs.iter().map(|v| value_info(graph, *v)).collect(),
            ..Default::default()
        }),
        metadata_props: metadata
            .into_iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: Some(k),
                value: Some(v),
            })
            .collect(),
        ..Default::default()
    }
}
