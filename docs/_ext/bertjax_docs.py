"""The generated pages of the bertjax docs, written into docs/_generated/ when a build starts.

One source of truth for each: the activation sites from `bertjax.model.capture` (its names, SHAPES,
MEANINGS and, where the code has them, the families' own name lists), the CLI from the argparse
parsers of `bertjax.commands`, the API reference from `bertjax.__all__`, the notebooks from
`notebooks/` as committed (outputs included; myst-nb renders them without executing). A public name
without a docstring, or a site without a meaning, is a build warning (an error under -W).
"""

from __future__ import annotations

import importlib
import inspect
import os
import shutil

from sphinx.util import logging

logger = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)
ROOT = os.path.dirname(DOCS)
OUT = os.path.join(DOCS, "_generated")

WINGS = {"model": "The model", "checkpoints": "Checkpoints", "analysis": "Analysis",
         "scale": "Scale", "training": "Training", "probing": "Probing", "commands": "Commands"}


def _write(path: str, text: str) -> None:
    """Writes only when the text changed (Sphinx then rebuilds only what changed)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


# --- activation sites -------------------------------------------------------------------------

def family_names() -> dict[str, tuple[str, ...]]:
    """{family: its activation names}, from the code's own per-family function when it has one
    (`capture.model_names(config, ...)` over `model.families.FAMILIES`), else BERT's names."""
    from bertjax.model import capture

    model_names = getattr(capture, "model_names", None)
    try:
        families = importlib.import_module("bertjax.model.families").FAMILIES
    except ImportError:
        families = None
    if model_names is None or families is None:
        return {"bert": tuple(capture.ALL_NAMES)}
    from bertjax.model.config import BertConfig

    out = {}
    for family in families:
        config = BertConfig.from_dict({"model_type": family, "vocab_size": 11, "hidden_size": 8,
                                       "num_hidden_layers": 1, "num_attention_heads": 2,
                                       "intermediate_size": 16, "max_position_embeddings": 16})
        out[family] = tuple(model_names(config, has_pooler=True, has_mlm=True))
    return out


def activations_page() -> str:
    from bertjax.model import capture

    names = list(getattr(capture, "EVERY_NAME", capture.ALL_NAMES))
    meanings = getattr(capture, "MEANINGS", {})
    per_family = family_names()
    layer_names = set(capture.LAYER_NAMES)
    lines = [
        "# Activation sites",
        "",
        "Generated from `bertjax.model.capture` when the docs are built (its `SHAPES` and `MEANINGS`,",
        "and the per-family name lists): the one table `capture=\"all\"` reads, so it cannot drift.",
        "",
        "Axis letters: B batch, S query positions, T key positions, D hidden, E embedding size (D",
        "where the family has no projection), N heads, H head size, I intermediate, V vocabulary,",
        "L layers, C labels. Per-layer names are stacked over layers on axis 0 (`[L, ...]`, or",
        "`[len(layers), ...]` with a layer selection, see {doc}`../concepts`). `pooler.out` and the",
        "head logits exist only when the model has that head.",
        "",
        "| name | shape | per layer | families | what |",
        "|---|---|---|---|---|",
    ]
    everyone = set(per_family)
    for name in names:
        meaning = meanings.get(name)
        if not meaning:
            logger.warning(f"activation site {name!r} has no meaning in bertjax.model.capture.MEANINGS")
            meaning = ""
        have = [f for f, ns in per_family.items() if name in ns]
        if set(have) == everyone:
            fams = "all" if len(everyone) > 1 else ", ".join(have)
        elif have:
            fams = ", ".join(have)
        else:
            fams = "with its head"
        shape = capture.SHAPES.get(name, "")
        lines.append(f"| `{name}` | [{', '.join(shape.split())}] | {'yes' if name in layer_names else ''} "
                     f"| {fams} | {meaning.replace('|', '/')} |")
    lines.append("")
    return "\n".join(lines)


# --- the command line --------------------------------------------------------------------------

