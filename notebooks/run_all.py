"""Executes every notebooks/*.ipynb in order and saves each with its outputs.

    .venv/bin/python notebooks/run_all.py            # all notebooks
    .venv/bin/python notebooks/run_all.py 03 04      # only those whose name starts with 03 or 04

Each notebook runs top to bottom in a fresh kernel of the current interpreter (jupyter_client maps
the "python3" kernel's `python` to sys.executable), with the notebooks folder as working directory.
A notebook that fails is not written (the error is reported and the exit status is 1); a good one is
written to a temporary name and renamed, so no half-written notebook is left. Timing metadata is not
recorded, so re-running an unchanged notebook changes only its outputs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def notebooks(prefixes: list[str] | None = None) -> list[Path]:
    """The notebooks of this folder in name order, optionally those starting with a prefix."""
    paths = sorted(HERE.glob("*.ipynb"))
    return [p for p in paths if not prefixes or any(p.name.startswith(x) for x in prefixes)]


# tqdm warns on import in a kernel without ipywidgets; the warning would end up in the outputs.
QUIET = {"PYTHONWARNINGS": "ignore:IProgress not found"}


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Runs one notebook top to bottom; returns it with its outputs (raises CellExecutionError).

    The kernel gets this process's environment (e.g. BERTJAX_CACHE, HF_HUB_OFFLINE) plus QUIET.
    """
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env={**os.environ, **QUIET})
    return nb


def save(nb: nbformat.NotebookNode, path: Path) -> None:
    """Writes the notebook atomically (temp file in the same folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".ipynb.tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    failed = []
    for path in notebooks(sys.argv[1:] if argv is None else argv):
        start = time.perf_counter()
        try:
            save(execute(path), path)
        except CellExecutionError as e:
            failed.append(path.name)
            print(f"FAILED {path.name}:\n{str(e)[-2000:]}", file=sys.stderr)
            continue
        print(f"{path.name}: ran and saved in {time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
