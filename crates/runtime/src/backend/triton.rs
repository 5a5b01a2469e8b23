//! A remote [`Backend`]: forward passes on a Triton Inference Server (KServe v2 / Open Inference Protocol over
//! HTTP, with Triton's binary tensor data extension), so the same samplers run locally or through Triton
//! (`pixeldit-run --triton http://HOST:8000 --model NAME`).
//!
//! * [`TritonBackend::connect`] checks the server (`GET /v2`) and the model (`GET /v2/models/NAME/ready`, `GET
//!   /v2/models/NAME` for the tensor names, datatypes and shapes), and reads `max_batch_size` and the PixelDiT
//!   metadata from the model configuration (`GET /v2/models/NAME/config`, parameter [`META_KEY`] written by
//!   `pixeldit-export --triton-repo`), so a client needs nothing but the server.
//! * Each [`Backend::run`] is one `POST /v2/models/NAME/infer` per chunk of at most `max_batch_size` images:
//!   a JSON header (length in the `Inference-Header-Content-Length` header) followed by the raw little-endian
//!   tensors `x`, `t`, `y` (or `text` for a text-to-image model, [`Backend::run_text`]); the output `v` comes back the
//!   same way. Shapes follow the server's model metadata: with
//!   `max_batch_size > 0` Triton reports `t`/`y` as `[-1, 1]` (config dims `[1]`, reshape `[]`), so they are sent as
//!   `[B, 1]`.
//! * Plain `http://` only (no TLS in this build); every request has a timeout ([`TritonOptions::timeout`]).

use super::{Backend, LoadOptions};
use crate::error::{Result, RuntimeError};
use ndarray::{concatenate, Array4, ArrayView1, ArrayView3, ArrayView4, Axis};
use pixeldit_spec::{ModelMetadata, META_FORMAT_VERSION, META_KEY};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// Header of the binary tensor extension giving the JSON header's length.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// Connection options.
#[derive(Debug, Clone)]
pub struct TritonOptions {
    /// Model version (`None`: the server's policy, usually the latest).
    pub version: Option<String>,
    /// Timeout of each HTTP request (connect, send and receive).
    pub timeout: Duration,
}

