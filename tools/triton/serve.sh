#!/usr/bin/env bash
# Runs the test tritonserver (CPU, python backend + the onnxruntime stand-in) on loopback for a model repository.
# The process is bounded by `timeout`; SIGTERM to this script's PID (it execs into `timeout`) stops the server.
# Usage: tools/triton/serve.sh REPO [HTTP_PORT [GRPC_PORT [METRICS_PORT [LIMIT_SECONDS]]]]
#   defaults: 8000 8001 8002 3600. Run tools/triton/setup.sh first.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${PIXELDIT_TRITON_VENV:-$root/.cache/triton-venv}
[ -f "$venv/triton.env" ] || { echo "serve: $venv/triton.env missing; run tools/triton/setup.sh" >&2; exit 1; }
# shellcheck disable=SC1091
. "$venv/triton.env"
repo=$(cd "${1:?usage: serve.sh REPO [HTTP_PORT [GRPC_PORT [METRICS_PORT [LIMIT_SECONDS]]]]}" && pwd)
http=${2:-8000}; grpc=${3:-8001}; metrics=${4:-8002}; limit=${5:-3600}
exec timeout --kill-after=10 "$limit" env \
  LD_LIBRARY_PATH="$TRITON_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  PATH="$TRITON_VENV_BIN:$PATH" \
  "$TRITONSERVER" \
  --model-repository="$repo" --backend-directory="$TRITON_BACKEND_DIR" --cache-directory="$TRITON_CACHE_DIR" \
  --http-address=127.0.0.1 --http-port="$http" --grpc-address=127.0.0.1 --grpc-port="$grpc" \
  --metrics-address=127.0.0.1 --metrics-port="$metrics" --allow-gpu-metrics=false \
  --exit-timeout-secs=10 --strict-readiness=true
