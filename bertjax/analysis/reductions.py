"""Attention statistics over every layer and head, reduced inside one jit.

`attention_stats` runs `forward` with `capture=("attn.probs",)` and reduces the probabilities in the
same compiled function, so the [L, B, N, S, T] tensor is only an intermediate of the computation and
never an output: what comes back is a few numbers per head, plus the [B, S, T] rollout.

Every per-head statistic is a mean over the real (non-padding) query positions of one example:
  entropy   -sum_t p log p of each query's attention distribution (nats; 0 = one key, log T' = uniform)
  to_cls    attention mass on the [CLS] tokens
  to_sep    attention mass on the [SEP] tokens (both of them in a sentence pair)
  to_self   attention of each token to itself
  to_prev   attention to the previous position (queries at positions >= 1)
`attention_distance` reads a captured attn.probs: each head's mean |i - j| between a query and the
keys it attends to, weighted by probability (how far a head looks; ModernBERT's sliding layers are
bounded by their window, its global layers are not).
Rollout (Abnar & Zuidema 2020): average the heads, add the identity (the residual), renormalize the
rows, multiply through the layers: R = A'_L ... A'_1 with A' = (mean_n A + I) / 2.

Axis letters: L layers, B batch, N heads, S query positions, T key positions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.forward import forward


@functools.partial(jax.tree_util.register_dataclass, meta_fields=[],
                   data_fields=["entropy", "to_cls", "to_sep", "to_self", "to_prev", "rollout"])
@dataclasses.dataclass(frozen=True)
class AttentionStats:
    """What `attention_stats` returns: float32 [L, B, N] per statistic, rollout [B, S, T]."""

    entropy: Any
    to_cls: Any
    to_sep: Any
    to_self: Any
    to_prev: Any
    rollout: Any


def special_token_ids(tokenizer) -> dict:
    """{"cls_token_id": ..., "sep_token_id": ...} of a transformers tokenizer, for `attention_stats`."""
    return {"cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}


def attention_stats(params: dict, input_ids: ArrayLike, config: BertConfig, *,
                    cls_token_id: int, sep_token_id: int, token_type_ids: ArrayLike | None = None,
                    attention_mask: ArrayLike | None = None) -> AttentionStats:
    """Per-head attention statistics and the attention rollout, without returning attn.probs.

    Args:
      params: the parameter tree.
      input_ids: int [B, S].
      config: the model's BertConfig.
      cls_token_id, sep_token_id: the vocabulary ids of [CLS] and [SEP] (`special_token_ids`);
        traced, so other ids do not recompile.
      token_type_ids: int [B, S] or None.
      attention_mask: [B, S] of 1 (token) / 0 (padding), or None for no padding.

    Returns:
      AttentionStats: entropy, to_cls, to_sep, to_self, to_prev, each float32 [L, B, N] (a mean
      over the example's real query positions), and rollout, float32 [B, S, T] (rows of padded
      queries are zero; real rows sum to 1 over the real keys).
    """
    input_ids = jnp.asarray(input_ids)
    token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
    mask = jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
    check_inputs(config, input_ids, token_type_ids, mask)
    special = jnp.asarray([cls_token_id, sep_token_id], jnp.int32)
    return _attention_stats(params, input_ids, token_type_ids, mask, special, config=config)


@functools.partial(jax.jit, static_argnames=("config",))
def _attention_stats(params, input_ids, token_type_ids, mask, special, *, config) -> AttentionStats:
    out = forward(params, input_ids, config, token_type_ids, mask, capture=(C.ATTN_PROBS,))
    probs = out.acts[C.ATTN_PROBS].astype(jnp.float32)  # [L, B, N, S, T]
    real = mask.astype(jnp.float32)  # [B, S]
    S = input_ids.shape[1]
    plogp = jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0)
    is_cls = (input_ids == special[0]).astype(jnp.float32)  # [B, T]
    is_sep = (input_ids == special[1]).astype(jnp.float32)  # [B, T]
    diagonal = jnp.diagonal(probs, axis1=-2, axis2=-1)  # [L, B, N, S]
    previous = jnp.pad(jnp.diagonal(probs, offset=-1, axis1=-2, axis2=-1),
                       ((0, 0), (0, 0), (0, 0), (1, 0)))  # [L, B, N, S], 0 at position 0
    has_prev = real * (jnp.arange(S) >= 1)[None, :]  # [B, S]
    return AttentionStats(
        entropy=_query_mean(-plogp.sum(-1), real),
        to_cls=_query_mean(jnp.einsum("LBNST,BT->LBNS", probs, is_cls), real),
        to_sep=_query_mean(jnp.einsum("LBNST,BT->LBNS", probs, is_sep), real),
        to_self=_query_mean(diagonal, real),
        to_prev=_query_mean(previous, has_prev),
        rollout=rollout(probs, real))


def _query_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """[L, B, N, S] averaged over the query positions where weights [B, S] is 1 -> [L, B, N]."""
    weights = weights[None, :, None, :]  # [1, B, 1, S]
    return (values * weights).sum(-1) / jnp.maximum(weights.sum(-1), 1.0)


def rollout(probs: Float[ArrayLike, "L B N S T"],
            real: Float[ArrayLike, "B S"] | None = None) -> Float[Array, "B S T"]:
    """Attention rollout: float [L, B, N, S, T] -> float32 [B, S, T] (Abnar & Zuidema 2020).

    `real` [B, S] (1 token / 0 padding) zeroes the rows of padded queries in the result.
    """
    probs = jnp.asarray(probs, jnp.float32)
    S = probs.shape[-1]
    eye = jnp.eye(S, dtype=jnp.float32)
    mixed = probs.mean(axis=2) + eye[None, None]  # [L, B, S, T]
    mixed = mixed / mixed.sum(axis=-1, keepdims=True)

    def step(acc, layer):
        return jnp.einsum("BST,BTU->BSU", layer, acc), None

    start = jnp.broadcast_to(eye, mixed.shape[1:])  # [B, S, T]
    result, _ = jax.lax.scan(step, start, mixed)
    return result if real is None else result * jnp.asarray(real, jnp.float32)[:, :, None]


def attention_distance(probs: ArrayLike,  # [L, B, N, S, S]; checked here, with a clear message
                       attention_mask: ArrayLike | None = None) -> Float[Array, "L B N"]:
    """Each head's mean attention distance: ``sum_t p[s, t] |s - t|`` for every query s, averaged over
    the example's real query positions (all of them without a mask).

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] with T = S (self-attention).
      attention_mask: [B, S] of 1 (token) / 0 (padding), or None for no padding.

    Returns:
      float32 [L, B, N], in positions (0: every query attends to itself only).

    Raises:
      ValueError: probs not [L, B, N, S, S], or a mask that is not [B, S].
    """
    shape = jnp.shape(probs)
    if len(shape) != 5 or shape[-1] != shape[-2]:
        raise ValueError(f"probs must be attn.probs of shape [L, B, N, S, S] (capture "
                         f"'attn.probs'), got {tuple(shape)}")
    _, B, _, S, _ = shape
    if attention_mask is not None and jnp.shape(attention_mask) != (B, S):
        raise ValueError(f"attention_mask must have shape [B, S] = {(B, S)} to match probs, got "
                         f"{tuple(jnp.shape(attention_mask))}")
    i = jnp.arange(S)
    offset = jnp.abs(i[:, None] - i[None, :]).astype(jnp.float32)  # [S, T]
    per_query = jnp.einsum("LBNST,ST->LBNS", jnp.asarray(probs, jnp.float32), offset)
    real = jnp.ones((B, S), jnp.float32) if attention_mask is None else \
        (jnp.asarray(attention_mask) != 0).astype(jnp.float32)
    return _query_mean(per_query, real)
