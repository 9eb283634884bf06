"""The activation names of the contract and the one mechanism that captures them.

Every public function takes `capture`, a static collection of names, and returns `(out, acts)` where
`acts` holds exactly the names asked for. Inside a function, anything computed only for capture sits
behind `if name in capture:` (a Python check at trace time), so what is not asked for is never traced
and costs nothing. Per-layer names are produced by `encoder_layer` with one layer's shape and stacked
over layers on axis 0 by `encoder`.

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
POOLER_OUT = "pooler.out"
MLM_LOGITS = "mlm.logits"

EMBED_NAMES = (EMBED_WORD, EMBED_POSITION, EMBED_TOKEN_TYPE, EMBED_SUM, EMBED_OUT)
ATTENTION_NAMES = (ATTN_Q, ATTN_K, ATTN_V, ATTN_SCORES, ATTN_PROBS, ATTN_CONTEXT, ATTN_HEAD_OUT,
                   ATTN_OUT)
# Names produced once per encoder layer, stacked over layers on axis 0.
LAYER_NAMES = ATTENTION_NAMES + (ATTN_RESID, ATTN_NORM, MLP_PRE, MLP_POST, MLP_OUT, MLP_RESID,
                                 LAYER_OUT)
HEAD_NAMES = (POOLER_OUT, MLM_LOGITS)
ALL_NAMES = EMBED_NAMES + LAYER_NAMES + HEAD_NAMES

# Shapes in the package's axis letters (per-layer names carry a leading L once stacked).
SHAPES = {
    EMBED_WORD: "B S D", EMBED_POSITION: "B S D", EMBED_TOKEN_TYPE: "B S D", EMBED_SUM: "B S D",
    EMBED_OUT: "B S D", ATTN_Q: "L B N S H", ATTN_K: "L B N T H", ATTN_V: "L B N T H",
    ATTN_SCORES: "L B N S T", ATTN_PROBS: "L B N S T", ATTN_CONTEXT: "L B N S H",
    ATTN_HEAD_OUT: "L B N S D", ATTN_OUT: "L B S D", ATTN_RESID: "L B S D", ATTN_NORM: "L B S D",
    MLP_PRE: "L B S I", MLP_POST: "L B S I", MLP_OUT: "L B S D", MLP_RESID: "L B S D",
    LAYER_OUT: "L B S D", POOLER_OUT: "B D", MLM_LOGITS: "B S V",
}


def resolve(capture: str | Iterable | None, *, has_pooler: bool = True,
            has_mlm: bool = True) -> frozenset[str]:
    """Expands a capture request into the frozenset of contract names it means.

    Args:
      capture: a name, a glob such as "attn.*", "all", or a collection of these; None or () for none.
      has_pooler, has_mlm: whether the model has those heads; "all" and globs include
        `pooler.out` / `mlm.logits` only when it does, while asking for one by name without the
        head is an error.

    Raises:
      ValueError: a name or glob matches no activation; the message lists the valid names.
    """
    if capture is None:
        return frozenset()
    if isinstance(capture, str):
        capture = (capture,)
    available = [n for n in ALL_NAMES
                 if (n != POOLER_OUT or has_pooler) and (n != MLM_LOGITS or has_mlm)]
    names = set()
    for item in capture:
        if not isinstance(item, str):
            raise ValueError(f"capture entries must be strings, got {item!r}")
        if item == "all":
            names.update(available)
        elif item in ALL_NAMES:
            if item not in available:
                head = "pooler" if item == POOLER_OUT else "MLM head"
                raise ValueError(f"cannot capture {item!r}: this model has no {head}")
            names.add(item)
        else:
            matched = fnmatch.filter(available, item) if any(c in item for c in "*?[") else []
            if not matched:
                raise ValueError(f"unknown activation name {item!r} in capture; valid names: "
                                 f"{', '.join(ALL_NAMES)} (globs like 'attn.*' and 'all' allowed)")
            names.update(matched)
    return frozenset(names)


def as_frozenset(capture: str | Iterable[str] | None, has_pooler: bool = False,
                 has_mlm: bool = False) -> frozenset[str]:
    """`resolve` for the parts (the encoder parts have no heads; `pooler` and `mlm_logits` say
    theirs); already-resolved sets pass through."""
    if isinstance(capture, frozenset):
        return capture
    return resolve(capture, has_pooler=has_pooler, has_mlm=has_mlm)


class Taps:
    """The capture-and-patch point every named activation passes through, for one call.

    `taps(name, value)` returns the value to use from there on: `value`, or, when `name` is patched,
    `where(mask, new, value)`; it records the result in `taps.acts` when `name` is captured. A patch
    is `name -> (new, mask)` with arrays of the activation's shape (mask broadcastable, bool):
    the arrays are traced, so new values or masks never recompile; the set of patched names is part
    of the pytree structure and so static.
    """

    def __init__(self, capture=(), patch: dict | None = None):
        self.capture = as_frozenset(capture)
        self.patch = patch or {}
        self.acts: dict = {}

    def wants(self, name: str) -> bool:
        """Whether `name` is captured or patched (so that capture-only work is traced only then)."""
        return name in self.capture or name in self.patch

    def __call__(self, name: str, value):
        if name in self.patch:
            import jax.numpy as jnp

            new, mask = self.patch[name]
            value = jnp.where(jnp.broadcast_to(mask, value.shape),
                              jnp.broadcast_to(new, value.shape).astype(value.dtype), value)
        if name in self.capture:
            self.acts[name] = value
        return value


def taps_for(capture, patch: dict | None = None, has_pooler: bool = False,
             has_mlm: bool = False) -> Taps:
    """The Taps of a call: `capture` itself when a caller passes its Taps down, else a new one
    (`has_pooler` / `has_mlm`: the head a part computes, so that its name can be asked for)."""
    if isinstance(capture, Taps):
        return capture
    return Taps(as_frozenset(capture, has_pooler, has_mlm), check_patch(patch))


def check_patch(patch: dict | None) -> dict:
    """Validates patch names (contract names with a (new, mask) pair each)."""
    if not patch:
        return {}
    for name, pair in patch.items():
        if name not in ALL_NAMES:
            raise ValueError(f"unknown activation name {name!r} in patch; valid names: "
                             f"{', '.join(ALL_NAMES)}")
        if name in HEAD_NAMES:
            raise ValueError(f"{name!r} is a model output and cannot be patched")
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"patch[{name!r}] must be a (new_values, mask) pair")
    return dict(patch)
