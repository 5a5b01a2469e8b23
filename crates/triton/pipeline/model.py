"""PixelDiT pipeline model for Triton's python backend, written by `pixeldit-export --triton-repo` as
`NAME_pipeline/1/model.py` next to `libpixeldit_triton_pipeline.so` (crates/triton/pipeline).

One request (class, or prompt and negative prompt for text-to-image models; seed; optional sampler settings) -> one
image (UINT8 [3, H, W]) and the final sample x (FP32 [C, H, W]). The sampler, the seeded noise and every check of the request run in the Rust library, the same code
as `pixeldit-run`; this file only moves tensors: each network forward the library asks for becomes a BLS request to
the denoiser model (config parameter `pixeldit.denoiser`), so the steps of concurrent requests meet in the
denoiser's dynamic batcher. A text-to-image pipeline also sends the text encoder's forwards to the encoder model
(parameter `pixeldit.text_encoder_model`) and tokenizes with `tokenizer.json` beside this file. A bad request gets an error response naming the field; the model keeps serving.
"""
import ctypes
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

_OutputSink = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_float))
_RunFn = ctypes.CFUNCTYPE(
    ctypes.c_int32, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_size_t),
    ctypes.POINTER(ctypes.POINTER(ctypes.c_int64)), ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p), _OutputSink, ctypes.c_void_p)

# Request inputs: (tensor name, request field, element count, conversion). FP32 values go through their shortest
# decimal form (str), so that a 0.1 typed by the user is the f64 0.1 that pixeldit-run uses, not 0.10000000149.
def _text(a):
    return a[0].decode() if isinstance(a[0], bytes) else str(a[0])


_FIELDS = [
    ("class", "class", 1, lambda a: int(a[0])),
    ("prompt", "prompt", 1, _text),
    ("negative_prompt", "negative_prompt", 1, _text),
    ("seed", "seed", 1, lambda a: int(a[0])),
    ("index", "index", 1, lambda a: int(a[0])),
    ("steps", "steps", 1, lambda a: int(a[0])),
    ("cfg", "cfg", 1, lambda a: float(str(a[0]))),
    ("sampler", "sampler", 1, _text),
    ("interval", "interval", 2, lambda a: [float(str(a[0])), float(str(a[1]))]),
    ("shift", "shift", 1, lambda a: float(str(a[0]))),
]
_ERR_LEN = 4096


def _error(message, bad_request):
    """An error response: INVALID_ARG (HTTP 400) for a bad request where the backend supports codes, else INTERNAL."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if bad_request else None
    if code is None:
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        lib = ctypes.CDLL(os.path.join(here, params.get("pixeldit.library", "libpixeldit_triton_pipeline.so")))
        lib.pixeldit_pipeline_new.restype = ctypes.c_void_p
        lib.pixeldit_pipeline_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.pixeldit_pipeline_free.argtypes = [ctypes.c_void_p]
        lib.pixeldit_pipeline_image_shape.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        lib.pixeldit_pipeline_generate.restype = ctypes.c_int32
        lib.pixeldit_pipeline_generate.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, _RunFn, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint8),
            ctypes.POINTER(ctypes.c_float), ctypes.c_char_p, ctypes.c_size_t]
        self.lib = lib
        self.denoiser = params["pixeldit.denoiser"]
        # With max_batch_size > 0 the denoiser declares batch-only inputs (t, y) as dims [1]: send [B, 1].
        self.batch_inputs_2d = int(params.get("pixeldit.denoiser_max_batch_size", "0")) > 0
        setup = {"metadata": params["pixeldit.metadata"], "denoiser": self.denoiser}
        if "pixeldit.text_encoder_model" in params:  # text-to-image: the encoder model, the tokenizer beside this file
            setup["text_encoder"] = params["pixeldit.text_encoder_model"]
            setup["text_encoder_metadata"] = params["pixeldit.text_encoder_metadata"]
            setup["tokenizer"] = os.path.join(here, params.get("pixeldit.tokenizer", "tokenizer.json"))
        err = ctypes.create_string_buffer(_ERR_LEN)
        self.handle = lib.pixeldit_pipeline_new(json.dumps(setup).encode(), err, _ERR_LEN)
        if not self.handle:
            raise pb_utils.TritonModelException(f"pixeldit pipeline: {err.value.decode()}")
        shape = (ctypes.c_size_t * 3)()
        lib.pixeldit_pipeline_image_shape(self.handle, shape)
        self.shape = tuple(shape)
        self.run_fn = _RunFn(self._forward)  # kept alive for the library's calls
        self.forward_error = None

    def _forward(self, _user, model, n, names, dtypes, ranks, shapes, data, n_out, out_names, sink, sink_ctx):
        """One network forward for the library: a BLS request to `model`; outputs handed to `sink`."""
        try:
            inputs = []
            for i in range(n):
                shape = tuple(shapes[i][k] for k in range(ranks[i]))
                ctype = ctypes.c_float if dtypes[i] == 0 else ctypes.c_int64
                count = int(np.prod(shape)) if shape else 1
                arr = np.ctypeslib.as_array(ctypes.cast(data[i], ctypes.POINTER(ctype)), shape=(count,))
                arr = arr.reshape(shape).copy()
                if arr.ndim == 1 and self.batch_inputs_2d:
                    arr = arr.reshape(-1, 1)
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
        return json.dumps(fields)

    def execute(self, requests):
        responses = []
        c, h, w = self.shape
        for request in requests:
            try:
                body = self._request_json(request)
            except Exception as e:  # noqa: BLE001
                responses.append(_error(f"bad request: {e}", True))
                continue
            image = np.zeros((3, h, w), dtype=np.uint8)
            x = np.zeros((c, h, w), dtype=np.float32)
            err = ctypes.create_string_buffer(_ERR_LEN)
            self.forward_error = None
            rc = self.lib.pixeldit_pipeline_generate(
                self.handle, body.encode(), self.run_fn, None,
                image.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                x.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), err, _ERR_LEN)
            if rc != 0:
                message = err.value.decode()
                if self.forward_error:
                    message += f" ({self.forward_error})"
                responses.append(_error(message, rc == 1))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("image", image), pb_utils.Tensor("x", x)]))
        return responses

    def finalize(self):
        if getattr(self, "handle", None):
            self.lib.pixeldit_pipeline_free(self.handle)
            self.handle = None
