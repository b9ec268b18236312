#!/usr/bin/env bash
# Create .venv (once) and install spikedriven with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.spikedriven-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    # Test oracle only; --no-deps because its metadata drags in torchaudio.
    .venv/bin/python -m pip install -q --no-deps 'spikingjelly>=2.0'
    touch "$stamp"
fi
