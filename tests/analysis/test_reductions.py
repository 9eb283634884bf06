"""reductions: each statistic against the same numbers computed in NumPy from the full attn.probs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import TINY, assert_close, tiny_inputs

import bertjax
from bertjax.analysis.reductions import attention_distance, attention_stats, rollout, special_token_ids

L = TINY["num_hidden_layers"]

CLS, SEP = 2, 3


@pytest.fixture(scope="module")
def run():
    """A tiny model on a padded batch with [CLS] ... [SEP] ... [SEP] rows, and its full attn.probs."""
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(3), config, bertjax.Heads())
    ids, types, mask = tiny_inputs(seed=1)
    ids[ids <= SEP] = 10  # no accidental specials
    ids[:, 0] = CLS
    ids[0, [3, 6]] = SEP  # a pair in row 0
    ids[1, 3] = SEP  # row 1 ends at position 3, padding after
    probs = bertjax.forward(params, ids, config, types, mask, capture=("attn.probs",)).acts
    stats = attention_stats(params, ids, config, cls_token_id=CLS, sep_token_id=SEP,
                            token_type_ids=types, attention_mask=mask)
    return ids, mask, np.asarray(probs["attn.probs"], np.float64), stats


def _query_mean(values, weights):
    """NumPy reference: values [L, B, N, S] averaged over queries where weights [B, S] is 1."""
    w = weights[None, :, None, :].astype(np.float64)
    return (values * w).sum(-1) / w.sum(-1)


def test_entropy(run):
    ids, mask, probs, stats = run
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    assert_close("entropy", stats.entropy, _query_mean(-plogp.sum(-1), mask))


@pytest.mark.parametrize("field,token", [("to_cls", CLS), ("to_sep", SEP)])
def test_mass_on_special_tokens(run, field, token):
    ids, mask, probs, stats = run
    on_token = (probs * (ids == token)[None, :, None, None, :]).sum(-1)  # [L, B, N, S]
    assert_close(field, getattr(stats, field), _query_mean(on_token, mask))


def test_self_and_previous(run):
    ids, mask, probs, stats = run
    L, B, N, S, _ = probs.shape
    diag = np.stack([probs[..., s, s] for s in range(S)], -1)
    prev = np.stack([np.zeros((L, B, N))] + [probs[..., s, s - 1] for s in range(1, S)], -1)
    has_prev = mask.copy()
    has_prev[:, 0] = 0
    assert_close("to_self", stats.to_self, _query_mean(diag, mask))
    assert_close("to_prev", stats.to_prev, _query_mean(prev, has_prev))


def test_rollout(run):
    ids, mask, probs, stats = run
    L, B, N, S, _ = probs.shape
    want = np.zeros((B, S, S))
    for b in range(B):
        result = np.eye(S)
        for layer in range(L):
            a = probs[layer, b].mean(0) + np.eye(S)
            result = (a / a.sum(-1, keepdims=True)) @ result
        want[b] = result * mask[b][:, None]
    assert_close("rollout", stats.rollout, want)
    real = mask[1] == 1
    np.testing.assert_allclose(np.asarray(stats.rollout)[1][real][:, real].sum(-1), 1.0, atol=1e-5)
    assert_close("rollout without a mask, unpadded row", rollout(probs)[0], want[0])


def test_shapes_and_no_probs_output(run):
    ids, mask, probs, stats = run
    for name in ("entropy", "to_cls", "to_sep", "to_self", "to_prev"):
        assert getattr(stats, name).shape == (L, 2, 3), name
    assert stats.rollout.shape == (2, 7, 7)
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(3), config, bertjax.Heads())
    from bertjax.analysis.reductions import _attention_stats

    shapes = jax.eval_shape(lambda p, i, m, s: _attention_stats(p, i, None, m, s, config=config),
                            params, ids, mask, np.array([CLS, SEP], np.int32))
    sizes = [leaf.shape for leaf in jax.tree_util.tree_leaves(shapes)]
    assert (L, 2, 3, 7, 7) not in sizes  # the S x S per-head tensor is not an output


def test_special_token_ids():
    class Tok:
        cls_token_id, sep_token_id = 101, 102

    assert special_token_ids(Tok()) == {"cls_token_id": 101, "sep_token_id": 102}


def test_bad_ids_raise():
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(3), config, bertjax.Heads())
    with pytest.raises(ValueError, match="input_ids must be in"):
        attention_stats(params, np.full((1, 4), 500, np.int32), config, cls_token_id=CLS,
                        sep_token_id=SEP)


def test_attention_distance_against_numpy(run):
    """sum_t p |s - t| per query, averaged over each example's real queries, against NumPy."""
    ids, mask, probs, _ = run
    got = np.asarray(attention_distance(probs, attention_mask=mask))
    S = probs.shape[-1]
    offset = np.abs(np.arange(S)[:, None] - np.arange(S)[None, :])
    want = _query_mean((probs * offset).sum(-1), mask)
    assert got.shape == probs.shape[:3]
    assert_close("attention_distance", got, want, atol=1e-5)
    unmasked = np.asarray(attention_distance(probs))
    assert_close("attention_distance, no mask", unmasked, (probs * offset).sum(-1).mean(-1), atol=1e-5)
    assert not np.allclose(unmasked, got)  # the padded queries are left out with the mask


def test_attention_distance_of_modernbert_stays_in_the_window():
    """A sliding layer attends within |i - j| <= w, a global one beyond it (tiny random
    ModernBERT, S well past the window)."""
    from tests.model import modern_ref

    config = bertjax.BertConfig.from_dict({"model_type": "modernbert", **modern_ref.MODERNBERT})
    params = bertjax.init_params(jax.random.key(0), config, bertjax.Heads(pooler=False))
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (1, 40))
    probs = bertjax.forward(params, ids, config, capture=("attn.probs",)).acts["attn.probs"]
    distance = np.asarray(attention_distance(probs))[:, 0]  # [L, N]
    local = np.asarray(config.local_layers)
    assert local.any() and (~local).any()
    assert (distance[local] <= config.sliding_window).all()
    assert distance[~local].min() > config.sliding_window


def test_attention_distance_refuses_other_shapes():
    probs = np.full((2, 1, 3, 4, 4), 0.25)
    with pytest.raises(ValueError, match=r"probs must be attn.probs of shape \[L, B, N, S, S\]"):
        attention_distance(probs[0])
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[B, S\] = \(1, 4\)"):
        attention_distance(probs, attention_mask=np.ones((1, 5)))