impl Default for TritonOptions {
    fn default() -> Self {
        TritonOptions {
            version: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// One model input as the server declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTensor {
    /// Name.
    pub name: String,
    /// KServe datatype (`FP32`, `INT64`, ...).
    pub datatype: String,
    /// Shape; `-1` for the batch axis (first) and other variable dims.
    pub shape: Vec<i64>,
}

/// A PixelDiT model served by Triton.
pub struct TritonBackend {
    agent: ureq::Agent,
    base: String,
    model: String,
    version: Option<String>,
    server_version: String,
    max_batch_size: usize,
    inputs: Vec<RemoteTensor>,
    output: RemoteTensor,
    metadata: Option<ModelMetadata>,
    metadata_error: Option<String>,
}

fn err(url: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Triton {
        url: url.to_string(),
        message: message.into(),
    }
}

impl TritonBackend {
    /// Connects to `url` (`http://host:port`) and checks that `model` is ready with the PixelDiT inputs
    /// `x`, `t`, `y` and output `v`.
    pub fn connect(url: &str, model: &str, opts: &TritonOptions) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(err(
                &base,
                "the URL must start with http:// (e.g. http://127.0.0.1:8000; https is not supported by this build)",
            ));
        }
        if model.is_empty() || model.contains('/') {
            return Err(err(&base, format!("invalid model name '{model}'")));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(opts.timeout))
            .build()
            .into();
        let mut b = TritonBackend {
            agent,
            base,
            model: model.to_string(),
            version: opts.version.clone(),
            server_version: String::new(),
            max_batch_size: 0,
            inputs: Vec::new(),
            output: RemoteTensor {
                name: String::new(),
                datatype: String::new(),
                shape: Vec::new(),
            },
            metadata: None,
            metadata_error: None,
        };
        let server = b.get_json("/v2")?;
        b.server_version = format!(
            "{} {}",
            server["name"].as_str().unwrap_or("server"),
            server["version"].as_str().unwrap_or("?")
        );
        let has_binary = server["extensions"]
            .as_array()
            .is_none_or(|e| e.iter().any(|x| x.as_str() == Some("binary_tensor_data")));
        if !has_binary {
            return Err(err(
                &b.base,
                "the server does not support the binary_tensor_data extension",
            ));
        }
        let ready = b.model_path("/ready");
        let (status, body) = b.get(&ready)?;
        if status != 200 {
            return Err(err(
                &b.base,
                format!(
                    "model '{}' is not ready (GET {ready}: HTTP {status}{})",
                    b.model,
                    error_text(&body).map(|e| format!(": {e}")).unwrap_or_default()
                ),
            ));
        }
        let meta = b.get_json(&b.model_path(""))?;
        let tensors = |key: &str| -> Vec<RemoteTensor> {
            meta[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| RemoteTensor {
                            name: t["name"].as_str().unwrap_or_default().to_string(),
                            datatype: t["datatype"].as_str().unwrap_or_default().to_string(),
                            shape: t["shape"]
                                .as_array()
                                .map(|s| s.iter().filter_map(Value::as_i64).collect())
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let (ins, outs) = (tensors("inputs"), tensors("outputs"));
        // Class-conditional exports take x, t, y; text-to-image ones x, t, text (pixeldit_spec::io).
        let (cond, cond_dt) = if ins.iter().any(|t| t.name == "text") {
            ("text", "FP32")
        } else {
            ("y", "INT64")
        };
        for (name, dt) in [("x", "FP32"), ("t", "FP32"), (cond, cond_dt)] {
            match ins.iter().find(|t| t.name == name) {
                Some(t) if t.datatype == dt && t.shape.first() == Some(&-1) => b.inputs.push(t.clone()),
                Some(t) => {
                    return Err(err(
                        &b.base,
                        format!(
                        "model '{}' input '{name}' is {} {:?}; expected {dt} with a leading batch axis (-1)",
                        b.model, t.datatype, t.shape
                    ),
                    ))
                }
                None => {
                    return Err(err(
                        &b.base,
                        format!(
                            "model '{}' has no input '{name}' (inputs: {}); is it a PixelDiT export?",
                            b.model,
                            ins.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ))
                }
            }
        }
        b.output = outs
            .into_iter()
            .find(|t| t.name == "v" && t.datatype == "FP32")
            .ok_or_else(|| err(&b.base, format!("model '{}' has no FP32 output 'v'", b.model)))?;
        let config = b.get_json(&b.model_path("/config"))?;
        b.max_batch_size = config["max_batch_size"].as_u64().unwrap_or(0) as usize;
        match config["parameters"][META_KEY]["string_value"].as_str() {
            Some(j) => match ModelMetadata::from_json(j) {
                Ok(m) if m.format_version == META_FORMAT_VERSION => b.metadata = Some(m),
                Ok(m) => {
                    b.metadata_error = Some(format!(
                    "parameter '{META_KEY}' has format_version {} (this runtime reads {META_FORMAT_VERSION})",
                    m.format_version
                ))
                }
                Err(e) => b.metadata_error = Some(format!("parameter '{META_KEY}': {e}")),
            },
            None => {
                b.metadata_error = Some(format!(
                    "the model configuration has no parameter '{META_KEY}' (not written by pixeldit-export \
                     --triton-repo?); pass the local .onnx file for the metadata"
                ))
            }
        }
        Ok(b)
    }

    /// The PixelDiT metadata from the server's model configuration.
    pub fn metadata(&self) -> Result<&ModelMetadata> {
        self.metadata
            .as_ref()
            .ok_or_else(|| err(&self.base, self.metadata_error.clone().unwrap_or_default()))
    }

    /// `max_batch_size` of the model configuration (0: no batching, any batch goes in one request).
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// The inputs as the server declares them (`x`, `t`, `y`).
    pub fn inputs(&self) -> &[RemoteTensor] {
        &self.inputs
    }

    /// `GET /v2/models/NAME[/versions/V]/stats` (Triton's statistics extension), as JSON.
    pub fn statistics(&self) -> Result<Value> {
        self.get_json(&self.model_path("/stats"))
    }

    /// One inference request (batch at most `max_batch_size` when that is > 0).
    pub fn infer(&self, x: ArrayView4<f32>, t: ArrayView1<f32>, y: ArrayView1<i64>) -> Result<Array4<f32>> {
        self.request(x, t, Condition::Classes(y))
    }

    /// One inference request of a text-to-image model: `x`, `t` (sigma x 1000) and `text` `[B, L, E]`.
    pub fn infer_text(
        &self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        text: ArrayView3<f32>,
    ) -> Result<Array4<f32>> {
        self.request(x, t, Condition::Text(text))
    }

    fn request(&self, x: ArrayView4<f32>, t: ArrayView1<f32>, cond: Condition<'_>) -> Result<Array4<f32>> {
        let b = x.shape()[0];
        if t.len() != b || cond.batch() != b {
            return Err(RuntimeError::Shape(format!(
                "x has batch {b} but t has {} and {} {} elements",
                t.len(),
                cond.name(),
                cond.batch()
            )));
        }
        let mut header_inputs = Vec::new();
        let mut payload: Vec<u8> = Vec::with_capacity((x.len() + cond.per_item() * b) * 4 + b * 4);
        for spec in &self.inputs {
            let n = match spec.name.as_str() {
                "x" => x.len() / b.max(1),
                "t" => 1,
                name if name == cond.name() => cond.per_item(),
                name => {
                    return Err(err(
                        &self.base,
                        format!(
                            "model '{}' takes an input '{name}' that a {} request does not have (inputs: x, t, {})",
                            self.model,
                            cond.kind(),
                            cond.name()
                        ),
                    ))
                }
            };
            let mut shape: Vec<i64> = vec![b as i64];
            shape.extend(spec.shape[1..].iter().map(|&d| if d < 0 { 1 } else { d }));
            let count: i64 = shape[1..].iter().product();
            if count as usize != n {
                return Err(err(
                    &self.base,
                    format!(
                        "input '{}' of model '{}' has shape {:?} on the server, which does not hold {n} value(s) per \
                         image (the local arrays are x {:?}, t [{b}], {} {:?})",
                        spec.name,
                        self.model,
                        spec.shape,
                        x.shape(),
                        cond.name(),
                        cond.shape()
                    ),
                ));
            }
            let start = payload.len();
            match (spec.name.as_str(), cond) {
                ("x", _) => payload.extend(x.iter().flat_map(|v| v.to_le_bytes())),
                ("t", _) => payload.extend(t.iter().flat_map(|v| v.to_le_bytes())),
                (_, Condition::Classes(y)) => payload.extend(y.iter().flat_map(|v| v.to_le_bytes())),
                (_, Condition::Text(e)) => {
                    payload.extend(e.as_standard_layout().iter().flat_map(|v| v.to_le_bytes()))
                }
            }
            header_inputs.push(json!({
                "name": spec.name,
                "shape": shape,
                "datatype": spec.datatype,
                "parameters": {"binary_data_size": payload.len() - start},
            }));
        }
        let header = json!({
            "inputs": header_inputs,
            "outputs": [{"name": self.output.name, "parameters": {"binary_data": true}}],
        })
        .to_string();
        let mut body = Vec::with_capacity(header.len() + payload.len());
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(&payload);
        let url = format!("{}{}", self.base, self.model_path("/infer"));
        let mut resp = self
            .agent
            .post(&url)
            .header("Content-Type", "application/octet-stream")
            .header(HEADER_LENGTH, header.len().to_string())
            .send(&body[..])
            .map_err(|e| err(&self.base, format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let json_len = resp
            .headers()
            .get(HEADER_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| err(&self.base, format!("POST {url}: reading the response: {e}")))?;
        if status != 200 {
            return Err(err(
                &self.base,
                format!(
                    "POST {url}: HTTP {status}: {}",
                    error_text(&bytes).unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned())
                ),
            ));
        }
        let json_len = json_len.unwrap_or(bytes.len()).min(bytes.len());
        let head: Value = serde_json::from_slice(&bytes[..json_len]).map_err(|e| {
            err(
                &self.base,
                format!("POST {url}: response header is not JSON: {e}"),
            )
        })?;
        let mut offset = json_len;
        for out in head["outputs"].as_array().into_iter().flatten() {
            let size = out["parameters"]["binary_data_size"].as_u64().map(|s| s as usize);
            if out["name"] != self.output.name.as_str() {
                offset += size.unwrap_or(0);
                continue;
            }
            let shape: Vec<usize> = out["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_u64).map(|d| d as usize).collect())
                .unwrap_or_default();
            if shape.len() != 4 || shape[0] != b || shape[1..] != x.shape()[1..] {
                return Err(err(
                    &self.base,
                    format!(
                        "output '{}' has shape {shape:?}, expected {:?}",
                        self.output.name,
                        x.shape()
                    ),
                ));
            }
            if out["datatype"] != "FP32" {
                return Err(err(
                    &self.base,
                    format!(
                        "output '{}' is {}, expected FP32",
                        self.output.name, out["datatype"]
                    ),
                ));
            }
            let n: usize = shape.iter().product();
            let data: Vec<f32> = match size {
                Some(s) => {
                    let raw = bytes
                        .get(offset..offset + s)
                        .filter(|r| r.len() == n * 4)
                        .ok_or_else(|| {
                            err(
                                &self.base,
                                format!("output '{}': {s} binary bytes for {n} values", self.output.name),
                            )
                        })?;
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                None => out["data"]
                    .as_array()
                    .map(|d| d.iter().filter_map(Value::as_f64).map(|v| v as f32).collect())
                    .filter(|d: &Vec<f32>| d.len() == n)
                    .ok_or_else(|| err(&self.base, format!("output '{}' has no data", self.output.name)))?,
            };
            return Array4::from_shape_vec((shape[0], shape[1], shape[2], shape[3]), data)
                .map_err(|e| RuntimeError::Shape(e.to_string()));
        }
        Err(err(
            &self.base,
            format!("POST {url}: the response has no output '{}'", self.output.name),
        ))
    }

    fn model_path(&self, suffix: &str) -> String {
        match &self.version {
            Some(v) => format!("/v2/models/{}/versions/{v}{suffix}", self.model),
            None => format!("/v2/models/{}{suffix}", self.model),
        }
    }

    fn get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| err(&self.base, format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| err(&self.base, format!("GET {url}: {e}")))?;
        Ok((status, body))
    }

    fn get_json(&self, path: &str) -> Result<Value> {
        let (status, body) = self.get(path)?;
        if status != 200 {
            return Err(err(
                &self.base,
                format!(
                    "GET {}{path}: HTTP {status}{}",
                    self.base,
                    error_text(&body).map(|e| format!(": {e}")).unwrap_or_default()
                ),
            ));
        }
        serde_json::from_slice(&body)
            .map_err(|e| err(&self.base, format!("GET {}{path}: not JSON: {e}", self.base)))
    }
}

/// The `error` field of a KServe error body.
fn error_text(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
}

impl TritonBackend {
    /// Requests of at most `max_batch_size` images (the server's dynamic batcher may merge them with other clients'
    /// requests again), concatenated.
    fn chunked(&self, x: ArrayView4<f32>, t: ArrayView1<f32>, cond: Condition<'_>) -> Result<Array4<f32>> {
        let b = x.shape()[0];
        let chunk = if self.max_batch_size == 0 {
            b.max(1)
        } else {
            self.max_batch_size
        };
        if b <= chunk {
            return self.request(x, t, cond);
        }
        let mut parts = Vec::new();
        for s in (0..b).step_by(chunk) {
            let e = (s + chunk).min(b);
            parts.push(self.request(
                x.slice_axis(Axis(0), (s..e).into()),
                t.slice_axis(Axis(0), (s..e).into()),
                cond.slice(s, e),
            )?);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(0), &views).map_err(|e| RuntimeError::Shape(e.to_string()))
    }
}

/// The conditioning input of one request.
#[derive(Clone, Copy)]
enum Condition<'a> {
    /// Class labels `y` `[B]` (class-conditional models).
    Classes(ArrayView1<'a, i64>),
    /// Text-encoder hidden states `text` `[B, L, E]` (text-to-image models).
    Text(ArrayView3<'a, f32>),
}

impl<'a> Condition<'a> {
    fn name(&self) -> &'static str {
        match self {
            Condition::Classes(_) => "y",
            Condition::Text(_) => "text",
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Condition::Classes(_) => "class-conditional",
            Condition::Text(_) => "text-to-image",
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self {
            Condition::Classes(y) => y.shape().to_vec(),
            Condition::Text(e) => e.shape().to_vec(),
        }
    }

    fn batch(&self) -> usize {
        self.shape()[0]
    }

    /// Values per image.
    fn per_item(&self) -> usize {
        self.shape()[1..].iter().product()
    }

    /// Images `start..end`.
    fn slice(&self, start: usize, end: usize) -> Condition<'a> {
        match *self {
            Condition::Classes(y) => Condition::Classes(y.slice_axis_move(Axis(0), (start..end).into())),
            Condition::Text(e) => Condition::Text(e.slice_axis_move(Axis(0), (start..end).into())),
        }
    }
}

impl Backend for TritonBackend {
    /// A Triton backend is reached by URL and model name, not a file: use [`TritonBackend::connect`].
    fn load(path: &Path, _opts: &LoadOptions) -> Result<Self> {
        Err(RuntimeError::InvalidArgument(format!(
            "the Triton backend connects to a server, not a file ({}): use TritonBackend::connect(url, model) or \
             pixeldit-run --triton URL --model NAME",
            path.display()
        )))
    }

    fn name(&self) -> &'static str {
        "triton"
    }

    fn provider(&self) -> String {
        format!("{} model {} ({})", self.base, self.model, self.server_version)
    }

    /// Splits the batch into requests of at most `max_batch_size` images (the server's dynamic batcher may merge
    /// them with other clients' requests again).
    fn run(&mut self, x: ArrayView4<f32>, t: ArrayView1<f32>, y: ArrayView1<i64>) -> Result<Array4<f32>> {
        self.chunked(x, t, Condition::Classes(y))
    }

    /// Text-to-image forward passes, split like [`Backend::run`].
    fn run_text(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        text: ArrayView3<f32>,
    ) -> Result<Array4<f32>> {
        self.chunked(x, t, Condition::Text(text))
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "remote forward passes, max_batch_size {}{}",
            self.max_batch_size,
            if self.metadata.is_some() {
                ", metadata from the server's model configuration"
            } else {
                ""
            }
        )]
    }
}
