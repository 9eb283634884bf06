"""`tokenizer_for` finds a model's tokenizer as `bertjax.load` finds the model (folder, weights file,
hub id, offline package) or says which folder lacks which files; `load_pretrained` keeps a None
tokenizer for a folder without one. Hub calls are stubbed through the offline mode of conftest."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import bertjax
from bertjax.checkpoints import pretrained
from bertjax.checkpoints.readers import CheckpointError
from bertjax.checkpoints.sources import DEFAULT_MODEL


def _vocab_folder(folder) -> str:
    """A BERT tokenizer with an 8-word vocabulary saved in `folder` (vocab.txt, tokenizer_config)."""
    import transformers

    os.makedirs(folder, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]
    vocab = os.path.join(folder, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(words) + "\n")
    transformers.BertTokenizer(vocab=vocab).save_pretrained(folder)
    return str(folder)


def test_a_folder_and_a_weights_file_beside_the_tokenizer(tmp_path):
    folder = _vocab_folder(tmp_path / "m")
    open(os.path.join(folder, "model.safetensors"), "wb").close()
    for model in (folder, os.path.join(folder, "model.safetensors")):
        tok = bertjax.tokenizer_for(model)
        assert tok("the cat sat")["input_ids"] == [2, 5, 6, 7, 3]


def test_the_offline_default_model_by_hub_id_and_by_none(minilm_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path / "empty-cache"))  # not converted yet
    for model in (DEFAULT_MODEL, None):
        tok = bertjax.tokenizer_for(model)
        assert tok.convert_ids_to_tokens(tok("Paris")["input_ids"]) == ["[CLS]", "paris", "[SEP]"]
    assert os.path.samefile(pretrained._tokenizer_folder(DEFAULT_MODEL), minilm_dir)


def test_the_converted_default_in_the_cache_is_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path))
    cached = _vocab_folder(pretrained._cache_path(DEFAULT_MODEL))
    assert pretrained._tokenizer_folder(None) == cached


def test_a_folder_without_tokenizer_files_names_it_and_the_files(checkpoint_factory, tmp_path):
    src = checkpoint_factory("BertModel")  # save_pretrained of a model writes no tokenizer
    with pytest.raises(FileNotFoundError, match=rf"^no tokenizer files in {src}: looked for "
                                                rf"tokenizer\.json or vocab\.txt$"):
        bertjax.tokenizer_for(src)
    weights = os.path.join(src, "model.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"^no tokenizer files in {src} \(the folder of "
                                                rf"{weights}\): looked for"):
        bertjax.tokenizer_for(weights)


@pytest.mark.parametrize("model,match", [
    ("./minilm-jx", r"no such file or folder: \./minilm-jx"),
    ("nobody/no-such-bert", r"cannot get 'nobody/no-such-bert': offline mode is on"),
])
def test_a_typo_or_an_unknown_hub_id_is_an_error_not_none(model, match):
    with pytest.raises(CheckpointError, match=match):
        bertjax.tokenizer_for(model)


def test_load_pretrained_keeps_none_for_a_folder_without_tokenizer(checkpoint_factory, tmp_path):
    src = checkpoint_factory("BertModel")
    assert pretrained.load_pretrained(src).tokenizer is None
    folder = tmp_path / "with"
    shutil.copytree(src, folder)
    _vocab_folder(folder)
    assert pretrained.load_pretrained(str(folder)).tokenizer("the")["input_ids"] == [2, 5, 3]


def test_has_mlm_head_from_the_names_of_every_format(checkpoint_factory, tmp_path):
    from flax import serialization

    from bertjax.checkpoints.checkpoint import PARAMS_FILE, convert_checkpoint

    assert pretrained._PARAMS_FILE == PARAMS_FILE
    for model_class, want in (("BertForMaskedLM", True), ("BertForPreTraining", True),
                              ("BertModel", False), ("BertForSequenceClassification", False)):
        for safe in (True, False):
            src = checkpoint_factory(model_class, safe=safe)
            assert pretrained.has_mlm_head(src) is want, (model_class, safe)
        out = tmp_path / model_class
        convert_checkpoint(src, out)
        assert pretrained.has_mlm_head(str(out)) is want, model_class
    # transformers 4.x FlaxBertForMaskedLM: {"params": {"bert": ..., "cls": ...}}
    leaf = np.zeros(3, np.float32)
    tree = {"params": {"bert": {"embeddings": {"x": leaf}},
                       "cls": {"predictions": {"transform": {"dense": {"kernel": leaf}}}}}}
    folder = tmp_path / "flax4"
    folder.mkdir()
    (folder / PARAMS_FILE).write_bytes(serialization.to_bytes(tree))
    assert pretrained.has_mlm_head(str(folder))
    assert pretrained.weight_names(str(folder / PARAMS_FILE)) == [
        "params/bert/embeddings/x", "params/cls/predictions/transform/dense/kernel"]
    (folder / PARAMS_FILE).write_bytes(serialization.to_bytes(tree)[:40])
    with pytest.raises(CheckpointError, match=r"cannot read .*flax_model\.msgpack: corrupted or "
                                              r"truncated msgpack"):
        pretrained.has_mlm_head(str(folder))
