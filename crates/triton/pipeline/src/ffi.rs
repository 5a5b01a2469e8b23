//! The C ABI that `model.py` calls through `ctypes`, and the raw calls of its callbacks: every `unsafe` block of
//! the crate is here.
//!
//! Every exported function catches panics. Errors are written as NUL-terminated UTF-8 into the caller's buffer
//! (`err`, `err_len` bytes), cut on a character boundary. Output buffers come with their lengths, which are checked
//! ([`PIXELDIT_BUFFER`]). The return codes ([`RETURN_CODES`]) and [`PIXELDIT_ABI_VERSION`] are mirrored in
//! `model.py`, which checks the version at load; a test checks the mirror.

use crate::callback::{collect_output, Collected, ForwardInput, InputData, OutputSink, RunFn};
use crate::config::PipelineConfig;
use crate::pipeline::Pipeline;
use crate::request::Request;
use crate::PipelineError;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Version of this C ABI (functions, their parameters, return codes); `model.py` refuses a library with another.
/// Version 1 was the unversioned ABI without buffer lengths.
pub const PIXELDIT_ABI_VERSION: u32 = 2;

/// Success.
pub const PIXELDIT_OK: i32 = 0;
/// The request is invalid (HTTP 400); the message names the field.
pub const PIXELDIT_BAD_REQUEST: i32 = 1;
/// Sampling or a forward failed (HTTP 500).
pub const PIXELDIT_FAILED: i32 = 2;
/// The library panicked (a bug; the pipeline stays usable).
pub const PIXELDIT_PANIC: i32 = 3;
/// An output buffer is null or does not have the length the pipeline needs.
pub const PIXELDIT_BUFFER: i32 = 4;
/// A null pipeline, string or callback argument.
pub const PIXELDIT_BAD_ARGUMENT: i32 = 5;

/// Every return code with its name, as `model.py` mirrors them.
pub const RETURN_CODES: &[(&str, i32)] = &[
    ("PIXELDIT_OK", PIXELDIT_OK),
    ("PIXELDIT_BAD_REQUEST", PIXELDIT_BAD_REQUEST),
    ("PIXELDIT_FAILED", PIXELDIT_FAILED),
    ("PIXELDIT_PANIC", PIXELDIT_PANIC),
    ("PIXELDIT_BUFFER", PIXELDIT_BUFFER),
    ("PIXELDIT_BAD_ARGUMENT", PIXELDIT_BAD_ARGUMENT),
];

/// The [`RunFn`] and its `user` pointer for the forwards of one request.
#[derive(Debug, Clone, Copy)]
pub struct Callbacks {
    run: RunFn,
    user: *mut c_void,
}

impl Callbacks {
    /// Wraps a callback.
    ///
    /// # Safety
    /// `run` must follow the [`RunFn`] contract and be callable with `user` for as long as this value, or a
    /// [`crate::CallbackBackend`] made with it, is used.
    pub unsafe fn new(run: RunFn, user: *mut c_void) -> Self {
        Callbacks { run, user }
    }

    /// One forward of `model`: the inputs as pointer arrays to the [`RunFn`], the outputs into `collected`.
    /// Returns the callback's code (0: success).
    pub(crate) fn forward(
        &self,
        model: &CStr,
        inputs: &[ForwardInput],
        outputs: &[CString],
        collected: &mut Collected,
    ) -> i32 {
        let names: Vec<*const c_char> = inputs.iter().map(|i| i.name.as_ptr()).collect();
        let dtypes: Vec<i32> = inputs.iter().map(ForwardInput::dtype).collect();
        let ranks: Vec<usize> = inputs.iter().map(|i| i.shape.len()).collect();
        let shapes: Vec<*const i64> = inputs.iter().map(|i| i.shape.as_ptr()).collect();
        let data: Vec<*const c_void> = inputs
            .iter()
            .map(|i| match &i.data {
                InputData::F32(v) => v.as_ptr().cast::<c_void>(),
                InputData::I64(v) => v.as_ptr().cast::<c_void>(),
            })
            .collect();
        let out_names: Vec<*const c_char> = outputs.iter().map(|n| n.as_ptr()).collect();
        // SAFETY: `run` and `user` are valid for this call by the contract of `Callbacks::new`. Every array has
        // `inputs.len()` (or `outputs.len()`) elements and, like the strings, shapes and data they point to, lives
        // until the call returns; each data buffer holds the product of its shape's values of its dtype.
        // `output_sink` follows `OutputSink`, and `collected` is the `Collected` it expects behind `sink_ctx`.
        unsafe {
            (self.run)(
                self.user,
                model.as_ptr(),
                inputs.len(),
                names.as_ptr(),
                dtypes.as_ptr(),
                ranks.as_ptr(),
                shapes.as_ptr(),
                data.as_ptr(),
                out_names.len(),
                out_names.as_ptr(),
                output_sink,
                (collected as *mut Collected).cast::<c_void>(),
            )
        }
    }
}

