#!/usr/bin/env bash
# The main job on the embedded platform: set up (idempotent), then `torpor demo`: make the tiny
# model, start `torpor up`, deploy manifests/examples/tiny-chat.yaml, call it at its URL after a
# cold start from zero, watch it scale back to zero, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/torpor demo "$@"
