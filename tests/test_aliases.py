"""The short module paths (`bertjax/_aliases.py`): every `bertjax.X` the README, the docs and the
notebooks name resolves, as a public name or as the module of its wing."""

from __future__ import annotations

import glob
import importlib
import os
import re

import pytest

import bertjax

ROOT = os.path.join(os.path.dirname(__file__), "..")
TEXTS = ["README.md", "docs/*.md", "notebooks/*.ipynb", "conversion/*.md"]


def named_paths() -> set[str]:
    found = set()
    for pattern in TEXTS:
        for path in glob.glob(os.path.join(ROOT, pattern)):
            with open(path, encoding="utf-8") as f:
                found |= set(re.findall(r"\bbertjax\.([a-z_]+)\b", f.read()))
    return found


def test_bertjax_attribution_imports_as_its_wing():
    import bertjax.attribution as short
    from bertjax.attribution import logit_attribution

    from bertjax.analysis import attribution

    assert short is attribution and logit_attribution is attribution.logit_attribution


@pytest.mark.parametrize("name", sorted(named_paths()))
def test_every_short_path_the_docs_name_resolves(name):
    if name in bertjax.__all__ or name.startswith("_"):
        return
    module = importlib.import_module(f"bertjax.{name}")
    assert getattr(bertjax, name) is module
