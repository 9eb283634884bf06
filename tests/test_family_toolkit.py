"""The toolkit on every family (issue 23, item 4): one test per wing, parametrized over the tiny
offline models of conversion/make_tiny_checkpoint.py (`family_checkpoint`), sharing one loaded model
and one `capture="all"` run per family. Where a method cannot be exact for a family it refuses with
one line naming the family (MPNet's QK circuits, the full OV circuit of an E-wide decoder)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_script

import bertjax
from bertjax.analysis import attribution, circuits, interventions, pruning, tables, views
from bertjax.scale import sharding

FAMILIES = tiny_script().FAMILIES
TEXTS = ["the cat sat on the mat.", "a dog ran"]


@pytest.fixture(scope="module")
def models(family_checkpoint):
    """family -> dict(config, params, tokenizer, ids, mask, out: a capture="all" run)."""
    cache = {}

    def get(family):
        if family not in cache:
            folder = family_checkpoint(family, "mlm")
            config, params = bertjax.load(folder)
            tokenizer = bertjax.tokenizer_for(folder)
            batch = tokenizer(TEXTS, padding=True, return_tensors="np")
            ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
            out = bertjax.forward(params, ids, config, attention_mask=mask, capture="all")
            cache[family] = dict(config=config, params=params, tokenizer=tokenizer, ids=ids,
                                 mask=mask, out=out)
        return cache[family]

    return get


def _run(m, **kwargs):
    return bertjax.forward(m["params"], m["ids"], m["config"], attention_mask=m["mask"], **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_by_layer_and_reuse(family, models):
    m = models(family)
    L = m["config"].num_layers
    picked = _run(m, capture={"layer.out": [0, L - 1]}).acts["layer.out"]
    np.testing.assert_allclose(picked, m["out"].acts["layer.out"][np.array([0, L - 1])],
                               atol=1e-5)  # another program: float rounding only
    first = _run(m, capture=("attn.probs",))
    want = np.asarray(first.acts["attn.probs"])
    again = _run(m, capture=("attn.probs",), reuse=first)  # first's buffers donated
    np.testing.assert_array_equal(again.acts["attn.probs"], want)


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_patch_and_head_mask(family, models):
    m = models(family)
    config, base = m["config"], np.asarray(m["out"].last_hidden_state)
    same = _run(m, edit={"attn.out": (1.0, 0.0)}, patch={"layer.out": interventions.patch_from(
        m["out"].acts, "layer.out", layers=[0])}, head_mask=jnp.ones((config.num_layers,
                                                                      config.num_attention_heads)))
    np.testing.assert_allclose(same.last_hidden_state, base, atol=1e-5)
    for kwargs in ({"edit": {"attn.out": (0.0, 0.0)}},
                   {"head_mask": interventions.ablate_heads(config, [(0, 1)])}):
        assert np.abs(np.asarray(_run(m, **kwargs).last_hidden_state) - base).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_site_grads(family, models):
    m = models(family)
    grads = bertjax.site_grads(m["params"], m["ids"], m["config"],
                               lambda o: o.last_hidden_state[:, 0].sum(), ("layer.out",),
                               attention_mask=m["mask"])
    g = np.asarray(grads["layer.out"])
    assert g.shape == m["out"].acts["layer.out"].shape and np.isfinite(g).all()
    assert np.abs(g[-1]).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_table_and_view(family, models):
    m = models(family)
    probs, tokens = m["out"].acts["attn.probs"], tables.tokens_for(m["tokenizer"], m["ids"][0])
    table = tables.attention_table(probs, tokens, layer=-1, attention_mask=m["mask"][0])
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-5)
    assert table.index[0] == m["tokenizer"].cls_token
    html = views.head_view_html(probs, tokens, attention_mask=m["mask"][0])
    assert json.dumps(tokens, separators=(",", ":")).replace("</", "<\\/") in html  # embedded


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_attribution_adds_up(family, models):
    m = models(family)
    position = int(np.flatnonzero(m["mask"][1])[-1]) - 1
    split = attribution.logit_attribution(m["params"], m["config"], m["ids"], position, token=7,
                                          batch=1, attention_mask=m["mask"])
    split.check()
    assert ("embed.token_type" in split.parts) == m["config"].has_token_types
    assert split.heads().shape == (m["config"].num_layers, m["config"].num_attention_heads)


@pytest.mark.parametrize("family", FAMILIES)
def test_circuits(family, models):
    m = models(family)
    config, params = m["config"], m["params"]
    L, N, D, H = config.num_layers, config.num_attention_heads, config.hidden_size, config.head_size
    ov = circuits.ov_circuit(params, config)
    assert ov.left.shape == (L, N, D, H)
    if family == "mpnet":
        with pytest.raises(ValueError, match="QK circuits of this mpnet model would leave out the "
                                             "relative position bias"):
            circuits.qk_circuit(params, config)
    else:
        scores = circuits.composition_scores(params, config)
        assert scores["q"].shape == (L, N, L, N) and np.isfinite(scores["v"]).all()
    if config.embed_size != config.hidden_size:
        with pytest.raises(ValueError, match=f"this {family} model's decoder reads E=19-wide"):
            circuits.full_ov_circuit(params, config, 0, 0)
    else:
        full = circuits.full_ov_circuit(params, config, 0, 0)
        assert full.dense().shape == (config.vocab_size, config.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_head_importance(family, models):
    m = models(family)
    scores = pruning.head_importance(m["params"], m["config"],
                                     [{"input_ids": m["ids"], "attention_mask": m["mask"]}],
                                     lambda out, batch: out.last_hidden_state[:, 0].sum())
    assert scores.shape == (m["config"].num_layers, m["config"].num_attention_heads)
    assert np.isfinite(scores).all() and (scores > 0).any()


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_forward_and_bf16(family, models):
    m = models(family)
    config, params = m["config"], m["params"]
    mesh = sharding.make_mesh()
    run = sharding.sharded_forward(mesh, params, config, capture=("layer.out",))
    out = run(sharding.shard_params(mesh, params, config), m["ids"], m["mask"], None)
    np.testing.assert_allclose(out.acts["layer.out"], m["out"].acts["layer.out"], atol=1e-5)
    half = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    low = _run({**m, "params": half}, capture=("mlm.logits",)).acts["mlm.logits"]
    assert low.dtype == jnp.bfloat16
    real = m["mask"].astype(bool)
    agree = (np.argmax(np.asarray(low, np.float32), -1) ==
             np.argmax(np.asarray(m["out"].acts["mlm.logits"]), -1))[real].mean()
    assert agree >= 0.8
