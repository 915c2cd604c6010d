#!/usr/bin/env bash
# The compat step (run by .ci/run after scripts/test.sh): code written for the official SDK and
# tinker-cookbook, unchanged, against tinkjax (tests/compat, marker `compat`).
# tinker-cookbook 0.6.1 is installed with --no-deps: its `tml-renderers>=0.4.1` pin cannot
# resolve from the package index; the runtime dependencies its training code imports are the
# `compat` extra. torch 2.13.0 is the CPU wheel (torch stays out of the core and dev deps).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "run scripts/test.sh first (it creates .venv)" >&2
    exit 1
fi
.venv/bin/python -m pip install --quiet -e '.[dev,compat]' --config-settings editable_mode=strict
.venv/bin/python -m pip install --quiet 'torch==2.13.0'
.venv/bin/python -m pip install --quiet --no-deps 'tinker-cookbook==0.6.1'
export TINKER_TELEMETRY=0
exec .venv/bin/pytest -m compat tests/compat "$@"
