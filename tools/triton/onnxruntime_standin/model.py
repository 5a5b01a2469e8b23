"""TEST STAND-IN for Triton's onnxruntime backend (not the real backend; never deploy this).

The tritonserver of nvidia-pytriton (used by the tests, CPU only) ships only the python backend. Installed as
`<backend-directory>/onnxruntime/model.py` (tools/triton/setup.sh does this), it makes Triton load *unchanged*
`platform: "onnxruntime_onnx"` model configurations written by `pixeldit-export --triton-repo`: Triton resolves
the backend `onnxruntime` to this python-based backend. What it exercises: Triton's real config parser and
validator, the repository layout rules, the dynamic batcher, statistics and the KServe v2 protocol. What it does
not: the C++ ORT backend's own checks (accelerator names, I/O matched against the ONNX graph), GPUs, TensorRT.

Behaviour: one onnxruntime CPU session per instance on `<version>/<default_model_filename>` (model.onnx). A batch
of requests formed by the dynamic batcher is concatenated along axis 0, run once, and split back, so Triton's
batch statistics mean what they mean with the real backend.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        name = cfg.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("PIXELDIT_STANDIN_THREADS", "2"))
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.batching = int(cfg.get("max_batch_size", 0)) > 0
        self.inputs = []
        for i in cfg["input"]:
            reshape = i.get("reshape")
            self.inputs.append((i["name"], None if reshape is None else [int(d) for d in reshape.get("shape", [])]))
        self.outputs = [o["name"] for o in cfg["output"]]
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        missing = [n for n, _ in self.inputs if n not in onnx_inputs]
        if missing:
            raise pb_utils.TritonModelException(f"config inputs {missing} are not inputs of {path}")

    def _feeds(self, request):
        feeds = {}
        for name, reshape in self.inputs:
            a = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            if reshape is not None:
                lead = [a.shape[0]] if self.batching else []
                a = a.reshape(lead + reshape)
            feeds[name] = a
        return feeds

    def execute(self, requests):
        if not self.batching or len(requests) == 1:
            return [self._respond(self.session.run(self.outputs, self._feeds(r))) for r in requests]
        feeds = [self._feeds(r) for r in requests]
        sizes = [f[self.inputs[0][0]].shape[0] for f in feeds]
        merged = {n: np.concatenate([f[n] for f in feeds], axis=0) for n, _ in self.inputs}
        outs = self.session.run(self.outputs, merged)
        responses, start = [], 0
        for s in sizes:
            responses.append(self._respond([o[start : start + s] for o in outs]))
            start += s
        return responses

    def _respond(self, outs):
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(o)) for n, o in zip(self.outputs, outs)]
        )

    def finalize(self):
        self.session = None
