"""PixelDiT pipeline model for Triton's python backend, written by `pixeldit-export --triton-repo` as
`NAME_pipeline/1/model.py` next to `libpixeldit_triton_pipeline.so` (the crate pixeldit-triton-pipeline, in
crates/triton/pipeline; this file is crates/triton/python/model.py).

One request (class, or prompt and negative prompt for text-to-image models; seed; optional sampler settings and patch
cache) -> one image (UINT8 [3, H, W]) and the final sample x (FP32 [C, H, W]). The sampler, the seeded noise and every
check of the request run in the Rust library, the same code as `pixeldit-run`; this file only moves tensors: each
network forward the library asks for becomes a BLS request to the model it names (the denoiser; for text-to-image
models the text encoder; with a patch cache the pixel-level model), so the steps of concurrent requests meet in the
denoiser's dynamic batcher. The library reads the model configuration's `pixeldit.*` parameters itself. A bad request
gets an error response naming the field; the model keeps serving.
"""
import ctypes
import json
import math
import os

import numpy as np
import triton_python_backend_utils as pb_utils

# The library's C ABI (crates/triton/pipeline/src/ffi.rs; a Rust test checks that these values are the library's).
PIXELDIT_ABI_VERSION = 2
PIXELDIT_OK = 0
PIXELDIT_BAD_REQUEST = 1
PIXELDIT_FAILED = 2
PIXELDIT_PANIC = 3
PIXELDIT_BUFFER = 4
PIXELDIT_BAD_ARGUMENT = 5
PIXELDIT_DTYPE_F32 = 0  # element types of the forward inputs the library hands over
PIXELDIT_DTYPE_I64 = 1

# The one parameter read here: the library must be loaded before it can read the others.
_LIBRARY_PARAM = "pixeldit.library"
_LIBRARY_FILE = "libpixeldit_triton_pipeline.so"

_OutputSink = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float))
_RunFn = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.POINTER(ctypes.c_int64)), ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p), _OutputSink, ctypes.c_void_p)


def _text(a):
    return a[0].decode() if isinstance(a[0], bytes) else str(a[0])


def _number(v):
    """An FP32 value for the request JSON: its shortest decimal form (so that a 0.1 typed by the user is the f64 0.1
    that pixeldit-run uses, not 0.10000000149), or "nan"/"inf"/"-inf", which JSON has no numbers for."""
    f = float(str(v))
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return f


# Request inputs: (tensor name, request field, element count, conversion).
_FIELDS = [
    ("class", "class", 1, lambda a: int(a[0])),
    ("prompt", "prompt", 1, _text),
    ("negative_prompt", "negative_prompt", 1, _text),
    ("seed", "seed", 1, lambda a: int(a[0])),
    ("index", "index", 1, lambda a: int(a[0])),
    ("steps", "steps", 1, lambda a: int(a[0])),
    ("cfg", "cfg", 1, lambda a: _number(a[0])),
    ("sampler", "sampler", 1, _text),
    ("interval", "interval", 2, lambda a: [_number(a[0]), _number(a[1])]),
    ("shift", "shift", 1, lambda a: _number(a[0])),
    ("patch_cache", "patch_cache", 1, lambda a: int(a[0])),
    ("patch_cache_threshold", "patch_cache_threshold", 1, lambda a: _number(a[0])),
    ("patch_cache_reuse", "patch_cache_reuse", 1, _text),
    ("patch_cache_schedule", "patch_cache_schedule", 1, _text),
    ("height", "height", 1, lambda a: int(a[0])),
    ("width", "width", 1, lambda a: int(a[0])),
]
_ERR_LEN = 4096


