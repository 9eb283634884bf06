"""Short module paths mapped to their wings: every module path of the flat layout before the wings,
plus `bertjax.attribution`, `bertjax.circuits` and `bertjax.pruning` (the names the analysis docs use).

`import bertjax.train` and `from bertjax.interventions import ...` keep working: a finder on
`sys.meta_path` answers each old name with the module of its wing (the same object, not a copy).
`bertjax.attention`, `bertjax.embeddings` and `bertjax.encoder` are not aliased: those names are the
public functions of the contract, and `bertjax.model` is now the model wing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

ALIASES = {
    "attribution": "bertjax.analysis.attribution",
    "buckets": "bertjax.scale.buckets",
    "capture": "bertjax.model.capture",
    "checkpoint": "bertjax.checkpoints.checkpoint",
    "checks": "bertjax.model.checks",
    "circuits": "bertjax.analysis.circuits",
    "cli": "bertjax.commands.cli",
    "compile_cache": "bertjax.scale.compile_cache",
    "config": "bertjax.model.config",
    "convert": "bertjax.checkpoints.convert",
    "datasets": "bertjax.training.datasets",
    "extract": "bertjax.scale.extract",
    "files": "bertjax.checkpoints.files",
    "fill_mask": "bertjax.analysis.fill_mask",
    "finetune": "bertjax.training.finetune",
    "heads": "bertjax.model.heads",
    "interventions": "bertjax.analysis.interventions",
    "layer": "bertjax.model.layer",
    "nn": "bertjax.model.nn",
    "params": "bertjax.model.params",
    "plots": "bertjax.analysis.plots",
    "pretrained": "bertjax.checkpoints.pretrained",
    "pruning": "bertjax.analysis.pruning",
    "readers": "bertjax.checkpoints.readers",
    "reductions": "bertjax.analysis.reductions",
    "sharding": "bertjax.scale.sharding",
    "sources": "bertjax.checkpoints.sources",
    "store": "bertjax.scale.store",
    "tables": "bertjax.analysis.tables",
    "train": "bertjax.training.train",
    "verify": "bertjax.checkpoints.verify",
    "views": "bertjax.analysis.views",
}


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, package: str):
        self.prefix = package + "."

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.prefix) and fullname[len(self.prefix):] in ALIASES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(ALIASES[spec.name[len(self.prefix):]])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # the import system stamped the alias spec on the real module: give it back its own
        module.__spec__ = module.__spec__.loader_state


def install(package: str) -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder(package))
