#!/usr/bin/env bash
# Creates benchmarks/.venv-tl: a separate virtual environment with TransformerLens 3.9.0 (the last
# release with HookedEncoder, BERT's hooked model), so that benchmarks/bench_capture.py can time it
# beside bertjax on the same weights. It is optional: without it the benchmark runs bertjax alone.
#
# torch is kept at the project's pin (the main venv's version, 2.13.0 without it), so that the TL
# column runs on the same PyTorch as the other benchmarks' PyTorch columns; transformers is pinned to
# the main venv's version when TransformerLens accepts it (it needs >= 5.9).
#
# Usage:  bash benchmarks/tl_env.sh            (idempotent; re-run to repair)
#         PYTHON=python3.11 bash benchmarks/tl_env.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-tl"
python="${PYTHON:-python3.11}"
main_py="$here/../.venv/bin/python"
[ -x "$main_py" ] || main_py="${MAIN_PYTHON:-}"
if [ -n "$main_py" ] && [ -x "$main_py" ]; then
  torch_version="$("$main_py" -c 'import torch; print(torch.__version__.split("+")[0])')"
  tf_version="$("$main_py" -c 'import transformers; print(transformers.__version__)')"
else
  torch_version="2.13.0"
  tf_version="5.24.0"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
# The CPU build of torch first (PyTorch's CPU index when a local wheel is not there), so that
# TransformerLens's dependency on torch is already met and pip does not pull the CUDA build.
"$venv/bin/pip" install --quiet "torch==$torch_version" \
  || "$venv/bin/pip" install --quiet "torch==$torch_version" \
       --index-url https://download.pytorch.org/whl/cpu
"$venv/bin/pip" install --quiet "transformer-lens==3.9.0" "torch==$torch_version" \
  "transformers==$tf_version" numpy
"$venv/bin/python" - <<'PYEOF'
import torch, transformers, transformer_lens
from transformer_lens import HookedEncoder  # noqa: F401  (fails loudly when the pins do not fit)
from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights  # noqa: F401
from importlib.metadata import version
print(f"ok: transformer-lens {version('transformer-lens')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PYEOF