def _error(message, bad_request):
    """An error response: INVALID_ARG (HTTP 400) for a bad request where the backend supports codes, else INTERNAL."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if bad_request else None
    if code is None:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _load(path):
    """The library, its ABI version checked and its functions declared."""
    lib = ctypes.CDLL(path)
    try:
        lib.pixeldit_pipeline_abi_version.restype = ctypes.c_uint32
        version = lib.pixeldit_pipeline_abi_version()
    except AttributeError:
        version = 1  # the unversioned ABI
    if version != PIXELDIT_ABI_VERSION:
        raise pb_utils.TritonModelException(
            f"pixeldit pipeline: {path} has C ABI version {version}, this model.py speaks version "
            f"{PIXELDIT_ABI_VERSION}: export the repository again so that the library and model.py match")
    lib.pixeldit_pipeline_new.restype = ctypes.c_void_p
    lib.pixeldit_pipeline_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.pixeldit_pipeline_free.argtypes = [ctypes.c_void_p]
    lib.pixeldit_pipeline_image_shape.restype = ctypes.c_int32
    lib.pixeldit_pipeline_image_shape.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.c_size_t]
    lib.pixeldit_pipeline_generate.restype = ctypes.c_int32
    lib.pixeldit_pipeline_generate.argtypes = [
        ctypes.c_void_p, ctypes.c_char_p, _RunFn, ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
        ctypes.c_char_p, ctypes.c_size_t]
    return lib


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        library = config.get("parameters", {}).get(_LIBRARY_PARAM, {}).get("string_value", _LIBRARY_FILE)
        here = os.path.join(args["model_repository"], args["model_version"])
        self.lib = lib = _load(os.path.join(here, library))
        err = ctypes.create_string_buffer(_ERR_LEN)
        self.handle = lib.pixeldit_pipeline_new(args["model_config"].encode(), here.encode(), err, _ERR_LEN)
        if not self.handle:
            raise pb_utils.TritonModelException(f"pixeldit pipeline: {err.value.decode(errors='replace')}")
        shape = (ctypes.c_size_t * 3)()
        rc = lib.pixeldit_pipeline_image_shape(self.handle, shape, 3)
        if rc != PIXELDIT_OK:
            raise pb_utils.TritonModelException(f"pixeldit pipeline: image shape: code {rc}")
        self.shape = tuple(shape)
        self.run_fn = _RunFn(self._forward)  # kept alive for the library's calls
        self.forward_error = None

    def _forward(self, _user, model, n, names, dtypes, ranks, shapes, data, n_out, out_names, sink, sink_ctx):
        """One network forward for the library: a BLS request to `model`; outputs handed to `sink`."""
        try:
            inputs = []
            for i in range(n):
                shape = tuple(shapes[i][k] for k in range(ranks[i]))
                ctype = {PIXELDIT_DTYPE_F32: ctypes.c_float, PIXELDIT_DTYPE_I64: ctypes.c_int64}[dtypes[i]]
                count = int(np.prod(shape)) if shape else 1
                arr = np.ctypeslib.as_array(ctypes.cast(data[i], ctypes.POINTER(ctype)), shape=(count,))
                arr = arr.reshape(shape).copy()
                inputs.append(pb_utils.Tensor(names[i].decode(), arr))
            wanted = [out_names[i].decode() for i in range(n_out)]
            response = pb_utils.InferenceRequest(
                model_name=model.decode(), requested_output_names=wanted, inputs=inputs).exec()
            if response.has_error():
                self.forward_error = f"{model.decode()}: {response.error().message()}"
                return 1
            for name in wanted:
                out = np.ascontiguousarray(pb_utils.get_output_tensor_by_name(response, name).as_numpy(),
                                           dtype=np.float32)
                dims = (ctypes.c_int64 * out.ndim)(*out.shape)
                if sink(sink_ctx, name.encode(), out.ndim, dims, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))):
                    self.forward_error = f"output '{name}' of shape {out.shape} was not accepted"
                    return 1
            return 0
        except Exception as e:  # noqa: BLE001 - reported in the response
            self.forward_error = f"{type(e).__name__}: {e}"
            return 1

    def _request_json(self, request):
        fields = {}
        for tensor, key, count, convert in _FIELDS:
            t = pb_utils.get_input_tensor_by_name(request, tensor)
            if t is None:
                continue
            a = t.as_numpy().reshape(-1)
            if a.size != count:
                raise ValueError(f"input '{tensor}' has {a.size} element(s), expected {count}")
            fields[key] = convert(a)
        return fields

    def execute(self, requests):
        responses = []
        c, h, w = self.shape
        for request in requests:
            try:
                fields = self._request_json(request)
                body = json.dumps(fields, allow_nan=False)
                # The output size: the request's height/width (a dynamic-size model), else the model's; the library
                # checks it (a negative or huge value is refused there, with the valid range).
                rh, rw = (max(0, min(int(fields.get(k, d)), 1 << 16)) for k, d in (("height", h), ("width", w)))
            except Exception as e:  # noqa: BLE001
                responses.append(_error(f"bad request: {e}", True))
                continue
            image = np.zeros((3, rh, rw), dtype=np.uint8)
            x = np.zeros((c, rh, rw), dtype=np.float32)
            err = ctypes.create_string_buffer(_ERR_LEN)
            self.forward_error = None
            rc = self.lib.pixeldit_pipeline_generate(
                self.handle, body.encode(), self.run_fn, None,
                image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), image.size,
                x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), x.size, err, _ERR_LEN)
            if rc != PIXELDIT_OK:
                message = err.value.decode(errors="replace")
                if self.forward_error:
                    message += f" ({self.forward_error})"
                responses.append(_error(message, rc == PIXELDIT_BAD_REQUEST))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("image", image), pb_utils.Tensor("x", x)]))
        return responses

    def finalize(self):
        if getattr(self, "handle", None):
            self.lib.pixeldit_pipeline_free(self.handle)
            self.handle = None
