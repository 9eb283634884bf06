"""The README's Python API example runs as written (on the offline MiniLM, converted here)."""

from __future__ import annotations

import os
import re

import bertjax

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_the_api_example_runs(minilm_dir, tmp_path):
    example = python_blocks()[0]
    assert 'bertjax.load("minilm-jax")' in example
    folder = str(tmp_path / "minilm-jax")
    bertjax.convert_checkpoint(minilm_dir, folder)
    scope: dict = {}
    exec(compile(example.replace('"minilm-jax"', repr(folder)), "README.md", "exec"), scope)
    out, config = scope["out"], scope["config"]
    B, S = scope["batch"]["input_ids"].shape
    assert out.last_hidden_state.shape == (B, S, config.hidden_size)
    assert out.acts["attn.probs"].shape == (config.num_hidden_layers, B,
                                            config.num_attention_heads, S, S)
    assert set(out.acts) == {"attn.probs", "layer.out", "embed.word", "embed.position",
                             "embed.token_type", "embed.sum", "embed.out", "embed.ln_std"}


def test_the_analysis_example_runs(minilm_dir, tmp_path):
    """The attention_stats / attention_table block, after the API example (whose names it uses)."""
    api, analysis = python_blocks()[0], next(b for b in python_blocks() if "attention_stats(" in b)
    folder = str(tmp_path / "minilm-jax")
    bertjax.convert_checkpoint(minilm_dir, folder)
    scope: dict = {}
    for block in (api, analysis):
        exec(compile(block.replace('"minilm-jax"', repr(folder)), "README.md", "exec"), scope)
    stats, mask = scope["stats"], scope["batch"]["attention_mask"]
    assert stats.entropy.shape == (6, 2, 12)
    table = scope["attention_table"](scope["out"].acts["attn.probs"], scope["tokens"], layer=3,
                                     head=5, batch=1, attention_mask=mask)
    assert list(table.index)[:3] == ["[CLS]", "paris", "is"] and len(table) == mask[1].sum()


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
