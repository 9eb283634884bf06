"""PyTorch BERT state dict -> bertjax parameter tree.

The mapping is one rule, listed in full by `key_table` (and in conversion/README.md): a tree path
`a/b/<leaf>` comes from the PyTorch key `a.b.<weight|bias>`, where `kernel` (Dense, transposed
from torch's [out, in] to [in, out]), `embedding` and LayerNorm `scale` come from `weight`.

Checkpoint dialects accepted, normalised before the mapping:
* `bert.` prefix of BertForMaskedLM / BertForPreTraining / BertForSequenceClassification;
* Google-ported LayerNorm `gamma` / `beta`;
* `position_ids` / `token_type_ids` buffers (dropped);
* the NSP head `cls.seq_relationship.*` (dropped, reported in `notes`);
* the MLM decoder: `cls.predictions.decoder.weight` equal to the word embeddings is tied (dropped);
  an untied one is kept as `cls/predictions/decoder/kernel`; `cls.predictions.decoder.bias` is the
  same tensor as `cls.predictions.bias` and is dropped.

Everything is checked before any array is converted: missing and unexpected keys are listed by name
and every shape is compared with the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from bertjax.config import BertConfig
from bertjax.params import Heads, flatten, param_shapes, unflatten
from bertjax.readers import CheckpointError

_LEAF_TO_TORCH = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_NSP_PREFIX = "cls.seq_relationship."
_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
_WORD = "embeddings.word_embeddings.weight"


def torch_key(path: str) -> tuple[str, bool]:
    """PyTorch key (without `bert.` prefix) for a tree path, and whether it is transposed."""
    *parents, leaf = path.split("/")
    return ".".join(parents + [_LEAF_TO_TORCH[leaf]]), leaf == "kernel"


def key_table(config: BertConfig, heads: Heads) -> list[tuple[str, str, bool]]:
    """Every (PyTorch key, tree path, transposed) for a model with these heads."""
    table = []
    for path in flatten(param_shapes(config, heads)):
        key, transposed = torch_key(path)
        table.append((key, path, transposed))
    return table


@dataclasses.dataclass
class Normalized:
    """A state dict in canonical naming, with what was dropped on the way."""

    tensors: dict[str, str]  # canonical key -> key in the source state dict
    notes: list[str]


def _canonical(key: str) -> str:
    if key.startswith("bert."):
        key = key[len("bert."):]
    if key.endswith("LayerNorm.gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith("LayerNorm.beta"):
        key = key[: -len("beta")] + "bias"
    return key


def normalize(state: Mapping[str, np.ndarray]) -> Normalized:
    """Canonical key -> source key, dropping buffers and the NSP head."""
    keys: dict[str, str] = {}
    notes = []
    nsp = False
    for key in state:
        canon = _canonical(key)
        if canon in _BUFFERS:
            continue
        if canon.startswith(_NSP_PREFIX):
            nsp = True
            continue
        if canon in keys:
            raise CheckpointError(f"checkpoint has both {keys[canon]!r} and {key!r}")
        keys[canon] = key
    if nsp:
        notes.append("dropped the next-sentence-prediction head (cls.seq_relationship)")
    if _WORD not in keys:
        sample = ", ".join(sorted(state)[:4])
        raise CheckpointError(f"not a BERT checkpoint: no {_WORD!r} (bert. prefix optional); "
                              f"its keys look like: {sample}")
    return Normalized(keys, notes)


def detect_heads(keys: Mapping[str, str], state: Mapping, config: BertConfig) -> Heads:
    """Which heads a normalised checkpoint carries."""
    untied = False
    if _DECODER_WEIGHT in keys:
        decoder = state[keys[_DECODER_WEIGHT]]
        word = state[keys[_WORD]]
        untied = (not config.tie_word_embeddings or decoder.shape != word.shape
                  or not np.array_equal(decoder, word))
    return Heads(pooler="pooler.dense.weight" in keys,
                 mlm="cls.predictions.transform.dense.weight" in keys,
                 untied_decoder=untied, classifier="classifier.weight" in keys)


def _check_keys(keys: Mapping[str, str], table, heads: Heads) -> None:
    expected = {k for k, _, _ in table}
    ignorable = {_DECODER_BIAS} | ({_DECODER_WEIGHT} if heads.mlm else set())
    missing = sorted(expected - set(keys))
    unexpected = sorted(set(keys) - expected - ignorable)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:6])}"
                         + (" ..." if len(missing) > 6 else ""))
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}"
                         + (" ..." if len(unexpected) > 6 else ""))
        raise CheckpointError(f"checkpoint does not match a BERT with this config ({'; '.join(parts)})")


def _shape_of(state, key):
    if hasattr(state, "shape") and callable(state.shape):
        return tuple(state.shape(key))
    return tuple(np.shape(state[key]))


def state_dict_to_params(state: Mapping[str, np.ndarray], config: BertConfig,
                         dtype=np.float32) -> tuple[dict, Heads, list[str]]:
    """Converts a PyTorch BERT state dict (NumPy arrays) into the parameter tree.

    Returns (params, heads, notes). Raises CheckpointError before converting anything when a key is
    missing or unexpected, or a shape disagrees with the config. Casting to `dtype` is the
    correctly rounded NumPy / ml_dtypes cast; float32 is bit-exact.
    """
    norm = normalize(state)
    keys = norm.tensors
    heads = detect_heads(keys, state, config)
    table = key_table(config, heads)
    _check_keys(keys, table, heads)
    if _DECODER_BIAS in keys and not np.array_equal(state[keys[_DECODER_BIAS]],
                                                     state[keys["cls.predictions.bias"]]):
        raise CheckpointError("cls.predictions.decoder.bias differs from cls.predictions.bias; "
                              "transformers ties them, so this checkpoint is inconsistent")
    want = flatten(param_shapes(config, heads))
    for key, path, transposed in table:
        shape = _shape_of(state, keys[key])
        need = want[path].shape[::-1] if transposed else want[path].shape
        if shape != need:
            raise CheckpointError(f"{keys[key]} has shape {shape}, the config needs {need}")
    flat = {}
    for key, path, transposed in table:
        array = state[keys[key]]
        if not jnp.issubdtype(array.dtype, jnp.floating):
            raise CheckpointError(f"{keys[key]} has dtype {array.dtype}, expected floating point")
        array = array.T if transposed else array
        flat[path] = np.ascontiguousarray(array.astype(dtype, copy=False))
    return unflatten(flat), heads, norm.notes
