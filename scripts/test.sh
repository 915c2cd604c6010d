#!/usr/bin/env bash
# The README's test command: create .venv (if missing), install tinkjax with its dev extras,
# check lint, types and the layer contracts (lint-imports), run the test suite.
# Needs only Python >= 3.11 on the machine.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/codec -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# editable_mode=strict maps kernels/ to tinkjax.kernels in a way type checkers can follow.
.venv/bin/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
export TINKER_TELEMETRY=0
if [ "$#" -eq 0 ]; then
    .venv/bin/ruff check tinkjax kernels tests bench examples
    .venv/bin/ruff format --check tinkjax kernels tests bench examples
    .venv/bin/mypy
    .venv/bin/lint-imports
fi
if [ "$#" -eq 0 ]; then
    # The whole suite on every core the machine has (pytest-xdist; 2 on CI).
    exec .venv/bin/pytest -n "${TINKJAX_TEST_WORKERS:-auto}"
fi
exec .venv/bin/pytest "$@"
