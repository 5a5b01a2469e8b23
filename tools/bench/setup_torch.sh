#!/usr/bin/env bash
# Separate venv with the PyPI torch wheel (CUDA build, the only one PyPI has) for the CPU baseline.
# The wheel's libraries link against CUDA sonames that the nvidia-* packages (several GB) would provide; for CPU runs
# we build tiny stub libraries with those sonames and symbol versions instead (every stub function returns an error,
# so torch.cuda.is_available() is False). CPU kernels (MKL/oneDNN, OpenMP) are the wheel's own.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/.cache/bench-venv
stubs=$root/.cache/bench/cudastubs
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
if ! "$venv/bin/python" -c 'import torch.version' 2>/dev/null; then
  mkdir -p "$root/.cache/bench/wheels"
  "$venv/bin/pip" download -q torch --no-deps --only-binary=:all: -d "$root/.cache/bench/wheels"
  "$venv/bin/pip" install -q --no-deps "$root"/.cache/bench/wheels/torch-*.whl
  "$venv/bin/pip" install -q numpy scipy safetensors filelock typing-extensions sympy networkx jinja2 fsspec
fi
if [ ! -f "$stubs/libcudart.so.13" ]; then
  mkdir -p "$stubs" && cd "$stubs"
  lib=$(echo "$venv"/lib/python3*/site-packages/torch/lib)
  sys=/lib/x86_64-linux-gnu
  (for f in "$lib"/*.so* "$lib"/../_C*.so; do nm -D --undefined-only "$f" | awk '{print $2}'; done) |
    grep -vE '@(GLIBC|GCC|CXXABI|GLIBCXX|QUADMATH|GOMP|OMP|ZLIB|GFORTRAN)' | sort -u > undefv.txt
  (for f in "$lib"/*.so* $sys/libc.so.6 $sys/libm.so.6 $sys/libstdc++.so.6 $sys/libgcc_s.so.1 $sys/libz.so.1; do
     nm -D --defined-only "$f" 2>/dev/null | awk '{print $3}'; done) | sed 's/@.*//' | sort -u > def.txt
  sed 's/@.*//' undefv.txt | sort -u | comm -23 - def.txt | grep -vE '^_?Py|^_ITM|^__gmon|^_Jv|^__tls_get_addr' > need.txt
  python3 - <<'PY'
import collections
need = set(open("need.txt").read().split())
byver = collections.defaultdict(set)
for line in open("undefv.txt"):
    s, _, v = line.strip().partition("@")
    if s in need and v:
        byver[v].add(s)
with open("vers.map", "w") as f:
    for v, syms in byver.items():
        f.write(v + " { global: " + " ".join(s + ";" for s in sorted(syms)) + " };\n")
with open("s.c", "w") as f:
    f.writelines(f"int {s}(void) {{ return 999; }}\n" for s in sorted(need))
PY
  for n in libcudart.so.13 libcupti.so.13 libcusparse.so.12 libcufft.so.12 libcufile.so.0 libcusparseLt.so.0 \
           libnccl.so.2 libcublas.so.13 libcublasLt.so.13 libcudnn.so.9 libnvrtc.so.13 libnvshmem_host.so.3 \
           libcusolver.so.12 libcuda.so.1; do
    gcc -shared -fPIC -o "$n" -Wl,-soname,"$n" -Wl,--version-script=vers.map s.c
  done
fi
echo "$venv/bin/python (LD_LIBRARY_PATH=$stubs)"
