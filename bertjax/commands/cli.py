"""The `bertjax` command line: one subcommand per module of `bertjax.commands`.

Every expected failure (a bad source, an existing OUT, bad input) ends with one line on stderr,
`bertjax: error: ...`, and a non-zero exit; tracebacks are for bugs. Every `--help` shows the
defaults (`HelpFormatter`). Building the parser imports no JAX, torch or transformers: each command
imports what it needs when it runs, so `bertjax --help` and `--version` take a fraction of a second.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


def use_compilation_cache() -> str | None:
    """Turns JAX's persistent compilation cache on for this process, in
    `$BERTJAX_CACHE/jax-compilation-cache` (`bertjax.enable_compilation_cache`'s folder), so a
    command run again loads its programs instead of compiling them (a warm `bertjax inspect` compiles
    6). Set through JAX's environment variables, read when JAX is imported: no JAX import here.
    Off with BERTJAX_COMPILATION_CACHE=0; JAX_COMPILATION_CACHE_DIR set by the user wins; skipped
    when JAX is already imported (`main` called from Python: the caller's JAX settings stand).
    Returns the folder, or None when left off."""
    if (os.environ.get("BERTJAX_COMPILATION_CACHE", "1") == "0" or "jax" in sys.modules
            or os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        return None
    from bertjax.checkpoints.pretrained import cache_dir

    folder = os.path.join(cache_dir(), "jax-compilation-cache")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)  # the cache is code: private
    except OSError:
        return None  # an unwritable cache folder costs speed, never the command
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    return folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    use_compilation_cache()
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
