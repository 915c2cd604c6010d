#!/usr/bin/env bash
# The README's main-job command: create .venv (if missing), install tinkjax, and run a LoRA
# fine-tune with a custom loss (cross-entropy + regularizers) on the embedded local backend,
# then sample from the trained weights. Needs only Python >= 3.11. Extra arguments go to
# `tinkjax demo` (e.g. `bash scripts/demo.sh --steps 60`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "scripts/demo.sh: tinkjax needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)" \
        "(set PYTHON=python3.11 or newer)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# The install's own output (setuptools' notes on the strict editable install among it) goes to
# a log, shown only when the install fails, so the job's output is the job's.
log=.venv/demo-install.log
if ! { .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip &&
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e . \
        --config-settings editable_mode=strict; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "scripts/demo.sh: installing tinkjax failed (the log above is in $log)" >&2
    exit 1
fi
export TINKER_TELEMETRY="${TINKER_TELEMETRY:-0}"
exec .venv/bin/tinkjax demo "$@"
