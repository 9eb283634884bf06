"""The on-disk format of `bertjax extract` and `ActivationStore`, its reader.

An extract folder holds:

* `extract.json`: the command's parameters (`command`, compared on resume) and, per captured name,
  the layout of one example's array (`arrays`: name -> {shape, seq_axis, dtype}).
* `shards/<chunk>.safetensors`: one file per chunk of input lines; per name one flat 1-D tensor, the
  examples' arrays (padding stripped) concatenated in input order.
* `manifest/<chunk>.json`: one file per chunk, written atomically after its shard: the chunk's
  counts and, for each example, its input line, shard, offset (row within the shard), length and
  token ids. A chunk exists for readers exactly when its manifest file does. The shard a manifest
  names must be `shards/<plain name>.safetensors` inside the folder (`shard_path`: the sharded
  checkpoint index's rule, no `..`, absolute path or symlink leading out).
* `summary.json`: the closing counts, written when the whole input has been processed (with n
  processes, `summary-<i>-of-<n>.json` from each process i instead).

Layouts. An example's array is stored with its token axis (S; T for attn.k and attn.v) first and
padding stripped (a stored shape is a list of ints and "S", the example's length); the reader moves
that axis back to `seq_axis`, so `store[i]["layer.out"]` is [L, S_i, D] (L the selected layers) and
`store[i]["attn.probs"]` [L, N, S_i, T_i]. Reduced arrays (`--reduce mean|cls`) have no token axis:
[L, D], [D], [L, N, H], or [L, N, T_i] for the attention maps, whose key axis stays. Storing the
token axis first makes the tokens of consecutive examples contiguous, so `stacked` of an unreduced
name is one [T_all, ...] array.
"""

from __future__ import annotations

import functools
import json
import os
import re
import warnings
from typing import NamedTuple

import ml_dtypes
import numpy as np

from bertjax.checkpoints.readers import contained_file
from bertjax.model import capture as C
from bertjax.model.config import BertConfig

META_FILE, SUMMARY_FILE, SHARDS, MANIFEST = "extract.json", "summary.json", "shards", "manifest"
SEQ = "S"  # placeholder for an example's length in a stored shape
_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
           "BF16": np.dtype(ml_dtypes.bfloat16)}


def token_axis(letters) -> str | None:
    """The axis that runs over an example's tokens: S, or T for the keys and values (which have no
    S); None for pooled names. It is the axis stored first, stripped and reduced."""
    return "S" if "S" in letters else "T" if "T" in letters else None


def array_layout(name: str, config: BertConfig, n_layers: int, reduce: str) -> dict:
    """How one example's `name` is stored: {"shape": [int | "S", ...], "seq_axis": int | None}.

    The contract shape (capture.SHAPES) without B; L is the number of selected layers; the token
    axis (`token_axis`) comes first, or is pooled away when reduce is "mean" or "cls" (seq_axis
    None). A second length axis (the keys T of the attention maps) stays where it is.
    """
    sizes = {**C.axis_sizes(config, 0, 0), "L": n_layers, "S": SEQ, "T": SEQ}
    letters = [a for a in C.shape_letters(name, config) if a != "B"]
    axis = token_axis(letters)
    if axis is None:
        return {"shape": [sizes[a] for a in letters], "seq_axis": None}
    seq_axis = letters.index(axis)
    del letters[seq_axis]
    if reduce == "none":
        return {"shape": [SEQ] + [sizes[a] for a in letters], "seq_axis": seq_axis}
    return {"shape": [sizes[a] for a in letters], "seq_axis": None}


def example_shape(layout: dict, length: int) -> tuple[int, ...]:
    return tuple(length if d == SEQ else d for d in layout["shape"])


def manifest_path(folder: str, chunk: int) -> str:
    return os.path.join(folder, MANIFEST, f"{chunk:08d}.json")


def shard_name(chunk: int) -> str:
    return f"{SHARDS}/{chunk:08d}.safetensors"


def summary_file(index: int, count: int) -> str:
    """The closing summary of process `index` of `count`."""
    return SUMMARY_FILE if count == 1 else f"summary-{index}-of-{count}.json"


def read_json(path: str) -> dict:
    """A JSON file of the folder; ValueError naming it when Python cannot read it."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path} is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number too long
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def shard_path(folder: str, shard, manifest: str) -> str:
    """The path of the shard a manifest names: `shards/<plain file name>.safetensors`, inside the
    store's shards folder (the sharded checkpoint index's rule: `contained_file`)."""
    where = f"{manifest}: shard {shard!r}"
    name = shard[len(SHARDS) + 1:] if isinstance(shard, str) and shard.startswith(SHARDS + "/") \
        else shard if not isinstance(shard, str) else "/" + shard
    path = contained_file(os.path.join(folder, SHARDS), name, where, "store's shards folder",
                          ValueError)
    if not name.endswith(".safetensors"):
        raise ValueError(f"{where} is not a shard file (shards/<name>.safetensors)")
    return path


def memmap_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a read-only np.memmap (nothing read up front)."""
    stat = os.stat(path)
    return _memmap_safetensors(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)  # open shards, keyed by their modification time and size too