/// The [`OutputSink`] given to every forward: reads the output and hands it to [`collect_output`].
unsafe extern "C" fn output_sink(
    ctx: *mut c_void,
    name: *const c_char,
    rank: usize,
    shape: *const i64,
    data: *const f32,
) -> i32 {
    const _: OutputSink = output_sink;
    let result = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() || name.is_null() || (rank > 0 && shape.is_null()) {
            return 1;
        }
        // SAFETY: `ctx` is the `Collected` that `Callbacks::forward` passed for this call, not otherwise borrowed
        // while the callback runs.
        let collected = unsafe { &mut *ctx.cast::<Collected>() };
        // SAFETY: by the `OutputSink` contract `name` is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let dims: Vec<usize> = if rank == 0 {
            Vec::new()
        } else {
            // SAFETY: by the `OutputSink` contract `shape` points to `rank` dims (non-null, checked above).
            unsafe { std::slice::from_raw_parts(shape, rank) }
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect()
        };
        let n: usize = dims.iter().product();
        if n > 0 && data.is_null() {
            return 1;
        }
        let values: &[f32] = if n == 0 {
            &[]
        } else {
            // SAFETY: by the `OutputSink` contract `data` holds the product of the dims of f32 values (non-null,
            // checked above), valid during this call.
            unsafe { std::slice::from_raw_parts(data, n) }
        };
        collect_output(collected, name, &dims, values)
    }));
    result.unwrap_or(1)
}

/// `e` and its sources, each source left out when its text is already part of the message.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// Writes `msg` as a NUL-terminated UTF-8 string into `err[..len]`, cut on a character boundary to fit.
///
/// # Safety
/// `err` is null or has `len` writable bytes.
unsafe fn write_error(err: *mut c_char, len: usize, msg: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let mut n = msg.len().min(len - 1);
    while !msg.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: `n + 1 <= len` bytes are written to `err`, which has `len` writable bytes by this function's
    // contract; `msg` does not overlap a caller's buffer.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), err.cast::<u8>(), n);
        *err.add(n) = 0;
    }
}

/// Reads a C string argument.
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn arg(p: *const c_char, what: &str) -> Result<String, (i32, String)> {
    if p.is_null() {
        return Err((PIXELDIT_BAD_ARGUMENT, format!("{what} is null")));
    }
    // SAFETY: `p` is non-null and NUL-terminated by this function's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| (PIXELDIT_BAD_REQUEST, format!("{what} is not UTF-8")))
}

/// [`PIXELDIT_ABI_VERSION`]: `model.py` calls this first and refuses a library of another version.
#[no_mangle]
pub extern "C" fn pixeldit_pipeline_abi_version() -> u32 {
    PIXELDIT_ABI_VERSION
}

/// Creates a pipeline from Triton's model configuration (`model_config_json`, the python backend's
/// `args["model_config"]`; see [`PipelineConfig::from_model_config`]) and the model's version folder
/// (`version_dir`, where the tokenizer is); null on error (message in `err`).
///
/// # Safety
/// `model_config_json` and `version_dir` are NUL-terminated; `err` is null or has `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_new(
    model_config_json: *const c_char,
    version_dir: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> *mut Pipeline {
    let result = catch_unwind(|| -> Result<Pipeline, String> {
        // SAFETY: both are NUL-terminated by this function's contract.
        let (config, dir) = unsafe {
            (
                arg(model_config_json, "model configuration"),
                arg(version_dir, "version folder"),
            )
        };
        let (config, dir) = (config.map_err(|e| e.1)?, dir.map_err(|e| e.1)?);
        let cfg = PipelineConfig::from_model_config(&config, Path::new(&dir)).map_err(|e| error_text(&e))?;
        Pipeline::new(&cfg).map_err(|e| error_text(&e))
    });
    let msg = match result {
        Ok(Ok(p)) => return Box::into_raw(Box::new(p)),
        Ok(Err(e)) => e,
        Err(_) => "panic while creating the pipeline".into(),
    };
    // SAFETY: `err` has `err_len` writable bytes by this function's contract.
    unsafe { write_error(err, err_len, &msg) };
    std::ptr::null_mut()
}

