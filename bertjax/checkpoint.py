"""The checkpoint folder: `load` reads it (or converts a PyTorch checkpoint in memory), `save` writes it.

A converted folder holds `config.json` (Hugging Face keys), `flax_model.msgpack` (the parameter tree
through `flax.serialization.to_bytes`) and the source's tokenizer files. It is written into a
temporary sibling folder and renamed into place, so an interrupted or failed conversion never leaves a
folder that looks complete, and an existing folder is replaced only with `force=True`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from bertjax.config import BertConfig
from bertjax.convert import state_dict_to_params
from bertjax.params import Heads, check_params, count_params
from bertjax.readers import CheckpointError, read_weights
from bertjax.sources import TOKENIZER_FILES, Source, locate

PARAMS_FILE = "flax_model.msgpack"
CONFIG_FILE = "config.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    return jnp.dtype(dtype).type


def _read_msgpack(path: str) -> dict:
    """A msgpack parameter tree; a transformers 4.x FlaxBertFor* tree is un-nested from `bert`."""
    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except Exception as e:  # noqa: BLE001  (msgpack raises many types on corrupted input)
        raise CheckpointError(f"cannot read {path}: corrupted or truncated msgpack ({e})") from None
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path} does not hold a parameter tree")
    if "bert" in tree:
        tree = {**tree.pop("bert"), **tree}
    if "params" in tree and "embeddings" not in tree:
        tree = tree["params"]
    return tree


@dataclasses.dataclass
class Loaded:
    """A checkpoint in memory: what `read_checkpoint` returns."""

    config: BertConfig
    params: dict
    heads: Heads
    source: Source
    notes: list


def read_checkpoint(src, config: BertConfig | str | None = None, dtype=jnp.float32) -> Loaded:
    """Locates, reads, checks and converts a checkpoint into a tree of NumPy arrays."""
    source = locate(src, config if isinstance(config, str) else None)
    if not isinstance(config, BertConfig):
        if source.config is None:
            raise CheckpointError(f"{source.weights} has no config.json beside it; pass a config "
                                  f"(--config PATH, or config=BertConfig(...))")
        config = BertConfig.from_json(source.config)
    np_dtype = np.dtype(_dtype(dtype))
    if source.weights.endswith(".msgpack"):
        params = _read_msgpack(source.weights)
        try:
            heads = check_params(params, config, where=source.weights)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        params = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(np_dtype, copy=False), params)
        notes = []
    else:
        params, heads, notes = state_dict_to_params(read_weights(source.weights), config, np_dtype)
    return Loaded(config, params, heads, source, notes)


def load(path, dtype=jnp.float32, config: BertConfig | None = None) -> tuple[BertConfig, dict]:
    """Reads a model: a converted folder, a Hugging Face folder / .bin / .safetensors / hub id
    (converted in memory), or a transformers 4.x `flax_model.msgpack` folder.

    Args:
      path: folder, weights file or hub id.
      dtype: parameter dtype (jnp.float32, jnp.bfloat16, jnp.float16 or their names).
      config: the BertConfig, needed for a single weights file without config.json beside it.

    Returns:
      (config, params) with params a nested dict of jax arrays.
    """
    loaded = read_checkpoint(path, config, dtype)
    return loaded.config, jax.tree_util.tree_map(jnp.asarray, loaded.params)


def _write_folder(folder: str, config: BertConfig, params: dict, tokenizer_dir: str | None) -> None:
    config.to_json(os.path.join(folder, CONFIG_FILE))
    with open(os.path.join(folder, PARAMS_FILE), "wb") as f:
        f.write(serialization.to_bytes(params))
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            path = os.path.join(tokenizer_dir, name)
            if os.path.isfile(path):
                shutil.copyfile(path, os.path.join(folder, name))


def save(out, config: BertConfig, params: dict, tokenizer_dir: str | None = None,
         force: bool = False) -> str:
    """Writes a checkpoint folder atomically (temporary sibling, then rename).

    Raises FileExistsError when `out` exists and force is False.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not force:
        raise FileExistsError(f"{out} already exists; pass --force (force=True) to replace it")
    check_params(params, config)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        _write_folder(tmp, config, params, tokenizer_dir)
        if os.path.exists(out):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=parent)
            os.rename(out, os.path.join(old, "x"))
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def convert_checkpoint(src, out, dtype="float32", force: bool = False,
                       config: str | None = None) -> dict:
    """Reads `src`, checks it whole, and writes the bertjax folder at `out`.

    Returns a summary: parameter count, dtype, layers, heads, the heads kept, notes, where it wrote.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.exists(out) and not force:
        raise FileExistsError(f"{out} already exists; pass --force to replace it")
    loaded = read_checkpoint(src, config, dtype)
    save(out, loaded.config, loaded.params, loaded.source.folder, force=force)
    c = loaded.config
    return {
        "source": loaded.source.origin, "out": out, "dtype": np.dtype(_dtype(dtype)).name,
        "parameters": count_params(loaded.params), "layers": c.num_hidden_layers,
        "attention_heads": c.num_attention_heads, "hidden_size": c.hidden_size,
        "heads": dataclasses.asdict(loaded.heads), "notes": loaded.notes,
    }
