"""A warm `bertjax inspect`: the persistent compilation cache on by default, no torch for a tokenizer."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bertjax.commands import cli

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_tokenizer_for_imports_no_torch(minilm_dir):
    code = ("import sys, bertjax; tok = bertjax.tokenizer_for(sys.argv[1]); "
            "print(type(tok).__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, minilm_dir], capture_output=True, text=True,
                         timeout=300, check=True, cwd=ROOT).stdout.split()
    assert out == ["BertTokenizer", "False"]


def test_tokenizer_for_gives_what_autotokenizer_gives(minilm_dir):
    import transformers

    import bertjax

    for folder in (minilm_dir,):
        ours, auto = bertjax.tokenizer_for(folder), transformers.AutoTokenizer.from_pretrained(folder)
        assert type(ours) is type(auto)
        text = ("The cat sat on the mat.", "Paris is lovely.")
        assert ours(*text)["input_ids"] == auto(*text)["input_ids"]
        assert ours.all_special_ids == auto.all_special_ids


def test_the_cli_turns_the_compilation_cache_on_without_importing_jax(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path))
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "BERTJAX_COMPILATION_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delitem(sys.modules, "jax")  # as in a fresh `bertjax` process
    folder = cli.use_compilation_cache()
    assert folder == str(tmp_path / "jax-compilation-cache") == os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert os.stat(folder).st_mode & 0o077 == 0  # private: the cache is code
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("BERTJAX_COMPILATION_CACHE", "0")
    assert cli.use_compilation_cache() is None and "JAX_COMPILATION_CACHE_DIR" not in os.environ


@pytest.mark.slow
def test_a_second_inspect_loads_its_programs_from_the_cache(minilm_dir, tmp_path):
    env = {**os.environ, "BERTJAX_CACHE": str(tmp_path), "PYTHONPATH": ROOT}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    command = [sys.executable, "-m", "bertjax.commands.cli", "inspect", "the cat sat", "--model",
               minilm_dir]
    subprocess.run(command, env=env, capture_output=True, check=True, timeout=600)
    cached = os.listdir(tmp_path / "jax-compilation-cache")
    assert len(cached) >= 3
    env["JAX_LOGGING_LEVEL"] = "DEBUG"
    log = subprocess.run(command, env=env, capture_output=True, text=True, check=True, timeout=600).stderr
    assert "Persistent compilation cache hit" in log
    assert sorted(os.listdir(tmp_path / "jax-compilation-cache")) == sorted(cached)
