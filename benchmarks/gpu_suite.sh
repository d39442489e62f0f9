#!/usr/bin/env bash
# The GPU suite: what a CPU cannot show, in at most 8 minutes on one GPU (budgets below add up
# to 465 s of benchmark time plus start-up). Results: JSON per benchmark and SUMMARY.md (every
# benchmark's Markdown table, the device and the command) in benchmarks/results/gpu/; copy the
# tables into docs/benchmarks.md ("GPU suite") with the command that made them.
#
#   bash benchmarks/gpu_suite.sh          # on a GPU machine (pip install -e ".[all,cuda]")
#   bash benchmarks/gpu_suite.sh --tiny   # CPU dry run at toy sizes (CI runs it): every step, nothing measured
#
# Steps: sweep throughput at K = 1 ... 256 seeds in one vmapped program; SHAC vs Brax's APG and PPO on
# Brax's inverted pendulum and half-cheetah (time to threshold, compile included); the
# reverse-mode cost ratio; float32 MJX gradients (finite fraction, cosine vs float64, time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
TINY=0
[ "${1:-}" = "--tiny" ] && TINY=1
OUT=${GPU_SUITE_OUT:-benchmarks/results/gpu}
[ "$TINY" = 1 ] && OUT=${GPU_SUITE_OUT:-$(mktemp -d)/gpu_suite_tiny}
mkdir -p "$OUT"
SUMMARY="$OUT/SUMMARY.md"
{
  echo "# GPU suite ($(date -u +%Y-%m-%d), $([ "$TINY" = 1 ] && echo 'tiny CPU dry run' || echo 'full'))"
  echo
  echo "Command: \`bash benchmarks/gpu_suite.sh $*\`"
  "$PY" -c "import jax; d = jax.devices()[0]; print(f'Device: {jax.device_count()} x {getattr(d, \"device_kind\", d)} ({jax.default_backend()}), jax {jax.__version__}')"
  echo
} > "$SUMMARY"

step() {  # step NAME BUDGET_S ARGS...: one benchmark under its time budget, its output into SUMMARY.md
  local name=$1 budget=$2
  shift 2
  echo "== $name (budget ${budget} s)"
  echo "## $name" >> "$SUMMARY"
  local t0=$SECONDS
  if timeout "$budget" "$PY" -m "benchmarks.$name" "$@" > "$OUT/$name.log" 2>&1; then
    grep '^|' "$OUT/$name.log" >> "$SUMMARY" || true
    echo "(${name}: $((SECONDS - t0)) s)" >> "$SUMMARY"
  else
    echo "**failed or over budget** (exit $?; log: $OUT/$name.log)" >> "$SUMMARY"
    tail -20 "$OUT/$name.log"
    FAILED=1
  fi
  echo >> "$SUMMARY"
}

FAILED=0
if [ "$TINY" = 1 ]; then
  step sweep_throughput 120 --tiny --out "$OUT/sweep_throughput.json"
  step vs_brax_apg 180 --tiny --agents apg,shac --out "$OUT/vs_brax_apg.json"
  step reverse_mode_ratio 120 --tiny --out "$OUT/reverse_mode_ratio.json"
  step mjx_float32_gradients 180 --starts 2 --horizon 4 --envs cartpole --json "$OUT/mjx_float32_gradients.json"
else
  step sweep_throughput 90 --ks 1,4,16,64,256 --iterations 30 --num-envs 32 --out "$OUT/sweep_throughput.json"
  step vs_brax_apg 240 --full --agents apg,ppo,shac --num-envs 1024 --out "$OUT/vs_brax_apg.json"
  step reverse_mode_ratio 45 --out "$OUT/reverse_mode_ratio.json"
  step mjx_float32_gradients 90 --starts 256 --horizon 128 --json "$OUT/mjx_float32_gradients.json"
fi
echo "summary: $SUMMARY"
exit $FAILED
