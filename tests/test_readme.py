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
