"""Sequence-length buckets, so that a stream of ragged inputs compiles only a handful of programs.

A jitted forward compiles once per input shape. Padding every batch up to the next bucket length
(and, optionally, the batch up to a fixed size) bounds the number of shapes, and so of compiles,
by the number of buckets.
"""

from __future__ import annotations

import bisect

import numpy as np


def bucket_lengths(max_length: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to, and always ending at, `max_length`."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    lengths, n = [], smallest
    while n < max_length:
        lengths.append(n)
        n *= 2
    return tuple(lengths) + (max_length,)


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket >= length; ValueError when none fits."""
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"sequence length {length} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def pad_batch(sequences: list[list[int]], buckets: tuple[int, ...], pad_id: int = 0,
              batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pads token id lists to their bucket length (and to `batch_size` rows when given).

    Returns:
      input_ids: int32 [B, S] and attention_mask: int32 [B, S] (1 for tokens, 0 for padding; padded
      rows are all padding).
    """
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    S = bucket_for(max(len(s) for s in sequences), buckets)
    B = len(sequences) if batch_size is None else batch_size
    if B < len(sequences):
        raise ValueError(f"{len(sequences)} sequences do not fit batch_size={batch_size}")
    ids = np.full((B, S), pad_id, np.int32)
    mask = np.zeros((B, S), np.int32)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask
