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
source "$here/env_common.sh"
venv="$here/.venv-tl"
{ read -r torch_version; read -r tf_version; } < <(main_versions 2.13.0 5.24.0 -- \
  'import torch; print(torch.__version__.split("+")[0])' \
  'import transformers; print(transformers.__version__)')
make_venv "$venv"
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
