"""Parses config.pbtxt files with Triton's real ModelConfig schema (tritonclient 2.73.0 ships model_config_pb2).

`google.protobuf.text_format.Parse` rejects unknown fields, wrong enum values and wrong types, which the Rust
validator (`pixeldit_exporter::triton::validate_repository`) does not re-implement; the Rust side checks the
semantics the schema cannot express (dims against the I/O contract, version folders, names).

Usage: .cache/triton-venv/bin/python tools/triton/check_config.py PATH...
  PATH: a config.pbtxt, a model directory or a repository (every */config.pbtxt). Exit 1 on any error.
"""

import pathlib
import sys

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2


def configs(path):
    p = pathlib.Path(path)
    if p.is_file():
        return [p]
    if (p / "config.pbtxt").is_file():
        return [p / "config.pbtxt"]
    found = sorted(p.glob("*/config.pbtxt"))
    if not found:
        raise SystemExit(f"check_config: no config.pbtxt under {p}")
    return found


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for arg in argv:
        for cfg in configs(arg):
            try:
                m = text_format.Parse(cfg.read_text(), model_config_pb2.ModelConfig())
            except text_format.ParseError as e:
                print(f"FAIL {cfg}: {e}")
                bad += 1
                continue
            dims = ", ".join(f"{t.name}{list(t.dims)}" for t in list(m.input) + list(m.output))
            kinds = ",".join(model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind) for g in m.instance_group)
            acc = [a.name for a in m.optimization.execution_accelerators.gpu_execution_accelerator]
            print(
                f"OK {cfg}: name={m.name} platform={m.platform} max_batch_size={m.max_batch_size} "
                f"dims=[{dims}] dynamic_batching={m.HasField('dynamic_batching')} "
                f"preferred={list(m.dynamic_batching.preferred_batch_size)} instances={kinds} "
                f"accelerators={acc} parameters={sorted(m.parameters)}"
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
