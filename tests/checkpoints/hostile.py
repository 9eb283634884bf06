"""Builders of hostile checkpoint files, in one place: hand-made safetensors headers, sharded
indexes, pickles that want more than tensors, and seeded byte flips and truncations for fuzzing."""

from __future__ import annotations

import json
import os
import struct

import numpy as np


def safetensors_bytes(header, data: bytes = b"") -> bytes:
    """A safetensors file from any JSON-able header (valid or not) and a data section."""
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + data


def entry(begin: int, end: int, shape=None, dtype: str = "F32") -> dict:
    """One header entry; the shape defaults to the float32 vector the byte range holds."""
    return {"dtype": dtype, "shape": [(end - begin) // 4] if shape is None else shape,
            "data_offsets": [begin, end]}


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def write_index(folder, weight_map, name: str = "model.safetensors.index.json") -> str:
    """A sharded-checkpoint index holding `weight_map` (any JSON value) in `folder`."""
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return path


class RunsACommand:
    """Unpickling this calls os.system(command): what a malicious checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class Evalling:
    """Unpickling this calls builtins.eval: a global outside torch's blocklist of modules."""

    def __reduce__(self):
        return eval, ("1 + 1",)


def malicious_bin(path, marker, legacy: bool = False) -> str:
    """A torch.save'd state dict whose pickle runs `touch marker` when fully unpickled."""
    import torch

    torch.save({"w": torch.zeros(2), "x": RunsACommand(f"touch {marker}")}, path,
               _use_new_zipfile_serialization=not legacy)
    return str(path)


def mutations(data: bytes, n: int, seed: int = 0, structure=None):
    """`n` seeded damaged copies of `data`: one to three byte flips, or (one in four) a truncation.

    `structure`: positions of the bytes that are not tensor payload (headers, keys, shapes); half
    the flips land there, so that a file mostly made of payload still gets its structure damaged.
    """
    rng = np.random.default_rng(seed)
    for i in range(n):
        if i % 4 == 3:
            yield f"cut{i}", data[: int(rng.integers(0, len(data)))]
            continue
        damaged = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            if structure is not None and rng.integers(0, 2):
                at = int(structure[rng.integers(0, len(structure))])
            else:
                at = int(rng.integers(0, len(data)))
            damaged[at] ^= int(rng.integers(1, 256))
        yield f"flip{i}", bytes(damaged)


def with_nonfinite(src_folder, dst_folder, values: dict) -> str:
    """A copy of a transformers checkpoint folder whose model.safetensors has `values`
    (key -> (flat index, value)) written into its tensors."""
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(src_folder, dst_folder)
    path = os.path.join(dst_folder, "model.safetensors")
    state = load_file(path)
    for key, (index, value) in values.items():
        state[key].reshape(-1)[index] = value
    save_file(state, path)
    return str(dst_folder)


def nested_json(depth: int = 100_000, inner: str = "0") -> str:
    """A JSON text nested `depth` arrays deep: Python's json module recurses once per level."""
    return "[" * depth + inner + "]" * depth


def random_first_half(data: bytes, seed: int) -> bytes:
    """`data` with its first half replaced by seeded random bytes (a damaged download)."""
    rng = np.random.default_rng(seed)
    half = len(data) // 2
    return rng.integers(0, 256, half, dtype=np.uint8).tobytes() + data[half:]


def sparse_file(path, size: int) -> str:
    """A file of `size` bytes that takes no disk space (a hole): a memory bomb when read whole."""
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def fifo(path) -> str:
    """A named pipe: opening it for reading blocks until a writer comes, which none will."""
    os.mkfifo(path)
    return str(path)


def config_json(folder, **changes) -> str:
    """Rewrites folder/config.json with `changes` (raw JSON values) applied; returns its path."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)
    return path


def copy_folder(src, dst) -> str:
    """A copy of a checkpoint folder (regular files), to damage without touching the original."""
    import shutil

    shutil.copytree(src, dst)
    return str(dst)
