"""The activation names of the contract and the one mechanism that captures, edits and patches them.

Every public function takes `capture`, a static collection of names, and returns `(out, acts)` where
`acts` holds exactly the names asked for. Inside a function, anything computed only for capture sits
behind `if name in capture:` (a Python check at trace time), so what is not asked for is never traced
and costs nothing. Per-layer names are produced by `encoder_layer` with one layer's shape and stacked
over layers on axis 0 by `encoder`.

`capture` may also be a dict `{name or glob: layers}` (`layer_selection`): a per-layer name is then
captured at the selected layers only, stacked in the given order, and the encoder never writes it
at the other layers. Edits (`value * mul + add`) and patches (`where(mask, new, value)`) go through
the same `Taps`; `bertjax.model.operands.check_operands` checks their operands against the
activation's stacked shape (`stacked_shape`) before anything is traced.

Name strings live only in this module.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

EMBED_WORD = "embed.word"
EMBED_POSITION = "embed.position"
EMBED_TOKEN_TYPE = "embed.token_type"
EMBED_SUM = "embed.sum"
EMBED_OUT = "embed.out"
ATTN_Q = "attn.q"
ATTN_K = "attn.k"
ATTN_V = "attn.v"
ATTN_SCORES = "attn.scores"
ATTN_PROBS = "attn.probs"
ATTN_CONTEXT = "attn.context"
ATTN_HEAD_OUT = "attn.head_out"
ATTN_OUT = "attn.out"
ATTN_RESID = "attn.resid"
ATTN_NORM = "attn.norm"
MLP_PRE = "mlp.pre"
MLP_POST = "mlp.post"
MLP_OUT = "mlp.out"
MLP_RESID = "mlp.resid"
LAYER_OUT = "layer.out"
EMBED_LN_STD = "embed.ln_std"
ATTN_LN_STD = "attn.ln_std"
LAYER_LN_STD = "layer.ln_std"
POOLER_OUT = "pooler.out"
MLM_LOGITS = "mlm.logits"
EMBED_PROJ = "embed.proj"
ATTN_REL_BIAS = "attn.rel_bias"
DISC_LOGITS = "disc.logits"
SOP_LOGITS = "sop.logits"
ATTN_C2C = "attn.c2c"
ATTN_C2P = "attn.c2p"
ATTN_P2C = "attn.p2c"
ATTN_NORM_IN = "attn.norm_in"
MLP_NORM_IN = "mlp.norm_in"
ATTN_Q_ROT = "attn.q_rot"
ATTN_K_ROT = "attn.k_rot"
MLP_GATE = "mlp.gate"
MLP_GLU = "mlp.glu"
MLP_LN_STD = "mlp.ln_std"
FINAL_LN_STD = "final.ln_std"
FINAL_OUT = "final.out"

EMBED_NAMES = (EMBED_WORD, EMBED_POSITION, EMBED_TOKEN_TYPE, EMBED_SUM, EMBED_OUT, EMBED_LN_STD)
ATTENTION_NAMES = (ATTN_Q, ATTN_K, ATTN_V, ATTN_SCORES, ATTN_PROBS, ATTN_CONTEXT, ATTN_HEAD_OUT,
                   ATTN_OUT)
# Names produced once per encoder layer, stacked over layers on axis 0.
LAYER_NAMES = ATTENTION_NAMES + (ATTN_RESID, ATTN_NORM, MLP_PRE, MLP_POST, MLP_OUT, MLP_RESID,
                                 LAYER_OUT, ATTN_LN_STD, LAYER_LN_STD)
# The per-layer names of DeBERTa (disentangled score terms) and ModernBERT (pre-norm, rotary,
# GeGLU), produced by the same parts (attention, encoder_layer).
MODERN_LAYER_NAMES = (ATTN_C2C, ATTN_C2P, ATTN_P2C, ATTN_NORM_IN, ATTN_Q_ROT, ATTN_K_ROT,
                      MLP_NORM_IN, MLP_GATE, MLP_GLU, MLP_LN_STD)
# sqrt(var + eps) of each LayerNorm's input, float32, one value per token.
LN_STD_NAMES = (EMBED_LN_STD, ATTN_LN_STD, LAYER_LN_STD)
HEAD_NAMES = (POOLER_OUT, MLM_LOGITS)
# BERT's names (the contract's first table).
ALL_NAMES = EMBED_NAMES + LAYER_NAMES + HEAD_NAMES
# The other families' names (the contract's "The encoder family"): what the embeddings part
# produces, what the encoder produces once for every layer (not stacked), and model outputs.
EMBEDDING_NAMES = EMBED_NAMES + (EMBED_PROJ,)
ENCODER_NAMES = (ATTN_REL_BIAS,)
# ModernBERT's final norm, applied by the encoder after its last layer (not stacked).
FINAL_NAMES = (FINAL_LN_STD, FINAL_OUT)
OUTPUT_NAMES = HEAD_NAMES + (DISC_LOGITS, SOP_LOGITS)
BERT_LAYER_NAMES = LAYER_NAMES  # BERT's per-layer names (the contract's first table)
LAYER_NAMES = LAYER_NAMES + MODERN_LAYER_NAMES  # every per-layer name of every family
# Every name of every family, in one order: `model_names` picks a model's own from it.
EVERY_NAME = EMBEDDING_NAMES + ENCODER_NAMES + LAYER_NAMES + FINAL_NAMES + OUTPUT_NAMES

# Shapes in the package's axis letters (per-layer names carry a leading L once stacked; E is the
# embedding size, D for BERT; C the number of labels). embed.out, the embedding LayerNorm's output,
# is D wide where the projection comes before that norm (DeBERTa): `shape_letters`.
SHAPES = {
    EMBED_WORD: "B S E", EMBED_POSITION: "B S E", EMBED_TOKEN_TYPE: "B S E", EMBED_SUM: "B S E",
    EMBED_OUT: "B S E", EMBED_PROJ: "B S D", ATTN_REL_BIAS: "N S T",
    DISC_LOGITS: "B S", SOP_LOGITS: "B C", ATTN_Q: "L B N S H", ATTN_K: "L B N T H", ATTN_V: "L B N T H",
    ATTN_SCORES: "L B N S T", ATTN_PROBS: "L B N S T", ATTN_CONTEXT: "L B N S H",
    ATTN_HEAD_OUT: "L B N S D", ATTN_OUT: "L B S D", ATTN_RESID: "L B S D", ATTN_NORM: "L B S D",
    MLP_PRE: "L B S I", MLP_POST: "L B S I", MLP_OUT: "L B S D", MLP_RESID: "L B S D",
    LAYER_OUT: "L B S D", POOLER_OUT: "B D", MLM_LOGITS: "B S V",
    EMBED_LN_STD: "B S", ATTN_LN_STD: "L B S", LAYER_LN_STD: "L B S",
    ATTN_C2C: "L B N S T", ATTN_C2P: "L B N S T", ATTN_P2C: "L B N S T",
    ATTN_NORM_IN: "L B S D", MLP_NORM_IN: "L B S D", ATTN_Q_ROT: "L B N S H",
    ATTN_K_ROT: "L B N T H", MLP_GATE: "L B S I", MLP_GLU: "L B S I", MLP_LN_STD: "L B S",
    FINAL_LN_STD: "B S", FINAL_OUT: "B S D",
}


# Why a model lacks a name: (name, what the model would need), for the error message.
_WHY = {EMBED_TOKEN_TYPE: "token type embeddings", EMBED_PROJ: "embedding projection",
        ATTN_REL_BIAS: "relative attention bias", POOLER_OUT: "pooler",
        MLM_LOGITS: "MLM head", DISC_LOGITS: "discriminator head (ELECTRA's)",
        SOP_LOGITS: "sentence-order head (ALBERT's)",
        EMBED_POSITION: "absolute position embeddings", EMBED_SUM: "embedding sum (its "
        "embeddings are the word lookup alone)", ATTN_C2C: "disentangled attention (DeBERTa's)",
        ATTN_C2P: "c2p score term (pos_att_type)", ATTN_P2C: "p2c score term (pos_att_type)",
        ATTN_NORM: "post-norm attention LayerNorm (it is pre-norm: see attn.norm_in)",
        LAYER_LN_STD: "post-norm layer LayerNorm (it is pre-norm: see mlp.ln_std)",
        **{n: "pre-norm, rotary, GeGLU layer (ModernBERT's)" for n in (
            ATTN_NORM_IN, MLP_NORM_IN, ATTN_Q_ROT, ATTN_K_ROT, MLP_GATE, MLP_GLU, MLP_LN_STD,
            FINAL_LN_STD, FINAL_OUT)}}


def model_names(config=None, heads=None, *, has_pooler: bool = False,
                has_mlm: bool = False) -> tuple[str, ...]:
    """Every activation name a model has, in EVERY_NAME's order: the one function of
    (config, heads) that "all", globs and checks use.

    Args:
      config: the BertConfig (None: BERT's names); its family decides embed.token_type,
        embed.proj and attn.rel_bias.
      heads: the tree's `bertjax.model.params.Heads` (pooler, mlm, disc, sop); None for a part,
        whose own head is `has_pooler` / `has_mlm`.
    """
    tokens = config is None or config.has_token_types
    proj = config is not None and config.has_projection
    rel = config is not None and bool(config.relative_attention_num_buckets)
    have = {EMBED_TOKEN_TYPE: tokens, EMBED_PROJ: proj, ATTN_REL_BIAS: rel,
            **_modern_names(config),
            POOLER_OUT: heads.pooler if heads is not None else has_pooler,
            MLM_LOGITS: heads.mlm if heads is not None else has_mlm,
            DISC_LOGITS: heads is not None and heads.disc,
            SOP_LOGITS: heads is not None and heads.sop}
    return tuple(n for n in EVERY_NAME if have.get(n, True))


def _modern_names(config) -> dict[str, bool]:
    """Which of the names that depend on DeBERTa's and ModernBERT's variation points a model has."""
    deberta = config is not None and config.model_type == "deberta-v2"
    pre = config is not None and config.pre_norm
    terms = () if config is None else config.position_terms
    have = {EMBED_POSITION: config is None or config.has_position_table,
            EMBED_SUM: config is None or config.has_embed_sum, ATTN_C2C: deberta,
            ATTN_C2P: "c2p" in terms, ATTN_P2C: "p2c" in terms, ATTN_NORM: not pre,
            LAYER_LN_STD: not pre}
    have.update({n: pre for n in (ATTN_NORM_IN, MLP_NORM_IN, ATTN_Q_ROT, ATTN_K_ROT, MLP_GATE,
                                  MLP_GLU, MLP_LN_STD, FINAL_LN_STD, FINAL_OUT)})
    return have


def _lacks(name: str, config) -> str:
    """Why a model lacks `name`, one line."""
    if name in (POOLER_OUT, MLM_LOGITS):
        return f"cannot capture {name!r}: this model has no {_WHY[name]}"
    family = "bert" if config is None else config.model_type
    return f"cannot capture {name!r}: this {family} model has no {_WHY[name]}"


def resolve(capture: str | Iterable | dict | None, *, has_pooler: bool = True,
            has_mlm: bool = True, config=None, heads=None) -> frozenset[str]:
    """Expands a capture request into the frozenset of contract names it means.

    Args:
      capture: a name, a glob such as "attn.*", "all", or a collection of these; None or () for none;
        or a dict whose keys are these (its layer selections: `layer_selection`).
      has_pooler, has_mlm: whether the model has those heads; "all" and globs include
        `pooler.out` / `mlm.logits` only when it does, while asking for one by name without the
        head is an error.
      config, heads: the model (`model_names`); given, they decide every name ("all" is exactly
        the model's set, and a name its family lacks is an error naming the family).

    Raises:
      ValueError: a name or glob matches no activation; the message lists the valid names.
    """
    if capture is None:
        return frozenset()
    if isinstance(capture, str):
        capture = (capture,)
    available = list(model_names(config, heads, has_pooler=has_pooler, has_mlm=has_mlm))
    names = set()
    for item in capture:
        names.update(_expand(item, available, config))
    return frozenset(names)


def _expand(item, available: list[str], config=None) -> list[str]:
    """The names one capture entry means."""
    if not isinstance(item, str):
        raise ValueError(f"capture entries must be strings, got {item!r}")
    if item == "all":
        return available
    if item in EVERY_NAME:
        if item not in available:
            raise ValueError(_lacks(item, config))
        return [item]
    matched = fnmatch.filter(available, item) if any(c in item for c in "*?[") else []
    if not matched:
        raise ValueError(f"unknown activation name {item!r} in capture; valid names: "
                         f"{', '.join(EVERY_NAME)} (globs like 'attn.*' and 'all' allowed)")
    return matched


def layer_selection(capture, num_layers: int, *, has_pooler: bool = True,
                    has_mlm: bool = True, config=None,
                    heads=None) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The per-layer names of a dict `capture` captured at some layers only (static, hashable).

    `capture={"attn.probs": (3, 7), "layer.*": None}`: each key a name or glob, each value a tuple
    (or list) of layer indices, a single int, or None for every layer. Negative indices count from
    the end, as in Python (-1 is the last layer). A selection of every layer in order is the same as
    None. Non-dict captures select every layer.

    Returns:
      sorted (name, layers) pairs for the names with a partial selection, layers in the given order.

    Raises:
      ValueError: an index out of range, a repeated index, an empty selection, layers given for a
        name that has no layer axis (asked for by name; a glob's non-layer names are taken whole),
        or one name given two different selections.
    """
    if not isinstance(capture, dict):
        return ()
    available = list(model_names(config, heads, has_pooler=has_pooler, has_mlm=has_mlm))
    chosen: dict[str, tuple[int, ...] | None] = {}
    for key, layers in capture.items():
        for name in _expand(key, available, config):
            if name not in LAYER_NAMES:
                if layers is not None and key == name:
                    raise ValueError(f"capture[{key!r}]: {name} has no layer axis, so its layers "
                                     f"must be None, got {layers!r}")
                continue
            picked = _layers(key, layers, num_layers)
            if chosen.setdefault(name, picked) != picked:
                raise ValueError(f"capture selects {name} twice with different layers: "
                                 f"{chosen[name]} and {picked}")
    return tuple(sorted((n, sel) for n, sel in chosen.items() if sel is not None))


def _layers(key: str, layers, num_layers: int) -> tuple[int, ...] | None:
    """Normalised layer indices of one dict entry; None for all layers in order."""
    if layers is None:
        return None
    layers = _python_ints(layers)
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = (layers,)
    if not isinstance(layers, (tuple, list)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"capture[{key!r}] must be None or a tuple of layer indices, "
                         f"got {layers!r}")
    if not layers:
        raise ValueError(f"capture[{key!r}] selects no layer: use None for all layers or leave "
                         f"the name out")
    bad = [i for i in layers if not -num_layers <= i < num_layers]
    if bad:
        raise ValueError(f"capture[{key!r}]: layer {bad[0]} out of range for a model of "
                         f"{num_layers} layers ({-num_layers}..{num_layers - 1})")
    picked = tuple(i % num_layers for i in layers)
    if len(set(picked)) != len(picked):
        raise ValueError(f"capture[{key!r}] repeats a layer: {tuple(layers)}")
    return None if picked == tuple(range(num_layers)) else picked


def _python_ints(layers):
    """NumPy integers (a scalar, in a tuple or list, or a 1-D integer array) as Python ints."""
    import numpy as np

    if isinstance(layers, np.ndarray) and layers.ndim <= 1 and np.issubdtype(layers.dtype, np.integer):
        return tuple(int(i) for i in np.atleast_1d(layers))
    if isinstance(layers, np.integer):
        return int(layers)
    if isinstance(layers, (tuple, list)):
        return type(layers)(int(i) if isinstance(i, np.integer) else i for i in layers)
    return layers


def as_frozenset(capture, has_pooler: bool = False,
                 has_mlm: bool = False, config=None) -> frozenset[str]:
    """`resolve` for the parts (the encoder parts have no heads; `pooler` and `mlm_logits` say
    theirs); already-resolved sets pass through. `capture` is checked here, unannotated, so that a
    wrong type is this ValueError and not a type-checker's error."""
    if isinstance(capture, frozenset):
        return capture
    check_capture(capture)
    return resolve(capture, has_pooler=has_pooler, has_mlm=has_mlm, config=config)


class Taps:
    """The capture, edit and patch point every named activation passes through, for one call.

    `taps(name, value)` returns the value to use from there on and records it in `taps.acts` when
    `name` is captured. When `name` is patched (`name -> (new, mask)`) the value first becomes
    `where(mask, new, value)`; when it is edited (`name -> (mul, add)`) it then becomes
    `value * mul + add` (cast back to the value's dtype). The operands are arrays broadcastable to
    the value (a scalar, or the value's rank): they are traced, so new values never recompile; the
    set of patched and edited names is part of the pytree structure and so static.
    """

    def __init__(self, capture=(), patch: dict | None = None, edit: dict | None = None):
        self.capture = as_frozenset(capture)
        self.patch = patch or {}
        self.edit = edit or {}
        self.acts: dict = {}

    def changes(self, name: str) -> bool:
        """Whether `name` is patched or edited (its value may differ from the computed one)."""
        return name in self.patch or name in self.edit

    def wants(self, name: str) -> bool:
        """Whether `name` is captured, patched or edited (so that work for it is traced only then)."""
        return name in self.capture or self.changes(name)

    def __call__(self, name: str, value):
        import jax.numpy as jnp

        if name in self.patch:
            new, mask = self.patch[name]
            value = jnp.where(jnp.broadcast_to(mask, value.shape),
                              jnp.broadcast_to(new, value.shape).astype(value.dtype), value)
        if name in self.edit:
            mul, add = (_fit(x, value.ndim) for x in self.edit[name])
            value = (value * mul + add).astype(value.dtype)
        if name in self.capture:
            self.acts[name] = value
        return value


def _fit(x, ndim: int):
    """A scalar stays a scalar; an array gets leading 1s up to `ndim` (explicit rank promotion)."""
    import jax.numpy as jnp

    x = jnp.asarray(x)
    return x if x.ndim in (0, ndim) else x.reshape((1,) * (ndim - x.ndim) + x.shape)


def check_capture(capture) -> None:
    """Raises ValueError unless `capture` is None, a string or a collection (not bytes)."""
    if capture is not None and not isinstance(capture, str) and (
            not isinstance(capture, Iterable) or isinstance(capture, (bytes, bytearray))):
        raise ValueError(f"capture must be an activation name, a glob, 'all' or a collection of "
                         f"them, got {type(capture).__name__} {capture!r}")


def taps_for(capture, patch: dict | None = None, has_pooler: bool = False,
             has_mlm: bool = False, edit: dict | None = None, config=None) -> Taps:
    """The Taps of a call: `capture` itself when a caller passes its Taps down, else a new one
    (`has_pooler` / `has_mlm`: the head a part computes, so that its name can be asked for;
    `config`: the model, whose family decides the names)."""
    from bertjax.model.operands import real_shape  # operands imports this module

    if isinstance(capture, Taps):
        return capture
    patch, edit = check_patch(patch), check_edit(edit)
    for what, pairs, labels in (("patch", patch, ("new", "mask")), ("edit", edit, ("mul", "add"))):
        for name, operands in pairs.items():
            for label, x in zip(labels, operands):
                if isinstance(x, dict):
                    raise ValueError(f"{what}[{name!r}] {label}: named-axes operands are placed by "
                                     f"bertjax.forward; give a part arrays that broadcast to "
                                     f"{name}")
                real_shape(f"{what}[{name!r}] {label}", x)
    return Taps(as_frozenset(capture, has_pooler, has_mlm, config), patch, edit)


def axis_sizes(config, B: int, S: int) -> dict[str, int]:
    """The size of each axis letter of `SHAPES` for a model and a batch [B, S]."""
    return {"L": config.num_layers, "B": B, "S": S, "N": config.num_attention_heads,
            "H": config.head_size, "D": config.hidden_size, "I": config.intermediate_size,
            "V": config.vocab_size, "E": config.embed_size, "C": config.num_labels}


def _check_pairs(what: str, pairs: dict | None, pair: str, heads_ok: bool) -> dict:
    if not pairs:
        return {}
    for name, value in pairs.items():
        if name not in EVERY_NAME:
            raise ValueError(f"unknown activation name {name!r} in {what}; valid names: "
                             f"{', '.join(EVERY_NAME)}")
        if name in OUTPUT_NAMES and not heads_ok:
            raise ValueError(f"{name!r} is a model output and cannot be patched")
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise ValueError(f"{what}[{name!r}] must be a {pair} pair")
    return dict(pairs)


def check_patch(patch: dict | None) -> dict:
    """Validates patch names (contract names with a (new, mask) pair each)."""
    return _check_pairs("patch", patch, "(new_values, mask)", heads_ok=False)


def check_edit(edit: dict | None) -> dict:
    """Validates edit names (contract names with a (mul, add) pair each); model outputs
    (`pooler.out`, `mlm.logits`) may be edited too."""
    return _check_pairs("edit", edit, "(mul, add)", heads_ok=True)


def shape_letters(name: str, config=None) -> list[str]:
    """The axis letters of `name`'s stacked shape in a model (`SHAPES`): embed.out is E wide,
    but D wide where the embedding projection comes before the LayerNorm (DeBERTa-v2 with
    embedding_size != hidden_size: `BertConfig.embed_norm_size`). config None: SHAPES's."""
    letters = SHAPES[name].split()
    if name == EMBED_OUT and config is not None and config.embed_norm_size != config.embed_size:
        return ["D" if a == "E" else a for a in letters]
    return letters


def stacked_shape(name: str, sizes: dict[str, int], config=None) -> tuple[int, ...]:
    """An activation's stacked shape from axis sizes (letters of `shape_letters`; T is S)."""
    sizes = {"E": sizes.get("D"), **sizes, "T": sizes["S"]}
    return tuple(sizes[letter] for letter in shape_letters(name, config))


# One line per activation site, every family's (the docs' site reference is generated from this,
# SHAPES and the per-family name lists; a name without a meaning fails the docs build).
MEANINGS = {
    "embed.word": "word (token) embedding lookup",
    "embed.position": "position embedding lookup",
    "embed.token_type": "token type (segment) embedding lookup",
    "embed.sum": "word + position + token type, before the embedding LayerNorm",
    "embed.out": "after the embedding LayerNorm (= hidden_states[0] in transformers, without a projection); "
                 "D wide in DeBERTa, whose projection comes before the LayerNorm",
    "embed.proj": "the embedding-size-to-hidden-size projection (ELECTRA, ALBERT: the encoder's input; "
                  "DeBERTa: of embed.sum, before the LayerNorm)",
    "embed.ln_std": "sqrt(var + eps) of the embedding LayerNorm's input, per token (float32)",
    "attn.rel_bias": "the relative position bias added to every layer's scores (MPNet; shared)",
    "attn.q": "per-head queries, bias included",
    "attn.k": "per-head keys, bias included",
    "attn.v": "per-head values, bias included",
    "attn.scores": "q·k / sqrt(H) plus the additive padding mask, before softmax",
    "attn.probs": "softmax of the scores (= attentions in transformers)",
    "attn.context": "per-head probs @ v",
    "attn.head_out": "each head's share of attn.out: its context times its slice of the output kernel",
    "attn.out": "the attention output dense, before the residual",
    "attn.resid": "x + attn.out, before the LayerNorm",
    "attn.norm": "first add & norm: LayerNorm(x + attn.out)",
    "attn.ln_std": "sqrt(var + eps) of the first LayerNorm's input, per token (float32)",
    "attn.c2c": "DeBERTa's content-to-content score term, divided by the scale",
    "attn.c2p": "DeBERTa's content-to-position score term, divided by the scale",
    "attn.p2c": "DeBERTa's position-to-content score term, divided by the scale",
    "attn.norm_in": "the pre-norm LayerNorm output attention reads (ModernBERT)",
    "attn.q_rot": "queries after the rotary embedding (ModernBERT)",
    "attn.k_rot": "keys after the rotary embedding (ModernBERT)",
    "mlp.norm_in": "the pre-norm LayerNorm output the MLP reads (ModernBERT)",
    "mlp.pre": "intermediate dense, before the activation function",
    "mlp.post": "after the activation function",
    "mlp.gate": "the linear half of the GeGLU input (ModernBERT)",
    "mlp.glu": "act(mlp.pre) * mlp.gate (ModernBERT)",
    "mlp.out": "the output dense, before the residual",
    "mlp.resid": "attn.norm + mlp.out, before the LayerNorm",
    "mlp.ln_std": "sqrt(var + eps) of the MLP LayerNorm's input (ModernBERT)",
    "layer.out": "second add & norm (= hidden_states[1:] in transformers)",
    "layer.ln_std": "sqrt(var + eps) of the second LayerNorm's input, per token (float32)",
    "final.out": "the final LayerNorm's output (= last_hidden_state; ModernBERT)",
    "final.ln_std": "sqrt(var + eps) of the final LayerNorm's input (ModernBERT)",
    "pooler.out": "pooler output (only with a pooler)",
    "mlm.logits": "MLM head logits (only with an MLM head)",
    "disc.logits": "replaced-token logits (ELECTRA discriminator)",
    "sop.logits": "sentence-order logits (ALBERT with its SOP head)",
}


def call_metric(metric, out, *args, where: str = "forward"):
    """`metric(out, *args)`, where a metric reading an activation that was not captured gets a
    ValueError saying to capture it (instead of a bare KeyError from `out.acts`)."""
    try:
        return metric(out, *args)
    except KeyError as e:
        name = e.args[0] if len(e.args) == 1 else None
        if isinstance(name, str) and name in MEANINGS and name not in out.acts:
            raise ValueError(f"the metric reads out.acts[{name!r}], which was not captured: pass "
                             f"capture=({name!r},) to {where}") from None
        raise
