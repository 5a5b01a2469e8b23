//! OpenVINO backend (CPU): the `openvino` crate over OpenVINO's C API, linked at run time. The library comes from
//! the PyPI `openvino` wheel, copied to `.cache/openvino/` by `scripts/setup.sh` (like ONNX Runtime's).
//!
//! OpenVINO compiles a model for static shapes fastest (its documentation's advice), so the model is reshaped to
//! the shapes of each new set of inputs and compiled once per set (batch size, image size); later runs with the
//! same shapes reuse the compiled model. Inference precision is pinned to f32 (`INFERENCE_PRECISION_HINT`):
//! OpenVINO's CPU default on AVX512-BF16/AMX machines is bf16 for every op, which costs the fp32 variant its
//! accuracy (2.5e-2 relative L2 on B@256 measured here); quantized Q/DQ graphs keep their int8 matmuls under f32.
//! Custom ops do not exist here: export with `--attention decomposed` (or `onnx23`).

use super::Backend;
use crate::error::{Result, RuntimeError};
use crate::model::ModelInfo;
use crate::tensor::{Feed, TensorRef};
use ndarray::ArrayD;
use openvino::{
    CompiledModel, Core, DeviceType, ElementType, InferRequest, Model, PartialShape, RwPropertyKey, Shape,
    Tensor,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The C API library's file name prefix in the wheel (`libopenvino_c.so.2640` for 2026.4).
pub const LIBRARY_PREFIX: &str = "libopenvino_c.so";
/// Where `scripts/setup.sh` copies the wheel's libraries, relative to a checkout.
pub const LIBRARY_DIR: &str = ".cache/openvino";
/// The environment variable naming the library file (like `ORT_DYLIB_PATH` for ONNX Runtime).
pub const LIBRARY_ENV: &str = "PIXELDIT_OPENVINO_LIB";

fn ov_err(what: impl Into<String>) -> impl FnOnce(openvino::InferenceError) -> RuntimeError {
    let what = what.into();
    move |e| RuntimeError::OpenVino {
        what,
        source: Box::new(e),
    }
}

/// The `libopenvino_c.so*` file in `dir`, if any (the versioned name sorts last, so the newest wins).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(LIBRARY_PREFIX))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Finds the OpenVINO C library: `explicit` (`--openvino-lib`), then `$PIXELDIT_OPENVINO_LIB`, then
/// `.cache/openvino/libopenvino_c.so*` under the current directory and each of `search_dirs`.
pub fn locate_library(explicit: Option<&Path>, search_dirs: &[PathBuf]) -> Result<PathBuf> {
    let named = |p: PathBuf, how: &str| {
        if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::OpenVinoLibraryNotFound {
                tried: format!("{how} {} does not exist", p.display()),
            })
        }
    };
    if let Some(p) = explicit {
        return named(p.to_path_buf(), "--openvino-lib");
    }
    if let Some(p) = std::env::var_os(LIBRARY_ENV).filter(|p| !p.is_empty()) {
        return named(PathBuf::from(p), &format!("{LIBRARY_ENV}="));
    }
    let mut tried = Vec::new();
    for base in std::env::current_dir()
        .ok()
        .into_iter()
        .chain(search_dirs.iter().cloned())
    {
        let dir = base.join(LIBRARY_DIR);
        if let Some(p) = library_in(&dir) {
            return Ok(p.canonicalize().unwrap_or(p));
        }
        tried.push(format!("{}/{LIBRARY_PREFIX}*", dir.display()));
    }
    Err(RuntimeError::OpenVinoLibraryNotFound {
        tried: format!(
            "no --openvino-lib, {LIBRARY_ENV} unset, nothing at {}",
            tried.join(" or ")
        ),
    })
}

/// The library loaded by this process (OpenVINO's C API can be loaded once).
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Loads the library found by [`locate_library`] once per process and returns its path.
pub fn load_library(explicit: Option<&Path>, search_dirs: &[PathBuf]) -> Result<PathBuf> {
    let mut guard = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref() {
        return Ok(p.clone());
    }
    let path = locate_library(explicit, search_dirs)?;
    openvino_sys::library::load_from(&path).map_err(|reason| RuntimeError::OpenVinoLoad {
        path: path.clone(),
        reason,
    })?;
    *guard = Some(path.clone());
    Ok(path)
}

/// Options of [`OpenVinoBackend::open`].
#[derive(Debug, Clone, Default)]
pub struct OpenVinoOptions {
    /// The library (`--openvino-lib`); default: [`locate_library`].
    pub library: Option<PathBuf>,
    /// More directories to look for `.cache/openvino/` in.
    pub search_dirs: Vec<PathBuf>,
    /// `INFERENCE_NUM_THREADS` (default: OpenVINO's, one per core).
    pub threads: Option<usize>,
}

