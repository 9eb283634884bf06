"""The checkpoint folder: save -> load bit-exact, the msgpack file byte for byte flax's, transformers
4.x Flax layouts, atomic writes, and the refusals (existing OUT, OUT holding the source)."""

from __future__ import annotations

import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from conftest import TINY
from flax import serialization

import bertjax
from bertjax.checkpoints import checkpoint
from bertjax.checkpoints.checkpoint import (
    PARAMS_FILE,
    convert_checkpoint,
    load,
    read_checkpoint,
    save,
    write_msgpack,
)
from bertjax.checkpoints.readers import CheckpointError
from bertjax.model.config import BertConfig
from bertjax.model.params import Heads, flatten, param_shapes


def random_params(config: BertConfig, heads: Heads, dtype=np.float32, seed: int = 0) -> dict:
    """A tree of the contract's shapes, every leaf random (NumPy)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(dtype),
                                  param_shapes(config, heads))


def assert_same_bits(got: dict, want: dict) -> None:
    got, want = flatten(got), flatten(want)
    assert sorted(got) == sorted(want)
    for path in want:
        a, b = np.asarray(got[path]), np.asarray(want[path])
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"),
                                      err_msg=path)


@pytest.fixture(scope="module")
def mlm_dir(checkpoint_factory) -> str:
    return checkpoint_factory("BertForPreTraining")


@pytest.fixture(scope="module")
def converted(mlm_dir, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("converted") / "out"
    convert_checkpoint(mlm_dir, out)
    return str(out)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_save_load_round_trip_is_bit_exact(mlm_dir, tmp_path, dtype):
    want = read_checkpoint(mlm_dir, dtype=dtype).params
    convert_checkpoint(mlm_dir, tmp_path / "out", dtype=dtype)
    config, params = load(tmp_path / "out", dtype=dtype)
    assert config == BertConfig.from_json(os.path.join(mlm_dir, "config.json"))
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params))
    assert_same_bits(jax.tree_util.tree_map(np.asarray, params), want)


def test_folder_holds_exactly_the_contract_files(converted):
    assert sorted(os.listdir(converted)) == ["config.json", "flax_model.msgpack"]
    import transformers

    hf = transformers.BertConfig.from_json_file(os.path.join(converted, "config.json"))
    assert (hf.hidden_size, hf.num_attention_heads, hf.vocab_size) == (15, 3, 101)


def test_msgpack_is_byte_for_byte_flax_to_bytes(converted):
    _, params = load(converted)
    with open(os.path.join(converted, PARAMS_FILE), "rb") as f:
        assert f.read() == serialization.to_bytes(params)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16])
def test_streaming_writer_matches_to_bytes(tmp_path, monkeypatch, dtype):
    """Every header size msgpack picks, and flax's chunking of big arrays (a tiny chunk limit)."""
    config = BertConfig(**{**TINY, "vocab_size": 70000 // 15})
    params = random_params(config, Heads(pooler=True, mlm=True, classifier=True), dtype)
    params["encoder"]["layer"]["0"]["extra"] = {"one": np.ones((1,), dtype), "empty": {}}
    write_msgpack(str(tmp_path / "a.msgpack"), params)
    assert (tmp_path / "a.msgpack").read_bytes() == serialization.to_bytes(params)
    monkeypatch.setattr(serialization, "MAX_CHUNK_SIZE", 4096)
    write_msgpack(str(tmp_path / "b.msgpack"), params)
    data = (tmp_path / "b.msgpack").read_bytes()
    assert data == serialization.to_bytes(params)
    assert_same_bits(serialization.msgpack_restore(data), params)


def test_load_converts_hf_folders_and_bare_files_in_memory(mlm_dir, converted, tmp_path):
    _, want = load(converted)
    config, params = load(mlm_dir)
    assert_same_bits(params, want)
    shutil.copy(os.path.join(mlm_dir, "model.safetensors"), tmp_path / "weights.safetensors")
    config2, params2 = bertjax.load(tmp_path / "weights.safetensors", config=config)
    assert config2 == config
    assert_same_bits(params2, want)
    with pytest.raises(CheckpointError, match=r"weights\.safetensors has no config\.json beside it; "
                                              r"pass its config \(config=BertConfig"):
        load(str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match=r"dtype must be one of float32, bfloat16, float16, got "
                                         r"'float64'"):
        load(converted, dtype="float64")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_stacked_reads_the_layers_stacked(mlm_dir, converted, dtype):
    """stacked=True gives stack_layers' tree, bit for bit, from a converted and an HF folder, and
    the same forward."""
    config, per_layer = load(converted, dtype=dtype)
    want = bertjax.stack_layers(per_layer)
    for source in (converted, mlm_dir):
        _, params = load(source, dtype=dtype, stacked=True)
        assert "0" not in params["encoder"]["layer"]
        assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(params))
        assert_same_bits(params, want)
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) % config.vocab_size
    np.testing.assert_array_equal(bertjax.forward(params, ids, config).last_hidden_state,
                                  bertjax.forward(per_layer, ids, config).last_hidden_state)


