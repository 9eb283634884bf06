"""The docs site (docs/): built strictly, its generated pages complete, its code blocks run.

The build is Sphinx with -W -n (warnings are errors: a broken reference to bertjax, a docutils error
in a docstring, a page in no toctree, a public name without a docstring, an activation site without
a meaning all fail it). The ```python blocks of every page run in order in one scope on the offline
MiniLM (after the example of "Concepts", which loads the model); the ```bash blocks run as shown
from a scratch folder after the Quickstart (slow: the CLI and script commands run one after the
other in the test's process, any other line in bash).
"""

from __future__ import annotations

import logging
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

import bertjax

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DOCS = os.path.join(ROOT, "docs")
sys.path.insert(0, os.path.join(DOCS, "_ext"))
import bertjax_docs  # noqa: E402

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")

# the page whose first example loads the model every other page's examples use
SETUP_PAGE = "concepts.md"


def pages() -> list[str]:
    names = sorted(n for n in os.listdir(DOCS) if n.endswith(".md") and n != "README.md")
    return [SETUP_PAGE] + [n for n in names if n != SETUP_PAGE]


def blocks(page: str, language: str) -> list[tuple[int, str]]:
    """(line, code) of each ```language block of a page."""
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        text = f.read()
    return [(text[:m.start()].count("\n") + 1, m[1])
            for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)]


