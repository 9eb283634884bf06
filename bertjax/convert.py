"""PyTorch BERT state dict -> bertjax parameter tree.

The mapping is one rule, listed in full by `key_table` (and in conversion/README.md): a tree path
`a/b/<leaf>` comes from the PyTorch key `a.b.<weight|bias>`, where `kernel` (Dense, transposed
from torch's [out, in] to [in, out]), `embedding` and LayerNorm `scale` come from `weight`.

Checkpoint dialects accepted, normalised before the mapping:
* `bert.` prefix of BertForMaskedLM / BertForPreTraining / BertForSequenceClassification;
* Google-ported LayerNorm `gamma` / `beta`;
* `position_ids` / `token_type_ids` buffers (dropped);
* the NSP head `cls.seq_relationship.*` (dropped, reported in `notes`);
* the MLM decoder: with `tie_word_embeddings` (the default) the decoder is the word embedding table,
  as in transformers, and a stored `cls.predictions.decoder.weight` is dropped; with
  `tie_word_embeddings: false` it is kept as `cls/predictions/decoder/kernel`.
  `cls.predictions.decoder.bias` is the same tensor as `cls.predictions.bias` and is dropped.

Everything is checked before any array is converted: missing and unexpected keys are listed by name,
every shape is compared with the config and every dtype must be floating point.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bertjax.config import BertConfig
from bertjax.params import Heads, flatten, param_shapes, unflatten
from bertjax.readers import CheckpointError, dtype_of, shape_of

_LEAF_TO_TORCH = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
_NSP_PREFIX = "cls.seq_relationship."
_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
_MLM_BIAS = "cls.predictions.bias"
_WORD = "embeddings.word_embeddings.weight"
# A progress bar over tensors only for checkpoints this big (tiny test models stay quiet).
PROGRESS_MIN_PARAMS = 50_000_000


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
    """`bert.` prefix removed, Google's LayerNorm gamma/beta renamed weight/bias."""
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
    if _WORD not in keys:
        sample = ", ".join(sorted(state)[:4]) or "(no tensors at all)"
        raise CheckpointError(f"not a BERT checkpoint: no {_WORD!r} (bert. prefix optional); "
                              f"its keys look like: {sample}")
    notes = ["dropped the next-sentence-prediction head (cls.seq_relationship)"] if nsp else []
    return Normalized(keys, notes)


def detect_heads(keys: Mapping[str, str], config: BertConfig) -> Heads:
    """Which heads a normalised checkpoint carries; the decoder is untied only when the config
    says so (transformers ties it otherwise, whatever the file holds)."""
    mlm = "cls.predictions.transform.dense.weight" in keys
    return Heads(pooler="pooler.dense.weight" in keys, mlm=mlm,
                 untied_decoder=mlm and not config.tie_word_embeddings,
                 classifier="classifier.weight" in keys)


def _listed(kind: str, names: list[str], most: int = 6) -> str:
    more = " ..." if len(names) > most else ""
    return f"{kind} {len(names)}: {', '.join(names[:most])}{more}"


def check_keys(keys: Mapping[str, str], table, heads: Heads) -> None:
    """Raises CheckpointError listing missing and unexpected keys (canonical names)."""
    expected = {k for k, _, _ in table}
    ignorable = {_DECODER_BIAS} | ({_DECODER_WEIGHT} if heads.mlm else set())
    missing = sorted(expected - set(keys))
    unexpected = sorted(set(keys) - expected - ignorable)
    parts = ([_listed("missing", missing)] if missing else []) + (
        [_listed("unexpected", unexpected)] if unexpected else [])
    if parts:
        raise CheckpointError(f"checkpoint does not match a BERT with this config ({'; '.join(parts)})")


def check_tensors(state: Mapping, keys: Mapping[str, str], table, config: BertConfig,
                  heads: Heads) -> None:
    """Raises CheckpointError on the first tensor whose shape disagrees with the config (torch's
    [out, in] for Dense weights) or whose dtype is not floating point."""
    want = flatten(param_shapes(config, heads))
    for key, path, transposed in table:
        shape = shape_of(state, keys[key])
        need = want[path].shape[::-1] if transposed else want[path].shape
        if shape != need:
            raise CheckpointError(f"{keys[key]} has shape {shape}, the config needs {need}")
    for key, _, _ in table:
        dtype = dtype_of(state, keys[key])
        if not jnp.issubdtype(dtype, jnp.floating):
            raise CheckpointError(f"{keys[key]} has dtype {dtype}, expected floating point")


def decoder_notes(state: Mapping, keys: Mapping[str, str], heads: Heads) -> list[str]:
    """Checks the decoder tensors that are dropped; returns a note when a tied one differs."""
    if _DECODER_BIAS in keys and not np.array_equal(state[keys[_DECODER_BIAS]],
                                                     state[keys[_MLM_BIAS]]):
        raise CheckpointError("cls.predictions.decoder.bias differs from cls.predictions.bias; "
                              "transformers ties them, so this checkpoint is inconsistent")
    if heads.mlm and not heads.untied_decoder and _DECODER_WEIGHT in keys:
        decoder, word = state[keys[_DECODER_WEIGHT]], state[keys[_WORD]]
        if decoder.shape != word.shape or not np.array_equal(decoder, word):
            return [f"{keys[_DECODER_WEIGHT]} differs from the word embeddings but the config ties "
                    f"them (tie_word_embeddings=true): used the word embeddings, as transformers does"]
    return []


def convert_tensors(state: Mapping, keys: Mapping[str, str], table, dtype) -> dict[str, np.ndarray]:
    """Tree path -> C-contiguous array of `dtype`, transposed where the table says.

    Casting is NumPy's / ml_dtypes' correctly rounded cast; float32 -> float32 is bit-exact. A
    progress bar runs over the tensors of big checkpoints.
    """
    total = sum(int(np.prod(shape_of(state, keys[k]))) for k, _, _ in table)
    flat = {}
    for key, path, transposed in tqdm(table, desc="converting", unit="tensor", leave=False,
                                      disable=total < PROGRESS_MIN_PARAMS):
        array = state[keys[key]]
        array = array.T if transposed else array
        flat[path] = np.ascontiguousarray(array.astype(dtype, copy=False))
    return flat


def state_dict_to_params(state: Mapping[str, np.ndarray], config: BertConfig,
                         dtype=np.float32) -> tuple[dict, Heads, list[str]]:
    """Converts a PyTorch BERT state dict (NumPy arrays) into the parameter tree.

    Args:
      state: source key -> array (or a lazy mapping from `bertjax.readers.read_weights`).
      config: the model's config; every shape is checked against it.
      dtype: dtype of the converted arrays (float32, bfloat16 or float16).

    Returns:
      (params, heads, notes): the nested tree of NumPy arrays, the heads found, and what was
      dropped or overridden on the way. Raises CheckpointError before converting anything when a
      key is missing or unexpected, or a shape or dtype disagrees with the config.
    """
    norm = normalize(state)
    heads = detect_heads(norm.tensors, config)
    table = key_table(config, heads)
    check_keys(norm.tensors, table, heads)
    check_tensors(state, norm.tensors, table, config, heads)
    notes = norm.notes + decoder_notes(state, norm.tensors, heads)
    return unflatten(convert_tensors(state, norm.tensors, table, dtype)), heads, notes
