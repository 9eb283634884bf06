"""Reading PyTorch BERT weights into NumPy without executing untrusted code.

* `.safetensors` is parsed here (header + memory map), without torch, bf16 included (as
  `ml_dtypes.bfloat16`); every tensor's byte range is checked against the file, so a truncated or
  corrupted file is reported by name instead of read short.
* `.bin` is read only with `torch.load(..., weights_only=True)`; a pickle that needs more than
  plain tensors is refused. torch is imported only here and only for `.bin` files.
* A sharded checkpoint is read through its `*.index.json` weight map.

Tensors are read lazily: `read_weights` returns a mapping whose values are read from disk on access,
each into a fresh array (plain reads, not a memory map: the touched pages of a map would stay resident
for the whole conversion, on top of the converted copies), so converting holds about one copy of the
checkpoint in memory, not two. `shape_of` gives a tensor's shape without reading it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterator, Mapping

import numpy as np

# BF16 is ml_dtypes.bfloat16, imported only when a file has one (`_safetensors_dtype`): importing
# ml_dtypes costs seconds, which a command that refuses its input before JAX should not pay.
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


def _safetensors_dtype(code: str) -> np.dtype:
    """The NumPy dtype of a safetensors dtype code (KeyError for an unknown one)."""
    if _SAFETENSORS_DTYPES[code] is None:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_SAFETENSORS_DTYPES[code])


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or is not a BERT checkpoint bertjax can convert."""