/// One compiled shape set.
struct Compiled {
    _model: CompiledModel,
    request: InferRequest,
}

/// A model on OpenVINO's CPU plugin, compiled per input-shape set.
pub struct OpenVinoBackend {
    core: Core,
    model: Model,
    path: PathBuf,
    inputs: Vec<String>,
    outputs: Vec<String>,
    compiled: HashMap<Vec<Vec<usize>>, Compiled>,
    version: String,
}

impl OpenVinoBackend {
    /// Reads `path` (ONNX, external data beside it) into OpenVINO. Custom-op nodes are refused before OpenVINO
    /// sees the model, naming the first one.
    pub fn open(path: &Path, opts: &OpenVinoOptions) -> Result<Self> {
        let info = ModelInfo::read(path)?;
        if let Some(n) = info.custom_nodes().next() {
            return Err(RuntimeError::OpenVinoCustomOp {
                op: n.op_type.clone(),
                domain: n.domain.clone(),
                node: n.name.clone(),
            });
        }
        // Measured on the digits golden set: OpenVINO runs the fp8 variant's float8 activation Q/DQ wrongly (PSNR
        // 14 dB against the reference images, where ORT and tract reach 31-32 dB); fp8-weights runs right.
        if info
            .pixeldit_metadata()
            .is_ok_and(|m| m.precision == pixeldit_spec::Precision::Fp8)
        {
            return Err(RuntimeError::OpenVinoUnsupported {
                path: path.to_path_buf(),
                reason: "OpenVINO 2026.4 computes the fp8 variant's float8 activation quantization wrongly \
                         (digits: 14 dB PSNR against the reference); run it on --backend ort or tract, or use \
                         fp8-weights, int8 or bf16 on OpenVINO"
                    .into(),
            });
        }
        let library = load_library(opts.library.as_deref(), &opts.search_dirs)?;
        let mut core = Core::new().map_err(|e| RuntimeError::OpenVinoLoad {
            path: library,
            reason: e.to_string(),
        })?;
        let cpu = DeviceType::CPU;
        let mut props: Vec<(RwPropertyKey, String)> = vec![
            (RwPropertyKey::HintInferencePrecision, "f32".into()),
            (RwPropertyKey::HintPerformanceMode, "LATENCY".into()),
            (RwPropertyKey::NumStreams, "1".into()),
        ];
        if let Some(t) = opts.threads {
            props.push((RwPropertyKey::InferenceNumThreads, t.to_string()));
        }
        for (k, v) in &props {
            core.set_property(&cpu, k, v)
                .map_err(ov_err(format!("setting {k:?}={v} on the CPU plugin")))?;
        }
        let file = path
            .to_str()
            .ok_or_else(|| RuntimeError::InvalidArgument(format!("{}: not a UTF-8 path", path.display())))?;
        let model = core
            .read_model_from_file(file, "")
            .map_err(ov_err(format!("reading {}", path.display())))?;
        let names = |n: usize, get: &dyn Fn(usize) -> std::result::Result<openvino::Node, openvino::InferenceError>| {
            (0..n)
                .map(|i| {
                    get(i)
                        .and_then(|node| node.get_name())
                        .map_err(ov_err(format!("port {i} of {}", path.display())))
                })
                .collect::<Result<Vec<String>>>()
        };
        let n_in = model.get_inputs_len().map_err(ov_err("input count"))?;
        let n_out = model.get_outputs_len().map_err(ov_err("output count"))?;
        let inputs = names(n_in, &|i| model.get_input_by_index(i))?;
        let outputs = names(n_out, &|i| model.get_output_by_index(i))?;
        let version = openvino::version().build_number;
        Ok(Self {
            core,
            model,
            path: path.to_path_buf(),
            inputs,
            outputs,
            compiled: HashMap::new(),
            version,
        })
    }

