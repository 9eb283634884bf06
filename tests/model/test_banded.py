"""ModernBERT's sliding-window layers: the banded (blocked) local attention against the full form
(S x T scores with the window in the mask), and its cost: no S x T array when nothing asks for
the probabilities. DeBERTa's relative terms: no per-pair array larger than the scores."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import bertjax
from bertjax.model import banded
from bertjax.model.attention import BANDED_FROM, mask_bias
from bertjax.model.params import Heads, init_params
from tests.conftest import assert_close
from tests.model import modern_ref


def _full(q, k, v, attention_mask, w, scale):
    """The explicit arithmetic: scores over every key, the window in the additive mask."""
    B, N, S, H = q.shape
    scores = jnp.einsum("BNSH,BNTH->BNST", q, k) / scale + banded.window_bias(attention_mask, B,
                                                                             S, w)
    return jnp.einsum("BNST,BNTH->BNSH", jax.nn.softmax(scores, axis=-1), v)


def _inputs(S: int, w: int, pad: int):
    """Seeded q, k, v [2, 3, S, 6] and a mask whose second row ends in `pad` padding positions
    (None when pad is 0)."""
    rng = np.random.default_rng(S + w)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 3, S, 6)), jnp.float32) for _ in range(3))
    mask = np.ones((2, S), np.int64)
    mask[1, S - pad:] = 0
    return q, k, v, None if pad == 0 else mask


@pytest.mark.parametrize("S,w,pad", [(37, 4, 20), (8, 3, 0), (5, 8, 3), (64, 1, 40), (17, 2, 0)],
                         ids=["padded-tail", "one-block", "window-beyond-sequence", "w1",
                              "no-mask"])
def test_banded_equals_full(S, w, pad):
    q, k, v, attention_mask = _inputs(S, w, pad)
    got = banded.banded_context(q, k, v, attention_mask, w, 2.5)
    assert_close("banded context", got, _full(q, k, v, attention_mask, w, 2.5))


def _sliding_config(S: int) -> bertjax.BertConfig:
    return bertjax.BertConfig.from_dict({
        "model_type": "modernbert", **modern_ref.MODERNBERT, "max_position_embeddings": S,
        "layer_types": ["sliding_attention"] * 2, "num_hidden_layers": 2})


def _largest(jaxpr) -> int:
    """The largest array size among a program's intermediate values (all sub-jaxprs)."""
    sizes = [int(np.prod(v.aval.shape)) for eq in jaxpr.eqns for v in eq.outvars
             if hasattr(v.aval, "shape")]
    for eq in jaxpr.eqns:
        for sub in jax.extend.core.jaxprs_in_params(eq.params):
            sizes.append(_largest(sub))
    return max(sizes, default=0)


def test_sliding_layers_never_form_s_by_t_scores():
    S = 512
    config = _sliding_config(S)
    params = init_params(jax.random.key(0), config, Heads(pooler=False))
    ids = np.ones((1, S), np.int32)
    N = config.num_attention_heads
    fast = jax.make_jaxpr(lambda p: bertjax.forward(p, ids, config).last_hidden_state)(params)
    full = jax.make_jaxpr(lambda p: bertjax.forward(p, ids, config, capture=("attn.probs",))
                          .last_hidden_state)(params)
    assert _largest(full.jaxpr) >= N * S * S  # the captured path keeps the full form
    # banded: [N, blocks, w, 3w] scores, a few times S x w, far below S x S
    assert _largest(fast.jaxpr) < N * S * S // 8


def test_banded_forward_equals_captured_forward_with_padding():
    S = 40
    config = _sliding_config(S)
    params = init_params(jax.random.key(1), config, Heads(pooler=False, mlm=True))
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 97, (2, S)))
    mask = np.ones((2, S), np.int64)
    mask[0, 9:] = 0
    fast = bertjax.forward(params, ids, config, attention_mask=mask)
    full = bertjax.forward(params, ids, config, attention_mask=mask, capture=("attn.probs",))
    assert_close("last_hidden_state", fast.last_hidden_state, full.last_hidden_state)


