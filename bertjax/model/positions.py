"""Position terms of the modern encoders: ModernBERT's rotary embedding, DeBERTa's relative terms.

Axis letters: B batch, N heads, S query positions, T key positions, H head size, R relative rows.

* Rotary (ModernBERT, transformers' `ModernBertRotaryEmbedding` "default"): inv_freq =
  1 / theta^(arange(0, H, 2) / H) in float32, angle = position x inv_freq (a float32 product, as
  torch forms it), cos / sin of [angle, angle] (half-split, not interleaved); q' = q cos +
  rotate_half(q) sin with rotate_half(x) = [-x[H/2:], x[:H/2]], in float32.
* DeBERTa's disentangled terms (`DisentangledSelfAttention.disentangled_attention_bias`): the
  relative index of (query i, key j) is idx = clamp(bucket(i - j) + span, 0, 2 span - 1), with the
  log buckets built here in NumPy float32 exactly as torch does (the ceil decides the boundary
  buckets). c2p[i, j] = q_i . rel_k[idx(i, j)] / scale and p2c[i, j] = k_j . rel_q[idx(i, j)] / scale
  (the bucket map is odd, so transformers' transposed gather is this). Only the R relative rows
  that S positions can reach are projected, and the per-pair values are read from the [B, N, S, R]
  products by one gather each: nothing per pair is larger than the scores.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.model.config import BertConfig
from bertjax.model.nn import dense


def inv_freq(theta: float, H: int) -> np.ndarray:
    """float32 [H / 2]: 1 / theta^(2i / H), each step rounded to float32 as torch computes it."""
    exponent = np.arange(0, H, 2, dtype=np.int64).astype(np.float32) / np.float32(H)
    power = np.power(np.float64(theta), exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def rotary_tables(position_ids: jax.Array, theta: float, H: int) -> tuple[jax.Array, jax.Array]:
    """cos, sin float32 [..., S, H] for int position ids [..., S] ([S] or [B, S])."""
    freq = jnp.asarray(inv_freq(theta, H)).reshape((1,) * position_ids.ndim + (-1,))
    angle = position_ids.astype(jnp.float32)[..., None] * freq  # [..., S, H / 2]
    angle = jnp.concatenate([angle, angle], axis=-1)  # [..., S, H]
    return jnp.cos(angle), jnp.sin(angle)


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """The rotary embedding of [B, N, S, H] queries or keys (cos / sin [S, H] or [B, S, H]), in
    float32, cast back to x's dtype."""
    cos = cos[:, None] if cos.ndim == 3 else cos[None, None]  # [B or 1, 1, S, H]
    sin = sin[:, None] if sin.ndim == 3 else sin[None, None]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


@functools.lru_cache(maxsize=32)
def relative_index(S: int, span: int, buckets: int, max_position: int) -> np.ndarray:
    """int32 [S, S]: DeBERTa's index into the 2 x span relative rows for query i, key j."""
    rel = np.arange(S, dtype=np.int64)[:, None] - np.arange(S, dtype=np.int64)[None, :]  # i - j
    if buckets > 0 and max_position > 0:
        rel = _log_buckets(rel, buckets, max_position)
    return np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)


def _log_buckets(rel: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """transformers' `make_log_bucket_position` in float32: |d| <= mid stays d, beyond it
    sign(d) (ceil(log(|d| / mid) / log((max_position - 1) / mid) (mid - 1)) + mid)."""
    sign = np.sign(rel).astype(np.float32)
    mid = buckets // 2
    near = (rel < mid) & (rel > -mid)
    abs_pos = np.where(near, mid - 1, np.abs(rel))
    ratio = abs_pos.astype(np.float32) / np.float32(mid)
    denominator = np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(np.log(ratio) / denominator * np.float32(mid - 1)) + np.float32(mid)
    bucket = np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign)
    return bucket.astype(np.int64)


def deberta_index(config: BertConfig, S: int) -> tuple[np.ndarray, int, int]:
    """The relative index [S, S] shifted to the reachable rows, and those rows' range [lo, hi)
    of the 2 x span table."""
    index = relative_index(S, config.rel_span, config.position_buckets, config.rel_max_position)
    lo, hi = int(index.min()), int(index.max()) + 1
    return (index - lo).astype(np.int32), lo, hi


def relative_terms(params: dict, q: jax.Array, k: jax.Array, rel: jax.Array,
                   index: jax.Array, config: BertConfig) -> dict[str, jax.Array]:
    """DeBERTa's position terms of one layer, each float32 [B, N, S, T] divided by the scale.

    Args:
      params: the layer's `attention/self` subtree (`query`/`key`, or `pos_query_proj` /
        `pos_key_proj` without share_att_key).
      q, k: [B, N, S, H], [B, N, T, H] content queries and keys.
      rel: [R, D] the reachable relative embeddings (after their LayerNorm).
      index: int32 [S, T] into rel's rows.
    """
    terms = {}
    N, H = config.num_attention_heads, config.head_size
    shared = config.share_att_key
    for term in config.position_terms:
        name = ("key" if shared else "pos_key_proj") if term == "c2p" else \
            ("query" if shared else "pos_query_proj")
        pos = dense(params[name], rel).reshape(-1, N, H).swapaxes(0, 1)  # [N, R, H]
        content = q if term == "c2p" else k  # c2p: queries; p2c: keys
        table = jnp.einsum("BNSH,NRH->BNSR", content, pos,
                           preferred_element_type=jnp.float32)  # [B, N, S or T, R]
        idx = index if term == "c2p" else index.T  # p2c reads key j's row at idx(i, j)
        picked = jnp.take_along_axis(table, jnp.broadcast_to(idx, table.shape[:2] + idx.shape),
                                     axis=-1)  # [B, N, S, T] (p2c: [B, N, T, S])
        picked = picked if term == "c2p" else jnp.swapaxes(picked, -1, -2)
        terms[term] = picked / jnp.float32(config.score_scale)
    return terms
