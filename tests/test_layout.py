"""The package layout: seven wings, each importing only the wings it may (see bertjax/__init__.py),
and the module paths of the flat layout before the wings still importable."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import bertjax
from bertjax import _aliases

PACKAGE = Path(bertjax.__file__).parent
# wing -> the wings it may import (itself always allowed)
ALLOWED = {
    "model": set(),
    "checkpoints": {"model"},
    "analysis": {"model", "checkpoints"},
    "scale": {"model", "checkpoints"},
    "probing": {"model", "checkpoints", "analysis", "scale"},
    "training": {"model", "checkpoints", "analysis", "scale", "probing"},
    "commands": {"model", "checkpoints", "analysis", "scale", "training", "probing"},
}


def imported_wings(path: Path) -> dict[str, int]:
    """bertjax wing -> first line importing it, for every import in the file (function bodies too).
    A bare `bertjax` import (the package's public names) counts as importing every wing."""
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "bertjax" else [f"bertjax.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use bertjax.<wing>...")
        for name in names:
            parts = name.split(".")
            if parts[0] != "bertjax":
                continue
            wing = parts[1] if len(parts) > 1 else "*"
            home = _aliases.ALIASES.get(wing, f"bertjax.{wing}")
            wings = set(ALLOWED) if wing == "*" else {home.split(".")[1]}
            for w in wings:
                found.setdefault(w, node.lineno)
    return found


def test_six_wings_and_a_small_init():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert entries == sorted([*ALLOWED, "__init__.py", "_aliases.py"]), entries
    for wing in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / wing / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"bertjax/{wing}/__init__.py needs its docstring"
    assert len((PACKAGE / "__init__.py").read_text().splitlines()) < 120


@pytest.mark.parametrize("wing", sorted(ALLOWED))
def test_wing_imports_only_what_it_may(wing):
    bad = []
    for path in sorted((PACKAGE / wing).rglob("*.py")):
        for other, line in imported_wings(path).items():
            if other != wing and other not in ALLOWED[wing]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports bertjax.{other}")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from bertjax.training.train import make_train_step\n")
    assert imported_wings(bad) == {"training": 2}
    bad.write_text("from bertjax import interventions\n")
    assert imported_wings(bad) == {"analysis": 1}


@pytest.mark.parametrize("old", sorted(_aliases.ALIASES))
def test_old_module_paths_are_the_same_modules(old):
    new = importlib.import_module(_aliases.ALIASES[old])
    assert importlib.import_module(f"bertjax.{old}") is new
    assert getattr(bertjax, old) is new
    assert new.__spec__.name == _aliases.ALIASES[old]  # the real module keeps its own identity


def test_public_api_resolves():
    for name in bertjax.__all__:
        assert getattr(bertjax, name) is not None, name
    # the part functions keep their names even once their modules are imported
    importlib.import_module("bertjax.model.attention")
    assert callable(bertjax.attention) and bertjax.attention.__name__ == "attention"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bertjax.nope  # noqa: B018


def test_cli_module_imports_no_jax():
    code = ("import sys, bertjax.commands.cli as c; c.build_parser(); "
            "print(sorted({'jax', 'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
