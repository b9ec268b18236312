#!/usr/bin/env bash
# Set up (if needed) and run the main job on its embedded default. Extra args go to `spikedriven`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ $# -eq 0 ]; then set -- train; fi
exec .venv/bin/spikedriven "$@"
