"""bf16 and fp16 parameters: finite outputs, float32 softmax statistics, MLM top-1 agreement."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_inputs

import bertjax


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
def test_low_precision_runs_and_agrees(checkpoint_factory, dtype):
    folder = checkpoint_factory("BertForMaskedLM", seed=1)
    config, p32 = bertjax.load(folder)
    _, plow = bertjax.load(folder, dtype=dtype)
    assert plow["embeddings"]["word_embeddings"]["embedding"].dtype == dtype
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size, (16, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, 9:] = 0
    ref = bertjax.forward(p32, ids, config, attention_mask=mask, capture=("mlm.logits", "attn.probs"))
    low = bertjax.forward(plow, ids, config, attention_mask=mask, capture=("mlm.logits", "attn.probs"))
    assert low.last_hidden_state.dtype == dtype
    for name, value in low.acts.items():
        assert np.isfinite(np.asarray(value, np.float32)).all(), name
    real = mask.astype(bool)
    agree = (np.argmax(ref.acts["mlm.logits"], -1) == np.argmax(low.acts["mlm.logits"], -1))[real]
    assert agree.mean() >= 0.95, f"top-1 agreement {agree.mean():.3f}"
    err = np.abs(np.asarray(low.last_hidden_state, np.float32) - np.asarray(ref.last_hidden_state))
    assert err.max() < (0.1 if dtype == jnp.bfloat16 else 0.02), err.max()


def test_fully_padded_row_in_fp16_has_no_nan(checkpoint_factory):
    config, params = bertjax.load(checkpoint_factory("BertModel"), dtype=jnp.float16)
    ids, types, mask = tiny_inputs()
    mask[1] = 0
    out = bertjax.forward(params, ids, config, types, mask, capture="attn.probs")
    probs = np.asarray(out.acts["attn.probs"], np.float32)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[:, 1], 1 / 7, atol=1e-3)
