"""The `bertjax` command line as a whole: --version, a help text and a shown default for every
option of every command, and the refusals that come before JAX is imported (start-up)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata

import pytest

import bertjax
from bertjax.commands.cli import HelpFormatter, build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"bertjax {bertjax.__version__}\n"
    assert metadata.version("bertjax") == bertjax.__version__  # pyproject.toml and __init__ agree


@pytest.mark.parametrize("command", ["convert", "inspect", "fill-mask", "extract", "finetune"])
def test_every_argument_has_help_and_every_default_is_shown(command):
    parser = subcommands()[command]
    assert parser.formatter_class is HelpFormatter
    text = " ".join(parser.format_help().split())  # one line: defaults may wrap
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.metavar
        assert action.help and action.help.strip(), f"{command} {name} has no help"
        if action.default is not None and action.default is not False:
            shown = " ".join(HelpFormatter("bertjax")._get_help_string(action).split())
            assert "default" in shown, f"{command} {name}: default {action.default!r} not shown"
            assert shown % {"default": action.default} in text


def test_defaults_as_printed(capsys):
    help = {name: " ".join(p.format_help().split()) for name, p in subcommands().items()}
    assert "halve the file) (default: float32)" in help["convert"]
    assert "SRC what to convert: a hub id" in help["convert"]
    assert "OUT the folder to write" in help["convert"]
    assert "head init, shuffling, masking, dropout (default: 0)" in help["finetune"]
    assert "predictions per mask (default: 5)" in help["fill-mask"]
    assert "(default: None)" not in " ".join(help.values())


BEFORE_JAX = """
import sys
from bertjax.commands.cli import main
rc = main(sys.argv[1:])
print("RESULT", rc, sorted({"jax", "torch", "transformers", "flax", "ml_dtypes"} & set(sys.modules)))
"""


def _run(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BEFORE_JAX, *map(str, argv)], check=False,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_refusals_come_before_jax_is_imported(checkpoint_factory, tmp_path):
    """An existing OUT, a missing source, a bare weights file without config and fill-mask on a
    model without an MLM head each fail with one line, in a process that never imported JAX."""
    bare = checkpoint_factory("BertModel")
    (tmp_path / "out").mkdir()
    (tmp_path / "w.safetensors").write_bytes(open(os.path.join(bare, "model.safetensors"),
                                                  "rb").read())
    cases = [
        (["convert", bare, tmp_path / "out"], f"{tmp_path / 'out'} already exists; pass --force "
                                              f"to replace it"),
        (["convert", "./no/such", tmp_path / "new"], "no such file or folder: ./no/such"),
        (["convert", tmp_path / "w.safetensors", tmp_path / "new"],
         f"{tmp_path / 'w.safetensors'} has no config.json beside it; pass --config PATH"),
        (["fill-mask", "a [MASK]", "--model", bare], f"{bare} has no MLM head"),
    ]
    for argv, message in cases:
        proc = _run(*argv)
        assert proc.stdout.splitlines()[-1] == "RESULT 2 []", proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"bertjax: error: {message}") and \
            proc.stderr.count("\n") == 1, proc.stderr
        assert "=True" not in proc.stderr and "config=" not in proc.stderr
    assert not (tmp_path / "new").exists()


def _make_tiny_checkpoint():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "..", "conversion", "make_tiny_checkpoint.py")
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_tiny_checkpoint_path(tmp_path, capsys):
    """make_tiny_checkpoint.py my-bert, then `convert ./my-bert bert-jax`, `inspect --model
    bert-jax` and `fill-mask --model bert-jax`: the tokenizer comes with the tiny checkpoint."""
    import bertjax

    make = _make_tiny_checkpoint()
    src, out = tmp_path / "my-bert", tmp_path / "bert-jax"
    assert make.main([str(src), "--head", "mlm"]) == 0
    assert (src / "vocab.txt").read_text().split() == make.vocabulary()
    assert main(["convert", str(src), str(out)]) == 0
    tok = bertjax.tokenizer_for(out)
    ids = tok("The cat sat on the mat because it was tired.")["input_ids"]
    assert len(ids) == 13 and tok.unk_token_id not in ids  # every word of it in the vocabulary
    assert tok.convert_ids_to_tokens(tok("Zebra!")["input_ids"]) == [
        "[CLS]", "z", "##e", "##b", "##r", "##a", "!", "[SEP]"]  # any word: its letters
    capsys.readouterr()
    assert main(["inspect", "Paris is lovely.", "--capture", "attn.probs,layer.out",
                 "--model", str(out)]) == 0
    assert "tokens (6): [CLS] paris is lovely . [SEP]" in capsys.readouterr().out
    assert main(["fill-mask", "Paris is the [MASK] of France.", "--model", str(out), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "[MASK] 1 of 1 (token position 4):" and len(lines) == 4
    assert make.main([str(tmp_path / "bare"), "--no-tokenizer"]) == 0
    assert not os.path.exists(tmp_path / "bare" / "vocab.txt")
