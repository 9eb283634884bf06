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

from bertjax.model import families as F

# hidden_act values we implement, each matched to transformers' ACT2FN entry of the same name.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")

# Upper bounds on the sizes a config may claim. A config.json is untrusted input, and structures are
# built per layer (and arrays sized) from it before the weights can disagree: these are far above
# any real encoder and far below what would exhaust memory. vocab_size: ids are int32.
LIMITS = {"vocab_size": 2**31 - 1, "hidden_size": 2**16, "num_hidden_layers": 1024,
          "num_attention_heads": 2**12, "intermediate_size": 2**18,
          "max_position_embeddings": 2**20, "type_vocab_size": 2**16, "num_labels": 2**20,
          "embedding_size": 2**16, "num_hidden_groups": 1024, "inner_group_num": 1024,
          "relative_attention_num_buckets": 2**16}
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
      model_type: the family, one of `bertjax.model.families.FAMILIES` ("bert", "roberta", ...).
      embedding_size: E, width of the embeddings when it differs from D (ELECTRA, ALBERT), else
        None; `embed_size` is E or D.
      relative_attention_num_buckets: rows of MPNet's relative position bias table (0 elsewhere).
      num_hidden_groups, inner_group_num: ALBERT's groups of shared layers and layers per group
        (1 and 1 elsewhere).
      relative_attention, max_relative_positions, position_buckets, pos_att_type, share_att_key,
        norm_rel_ebd, position_biased_input, conv_kernel_size, conv_groups, conv_act, legacy:
        DeBERTa-v2/v3's disentangled attention (which of the c2p / p2c terms, the log-bucketed
        relative positions and their shared or separate projections, the LayerNorm of the relative
        table, absolute positions or not, the v2-xlarge convolution after layer 0, and the MLM head
        layout: `legacy` True is the BERT-style `cls.predictions` head), transformers'
        DebertaV2Config names and meanings.
      pooler_hidden_act, pooler_dropout: DeBERTa's ContextPooler (the sequence classifier's input).
      layer_types, local_attention, global_rope_theta, local_rope_theta: ModernBERT's per-layer
        "full_attention" / "sliding_attention" pattern, its window (a query sees keys with
        ``|i - j| <= local_attention // 2``) and the rotary bases of the two layer kinds.
      norm_bias, attention_bias, mlp_bias, decoder_bias, classifier_bias: whether ModernBERT's
        norms, projections, MLM decoder and classifier carry biases.
      classifier_pooling, classifier_activation: ModernBERT's sequence classifier ("cls" or
        "mean" pooling over real tokens, and its head's activation).

    type_vocab_size is 0 for the families without token types (DistilBERT, MPNet, ModernBERT,
    DeBERTa-v3).
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
    model_type: str = "bert"
    embedding_size: int | None = None
    relative_attention_num_buckets: int = 0
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    # DeBERTa-v2/v3 (transformers' DebertaV2Config names; the defaults are a model without them).
    relative_attention: bool = False
    max_relative_positions: int = -1
    position_buckets: int = -1
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False
    norm_rel_ebd: str = "none"
    position_biased_input: bool = True
    conv_kernel_size: int = 0
    conv_groups: int = 1
    conv_act: str = "tanh"
    legacy: bool = True
    pooler_hidden_act: str = "tanh"
    pooler_dropout: float = 0.0
    # ModernBERT (ModernBertConfig names; biases default to present, as in every other family).
    layer_types: tuple[str, ...] = ()
    local_attention: int = 0
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    norm_bias: bool = True
    attention_bias: bool = True
    mlp_bias: bool = True
    decoder_bias: bool = True
    classifier_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_activation: str = "gelu"

    def __post_init__(self):
        if self.model_type not in F.FAMILIES:
            raise ValueError(f"BertConfig.model_type={self.model_type!r} is not supported; use "
                             f"one of {', '.join(F.FAMILIES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size", "num_labels",
                     "num_hidden_groups", "inner_group_num", "relative_attention_num_buckets"):
            value = getattr(self, name)
            least = 0 if name in ("type_vocab_size", "relative_attention_num_buckets") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                kind = "a non-negative" if least == 0 else "a positive"
                raise ValueError(f"BertConfig.{name} must be {kind} integer, got {value!r}")
        F.check_family(self)
        _check_limits(self)
        if self.model_type in ("deberta-v2", "modernbert"):
            F.check_modern(self, ACTIVATIONS)
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

    @property
    def embed_size(self) -> int:
        """E, the width of the embedding lookups and their LayerNorm (D unless factorised)."""
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def has_token_types(self) -> bool:
        """Whether the model has a token type table (`embed.token_type`)."""
        return self.type_vocab_size > 0

    @property
    def has_projection(self) -> bool:
        """Whether the embeddings have the E -> D projection `embeddings/project` (`embed.proj`):
        ALBERT always, ELECTRA and DeBERTa when E != D."""
        return self.model_type == "albert" or (
            self.model_type in ("electra", "deberta-v2") and self.embed_size != self.hidden_size)

    @property
    def projection_before_norm(self) -> bool:
        """Whether `embed.proj` projects `embed.sum` before the embedding LayerNorm (DeBERTa, whose
        LayerNorm is then D wide) rather than `embed.out` after it (ELECTRA, ALBERT)."""
        return self.model_type == "deberta-v2"

    @property
    def embed_norm_size(self) -> int:
        """The width of the embedding LayerNorm: D where the projection comes first, else E."""
        return self.hidden_size if self.projection_before_norm else self.embed_size

    @property
    def has_position_table(self) -> bool:
        """Whether absolute positions are embedded (`embed.position`): not in ModernBERT (rotary)
        nor in DeBERTa with position_biased_input=false (v3)."""
        return self.model_type != "modernbert" and self.position_biased_input

    @property
    def has_embed_sum(self) -> bool:
        """Whether the embeddings sum several lookups (`embed.sum`): ModernBERT's are the word
        lookup alone."""
        return self.model_type != "modernbert"

    @property
    def pre_norm(self) -> bool:
        """Pre-norm layers (ModernBERT): x + attn(norm(x)), then + mlp(norm(.)), a final norm."""
        return self.model_type == "modernbert"

    @property
    def glu_mlp(self) -> bool:
        """A gated MLP (ModernBERT's GeGLU): act(first half) * second half of one I x 2 dense."""
        return self.model_type == "modernbert"

    @property
    def rotary(self) -> bool:
        """Rotary position embeddings on queries and keys (ModernBERT)."""
        return self.model_type == "modernbert"

    @property
    def local_layers(self) -> tuple[bool, ...]:
        """Per applied layer, whether it is a sliding-window layer (ModernBERT's
        "sliding_attention"); all False elsewhere."""
        return tuple(kind == F.SLIDING for kind in self.layer_types) or (False,) * self.num_layers

    @property
    def sliding_window(self) -> int:
        """w: a sliding layer's query i sees keys j with |i - j| <= w (local_attention // 2)."""
        return self.local_attention // 2

    @property
    def position_terms(self) -> tuple[str, ...]:
        """DeBERTa's disentangled score terms beyond c2c, in ("c2p", "p2c") order, when it has
        relative attention; () elsewhere."""
        if not self.relative_attention:
            return ()
        return tuple(t for t in ("c2p", "p2c") if t in self.pos_att_type)

    @property
    def score_scale(self) -> float:
        """What q.k is divided by: sqrt(H), times sqrt(1 + number of position terms) in DeBERTa
        (which counts pos_att_type even without relative attention)."""
        terms = sum(t in self.pos_att_type for t in ("c2p", "p2c"))
        return math.sqrt(self.head_size * (1 + terms))

    @property
    def masks_queries(self) -> bool:
        """DeBERTa: padded queries are masked as well as padded keys, and padded embedding rows
        (embed.out) are zero."""
        return self.model_type == "deberta-v2"

    @property
    def rel_span(self) -> int:
        """DeBERTa's relative span: position_buckets when > 0, else max_relative_positions (or
        max_position_embeddings when < 1); the relative table has 2 x span rows."""
        if self.position_buckets > 0:
            return self.position_buckets
        return self.rel_max_position

    @property
    def rel_max_position(self) -> int:
        """max_relative_positions, or max_position_embeddings when it is < 1 (as transformers)."""
        return (self.max_relative_positions if self.max_relative_positions >= 1
                else self.max_position_embeddings)

    @property
    def pooler_act(self) -> str:
        """The pooler's activation: tanh (BERT), DeBERTa's ContextPooler pooler_hidden_act."""
        return self.pooler_hidden_act

    @property
    def mlm_size(self) -> int:
        """The MLM transform's width: E (D for DeBERTa's non-legacy head, which multiplies by the
        word embeddings directly)."""
        if self.model_type == "deberta-v2" and not self.legacy:
            return self.hidden_size
        return self.embed_size

    @property
    def num_layers(self) -> int:
        """L, the applied layers: the activation layer axis (ALBERT: num_hidden_layers x
        inner_group_num, its layers being shared; num_hidden_layers elsewhere)."""
        return self.num_hidden_layers * self.inner_group_num

    @property
    def num_param_layers(self) -> int:
        """The layers the parameter tree stores (ALBERT: num_hidden_groups x inner_group_num)."""
        if self.model_type == "albert":
            return self.num_hidden_groups * self.inner_group_num
        return self.num_hidden_layers

    def param_layer_of(self, t: int) -> int:
        """The parameter layer applied layer `t` reads (ALBERT's AlbertTransformer: group
        int((t // inner) / (num_hidden_layers / num_hidden_groups)), layer t % inner in it)."""
        if self.model_type != "albert":
            return t
        inner = self.inner_group_num
        group = int((t // inner) / (self.num_hidden_layers / self.num_hidden_groups))
        return group * inner + t % inner

    @property
    def layer_map(self) -> tuple[int, ...] | None:
        """The parameter layer of each applied layer, or None when it is the identity (every
        family but ALBERT): the encoder then scans over the stacked weights themselves."""
        layers = tuple(self.param_layer_of(t) for t in range(self.num_layers))
        return None if layers == tuple(range(self.num_param_layers)) else layers

    @property
    def padding_aware_positions(self) -> bool:
        """Whether default position ids count non-padding tokens from position_pad_id + 1
        (RoBERTa's family and MPNet) instead of 0 .. S-1."""
        return self.model_type in F.ROBERTA_LIKE or self.model_type == "mpnet"

    @property
    def position_pad_id(self) -> int:
        """The padding id of the position ids (pad_token_id; MPNet's hard-coded 1); 0 when
        positions are not padding-aware."""
        if self.model_type == "mpnet":
            return F.MPNET_POSITION_PAD
        return self.pad_token_id if self.padding_aware_positions else 0

    @property
    def max_sequence_length(self) -> int:
        """The longest sequence the default position ids allow."""
        if self.padding_aware_positions:
            return self.max_position_embeddings - self.position_pad_id - 1
        return self.max_position_embeddings

    @property
    def head_act(self) -> str:
        """The MLM head's activation: the exact "gelu" transformers hard-codes for the RoBERTa
        family, MPNet and ELECTRA's generator; hidden_act elsewhere."""
        if self.model_type in (*F.ROBERTA_LIKE, "mpnet", "electra"):
            return "gelu"
        if self.model_type == "modernbert":
            return self.classifier_activation
        return self.hidden_act

    @property
    def classifier_kind(self) -> str:
        """The family's sequence classification head: "pooler" (BERT, ALBERT: dense on the pooled
        output), "dense_tanh" (RoBERTa family, MPNet: dense, tanh, out_proj on the first token),
        "dense_gelu" (ELECTRA: the same with the exact gelu), "pre_relu" (DistilBERT:
        pre_classifier, ReLU, classifier on the first token)."""
        return {"roberta": "dense_tanh", "xlm-roberta": "dense_tanh", "camembert": "dense_tanh",
                "mpnet": "dense_tanh", "electra": "dense_gelu",
                "distilbert": "pre_relu", "modernbert": "head"}.get(self.model_type, "pooler")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Reads a Hugging Face style config dict.

        Keys that do not change an encoder forward (`_name_or_path`, `architectures`, generation
        settings, ...) are accepted and dropped. `model_type` selects the family, whose own keys
        (DistilBERT's dim/n_layers/..., ALBERT's groups, ...) and defaults are read
        (`bertjax.model.families.family_dict`); an unsupported `model_type` or a feature bertjax
        does not implement (relative position embeddings, decoder, cross-attention, pruned heads)
        raises ValueError naming the field.
        """
        d = F.family_dict(d)
        bad = [f"{k}={d[k]!r}" for k, ok in _UNSUPPORTED.items() if k in d and d[k] not in ok]
        if bad:
            raise ValueError(f"unsupported BERT config feature(s): {', '.join(bad)}")
        types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "id2label"
                 and (f.name not in F.FAMILY_FIELDS
                      or f.name in F.OWN_FIELDS.get(d.get("model_type", "bert"), ()))}
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
        """The Hugging Face config dict in the family's own form (readable by transformers'
        config class of `model_type`; BERT's for "bert")."""
        d = dataclasses.asdict(self)
        d.pop("id2label")
        d.pop("num_labels")
        for name in F.FAMILY_FIELDS:
            if name not in F.OWN_FIELDS.get(self.model_type, ()):
                d.pop(name)
        labels = self.id2label or _default_labels(self.num_labels)
        d["id2label"] = {str(i): name for i, name in enumerate(labels)}
        d["label2id"] = {name: i for i, name in enumerate(labels)}
        d["position_embedding_type"] = "absolute"
        if self.model_type in F.NO_TOKEN_TYPES:
            d.pop("type_vocab_size")
        if self.model_type == "albert":
            d["classifier_dropout_prob"] = d.pop("classifier_dropout")
        if self.model_type == "electra" and d["embedding_size"] is None:
            d["embedding_size"] = self.hidden_size
        if self.model_type == "albert" and d["embedding_size"] is None:
            d["embedding_size"] = self.hidden_size
        if self.model_type == "distilbert":
            d = F.distilbert_dict(d)
        if self.model_type == "deberta-v2":
            d = F.deberta_out(d)
        if self.model_type == "modernbert":
            d = F.modernbert_out(d)
        return d

    def to_json(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")


def _check_limits(config: BertConfig) -> None:
    for name, most in LIMITS.items():
        value = getattr(config, name)
        if value is not None and value > most:
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
    if kind == "tuple[str, ...]" and isinstance(value, (list, tuple)) and all(
            isinstance(x, str) for x in value):
        return tuple(value)
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "int | None": value is None or (isinstance(value, int) and not isinstance(value, bool)),
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
