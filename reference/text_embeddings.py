"""Text embeddings through pixeldit's own prompt path: ``pixeldit-run encode`` (the Rust tokenizer and the exported
text encoder, by the official recipe), for the training and golden scripts of ``digits-t2i``."""

import pathlib
import subprocess
import tempfile

import numpy as np


def encode(pixeldit_run, text_encoder, texts, negative=False):
    """[K, 300, D] float32 embeddings of ``texts`` (prompts, or negative prompts with ``negative``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "emb.npy"
        cmd = [pixeldit_run, "encode", "--text-encoder", text_encoder, "-o", str(out)]
        for t in texts:  # --prompt keeps the empty negative prompt, which a prompts file would skip
            cmd += ["--prompt", t]
        if negative:
            cmd.append("--negative")
        subprocess.run(cmd, check=True, capture_output=True)
        return np.load(out).astype(np.float32)
