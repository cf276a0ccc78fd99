#!/usr/bin/env bash
# Cold start on a machine with an NVIDIA GPU and the `vllm` (GPU) build installed:
#   benchmarks/gpu/coldstart_gpu.sh [RUNS]
# Needs ~35 GiB of disk under $WORK (model + cache copy) and one GPU with >= 24 GiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python}"
WORK="${WORK:-/tmp/torpor-gpu}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__, "cuda", torch.cuda.is_available())'
MACHINE="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
exec "$PY" benchmarks/gpu/coldstart_gpu.py --work "$WORK" --runs "${1:-3}" --machine "$MACHINE"
