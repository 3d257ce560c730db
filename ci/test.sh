#!/usr/bin/env bash
# Install xpconv with its test dependencies into a virtual environment and run
# the linters and the whole test suite (the torch oracle, array-api-strict, JAX, ONNX
# and MPI tests included), on XPCONV_TEST_WORKERS pytest-xdist workers (default 2).
# Usage: bash ci/test.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${VIRTUAL_ENV:-}" ]; then
  python3 -m venv .venv
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
# PyTorch is the independent oracle. Keep a torch the user already has (any >= 2.1);
# otherwise install a CPU build (XPCONV_TORCH overrides which).
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${XPCONV_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -e ".[test,cli]"

ruff check .
ruff format --check .
python -m pytest -rs -n "${XPCONV_TEST_WORKERS:-2}" "$@"
