"""Fuzzing the readers: seeded random byte flips and truncations of a tiny model.safetensors and of
a flax_model.msgpack. Each damaged file is refused with a ValueError or OSError, or loads to exactly
the arrays of the original file with the damaged file's payload bytes (a flip inside a tensor's
data changes its values, which no checksum-less format can notice; everything else must)."""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
import pytest
from conftest import TINY
from hostile import mutations, nested_json, random_first_half, safetensors_bytes, write
from safetensors.numpy import save_file

from bertjax.checkpoints.checkpoint import PARAMS_FILE, read_checkpoint, save
from bertjax.checkpoints.convert import key_table
from bertjax.checkpoints.readers import CheckpointError, read_weights
from bertjax.model.config import BertConfig
from bertjax.model.params import Heads, flatten, param_shapes

N = 200  # per format


def _bits(params: dict) -> dict:
    return {path: (a.dtype.str, a.shape, a.tobytes()) for path, a in flatten(params).items()}


def _load(folder: str):
    """The loaded tree's bits, or None when the file was refused (ValueError or OSError)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flipped payload bytes may make NaN: a warning only
        try:
            return _bits(read_checkpoint(folder).params)
        except (ValueError, OSError):
            return None


def _fuzz(folder: str, name: str, payload: list[tuple[int, int]]) -> dict:
    """Loads every mutation of folder/name; returns how many were refused and how many loaded."""
    path = os.path.join(folder, name)
    with open(path, "rb") as f:
        original = f.read()
    counts = {"refused": 0, "loaded": 0}
    structure = np.ones(len(original), bool)
    for begin, end in payload:
        structure[begin:end] = False
    for label, damaged in mutations(original, N, len(original), np.flatnonzero(structure)):
        with open(path, "wb") as f:
            f.write(damaged)
        got = _load(folder)
        if got is None:
            counts["refused"] += 1
            continue
        assert len(damaged) == len(original), f"{label}: a truncated {name} loaded"
        repaired = bytearray(original)  # the original structure around the damaged payload
        for begin, end in payload:
            repaired[begin:end] = damaged[begin:end]
        counts["loaded"] += 1
        if repaired == damaged:  # only payload bytes changed: what loaded is what the file holds
            continue
        with open(path, "wb") as f:
            f.write(bytes(repaired))
        assert got == _load(folder), f"{label}: {name} loaded arrays that are not the original ones"
    with open(path, "wb") as f:
        f.write(original)
    return counts


def _random_params(config: BertConfig) -> dict:
    rng = np.random.default_rng(0)  # random leaves: each one's bytes occur once in a file
    return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32),
                                  param_shapes(config, Heads()))


def test_fuzz_safetensors(tmp_path):
    config = BertConfig(**TINY)
    state = {}
    for key, path, transposed in key_table(config, Heads()):
        leaf = flatten(_random_params(config))[path]
        state[key] = np.ascontiguousarray(leaf.T if transposed else leaf)
    os.makedirs(tmp_path / "m")
    save_file(state, tmp_path / "m" / "model.safetensors")
    config.to_json(tmp_path / "m" / "config.json")
    with open(tmp_path / "m" / "model.safetensors", "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
        size = os.fstat(f.fileno()).st_size
    counts = _fuzz(str(tmp_path / "m"), "model.safetensors", [(start, size)])
    assert counts["refused"] >= N // 4 and counts["loaded"] > 0, counts


def test_fuzz_msgpack(tmp_path):
    config = BertConfig(**TINY)
    params = _random_params(config)
    folder = save(tmp_path / "m", config, params)
    with open(os.path.join(folder, PARAMS_FILE), "rb") as f:
        data = f.read()
    payload = []
    for leaf in flatten(params).values():
        at = data.find(leaf.tobytes())
        assert at > 0 and data.find(leaf.tobytes(), at + 1) < 0
        payload.append((at, at + leaf.nbytes))
    counts = _fuzz(folder, PARAMS_FILE, payload)
    assert counts["refused"] >= N // 4 and counts["loaded"] > 0, counts


BIN_SEEDS = 100  # the unpickler's raw IndexError / KeyError came in about 1 case of 20


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_fuzz_bin_with_a_random_first_half(tmp_path, checkpoint_factory, legacy):
    """A .bin whose first half is random (a damaged download) is always refused with one
    CheckpointError naming the file, never the unpickler's own IndexError, KeyError, ..."""
    import torch

    src = os.path.join(checkpoint_factory("BertModel", safe=False), "pytorch_model.bin")
    state = torch.load(src, weights_only=True)
    torch.save(state, tmp_path / "original.bin", _use_new_zipfile_serialization=not legacy)
    original = (tmp_path / "original.bin").read_bytes()
    path = tmp_path / "pytorch_model.bin"
    kinds = set()
    for seed in range(BIN_SEEDS):
        path.write_bytes(random_first_half(original, seed))
        with pytest.raises(CheckpointError) as info:
            read_weights(str(path))
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"cannot read {path}: corrupted"), \
            (seed, message)
        kinds.add(message.split("(")[-1][:20])
    assert len(kinds) > 1  # the damage reaches the unpickler in different ways


@pytest.mark.parametrize("depth", [50, 1_000, 100_000, 1_000_000])
def test_fuzz_nested_json_everywhere(tmp_path, depth):
    """JSON nested `depth` deep in a config.json, an index and a safetensors header: one line each
    (refused or read), never a RecursionError."""
    text = nested_json(depth)
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=r"config file .*config\.json (does not hold a JSON object|"
                                         r"is not valid JSON: nested too deeply)"):
        BertConfig.from_json(tmp_path / "config.json")
    (tmp_path / "m.index.json").write_text(text)
    with pytest.raises(CheckpointError, match=r"m\.index\.json is not a valid sharded-checkpoint"):
        read_weights(str(tmp_path / "m.index.json"))
    path = write(tmp_path / "w.safetensors", safetensors_bytes(text.encode()))
    with pytest.raises(CheckpointError, match=r"w\.safetensors has a corrupted safetensors header"):
        read_weights(path)
