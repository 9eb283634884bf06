"""`bertjax convert --verify`: the parity table against transformers' PyTorch BERT passes on tiny
checkpoints and on MiniLM, fails on tampered parameters, and says so in one line without torch."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from conftest import TINY
from test_convert import random_checkpoint

from bertjax.checkpoints.checkpoint import PARAMS_FILE, convert_checkpoint, load, write_msgpack
from bertjax.checkpoints.verify import VerifyError, compare, top_k_agreement, verify_conversion
from bertjax.commands.cli import main


def table_rows(text: str) -> dict[str, str]:
    """output name -> 'yes' / 'NO' from the printed parity table."""
    return {m.group(1).strip(): m.group(2) for m in
            re.finditer(r"^  (\S.*?)\s+\S+\s+(yes|NO)$", text, flags=re.MULTILINE)}


@pytest.fixture(scope="module")
def mlm(checkpoint_factory) -> str:
    return checkpoint_factory("BertForMaskedLM")


def test_cli_verify_passes_on_a_tiny_mlm(capsys, mlm, tmp_path):
    capsys.readouterr()
    assert main(["convert", mlm, str(tmp_path / "out"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "verify: bertjax vs transformers BertForMaskedLM (eager, eval) on random ids with " \
           "padding [B=3, S=12], float32 parameters" in out
    rows = table_rows(out)
    layers = {f"layer {i} {what}" for i in range(TINY["num_hidden_layers"])
              for what in ("hidden", "attention")}
    assert set(rows) == {"embeddings", "mlm logits"} | layers
    assert set(rows.values()) == {"yes"}
    assert re.search(r"mlm top-5 agreement 100\.0% \(top-1 100\.0%\) over \d+ real tokens", out)
    assert out.rstrip().endswith("verify: OK")


def test_verify_fails_on_tampered_parameters(capsys, mlm, tmp_path):
    out = tmp_path / "out"
    convert_checkpoint(mlm, out)
    _, params = load(out)
    params = {**params}
    layer = params["encoder"]["layer"]["1"]["intermediate"]["dense"]
    params["encoder"]["layer"]["1"]["intermediate"]["dense"] = {**layer, "bias": layer["bias"] + 1e-3}
    write_msgpack(str(out / PARAMS_FILE), params)
    capsys.readouterr()
    assert verify_conversion(str(out), mlm) == 1
    text = capsys.readouterr().out
    rows = table_rows(text)
    assert rows["layer 0 hidden"] == "yes" and rows["layer 1 hidden"] == "NO"
    assert "verify: FAILED, above tolerance: layer 1 hidden" in text


@pytest.mark.parametrize("case", ["untied-own-biases", "classifier-bfloat16"])
def test_verify_passes_on_other_heads(capsys, checkpoint_factory, tmp_path, case):
    """An untied decoder whose two biases differ (transformers 5 adds the decoder's own; every
    parameter random), and a classifier converted to bfloat16 (BERT's init, compared loosely with
    the float32 reference)."""
    if case == "untied-own-biases":
        src = random_checkpoint(tmp_path / "src", "BertForMaskedLM", tie_word_embeddings=False)
        args, title = [], "BertForMaskedLM"
    else:
        src = checkpoint_factory("BertForSequenceClassification", num_labels=4)
        args, title = ["--dtype", "bfloat16"], "BertForSequenceClassification"
    capsys.readouterr()
    assert main(["convert", src, str(tmp_path / "out"), "--verify", *args]) == 0
    out = capsys.readouterr().out
    assert f"transformers {title} (eager, eval)" in out and out.rstrip().endswith("verify: OK")
    if args:
        assert "bfloat16 parameters, compared loosely with the float32 reference" in out
        assert table_rows(out)["classifier logits"] == "yes"


def test_verify_passes_on_minilm(capsys, minilm_dir, tmp_path):
    convert_checkpoint(minilm_dir, tmp_path / "minilm")
    capsys.readouterr()
    assert verify_conversion(str(tmp_path / "minilm"), minilm_dir) == 0
    out = capsys.readouterr().out
    assert "transformers BertModel (eager, eval) on tokenized sentences" in out
    rows = table_rows(out)
    assert len(rows) == 1 + 2 * 6 + 1 and set(rows.values()) == {"yes"}


def test_verify_without_torch_is_one_line_and_converts_nothing(capsys, mlm, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    capsys.readouterr()
    assert main(["convert", mlm, str(tmp_path / "out"), "--verify"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"bertjax: error: --verify needs torch and transformers \(.*torch.*\); "
                        r"install 'bertjax\[torch\]' or leave out --verify\n", err), err
    assert not os.path.exists(tmp_path / "out")


def test_verify_needs_the_pytorch_weights(mlm, tmp_path):
    convert_checkpoint(mlm, tmp_path / "out")
    with pytest.raises(VerifyError, match=r"--verify compares with the PyTorch weights, and .*out/"
                                          r"flax_model\.msgpack is a Flax msgpack file"):
        verify_conversion(str(tmp_path / "out"), str(tmp_path / "out"))


def test_compare_and_top_k():
    ref = np.array([[1.0, -2.0], [3.0, 4.0]])
    assert compare("x", ref + 5e-5, ref, loose=False).ok
    assert not compare("x", ref + 2e-4, ref, loose=False).ok
    assert compare("x", ref * 1.04, ref, loose=True).ok and not compare("x", ref * 1.1, ref, True).ok
    row = compare("x", ref[0], ref, loose=False)
    assert not row.ok and row.name == "x (shape (2,) vs (2, 2))"
    logits = np.array([[[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]]])
    shared, top1 = top_k_agreement(logits, logits[:, ::-1], np.array([[1, 1]]), k=2)
    assert (shared, top1) == (0.0, 0.0)
    shared, top1 = top_k_agreement(logits, logits, np.array([[1, 0]]), k=2)
    assert (shared, top1) == (1.0, 1.0)
