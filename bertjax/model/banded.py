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


def _no_key_rows(attention_mask: ArrayLike | None, B: int, S: int, w: int) -> jax.Array:
    """bool [B, 1, S, 1]: the queries with no real key within |i - j| <= w (running counts of
    the mask, no S x T array)."""
    if attention_mask is None:
        return jnp.zeros((B, 1, S, 1), bool)
    keys = (jnp.asarray(attention_mask) != 0).astype(jnp.int32)  # [B, S]
    counts = jnp.pad(jnp.cumsum(keys, axis=1), ((0, 0), (1, 0)))  # [B, S + 1]
    i = np.arange(S)
    inside = counts[:, np.minimum(i + w, S - 1) + 1] - counts[:, np.maximum(i - w, 0)]  # [B, S]
    return (inside == 0)[:, None, :, None]


def fused_window_context(q: jax.Array, k: jax.Array, v: jax.Array,
                         attention_mask: ArrayLike | None, w: int, scale: float,
                         implementation: str | None = "cudnn") -> jax.Array:
    """Sliding-window attention [B, N, S, H] through `jax.nn.dot_product_attention`'s fused kernel.

    cuDNN takes a window only one-sided (causal: keys i - w .. i), so the symmetric window is two
    calls: keys i - w .. i on the sequence, keys i .. i + w on the reversed sequence. Each returns
    its context and log-sum-exp; the two softmaxes merge exactly, taking the query's own key (in
    both halves) out once:
      out = (e^a o_left + e^b o_right - e^c v_i) / (e^a + e^b - e^c),
    a, b the halves' log-sum-exps, c the query's own scaled score (-inf when it is padding).
    The same arithmetic with `implementation=None` (JAX's XLA implementation) runs on CPU, where
    the tests compare it with `banded_context`. A row with no allowed key is the mean of all
    values, as in `banded_context`.

    Raises what `jax.nn.dot_product_attention` raises when cuDNN refuses (no GPU, an unsupported
    dtype or shape): the caller falls back to `banded_context`.
    """
    B, N, S, H = q.shape
    to_bsnh = lambda x: jnp.swapaxes(x, 1, 2)  # [B, N, S, H] <-> [B, S, N, H]
    flip = lambda x: jnp.flip(x, axis=1)  # the sequence axis of [B, S, ...]
    keys = None if attention_mask is None else \
        (jnp.asarray(attention_mask) != 0)[:, None, None, :]  # [B, 1, 1, T]

    def half(q, k, v, keys):
        return jax.nn.dot_product_attention(q, k, v, mask=keys, scale=1.0 / scale, is_causal=True,
                                            local_window_size=(w, 0),
                                            implementation=implementation, return_residual=True)

    qs, ks, vs = to_bsnh(q), to_bsnh(k), to_bsnh(v)  # [B, S, N, H]
    left, a = half(qs, ks, vs, keys)  # [B, S, N, H], [B, S, N]
    right, b = half(flip(qs), flip(ks), flip(vs), None if keys is None else jnp.flip(keys, -1))
    right, b = flip(right), flip(b)
    own = jnp.einsum("BSNH,BSNH->BSN", qs, ks, preferred_element_type=jnp.float32) / scale
    if attention_mask is not None:
        own = jnp.where((jnp.asarray(attention_mask) != 0)[:, :, None], own, -jnp.inf)
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    top = jnp.maximum(a, b)
    ea, eb, ec = (jnp.exp(x - top)[..., None] for x in (a, b, own))  # [B, S, N, 1]
    part = lambda e, x: jnp.where(e > 0, e * x.astype(jnp.float32), 0.0)  # 0, never 0 * inf
    context = (part(ea, left) + part(eb, right) - part(ec, vs)) / (ea + eb - ec)
    context = to_bsnh(context.astype(q.dtype))  # [B, N, S, H]
    uniform = jnp.mean(v.astype(jnp.float32), axis=2, keepdims=True).astype(v.dtype)
    return jnp.where(_no_key_rows(attention_mask, B, S, w), uniform, context)
