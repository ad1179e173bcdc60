#!/usr/bin/env bash
# Create .venv (pip + venv) and install segft with its test dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# PyTorch first, pinned to the release this project is tested with (segmentation-models-pytorch needs torchvision).
.venv/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
# The server and ray extras too: the tests start a shared tracking server on PostgreSQL
# (scripts/tracking-server.sh) and run studies and tuning workers on a local Ray instance.
.venv/bin/pip install --quiet -e ".[test,server,ray]"
