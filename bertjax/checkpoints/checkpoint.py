"""The checkpoint folder: `load` reads it (or converts a PyTorch checkpoint in memory), `save` writes it.

A converted folder holds `config.json` (Hugging Face keys), `flax_model.msgpack` (the parameter tree
in the format of `flax.serialization.to_bytes`) and the source's tokenizer files. It is written into a
temporary sibling folder and renamed into place, so an interrupted or failed conversion never leaves a
folder that looks complete, and an existing folder is replaced only with `force=True`.

The msgpack file is written one leaf at a time (`write_msgpack`): byte for byte what `to_bytes`
returns, without building the whole file, and every array's bytes in memory a second and third time.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import inspect
import mmap
import os
import shutil
import struct
import tempfile

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
from flax import serialization

from bertjax.checkpoints.convert import check_finite, state_dict_to_params
from bertjax.checkpoints.files import make_public
from bertjax.checkpoints.readers import CheckpointError, read_weights
from bertjax.checkpoints.sources import TOKENIZER_FILES, Source, locate
from bertjax.model.config import BertConfig
from bertjax.model.encoder import is_stacked
from bertjax.model.params import Heads, check_params, count_params, flatten, unflatten

PARAMS_FILE = "flax_model.msgpack"
CONFIG_FILE = "config.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_NDARRAY_EXT = 1  # flax.serialization's msgpack ExtType code for an ndarray
_MAY_ALIAS = "may_alias" in inspect.signature(jax.device_put).parameters  # absent in older jax
_FIXEXT = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}  # msgpack fixext formats by payload size


def _dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return jnp.dtype(dtype).type


def _bin_header(size: int) -> bytes:
    """The msgpack header of a bin (raw bytes) object of `size` bytes."""
    if size < 2**8:
        return struct.pack(">BB", 0xC4, size)
    if size < 2**16:
        return struct.pack(">BH", 0xC5, size)
    return struct.pack(">BI", 0xC6, size)


def _ext_header(size: int, code: int) -> bytes:
    """The msgpack header of an ExtType with a payload of `size` bytes (the format msgpack picks)."""
    if size in _FIXEXT:
        return struct.pack(">Bb", _FIXEXT[size], code)
    if size < 2**8:
        return struct.pack(">BBb", 0xC7, size, code)
    if size < 2**16:
        return struct.pack(">BHb", 0xC8, size, code)
    return struct.pack(">BIb", 0xC9, size, code)


def _write_array(f, packer: msgpack.Packer, array: np.ndarray) -> None:
    """One leaf as flax encodes it: ExtType(1, packb((shape, dtype name, raw bytes)))."""
    if array.nbytes > serialization.MAX_CHUNK_SIZE:  # flax splits huge arrays into chunks
        f.write(msgpack.packb(serialization._chunk(array), strict_types=True,
                              default=serialization._msgpack_ext_pack))
        return
    array = np.ascontiguousarray(array)
    head = (packer.pack_array_header(3) + packer.pack(array.shape) + packer.pack(array.dtype.name)
            + _bin_header(array.nbytes))
    f.write(_ext_header(len(head) + array.nbytes, _NDARRAY_EXT))
    f.write(head)
    f.write(array.reshape(-1).view(np.uint8).data)


def _write_node(f, packer: msgpack.Packer, node) -> None:
    if isinstance(node, dict):
        f.write(packer.pack_map_header(len(node)))
        for key, value in node.items():
            f.write(packer.pack(str(key)))
            _write_node(f, packer, value)
    else:
        _write_array(f, packer, np.asarray(node))


def write_msgpack(path: str, params: dict) -> None:
    """Writes a tree of arrays exactly as `flax.serialization.to_bytes(params)` encodes it, leaf by
    leaf, so that no second copy of the parameters is ever held in memory."""
    with open(path, "wb") as f:
        _write_node(f, msgpack.Packer(use_bin_type=True), params)


def _unnest(tree: dict) -> tuple[dict, list[str]]:
    """A transformers 4.x FlaxBertFor* tree in our layout: `bert` un-nested, NSP head dropped."""
    if "params" in tree and "embeddings" not in tree and "bert" not in tree:
        tree = tree["params"]
    if "bert" in tree:
        tree = {**tree.pop("bert"), **tree}
    notes = []
    predictions = tree.get("cls", {})
    if isinstance(predictions, dict) and "seq_relationship" in predictions:
        tree["cls"] = {k: v for k, v in predictions.items() if k != "seq_relationship"}
        notes.append("dropped the next-sentence-prediction head (cls/seq_relationship)")
    if tree.get("cls") == {}:
        tree.pop("cls")
    return tree, notes


def read_msgpack(path: str) -> tuple[dict, list[str]]:
    """A msgpack parameter tree (ours, or transformers 4.x FlaxBertModel / FlaxBertFor*'s), and notes."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            tree = serialization.msgpack_restore(data)
    except Exception as e:  # noqa: BLE001  (msgpack raises many types on corrupted input)
        raise CheckpointError(f"cannot read {path}: corrupted or truncated msgpack ({e})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path} does not hold a parameter tree")
    return _unnest(tree)


@dataclasses.dataclass
class Loaded:
    """A checkpoint in memory: what `read_checkpoint` returns."""

    config: BertConfig
    params: dict
    heads: Heads
    source: Source
    notes: list


def _config_for(source: Source, config: BertConfig | None) -> BertConfig:
    if isinstance(config, BertConfig):
        return config
    if source.config is None:
        raise CheckpointError(f"{source.weights} has no config.json beside it; pass its config "
                              f"(config=BertConfig(...) or the path of a config.json)")
    return BertConfig.from_json(source.config)


def _params_from_msgpack(path: str, config: BertConfig, dtype,
                         strict: bool = False) -> tuple[dict, Heads, list[str]]:
    params, notes = read_msgpack(path)
    try:
        heads = check_params(params, config, where=path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(dtype, copy=False), params)
    check_finite(flatten(params), path, strict)
    return params, heads, notes


def read_checkpoint(src, config: BertConfig | str | None = None, dtype=jnp.float32,
                    strict: bool = False) -> Loaded:
    """Locates, reads, checks and converts a checkpoint into a tree of NumPy arrays.

    Args:
      src: a folder, a weights file or a hub id (see `bertjax.checkpoints.sources.locate`), or a Source.
      config: a BertConfig, or the path of a config.json; None reads the source's config.json.
      dtype: the parameters' dtype (a name of DTYPES or a jnp dtype).
      strict: refuse weights holding NaN or Inf (CheckpointError) instead of warning
        (`bertjax.checkpoints.convert.NonFiniteWeightsWarning`).
    """
    source = src if isinstance(src, Source) else locate(src, config if isinstance(config, str) else None)
    config = _config_for(source, config)
    np_dtype = np.dtype(_dtype(dtype))
    if source.weights.endswith(".msgpack"):
        params, heads, notes = _params_from_msgpack(source.weights, config, np_dtype, strict)
    else:
        params, heads, notes = state_dict_to_params(read_weights(source.weights), config, np_dtype,
                                                    strict, source.weights)
    if heads.untied_decoder and config.tie_word_embeddings:  # the file's decoder differs: untied
        config = dataclasses.replace(config, tie_word_embeddings=False)
    return Loaded(config, params, heads, source, notes)


def load(path, dtype=jnp.float32, config: BertConfig | None = None,
         strict: bool = False, stacked: bool = False) -> tuple[BertConfig, dict]:
    """Reads a model: a converted folder, a Hugging Face folder / .bin / .safetensors / hub id
    (converted in memory), or a transformers 4.x `flax_model.msgpack` folder.

    Args:
      path: folder, weights file or hub id.
      dtype: parameter dtype (jnp.float32, jnp.bfloat16, jnp.float16 or their names).
      config: the BertConfig, needed for a single weights file without config.json beside it.
      strict: refuse weights holding NaN or Inf (by default a warning names them).
      stacked: return `encoder/layer` stacked over layers ([L, ...] leaves, `stack_layers`'s
        layout), stacked while reading: the model is in memory once. `forward` and the parts take
        either layout; with the per-layer one, `forward` keeps a stacked copy beside it
        (`stacked_once`), which for bert-base is 340 MB more.

    Returns:
      (config, params) with params a nested dict of jax arrays.
    """
    loaded = read_checkpoint(path, config, dtype, strict)
    config, params = loaded.config, loaded.params
    del loaded
    return config, to_device(params, stacked)


def to_device(tree: dict, stacked: bool = False) -> dict:
    """The NumPy parameter tree as jax arrays, one leaf at a time, each NumPy leaf dropped from
    `tree` (emptied on the way) once moved; `stacked` stacks `encoder/layer` on the way.

    A leaf that owns its memory (no other array sees it: `tree` is emptied) becomes the jax
    array's memory where the device is the CPU (`_on_device`), so the model is not held twice:
    hand over a tree whose arrays nobody else keeps (a NumPy array changed afterwards would change
    the parameter).
    The blocks NumPy frees stay in the C heap (glibc keeps them for reuse) and are handed back to
    the system at the end (`release_freed_memory`): before both, a loaded bert-base held 440 MB
    of freed NumPy memory beside its jax arrays.
    """
    out = _moved(tree, stacked, ())
    gc.collect()  # NumPy leaves caught in reference cycles (tree flattening's) go now, not later
    release_freed_memory()
    return out


def _moved(tree: dict, stacked: bool, where: tuple) -> dict:
    out = {}
    for key in list(tree):
        value = tree.pop(key)
        if where == ("encoder",) and key == "layer" and stacked and not is_stacked(value):
            out[key] = _stacked_layers(value)
        elif isinstance(value, dict):
            out[key] = _moved(value, stacked, (*where, key))
        else:
            out[key] = _on_device(value)
        del value
    return out


def _stacked_layers(layers: dict) -> dict:
    """{"0": tree, "1": tree, ...} of NumPy leaves -> one tree of [L, ...] jax leaves, one leaf path
    at a time, the per-layer arrays of each freed (and handed back) before the next is stacked:
    at most one leaf path's arrays are in memory twice."""
    flat = [flatten(layers.pop(str(i))) for i in range(len(layers))]
    stacked = {}
    for path in list(flat[0]):
        stacked[path] = _on_device(np.stack([f.pop(path) for f in flat]))
        release_freed_memory()
    return unflatten(stacked)


def _on_device(x) -> jax.Array:
    """A jax array of NumPy `x` that nothing else refers to: its memory is shared where the
    default device can use host memory as it is (the CPU, aligned), copied otherwise."""
    x = np.asarray(x)
    owned = x.base is None and x.flags.c_contiguous
    return jax.device_put(x, may_alias=True) if owned and _MAY_ALIAS else jax.device_put(x)


def release_freed_memory() -> None:
    """Hands the C heap's free blocks back to the system (glibc's `malloc_trim`); nothing elsewhere."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: libc's, where it is glibc
    except (OSError, AttributeError, TypeError):
        pass  # not glibc (macOS, musl, Windows): its allocator returns memory its own way


def _write_folder(folder: str, config: BertConfig, params: dict, tokenizer_dir: str | None) -> None:
    config.to_json(os.path.join(folder, CONFIG_FILE))
    write_msgpack(os.path.join(folder, PARAMS_FILE), params)
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            path = os.path.join(tokenizer_dir, name)
            if os.path.isfile(path):
                shutil.copyfile(path, os.path.join(folder, name))


def _refuse_existing(out: str, force: bool) -> None:
    if os.path.lexists(out) and not force:
        raise FileExistsError(f"{out} already exists; pass force=True to replace it")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise FileExistsError(f"{out} exists and is not a folder; not replacing it")


def _replace(tmp: str, out: str) -> None:
    """Moves the finished temporary folder to `out`, replacing an existing `out` (two renames)."""
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    previous = os.path.join(old, "previous")
    os.rename(out, previous)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(previous, out)  # put the old folder back
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _refuse_source_inside(source: Source, out: str) -> None:
    """Replacing `out` must not delete the source: refuse an OUT that is or holds the source."""
    out = os.path.realpath(out)
    if any(path and os.path.commonpath([os.path.realpath(path), out]) == out
           for path in (source.weights, source.folder)):
        raise FileExistsError(f"OUT {out} is or holds the source {source.origin}; write somewhere "
                              f"else")


def save(out, config: BertConfig, params: dict, tokenizer_dir: str | None = None,
         force: bool = False) -> str:
    """Writes a checkpoint folder atomically (temporary sibling, then rename); returns its path.
    The folder holds the contract's per-layer tree whether `params` are per-layer or stacked.

    Raises FileExistsError when `out` exists and force is False, ValueError when `params` do not
    match `config`.
    """
    out = os.path.abspath(os.fspath(out))
    _refuse_existing(out, force)
    check_params(params, config)
    params = _per_layer(params)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        _write_folder(tmp, config, params, tokenizer_dir)
        make_public(tmp)  # private while partial; the umask's mode once complete
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _per_layer(params: dict) -> dict:
    """The tree with stacked `encoder/layer` leaves ([L, ...]) split back into `encoder/layer/<i>`
    (views of host copies, no second copy on CPU); a per-layer tree as it is."""
    layers = params.get("encoder", {}).get("layer")
    if layers is None or not is_stacked(layers):
        return params
    host = jax.tree_util.tree_map(np.asarray, layers)
    count = len(jax.tree_util.tree_leaves(host)[0])
    split = {str(i): jax.tree_util.tree_map(lambda x, i=i: x[i], host) for i in range(count)}
    return {**params, "encoder": {**params["encoder"], "layer": split}}


def convert_checkpoint(src, out, dtype="float32", force: bool = False,
                       config: str | BertConfig | None = None, strict: bool = False) -> dict:
    """Reads `src` (a path, a hub id or a located Source), checks it whole, and writes the bertjax
    folder at `out`.

    `config` (a config.json path or a BertConfig) is needed for a weights file with no config.json
    beside it. Refuses an existing `out` without `force`, and an `out` that is or holds the source;
    with `strict`, also weights holding NaN or Inf (by default a warning names them).

    Returns a summary: source, out, dtype, parameter count, layers, attention heads, hidden size,
    the heads kept and notes on what was dropped.
    """
    out = os.path.abspath(os.fspath(out))
    _refuse_existing(out, force)
    source = src if isinstance(src, Source) else locate(src, config if isinstance(config, str) else None)
    _refuse_source_inside(source, out)
    loaded = read_checkpoint(source, config if isinstance(config, BertConfig) else None, dtype,
                             strict)
    save(out, loaded.config, loaded.params, loaded.source.folder, force=force)
    c = loaded.config
    return {
        "source": loaded.source.origin, "out": out, "dtype": np.dtype(_dtype(dtype)).name,
        "parameters": count_params(loaded.params), "layers": c.num_layers,
        "attention_heads": c.num_attention_heads, "hidden_size": c.hidden_size,
        "heads": {name: present for name, present in dataclasses.asdict(loaded.heads).items()
                  if isinstance(present, bool)}, "notes": loaded.notes,
    }
