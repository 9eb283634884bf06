"""Sliding-window attention without S x T scores: blocked (banded) local attention.

ModernBERT's sliding layers let query i see keys j with |i - j| <= w (w = local_attention // 2)
that are not padding. Cut the sequence into blocks of C = w positions (padded to a whole number of
blocks); the keys query block b can see all lie in blocks b - 1, b, b + 1, so each block scores
C x 3C pairs: the cost grows as S x w, not S^2 (at S = 8192, w = 64, 2.3% of the full scores).
Inside the band, the allowed pairs depend only on the offset within the block (i - j = C + c - d),
plus the keys' padding.

The arithmetic is the explicit path's (scaled float32 scores, the finfo.min additive mask, float32
softmax), so a row with at least one allowed key gets the same probabilities. A row with none (a
padded query whose whole window is padding) is uniform over all T keys in transformers' eager
attention (every score is finfo.min): here it is the mean of all values, the same context.

This path serves when neither scores nor probs are captured; `attn.scores` / `attn.probs` keep the
full form ([B, N, S, T] with the window in the mask), which the tests compare it with.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def window_bias(attention_mask: ArrayLike | None, B: int, S: int, w: int) -> jax.Array:
    """The full-form additive bias of a sliding layer, float32 [B, 1, S, T]: 0 where |i - j| <= w
    and key j is a token, MASK_VALUE elsewhere."""
    i = np.arange(S)
    near = np.abs(i[:, None] - i[None, :]) <= w  # [S, T]
    keys = jnp.ones((B, S), bool) if attention_mask is None else jnp.asarray(attention_mask) != 0
    allowed = jnp.asarray(near)[None] & keys[:, None, :]  # [B, S, T]
    return jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)[:, None]  # [B, 1, S, T]


def _blocks(x: jax.Array, C: int, nb: int) -> jax.Array:
    """[B, N, S, H] -> [B, N, nb, C, H], zero-padded at the end to nb x C positions."""
    B, N, S, H = x.shape
    x = jnp.pad(x, ((0, 0), (0, 0), (0, nb * C - S), (0, 0)))
    return x.reshape(B, N, nb, C, H)


def _neighbours(x: jax.Array) -> jax.Array:
    """[..., nb, C, ...] blocks -> [..., nb, 3C, ...]: each block with the one before and after
    (zero blocks beyond the ends). Axis 2 is the block axis, axis 3 the position in it."""
    pad = [(0, 0)] * x.ndim
    pad[2] = (1, 1)
    x = jnp.pad(x, pad)
    nb = x.shape[2] - 2
    return jnp.concatenate([x[:, :, 0:nb], x[:, :, 1:nb + 1], x[:, :, 2:nb + 2]], axis=3)


def banded_context(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: ArrayLike | None,
                   w: int, scale: float) -> jax.Array:
    """Sliding-window attention context [B, N, S, H] from q, k, v [B, N, S, H], window w."""
    B, N, S, H = q.shape
    C = max(w, 1)
    nb = math.ceil(S / C)
    qb = _blocks(q, C, nb)  # [B, N, nb, C, H]
    kb, vb = _neighbours(_blocks(k, C, nb)), _neighbours(_blocks(v, C, nb))  # [B, N, nb, 3C, H]
    scores = jnp.einsum("BNKCH,BNKDH->BNKCD", qb, kb,
                        preferred_element_type=jnp.float32) * (1.0 / scale)  # [B, N, nb, C, 3C]
    offset = C + np.arange(C)[:, None] - np.arange(3 * C)[None, :]  # i - j within the band
    near = jnp.asarray(np.abs(offset) <= w)  # [C, 3C]
    keys = jnp.ones((B, S), bool) if attention_mask is None else jnp.asarray(attention_mask) != 0
    keys = jnp.pad(keys, ((0, 0), (0, nb * C - S))).reshape(B, 1, nb, C)
    keys = _neighbours(keys[..., None])[..., 0]  # [B, 1, nb, 3C]
    allowed = near[None, None, None] & keys[:, :, :, None, :]  # [B, 1, nb, C, 3C]
    bias = jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)
    probs = jax.nn.softmax(scores + bias, axis=-1).astype(q.dtype)
    context = jnp.einsum("BNKCD,BNKDH->BNKCH", probs, vb).reshape(B, N, nb * C, H)[:, :, :S]
    # Rows without an allowed key: uniform over all T keys, as transformers' eager softmax.
    none = ~jnp.any(allowed, axis=-1).reshape(B, 1, nb * C)[:, :, :S, None]  # [B, 1, S, 1]
    uniform = jnp.mean(v.astype(jnp.float32), axis=2, keepdims=True).astype(v.dtype)  # [B, N, 1, H]
    return jnp.where(none, uniform, context)  # [B, N, S, H]
