"""pruning: Michel et al.'s head importance against finite differences of the metric in the head
mask, and the pruning curve against eager forwards with the same masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax
from bertjax.analysis.pruning import head_importance, prune_curve

L, N = TINY["num_hidden_layers"], TINY["num_attention_heads"]
CONFIG = bertjax.BertConfig(**TINY)


@pytest.fixture(scope="module")
def params():
    params = bertjax.init_params(jax.random.key(1), CONFIG, bertjax.Heads(classifier=True))
    # std 0.02 -> 0.4: sharp attention, so every head changes the loss measurably
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * 20.0 if path[-1].key in ("kernel", "embedding") else x, params)


@pytest.fixture(scope="module")
def batches():
    ids, types, mask = tiny_inputs(seed=3)
    first = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
             "labels": np.array([0, 1], np.int32)}
    ids2, _, _ = tiny_inputs(seed=4)
    second = {"input_ids": ids2[:1], "labels": np.array([1], np.int32)}  # one example, no mask
    return [first, second]


@pytest.fixture(scope="module")
def metric(params):
    """One function object for the module, so the jitted programs compile once."""

    def cross_entropy(out, batch):
        logits = bertjax.classifier_logits(params, out.pooler_output, CONFIG)  # [B, C]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, batch["labels"][:, None], axis=1).mean()
    return cross_entropy


def _eager(params, batch, mask, metric):
    inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in batch}
    return float(metric(bertjax.forward(params, config=CONFIG, head_mask=mask, **inputs), batch))


def test_head_importance_against_finite_differences(params, batches, metric):
    raw = head_importance(params, CONFIG, batches, metric, normalize=False)
    assert raw.shape == (L, N)
    eps = 1e-2
    signed = np.zeros((2, L, N))  # [batch, L, N]
    for layer in range(L):
        for head in range(N):
            bump = np.zeros((L, N), np.float32)
            bump[layer, head] = eps
            for i, b in enumerate(batches):
                up, down = _eager(params, b, 1 + bump, metric), _eager(params, b, 1 - bump, metric)
                signed[i, layer, head] = (up - down) / (2 * eps)
    # the absolute value per batch, then the batches weighted by their examples (2 and 1)
    want = (2 * np.abs(signed[0]) + np.abs(signed[1])) / 3
    assert want.min() > 1e-4  # every head matters: the comparison is not of zeros
    assert (np.sign(signed[0]) != np.sign(signed[1])).any()  # |mean| would differ from mean |.|
    np.testing.assert_allclose(raw, want, rtol=2e-3, atol=1e-6)
    normalized = head_importance(params, CONFIG, batches, metric)
    np.testing.assert_allclose(normalized, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)


def test_prune_curve_against_eager_forwards(params, batches, metric):

    def accuracy(out, batch):
        logits = bertjax.classifier_logits(params, out.pooler_output, CONFIG)
        return (jnp.argmax(logits, -1) == batch["labels"]).mean()

    importance = np.arange(L * N, dtype=np.float32)[::-1].reshape(L, N)  # last head least important
    curve = prune_curve(params, CONFIG, batches, metric, importance=importance, step=5)
    np.testing.assert_array_equal(curve.pruned, [0, 5, 10, L * N])
    np.testing.assert_allclose(curve.share, curve.pruned / (L * N))
    assert tuple(curve.order[0]) == (L - 1, N - 1) and tuple(curve.order[-1]) == (0, 0)
    for k, count in enumerate(curve.pruned):
        mask = curve.mask(k)
        assert (mask == 0).sum() == count
        want = (2 * _eager(params, batches[0], mask, metric) + _eager(params, batches[1], mask, metric)) / 3
        np.testing.assert_allclose(curve.values[k], want, rtol=1e-5)
    assert mask.sum() == 0  # the last step masks every head

    derived = prune_curve(params, CONFIG, batches, accuracy, importance_metric=metric, step=L * N)
    np.testing.assert_allclose(derived.importance, head_importance(params, CONFIG, batches, metric))
    assert list(derived.pruned) == [0, L * N] and 0 <= derived.values.min() <= derived.values.max() <= 1


def test_errors(params, batches, metric):
    with pytest.raises(ValueError, match=r"each batch must be a dict with input_ids \[B, S\]"):
        head_importance(params, CONFIG, [{"labels": np.zeros(2)}], metric)
    with pytest.raises(ValueError, match=r"batches is empty"):
        head_importance(params, CONFIG, [], metric)
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 101\)"):
        head_importance(params, CONFIG, [{"input_ids": np.full((1, 3), 101), "labels": np.zeros(1, int)}],
                        metric)
    with pytest.raises(ValueError, match=r"importance must have shape \[L, N\]=\(4, 3\), got \(3, 4\)"):
        prune_curve(params, CONFIG, batches, metric, importance=np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"step must be a positive int .* got 0"):
        prune_curve(params, CONFIG, batches, metric, importance=np.ones((L, N)), step=0)
