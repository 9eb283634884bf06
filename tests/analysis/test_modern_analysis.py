"""Analysis on DeBERTa and ModernBERT: logit attribution through ModernBERT's pre-norm stream and
DeBERTa's post-norm layers (parts add up, Attribution.check passes), the c2c / c2p / p2c share
table, circuits' one-line refusals and the fused-qkv OV circuit, attention tables."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bertjax
from bertjax.analysis.attribution import logit_attribution
from bertjax.analysis.circuits import head_weights, ov_circuit, qk_circuit
from bertjax.analysis.tables import attention_table
from bertjax.analysis.terms import term_shares, term_table
from bertjax.model.params import Heads, init_params
from tests.model import modern_ref

S = 13


def _model(kind: str):
    base = {"deberta-v3": modern_ref.DEBERTA_V3, "deberta-v2xl": modern_ref.DEBERTA_V2XL,
            "modernbert": modern_ref.MODERNBERT}[kind]
    family = "modernbert" if kind == "modernbert" else "deberta-v2"
    config = bertjax.BertConfig.from_dict({"model_type": family, **base})
    params = init_params(jax.random.key(0), config, Heads(pooler=False, mlm=True))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (2, S))
    mask = np.ones((2, S), np.int64)
    mask[1, 9:] = 0
    return config, jax.tree_util.tree_unflatten(tree, leaves), ids, mask


@pytest.fixture(scope="module", params=["deberta-v3", "modernbert"])
def model(request):
    return request.param, *_model(request.param)


def test_logit_attribution_adds_up(model):
    kind, config, params, ids, mask = model
    att = logit_attribution(params, config, ids, position=4, token=7, batch=1,
                            attention_mask=mask)
    att.check(atol=1e-4)
    assert att.heads().shape == (config.num_layers, config.num_attention_heads)
    assert "embed.position" not in att.parts and "embed.word" in att.parts
    want = {"embed.ln_std", "final.ln_std"} if kind == "modernbert" else \
        {"embed.ln_std", "attn.ln_std", "layer.ln_std"}
    assert set(att.ln_std) == want


def test_attribution_refuses_deberta_conv_in_one_line():
    config, params, ids, mask = _model("deberta-v2xl")
    with pytest.raises(ValueError, match="does not follow DeBERTa's ConvLayer"):
        logit_attribution(params, config, ids, position=1, token=3)


def test_term_shares_split_each_head():
    config, params, ids, mask = _model("deberta-v3")
    shares = term_shares(params, config, ids, attention_mask=mask)
    assert shares.shape == (config.num_layers, config.num_attention_heads, 3)
    np.testing.assert_allclose(shares.sum(-1), 1.0, atol=1e-6)
    assert (shares > 0).all()
    table = term_table(params, config, ids, attention_mask=mask)
    assert list(table.columns) == ["layer", "head", "c2c", "c2p", "p2c"]
    mb_config, mb_params, mb_ids, _ = _model("modernbert")
    with pytest.raises(ValueError, match="needs DeBERTa's disentangled attention"):
        term_shares(mb_params, mb_config, mb_ids)


def test_qk_circuits_refuse_with_the_reason_and_ov_works(model):
    kind, config, params, ids, mask = model
    reason = "rotary embeddings rotate q and k" if kind == "modernbert" else "c2p and p2c"
    with pytest.raises(ValueError, match=reason):
        qk_circuit(params, config)
    ov = ov_circuit(params, config)
    w = head_weights(params, config)
    L, N, H, D = config.num_layers, config.num_attention_heads, config.head_size, \
        config.hidden_size
    assert w["v"].shape == (L, N, D, H)
    if kind == "modernbert":  # v is the last third of the fused qkv kernel
        fused = np.asarray(params["encoder"]["layer"]["2"]["attention"]["self"]["qkv"]["kernel"])
        np.testing.assert_array_equal(np.asarray(w["v"][2, 1]), fused[:, 2 * D + H:2 * D + 2 * H])
    assert ov.left.shape[:2] == (L, N)


def test_attention_table_drops_padding(model):
    kind, config, params, ids, mask = model
    probs = bertjax.forward(params, jnp.asarray(ids), config, attention_mask=mask,
                            capture=("attn.probs",)).acts["attn.probs"]
    tokens = [f"t{i}" for i in range(S)]
    table = attention_table(probs, tokens[:9], layer=1, batch=1, attention_mask=mask)
    assert table.shape == (9, 9)
    np.testing.assert_allclose(table.to_numpy().sum(1), 1.0, atol=1e-5)
