"""`bertjax export SRC OUT`: a model back into a transformers folder (config.json, model.safetensors,
the tokenizer), loadable by `transformers.AutoModel` and the matching `AutoModelFor...` class."""

from __future__ import annotations

import argparse
import json
import os

# finetune.json's task -> export task (`bertjax finetune` writes model/ beside finetune.json)
_FINETUNE_TASKS = {"classification": "classification", "tokens": "tokens", "mlm": "mlm"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a model back to a transformers (PyTorch) folder",
        description="SRC is a bertjax folder (from convert or finetune) or anything `bertjax.load` "
                    "reads. OUT gets config.json with `architectures`, model.safetensors in "
                    "transformers' names and the tokenizer files.")
    p.add_argument("src", metavar="SRC", help="the model: a bertjax folder, a model folder, a "
                                              "weights file or a hub id")
    p.add_argument("out", metavar="OUT", help="the folder to write; refused if it exists, unless "
                                              "--force")
    p.add_argument("--task", choices=("model", "mlm", "classification", "tokens", "pretraining"),
                   help="the transformers class (default: from finetune.json beside a "
                        "`bertjax finetune` model, else from the heads)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def finetune_task(src: str) -> str | None:
    """The task of a `bertjax finetune` run whose model/ folder `src` is, else None."""
    path = os.path.join(os.path.dirname(os.path.abspath(src)), "finetune.json")
    if not os.path.isdir(src) or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            task = json.load(f)["command"]["task"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return _FINETUNE_TASKS.get(task)


def run(args: argparse.Namespace) -> int:
    if os.path.lexists(args.out) and not args.force:
        raise FileExistsError(f"{os.path.abspath(args.out)} already exists; pass --force to "
                              f"replace it")
    from bertjax.checkpoints.checkpoint import read_checkpoint
    from bertjax.checkpoints.export import plan_export, write_export

    loaded = read_checkpoint(args.src)
    task = args.task or finetune_task(args.src)
    plan = plan_export(loaded.config, loaded.params, task)
    del loaded.params  # the plan holds the tensors now
    out = write_export(args.out, plan, loaded.source.folder, args.force)
    print(f"exported {loaded.source.origin} as {plan.architecture}")
    for note in plan.notes:
        print(f"  note: {note}")
    print(f"  wrote {out}")
    return 0
