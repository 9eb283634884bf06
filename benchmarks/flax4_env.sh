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
source "$here/env_common.sh"
venv="$here/.venv-flax4"
{ read -r jax_version; read -r flax_version; } < <(main_versions 0.10.2 0.12.8 -- \
  'import jax; print(jax.__version__)' 'import flax; print(flax.__version__)')
make_venv "$venv"
"$venv/bin/pip" install --quiet "transformers>=4.40,<5" "jax==$jax_version" "jaxlib==$jax_version" \
  "flax==$flax_version" "numpy" "safetensors"
"$venv/bin/python" - <<'EOF'
import jax, flax, transformers
from transformers import FlaxBertModel  # noqa: F401  (fails loudly when the pins do not fit)
print(f"ok: transformers {transformers.__version__}, jax {jax.__version__}, flax {flax.__version__}")
EOF
