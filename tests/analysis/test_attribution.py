"""MLM logit attribution: the parts add up to the real logit, and each label is the right part."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax
from bertjax.analysis.attribution import NEEDED, logit_attribution, logit_parts

L, N = TINY["num_hidden_layers"], TINY["num_attention_heads"]


def _noisy_mlm(untied: bool, seed: int = 0, **overrides):
    """A tiny MLM model whose every leaf (biases, LayerNorm betas and gammas too) is non-trivial."""
    config = bertjax.BertConfig(**{**TINY, **overrides})
    shapes = bertjax.param_shapes(config, bertjax.Heads(mlm=True, untied_decoder=untied))
    rng = np.random.default_rng(seed)

    def leaf(path, s):  # LayerNorm gammas around 1, everything else around 0
        mean = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(mean + 0.3 * rng.standard_normal(s.shape), s.dtype)

    return config, jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module", params=[False, True], ids=["tied", "untied"])
def model(request):
    return _noisy_mlm(request.param)


@pytest.mark.parametrize("batch,position,token", [(0, 3, 17), (1, 2, 5), (1, 0, 100), (0, 6, 0)])
def test_parts_add_up_to_the_logit(model, batch, position, token):
    config, params = model
    ids, types, mask = tiny_inputs()  # row 1 is padded from position 4
    got = logit_attribution(params, config, ids, position, token, batch=batch,
                            token_type_ids=types, attention_mask=mask)
    want = bertjax.forward(params, ids, config, types, mask, capture="mlm.logits").acts
    assert got.logit == pytest.approx(float(want["mlm.logits"][batch, position, token]), abs=1e-6)
    assert abs(got.total() - got.logit) < 1e-4, (got.total(), got.logit)
    assert len(got.parts) == 3 + L * (N + 2) + 1
    assert list(got.parts)[:4] == ["embed.word", "embed.position", "embed.token_type", "L0.H0"]
    assert list(got.parts)[-1] == "bias"


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_parts_add_up_for_other_activations(act):
    config, params = _noisy_mlm(False, seed=3, hidden_act=act, layer_norm_eps=1e-3)
    ids, types, mask = tiny_inputs(2)
    got = logit_attribution(params, config, ids, 1, 42, batch=1, token_type_ids=types,
                            attention_mask=mask)
    assert abs(got.total() - got.logit) < 1e-4


def test_each_label_is_its_own_part():
    """Silencing one writer (a head's output slice, an MLP, a bias, a table) zeroes its part only."""
    config, params = _noisy_mlm(True)
    params = jax.tree_util.tree_map(lambda x: x, params)  # a copy to edit
    layer0, layer1 = params["encoder"]["layer"]["0"], params["encoder"]["layer"]["1"]
    H = config.head_size
    out = layer1["attention"]["output"]["dense"]
    out["kernel"] = out["kernel"].at[2 * H:3 * H].set(0.0)  # head 2 of layer 1 writes nothing
    out["bias"] = jnp.zeros_like(out["bias"])
    layer0["output"]["dense"] = jax.tree_util.tree_map(jnp.zeros_like, layer0["output"]["dense"])
    params["embeddings"]["position_embeddings"]["embedding"] *= 0.0
    ids, types, mask = tiny_inputs()
    got = logit_attribution(params, config, ids, 3, 11, token_type_ids=types, attention_mask=mask)
    silenced = ["L1.H2", "L1.attn_bias", "L0.mlp", "embed.position"]
    for label in silenced:
        assert got.parts[label] == 0.0, label
    assert all(abs(v) > 1e-6 for k, v in got.parts.items() if k not in silenced)
    assert abs(got.total() - got.logit) < 1e-4


def test_parts_are_jitted_and_vmap_over_positions(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    acts = bertjax.forward(params, ids, config, types, mask, capture=NEEDED).acts
    positions = jnp.arange(ids.shape[1])
    parts = jax.vmap(lambda p: logit_parts(params, acts, config, 0, p, 7))(positions)
    assert parts["heads"].shape == (ids.shape[1], L, N)
    one = logit_attribution(params, config, ids, 5, 7, token_type_ids=types, attention_mask=mask)
    np.testing.assert_allclose(parts["heads"][5], one.heads(), atol=1e-6)
    total = sum(jnp.sum(parts[k], axis=tuple(range(1, parts[k].ndim)))
                for k in parts if k != "logit" and not k.endswith(".ln_std"))
    np.testing.assert_allclose(total, acts["mlm.logits"][0, :, 7], atol=1e-4)


def test_table_labels(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    table = logit_attribution(params, config, ids, 2, 9, token_type_ids=types,
                              attention_mask=mask).table()
    assert list(table.columns) == ["part", "kind", "layer", "head", "contribution"]
    heads = table[table.kind == "head"]
    assert len(heads) == L * N and heads["layer"].max() == L - 1 and heads["head"].max() == N - 1
    assert set(table.kind) == {"embed.word", "embed.position", "embed.token_type", "head",
                               "attn_bias", "mlp", "bias"}
    assert table.loc[table.part == "L1.H2", "head"].item() == 2


@pytest.mark.parametrize("kwargs,match", [
    (dict(position=7), r"position must be in \[0, 7\)"),
    (dict(token=101), r"token must be in \[0, 101\) \(vocab_size=101\)"),
    (dict(batch=2), r"batch must be in \[0, 2\)"),
])
def test_index_errors(model, kwargs, match):
    config, params = model
    ids, _, _ = tiny_inputs()
    args = {"position": 1, "token": 1, "batch": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        logit_attribution(params, config, ids, args["position"], args["token"],
                          batch=args["batch"])


def test_rank_and_head_errors(model):
    config, params = model
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, S\], got shape \(7,\)"):
        logit_attribution(params, config, np.arange(7), 1, 1)
    bare = {k: v for k, v in params.items() if k != "cls"}
    with pytest.raises(ValueError, match="this model has no MLM head"):
        logit_attribution(bare, config, tiny_inputs()[0], 1, 1)


def test_frozen_scales_are_the_runs_own_and_checkable():
    config, params = _noisy_mlm(False, seed=1)
    ids, types, mask = tiny_inputs()
    got = logit_attribution(params, config, ids, 2, 9, batch=1, token_type_ids=types,
                            attention_mask=mask)
    run = bertjax.forward(params, ids, config, types, mask, capture="*.ln_std").acts
    np.testing.assert_array_equal(got.ln_std["attn.ln_std"], run["attn.ln_std"][:, 1, 2])
    np.testing.assert_array_equal(got.ln_std["layer.ln_std"], run["layer.ln_std"][:, 1, 2])
    assert got.ln_std["embed.ln_std"] == float(run["embed.ln_std"][1, 2])
    assert abs(got.check()) < 1e-4
    # Feeding the run's own scales back as constants leaves the logits unchanged.
    frozen = bertjax.forward(params, ids, config, types, mask, capture="mlm.logits",
                             edit={n: (0.0, v) for n, v in run.items()}).acts["mlm.logits"]
    own = bertjax.forward(params, ids, config, types, mask, capture="mlm.logits").acts
    np.testing.assert_allclose(frozen, own["mlm.logits"], atol=1e-5)
    broken = dataclasses.replace(got, parts={**got.parts, "bias": got.parts["bias"] + 0.5})
    with pytest.raises(ValueError, match="the parts add up to .* not the logit"):
        broken.check()


def test_scales_frozen_at_another_run_split_that_models_logit():
    config, params = _noisy_mlm(True, seed=2)
    ids, types, mask = tiny_inputs()
    other = tiny_inputs(5)[0]
    clean = bertjax.forward(params, other, config, types, mask, capture="*.ln_std").acts
    got = logit_attribution(params, config, ids, 3, 21, token_type_ids=types,
                            attention_mask=mask, ln_std=clean)
    own = logit_attribution(params, config, ids, 3, 21, token_type_ids=types, attention_mask=mask)
    edited = bertjax.forward(params, ids, config, types, mask, capture="mlm.logits",
                             edit={n: (0.0, v) for n, v in clean.items()}).acts["mlm.logits"]
    assert got.logit == pytest.approx(float(edited[0, 3, 21]), abs=1e-6)
    assert abs(got.logit - own.logit) > 1e-3
    assert abs(got.check()) < 1e-4
    np.testing.assert_array_equal(got.ln_std["attn.ln_std"], clean["attn.ln_std"][:, 0, 3])
    with pytest.raises(ValueError, match="ln_std keys must be among"):
        logit_attribution(params, config, ids, 3, 21, ln_std={"attn.norm": clean["attn.ln_std"]})
    with pytest.raises(ValueError, match=r"edit\['attn.ln_std'\] add has shape \(4, 2\)"):
        logit_attribution(params, config, ids, 3, 21, ln_std={"attn.ln_std": np.ones((4, 2))})