class SafetensorsFile(Mapping):
    """A read-only, memory-mapped view of one `.safetensors` file: name -> np.ndarray."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise CheckpointError(f"{path} is not a valid safetensors file (header length {n}, "
                                      f"file size {size}): corrupted or truncated")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{path} has a corrupted safetensors header: {e}") from None
        header.pop("__metadata__", None)
        self._start = 8 + n
        self._entries = {}
        for name, info in header.items():
            try:
                dtype = _safetensors_dtype(info["dtype"])
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: tensor {name!r} has an unsupported or corrupted "
                                      f"header entry {info!r}") from None
            if end - begin != int(np.prod(shape)) * dtype.itemsize or begin < 0:
                raise CheckpointError(f"{path}: tensor {name!r} has a corrupted byte range")
            if self._start + end > size:
                raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte "
                                      f"{self._start + end} but the file has {size} bytes")
            self._entries[name] = (dtype, shape, begin, end)

    def __getitem__(self, name: str) -> np.ndarray:
        """The tensor, read from disk into a new (writable, aligned) array."""
        dtype, shape, begin, end = self._entries[name]
        array = np.empty(shape, dtype)
        with open(self.path, "rb") as f:
            f.seek(self._start + begin)
            got = f.readinto(array.reshape(-1).view(np.uint8))
        if got != end - begin:
            raise CheckpointError(f"{self.path} is truncated: tensor {name!r} is cut short")
        return array

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> np.dtype:
        return self._entries[name][0]

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def shape_of(state: Mapping, name: str) -> tuple[int, ...]:
    """The shape of `state[name]`, without reading the tensor when the mapping is lazy."""
    if callable(getattr(state, "shape", None)):
        return tuple(state.shape(name))
    return tuple(np.shape(state[name]))


def dtype_of(state: Mapping, name: str) -> np.dtype:
    """The dtype of `state[name]`, without reading the tensor when the mapping is lazy."""
    if callable(getattr(state, "dtype", None)):
        return np.dtype(state.dtype(name))
    return np.dtype(state[name].dtype)


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _unpickling_error(path: str, error: Exception) -> CheckpointError:
    """One line for torch's weights_only refusal: a forbidden global (refused on purpose) or an
    unreadable pickle stream (a corrupted file)."""
    text = str(error)
    forbidden = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if forbidden:
        return CheckpointError(
            f"refusing to read {path}: it holds {forbidden.group(1)}, which only full unpickling "
            f"(arbitrary code) could build, and bertjax reads .bin files with weights_only=True")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return CheckpointError(f"cannot read {path}: corrupted or not a PyTorch checkpoint "
                           f"({detail.group(1).strip() if detail else _first_line(error)})")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _torch_load(path: str):
    """torch.load(weights_only=True), memory-mapped when the file format allows it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        if "mmap" not in str(e):  # the legacy (non-zip) format cannot be mapped
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_bin(path: str) -> dict[str, np.ndarray]:
    """A pickled PyTorch state dict, read with `torch.load(weights_only=True)` only."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a pickled PyTorch checkpoint and reading it needs torch "
                              f"(pip install 'bertjax[torch]'), or convert from .safetensors") from None
    import pickle
    import zipfile

    try:
        sd = _torch_load(path)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path}: corrupted or truncated PyTorch file "
                              f"({_first_line(e)})") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k: _torch_to_numpy(v) for k, v in sd.items()}


class _Merged(Mapping):
    """Several shard mappings seen as one."""

    def __init__(self, parts: list[Mapping]):
        self._where = {}
        for part in parts:
            for name in part:
                self._where[name] = part

    def __getitem__(self, name):
        return self._where[name][name]

    def shape(self, name: str) -> tuple[int, ...]:
        return shape_of(self._where[name], name)

    def dtype(self, name: str) -> np.dtype:
        return dtype_of(self._where[name], name)

    def __contains__(self, name) -> bool:
        return name in self._where

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)


def read_index(path: str) -> Mapping[str, np.ndarray]:
    """A sharded checkpoint through its `*.index.json` (safetensors or .bin shards)."""
    try:
        with open(path, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a valid sharded-checkpoint index ({e})") from None
    folder = os.path.dirname(path)
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not os.path.exists(os.path.join(folder, s))]
    if missing:
        raise CheckpointError(f"{path} lists shard(s) that are not there: {', '.join(missing)}")
    merged = _Merged([read_weights(os.path.join(folder, s)) for s in shards])
    absent = sorted(set(weight_map) - set(merged))
    if absent:
        raise CheckpointError(f"{path}: tensors listed in the index are missing from the shards: "
                              f"{', '.join(absent[:5])}")
    return merged


def msgpack_names(path: str) -> list[str]:
    """The slash paths of the leaves of a msgpack parameter tree (flax's format), each leaf skipped
    unread: the names without the conversion (no flax, no jax)."""
    import msgpack

    names: list[str] = []
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=0)  # 0: no limit on one leaf

        def walk(prefix: str) -> None:
            try:
                count = unpacker.read_map_header()
            except ValueError:  # not a map: a leaf (read_map_header consumed nothing)
                unpacker.skip()
                names.append(prefix)
                return
            for _ in range(count):
                key = unpacker.unpack()
                walk(f"{prefix}/{key}" if prefix else str(key))

        try:
            walk("")
        except Exception as e:  # noqa: BLE001  (msgpack raises many types on corrupted input)
            raise CheckpointError(f"cannot read {path}: corrupted or truncated msgpack "
                                  f"({_first_line(e)})") from None
    return names


def weight_names(path: str) -> list[str]:
    """The tensor names of a weights file (torch names; slash paths for a msgpack tree), read
    without converting anything: a safetensors or msgpack file's tensors are not read at all."""
    if path.endswith(".msgpack"):
        return msgpack_names(path)
    return list(read_weights(path))


def read_weights(path: str) -> Mapping[str, np.ndarray]:
    """name -> array for a `.safetensors`, `.bin` or `*.index.json` file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no weights file at {path}")
    if path.endswith(".index.json"):
        return read_index(path)
    if path.endswith(".safetensors"):
        return SafetensorsFile(path)
    if path.endswith((".bin", ".pt", ".pth")):
        return read_bin(path)
    raise CheckpointError(f"{path}: unknown weights format (expected .safetensors, .bin or an "
                          f"*.index.json of shards)")
