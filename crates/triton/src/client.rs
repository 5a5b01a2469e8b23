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
use crate::kserve::{
    error_text, InferInput, InferOutput, InferRequest, InferResponse, JsonData, ModelConfigJson,
    RequestedOutput, ServerMetadata,
};
pub use crate::kserve::{RemoteTensor, HEADER_LENGTH};
use ndarray::{concatenate, ArrayD, Axis, IxDyn, Slice};
use pixeldit_runtime::backend::Backend;
use pixeldit_runtime::tensor::{Feed, TensorRef};
use pixeldit_runtime::RuntimeError;
use pixeldit_spec::{ModelMetadata, META_FORMAT_VERSION, META_KEY};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

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

/// A failed request as the runtime's error, keeping the [`TritonError`] as its source.
fn runtime_err(e: TritonError) -> RuntimeError {
    match e {
        TritonError::Runtime(e) => e,
        e => RuntimeError::Backend {
            backend: "triton",
            source: Box::new(e),
        },
    }
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
    /// Patch-level step cache: the whole model at one forward in N (sent as INT32; values past `i32::MAX`, which
    /// no sampler reaches in forwards, are sent as `i32::MAX`).
    pub patch_cache: Option<usize>,
    /// Adaptive patch-level step cache threshold (sent as FP32).
    pub patch_cache_threshold: Option<f64>,
    /// With a patch cache: `extrapolate` or `hold`.
    pub patch_cache_reuse: Option<String>,
    /// With `patch_cache`: `front` or `uniform`.
    pub patch_cache_schedule: Option<String>,
    /// Image height (a dynamic-size model's pipeline only).
    pub height: Option<usize>,
    /// Image width (a dynamic-size model's pipeline only).
    pub width: Option<usize>,
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
        let server: ServerMetadata = m.get_json("/v2")?;
        m.server_version = format!(
            "{} {}",
            if server.name.is_empty() {
                "server"
            } else {
                &server.name
            },
            if server.version.is_empty() {
                "?"
            } else {
                &server.version
            }
        );
        let has_binary = server
            .extensions
            .is_none_or(|e| e.iter().any(|x| x == "binary_tensor_data"));
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
        let meta: crate::kserve::ModelMetadata = m.get_json(&m.model_path(""))?;
        m.inputs = meta.inputs;
        m.outputs = meta.outputs;
        let config: ModelConfigJson = m.get_json(&m.model_path("/config"))?;
        m.max_batch_size = config.max_batch_size as usize;
        m.metadata = match config.parameters.get(META_KEY).map(|p| p.string_value.as_str()) {
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

    /// `GET /v2/models/NAME[/versions/V]/stats` (Triton's statistics extension), as JSON (free-form: read by
    /// benchmarks and tests).
    pub fn statistics(&self) -> Result<Value> {
        self.get_json(&self.model_path("/stats"))
    }

    /// One inference request (batch at most `max_batch_size` when that is > 0).
    pub fn infer(&self, feeds: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        let (header, payload) = self.encode_inputs(feeds, outputs)?;
        let (head, bytes, json_len, url) = self.post_infer(&header, &payload)?;
        self.decode_outputs(&head, &bytes[json_len..], outputs, &url)
    }

    /// The request header and binary payload for `feeds` (checked against the server's inputs: names, batch,
    /// datatypes, values per item), asking for `outputs` as binary data. Shapes follow the server's declaration
    /// (see the module docs).
    fn encode_inputs(&self, feeds: &[Feed<'_, '_>], outputs: &[&str]) -> Result<(InferRequest, Vec<u8>)> {
        let b = feeds
            .first()
            .map_or(0, |(_, t)| t.shape().first().copied().unwrap_or(0));
        let mut inputs = Vec::new();
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
            // A variable dim (`-1`: the height and width of a dynamic-size model) takes the local size when the ranks
            // agree; otherwise it is the `[B]` -> `[B, 1]` case above.
            let same_rank = spec.shape.len() == t.shape().len();
            shape.extend(
                spec.shape
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(|(i, &d)| match (d < 0, same_rank) {
                        (true, true) => t.shape()[i] as i64,
                        (true, false) => 1,
                        (false, _) => d,
                    }),
            );
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
            inputs.push(InferInput::binary(&spec.name, &spec.datatype, shape, bytes.len()));
            payload.extend(bytes);
        }
        let header = InferRequest {
            inputs,
            outputs: outputs.iter().map(|n| RequestedOutput::binary(n)).collect(),
        };
        Ok((header, payload))
    }

    /// The requested `outputs` (FP32) of a response: binary data from `data` (the body after the header, in the
    /// order of the header's outputs) or values in the header.
    fn decode_outputs(
        &self,
        head: &InferResponse,
        data: &[u8],
        outputs: &[&str],
        url: &str,
    ) -> Result<Vec<ArrayD<f32>>> {
        let mut offset = 0;
        let mut found: Vec<(&str, ArrayD<f32>)> = Vec::new();
        for out in &head.outputs {
            let name = out.name.as_str();
            let shape: Vec<usize> = out.shape.iter().map(|&d| d as usize).collect();
            let n: usize = shape.iter().product();
            if out.datatype != "FP32" {
                return Err(err(
                    &self.base,
                    format!("output '{name}' is \"{}\", expected FP32", out.datatype),
                ));
            }
            let values: Vec<f32> = match out.parameters.binary_data_size {
                Some(s) => {
                    let raw = binary_slice(data, &mut offset, s)
                        .filter(|r| r.len() == n * 4)
                        .ok_or_else(|| {
                            err(
                                &self.base,
                                format!("output '{name}': {s} binary bytes for {n} values"),
                            )
                        })?;
                    le_f32s(raw)
                }
                None => out
                    .data
                    .as_ref()
                    .map(|d| d.iter().map(|&v| v as f32).collect())
                    .filter(|d: &Vec<f32>| d.len() == n)
                    .ok_or_else(|| err(&self.base, format!("output '{name}' has no data")))?,
            };
            let arr = ArrayD::from_shape_vec(IxDyn(&shape), values)
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
    fn post_infer(
        &self,
        header: &InferRequest,
        payload: &[u8],
    ) -> Result<(InferResponse, Vec<u8>, usize, String)> {
        let header = header.to_json();
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
        let head: InferResponse = serde_json::from_slice(&bytes[..json_len]).map_err(|e| {
            err(
                &self.base,
                format!("POST {url}: response header is not a KServe v2 inference response: {e}"),
            )
        })?;
        Ok((head, bytes, json_len, url))
    }

    /// One image from a pipeline model (`NAME_pipeline`, see [`crate::pipeline`]): `image` u8 `[3, H, W]` and the
    /// final sample `x` `[C, H, W]`. The FP32 inputs go as binary data, so any f32 (NaN included) reaches the
    /// server as it is.
    pub fn generate(&self, r: &PipelineRequest) -> Result<(Vec<u8>, ArrayD<f32>)> {
        let one = || vec![1];
        let mut inputs = vec![
            InferInput::json("seed", "UINT64", one(), JsonData::U64(vec![r.seed])),
            InferInput::json("index", "UINT64", one(), JsonData::U64(vec![r.index])),
        ];
        let mut payload = Vec::new();
        let mut fp32 = |name: &str, values: &[f32]| {
            inputs.push(InferInput::binary(
                name,
                "FP32",
                vec![values.len() as i64],
                4 * values.len(),
            ));
            payload.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        };
        if let Some(v) = r.cfg {
            fp32("cfg", &[v]);
        }
        if let Some((lo, hi)) = r.interval {
            fp32("interval", &[lo as f32, hi as f32]);
        }
        if let Some(v) = r.shift {
            fp32("shift", &[v as f32]);
        }
        if let Some(v) = r.patch_cache_threshold {
            fp32("patch_cache_threshold", &[v as f32]);
        }
        let text = |v: &str| JsonData::Bytes(vec![v.to_string()]);
        if let Some(v) = r.class {
            inputs.push(InferInput::json("class", "INT64", one(), JsonData::I64(vec![v])));
        }
        if let Some(v) = &r.prompt {
            inputs.push(InferInput::json("prompt", "BYTES", one(), text(v)));
        }
        if let Some(v) = &r.negative_prompt {
            inputs.push(InferInput::json("negative_prompt", "BYTES", one(), text(v)));
        }
        for (name, v) in [("height", r.height), ("width", r.width)] {
            if let Some(v) = v {
                inputs.push(InferInput::json(
                    name,
                    "INT32",
                    one(),
                    JsonData::I64(vec![v as i64]),
                ));
            }
        }
        if let Some(v) = r.steps {
            inputs.push(InferInput::json(
                "steps",
                "INT32",
                one(),
                JsonData::I64(vec![v as i64]),
            ));
        }
        if let Some(v) = &r.sampler {
            inputs.push(InferInput::json("sampler", "BYTES", one(), text(v)));
        }
        if let Some(n) = r.patch_cache {
            let n = i64::from(i32::try_from(n).unwrap_or(i32::MAX));
            inputs.push(InferInput::json(
                "patch_cache",
                "INT32",
                one(),
                JsonData::I64(vec![n]),
            ));
        }
        if let Some(v) = &r.patch_cache_reuse {
            inputs.push(InferInput::json("patch_cache_reuse", "BYTES", one(), text(v)));
        }
        if let Some(v) = &r.patch_cache_schedule {
            inputs.push(InferInput::json("patch_cache_schedule", "BYTES", one(), text(v)));
        }
        let header = InferRequest {
            inputs,
            outputs: vec![RequestedOutput::binary("image"), RequestedOutput::binary("x")],
        };
        let (head, bytes, json_len, url) = self.post_infer(&header, &payload)?;
        let data = &bytes[json_len..];
        let mut offset = 0;
        let (mut image, mut x) = (None, None);
        for out in &head.outputs {
            let size = out.parameters.binary_data_size.unwrap_or(0);
            let raw = binary_slice(data, &mut offset, size).ok_or_else(|| {
                err(
                    &self.base,
                    format!("POST {url}: output '{}' is cut short", out.name),
                )
            })?;
            match out.name.as_str() {
                "image" => image = Some(raw.to_vec()),
                "x" => x = Some(pipeline_x(out, raw).map_err(|e| err(&self.base, e))?),
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

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
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
        serde_json::from_slice(&body).map_err(|e| {
            err(
                &self.base,
                format!("GET {}{path}: unexpected response: {e}", self.base),
            )
        })
    }
}

/// The next `size` bytes of `data` at `*offset` (advanced past them); `None` when the body is cut short.
fn binary_slice<'a>(data: &'a [u8], offset: &mut usize, size: usize) -> Option<&'a [u8]> {
    let raw = data.get(*offset..offset.checked_add(size)?)?;
    *offset += size;
    Some(raw)
}

/// Little-endian f32 values.
fn le_f32s(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A pipeline's `x` output from its binary data.
fn pipeline_x(out: &InferOutput, raw: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    let shape: Vec<usize> = out.shape.iter().map(|&d| d as usize).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), le_f32s(raw)).map_err(|e| format!("output 'x': {e}"))
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
