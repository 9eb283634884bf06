"""`attention_relevance`: gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", the
self-attention rule).

Per layer, each head's map is weighted by the metric's gradient with respect to it and clipped at
zero, A_bar = mean over heads of (grad * probs)^+; relevance starts at the identity and each layer
adds its mixing, R <- R + A_bar @ R, first layer to last. Row i of R says how much each input
token contributes to the output at position i (row 0: the [CLS] token).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from bertjax.model import capture as C
from bertjax.model.forward import forward
from bertjax.model.site_grads import site_grads


def rollout(per_head) -> jnp.ndarray:
    """per_head float [L, B, N, S, T] (the clipped grad * probs) -> R float [B, S, T]."""
    a_bar = per_head.mean(axis=2)  # [L, B, S, T]
    L, B, S, T = a_bar.shape
    R = jnp.broadcast_to(jnp.eye(S, T, dtype=a_bar.dtype), (B, S, T))
    for layer in range(L):
        R = R + jnp.einsum("BST,BTU->BSU", a_bar[layer], R)  # [B, S, T]
    return R


def attention_relevance(params: dict, input_ids, config, metric: Callable, **forward_kwargs):
    """Chefer et al.'s relevance of every input token for `metric`.

    Args:
      params, input_ids, config, metric, forward_kwargs: as for `bertjax.site_grads` (metric:
        BertOutput -> float scalar, e.g. a class logit summed over the batch).

    Returns:
      (per_head float32 [L, B, N, S, T]: each head's (grad * probs) clipped at 0,
       rolled float32 [B, S, T]: the rollout R over all layers).
    """
    grads = site_grads(params, input_ids, config, metric, (C.ATTN_PROBS,), **forward_kwargs)
    arrays = {k: v for k, v in forward_kwargs.items() if k != "capture"}
    probs = forward(params, input_ids, config, capture=(C.ATTN_PROBS,), **arrays).acts[C.ATTN_PROBS]
    per_head = jnp.maximum(grads[C.ATTN_PROBS] * probs.astype(jnp.float32), 0.0)
    return per_head, rollout(per_head)