def cli_page() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width, a stable page
    from bertjax.commands.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    lines = ["# Command line reference", "",
             "Generated from the argparse parsers of `bertjax.commands` when the docs are built: each",
             "section is exactly what `bertjax COMMAND --help` prints. Worked examples are in",
             "{doc}`../cli`.", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in subparsers.choices.items():
        lines += [f"## `bertjax {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


# --- the API reference -------------------------------------------------------------------------

def _has_docstring(obj) -> bool:
    doc = obj.__doc__
    if not doc or not doc.strip():
        return False
    name = getattr(obj, "__name__", "")
    return not (inspect.isclass(obj) and doc.startswith(f"{name}("))  # a dataclass's generated one


def api_page() -> str:
    import bertjax

    exports = bertjax._EXPORTS
    by_wing: dict[str, list[str]] = {}
    for name in bertjax.__all__:
        wing = exports[name].split(".")[1]
        by_wing.setdefault(wing, []).append(name)
    lines = ["API reference", "=============", "",
             "Every name in ``bertjax.__all__``, generated from the docstrings (``import bertjax``;",
             "each name is imported on first use). The modules of each wing hold more; their",
             "docstrings are the reference for those.", ""]
    for wing in sorted(by_wing, key=lambda w: list(WINGS).index(w) if w in WINGS else 99):
        title = WINGS.get(wing, wing)
        lines += [title, "-" * len(title), ""]
        for name in by_wing[wing]:
            obj = getattr(bertjax, name)
            if inspect.isclass(obj) or callable(obj):
                if not _has_docstring(obj):
                    logger.warning(f"public name bertjax.{name} has no docstring")
                kind = "autoclass" if inspect.isclass(obj) else "autofunction"
                lines.append(f".. {kind}:: bertjax.{name}")
                if inspect.isclass(obj):
                    lines.append("   :members:")
            else:
                source = exports[name].replace(":", ".").rsplit(".", 1)[0]
                lines += [f".. py:data:: bertjax.{name}", "",
                          f"   Defined in ``{source}``; its value: ``{_short(obj)}``."]
            lines.append("")
    related = related_classes(bertjax)
    if related:
        lines += ["Classes the API hands back", "--------------------------", "",
                  "Not exported by name, documented here because the functions above take or return",
                  "them.", ""]
        for path in related:
            lines += [f".. autoclass:: {path}", "   :members:", ""]
    return "\n".join(lines)


def related_classes(bertjax) -> list[str]:
    """Dotted paths of the bertjax classes named in the annotations of public functions (and of
    the classes those name, transitively) that `__all__` does not export."""
    import re

    exported = {id(getattr(bertjax, n)) for n in bertjax.__all__}
    seen: dict[str, object] = {}
    todo = [getattr(bertjax, n) for n in bertjax.__all__]
    while todo:
        obj = todo.pop()
        funcs = [obj] if not inspect.isclass(obj) else [
            m for m in vars(obj).values() if inspect.isfunction(m) and not m.__name__.startswith("_")]
        for f in funcs:
            if not callable(f):
                continue
            try:
                sig = inspect.signature(f)
            except (TypeError, ValueError):
                continue
            module = importlib.import_module(f.__module__) if getattr(f, "__module__", None) else None
            anns = [sig.return_annotation] + [p.annotation for p in sig.parameters.values()]
            for ann in anns:
                for word in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", ann if isinstance(ann, str) else ""):
                    cls = getattr(module, word, None)
                    if (inspect.isclass(cls) and cls.__module__.startswith("bertjax.")
                            and id(cls) not in exported):
                        path = f"{cls.__module__}.{cls.__qualname__}"
                        if path not in seen:
                            seen[path] = cls
                            todo.append(cls)
    for path, cls in seen.items():
        if not _has_docstring(cls):
            logger.warning(f"{path} (handed back by the public API) has no docstring")
    return sorted(seen)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:297] + "..."


# --- notebooks ---------------------------------------------------------------------------------

def copy_notebooks() -> list[str]:
    src = os.path.join(ROOT, "notebooks")
    dst = os.path.join(OUT, "notebooks")
    os.makedirs(dst, exist_ok=True)
    names = sorted(n for n in os.listdir(src) if n.endswith(".ipynb"))
    for stale in set(os.listdir(dst)) - set(names) - {"index.md"}:
        os.remove(os.path.join(dst, stale))
    for n in names:
        a, b = os.path.join(src, n), os.path.join(dst, n)
        if not os.path.exists(b) or os.path.getmtime(a) > os.path.getmtime(b):
            shutil.copy2(a, b)
    return names


def notebooks_page(names: list[str]) -> str:
    lines = ["# Notebooks", "",
             "One study each, rendered from the outputs committed in `notebooks/` (the docs build",
             "does not run them; `tests/test_notebooks.py` does, and `notebooks/run_all.py`",
             "re-executes and saves them).", "", "```{toctree}", ":maxdepth: 1", ""]
    lines += [n[: -len(".ipynb")] for n in names]
    lines += ["```", ""]
    return "\n".join(lines)


def generate(app=None) -> None:
    _write(os.path.join(OUT, "activations.md"), activations_page())
    _write(os.path.join(OUT, "cli_reference.md"), cli_page())
    _write(os.path.join(OUT, "api.rst"), api_page())
    _write(os.path.join(OUT, "notebooks", "index.md"), notebooks_page(copy_notebooks()))


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
