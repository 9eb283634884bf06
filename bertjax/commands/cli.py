"""The `bertjax` command line: one subcommand per module of `bertjax.commands`.

Every expected failure (a bad source, an existing OUT, bad input) ends with one line on stderr,
`bertjax: error: ...`, and a non-zero exit; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bertjax.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertjax", description="BERT in JAX: convert, inspect, "
                                     "fill masks, extract activations, fine-tune.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bertjax.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"bertjax.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bertjax: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertjax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
