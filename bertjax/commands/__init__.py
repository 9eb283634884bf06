"""The `bertjax` subcommands, one module each with `register(subparsers)` setting `func`."""

# Module names under bertjax.commands, in the order `bertjax --help` lists them.
COMMANDS = ("convert", "inspect", "fill_mask", "extract", "finetune")