def test_save_of_stacked_params_writes_the_per_layer_folder(converted, tmp_path):
    config, params = load(converted, stacked=True)
    save(tmp_path / "again", config, params)
    assert ((tmp_path / "again" / PARAMS_FILE).read_bytes()
            == open(os.path.join(converted, PARAMS_FILE), "rb").read())


def test_to_device_empties_the_tree_and_copies_memory_it_does_not_own():
    """Leaves are moved out of the NumPy tree; an array that is a view of memory someone else
    holds is copied, so changing that memory later cannot change the parameters."""
    base = np.arange(12, dtype=np.float32)
    owned = np.ones((3, 2), np.float32)
    tree = {"encoder": {"layer": {"0": {"w": owned}, "1": {"w": owned * 2}}}, "view": base[2:8]}
    out = checkpoint.to_device(tree, stacked=True)
    assert tree == {}
    base[:] = -1
    np.testing.assert_array_equal(out["view"], np.arange(2, 8, dtype=np.float32))
    np.testing.assert_array_equal(out["encoder"]["layer"]["w"], np.stack([owned, owned * 2]))
    assert all(isinstance(x, jax.Array) for x in jax.tree_util.tree_leaves(out))


def _flax4_folder(folder, config: BertConfig, tree: dict) -> str:
    """A folder as transformers 4.x's FlaxBert*.save_pretrained writes it."""
    os.makedirs(folder)
    config.to_json(os.path.join(folder, "config.json"))
    with open(os.path.join(folder, PARAMS_FILE), "wb") as f:
        f.write(serialization.to_bytes(tree))
    return str(folder)


@pytest.mark.parametrize("layout", ["FlaxBertModel", "FlaxBertForMaskedLM", "FlaxBertForPreTraining",
                                    "wrapped in params"])
def test_transformers4_flax_layouts(tmp_path, layout):
    """FlaxBertModel's tree is ours; FlaxBertFor*'s nests the encoder under `bert`, with `cls`
    (and the NSP head cls/seq_relationship for pre-training, dropped with a note)."""
    config = BertConfig(**TINY)
    heads = {"FlaxBertModel": Heads(pooler=True), "FlaxBertForMaskedLM": Heads(pooler=False, mlm=True),
             "FlaxBertForPreTraining": Heads(pooler=True, mlm=True),
             "wrapped in params": Heads(pooler=True)}[layout]
    ours = random_params(config, heads)
    tree = {k: v for k, v in ours.items() if k != "cls"}
    if layout.startswith("FlaxBertFor"):
        tree = {"bert": tree, "cls": dict(ours["cls"])}
    if layout == "FlaxBertForPreTraining":
        tree["cls"]["seq_relationship"] = {"kernel": np.ones((15, 2), np.float32),
                                           "bias": np.ones((2,), np.float32)}
    if layout == "wrapped in params":
        tree = {"params": tree}
    folder = _flax4_folder(tmp_path / layout, config, tree)
    loaded = read_checkpoint(folder)
    assert loaded.heads == heads
    assert_same_bits(loaded.params, ours)
    assert loaded.notes == (["dropped the next-sentence-prediction head (cls/seq_relationship)"]
                            if layout == "FlaxBertForPreTraining" else [])
    assert_same_bits(read_checkpoint(folder, dtype="bfloat16").params,
                     jax.tree_util.tree_map(lambda x: x.astype(ml_dtypes.bfloat16), ours))


