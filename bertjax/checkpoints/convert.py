"""PyTorch state dict of any supported family -> bertjax parameter tree.

The mapping is one rule, listed in full by `key_table` (and in conversion/README.md): a tree path
`a/b/<leaf>` comes from the PyTorch key `a.b.<weight|bias>`, where `kernel` (Dense, transposed
from torch's [out, in] to [in, out]), `embedding` and LayerNorm `scale` come from `weight`; the
other families rename that key by their table (`bertjax.checkpoints.keys`).

Checkpoint dialects accepted, normalised before the mapping:
* the family's base-model prefix (`bert.`, `roberta.`, `distilbert.`, `electra.`, `albert.`,
  `mpnet.`) of its task models, optional;
* legacy `gamma` / `beta` (renamed weight / bias, as transformers does);
* `position_ids` / `token_type_ids` buffers (dropped);
* the NSP head `cls.seq_relationship.*` (dropped, reported in `notes`);
* the MLM decoder, resolved as transformers 5 loads it (`resolve_decoder`): the decoder weight is
  the word embedding table (tied, the default) unless the config says `tie_word_embeddings: false`
  or the file holds a `cls.predictions.decoder.weight` that differs from the word embeddings; an
  untied one is kept as `cls/predictions/decoder/kernel`. The output bias is the one transformers'
  forward adds, `cls.predictions.decoder.bias`, when the file has it (the same tensor as
  `cls.predictions.bias` unless the decoder is untied), else `cls.predictions.bias`.

Everything is checked before any array is converted: missing and unexpected keys are listed by name,
every shape is compared with the config and every dtype must be floating point. NaN or Inf in the
converted weights gives a `NonFiniteWeightsWarning` naming the tensors (conversion goes on), or,
with `strict=True`, a CheckpointError.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bertjax.checkpoints.keys import BASE_PREFIX, rename, source_key  # noqa: F401 (re-exported)
from bertjax.checkpoints.readers import CheckpointError, dtype_of, shape_of
from bertjax.model.config import BertConfig
from bertjax.model.params import Heads, flatten, param_shapes, unflatten

_LEAF_TO_TORCH = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")  # torch buffers, not weights
_NSP_PREFIX = "cls.seq_relationship."
_WORD = "embeddings.word_embeddings.weight"
# Keys transformers ignores on load, per family (DeBERTa: a position table the config does not use,
# the pretraining replaced-token head).
_IGNORED = {"deberta-v2": ("mask_predictions.",)}
# A progress bar over tensors only for checkpoints this big (tiny test models stay quiet).
PROGRESS_MIN_PARAMS = 50_000_000


def torch_key(path: str) -> tuple[str, bool]:
    """PyTorch key (without `bert.` prefix) for a tree path, and whether it is transposed."""
    *parents, leaf = path.split("/")
    return ".".join(parents + [_LEAF_TO_TORCH[leaf]]), leaf == "kernel"


def family_key(config: BertConfig, path: str) -> tuple[str, bool]:
    """The family's PyTorch key (without its base-model prefix) for a tree path, and whether it is
    transposed: BERT's key (`torch_key`) renamed by the family's table (`bertjax.checkpoints.keys`)."""
    key, transposed = torch_key(path)
    return rename(config, key), transposed


def key_table(config: BertConfig, heads: Heads) -> list[tuple[str, str, bool]]:
    """Every (PyTorch key, tree path, transposed) for a model of this family with these heads: the
    one table that serves import and export (keys without the base-model prefix; `source_key`
    adds it where transformers' task models have it)."""
    table = []
    for path in flatten(param_shapes(config, heads)):
        key, transposed = family_key(config, path)
        table.append((key, path, transposed))
    return table


_LAYER_KEY = re.compile(r"(?:encoder|transformer)\.layer\.(\d+)\.")


def check_layer_count(keys, config: BertConfig, where: str = "checkpoint") -> None:
    """Refuses, before `key_table` builds anything per layer, a config whose num_hidden_layers
    differs from the number of `encoder.layer.<i>.` (DistilBERT: `transformer.layer.<i>.`) indices
    among the (canonical) keys; ALBERT's shared layers (bounded by the config's limits) are left
    to `check_keys`."""
    found = {int(m[1]) for key in keys if (m := _LAYER_KEY.match(key))}
    if found and len(found) != config.num_hidden_layers:
        raise CheckpointError(f"{where}: the config says num_hidden_layers="
                              f"{config.num_hidden_layers} but the weights hold {len(found)} layers "
                              f"({min(found)}..{max(found)}); fix num_hidden_layers in config.json")


@dataclasses.dataclass
class Normalized:
    """A state dict in canonical naming, with what was dropped on the way."""

    tensors: dict[str, str]  # canonical key -> key in the source state dict
    notes: list[str]


def _canonical(key: str, prefix: str = "bert.") -> str:
    """The family's base-model prefix removed, legacy gamma/beta renamed weight/bias (as
    transformers renames them on load)."""
    key = key.removeprefix(prefix)
    if key.endswith(".gamma"):
        key = key[: -len("gamma")] + "weight"
    elif key.endswith(".beta"):
        key = key[: -len("beta")] + "bias"
    return key


def normalize(state: Mapping[str, np.ndarray], config: BertConfig | None = None) -> Normalized:
    """Canonical key -> source key, dropping buffers and the NSP head (`config` says the family,
    hence the base-model prefix; BERT's when None)."""
    family = "bert" if config is None else config.model_type
    word = _WORD if config is None else family_key(config, "embeddings/word_embeddings/embedding")[0]
    keys: dict[str, str] = {}
    nsp = False
    ignored = []
    for key in state:
        canon = _canonical(key, BASE_PREFIX[family])
        if canon in _BUFFERS:
            continue
        if canon.startswith(_IGNORED.get(family, ())) or (
                family == "deberta-v2" and not config.has_position_table
                and canon == "embeddings.position_embeddings.weight"):
            ignored.append(key)
            continue
        if canon.startswith(_NSP_PREFIX) and family == "bert":
            nsp = True
            continue
        if canon in keys:
            raise CheckpointError(f"checkpoint has both {keys[canon]!r} and {key!r}")
        keys[canon] = key
    if word not in keys:
        sample = ", ".join(sorted(state)[:4]) or "(no tensors at all)"
        name = "BERT" if family == "bert" else family
        raise CheckpointError(f"not a {name} checkpoint: no {word!r} ({BASE_PREFIX[family]} "
                              f"prefix optional); its keys look like: {sample}")
    notes = ["dropped the next-sentence-prediction head (cls.seq_relationship)"] if nsp else []
    if ignored:
        notes.append(f"dropped {len(ignored)} tensor(s) transformers ignores for {family}: "
                     f"{', '.join(sorted(ignored)[:4])}")
    return Normalized(keys, notes)


def detect_heads(keys: Mapping[str, str], untied_decoder: bool = False,
                 config: BertConfig | None = None) -> Heads:
    """Which heads a normalised checkpoint carries (`untied_decoder` from `resolve_decoder`)."""
    config = config or BertConfig()
    has = lambda path: family_key(config, path)[0] in keys  # noqa: E731
    mlm = has("cls/predictions/transform/dense/kernel")
    form = ("dense" if has("classifier/dense/kernel") else
            "pre" if has("pre_classifier/kernel") else "linear")
    if config.model_type == "modernbert":  # head.* is the MLM head's or the classifier's
        classifier = has("classifier/kernel")
        form, mlm = ("head" if classifier else "linear"), mlm and not classifier
    return Heads(pooler=has("pooler/dense/kernel"), mlm=mlm, untied_decoder=mlm and untied_decoder,
                 classifier=has("classifier/kernel") or form == "dense",
                 disc=has("discriminator_predictions/dense/kernel"),
                 sop=has("sop_classifier/kernel"), classifier_form=form)


def _differs(state: Mapping, a: str, b: str) -> bool:
    return shape_of(state, a) != shape_of(state, b) or not np.array_equal(state[a], state[b])


def resolve_decoder(state: Mapping, keys: Mapping[str, str],
                    config: BertConfig) -> tuple[dict[str, str], bool, list[str]]:
    """The MLM decoder's weight and bias, picked as transformers 5 picks them when loading.

    Returns the canonical key map with the decoder resolved (`cls.predictions.bias` -> the source
    key of the bias the forward adds, `cls.predictions.decoder.weight` kept only when untied),
    whether the decoder is untied, and notes. transformers 5 ties a pair only when the file holds
    one of the two or both are equal, so a stored decoder that differs stays untied.
    """
    keys = dict(keys)
    transform = family_key(config, "cls/predictions/transform/dense/kernel")[0]
    weight = family_key(config, "cls/predictions/decoder/kernel")[0]
    mlm_bias = family_key(config, "cls/predictions/bias")[0]
    decoder_bias = weight.removesuffix("weight") + "bias"  # the decoder Linear's own bias
    if transform not in keys:
        return keys, False, []
    notes = []
    if decoder_bias != mlm_bias and decoder_bias in keys:  # the bias the decoder Linear adds
        if (mlm_bias in keys and config.tie_word_embeddings
                and _differs(state, keys[decoder_bias], keys[mlm_bias])):
            notes.append(f"{keys[mlm_bias]} differs from {keys[decoder_bias]}: used the "
                         f"decoder's bias, which transformers' forward adds")
        keys[mlm_bias] = keys.pop(decoder_bias)
    untied = not config.tie_word_embeddings
    word = family_key(config, "embeddings/word_embeddings/embedding")[0]
    if not untied and weight in keys and word in keys:
        untied = _differs(state, keys[weight], keys[word])
        if untied:
            notes.append(f"{keys[weight]} differs from the word embeddings although the "
                         f"config ties them: kept it untied (cls/predictions/decoder/kernel, "
                         f"tie_word_embeddings=false), as transformers 5 does")
        else:
            keys.pop(weight)
    return keys, untied, notes


def _listed(kind: str, names: list[str], most: int = 6) -> str:
    more = " ..." if len(names) > most else ""
    return f"{kind} {len(names)}: {', '.join(names[:most])}{more}"


def check_keys(keys: Mapping[str, str], table, family: str = "BERT") -> None:
    """Raises CheckpointError listing missing and unexpected keys (canonical names)."""
    expected = {k for k, _, _ in table}
    missing = sorted(expected - set(keys))
    unexpected = sorted(set(keys) - expected)
    parts = ([_listed("missing", missing)] if missing else []) + (
        [_listed("unexpected", unexpected)] if unexpected else [])
    if parts:
        raise CheckpointError(f"checkpoint does not match a {family} with this config "
                              f"({'; '.join(parts)})")


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


class NonFiniteWeightsWarning(UserWarning):
    """Weights holding NaN or Inf: a model that will compute NaN (or a damaged checkpoint)."""


def check_finite(flat: Mapping[str, np.ndarray], where: str, strict: bool = False) -> list[str]:
    """Warns (NonFiniteWeightsWarning), or raises CheckpointError when `strict`, naming each tensor
    of `flat` (tree path -> array) that holds NaN or Inf; returns those paths."""
    bad = []
    for path, array in flat.items():
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        if nan or inf:
            counts = ", ".join(f"{n} {kind}" for n, kind in ((nan, "NaN"), (inf, "Inf")) if n)
            bad.append(f"{path} ({counts})")
    if bad:
        dtype = np.dtype(next(iter(flat.values())).dtype).name
        more = " ..." if len(bad) > 6 else ""
        message = (f"{where}: {len(bad)} weight tensor(s) hold NaN or Inf (as {dtype}): "
                   f"{', '.join(bad[:6])}{more}")
        if strict:
            raise CheckpointError(f"{message}; refused (strict)")
        warnings.warn(message, NonFiniteWeightsWarning, stacklevel=3)
    return [b.split(" ")[0] for b in bad]


def state_dict_to_params(state: Mapping[str, np.ndarray], config: BertConfig,
                         dtype=np.float32, strict: bool = False,
                         where: str = "checkpoint") -> tuple[dict, Heads, list[str]]:
    """Converts a PyTorch BERT state dict (NumPy arrays) into the parameter tree.

    Args:
      state: source key -> array (or a lazy mapping from `bertjax.checkpoints.readers.read_weights`).
      config: the model's config; every shape is checked against it.
      dtype: dtype of the converted arrays (float32, bfloat16 or float16).
      strict: refuse weights holding NaN or Inf (by default a NonFiniteWeightsWarning names them).
      where: the source, for messages.

    Returns:
      (params, heads, notes): the nested tree of NumPy arrays, the heads found, and what was
      dropped or overridden on the way. Raises CheckpointError before converting anything when a
      key is missing or unexpected, or a shape or dtype disagrees with the config.
    """
    norm = normalize(state, config)
    keys, untied, decoder_notes = resolve_decoder(state, norm.tensors, config)
    heads = detect_heads(keys, untied, config)
    check_layer_count(keys, config, where)
    table = key_table(config, heads)
    check_keys(keys, table, "BERT" if config.model_type == "bert" else config.model_type)
    check_tensors(state, keys, table, config, heads)
    notes = norm.notes + decoder_notes
    flat = convert_tensors(state, keys, table, dtype)
    check_finite(flat, where, strict)
    return unflatten(flat), heads, notes
