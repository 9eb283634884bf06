"""`bertjax inspect`: on a tiny checkpoint with a tokenizer and on the offline default model."""

from __future__ import annotations

import json
import re

import pytest
from conftest import make_checkpoint

from bertjax.commands.cli import main

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran", "."]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A tiny BertModel folder (V=101) with a vocab.txt, so that AutoTokenizer loads."""
    folder = tmp_path_factory.mktemp("tiny_tok")
    make_checkpoint(folder, "BertModel")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"w{i}" for i in range(101 - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return str(folder)


def test_inspect_tiny(tiny_model, tmp_path, capsys):
    page = tmp_path / "view.html"
    assert main(["inspect", "the cat sat on the mat", "--model", tiny_model, "--layer", "0",
                 "--head", "2", "--capture", "attn.probs,layer.out", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "tokens (8): [CLS] the cat sat on the mat [SEP]" in out
    assert re.search(r"attn.probs\s+\(4, 1, 3, 8, 8\)\s+float32", out)
    assert re.search(r"layer.out\s+\(4, 1, 8, 15\)", out) and "embed.out" not in out
    assert "attention, layer 0, head 2" in out and "the₂" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("cat ")]
    assert len(rows) == 1 and abs(sum(float(x) for x in rows[0][1:]) - 1.0) < 0.03
    assert page.exists() and "[CLS]" in page.read_text()
    data = re.search(r'<script type="application/json" id="[\w-]+-data">(.*?)</script>',
                     page.read_text(), re.S)
    assert json.loads(data.group(1))["head"] == 2  # the page opens with --head selected


def test_inspect_pair_defaults(tiny_model, capsys):
    assert main(["inspect", "the cat", "--pair", "a dog", "--model", tiny_model]) == 0
    out = capsys.readouterr().out
    assert "tokens (7): [CLS] the cat [SEP] a dog [SEP]" in out
    assert "attention, layer 3, mean over heads" in out  # default: the last layer
    assert re.search(r"attn.q\s+\(4, 1, 3, 7, 5\)", out) and "mlp.post" in out


@pytest.mark.parametrize("argv,message", [
    (["--layer", "4"], "layer 4 is out of range: the model has 4 layers"),
    (["--head", "3"], "head 3 is out of range: the model has 3 heads"),
    (["--capture", "attn.nope"], "unknown activation name 'attn.nope'"),
    (["the " * 20], "input_ids: sequence length 22 exceeds max_position_embeddings=13"),
])
def test_inspect_errors_are_one_line(tiny_model, capsys, argv, message):
    assert main(["inspect", "--model", tiny_model] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertjax: error: ") and message in err and err.count("\n") == 1


def test_inspect_no_tokenizer(checkpoint_factory, capsys):
    folder = checkpoint_factory("BertModel")
    assert main(["inspect", "--model", folder]) == 2
    assert "has no tokenizer files" in capsys.readouterr().err


def test_inspect_default_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path))
    assert main(["inspect", "--capture", "embed.out", "--layer", "-2"]) == 0
    out = capsys.readouterr().out
    assert "(6 layers x 12 heads, hidden 384)" in out
    assert "tokens (13): [CLS] the cat sat on the mat because it was tired . [SEP]" in out
    assert re.search(r"embed.out\s+\(1, 13, 384\)", out) and "attention, layer 4, mean" in out
    assert (tmp_path / "sentence-transformers--all-MiniLM-L6-v2").is_dir()