def test_short_sequences_take_the_full_form_with_the_window():
    """Up to S = BANDED_FROM * w a sliding layer scores S x T with the window in the bias (faster
    there); the result equals the captured path's."""
    config = _sliding_config(64)
    S = BANDED_FROM * config.sliding_window
    params = init_params(jax.random.key(1), config, Heads(pooler=False))
    ids = np.random.default_rng(0).integers(3, 97, (2, S)).astype(np.int32)
    mask = np.ones((2, S), np.int64)
    mask[1, 5:] = 0
    N = config.num_attention_heads
    fast = jax.make_jaxpr(lambda p: bertjax.forward(p, ids, config, attention_mask=mask)
                          .last_hidden_state)(params)
    assert _largest(fast.jaxpr) >= N * S * S // 2  # grouped full-form scores
    got = bertjax.forward(params, ids, config, attention_mask=mask).last_hidden_state
    want = bertjax.forward(params, ids, config, attention_mask=mask,
                           capture=("attn.probs",)).last_hidden_state
    assert_close("last_hidden_state", got, want)


def test_deberta_relative_terms_stay_within_the_scores_size():
    """The c2p / p2c products read only the relative rows S positions reach (R <= 2S - 1) and
    gather per pair once: nothing per pair beyond [B, N, S, T] (no [N, S, T, H] gather)."""
    cfg = {**modern_ref.DEBERTA_V3, "position_buckets": 64, "max_position_embeddings": 512}
    config = bertjax.BertConfig.from_dict({"model_type": "deberta-v2", **cfg})
    params = init_params(jax.random.key(2), config, Heads(pooler=False))
    B, S = 2, 24
    ids = np.ones((B, S), np.int32)
    jaxpr = jax.make_jaxpr(lambda p: bertjax.forward(p, ids, config).last_hidden_state)(params)
    N = config.num_attention_heads
    assert _largest(jaxpr.jaxpr) <= B * N * S * (2 * S - 1)


def test_window_bias_is_the_inclusive_band():
    bias = np.asarray(banded.window_bias(np.array([[1, 1, 1, 1, 0]]), 1, 5, 1))[0, 0]
    allowed = bias == 0
    want = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 0],
                     [0, 0, 0, 1, 0]], bool)
    np.testing.assert_array_equal(allowed, want)
    assert mask_bias(None) is None


def test_long_single_sequence_is_scored_by_query_chunks(monkeypatch):
    """A global layer on one long sequence: query chunks whose scores fit GROUP_BYTES, the same
    context as all queries at once."""
    from bertjax.model import attention as A

    assert A._query_chunk(12, 8192, 8192) == 64 and A._query_chunk(12, 512, 512) == 512
    monkeypatch.setattr(A, "LONG_BYTES", A.GROUP_BYTES)  # chunk this short sequence too
    config = bertjax.BertConfig(hidden_size=48, num_attention_heads=4)
    S = 1024
    assert A._query_chunk(4, S, S) == 256 and A._query_chunk(4, 64, 64) == 64
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 4, S, 12)), jnp.float32) for _ in range(3))
    mask = np.ones((1, S), np.int64)
    mask[0, 900:] = 0
    bias = mask_bias(mask)
    probs = jax.nn.softmax(jnp.einsum("BNSH,BNTH->BNST", q, k) / np.sqrt(12) + bias, axis=-1)
    want = jnp.einsum("BNST,BNTH->BNSH", probs, v)
    assert_close("chunked context", A._grouped_context(q, k, v, bias, config), want)


def test_window_implementation_picks_cudnn_only_on_gpu_in_half_precision():
    """The selection of the sliding layers' fast path, as `fused_implementation` for BERT's."""
    from bertjax.model.attention import window_implementation

    assert window_implementation(jnp.bfloat16, "gpu") == "cudnn"
    assert window_implementation(jnp.float16, "gpu") == "cudnn"
    assert window_implementation(jnp.float32, "gpu") == "banded"  # cuDNN's kernel needs 16 bits
    assert window_implementation(jnp.bfloat16, "cpu") == "banded"
    assert window_implementation(jnp.bfloat16, "tpu") == "banded"
    assert window_implementation(jnp.bfloat16) == ("cudnn" if jax.default_backend() == "gpu"
                                                   else "banded")


@pytest.mark.parametrize("S,w,pad", [(37, 4, 20), (8, 3, 0), (5, 8, 3), (40, 3, 35)],
                         ids=["padded-tail", "one-block", "window-beyond-sequence",
                              "rows-without-keys"])
def test_fused_window_equals_banded_on_cpu(S, w, pad):
    """The two one-sided windows merged by their log-sum-exps (the arithmetic cuDNN runs on GPU),
    here through JAX's XLA implementation, equal the banded path; so does one XLA call with the
    symmetric window, on the real queries."""
    q, k, v, attention_mask = _inputs(S, w, pad)
    want = banded.banded_context(q, k, v, attention_mask, w, 2.5)
    fused = jax.jit(banded.fused_window_context, static_argnums=(4, 5, 6))
    got = fused(q, k, v, attention_mask, w, 2.5, "xla")
    assert_close("fused window context", got, want, atol=1e-5)
    bsnh = lambda x: jnp.swapaxes(x, 1, 2)
    mask = np.ones((2, S), np.int64) if attention_mask is None else attention_mask
    keys = None if attention_mask is None else (jnp.asarray(mask) != 0)[:, None, None, :]
    one = bsnh(jax.jit(jax.nn.dot_product_attention, static_argnames=(
        "scale", "local_window_size", "implementation"))(
        bsnh(q), bsnh(k), bsnh(v), mask=keys, scale=1 / 2.5, local_window_size=(w, w),
        implementation="xla"))
    real = mask.astype(bool)[:, None, :, None]  # padded queries: transformers' rows differ
    assert_close("xla symmetric window", np.where(real, one, 0), np.where(real, want, 0),
                 atol=1e-5)


def _sliding_attention(config, seed=3):
    """One ModernBERT sliding layer's attention inputs: params, hidden [2, S, D], mask, positions."""
    from bertjax.model.positions import rotary_tables

    S = config.max_position_embeddings
    params = init_params(jax.random.key(seed), config, Heads(pooler=False))
    layer = params["encoder"]["layer"]["1"]["attention"]
    hidden = jax.random.normal(jax.random.key(seed + 1), (2, S, config.hidden_size))
    mask = np.ones((2, S), np.int64)
    mask[1, S // 3:] = 0
    rope = rotary_tables(jnp.arange(S), config.local_rope_theta, config.head_size)
    return layer, hidden, mask, {"rope": rope, "local": True}


def test_sliding_layers_take_the_fused_window_where_selected(monkeypatch):
    """With the selection forced to "cudnn" (as on a GPU in bfloat16) a sliding layer calls
    `fused_window_context`, here run through XLA, and gives the banded path's output; where cuDNN
    refuses (raises at trace time) it falls back to banded; a captured attn.probs never takes it."""
    from bertjax.model import attention as A

    config = _sliding_config(29)
    layer, hidden, mask, positions = _sliding_attention(config)

    def run(capture=()):  # traced afresh on each call, so the monkeypatched names are read
        return jax.jit(lambda p, h, m: A.attention(p, h, config, m, capture=capture,
                                                   positions=positions))(layer, hidden, mask)

    want, _ = run()  # banded on CPU
    calls = []

    def through_xla(*args):
        calls.append(args[-1])
        return banded.fused_window_context(*args[:-1], implementation="xla")

    monkeypatch.setattr(A, "window_implementation", lambda dtype, backend=None: "cudnn")
    monkeypatch.setattr(A, "fused_window_context", through_xla)
    got, _ = run()
    assert calls == ["cudnn"]
    assert_close("attn.out, fused window", got, want, atol=1e-5)

    def refuses(*args):
        calls.append("refused")
        raise ValueError("cuDNN doesn't support this shape")

    monkeypatch.setattr(A, "fused_window_context", refuses)
    got, _ = run()
    assert calls[-1] == "refused"
    assert_close("attn.out, cuDNN refused", got, want, atol=1e-6)
    calls.clear()
    _, acts = run(capture=("attn.probs",))
    assert calls == [] and acts["attn.probs"].shape[-1] == hidden.shape[1]


def test_global_layers_take_the_fused_path_off_cpu(monkeypatch):
    """Off CPU a global ModernBERT layer takes BERT's `jax.nn.dot_product_attention` path (forced
    here on CPU); it equals the grouped path CPU takes."""
    from bertjax.model import attention as A

    config = _sliding_config(29)
    layer, hidden, mask, positions = _sliding_attention(config)
    positions = {**positions, "local": False}
    run = lambda: jax.jit(lambda p, h, m: A.attention(p, h, config, m, positions=positions)[0])(
        layer, hidden, mask)
    want = run()
    calls = []
    fused = A._fused_context
    monkeypatch.setattr(A, "_fused_here", lambda: True)
    monkeypatch.setattr(A, "_fused_context", lambda *a: calls.append(1) or fused(*a))
    assert_close("attn.out, fused global layer", run(), want, atol=1e-5)
    assert calls == [1]
