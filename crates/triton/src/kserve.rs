//! The KServe v2 wire format (Open Inference Protocol over HTTP) as Triton speaks it, with Triton's binary tensor
//! data extension: typed request and response bodies for [`crate::client`].
//!
//! An inference request or response body is a JSON header followed by the raw little-endian tensors it announces
//! (`parameters.binary_data_size`), in the order of the header's tensors; the header's length travels in the HTTP
//! header [`HEADER_LENGTH`]. Fields this client does not read are ignored when parsing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// HTTP header of the binary tensor extension giving the JSON header's length.
pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";

/// `GET /v2`: the server's metadata.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ServerMetadata {
    /// Server name (`triton`).
    pub name: String,
    /// Server version.
    pub version: String,
    /// Protocol extensions; `None` when the server does not list them.
    pub extensions: Option<Vec<String>>,
}

/// One model tensor as the server declares it (`GET /v2/models/NAME`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RemoteTensor {
    /// Name.
    pub name: String,
    /// KServe datatype (`FP32`, `INT64`, ...).
    pub datatype: String,
    /// Shape; `-1` for the batch axis (first) and other variable dims.
    pub shape: Vec<i64>,
}

/// `GET /v2/models/NAME`: the model's tensors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelMetadata {
    /// Inputs.
    pub inputs: Vec<RemoteTensor>,
    /// Outputs.
    pub outputs: Vec<RemoteTensor>,
}

/// One `parameters` entry of a Triton model configuration as JSON (`{"string_value": ...}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConfigParameter {
    /// The value.
    pub string_value: String,
}

/// `GET /v2/models/NAME/config`: the parts of Triton's model configuration (as JSON) the client reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ModelConfigJson {
    /// `max_batch_size` (0: no batching axis).
    pub max_batch_size: u64,
    /// The configuration's `parameters`.
    pub parameters: BTreeMap<String, ConfigParameter>,
}

/// The body of an error response (`{"error": "..."}`).
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    /// The server's message.
    pub error: String,
}

/// The `error` text of an error response body, if it is one.
pub fn error_text(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error)
}

/// Values of a request tensor given in the JSON header (instead of as binary data).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum JsonData {
    /// `UINT64` values.
    U64(Vec<u64>),
    /// `INT64` / `INT32` values.
    I64(Vec<i64>),
    /// `BYTES` values (UTF-8 strings).
    Bytes(Vec<String>),
}

/// `parameters` of a request tensor sent as binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BinaryInput {
    /// Its byte count in the body after the header.
    pub binary_data_size: usize,
}

/// One input of an inference request header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferInput {
    /// Name.
    pub name: String,
    /// Shape as sent.
    pub shape: Vec<i64>,
    /// KServe datatype.
    pub datatype: String,
    /// Set when the values follow the header as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryInput>,
    /// The values, when given in the header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonData>,
}

impl InferInput {
    /// An input whose `bytes` (little-endian) follow the header.
    pub fn binary(name: &str, datatype: &str, shape: Vec<i64>, bytes: usize) -> Self {
        InferInput {
            name: name.to_string(),
            shape,
            datatype: datatype.to_string(),
            parameters: Some(BinaryInput {
                binary_data_size: bytes,
            }),
            data: None,
        }
    }

    /// An input with its values in the header.
    pub fn json(name: &str, datatype: &str, shape: Vec<i64>, data: JsonData) -> Self {
        InferInput {
            name: name.to_string(),
            shape,
            datatype: datatype.to_string(),
            parameters: None,
            data: Some(data),
        }
    }
}

/// `parameters` of a requested output: ask for binary data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BinaryOutput {
    /// Always `true` here.
    pub binary_data: bool,
}

/// One requested output of an inference request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestedOutput {
    /// Name.
    pub name: String,
    /// `{"binary_data": true}`.
    pub parameters: BinaryOutput,
}

impl RequestedOutput {
    /// Output `name`, as binary data.
    pub fn binary(name: &str) -> Self {
        RequestedOutput {
            name: name.to_string(),
            parameters: BinaryOutput { binary_data: true },
        }
    }
}

/// The JSON header of `POST /v2/models/NAME/infer`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferRequest {
    /// Inputs, binary ones in the order of their data after the header.
    pub inputs: Vec<InferInput>,
    /// Requested outputs.
    pub outputs: Vec<RequestedOutput>,
}

impl InferRequest {
    /// The header as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }
}

/// `parameters` of a response output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OutputParameters {
    /// Byte count of its binary data after the header; `None`: the values are in `data`.
    pub binary_data_size: Option<usize>,
}

/// One output of an inference response header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct InferOutput {
    /// Name.
    pub name: String,
    /// KServe datatype.
    pub datatype: String,
    /// Shape.
    pub shape: Vec<u64>,
    /// Binary data size, when the values follow the header.
    pub parameters: OutputParameters,
    /// The values, when given in the header (numeric outputs).
    pub data: Option<Vec<f64>>,
}

/// The JSON header of an inference response.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct InferResponse {
    /// Outputs, binary ones in the order of their data after the header.
    pub outputs: Vec<InferOutput>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_matches_the_protocol() {
        let req = InferRequest {
            inputs: vec![
                InferInput::binary("x", "FP32", vec![2, 3], 24),
                InferInput::json("seed", "UINT64", vec![1], JsonData::U64(vec![7])),
            ],
            outputs: vec![RequestedOutput::binary("v")],
        };
        assert_eq!(
            req.to_json(),
            r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}},{"name":"seed","shape":[1],"datatype":"UINT64","data":[7]}],"outputs":[{"name":"v","parameters":{"binary_data":true}}]}"#
        );
    }

    #[test]
    fn response_header_parses_with_unknown_fields() {
        let r: InferResponse = serde_json::from_str(
            r#"{"model_name":"m","model_version":"1","outputs":[{"name":"v","datatype":"FP32","shape":[1,2],
                "parameters":{"binary_data_size":8,"other":1}},{"name":"w","datatype":"FP32","shape":[1],"data":[0.5]}]}"#,
        )
        .unwrap();
        assert_eq!(r.outputs[0].parameters.binary_data_size, Some(8));
        assert_eq!(r.outputs[1].data.as_deref(), Some(&[0.5][..]));
        assert_eq!(error_text(br#"{"error":"no"}"#).as_deref(), Some("no"));
        assert_eq!(error_text(b"<html>"), None);
    }
}
