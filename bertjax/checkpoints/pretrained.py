"""A ready model for the CLI and the notebooks: config, params and tokenizer, from a name or path.

`load_pretrained(None)` is the offline default model (all-MiniLM-L6-v2 from its pip package),
converted on first use into the user cache folder (`$BERTJAX_CACHE`, else `~/.cache/bertjax`) and
read from there afterwards. Any other name goes through `bertjax.load` (a converted folder, a
Hugging Face folder or weights file, or a hub id).
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax.numpy as jnp

from bertjax.checkpoints.checkpoint import PARAMS_FILE, convert_checkpoint, load
from bertjax.checkpoints.sources import DEFAULT_MODEL
from bertjax.model.config import BertConfig


@dataclasses.dataclass
class Pretrained:
    """A loaded model. `folder` holds its config and tokenizer files (None for a bare file)."""

    config: BertConfig
    params: dict
    tokenizer: object | None
    folder: str | None


def cache_dir() -> str:
    return os.environ.get("BERTJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "bertjax"))


def cached_folder(model: str) -> str:
    """The converted folder of a hub id in the user cache, converting it on first use."""
    folder = os.path.join(cache_dir(), re.sub(r"[^\w.-]+", "--", model))
    if not os.path.isfile(os.path.join(folder, PARAMS_FILE)):
        convert_checkpoint(model, folder, force=os.path.exists(folder))
    return folder


def tokenizer_for(folder: str | None):
    """transformers' tokenizer from a folder with tokenizer files, or None."""
    if folder is None or not any(os.path.isfile(os.path.join(folder, f))
                                 for f in ("tokenizer.json", "vocab.txt")):
        return None
    import transformers

    return transformers.AutoTokenizer.from_pretrained(folder)


def load_pretrained(model: str | None = None, dtype=jnp.float32) -> Pretrained:
    """Config, params and tokenizer for `model` (None: the offline default model)."""
    if model is None or model == DEFAULT_MODEL:
        model = cached_folder(DEFAULT_MODEL)
    config, params = load(model, dtype)
    folder = model if os.path.isdir(model) else None
    if folder is None and not os.path.exists(model):  # a hub id: tokenizer from its snapshot
        from bertjax.checkpoints.sources import locate

        folder = locate(model).folder
    return Pretrained(config, params, tokenizer_for(folder), folder)
