#!/usr/bin/env bash
# Install (into .venv, created if missing) and run the main job: the short-horizon
# actor-critic on cart-pole swing-up at a small default size.
# Usage: bash scripts/train.sh [flags of python -m experiments.train]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all]"
exec .venv/bin/python -m experiments.train "$@"
