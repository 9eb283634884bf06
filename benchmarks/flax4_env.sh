#!/usr/bin/env bash
# Creates benchmarks/.venv-flax4: a separate virtual environment with transformers 4.x, the last
# major version that still ships FlaxBertModel (transformers 5 removed its Flax models), so that
# benchmarks/bench_forward.py can add a FlaxBertModel column. It is optional: without it the
# benchmark simply leaves that column out. torch is not needed there: the weights are handed over as
# a `flax_model.msgpack` folder, which FlaxBertModel reads directly.
#
# The same jax/jaxlib/flax as the main venv are pinned when they work with transformers 4.x, so that
# both columns run on the same XLA and the comparison measures the model code, not the compiler.
#
# Usage:  bash benchmarks/flax4_env.sh            (idempotent; re-run to repair)
#         PYTHON=python3.11 bash benchmarks/flax4_env.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-flax4"
python="${PYTHON:-python3.11}"
main_py="$here/../.venv/bin/python"
if [ -x "$main_py" ]; then
  jax_version="$("$main_py" -c 'import jax; print(jax.__version__)')"
  flax_version="$("$main_py" -c 'import flax; print(flax.__version__)')"
else
  jax_version="0.10.2"
  flax_version="0.12.8"
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "transformers>=4.40,<5" "jax==$jax_version" "jaxlib==$jax_version" \
  "flax==$flax_version" "numpy" "safetensors"
"$venv/bin/python" - <<'EOF'
import jax, flax, transformers
from transformers import FlaxBertModel  # noqa: F401  (fails loudly when the pins do not fit)
print(f"ok: transformers {transformers.__version__}, jax {jax.__version__}, flax {flax.__version__}")
EOF
