//! A model on a Triton Inference Server behind the runtime's [`Backend`] trait (KServe v2 / Open Inference Protocol
//! over HTTP, with Triton's binary tensor data extension), so the same samplers run locally or through Triton
//! (`pixeldit-run --triton http://HOST:8000 --model NAME`).
//!
//! * [`TritonModel::connect`] checks the server (`GET /v2`) and the model (`GET /v2/models/NAME/ready`, `GET
//!   /v2/models/NAME` for the tensor names, datatypes and shapes), and reads `max_batch_size` and the PixelDiT
//!   metadata from the model configuration (`GET /v2/models/NAME/config`, parameter [`META_KEY`] written by
//!   `pixeldit-export --triton-repo`), so a client needs nothing but the server.
//! * Each [`Backend::run`] is one `POST /v2/models/NAME/infer` per chunk of at most `max_batch_size` items: a JSON
//!   header (length in the `Inference-Header-Content-Length` header) followed by the raw little-endian tensors;
//!   outputs come back the same way. Shapes follow the server's model metadata: with `max_batch_size > 0` Triton
//!   reports a batch-only tensor as `[-1, 1]` (config dims `[1]`, reshape `[]`), so `[B]` is sent as `[B, 1]`.
//! * Plain `http://` only (no TLS in this build); every request has a timeout ([`ClientOptions::timeout`]).

use crate::error::{Result, TritonError};
use ndarray::{concatenate, ArrayD, Axis, IxDyn, Slice};
use pixeldit_runtime::backend::Backend;
use pixeldit_runtime::tensor::{Feed, TensorRef};
use pixeldit_runtime::RuntimeError;
use pixeldit_spec::{ModelMetadata, META_FORMAT_VERSION, META_KEY};
use serde_json::{json, Value};
use std::time::Duration;

/// Header of the binary tensor extension giving the JSON header's length.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// Connection options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Model version (`None`: the server's policy, usually the latest).
    pub version: Option<String>,
    /// Timeout of each HTTP request (connect, send and receive).
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            version: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// One model tensor as the server declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTensor {
    /// Name.
    pub name: String,
    /// KServe datatype (`FP32`, `INT64`, ...).
    pub datatype: String,
    /// Shape; `-1` for the batch axis (first) and other variable dims.
    pub shape: Vec<i64>,
}

/// A model served by Triton.
pub struct TritonModel {
    agent: ureq::Agent,
    base: String,
    model: String,
    version: Option<String>,
    server_version: String,
    max_batch_size: usize,
    inputs: Vec<RemoteTensor>,
    outputs: Vec<RemoteTensor>,
    metadata: std::result::Result<ModelMetadata, String>,
}

fn err(url: &str, message: impl Into<String>) -> TritonError {
    TritonError::Server {
        url: url.to_string(),
        message: message.into(),
    }
}

fn runtime_err(e: TritonError) -> RuntimeError {
    match e {
        TritonError::Server { url, message } => RuntimeError::Triton { url, message },
        e => RuntimeError::InvalidArgument(e.to_string()),
    }
}

/// The `error` field of a KServe error body.
fn error_text(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
}

fn tensors(meta: &Value, key: &str) -> Vec<RemoteTensor> {
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
}

/// One request to a pipeline model: class, seed, the image's position in the seed's noise stream, and the
/// sampler settings that override the model's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PipelineRequest {
    /// Class label (class-conditional models).
    pub class: Option<i64>,
    /// The prompt (text-to-image models).
    pub prompt: Option<String>,
    /// The negative prompt (text-to-image models).
    pub negative_prompt: Option<String>,
    /// Noise seed.
    pub seed: u64,
    /// Position in the seed's noise stream.
    pub index: u64,
    /// Sampler steps.
    pub steps: Option<usize>,
    /// CFG weight.
    pub cfg: Option<f32>,
    /// `flow_dpm`, `euler` or `heun`.
    pub sampler: Option<String>,
    /// Guidance interval.
    pub interval: Option<(f64, f64)>,
    /// Time shift.
    pub shift: Option<f64>,
}

