"""`forward`: the whole model, embeddings -> encoder -> heads, with the activations asked for."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.typing import ArrayLike

from bertjax.model import capture as C
from bertjax.model.checks import check_capture, check_inputs, checkify_inputs
from bertjax.model.config import BertConfig
from bertjax.model.embeddings import embeddings
from bertjax.model.encoder import encoder, is_stacked, stacked_once
from bertjax.model.heads import mlm_logits, pooler
from bertjax.model.params import check_params


@functools.partial(jax.tree_util.register_dataclass, data_fields=["last_hidden_state",
                   "pooler_output", "acts"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class BertOutput:
    """What `forward` returns.

    Attributes:
      last_hidden_state: float [B, S, D].
      pooler_output: float [B, D], or None for a model without a pooler.
      acts: activation name -> array, exactly the names asked for ({} for capture=()).
    """

    # Any, not jax.Array: as a pytree its leaves may also be tracers, ShapeDtypeStructs or specs.
    last_hidden_state: Any
    pooler_output: Any
    acts: dict


def _as_array(x):
    return None if x is None else jnp.asarray(x) if not hasattr(x, "shape") else x


def _prepare(params, input_ids, config, token_type_ids, attention_mask, position_ids, capture,
             values=True):
    if not isinstance(config, BertConfig):
        raise ValueError(f"config must be a bertjax.BertConfig, got {type(config).__name__}")
    heads = check_params(params, config)  # shapes only, remembered: free on the next call
    check_capture(capture)
    names = C.resolve(capture, has_pooler=heads.pooler, has_mlm=heads.mlm)
    arrays = [_as_array(x) for x in (input_ids, token_type_ids, attention_mask, position_ids)]
    check_inputs(config, *arrays, values=values)
    return names, arrays


def forward(params: dict, input_ids: ArrayLike, config: BertConfig,
            token_type_ids: ArrayLike | None = None, attention_mask: ArrayLike | None = None,
            position_ids: ArrayLike | None = None, capture=(), rng: jax.Array | None = None,
            head_mask: ArrayLike | None = None, patch: dict | None = None) -> BertOutput:
    """Runs BERT and returns its outputs and the captured activations.

    Args:
      params: the full parameter tree, per-layer or with `stack_layers` applied. Concrete
        per-layer arrays are stacked once and the stacked copy is reused while they live
        (`stacked_once` in bertjax/encoder.py); stack once yourself to keep a single copy in memory.
      input_ids: int [B, S].
      config: the model's BertConfig (static).
      token_type_ids: int [B, S], zeros when None.
      attention_mask: [B, S], 1 for tokens and 0 for padding; all ones when None.
      position_ids: int [B, S], [1, S] or [S]; 0 .. S-1 when None.
      capture: activation names, globs ("attn.*") or "all" (static).
      rng: PRNG key; turns dropout on (training). None is deterministic inference.
      head_mask: float [L, N] multiplying each head's attention probabilities, or None.
      patch: activation name -> (new, mask) replacing that activation where mask is True and
        letting the change flow downstream; per-layer names take [L, ...] arrays (see
        `bertjax.model.capture.Taps` and the builders in `bertjax.analysis.interventions`).
        New values and masks
        do not recompile.

    Returns:
      BertOutput(last_hidden_state [B, S, D], pooler_output [B, D] or None, acts).

    Raises:
      ValueError: out-of-range ids, token types or positions, a sequence longer than
        max_position_embeddings, shapes that disagree, float ids, unknown capture names, an
        empty batch or sequence, a params tree that disagrees with the config (`check_tree` in
        bertjax/model/params.py). Value checks need concrete inputs; under an outer jit use
        `checked_forward`.
    """
    names, arrays = _prepare(params, input_ids, config, token_type_ids, attention_mask,
                             position_ids, capture)
    return _forward(_with_stacked_layers(params), *arrays, rng, head_mask, C.check_patch(patch),
                    config=config, capture=names)


def _with_stacked_layers(params: dict) -> dict:
    """The tree with its layers stacked once, outside jit (`stacked_once` in bertjax/encoder.py)."""
    layers = params.get("encoder", {}).get("layer")
    if layers is None or is_stacked(layers):
        return params
    return {**params, "encoder": {**params["encoder"], "layer": stacked_once(layers)}}


@functools.partial(jax.jit, static_argnames=("config", "capture"))
def _forward(params, input_ids, token_type_ids, attention_mask, position_ids, rng, head_mask,
             patch, *, config: BertConfig, capture: frozenset[str]) -> BertOutput:
    r_embed, r_encoder = (None, None) if rng is None else jax.random.split(rng)
    embed_patch = {k: v for k, v in patch.items() if k in C.EMBED_NAMES}
    hidden, acts = embeddings(params["embeddings"], input_ids, config, token_type_ids,
                              position_ids, capture & frozenset(C.EMBED_NAMES), r_embed, embed_patch)
    hidden, layer_acts = encoder(params["encoder"], hidden, config, attention_mask, capture,
                                 r_encoder, head_mask, patch)
    acts.update(layer_acts)
    pooled = None
    if "pooler" in params:
        pooled, pooler_acts = pooler(params["pooler"], hidden, config, capture)
        acts.update(pooler_acts)
    if C.MLM_LOGITS in capture:
        acts.update(mlm_logits(params, hidden, config, capture)[1])
    return BertOutput(hidden, pooled, acts)


def checked_forward(params: dict, input_ids: ArrayLike, config: BertConfig,
                    token_type_ids=None, attention_mask=None, position_ids=None, capture=(),
                    rng=None, head_mask=None, patch=None) -> tuple[checkify.Error, BertOutput]:
    """`forward` with its value checks carried through jit by `jax.experimental.checkify`.

    Use it where the inputs are traced (inside your own `jax.jit`); outside jit too it returns
    `(err, out)` without raising: `err.throw()` raises the first failed value check (an
    out-of-range id, token type or position, a mask value other than 0/1), naming the offending
    value. Shapes, dtypes and the params tree are still checked at once (ValueError).
    """
    names, arrays = _prepare(params, input_ids, config, token_type_ids, attention_mask,
                             position_ids, capture, values=False)
    return _checked(_with_stacked_layers(params), *arrays, rng, head_mask, C.check_patch(patch),
                    config=config, capture=names)


@functools.partial(jax.jit, static_argnames=("config", "capture"))
@functools.partial(checkify.checkify, errors=checkify.user_checks)
def _checked(params, input_ids, token_type_ids, attention_mask, position_ids, rng, head_mask,
             patch, *, config, capture):
    checkify_inputs(config, input_ids, token_type_ids, position_ids, attention_mask)
    return _forward(params, input_ids, token_type_ids, attention_mask, position_ids, rng,
                    head_mask, patch, config=config, capture=capture)