def test_the_docs_build_strictly(tmp_path):
    """The whole site from scratch (-E), warnings as errors, and every public name in the API page."""
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), DOCS, str(tmp_path / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr and "ERROR" not in result.stderr, result.stderr[-4000:]
    with open(tmp_path / "html" / "_generated" / "api.html", encoding="utf-8") as f:
        api = f.read()
    missing = [n for n in bertjax.__all__ if f'id="bertjax.{n}"' not in api]
    assert not missing, f"not in the API reference: {missing}"
    notebooks = sorted(n for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb"))
    rendered = os.listdir(tmp_path / "html" / "_generated" / "notebooks")
    assert [n for n in notebooks if n.replace(".ipynb", ".html") not in rendered] == []


def test_the_activation_page_has_every_site_with_its_shape_and_meaning():
    from bertjax.model import capture

    page = bertjax_docs.activations_page()
    for name in capture.ALL_NAMES:
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert capture.MEANINGS[name] in row and ", ".join(capture.SHAPES[name].split()) in row


def test_a_site_without_a_meaning_fails_the_build(monkeypatch, caplog):
    from bertjax.model import capture

    monkeypatch.setattr(capture, "MEANINGS", {k: v for k, v in capture.MEANINGS.items()
                                              if k != "attn.probs"})
    with caplog.at_level(logging.WARNING):
        bertjax_docs.activations_page()
    assert "activation site 'attn.probs' has no meaning" in caplog.text


def test_a_public_name_without_a_docstring_fails_the_build(monkeypatch, caplog):
    def undocumented(x):
        return x

    monkeypatch.setattr(bertjax, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(bertjax, "__all__", [*bertjax.__all__, "undocumented"])
    monkeypatch.setitem(bertjax._EXPORTS, "undocumented", "bertjax.model.forward")
    with caplog.at_level(logging.WARNING):
        page = bertjax_docs.api_page()
    assert ".. autofunction:: bertjax.undocumented" in page
    assert "public name bertjax.undocumented has no docstring" in caplog.text


def test_the_cli_page_has_every_command():
    from bertjax.commands import COMMANDS

    page = bertjax_docs.cli_page()
    for name in COMMANDS:
        assert f"## `bertjax {name.replace('_', '-')}`" in page
    assert page.count("usage: bertjax") == len(COMMANDS) + 1


def test_the_python_blocks_of_every_page_run(minilm_dir, tmp_path):
    """In page order after "Concepts", one scope, on the offline MiniLM converted here."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    folder = str(tmp_path / "minilm-jax")
    bertjax.convert_checkpoint(minilm_dir, folder)
    keys = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs")
    before = {k: getattr(jax.config, k) for k in keys}
    os.environ["BERTJAX_CACHE"] = str(tmp_path / "cache")  # enable_compilation_cache() in scale.md
    scope: dict = {}
    ran = 0
    try:
        for page in pages():
            for line, code in blocks(page, "python"):
                code = code.replace('"minilm-jax"', repr(folder))
                exec(compile(code, f"docs/{page}:{line}", "exec"), scope)
                ran += 1
    finally:
        del os.environ["BERTJAX_CACHE"]
        compilation_cache.reset_cache()
        for k, v in before.items():
            jax.config.update(k, v)
    assert ran >= 5
    assert {"stats", "patched", "ablated", "mesh"} <= set(scope)


def bash_pages() -> list[str]:
    """The pages with ```bash blocks beyond the Quickstart's install commands (what CI itself runs)."""
    return [page for page in pages()
            if any("python3 -m venv" not in code for _, code in blocks(page, "bash"))]


# a line bash must run itself: operators, redirections, expansions, continuations, compound commands
SHELL_LINE = re.compile(r"[|&;<>$`\\(){}*?]|^\s*(for|if|while|until|case|do|done|then|else|fi)\b")
# a block bash must run whole: a line that changes the shell's state for the next lines, or that
# spans several lines
WHOLE_BLOCK = re.compile(r"^\s*(for|if|while|until|case|function|cd|pushd|popd|export|unset|set|"
                         r"source|alias|\.)(\s|$)|^\s*\w+=|\\$|<<|[({]\s*$")


def in_process(line: str) -> list[str] | None:
    """The argv of a one-command line that can run in this process (`.venv/bin/bertjax ARGS`,
    `.venv/bin/python SCRIPT ARGS`, `.venv/bin/python -c CODE`), else None (bash runs it)."""
    argv = shlex.split(line, comments=True)
    unquoted = shlex.split(line, comments=True, posix=False)
    if not argv or any(SHELL_LINE.search(w) for w in unquoted if w[:1] not in "'\""):
        return None
    if argv[0] == ".venv/bin/bertjax" or (argv[0] == ".venv/bin/python" and len(argv) > 1
                                          and (argv[1] == "-c" or argv[1].endswith(".py"))):
        return argv
    return None


def run_in_process(argv: list[str], monkeypatch) -> int:
    """`bertjax ARGS` as `cli.main(ARGS)`, a script through runpy as `__main__` (its folder first
    on sys.path, its argv), `-c CODE` through exec; returns the exit status."""
    from bertjax.commands import cli

    try:
        if argv[0] == ".venv/bin/bertjax":
            assert os.access(argv[0], os.X_OK), "no .venv/bin/bertjax"  # the command as shown exists
            return cli.main(argv[1:])
        if argv[1] == "-c":
            exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
            return 0
        monkeypatch.setattr(sys, "argv", argv[1:])
        monkeypatch.syspath_prepend(os.path.dirname(os.path.abspath(argv[1])))
        runpy.run_path(argv[1], run_name="__main__")
        return 0
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1


@pytest.mark.slow
@pytest.mark.parametrize("page", bash_pages())
def test_the_bash_blocks_run_as_shown(page, tmp_path, monkeypatch, capsys):
    """A page's blocks in order, from one scratch folder holding the repository's scripts and a
    `.venv` (this interpreter's), as after the Quickstart. The `bertjax` and `python` commands run
    in this process, one after the other (`cli.main`, the script as `__main__`: no interpreter,
    JAX or torch start-up per command; the console script itself is tests/commands'); any other
    line, and a whole block with a compound command, runs in bash -euo pipefail."""
    for name in ("conversion", "notebooks"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    os.symlink(sys.prefix, tmp_path / ".venv")
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}

    def bash(code: str, where: str) -> None:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=900, check=False)
        assert result.returncode == 0, f"{where}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"

    for line, code in blocks(page, "bash"):
        if "python3 -m venv" in code:
            continue
        commands = [(line + i + 1, c) for i, c in enumerate(code.splitlines())
                    if c.strip() and not c.lstrip().startswith("#")]
        if any(WHOLE_BLOCK.search(c.rstrip()) for _, c in commands):
            bash(code, f"docs/{page}:{line}")
            continue
        for at, command in commands:
            argv = in_process(command)
            if argv is None:
                bash(command, f"docs/{page}:{at}")
                continue
            rc = run_in_process(argv, monkeypatch)
            out = capsys.readouterr()
            assert rc == 0, f"docs/{page}:{at}: exit {rc}\n{out.out[-2000:]}\n{out.err[-3000:]}"
