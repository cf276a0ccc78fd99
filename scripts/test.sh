#!/usr/bin/env bash
# The test command: set up (idempotent), then lint, type-check, check the package boundaries and
# run the whole suite, end-to-end tests with real vLLM (CPU build) and real redis-server included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"; ruff check .
echo "== mypy --strict"; mypy
echo "== import boundaries"; lint-imports
echo "== pytest"; pytest -q "$@"
