"""DeBERTa's disentangled attention split by term: how much of each head's scores come from
content-to-content (c2c), content-to-position (c2p) and position-to-content (p2c).

A head's scores are c2c + c2p + p2c (each already divided by the scale). The share of a term is
its probability-weighted mean absolute value over the real (query, key) pairs, divided by the sum
of the three: where the head actually attends, how much of the score each term makes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from bertjax.model import capture as C
from bertjax.model.config import BertConfig
from bertjax.model.forward import forward

TERMS = (C.ATTN_C2C, C.ATTN_C2P, C.ATTN_P2C)


def term_shares(params: dict, config: BertConfig, input_ids: ArrayLike,
                attention_mask: ArrayLike | None = None, **forward_kwargs) -> np.ndarray:
    """Each DeBERTa head's c2c / c2p / p2c shares, float [L, N, 3] summing to 1 over the last axis
    (in TERMS' order; a term the model lacks has share 0).

    Raises:
      ValueError: a model without disentangled attention (not DeBERTa).
    """
    if config.model_type != "deberta-v2":
        raise ValueError(f"term_shares needs DeBERTa's disentangled attention (attn.c2c, "
                         f"attn.c2p, attn.p2c); this is a {config.model_type} model")
    names = (C.ATTN_PROBS,) + tuple(n for n in TERMS if n in C.model_names(config))
    acts = forward(params, input_ids, config, attention_mask=attention_mask, capture=names,
                   **forward_kwargs).acts
    B, S = np.shape(input_ids)
    m = np.ones((B, S)) if attention_mask is None else np.asarray(attention_mask, np.float64)
    pairs = jnp.asarray(m[:, :, None] * m[:, None, :])[None, :, None]  # [1, B, 1, S, T]
    weight = acts[C.ATTN_PROBS] * pairs  # [L, B, N, S, T]
    size = [jnp.sum(jnp.abs(acts[n]) * weight, axis=(1, 3, 4)) if n in acts
            else jnp.zeros(weight.shape[0:1] + weight.shape[2:3]) for n in TERMS]  # [L, N] each
    size = jnp.stack(size, axis=-1)  # [L, N, 3]
    return np.asarray(size / jnp.sum(size, axis=-1, keepdims=True))


def term_table(params: dict, config: BertConfig, input_ids: ArrayLike,
               attention_mask: ArrayLike | None = None, **forward_kwargs):
    """`term_shares` as a pandas DataFrame: layer, head, c2c, c2p, p2c (needs pandas)."""
    import pandas as pd

    shares = term_shares(params, config, input_ids, attention_mask, **forward_kwargs)
    L, N, _ = shares.shape
    rows = [(layer, head, *shares[layer, head]) for layer in range(L) for head in range(N)]
    return pd.DataFrame(rows, columns=["layer", "head", "c2c", "c2p", "p2c"])
