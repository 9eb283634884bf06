"""Reading weights without running untrusted code: safetensors parsed here, .bin through
torch.load(weights_only=True), sharded sets through their index; damaged files named in one line."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from bertjax.checkpoints.readers import CheckpointError, SafetensorsFile, dtype_of, read_weights, shape_of


class Meta:
    """A class only full unpickling could rebuild."""


@pytest.fixture
def tensors():
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(3, 5)).astype(np.float32),
            "b": rng.normal(size=(7,)).astype(np.float16),
            "c": np.arange(4, dtype=np.int64)}


def test_safetensors_reads_exact_arrays_lazily(tmp_path, tensors):
    save_file(tensors, tmp_path / "w.safetensors")
    state = read_weights(str(tmp_path / "w.safetensors"))
    assert isinstance(state, SafetensorsFile) and sorted(state) == ["a", "b", "c"]
    assert shape_of(state, "a") == (3, 5) and dtype_of(state, "b") == np.float16
    for name, want in tensors.items():
        got = state[name]
        assert got.dtype == want.dtype and got.flags.writeable
        np.testing.assert_array_equal(got, want)


def test_safetensors_bfloat16_without_torch_matches_torch_bits(tmp_path):
    from safetensors.torch import save_file as save_torch

    t = torch.randn(4, 6).to(torch.bfloat16)
    save_torch({"w": t}, tmp_path / "w.safetensors")
    got = read_weights(str(tmp_path / "w.safetensors"))["w"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.view(np.uint16), t.view(torch.int16).numpy().view(np.uint16))


def test_truncated_safetensors_names_the_tensor(tmp_path, tensors):
    save_file(tensors, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated: tensor '[abc]' ends "
                                             r"at byte \d+ but the file has \d+ bytes"):
        read_weights(str(tmp_path / "cut.safetensors"))
    (tmp_path / "head.safetensors").write_bytes(data[:30])
    with pytest.raises(CheckpointError, match=r"not a valid safetensors file \(header length .*truncated"):
        read_weights(str(tmp_path / "head.safetensors"))
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match=r"is not a safetensors file \(only 3 bytes\)"):
        read_weights(str(tmp_path / "tiny.safetensors"))


def test_corrupted_safetensors_header(tmp_path, tensors):
    save_file(tensors, tmp_path / "w.safetensors")
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[10:14] = b"\xff\xfe\x00{"
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"bad\.safetensors has a corrupted safetensors header"):
        read_weights(str(tmp_path / "bad.safetensors"))
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}).encode()
    (tmp_path / "range.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(CheckpointError, match=r"tensor 'w' has a corrupted byte range"):
        read_weights(str(tmp_path / "range.safetensors"))
    header = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    (tmp_path / "dtype.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    with pytest.raises(CheckpointError, match=r"tensor 'w' has an unsupported or corrupted header entry"):
        read_weights(str(tmp_path / "dtype.safetensors"))


def test_bin_reads_with_weights_only(tmp_path):
    state = {"w": torch.randn(3, 4), "h": torch.randn(5).half(), "b": torch.randn(2).to(torch.bfloat16)}
    torch.save(state, tmp_path / "w.bin")
    got = read_weights(str(tmp_path / "w.bin"))
    np.testing.assert_array_equal(got["w"], state["w"].numpy())
    np.testing.assert_array_equal(got["h"], state["h"].numpy())
    assert got["b"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got["b"].astype(np.float32), state["b"].float().numpy())


def test_bin_legacy_format_and_wrapped_state_dict(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "old.bin",
               _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(read_weights(str(tmp_path / "old.bin"))["w"], np.ones(2, np.float32))


def test_bin_needing_full_unpickling_is_refused(tmp_path):
    torch.save({"w": torch.zeros(2), "meta": Meta()}, tmp_path / "evil.bin")
    with pytest.raises(CheckpointError, match=r"evil\.bin: a pickle wanting test_readers\.Meta "
                                              r"was refused for safety"):
        read_weights(str(tmp_path / "evil.bin"))


def test_corrupted_and_truncated_bin(tmp_path):
    torch.save({"w": torch.randn(64, 64)}, tmp_path / "w.bin")
    data = (tmp_path / "w.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cannot read .*cut\.bin: corrupted or truncated"):
        read_weights(str(tmp_path / "cut.bin"))
    (tmp_path / "noise.bin").write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(CheckpointError, match=r"cannot read .*noise\.bin: corrupted or not a PyTorch"):
        read_weights(str(tmp_path / "noise.bin"))


def test_bin_without_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match=r"list\.bin does not hold a state dict of tensors"):
        read_weights(str(tmp_path / "list.bin"))


def _shard(tmp_path, tensors, drop_shard=False, extra_key=False):
    save_file({"a": tensors["a"]}, tmp_path / "model-00001-of-00002.safetensors")
    if not drop_shard:
        save_file({"b": tensors["b"]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    if extra_key:
        weight_map["z"] = "model-00001-of-00002.safetensors"
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return str(index)


def test_sharded_index_merges_shards(tmp_path, tensors):
    state = read_weights(_shard(tmp_path, tensors))
    assert sorted(state) == ["a", "b"] and shape_of(state, "b") == (7,) and "a" in state
    np.testing.assert_array_equal(state["b"], tensors["b"])


def test_sharded_index_errors(tmp_path, tensors):
    with pytest.raises(CheckpointError, match=r"lists shard\(s\) that are not there: "
                                              r"model-00002-of-00002\.safetensors"):
        read_weights(_shard(tmp_path, tensors, drop_shard=True))
    os.makedirs(tmp_path / "x")
    with pytest.raises(CheckpointError, match=r"tensors listed in the index are missing from the shards: z"):
        read_weights(_shard(tmp_path / "x", tensors, extra_key=True))
    (tmp_path / "bad.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"bad\.index\.json is not a valid sharded-checkpoint index"):
        read_weights(str(tmp_path / "bad.index.json"))


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"w\.h5: unknown weights format"):
        read_weights(str(tmp_path / "w.h5"))
    with pytest.raises(CheckpointError, match=r"no weights file at .*nothing\.safetensors"):
        read_weights(str(tmp_path / "nothing.safetensors"))
