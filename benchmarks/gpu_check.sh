#!/usr/bin/env bash
# The one GPU check (benchmarks/gpu_check.py): run it first whenever a GPU is lent; --smoke runs it tiny on any
# device (CPU in CI). Writes one JSON (benchmarks/results/gpu-check-<gpu>.json, or --out).
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
[ -x "$python" ] || python=python3
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" exec "$python" benchmarks/gpu_check.py "$@"
