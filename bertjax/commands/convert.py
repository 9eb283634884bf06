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
    p.add_argument("src", metavar="SRC",
                   help="what to convert: a hub id (e.g. bert-base-uncased), a model folder or a "
                        "weights file")
    p.add_argument("out", metavar="OUT",
                   help="the folder to write (config.json, flax_model.msgpack and the tokenizer "
                        "files); refused if it exists, unless --force")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype of the saved parameters (bfloat16 and float16 halve the file)")
    p.add_argument("--config", help="config.json for a single weights file")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument("--strict", action="store_true",
                   help="refuse weights holding NaN or Inf (by default a warning names them)")
    p.add_argument("--verify", action="store_true",
                   help="after converting, compare with the PyTorch model (needs torch)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    import os

    from bertjax.checkpoints.files import check_out
    from bertjax.checkpoints.sources import locate

    # What can be refused without JAX is refused before it is imported (seconds of start-up), and
    # before a hub id is downloaded; whether --force may replace an OUT that holds a local source
    # is left to convert_checkpoint, which names the source.
    check_out(args.out, args.force, flag="--force", ours=not os.path.exists(args.src))
    source = locate(args.src, args.config)
    if source.config is None:
        raise ValueError(f"{source.weights} has no config.json beside it; pass --config PATH")
    if args.verify:  # fail before converting, not after
        from bertjax.checkpoints.verify import require_reference

        require_reference()
    from bertjax.checkpoints.checkpoint import convert_checkpoint
    from bertjax.checkpoints.convert import NonFiniteWeightsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWeightsWarning)
        summary = convert_checkpoint(source, args.out, args.dtype, args.force, strict=args.strict)
    for w in caught:
        if issubclass(w.category, NonFiniteWeightsWarning):
            print(f"bertjax: warning: {w.message} (--strict refuses such weights)", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    heads = [name for name, present in summary["heads"].items() if present is True]
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