def _memmap_safetensors(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > size - 8:
            raise ValueError(f"{path} is not a safetensors shard (header length {n}, file size "
                             f"{size}): corrupted or truncated")
        try:
            header = json.loads(f.read(n))
        except (RecursionError, ValueError) as e:
            raise ValueError(f"{path} has a corrupted safetensors header "
                             f"({type(e).__name__})") from None
    header.pop("__metadata__", None)
    out = {}
    for key, info in header.items():
        begin, end = info["data_offsets"]
        if end == begin:
            out[key] = np.zeros(info["shape"], _DTYPES[info["dtype"]])
        else:
            out[key] = np.memmap(path, _DTYPES[info["dtype"]], "r", offset=8 + n + begin,
                                 shape=tuple(info["shape"]))
    return out


class Stacked(NamedTuple):
    """`values` [N, ...] (reduced) or [T_all, ...] (per token); `example_ids` [N] or [T_all]."""

    values: np.ndarray
    example_ids: np.ndarray


class ActivationStore:
    """Reads an extract folder: `len(store)`, `store[i]` -> {name: array}, `store.token_ids(i)`,
    `store.stacked(name)` -> `Stacked(values, example_ids)`. Examples are numbered 0.. in input
    order over the committed chunks.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        if not os.path.isfile(os.path.join(self.folder, META_FILE)):
            raise ValueError(f"{self.folder} is not a bertjax extract folder (no {META_FILE})")
        meta = read_json(os.path.join(self.folder, META_FILE))
        self.command, self.layouts = meta["command"], meta["arrays"]
        self.examples: list[dict] = []
        manifests = sorted(os.listdir(os.path.join(self.folder, MANIFEST)))
        for file in manifests:
            if file.endswith(".json") and not file.startswith("."):
                path = os.path.join(self.folder, MANIFEST, file)
                chunk = read_json(path)
                if chunk["examples"]:
                    shard_path(self.folder, chunk["shard"], path)  # checked once, read later
                self.examples += [{**e, "shard": chunk["shard"]} for e in chunk["examples"]]
        self.lengths = np.array([e["length"] for e in self.examples], np.int64)
        self._starts = {name: self._element_starts(layout) for name, layout in self.layouts.items()}

    def _element_starts(self, layout: dict) -> np.ndarray:
        """[N] where each example's flat array begins in its shard."""
        sizes = np.array([int(np.prod(example_shape(layout, e["length"]))) for e in self.examples],
                         np.int64)
        ends = np.cumsum(sizes)
        shards = [e["shard"] for e in self.examples]
        first = np.array([i == 0 or shards[i] != shards[i - 1] for i in range(len(shards))], bool)
        # elements before each example in its shard: the running total minus the total before
        # its shard's first example
        if not len(sizes):
            return sizes
        shard_base = np.maximum.accumulate(np.where(first, ends - sizes, 0))
        return ends - sizes - shard_base

    @property
    def names(self) -> list[str]:
        return sorted(self.layouts)

    @property
    def complete(self) -> bool:
        """Whether the extraction ran to the end of its input (in every process)."""
        files = os.listdir(self.folder)
        if SUMMARY_FILE in files:
            return True
        parts = [re.fullmatch(r"summary-(\d+)-of-(\d+)\.json", f) for f in files]
        found = {(int(m[1]), int(m[2])) for m in parts if m}
        return any(all((i, n) in found for i in range(n)) for _, n in found)

    def __len__(self) -> int:
        return len(self.examples)

    def _index(self, i: int) -> int:
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for a store of {len(self)}")
        return i % len(self)

    def _stored(self, name: str, i: int) -> np.ndarray:
        layout, e = self.layouts[name], self.examples[i]
        shape = example_shape(layout, e["length"])
        flat = memmap_safetensors(os.path.join(self.folder, e["shard"]))[name]
        start = self._starts[name][i]
        return flat[start: start + int(np.prod(shape))].reshape(shape)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """name -> example i's array in the contract's axis order without B (memory-mapped)."""
        i = self._index(i)
        out = {}
        for name, layout in self.layouts.items():
            a = self._stored(name, i)
            out[name] = a if layout["seq_axis"] is None else np.moveaxis(a, 0, layout["seq_axis"])
        return out

    def token_ids(self, i: int) -> np.ndarray:
        """int32 [S_i]: example i's token ids, [CLS] ... [SEP] (truncated to max_length); the
        tokenizer's `convert_ids_to_tokens` gives the token strings."""
        return np.asarray(self.examples[self._index(i)]["tokens"], np.int32)

    def tokens(self, i: int) -> np.ndarray:
        """Deprecated name of `token_ids` (it returns ids, not token strings)."""
        warnings.warn("ActivationStore.tokens(i) returns token ids and is renamed token_ids(i)",
                      DeprecationWarning, stacklevel=2)
        return self.token_ids(i)

    def line(self, i: int) -> int:
        """The 1-based input line example i came from."""
        return self.examples[self._index(i)]["line"]

    def stacked(self, name: str) -> Stacked:
        """All examples' `name` in one array, for probing.

        Reduced names give values [N, ...] and example_ids arange(N); unreduced ones the tokens of
        all examples, values [T_all, ...] (T_all = sum of lengths, S axis first) and example_ids
        [T_all] naming each token's example.
        """
        if name not in self.layouts:
            raise ValueError(f"{name!r} was not extracted; this store has {', '.join(self.names)}")
        shape = self.layouts[name]["shape"]
        per_token = shape[:1] == [SEQ]
        if shape.count(SEQ) > int(per_token):
            raise ValueError(f"{name!r} has a key axis as long as each example, so examples do "
                             f"not stack; read them one by one with store[i][{name!r}]")
        rest = tuple(d for d in shape if d != SEQ)
        shards = list(dict.fromkeys(e["shard"] for e in self.examples))  # in order, once each
        parts = [memmap_safetensors(os.path.join(self.folder, s))[name].reshape((-1,) + rest)
                 for s in shards]
        if not parts:
            values = np.zeros((0,) + rest, _DTYPES[self.layouts[name]["dtype"]])
        else:
            values = np.concatenate(parts) if len(parts) > 1 else parts[0]
        ids = np.arange(len(self))
        return Stacked(values, np.repeat(ids, self.lengths) if per_token else ids)
