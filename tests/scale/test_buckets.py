"""`bertjax.scale.buckets`: bucket lengths, the bucket of a length, and padding to bucket shapes."""

from __future__ import annotations

import numpy as np
import pytest

from bertjax.scale.buckets import bucket_for, bucket_lengths, pad_batch


@pytest.mark.parametrize("max_length, buckets", [
    (512, (16, 32, 64, 128, 256, 512)),
    (40, (16, 32, 40)),
    (64, (16, 32, 64)),
    (16, (16,)),
    (7, (7,)),
    (1, (1,)),
])
def test_bucket_lengths(max_length, buckets):
    assert bucket_lengths(max_length) == buckets


def test_bucket_lengths_smallest_and_error():
    assert bucket_lengths(100, smallest=8) == (8, 16, 32, 64, 100)
    with pytest.raises(ValueError, match=r"max_length must be >= 1, got 0"):
        bucket_lengths(0)


def test_bucket_for():
    buckets = (16, 32, 40)
    assert [bucket_for(n, buckets) for n in (1, 16, 17, 32, 33, 40)] == [16, 16, 32, 32, 40, 40]
    with pytest.raises(ValueError, match=r"sequence length 41 exceeds the largest bucket 40"):
        bucket_for(41, buckets)


def test_pad_batch_hand_computed():
    ids, mask = pad_batch([[5, 6, 7], [8]], (4, 8), pad_id=9)
    np.testing.assert_array_equal(ids, [[5, 6, 7, 9], [8, 9, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
    assert ids.dtype == mask.dtype == np.int32
    ids, mask = pad_batch([[1] * 5], (4, 8), batch_size=3)  # to the next bucket, 3 rows
    assert ids.shape == mask.shape == (3, 8)
    assert mask.sum(1).tolist() == [5, 0, 0] and not ids[1:].any()


def test_few_shapes_for_many_lengths():
    """Any mix of lengths 1..40 in batches of at most 4 gives one shape per bucket."""
    rng = np.random.default_rng(0)
    shapes = {pad_batch([[1] * n for n in rng.integers(1, 41, rng.integers(1, 5))],
                        (16, 32, 40), batch_size=4)[0].shape for _ in range(200)}
    assert shapes == {(4, 16), (4, 32), (4, 40)}


def test_pad_batch_errors():
    with pytest.raises(ValueError, match=r"pad_batch needs at least one sequence"):
        pad_batch([], (4,))
    with pytest.raises(ValueError, match=r"3 sequences do not fit batch_size=2"):
        pad_batch([[1], [2], [3]], (4,), batch_size=2)
    with pytest.raises(ValueError, match=r"sequence length 5 exceeds the largest bucket 4"):
        pad_batch([[1] * 5], (4,))
