#!/usr/bin/env bash
# torpor's part of a GPU cold start, on a GPU node without vLLM: a Llama-3-8B-shaped random model
# (~15 GiB bf16) goes through the node-local weight cache (verified copy) and then from the cache
# into GPU memory, as vLLM's loader does with it:
#   benchmarks/gpu/weight_load_gpu.sh [OUT_DIR]
# Needs python3 with torch (CUDA) and safetensors, ~35 GiB of disk under $WORK, one GPU >= 24 GiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
WORK="${WORK:-/tmp/torpor-gpu}"
OUT="${1:-benchmarks/results/gpu}"
mkdir -p "$WORK" "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
"$PY" -c 'import vllm; print("vllm", vllm.__version__)' || echo "vllm: not installed here"
MACHINE="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(nproc) cores"
PYTHONPATH="$PWD" "$PY" benchmarks/weight_load.py --size llama3-8b --device cuda --runs 3 \
  --model-dir "$WORK/llama3-8b-random" --cache-dir "$WORK/cache" --out "$OUT" \
  --name weight_load_gpu --machine "$MACHINE"