def test_bad_msgpack_files(tmp_path, converted):
    config = BertConfig(**TINY)
    with open(os.path.join(converted, PARAMS_FILE), "rb") as f:
        data = f.read()
    for name, payload in (("cut", data[: len(data) // 2]), ("junk", b"\xc1" * 64)):
        folder = tmp_path / name
        shutil.copytree(converted, folder)
        (folder / PARAMS_FILE).write_bytes(payload)
        with pytest.raises(CheckpointError, match=rf"cannot read .*{name}/flax_model\.msgpack: "
                                                  r"corrupted or truncated msgpack"):
            read_checkpoint(str(folder))
    folder = _flax4_folder(tmp_path / "list", config, {"a": np.ones(2)})
    (tmp_path / "list" / PARAMS_FILE).write_bytes(serialization.msgpack_serialize([1, 2]))
    with pytest.raises(CheckpointError, match=r"list/flax_model\.msgpack does not hold a parameter tree"):
        read_checkpoint(folder)
    wrong = random_params(BertConfig(**{**TINY, "intermediate_size": 40}), Heads())
    folder = _flax4_folder(tmp_path / "wrong", config, wrong)
    with pytest.raises(CheckpointError, match=r"wrong/flax_model\.msgpack: encoder/layer/0/"
                                              r"intermediate/dense/bias has shape \(40,\), the config "
                                              r"needs \(37,\)"):
        read_checkpoint(folder)
    extra = {**random_params(config, Heads()), "rotary": {"kernel": np.ones(2, np.float32)}}
    folder = _flax4_folder(tmp_path / "extra", config, extra)
    with pytest.raises(CheckpointError, match=r"do not match the BERT parameter tree \(unexpected 1: "
                                              r"rotary/kernel\)"):
        read_checkpoint(folder)


def test_save_checks_params_against_the_config(tmp_path):
    params = random_params(BertConfig(**TINY), Heads())
    params["encoder"]["layer"].pop("1")
    with pytest.raises(ValueError, match=r"params: the tree has 3 layers \(0, 2, 3\), the config says "
                                         r"num_hidden_layers=4 \(missing 16: encoder/layer/1 \(16 "):
        save(tmp_path / "out", BertConfig(**TINY), params)
    assert os.listdir(tmp_path) == []


def _failing_write(after_bytes: int, error: BaseException):
    def write(path, params):
        with open(path, "wb") as f:
            f.write(b"\x80" * after_bytes)
        raise error
    return write


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupt"])
def test_failed_write_leaves_nothing(mlm_dir, tmp_path, monkeypatch, error):
    monkeypatch.setattr(checkpoint, "write_msgpack", _failing_write(100, error))
    with pytest.raises(type(error)):
        convert_checkpoint(mlm_dir, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_force_replaces_only_after_success(mlm_dir, converted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    (out / "marker").write_text("old")
    before = (out / PARAMS_FILE).read_bytes()
    monkeypatch.setattr(checkpoint, "write_msgpack", _failing_write(10, OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(mlm_dir, out, force=True)
    assert (out / "marker").exists() and (out / PARAMS_FILE).read_bytes() == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    summary = convert_checkpoint(mlm_dir, out, dtype="bfloat16", force=True)
    assert summary["dtype"] == "bfloat16" and not (out / "marker").exists()
    assert leftovers(tmp_path) == []
    assert load(out, "bfloat16")[1]["pooler"]["dense"]["kernel"].dtype == ml_dtypes.bfloat16


def test_failed_rename_puts_the_old_folder_back(mlm_dir, converted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    (out / "marker").write_text("old")
    rename = os.rename

    def failing_rename(src, dst):
        if ".partial-" in os.fspath(src):
            raise OSError("rename failed")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="rename failed"):
        convert_checkpoint(mlm_dir, out, force=True)
    monkeypatch.undo()
    assert (out / "marker").exists() and leftovers(tmp_path) == []


def test_existing_out_is_never_overwritten_without_force(mlm_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(FileExistsError, match=r"out already exists; pass force=True to replace "
                                              r"it$"):
        convert_checkpoint(mlm_dir, out)
    assert os.listdir(out) == ["keep"]
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileExistsError, match=r"file exists and is not a folder; not replacing it"):
        convert_checkpoint(mlm_dir, tmp_path / "file", force=True)
    assert (tmp_path / "file").read_text() == "mine"


def test_out_that_is_or_holds_the_source_is_refused(mlm_dir, tmp_path):
    src = tmp_path / "models" / "bert"
    shutil.copytree(mlm_dir, src)
    for out in (src, tmp_path / "models"):
        with pytest.raises(FileExistsError, match=r"is or holds the source .*bert; write somewhere "
                                                  r"else"):
            convert_checkpoint(src, out, force=True)
    with pytest.raises(FileExistsError, match=r"is or holds the source .*model\.safetensors"):
        convert_checkpoint(src / "model.safetensors", src, force=True)
    assert sorted(os.listdir(src)) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("mask,folder_mode,file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_a_saved_folder_respects_the_umask(mlm_dir, tmp_path, mask, folder_mode, file_mode):
    """Private (mkdtemp's 0700) while partial; once complete, the mode makedirs would give it."""
    old = os.umask(mask)
    try:
        out = tmp_path / "deep" / "out"
        convert_checkpoint(mlm_dir, out)
        convert_checkpoint(mlm_dir, out, force=True)  # the replacing path too
    finally:
        os.umask(old)
    for folder in (tmp_path / "deep", out):
        assert os.stat(folder).st_mode & 0o777 == folder_mode
    for name in os.listdir(out):
        assert os.stat(out / name).st_mode & 0o777 == file_mode, name


def test_tokenizer_files_are_copied(mlm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(mlm_dir, src)
    (src / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (src / "tokenizer_config.json").write_text("{}")
    (src / "training_args.bin").write_bytes(b"not copied")
    convert_checkpoint(src, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "flax_model.msgpack",
                                                   "tokenizer_config.json", "vocab.txt"]
    assert (tmp_path / "out" / "vocab.txt").read_text() == "[PAD]\n[UNK]\n"
