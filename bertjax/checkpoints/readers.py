"""Reading PyTorch BERT weights into NumPy without executing untrusted code.

* `.safetensors` is parsed here (header + memory map), without torch, bf16 included (as
  `ml_dtypes.bfloat16`). The header must be a JSON object (no key twice, `__metadata__` string to
  string) and the tensors' byte ranges must tile the data section exactly (no overlap, no gap,
  nothing past the end), as the format requires, so a truncated or corrupted file is reported by
  name instead of read short or read wrong.
* `.bin` is read only with `torch.load(..., weights_only=True)`; a pickle that needs more than
  plain tensors is refused for safety, naming what it wanted and how to convert it safely (never
  with torch's advice to retry with weights_only=False). torch is imported only here and only for
  `.bin` files.
* A sharded checkpoint is read through its `*.index.json` weight map, whose shard names must be
  plain weights-file names inside the index's folder (no `..`, absolute path, directory, the index
  itself or a symlink leading out), checked before any shard is opened.

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

from bertjax.checkpoints.files import check_regular

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


def _no_duplicates(pairs: list) -> dict:
    """json object_pairs_hook: a key given twice would hide one of the two entries."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise CheckpointError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _read_header(path: str, size: int) -> tuple[dict, int]:
    """The JSON header of a safetensors file (a dict of tensor entries, `__metadata__` checked and
    removed) and where its data section starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(f"{path} is not a valid safetensors file (header length {n}, "
                                  f"file size {size}): corrupted or truncated")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, json.JSONDecodeError, CheckpointError, RecursionError) as e:
            raise CheckpointError(f"{path} has a corrupted safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupted safetensors header: a JSON "
                              f"{type(header).__name__} where a JSON object is expected")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict)
            and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path} has a corrupted safetensors header: __metadata__ must be an "
                              f"object of string to string, got {_short(metadata)}")
    return header, 8 + n


def _short(value, most: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most] + "..."


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _entry(path: str, name: str, info) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field checked."""
    try:
        dtype = _safetensors_dtype(info["dtype"])
        shape, offsets = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) and o >= 0 for o in offsets)):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path}: tensor {name!r} has an unsupported or corrupted "
                              f"header entry {_short(info)}") from None
    begin, end = offsets
    if end < begin or end - begin != int(np.prod(shape, dtype=object)) * dtype.itemsize:
        raise CheckpointError(f"{path}: tensor {name!r} has a corrupted byte range [{begin}, {end}) "
                              f"for shape {tuple(shape)} of {dtype.name}")
    return dtype, tuple(shape), begin, end


def _check_layout(path: str, entries: dict, start: int, size: int) -> None:
    """The tensors must tile the data section exactly, as the safetensors format requires: no
    overlap, no gap, nothing past the end of the file and no bytes after the last tensor."""
    data_size, at, previous = size - start, 0, None
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda e: (e[1][2], e[1][3])):
        if begin < at:
            raise CheckpointError(f"{path}: tensors {previous!r} and {name!r} overlap (bytes "
                                  f"{begin}..{at} of the data section): corrupted file")
        if begin > at:
            raise CheckpointError(f"{path}: {begin - at} bytes before tensor {name!r} belong to no "
                                  f"tensor (a gap at byte {at} of the data section): corrupted file")
        if end > data_size:
            raise CheckpointError(f"{path} is truncated: tensor {name!r} ends at byte "
                                  f"{start + end} but the file has {size} bytes")
        at, previous = end, name
    if at != data_size:
        raise CheckpointError(f"{path}: {data_size - at} bytes after the last tensor belong to no "
                              f"tensor: corrupted file")


class SafetensorsFile(Mapping):
    """A read-only, memory-mapped view of one `.safetensors` file: name -> np.ndarray."""

    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        header, self._start = _read_header(path, size)
        self._entries = {}
        for name, info in header.items():
            self._entries[name] = _entry(path, name, info)
        _check_layout(path, self._entries, self._start, size)

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


# How torch's weights_only unpickler words a refused global, across the versions we know (group 1
# names what the pickle wanted): 2.4+ "Unsupported global: GLOBAL m.f was not an allowed global",
# 2.5+ "Trying to load unsupported GLOBAL m.f whose module m is blocked" (os, sys, posix, nt),
# 1.13-2.3 "Unsupported class m.f", and the REDUCE / NEWOBJ / BUILD refusals of an allowed global.
_FORBIDDEN = (
    re.compile(r"Unsupported global: GLOBAL (\S+?)\.? was not an allowed global"),
    re.compile(r"Trying to load unsupported GLOBAL (\S+) whose module"),
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"Unsupported class (\S+)"),
    re.compile(r"Trying to call reduce for unrecognized function (.+?)(?: which belongs to|$)", re.M),
    re.compile(r"Can only create new object for nn\.Parameter or classes allowlisted.*? but got "
               r"(\S+)"),
    re.compile(r"Can only build Tensor, .*? but got (\S+)"),
    re.compile(r"``(torch\.\S+)`` (?:and ``\S+`` )?must be imported to load"),
)
SAFE_CONVERSION = ("to convert it safely, load it yourself in a trusted, isolated environment, and "
                   "only if you trust its source, then save its state dict as safetensors "
                   "(safetensors.torch.save_file(state_dict, 'model.safetensors')) and convert that")