/// Frees a pipeline from [`pixeldit_pipeline_new`].
///
/// # Safety
/// `p` is null or came from [`pixeldit_pipeline_new`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_free(p: *mut Pipeline) {
    if !p.is_null() {
        // SAFETY: `p` came from `Box::into_raw` in `pixeldit_pipeline_new` and is given up by the caller.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Writes `[C, H, W]` of the sample to `out[0..3]`; `out_len` must be 3. Returns [`PIXELDIT_OK`],
/// [`PIXELDIT_BAD_ARGUMENT`] for a null pipeline, [`PIXELDIT_BUFFER`] for a null or short `out`.
///
/// # Safety
/// `p` is null or a live pipeline; `out` is null or has `out_len` writable `usize`.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_image_shape(
    p: *const Pipeline,
    out: *mut usize,
    out_len: usize,
) -> i32 {
    if p.is_null() {
        return PIXELDIT_BAD_ARGUMENT;
    }
    if out.is_null() || out_len != 3 {
        return PIXELDIT_BUFFER;
    }
    // SAFETY: `p` is a live pipeline (non-null) by this function's contract.
    let shape = unsafe { &*p }.sample_shape();
    // SAFETY: `out` has `out_len` = 3 writable `usize` by this function's contract.
    unsafe { std::slice::from_raw_parts_mut(out, 3) }.copy_from_slice(&shape);
    PIXELDIT_OK
}

