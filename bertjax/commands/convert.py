"""`bertjax convert SRC OUT`: a PyTorch BERT checkpoint into a bertjax folder."""

from __future__ import annotations

import argparse
import sys
import warnings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert PyTorch BERT weights into a bertjax (Flax) checkpoint folder",
        description="SRC is a Hugging Face model id, a model folder (config.json with "
                    "model.safetensors, pytorch_model.bin or a sharded *.index.json), or a single "
                    "weights file (with --config or a config.json beside it).")
    p.add_argument("src", metavar="SRC")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--config", help="config.json for a single weights file")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--strict", action="store_true",
                   help="refuse weights holding NaN or Inf (by default a warning names them)")
    p.add_argument("--verify", action="store_true",
                   help="after converting, compare with the PyTorch model (needs torch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertjax.checkpoints.checkpoint import convert_checkpoint
    from bertjax.checkpoints.convert import NonFiniteWeightsWarning

    if args.verify:  # fail before converting, not after
        from bertjax.checkpoints.verify import require_reference

        require_reference()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWeightsWarning)
        summary = convert_checkpoint(args.src, args.out, args.dtype, args.force, args.config,
                                     args.strict)
    for w in caught:
        if issubclass(w.category, NonFiniteWeightsWarning):
            print(f"bertjax: warning: {w.message} (--strict refuses such weights)", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    heads = [name for name, present in summary["heads"].items() if present]
    print(f"converted {summary['source']}")
    print(f"  {summary['parameters']:,} parameters, {summary['dtype']}, "
          f"{summary['layers']} layers x {summary['attention_heads']} attention heads, "
          f"hidden {summary['hidden_size']}; heads kept: {', '.join(heads) or 'none'}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    print(f"  wrote {summary['out']}")
    if args.verify:
        from bertjax.checkpoints.verify import verify_conversion

        return verify_conversion(summary["out"], args.src, args.config, summary["dtype"])
    return 0
