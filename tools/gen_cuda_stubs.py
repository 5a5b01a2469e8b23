#!/usr/bin/env python3
"""Builds empty stand-ins for the CUDA libraries the PyPI torch wheel links against, so that ``import torch``
works on a machine without them (CPU-only use: torch.save / torch.load of CPU tensors).

For every ``lib*.so.N`` that torch's shared objects need from NVIDIA, it compiles a shared library with that
soname which defines every symbol and symbol version torch references, as a function returning error code 100
(no device), so device probes report no GPU. Never use CUDA functionality with these stubs loaded.

Usage: gen_cuda_stubs.py VENV OUT_DIR     then run torch with LD_LIBRARY_PATH=OUT_DIR
"""
import collections
import glob
import os
import re
import subprocess
import sys

venv, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
lib = glob.glob(os.path.join(venv, "lib", "python*", "site-packages", "torch", "lib"))[0]
files = glob.glob(os.path.join(lib, "*.so")) + glob.glob(os.path.join(lib, "..", "_C*.so"))
# The NVIDIA sonames torch needs (DT_NEEDED), and the version nodes of its undefined symbols.
needed = set()
for f in files:
    dyn = subprocess.run(["readelf", "-d", f], capture_output=True, text=True).stdout
    needed |= {m for m in re.findall(r"\[(lib[^\]]+)\]", dyn) if re.match(r"lib(cu|nv|nccl)", m)}
vers_of = collections.defaultdict(lambda: collections.defaultdict(set))
plain = set()
for line in subprocess.run(["objdump", "-T", *files], capture_output=True, text=True).stdout.splitlines():
    if "*UND*" not in line:
        continue
    parts = line.split()
    sym, ver = parts[-1], parts[-2].strip("()")
    so = {"NVSHMEM": "libnvshmem_host.so.3"}.get(ver, ver)
    if so in needed:
        vers_of[so][ver].add(sym)
    elif ver == "Base" and re.match(r"^(cu|nccl|nvshmem|nvrtc)", sym):
        plain.add(sym)
for so in sorted(needed):
    nodes = vers_of[so]
    nodes.setdefault(so, set())
    if so.startswith("libcudart"):
        nodes[so] |= plain  # unversioned references resolve to any default definition
    syms = sorted(set().union(*nodes.values()))
    c, m = os.path.join(out, so + ".c"), os.path.join(out, so + ".map")
    with open(c, "w") as fh:
        # Every call fails with code 100 (cudaErrorNoDevice / CUDA_ERROR_NO_DEVICE), so that device probes such as
        # torch.cuda.is_available() see no GPU; error-string getters return a constant string.
        fh.writelines(f'const char* {s}(void) {{ return "no CUDA (stub library)"; }}\n'
                      if re.search(r"(ErrorString|ErrorName|GetString)$", s) else f"int {s}(void) {{ return 100; }}\n"
                      for s in syms)
    with open(m, "w") as fh:
        for v, ss in nodes.items():
            fh.write(f"{v} {{ global: {' '.join(s + ';' for s in sorted(ss))} }};\n" if ss else f"{v} {{ }};\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", os.path.join(out, so), c, f"-Wl,-soname,{so}",
                    f"-Wl,--version-script={m}"], check=True)
print(f"{len(needed)} stub libraries in {out}", file=sys.stderr)