/// Samples one image for `request_json` (see [`Request`]). Every forward is `run(user, model, ...)`. Writes
/// `image_len` = `3*H*W` bytes to `image` and `x_len` = `C*H*W` floats to `x`, `H x W` the request's `height` and
/// `width` (default: the model's size, [`pixeldit_pipeline_image_shape`]). Returns [`PIXELDIT_OK`], or one of the other [`RETURN_CODES`] with the
/// message in `err`.
///
/// # Safety
/// `p` is null or a live pipeline; `request_json` is null or NUL-terminated; `image`, `x` and `err` are null or have
/// `image_len` bytes, `x_len` floats and `err_len` bytes writable; `run` is null or follows [`RunFn`] for `user`
/// during the call.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_generate(
    p: *const Pipeline,
    request_json: *const c_char,
    run: Option<RunFn>,
    user: *mut c_void,
    image: *mut u8,
    image_len: usize,
    x: *mut f32,
    x_len: usize,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| -> (i32, String) {
        let Some(run) = run.filter(|_| !p.is_null()) else {
            return (PIXELDIT_BAD_ARGUMENT, "null pipeline or callback".into());
        };
        // SAFETY: `p` is a live pipeline (non-null) by this function's contract.
        let pipeline = unsafe { &*p };
        // SAFETY: NUL-terminated by this function's contract.
        let text = match unsafe { arg(request_json, "request") } {
            Ok(t) => t,
            Err(e) => return e,
        };
        // The request's size (a dynamic-size model takes `height`/`width`) sizes the output buffers.
        let shape = Request::from_json(&text).and_then(|req| pipeline.sample_shape_for(&req));
        let [c, h, w] = match shape {
            Ok(s) => s,
            Err(e) => return (PIXELDIT_BAD_REQUEST, error_text(&e)),
        };
        let (want_image, want_x) = (3 * h * w, c * h * w);
        if image.is_null() || x.is_null() || image_len != want_image || x_len != want_x {
            return (
                PIXELDIT_BUFFER,
                format!(
                    "output buffers of {image_len} bytes and {x_len} floats{}; the request needs {want_image} bytes \
                     ([3, {h}, {w}]) and {want_x} floats ([{c}, {h}, {w}])",
                    if image.is_null() || x.is_null() { " (one is null)" } else { "" }
                ),
            );
        }
        // SAFETY: `run` follows `RunFn` for `user` during this call (this function's contract), and the callbacks
        // do not outlive it: `generate` drops every backend made from them before it returns.
        let calls = unsafe { Callbacks::new(run, user) };
        let generated = Request::from_json(&text).and_then(|req| pipeline.generate(&req, &calls));
        match generated {
            Ok(g) => {
                // SAFETY: `image` has `image_len` = 3*H*W writable bytes by this function's contract (checked
                // above), not aliased by Rust data.
                unsafe { std::slice::from_raw_parts_mut(image, image_len) }.copy_from_slice(&g.image);
                // SAFETY: as above, `x` has `x_len` = C*H*W writable floats.
                let out = unsafe { std::slice::from_raw_parts_mut(x, x_len) };
                for (o, v) in out.iter_mut().zip(g.x.iter()) {
                    *o = *v;
                }
                (PIXELDIT_OK, String::new())
            }
            Err(e @ PipelineError::Request(_)) => (PIXELDIT_BAD_REQUEST, error_text(&e)),
            Err(e) if e.is_invalid_input() => {
                (PIXELDIT_BAD_REQUEST, format!("bad request: {}", error_text(&e)))
            }
            Err(e) => (PIXELDIT_FAILED, error_text(&e)),
        }
    }));
    let (rc, msg) = result.unwrap_or((PIXELDIT_PANIC, "panic while sampling".into()));
    if rc != PIXELDIT_OK {
        // SAFETY: `err` has `err_len` writable bytes by this function's contract.
        unsafe { write_error(err, err_len, &msg) };
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::{DTYPE_F32, DTYPE_I64};
    use ndarray::Axis;
    use pixeldit_runtime::generate::{generate as sample, ImageShape, Noise, Request as GenerationRequest};
    use pixeldit_runtime::io;
    use pixeldit_runtime::{CondRows, Conditions, SamplerConfig, Time};
    use pixeldit_spec::{AttentionMode, ModelConfig, ModelMetadata, Precision};

    fn meta() -> ModelMetadata {
        let config = ModelConfig::preset("tiny").unwrap();
        ModelMetadata {
            format_version: pixeldit_spec::META_FORMAT_VERSION,
            sampler: config.sampler.clone(),
            height: config.default_height,
            width: config.default_width,
            config,
            precision: Precision::Fp32,
            attention: AttentionMode::Decomposed,
            pixel_ops: Default::default(),
            weights_sha256: String::new(),
            weights_source: "test".into(),
            exporter_version: "0".into(),
            quantization: None,
            patch_split: None,
            dynamic: None,
        }
    }

    /// Triton's model configuration of a pipeline for [`meta`], as JSON.
    fn model_config(denoiser: &str, max_batch_size: usize) -> String {
        serde_json::json!({
            "name": format!("{denoiser}_pipeline"),
            "backend": "python",
            "parameters": {
                "pixeldit.metadata": {"string_value": meta().to_json()},
                "pixeldit.denoiser": {"string_value": denoiser},
                "pixeldit.denoiser_max_batch_size": {"string_value": max_batch_size.to_string()},
            }
        })
        .to_string()
    }

    /// A "denoiser" in Rust: v = -x + y/10, through the C ABI's callback path. `user`, when set, is an `i64` that
    /// receives the rank of the last `y` it was sent.
    unsafe extern "C" fn fake_denoiser(
        user: *mut c_void,
        _model: *const c_char,
        n: usize,
        names: *const *const c_char,
        dtypes: *const i32,
        ranks: *const usize,
        shapes: *const *const i64,
        data: *const *const c_void,
        _n_out: usize,
        out_names: *const *const c_char,
        sink: OutputSink,
        sink_ctx: *mut c_void,
    ) -> i32 {
        let mut x: Option<(Vec<i64>, Vec<f32>)> = None;
        let mut y: Vec<i64> = Vec::new();
        for i in 0..n {
            // SAFETY: the arrays have `n` elements and point to valid inputs (the `RunFn` contract).
            let (name, rank, dtype, shape_ptr, data_ptr) = unsafe {
                (
                    CStr::from_ptr(*names.add(i)),
                    *ranks.add(i),
                    *dtypes.add(i),
                    *shapes.add(i),
                    *data.add(i),
                )
            };
            // SAFETY: `shape_ptr` has `rank` dims.
            let shape = unsafe { std::slice::from_raw_parts(shape_ptr, rank) }.to_vec();
            let len: usize = shape.iter().product::<i64>() as usize;
            match (name.to_str().unwrap(), dtype) {
                ("x", DTYPE_F32) => {
                    // SAFETY: an f32 input of `len` values.
                    let v = unsafe { std::slice::from_raw_parts(data_ptr.cast::<f32>(), len) };
                    x = Some((shape, v.to_vec()));
                }
                ("y", DTYPE_I64) => {
                    // SAFETY: an i64 input of `len` values.
                    y = unsafe { std::slice::from_raw_parts(data_ptr.cast::<i64>(), len) }.to_vec();
                    if !user.is_null() {
                        // SAFETY: the test passes an `i64` as `user`.
                        unsafe { *user.cast::<i64>() = rank as i64 };
                    }
                }
                _ => {}
            }
        }
        let (shape, xv) = x.unwrap();
        let per = xv.len() / shape[0] as usize;
        let v: Vec<f32> = xv
            .iter()
            .enumerate()
            .map(|(i, a)| -a + y[i / per] as f32 / 10.0)
            .collect();
        // SAFETY: `sink`/`sink_ctx` come from the library with `out_names[0]` valid; the shape and values live
        // during the call.
        unsafe { sink(sink_ctx, *out_names, shape.len(), shape.as_ptr(), v.as_ptr()) }
    }

    fn new_pipeline(config: &str) -> Result<*mut Pipeline, String> {
        let cfg = CString::new(config).unwrap();
        let dir = CString::new(".").unwrap();
        let mut err = vec![0 as c_char; 512];
        // SAFETY: NUL-terminated strings and an error buffer of its length.
        let p = unsafe { pixeldit_pipeline_new(cfg.as_ptr(), dir.as_ptr(), err.as_mut_ptr(), err.len()) };
        if p.is_null() {
            // SAFETY: the library wrote a NUL-terminated message.
            return Err(unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned());
        }
        Ok(p)
    }

    /// One request through the C ABI: (return code, message, image); `user` is passed to [`fake_denoiser`].
    fn generate_with(req: &str, config: &str, user: *mut c_void, extra: usize) -> (i32, String, Vec<u8>) {
        let p = new_pipeline(config).unwrap();
        let mut shape = [0usize; 3];
        // SAFETY: a live pipeline and a buffer of 3.
        let rc = unsafe { pixeldit_pipeline_image_shape(p, shape.as_mut_ptr(), 3) };
        assert_eq!(rc, PIXELDIT_OK);
        let mut image = vec![0u8; 3 * shape[1] * shape[2] + extra];
        let mut x = vec![0f32; shape.iter().product()];
        let mut err = vec![0 as c_char; 512];
        let req = CString::new(req).unwrap();
        // SAFETY: a live pipeline, NUL-terminated request, buffers of the lengths passed; `fake_denoiser` follows
        // `RunFn` for `user`.
        let rc = unsafe {
            pixeldit_pipeline_generate(
                p,
                req.as_ptr(),
                Some(fake_denoiser),
                user,
                image.as_mut_ptr(),
                image.len(),
                x.as_mut_ptr(),
                x.len(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        // SAFETY: from `pixeldit_pipeline_new`, not used afterwards.
        unsafe { pixeldit_pipeline_free(p) };
        // SAFETY: NUL-terminated (zeroed buffer or the library's message).
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        (rc, msg, image)
    }

    fn generate(req: &str) -> (i32, String, Vec<u8>) {
        generate_with(req, &model_config("pixeldit_tiny", 0), std::ptr::null_mut(), 0)
    }

    /// The C ABI gives the image the runtime's sampler gives for the same noise and model.
    #[test]
    fn generate_matches_the_runtime_sampler() {
        let (rc, msg, image) = generate(r#"{"class": 3, "seed": 7, "index": 1}"#);
        assert_eq!(rc, PIXELDIT_OK, "{msg}");
        let m = meta();
        let cfg = SamplerConfig::from_metadata(&m.sampler).unwrap();
        let [c, h, w] = [m.config.in_channels, m.height, m.width];
        let stream = io::seeded_noise(7, [2, c, h, w]);
        let noise = stream.slice_axis(Axis(0), (1..).into()).to_owned();
        let req = GenerationRequest {
            conditions: Conditions::classes(vec![3], m.config.null_class()),
            sampler: cfg,
            image: ImageShape {
                channels: c,
                height: h,
                width: w,
            },
            noise: Noise::Given(noise),
        };
        // The fake denoiser of these tests: v = -x + y/10, with the flow time as its `t` input.
        let mut model = |x: ndarray::ArrayView4<f32>, _t: Time, rows: CondRows<'_>| {
            let CondRows::Class(y) = rows else {
                panic!("class rows")
            };
            let per = x.len() / x.shape()[0];
            let flat: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, a)| -a + y[i / per] as f32 / 10.0)
                .collect();
            Ok(ndarray::Array4::from_shape_vec(x.raw_dim(), flat).unwrap())
        };
        let x = sample(&mut model, &req, &mut |_| {}).unwrap().x;
        let hwc = io::image_rgb8(x.index_axis(Axis(0), 0));
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                assert_eq!(image[ch * h * w + i], px[ch]);
            }
        }
    }

    /// With a batching denoiser (`max_batch_size > 0`) the batch-only input `y` is sent as `[B, 1]`, the image is
    /// the same.
    #[test]
    fn batch_only_inputs_follow_the_denoiser_config() {
        let req = r#"{"class": 3, "seed": 7}"#;
        for (mbs, rank) in [(0, 1), (8, 2)] {
            let mut seen: i64 = -1;
            let (rc, msg, image) = generate_with(
                req,
                &model_config("pixeldit_tiny", mbs),
                (&mut seen as *mut i64).cast(),
                0,
            );
            assert_eq!(rc, PIXELDIT_OK, "{msg}");
            assert_eq!(seen, rank, "max_batch_size {mbs}");
            assert_eq!(image, generate(req).2);
        }
    }

    #[test]
    fn bad_requests_are_named() {
        for (req, want) in [
            (r#"{"class": 10}"#, "class 10 is out of range"),
            (r#"{"class": -1}"#, "class -1 is out of range"),
            (r#"{"seed": 1}"#, "'class' is required"),
            (r#"{"class": 1, "steps": 0}"#, "steps 0: expected 1..=1000"),
            (r#"{"class": 1, "steps": 100000}"#, "steps 100000"),
            (r#"{"class": 1, "sampler": "ddim"}"#, "sampler 'ddim'"),
            (r#"{"class": 1, "colour": 2}"#, "unknown field 'colour'"),
            (r#"{"class": "three"}"#, "bad request: field 'class'"),
            (r#"{"class": 1, "index": 5000}"#, "index 5000"),
            (r#"{"class": 1, "prompt": "a 7"}"#, "send 'class', not a prompt"),
            (r#"{"class": 1, "cfg": "nan"}"#, "cfg scale NaN is not finite"),
            (r#"{"class": 1, "cfg": "-inf"}"#, "cfg scale -inf is not finite"),
            (
                r#"{"class": 1, "cfg": "x"}"#,
                "field 'cfg': invalid value: string \"x\", expected a number",
            ),
            (
                r#"{"class": 1, "patch_cache": 0}"#,
                "patch_cache 0: expected N >= 1",
            ),
            (
                r#"{"class": 1, "patch_cache": -3}"#,
                "patch_cache -3: expected N >= 1",
            ),
            (
                r#"{"class": 1, "patch_cache": 1.5}"#,
                "field 'patch_cache': invalid type",
            ),
            (
                r#"{"class": 1, "patch_cache_threshold": "nan"}"#,
                "patch_cache_threshold NaN: expected a finite number > 0",
            ),
            (
                r#"{"class": 1, "patch_cache_threshold": 0}"#,
                "patch_cache_threshold 0: expected a finite number > 0",
            ),
            (
                r#"{"class": 1, "patch_cache": 2, "patch_cache_threshold": 0.5}"#,
                "patch_cache and patch_cache_threshold exclude each other",
            ),
            (
                r#"{"class": 1, "patch_cache": 2, "patch_cache_reuse": "copy"}"#,
                "patch_cache_reuse 'copy': expected extrapolate or hold",
            ),
            (
                r#"{"class": 1, "patch_cache_reuse": "hold"}"#,
                "patch_cache_reuse needs patch_cache or patch_cache_threshold",
            ),
            (
                r#"{"class": 1, "patch_cache": 2, "patch_cache_schedule": "back"}"#,
                "patch cache schedule 'back': expected front or uniform",
            ),
            (
                r#"{"class": 1, "patch_cache_threshold": 0.5, "patch_cache_schedule": "uniform"}"#,
                "patch_cache_schedule needs patch_cache",
            ),
            // A model exported without the split (--no-patch-split): cached requests are refused before any forward.
            (
                r#"{"class": 1, "patch_cache": 2}"#,
                "patch cache (1 in 2, front-loaded) requested, but tiny has no patch-level split",
            ),
        ] {
            let (rc, msg, _) = generate(req);
            assert_eq!(rc, PIXELDIT_BAD_REQUEST, "{req}: {msg}");
            assert!(msg.contains(want), "{req}: '{msg}' lacks '{want}'");
            assert!(!msg.contains("column"), "{req}: {msg}");
        }
    }

    #[test]
    fn buffers_of_the_wrong_length_are_refused() {
        let (rc, msg, image) = generate_with(
            r#"{"class": 3}"#,
            &model_config("pixeldit_tiny", 0),
            std::ptr::null_mut(),
            1,
        );
        assert_eq!(rc, PIXELDIT_BUFFER, "{msg}");
        assert!(msg.contains("the request needs"), "{msg}");
        assert!(image.iter().all(|&b| b == 0));
        let p = new_pipeline(&model_config("m", 0)).unwrap();
        let mut shape = [0usize; 4];
        // SAFETY: a live pipeline; the buffer has 4 elements.
        let rc = unsafe { pixeldit_pipeline_image_shape(p, shape.as_mut_ptr(), 4) };
        assert_eq!(rc, PIXELDIT_BUFFER);
        // SAFETY: as above; null pipeline / buffer.
        unsafe {
            assert_eq!(
                pixeldit_pipeline_image_shape(p, std::ptr::null_mut(), 3),
                PIXELDIT_BUFFER
            );
            assert_eq!(
                pixeldit_pipeline_image_shape(std::ptr::null(), shape.as_mut_ptr(), 3),
                PIXELDIT_BAD_ARGUMENT
            );
            pixeldit_pipeline_free(p);
        }
    }

    #[test]
    fn configuration_errors_are_reported() {
        let e = new_pipeline(&model_config("bad\0name", 0)).unwrap_err();
        assert!(e.contains("contains a NUL byte"), "{e}");
        let e = new_pipeline("{").unwrap_err();
        assert!(e.contains("pipeline configuration"), "{e}");
        let e = new_pipeline(&model_config("m", 0).replace("pixeldit.metadata", "x")).unwrap_err();
        assert!(e.contains("parameter 'pixeldit.metadata' is missing"), "{e}");
    }

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        let mut buf = [0x7f as c_char; 6];
        // SAFETY: the buffer has 6 bytes.
        unsafe { write_error(buf.as_mut_ptr(), buf.len(), "ab\u{e9}\u{e9}\u{e9}") };
        // SAFETY: NUL-terminated by `write_error`.
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert_eq!(text, "ab\u{e9}");
    }

    /// `model.py` mirrors the return codes, the ABI version and the input element types (read at test time).
    #[test]
    fn model_py_mirrors_the_abi() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/model.py");
        let text = std::fs::read_to_string(&path).unwrap();
        let mirrored: Vec<(String, i64)> = text
            .lines()
            .filter(|l| l.starts_with("PIXELDIT_"))
            .filter_map(|l| {
                let (name, value) = l.split_once('=')?;
                let value = value.split('#').next()?.trim().parse().ok()?;
                Some((name.trim().to_string(), value))
            })
            .collect();
        let mut expected: Vec<(String, i64)> = RETURN_CODES
            .iter()
            .map(|&(n, v)| (n.to_string(), i64::from(v)))
            .collect();
        expected.push(("PIXELDIT_ABI_VERSION".into(), i64::from(PIXELDIT_ABI_VERSION)));
        expected.push(("PIXELDIT_DTYPE_F32".into(), i64::from(DTYPE_F32)));
        expected.push(("PIXELDIT_DTYPE_I64".into(), i64::from(DTYPE_I64)));
        let mut got = mirrored.clone();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "the PIXELDIT_* constants of {}", path.display());
        assert_eq!(pixeldit_pipeline_abi_version(), PIXELDIT_ABI_VERSION);
    }
}
