"""A ready model for the CLI and the notebooks: config, params and tokenizer, from a name or path.

`load_pretrained(None)` is the offline default model (all-MiniLM-L6-v2 from its pip package),
converted on first use into the user cache folder (`$BERTJAX_CACHE`, else `~/.cache/bertjax`) and
read from there afterwards. Any other name goes through `bertjax.load` (a converted folder, a
Hugging Face folder or weights file, or a hub id). `tokenizer_for(model)` finds a model's tokenizer
the same way; `has_mlm_head(model)` answers from the parameter names alone, so that a command can
refuse a model before converting or compiling anything. This module imports no JAX until it loads.
"""

from __future__ import annotations

import dataclasses
import os
import re

from bertjax.checkpoints.readers import weight_names
from bertjax.checkpoints.sources import DEFAULT_MODEL, Source, locate
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


def _cache_path(model: str) -> str:
    return os.path.join(cache_dir(), re.sub(r"[^\w.-]+", "--", model))


def cached_folder(model: str) -> str:
    """The converted folder of a hub id in the user cache, converting it on first use."""
    from bertjax.checkpoints.checkpoint import PARAMS_FILE, convert_checkpoint

    folder = _cache_path(model)
    if not os.path.isfile(os.path.join(folder, PARAMS_FILE)):
        convert_checkpoint(model, folder, force=os.path.exists(folder))
    return folder


_PARAMS_FILE = "flax_model.msgpack"  # = checkpoint.PARAMS_FILE (that module imports jax and flax)
TOKENIZER_MARKERS = ("tokenizer.json", "vocab.txt")  # either one makes a folder's tokenizer usable


def has_tokenizer(folder: str | None) -> bool:
    """Whether `folder` holds tokenizer files transformers can read (TOKENIZER_MARKERS)."""
    return folder is not None and any(os.path.isfile(os.path.join(folder, f))
                                      for f in TOKENIZER_MARKERS)


def _tokenizer_folder(model: str | os.PathLike | None) -> str:
    """The folder whose tokenizer files go with `model`, found as `bertjax.load` finds the model."""
    model = DEFAULT_MODEL if model is None else os.fspath(model)
    if model == DEFAULT_MODEL and has_tokenizer(_cache_path(model)):
        return _cache_path(model)  # the converted copy load_pretrained made: no hub call
    if os.path.isdir(model):
        folder = model
    elif os.path.isfile(model):  # a weights file: the tokenizer files beside it
        folder = os.path.dirname(os.path.abspath(model))
    else:  # a hub id; raises naming the path or id when there is no such model
        folder = locate(model).folder
    if not has_tokenizer(folder):
        where = f"{folder} (the folder of {model})" if folder != model else folder
        raise FileNotFoundError(f"no tokenizer files in {where}: looked for "
                                f"{' or '.join(TOKENIZER_MARKERS)}")
    return folder


def tokenizer_for(model: str | os.PathLike | None = None):
    """transformers' tokenizer of a model: a folder, a weights file (its folder), a hub id (its
    snapshot, or the installed offline package) or None (the offline default model).

    Raises FileNotFoundError naming the folder and the files looked for when it has no tokenizer,
    and CheckpointError (a ValueError) for a path that does not exist or an unknown hub id.
    """
    folder = _tokenizer_folder(model)
    import transformers

    named = _named_tokenizer_class(folder)
    if named is not None:  # the class AutoTokenizer would pick, without its torch import
        return named.from_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def _named_tokenizer_class(folder: str):
    """The transformers tokenizer class `tokenizer_config.json` names, or None (then AutoTokenizer
    decides). AutoTokenizer picks the same class from that key, but imports transformers' model
    configuration machinery on the way, which imports torch when it is installed (7 s of a warm
    `bertjax inspect`); the class itself needs only the `tokenizers` library."""
    import json

    import transformers

    try:
        with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
            name = json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not re.fullmatch(r"[A-Z]\w*Tokenizer(Fast)?", name):
        return None
    try:
        return getattr(transformers, name, None)
    except (ImportError, AttributeError):  # a class whose backend is not installed
        return None


def _source(model: str | None) -> Source:
    """Where `load_pretrained(model)` would read the weights from, without converting anything."""
    if model is None or model == DEFAULT_MODEL:
        cached = _cache_path(DEFAULT_MODEL)
        return locate(cached if os.path.isfile(os.path.join(cached, _PARAMS_FILE)) else DEFAULT_MODEL)
    return locate(model)


# The MLM head's transform, as torch names it in each family (BERT, RoBERTa family and MPNet,
# DistilBERT, ELECTRA's generator, ALBERT) and as the tree names it.
_MLM_PREFIXES = ("cls.predictions.transform.", "lm_head.dense.", "vocab_transform.",
                 "generator_predictions.dense.", "predictions.dense.", "cls/predictions/transform/")


def has_mlm_head(model: str | None) -> bool:
    """Whether `load_pretrained(model)` would have an MLM head, from the parameter names alone:
    nothing converted or compiled, a safetensors or msgpack file's tensors not even read."""
    for name in weight_names(_source(model).weights):
        name = name.removeprefix("params/").removeprefix("bert.")
        if name.startswith(_MLM_PREFIXES):
            return True
    return False


def load_pretrained(model: str | None = None, dtype="float32") -> Pretrained:
    """Config, params and tokenizer for `model` (None: the offline default model)."""
    from bertjax.checkpoints.checkpoint import load

    if model is None or model == DEFAULT_MODEL:
        model = cached_folder(DEFAULT_MODEL)
    config, params = load(model, dtype)
    folder = model if os.path.isdir(model) else None
    if folder is None and not os.path.exists(model):  # a hub id: tokenizer from its snapshot
        folder = locate(model).folder
    tokenizer = tokenizer_for(folder) if has_tokenizer(folder) else None
    return Pretrained(config, params, tokenizer, folder)
