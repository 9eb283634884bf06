"""Converts a checkpoint and checks it against transformers' PyTorch BERT (`bertjax.checkpoints.verify`).

The same as `bertjax convert SRC OUT --verify`, into a temporary folder unless --out is given: it
prints the parity table (embeddings, every layer's hidden state and attention probabilities, the
pooler, MLM and classifier logits when present, MLM top-k agreement) and exits 0 when every output is
within tolerance, 1 when one is not. Needs torch and transformers.

Usage:
  python conversion/verify_parity.py SRC [--config config.json] [--dtype bfloat16] [--out OUT]
  python conversion/verify_parity.py sentence-transformers/all-MiniLM-L6-v2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from bertjax.checkpoints.checkpoint import convert_checkpoint
from bertjax.checkpoints.verify import require_reference, verify_conversion


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", metavar="SRC", help="hub id, model folder or weights file")
    parser.add_argument("--config", help="config.json for a single weights file")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--out", help="keep the converted folder here (replaced if it exists)")
    args = parser.parse_args(argv)
    try:
        require_reference()
        with tempfile.TemporaryDirectory(prefix="verify_parity-") as tmp:
            out = args.out or os.path.join(tmp, "converted")
            summary = convert_checkpoint(args.src, out, args.dtype, force=True, config=args.config)
            print(f"converted {summary['source']} ({summary['parameters']:,} parameters, "
                  f"{summary['dtype']})")
            return verify_conversion(out, args.src, args.config, summary["dtype"])
    except (ValueError, OSError) as e:
        print(f"verify_parity: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
