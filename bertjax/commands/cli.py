"""The `bertjax` command line: one subcommand per module of `bertjax.commands`.

Every expected failure (a bad source, an existing OUT, bad input) ends with one line on stderr,
`bertjax: error: ...`, and a non-zero exit; tracebacks are for bugs. Every `--help` shows the
defaults (`HelpFormatter`). Building the parser imports no JAX, torch or transformers: each command
imports what it needs when it runs, so `bertjax --help` and `--version` take a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bertjax.commands import COMMANDS


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to every option with a default, except None (no value), a flag's False,
    and options whose help already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        if action.default is None or action.default is False or "default" in help:
            return help
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """--version: `bertjax.__version__` (the package is imported already: no cost)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the bertjax version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import bertjax

        print(f"bertjax {bertjax.__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertjax", description="BERT in JAX: convert, inspect, "
                                     "fill masks, extract activations, fine-tune.",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"bertjax.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"bertjax.commands.{name}":
                raise
            continue
        module.register(subparsers)
    for command in subparsers.choices.values():
        command.formatter_class = HelpFormatter
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
