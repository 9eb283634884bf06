"""The commands wing: the `bertjax` command line, one module per subcommand with `register(subparsers)`
setting `func`. Each imports what it needs inside `run`, so `bertjax --help` loads no JAX.

May import: anything of bertjax.
"""

# Module names under bertjax.commands, in the order `bertjax --help` lists them.
COMMANDS = ("convert", "export", "inspect", "fill_mask", "extract", "finetune", "probe")
