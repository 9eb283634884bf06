"""BertConfig: the frozen, hashable hyperparameters of a BERT model.

Field names and meanings are those of transformers' `BertConfig`, so a Hugging Face `config.json`
reads straight in. The config is always a static argument of jitted functions (it keys the compile
cache), so every field is a scalar, a string or a tuple, and it never goes inside the params tree.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import sys
from typing import Any

# hidden_act values we implement, each matched to transformers' ACT2FN entry of the same name.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

# Upper bounds on the sizes a config may claim. A config.json is untrusted input, and structures are
# built per layer (and arrays sized) from it before the weights can disagree: these are far above
# any real encoder and far below what would exhaust memory. vocab_size: ids are int32.
LIMITS = {"vocab_size": 2**31 - 1, "hidden_size": 2**16, "num_hidden_layers": 1024,
          "num_attention_heads": 2**12, "intermediate_size": 2**18,
          "max_position_embeddings": 2**20, "type_vocab_size": 2**16, "num_labels": 2**20}
MAX_CONFIG_BYTES = 16 * 2**20  # a config.json is a few KB; read no more than this

# Keys whose non-default value describes a model bertjax does not implement: key -> allowed values.
_UNSUPPORTED = {
    "position_embedding_type": ("absolute", None),
    "is_decoder": (False, None),
    "add_cross_attention": (False, None),
    "is_encoder_decoder": (False, None),
    "pruned_heads": ({}, None),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
    """Hyperparameters of a BERT encoder (transformers' names and defaults: bert-base-uncased).

    Attributes:
      vocab_size: V, rows of the word embedding table.
      hidden_size: D, width of the residual stream.
      num_hidden_layers: L, encoder layers.
      num_attention_heads: N, heads per layer; D must be a multiple of N (head size H = D / N).
      intermediate_size: I, width of the feed-forward hidden layer.
      hidden_act: feed-forward activation, one of ACTIVATIONS ("gelu" is the exact erf GELU).
      hidden_dropout_prob: dropout on embeddings and on each sublayer output (training only).
      attention_probs_dropout_prob: dropout on attention probabilities (training only).
      max_position_embeddings: rows of the position table, the longest sequence accepted.
      type_vocab_size: rows of the token type (segment) table.
      initializer_range: std of the normal initialiser used by `init_params`.
      layer_norm_eps: epsilon of every LayerNorm.
      pad_token_id: id of [PAD] in the vocabulary.
      tie_word_embeddings: whether the MLM decoder reuses the word embeddings.
      classifier_dropout: dropout before a classifier head; None means hidden_dropout_prob.
      num_labels: outputs of a sequence or token classification head.
      id2label: label names of a classification head, in id order (empty when unnamed).
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    tie_word_embeddings: bool = True
    classifier_dropout: float | None = None
    num_labels: int = 2
    id2label: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        _check_limits(self)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act={self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0.0 <= value < 1.0):
                raise ValueError(f"BertConfig.{name} must be a number in [0, 1), got {value!r}")
        for name in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ValueError(f"BertConfig.{name} must be a finite number > 0, got {value!r}")
        if self.id2label and len(self.id2label) != self.num_labels:
            raise ValueError(f"BertConfig.id2label has {len(self.id2label)} names but "
                             f"num_labels={self.num_labels}")

    @property
    def head_size(self) -> int:
        """H = D / N, the width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Reads a Hugging Face style config dict.

        Keys that do not change an encoder forward (`_name_or_path`, `architectures`, generation
        settings, ...) are accepted and dropped; a
        `model_type` other than "bert" or a feature bertjax does not implement (relative position
        embeddings, decoder, cross-attention, pruned heads) raises ValueError naming the field.
        """
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"config model_type={model_type!r} is not a BERT model (expected 'bert')")
        bad = [f"{k}={d[k]!r}" for k, ok in _UNSUPPORTED.items() if k in d and d[k] not in ok]
        if bad:
            raise ValueError(f"unsupported BERT config feature(s): {', '.join(bad)}")
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "id2label"}
        kwargs = {k: _coerce(k, v, types[k]) for k, v in d.items() if k in types}
        names = _label_names(d.get("id2label"))
        if names:
            kwargs.setdefault("num_labels", len(names))
            if names != _default_labels(len(names)):  # transformers' LABEL_i names mean unnamed
                kwargs["id2label"] = names
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> BertConfig:
        """Reads `config.json` (or the config.json inside a folder)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        d = _read_json(path)
        if not isinstance(d, dict):  # bad file content, not a caller's type error: ValueError
            raise ValueError(f"config file {path} does not hold a JSON object")  # noqa: TRY004
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """The Hugging Face config dict (readable by transformers' BertConfig)."""
        d = dataclasses.asdict(self)
        d.pop("id2label")
        d.pop("num_labels")
        labels = self.id2label or _default_labels(self.num_labels)
        d["id2label"] = {str(i): name for i, name in enumerate(labels)}
        d["label2id"] = {name: i for i, name in enumerate(labels)}
        d["model_type"] = "bert"
        d["position_embedding_type"] = "absolute"
        return d

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")


def _check_limits(config: BertConfig) -> None:
    for name, most in LIMITS.items():
        value = getattr(config, name)
        if value > most:
            raise ValueError(f"BertConfig.{name}={value} is over the limit of {most} "
                             f"(bertjax.model.config.LIMITS): no real model is that big; fix the "
                             f"config")


def _read_bytes(path: str) -> bytes:
    """A config file's bytes: a regular file only (a FIFO would block forever), at most
    MAX_CONFIG_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"no config file at {path}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a fifo" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else \
                "a device or socket"
            raise ValueError(f"config file {path} is not a regular file ({kind}); pass a "
                             f"config.json file")
        os.set_blocking(fd, True)
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path} is over {MAX_CONFIG_BYTES} bytes; a config.json "
                         f"is a few KB")
    return raw


def _read_json(path: str):
    """The JSON value of a config file; one ValueError naming the file for anything unreadable
    (not UTF-8, invalid or too deeply nested JSON, a number too long for Python's int)."""
    raw = _read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 (byte 0x{raw[e.start]:02x} at "
                         f"position {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"config file {path} is not valid JSON: nested too deeply") from None
    except ValueError:  # int("9" * 5000): Python's limit on digits
        raise ValueError(f"config file {path} is not valid JSON: a number with more than "
                         f"{sys.get_int_max_str_digits()} digits") from None


def _coerce(name: str, value, kind: str):
    """A JSON value as the field's type (an int is a valid float); ValueError naming the field."""
    if kind in ("float", "float | None") and _is_number(value):
        return float(value)
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float | None": value is None, "str": isinstance(value, str),
          "bool": isinstance(value, bool)}.get(kind, False)
    if not ok:
        raise ValueError(f"BertConfig.{name} must be of type {kind}, got {value!r}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _default_labels(n: int) -> tuple[str, ...]:
    """transformers' names for unnamed labels: LABEL_0 .. LABEL_{n-1}."""
    return tuple(f"LABEL_{i}" for i in range(n))


def _label_names(id2label) -> tuple[str, ...]:
    """Label names in id order from a config's id2label (a dict keyed by id, or a list)."""
    if isinstance(id2label, dict) and id2label:
        try:
            order = sorted(id2label, key=int)
        except (TypeError, ValueError):
            raise ValueError(f"config id2label keys must be label ids, got {sorted(id2label)!r}") from None
        if [int(k) for k in order] != list(range(len(order))):  # a gap would renumber the labels
            raise ValueError(f"config id2label keys must be the ids 0..{len(order) - 1} without "
                             f"gaps, got {order!r}")
        return tuple(str(id2label[k]) for k in order)
    if isinstance(id2label, (list, tuple)):
        return tuple(str(x) for x in id2label)
    return ()