impl TritonModel {
    /// Connects to `url` (`http://host:port`) and checks that `model` is ready; reads its tensors, batch limit and
    /// PixelDiT metadata.
    pub fn connect(url: &str, model: &str, opts: &ClientOptions) -> Result<Self> {
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
        let mut m = TritonModel {
            agent,
            base,
            model: model.to_string(),
            version: opts.version.clone(),
            server_version: String::new(),
            max_batch_size: 0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            metadata: Err(String::new()),
        };
        let server = m.get_json("/v2")?;
        m.server_version = format!(
            "{} {}",
            server["name"].as_str().unwrap_or("server"),
            server["version"].as_str().unwrap_or("?")
        );
        let has_binary = server["extensions"]
            .as_array()
            .is_none_or(|e| e.iter().any(|x| x.as_str() == Some("binary_tensor_data")));
        if !has_binary {
            return Err(err(
                &m.base,
                "the server does not support the binary_tensor_data extension",
            ));
        }
        let ready = m.model_path("/ready");
        let (status, body) = m.get(&ready)?;
        if status != 200 {
            return Err(err(
                &m.base,
                format!(
                    "model '{}' is not ready (GET {ready}: HTTP {status}{})",
                    m.model,
                    error_text(&body).map(|e| format!(": {e}")).unwrap_or_default()
                ),
            ));
        }
        let meta = m.get_json(&m.model_path(""))?;
        m.inputs = tensors(&meta, "inputs");
        m.outputs = tensors(&meta, "outputs");
        let config = m.get_json(&m.model_path("/config"))?;
        m.max_batch_size = config["max_batch_size"].as_u64().unwrap_or(0) as usize;
        m.metadata = match config["parameters"][META_KEY]["string_value"].as_str() {
            Some(j) => match ModelMetadata::from_json(j) {
                Ok(md) if md.format_version == META_FORMAT_VERSION => Ok(md),
                Ok(md) => Err(format!(
                    "parameter '{META_KEY}' has format_version {} (this client reads {META_FORMAT_VERSION})",
                    md.format_version
                )),
                Err(e) => Err(format!("parameter '{META_KEY}': {e}")),
            },
            None => Err(format!(
                "the model configuration has no parameter '{META_KEY}' (not written by pixeldit-export \
                 --triton-repo?); pass the local .onnx file for the metadata"
            )),
        };
        Ok(m)
    }

    /// The PixelDiT metadata from the server's model configuration.
    pub fn metadata(&self) -> Result<&ModelMetadata> {
        self.metadata.as_ref().map_err(|e| err(&self.base, e.clone()))
    }

    /// The model's name on the server.
    pub fn name(&self) -> &str {
        &self.model
    }

    /// `max_batch_size` of the model configuration (0: no batching, any batch goes in one request).
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// The inputs as the server declares them.
    pub fn inputs(&self) -> &[RemoteTensor] {
        &self.inputs
    }

    /// `GET /v2/models/NAME[/versions/V]/stats` (Triton's statistics extension), as JSON.
    pub fn statistics(&self) -> Result<Value> {
        self.get_json(&self.model_path("/stats"))
    }