    /// The OpenVINO build, e.g. `2026.4.0-...`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The compiled model for these input shapes (in graph-input order), compiling it on first use.
    fn request(&mut self, shapes: Vec<Vec<usize>>) -> Result<&mut InferRequest> {
        if !self.compiled.contains_key(&shapes) {
            let static_shapes = shapes
                .iter()
                .map(|s| {
                    let dims: Vec<i64> = s.iter().map(|&d| d as i64).collect();
                    PartialShape::new_static(dims.len() as i64, &dims)
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(ov_err("building static shapes"))?;
            let by_name: Vec<(&str, &PartialShape)> = self
                .inputs
                .iter()
                .map(String::as_str)
                .zip(static_shapes.iter())
                .collect();
            self.model.reshape(&by_name).map_err(ov_err(format!(
                "reshaping {} to {shapes:?} (inputs {})",
                self.path.display(),
                self.inputs.join(", ")
            )))?;
            let mut compiled = self
                .core
                .compile_model(&self.model, DeviceType::CPU)
                .map_err(ov_err(format!(
                    "compiling {} for {shapes:?}",
                    self.path.display()
                )))?;
            let request = compiled
                .create_infer_request()
                .map_err(ov_err("creating an infer request"))?;
            self.compiled.insert(
                shapes.clone(),
                Compiled {
                    _model: compiled,
                    request,
                },
            );
        }
        Ok(&mut self.compiled.get_mut(&shapes).expect("inserted above").request)
    }
}

fn to_tensor(name: &str, t: &TensorRef<'_>) -> Result<Tensor> {
    match t {
        TensorRef::F32(a) => filled_tensor(name, ElementType::F32, a),
        TensorRef::I64(a) => filled_tensor(name, ElementType::I64, a),
    }
}

/// A new OpenVINO tensor of `element_type` (which must be `T`'s) holding `a` in row-major order.
fn filled_tensor<T: Copy>(
    name: &str,
    element_type: ElementType,
    a: &ndarray::ArrayViewD<'_, T>,
) -> Result<Tensor> {
    let dims: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let shape = Shape::new(&dims).map_err(ov_err(format!("shape of input '{name}'")))?;
    let mut tensor = Tensor::new(element_type, &shape).map_err(ov_err(format!("input '{name}'")))?;
    let data = tensor
        .get_data_mut::<T>()
        .map_err(ov_err(format!("input '{name}' data")))?;
    for (d, v) in data.iter_mut().zip(a.iter()) {
        *d = *v;
    }
    Ok(tensor)
}

impl Backend for OpenVinoBackend {
    fn name(&self) -> &'static str {
        "openvino"
    }

    fn provider(&self) -> String {
        "CPU".into()
    }

    fn notes(&self) -> Vec<String> {
        vec![format!(
            "OpenVINO {}: CPU plugin, f32 inference precision, compiled per input shape",
            self.version
        )]
    }

    fn run(&mut self, inputs: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        super::check_feeds(&self.inputs, inputs)?;
        for o in outputs {
            if !self.outputs.iter().any(|n| n == o) {
                return Err(RuntimeError::Shape(format!(
                    "the model has no output named '{o}' (outputs: {})",
                    self.outputs.join(", ")
                )));
            }
        }
        // Graph-input order, so that the compiled-model key does not depend on the caller's order.
        let ordered: Vec<&Feed> = self
            .inputs
            .iter()
            .map(|n| {
                inputs
                    .iter()
                    .find(|(f, _)| f == n)
                    .expect("checked by check_feeds")
            })
            .collect();
        let shapes: Vec<Vec<usize>> = ordered.iter().map(|(_, t)| t.shape().to_vec()).collect();
        let tensors = ordered
            .iter()
            .map(|(n, t)| to_tensor(n, t))
            .collect::<Result<Vec<_>>>()?;
        let request = self.request(shapes)?;
        for ((name, _), tensor) in ordered.iter().zip(&tensors) {
            request
                .set_tensor(name, tensor)
                .map_err(ov_err(format!("setting input '{name}'")))?;
        }
        request.infer().map_err(ov_err("inference"))?;
        outputs
            .iter()
            .map(|name| {
                let t = request
                    .get_tensor(name)
                    .map_err(ov_err(format!("output '{name}'")))?;
                let shape: Vec<usize> = t
                    .get_shape()
                    .map_err(ov_err(format!("shape of output '{name}'")))?
                    .get_dimensions()
                    .iter()
                    .map(|&d| d as usize)
                    .collect();
                let ty = t
                    .get_element_type()
                    .map_err(ov_err(format!("type of output '{name}'")))?;
                if ty != ElementType::F32 {
                    return Err(RuntimeError::Shape(format!(
                        "output '{name}' is {ty:?}, expected f32"
                    )));
                }
                let data = t
                    .get_data::<f32>()
                    .map_err(ov_err(format!("data of output '{name}'")))?
                    .to_vec();
                ArrayD::from_shape_vec(shape, data).map_err(|source| RuntimeError::ArrayShape {
                    what: format!("output '{name}'"),
                    source,
                })
            })
            .collect()
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.clone()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }
}
