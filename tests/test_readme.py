"""The README's tour runs as written (on the offline MiniLM, converted here); the README stays short."""

from __future__ import annotations

import os
import re

import bertjax

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_tour_runs(minilm_dir, tmp_path, monkeypatch):
    """The tour (load, capture, one edit, one view) as written, from a scratch folder."""
    tour = python_blocks()[0]
    assert 'bertjax.load("minilm-jax")' in tour
    folder = str(tmp_path / "minilm-jax")
    bertjax.convert_checkpoint(minilm_dir, folder)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(tour.replace('"minilm-jax"', repr(folder)), "README.md", "exec"), scope)
    out, config = scope["out"], scope["config"]
    B, S = scope["ids"].shape
    assert out.last_hidden_state.shape == (B, S, config.hidden_size)
    assert out.acts["attn.probs"].shape == (config.num_hidden_layers, B,
                                            config.num_attention_heads, S, S)
    assert set(out.acts) == {"attn.probs", "layer.out", "embed.word", "embed.position",
                             "embed.token_type", "embed.sum", "embed.out", "embed.ln_std"}
    assert float(scope["change"]) > 1e-4  # the ablated head changes the output
    assert os.path.getsize(tmp_path / "tour_view.html") > 1000


def test_the_readme_is_short_and_its_outputs_git_ignored():
    """At most 250 lines; what the tour writes is in .gitignore."""
    import shutil
    import subprocess

    import pytest

    with open(README) as f:
        text = f.read()
    assert text.count("\n") <= 250
    written = re.findall(r'save_\w+\("([^"]+)"', text)
    assert written == ["tour_view.html"]
    root = os.path.join(os.path.dirname(__file__), "..")
    if shutil.which("git") is None or not os.path.exists(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=root,
                             capture_output=True, text=True, check=False).stdout.split()
    assert ignored == written


def test_the_quickstart_outputs_are_git_ignored():
    """What the quickstart commands write (the convert OUT, the --html page) is in .gitignore."""
    import shutil
    import subprocess

    import pytest

    with open(README) as f:
        quickstart = f.read().split("## Quickstart")[1].split("\n## ")[0]
    outputs = [re.search(r"bertjax convert \S+ (\S+)", quickstart)[1] + "/",
               re.search(r"--html (\S+)", quickstart)[1]]
    assert outputs == ["minilm-jax/", "head_view.html"]
    root = os.path.join(os.path.dirname(__file__), "..")
    if shutil.which("git") is None or not os.path.exists(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *outputs], cwd=root,
                             capture_output=True, text=True, check=False).stdout.split()
    assert ignored == outputs