    /// One inference request (batch at most `max_batch_size` when that is > 0).
    pub fn infer(&self, feeds: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        let b = feeds
            .first()
            .map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(0));
        let mut header_inputs = Vec::new();
        let mut payload: Vec<u8> = Vec::new();
        for spec in &self.inputs {
            let (_, t) = feeds.iter().find(|(n, _)| *n == spec.name).ok_or_else(|| {
                err(
                    &self.base,
                    format!(
                        "model '{}' takes an input '{}' that the request does not have (given: {})",
                        self.model,
                        spec.name,
                        feeds.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            if t.shape().first() != Some(&b) {
                return Err(err(
                    &self.base,
                    format!("input '{}' has shape {:?}, not batch {b}", spec.name, t.shape()),
                ));
            }
            if spec.datatype != t.kserve_datatype() {
                return Err(err(
                    &self.base,
                    format!(
                        "input '{}' of model '{}' is {} on the server, the request has {}",
                        spec.name,
                        self.model,
                        spec.datatype,
                        t.kserve_datatype()
                    ),
                ));
            }
            let per_item: usize = t.shape()[1..].iter().product();
            let mut shape: Vec<i64> = vec![b as i64];
            shape.extend(spec.shape.iter().skip(1).map(|&d| if d < 0 { 1 } else { d }));
            let count: i64 = shape[1..].iter().product();
            if count as usize != per_item {
                return Err(err(
                    &self.base,
                    format!(
                        "input '{}' of model '{}' has shape {:?} on the server, which does not hold {per_item} \
                         value(s) per item (local shape {:?})",
                        spec.name,
                        self.model,
                        spec.shape,
                        t.shape()
                    ),
                ));
            }
            let bytes = t.to_le_bytes();
            header_inputs.push(json!({
                "name": spec.name,
                "shape": shape,
                "datatype": spec.datatype,
                "parameters": {"binary_data_size": bytes.len()},
            }));
            payload.extend(bytes);
        }
        let header = json!({
            "inputs": header_inputs,
            "outputs": outputs
                .iter()
                .map(|n| json!({"name": n, "parameters": {"binary_data": true}}))
                .collect::<Vec<_>>(),
        })
        .to_string();
        let (head, bytes, json_len, url) = self.post_infer(&header, &payload)?;
        // Binary outputs follow the header in the order of the header's `outputs`.
        let mut offset = json_len;
        let mut found: Vec<(String, ArrayD<f32>)> = Vec::new();
        for out in head["outputs"].as_array().into_iter().flatten() {
            let name = out["name"].as_str().unwrap_or_default().to_string();
            let size = out["parameters"]["binary_data_size"].as_u64().map(|s| s as usize);
            let shape: Vec<usize> = out["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_u64).map(|d| d as usize).collect())
                .unwrap_or_default();
            let n: usize = shape.iter().product();
            if out["datatype"] != "FP32" {
                return Err(err(
                    &self.base,
                    format!("output '{name}' is {}, expected FP32", out["datatype"]),
                ));
            }
            let data: Vec<f32> = match size {
                Some(s) => {
                    let raw = bytes
                        .get(offset..offset + s)
                        .filter(|r| r.len() == n * 4)
                        .ok_or_else(|| {
                            err(
                                &self.base,
                                format!("output '{name}': {s} binary bytes for {n} values"),
                            )
                        })?;
                    offset += s;
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                None => out["data"]
                    .as_array()
                    .map(|d| d.iter().filter_map(Value::as_f64).map(|v| v as f32).collect())
                    .filter(|d: &Vec<f32>| d.len() == n)
                    .ok_or_else(|| err(&self.base, format!("output '{name}' has no data")))?,
            };
            let arr = ArrayD::from_shape_vec(IxDyn(&shape), data)
                .map_err(|e| err(&self.base, format!("output '{name}': {e}")))?;
            found.push((name, arr));
        }
        outputs
            .iter()
            .map(|want| {
                found
                    .iter()
                    .position(|(n, _)| n == want)
                    .map(|i| found[i].1.clone())
                    .ok_or_else(|| {
                        err(
                            &self.base,
                            format!("POST {url}: the response has no output '{want}'"),
                        )
                    })
            })
            .collect()
    }

    /// POSTs one inference request (JSON header + binary payload); returns the response header, the whole body, the
    /// header's length in it and the URL.
    fn post_infer(&self, header: &str, payload: &[u8]) -> Result<(Value, Vec<u8>, usize, String)> {
        let mut body = Vec::with_capacity(header.len() + payload.len());
        body.extend_from_slice(header.as_bytes());
        body.extend_from_slice(payload);
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
        Ok((head, bytes, json_len, url))
    }

    /// One image from a pipeline model (`NAME_pipeline`, see [`crate::pipeline`]): `image` u8 `[3, H, W]` and the
    /// final sample `x` `[C, H, W]`.
    pub fn generate(&self, r: &PipelineRequest) -> Result<(Vec<u8>, ArrayD<f32>)> {
        let mut inputs = vec![
            json!({"name": "seed", "datatype": "UINT64", "shape": [1], "data": [r.seed]}),
            json!({"name": "index", "datatype": "UINT64", "shape": [1], "data": [r.index]}),
        ];
        if let Some(v) = r.class {
            inputs.push(json!({"name": "class", "datatype": "INT64", "shape": [1], "data": [v]}));
        }
        if let Some(v) = &r.prompt {
            inputs.push(json!({"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [v]}));
        }
        if let Some(v) = &r.negative_prompt {
            inputs.push(json!({"name": "negative_prompt", "datatype": "BYTES", "shape": [1], "data": [v]}));
        }
        if let Some(v) = r.steps {
            inputs.push(json!({"name": "steps", "datatype": "INT32", "shape": [1], "data": [v]}));
        }
        if let Some(v) = r.cfg {
            inputs.push(json!({"name": "cfg", "datatype": "FP32", "shape": [1], "data": [v]}));
        }
        if let Some(v) = &r.sampler {
            inputs.push(json!({"name": "sampler", "datatype": "BYTES", "shape": [1], "data": [v]}));
        }
        if let Some((lo, hi)) = r.interval {
            inputs.push(json!({"name": "interval", "datatype": "FP32", "shape": [2], "data": [lo, hi]}));
        }
        if let Some(v) = r.shift {
            inputs.push(json!({"name": "shift", "datatype": "FP32", "shape": [1], "data": [v]}));
        }
        let header = json!({
            "inputs": inputs,
            "outputs": [
                {"name": "image", "parameters": {"binary_data": true}},
                {"name": "x", "parameters": {"binary_data": true}},
            ],
        })
        .to_string();
        let (head, bytes, json_len, url) = self.post_infer(&header, &[])?;
        let mut offset = json_len;
        let (mut image, mut x) = (None, None);
        for out in head["outputs"].as_array().into_iter().flatten() {
            let name = out["name"].as_str().unwrap_or_default();
            let size = out["parameters"]["binary_data_size"].as_u64().unwrap_or(0) as usize;
            let shape: Vec<usize> = out["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_u64).map(|d| d as usize).collect())
                .unwrap_or_default();
            let raw = bytes
                .get(offset..offset + size)
                .ok_or_else(|| err(&self.base, format!("POST {url}: output '{name}' is cut short")))?;
            offset += size;
            match name {
                "image" => image = Some(raw.to_vec()),
                "x" => {
                    let v: Vec<f32> = raw
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    x = Some(
                        ArrayD::from_shape_vec(IxDyn(&shape), v)
                            .map_err(|e| err(&self.base, format!("output 'x': {e}")))?,
                    );
                }
                _ => {}
            }
        }
        match (image, x) {
            (Some(i), Some(x)) => Ok((i, x)),
            _ => Err(err(
                &self.base,
                format!("POST {url}: the response lacks 'image' or 'x'"),
            )),
        }
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

/// Items `start..end` (axis 0) of a feed.
fn slice<'a>(t: &TensorRef<'a>, start: usize, end: usize) -> TensorRef<'a> {
    let s = Slice::from(start..end);
    match t {
        TensorRef::F32(a) => TensorRef::F32(a.clone().slice_axis_move(Axis(0), s)),
        TensorRef::I64(a) => TensorRef::I64(a.clone().slice_axis_move(Axis(0), s)),
    }
}

impl Backend for TritonModel {
    fn name(&self) -> &'static str {
        "triton"
    }

    fn provider(&self) -> String {
        format!("{} model {} ({})", self.base, self.model, self.server_version)
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "remote forward passes, max_batch_size {}{}",
            self.max_batch_size,
            if self.metadata.is_ok() {
                ", metadata from the server's model configuration"
            } else {
                ""
            }
        )]
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|t| t.name.clone()).collect()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|t| t.name.clone()).collect()
    }

    /// Splits the batch into requests of at most `max_batch_size` items (the server's dynamic batcher may merge
    /// them with other clients' requests again) and concatenates the outputs.
    fn run(
        &mut self,
        inputs: &[Feed<'_, '_>],
        outputs: &[&str],
    ) -> pixeldit_runtime::Result<Vec<ArrayD<f32>>> {
        pixeldit_runtime::backend::check_feeds(&self.input_names(), inputs)?;
        let b = inputs
            .first()
            .map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(0));
        let chunk = if self.max_batch_size == 0 {
            b.max(1)
        } else {
            self.max_batch_size
        };
        if b <= chunk {
            return self.infer(inputs, outputs).map_err(runtime_err);
        }
        let mut parts: Vec<Vec<ArrayD<f32>>> = Vec::new();
        for s in (0..b).step_by(chunk) {
            let e = (s + chunk).min(b);
            let part: Vec<Feed> = inputs.iter().map(|(n, t)| (*n, slice(t, s, e))).collect();
            parts.push(self.infer(&part, outputs).map_err(runtime_err)?);
        }
        (0..outputs.len())
            .map(|i| {
                let views: Vec<_> = parts.iter().map(|p| p[i].view()).collect();
                concatenate(Axis(0), &views).map_err(|e| RuntimeError::Shape(e.to_string()))
            })
            .collect()
    }
}
