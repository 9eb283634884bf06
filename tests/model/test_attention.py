"""Attention on hand-computed numbers: the mask bias matrix and a 2-token, 2-head example."""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import bertjax
from bertjax.model.attention import MASK_VALUE, mask_bias


def test_mask_bias_is_explicit():
    bias = np.asarray(mask_bias(jnp.array([[1, 1, 0], [1, 0, 0]])))
    np.testing.assert_array_equal(bias[:, 0, 0], [[0, 0, MASK_VALUE], [0, MASK_VALUE, MASK_VALUE]])
    assert bias.shape == (2, 1, 1, 3) and MASK_VALUE <= -1e4


def _eye_layer(d):
    dense = {"kernel": jnp.eye(d), "bias": jnp.zeros(d)}
    return {"self": {"query": dense, "key": dense, "value": dense}, "output": {"dense": dense}}


def test_two_heads_by_hand():
    # D=4, N=2, H=2, identity projections: head 0 sees dims 0-1, head 1 dims 2-3.
    config = bertjax.BertConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=3)
    x = jnp.array([[[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 2.0]]])  # [B=1, S=2, D=4]
    out, acts = bertjax.attention(_eye_layer(4), x, config, capture="all")
    s = 1 / math.sqrt(2)
    # head 0: q = k = v = [[1, 0], [0, 1]] -> scores [[s, 0], [0, s]]
    # head 1: q = k = v = [[2, 0], [0, 2]] -> scores [[4s, 0], [0, 4s]]
    np.testing.assert_allclose(acts["attn.scores"][0, 0], [[s, 0], [0, s]], rtol=1e-6)
    np.testing.assert_allclose(acts["attn.scores"][0, 1], [[4 * s, 0], [0, 4 * s]], rtol=1e-6)
    p0, p1 = 1 / (1 + math.exp(-s)), 1 / (1 + math.exp(-4 * s))
    np.testing.assert_allclose(acts["attn.probs"][0, 0], [[p0, 1 - p0], [1 - p0, p0]], rtol=1e-6)
    np.testing.assert_allclose(acts["attn.context"][0, 1], [[2 * p1, 2 - 2 * p1],
                                                            [2 - 2 * p1, 2 * p1]], rtol=1e-6)
    want = [[p0, 1 - p0, 2 * p1, 2 - 2 * p1], [1 - p0, p0, 2 - 2 * p1, 2 * p1]]
    np.testing.assert_allclose(out[0], want, rtol=1e-6)
    np.testing.assert_allclose(acts["attn.head_out"][0, 0, :, 2:], 0.0)  # head 0 writes dims 0-1


def test_padded_key_gets_no_attention():
    config = bertjax.BertConfig(vocab_size=5, hidden_size=4, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=3)
    x = jnp.arange(12, dtype=jnp.float32).reshape(1, 3, 4) / 10
    _, acts = bertjax.attention(_eye_layer(4), x, config, jnp.array([[1, 1, 0]]), "attn.probs")
    np.testing.assert_array_equal(acts["attn.probs"][0, :, :, 2], 0.0)
    np.testing.assert_allclose(acts["attn.probs"][0].sum(-1), 1.0, rtol=1e-6)


def _random_attention(seed: int, batch: int):
    """A random one-layer attention (D=15, N=3, H=5) and its input [batch, 7, 15]."""
    config = bertjax.BertConfig(vocab_size=5, hidden_size=15, num_hidden_layers=1,
                                num_attention_heads=3, intermediate_size=7)
    rng = np.random.default_rng(seed)
    dense = lambda: {"kernel": jnp.asarray(rng.standard_normal((15, 15)), jnp.float32) / 4,
                     "bias": jnp.asarray(rng.standard_normal(15), jnp.float32)}
    params = {"self": {"query": dense(), "key": dense(), "value": dense()},
              "output": {"dense": dense()}}
    return config, params, jnp.asarray(rng.standard_normal((batch, 7, 15)), jnp.float32)


def test_cpu_fast_path_in_batch_groups_matches_the_explicit_path(monkeypatch):
    """With nothing captured, CPU runs the attention over batch groups (lax.map); forced down to
    groups of 1 and 2 sequences it gives the explicit path's numbers, padding included."""
    module = sys.modules["bertjax.model.attention"]  # bertjax.model.attention is the function
    config, params, x = _random_attention(seed=0, batch=4)
    mask = np.ones((4, 7), np.int32)
    mask[1, 4:] = 0
    mask[3, 1:] = 0
    want, _ = bertjax.attention(params, x, config, mask, capture="attn.probs")
    for group in (1, 2):
        monkeypatch.setattr(module, "GROUP_BYTES", group * 3 * 7 * 7 * 4)
        assert module._group_size(4, 3, 7, 7) == group
        got, acts = bertjax.attention(params, x, config, mask)
        assert acts == {}
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_dot_product_attention_path_matches_the_explicit_path(monkeypatch):
    """Off CPU, uncaptured attention goes through jax.nn.dot_product_attention. Forced on here,
    it gives the explicit path's numbers with padding and a fully padded row (uniform, no NaN),
    in float32 and in bfloat16 (same float32 scores and softmax)."""
    module = sys.modules["bertjax.model.attention"]
    config, params, x = _random_attention(seed=1, batch=3)
    mask = np.ones((3, 7), np.int32)
    mask[1, 4:] = 0
    mask[2, :] = 0
    calls = []
    fused = module._fused_context
    monkeypatch.setattr(module, "_fused_here", lambda: True)
    monkeypatch.setattr(module, "_fused_context", lambda *a: calls.append(1) or fused(*a))
    for dtype, atol in ((jnp.float32, 1e-6), (jnp.bfloat16, 0.02)):
        p = jax.tree_util.tree_map(lambda a, dtype=dtype: a.astype(dtype), params)
        want, _ = bertjax.attention(p, x.astype(dtype), config, mask, capture="attn.probs")
        got, acts = bertjax.attention(p, x.astype(dtype), config, mask)
        assert acts == {} and got.dtype == dtype and np.isfinite(np.asarray(got, np.float32)).all()
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   atol=atol)
    assert len(calls) == 2  # the fused path ran, once per dtype


def test_cudnn_is_chosen_on_gpu_in_half_precision_only():
    from bertjax.model.attention import fused_implementation

    assert fused_implementation(jnp.bfloat16, "gpu") == "cudnn"
    assert fused_implementation(jnp.float16, "gpu") == "cudnn"
    assert fused_implementation(jnp.float32, "gpu") is None
    assert fused_implementation(jnp.bfloat16, "cpu") is None
    assert fused_implementation(jnp.bfloat16, "tpu") is None


def test_refused_cudnn_falls_back_cleanly(monkeypatch):
    """Asked for cuDNN where it is missing (this CPU), the fast path falls back to JAX's own
    implementation with the same numbers as the explicit path."""
    module = sys.modules["bertjax.model.attention"]
    config, params, x = _random_attention(seed=2, batch=2)
    mask = np.ones((2, 7), np.int32)
    mask[1, 5:] = 0
    p = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), params)
    want, _ = bertjax.attention(p, x.astype(jnp.bfloat16), config, mask, capture="attn.probs")
    monkeypatch.setattr(module, "_fused_here", lambda: True)
    monkeypatch.setattr(module, "fused_implementation", lambda dtype, backend=None: "cudnn")
    got, _ = bertjax.attention(p, x.astype(jnp.bfloat16), config, mask)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                               atol=0.02)