def _unpickling_error(path: str, error: Exception) -> CheckpointError:
    """One line for torch's weights_only refusal: a pickle wanting a global beyond tensors (refused
    on purpose, with how to convert it safely) or an unreadable pickle stream (a corrupted file).
    Never repeats torch's advice to retry with weights_only=False."""
    text = str(error)
    for pattern in _FORBIDDEN:
        found = pattern.search(text)
        if found:
            return CheckpointError(
                f"{path}: a pickle wanting {found.group(1).strip()} was refused for safety (not a "
                f"plain tensor: only full unpickling, which can run arbitrary code, could build "
                f"it); {SAFE_CONVERSION}")
    return CheckpointError(f"cannot read {path}: corrupted or not a PyTorch checkpoint "
                           f"({_torch_detail(text)})")


def _torch_detail(text: str) -> str:
    """The unpickler's own error inside torch's message, without its weights_only advice."""
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return detail.group(1).strip()
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and "weights_only" not in line and "Weights only load failed" not in line
             and "documentation" not in line.lower()]
    return lines[0] if lines else "unreadable pickle stream"


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

    try:
        sd = _torch_load(path)
    except pickle.UnpicklingError as e:
        raise _unpickling_error(path, e) from None
    except Exception as e:  # noqa: BLE001  (a damaged pickle stream makes the unpickler raise
        # IndexError, KeyError, TypeError, struct.error, ... besides torch's own RuntimeError)
        raise CheckpointError(f"cannot read {path}: corrupted or truncated PyTorch file "
                              f"({type(e).__name__}: {_first_line(e)})") from None
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


_SHARD_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _weight_map(path: str) -> dict[str, str]:
    """The `weight_map` of an index file: a JSON object of tensor name -> shard file name."""
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a valid sharded-checkpoint index ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{path} is not a valid sharded-checkpoint index (expected a JSON "
                              f"object with a \"weight_map\" object of tensor name -> shard file, "
                              f"got {_short(weight_map if isinstance(index, dict) else index)})")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(f"{path}: weight_map[{name!r}] must be a shard file name (a "
                                  f"string), got {_short(shard)}")
    return weight_map


def contained_file(folder: str, name, where: str, kind: str = "checkpoint folder",
                   error=CheckpointError) -> str:
    """The path of `name`, which an untrusted file (an index, a manifest) names: it must be a plain
    file name in `folder` (no folder part, no `..`, not absolute, no symlink leading out of the
    folder) and, if it exists, a regular file. `where` and `kind` word the `error` (one line)."""
    folder = os.path.abspath(folder)
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name or os.path.isabs(name)):
        raise error(f"{where} is not a plain file name in the {kind} {folder}; names must not hold "
                    f"a folder part, '..' or an absolute path")
    full = os.path.join(folder, name)
    if os.path.dirname(os.path.realpath(full)) != os.path.realpath(folder):
        raise error(f"{where} is a symlink leading out of the {kind} {folder} "
                    f"(to {os.path.realpath(full)})")
    if os.path.lexists(full) and not os.path.isfile(full):
        raise error(f"{where} is not a regular file")
    return full


def _shard_path(path: str, name: str, shard: str) -> str:
    """The path of a shard the index names: a plain file name of a weights file in the index's own
    folder (`contained_file`), not the index itself."""
    where = f"{path}: weight_map[{name!r}] = {shard!r}"
    full = contained_file(os.path.dirname(os.path.abspath(path)), shard, where)
    if os.path.realpath(full) == os.path.realpath(path):
        raise CheckpointError(f"{where} names the index file itself")
    if not shard.endswith(_SHARD_SUFFIXES):
        raise CheckpointError(f"{where} is not a weights shard (expected a file ending in "
                              f"{', '.join(_SHARD_SUFFIXES)})")
    return full


def read_index(path: str) -> Mapping[str, np.ndarray]:
    """A sharded checkpoint through its `*.index.json` (safetensors or .bin shards).

    Every shard must be a plain file name in the index's folder (checked before any is opened), and
    every tensor the index lists must be in the shards.
    """
    weight_map = _weight_map(path)
    paths = {shard: _shard_path(path, name, shard) for name, shard in weight_map.items()}
    shards = sorted(paths)
    missing = [s for s in shards if not os.path.exists(paths[s])]
    if missing:
        raise CheckpointError(f"{path} lists shard(s) that are not there: {', '.join(missing)}")
    merged = _Merged([read_weights(paths[s]) for s in shards])
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
    """name -> array for a `.safetensors`, `.bin` or `*.index.json` file (a regular file: a FIFO
    would block the reader forever)."""
    check_regular(path, CheckpointError, "weights file")
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
