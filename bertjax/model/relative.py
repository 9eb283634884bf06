"""MPNet's relative position bias: T5-style buckets of j - i, one bias [N, S, T] for every layer.

transformers' `MPNetEncoder.compute_position_bias` runs once per forward with relative positions
from arange(S) (padding and user position ids play no part) and always with its default 32 buckets
and max distance 128; the table `encoder/relative_attention_bias/embedding` [R, N] (R >= 32) is
read at the bucket of each (query i, key j). The buckets are computed here with NumPy on the static
length S, in float32 exactly as torch does (the log's truncation decides the boundary buckets).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

NUM_BUCKETS = 32
MAX_DISTANCE = 128


@functools.lru_cache(maxsize=16)
def relative_buckets(S: int, T: int | None = None) -> np.ndarray:
    """int32 [S, T] bucket of key j for query i (transformers' `relative_position_bucket` of
    j - i, num_buckets=32, max_distance=128, float32 arithmetic)."""
    T = S if T is None else T
    n = np.arange(S, dtype=np.int64)[:, None] - np.arange(T, dtype=np.int64)[None, :]  # i - j
    half = NUM_BUCKETS // 2
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):  # log(0) at n = 0, a small n, never used
        scaled = (np.log(n.astype(np.float32) / np.float32(exact))
                  / np.float32(math.log(MAX_DISTANCE / exact)) * np.float32(half - exact))
    large = exact + np.where(n < exact, 0, scaled).astype(np.int64)  # truncation, as .to(long)
    large = np.minimum(large, half - 1)
    ret = ret + np.where(n < exact, n, large)
    return ret.astype(np.int32)


def relative_bias(table: jax.Array, S: int) -> jax.Array:
    """The bias added to every layer's scores: table [R, N] at the buckets -> float32 [N, S, S]."""
    values = jnp.asarray(table)[relative_buckets(S)]  # [S, S, N]
    return jnp.transpose(values, (2, 0, 1)).astype(jnp.float32)  # [N, S, S]
