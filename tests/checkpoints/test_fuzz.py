"""Fuzzing the readers: seeded random byte flips and truncations of a tiny model.safetensors and of
a flax_model.msgpack. Each damaged file is refused with a ValueError or OSError, or loads to exactly
the arrays of the original file with the damaged file's payload bytes (a flip inside a tensor's
data changes its values, which no checksum-less format can notice; everything else must)."""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
from conftest import TINY
from hostile import mutations
from safetensors.numpy import save_file

from bertjax.checkpoints.checkpoint import PARAMS_FILE, read_checkpoint, save
from bertjax.checkpoints.convert import key_table
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
