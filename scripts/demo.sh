#!/usr/bin/env bash
# The README's main-job command: create .venv (if missing), install tinkjax, and run a LoRA
# fine-tune with a custom loss (cross-entropy + regularizers) on the embedded local backend,
# then sample from the trained weights. Needs only Python >= 3.11. Extra arguments go to
# `tinkjax demo` (e.g. `bash scripts/demo.sh --steps 20`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e . --config-settings editable_mode=strict
export TINKER_TELEMETRY="${TINKER_TELEMETRY:-0}"
exec .venv/bin/tinkjax demo "$@"
