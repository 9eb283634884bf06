"""Every notebook runs top to bottom without a cell error, and is committed with its outputs.

Each notebook runs in a fresh kernel through `notebooks/run_all.py`'s `execute` (the code path that
produced the committed outputs), in memory: the committed files are not rewritten. The kernel
inherits this process's environment: offline (HF_HUB_OFFLINE=1 from conftest) and a user cache in a
temporary folder, shared by the notebooks so that the default model is converted once; it compiles
with XLA's optimisations, as users do (the rest of the suite skips them: conftest).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", NOTEBOOKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _run_all()
PATHS = run_all.notebooks()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("bertjax_cache"))


def test_the_studies_are_numbered_in_order():
    """The six studies of the analysis issue, fine-tuning (07), then the studies of the analysis-depth
    issue (08 steering and site gradients, 09 circuits, 10 head importance), then the encoder
    family's attention (11), probing (12) and the modern encoders' attention (13), one number
    each."""
    assert [p.name[:3] for p in PATHS][:12] == [f"{i:02d}_" for i in range(1, 13)]
    numbers = [int(p.name[:2]) for p in PATHS]  # later studies: one number each, in order
    assert numbers == sorted(set(numbers)) and all(p.name[2] == "_" for p in PATHS)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_top_to_bottom(path, cache, monkeypatch):
    committed = nbformat.read(path, as_version=4)
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), \
        f"{path.name} is not committed with its outputs: run notebooks/run_all.py"
    assert code[0].source.startswith("MODEL = "), "the first code cell sets MODEL"
    monkeypatch.setenv("BERTJAX_CACHE", cache)
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")  # compiled as users do (conftest)
    before = path.read_bytes()
    nb = run_all.execute(path)  # raises CellExecutionError on any cell error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    assert path.read_bytes() == before  # ran in memory, the committed file is untouched
