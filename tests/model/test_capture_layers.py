"""Capture by layer (`capture={name: layers}`) and buffer reuse (`forward(..., reuse=out)`)."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, assert_close, tiny_inputs

import bertjax
from bertjax.model import capture as C
from bertjax.model.forward import _forward

L, N = TINY["num_hidden_layers"], TINY["num_attention_heads"]


@pytest.fixture(scope="module")
def model():
    config = bertjax.BertConfig(**TINY)
    return config, bertjax.init_params(jax.random.key(0), config)


def test_selected_layers_in_the_given_order(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    full = bertjax.forward(params, ids, config, types, mask, capture="all").acts
    got = bertjax.forward(params, ids, config, types, mask, capture={
        "attn.probs": (3, 1), "layer.out": None, "mlp.post": (-1,), "embed.out": None,
        "attn.ln_std": [0, 2]}).acts
    assert set(got) == {"attn.probs", "layer.out", "mlp.post", "embed.out", "attn.ln_std"}
    assert_close("attn.probs", got["attn.probs"], full["attn.probs"][np.array([3, 1])], 1e-6)
    assert_close("layer.out", got["layer.out"], full["layer.out"], 1e-6)
    assert_close("mlp.post", got["mlp.post"], full["mlp.post"][3:], 1e-6)
    assert_close("attn.ln_std", got["attn.ln_std"], full["attn.ln_std"][np.array([0, 2])], 1e-6)
    assert_close("embed.out", got["embed.out"], full["embed.out"], 1e-6)


def test_globs_edits_and_the_encoder_part(model):
    config, params = model
    ids, types, mask = tiny_inputs(1)
    delta = np.zeros((L, 1, 1, TINY["hidden_size"]), np.float32)
    delta[0] = 0.5  # an edit at a layer that is not captured still flows downstream
    kwargs = dict(token_type_ids=types, attention_mask=mask, edit={"layer.out": (1.0, delta)})
    full = bertjax.forward(params, ids, config, capture="all", **kwargs).acts
    got = bertjax.forward(params, ids, config, capture={"attn.*": (2,), "all": (2,)},
                          **kwargs).acts
    assert set(got) == set(full)  # "all" with layers: the non-layer names whole
    for name in C.BERT_LAYER_NAMES:
        assert_close(name, got[name], full[name][2:3], 1e-6)
    assert_close("embed.sum", got["embed.sum"], full["embed.sum"], 1e-6)
    hidden = full["embed.out"]
    _, acts = bertjax.encoder(params, hidden, config, mask, capture={"attn.q": (1,)})
    _, want = bertjax.encoder(params, hidden, config, mask, capture="attn.q")
    assert_close("encoder part", acts["attn.q"], want["attn.q"][1:2], 1e-6)


@pytest.mark.parametrize("capture,match", [
    ({"attn.q": (4,)}, r"capture\['attn.q'\]: layer 4 out of range for a model of 4 layers "
                       r"\(-4..3\)"),
    ({"attn.q": (-5,)}, r"layer -5 out of range"),
    ({"attn.q": (1, -3)}, r"capture\['attn.q'\] repeats a layer: \(1, -3\)"),
    ({"attn.q": ()}, r"capture\['attn.q'\] selects no layer"),
    ({"attn.q": "1"}, r"capture\['attn.q'\] must be None or a tuple of layer indices"),
    ({"embed.out": (0,)}, r"capture\['embed.out'\]: embed.out has no layer axis"),
    ({"attn.*": (0,), "attn.q": (1,)}, r"capture selects attn.q twice with different layers"),
    ({"attn.nope": (0,)}, r"unknown activation name 'attn.nope'"),
])
def test_bad_selections(model, capture, match):
    config, params = model
    with pytest.raises(ValueError, match=match):
        bertjax.forward(params, tiny_inputs()[0], config, capture=capture)


def test_a_new_selection_compiles_once(model):
    config, params = model
    ids = tiny_inputs()[0]
    bertjax.forward(params, ids, config, capture={"attn.probs": (1, 2)})
    size = _forward._cache_size()
    bertjax.forward(params, ids, config, capture={"attn.probs": (1, 2)})
    bertjax.forward(params, ids, config, capture={"attn.probs": [1, -2]})  # the same selection
    assert _forward._cache_size() == size
    bertjax.forward(params, ids, config, capture={"attn.probs": (2, 1)})
    assert _forward._cache_size() == size + 1
    everything = bertjax.forward(params, ids, config, capture={"attn.probs": tuple(range(L))})
    assert _forward._cache_size() == size + 2
    assert C.layer_selection({"attn.probs": tuple(range(L))}, L) == ()  # all layers: no split
    assert everything.acts["attn.probs"].shape[0] == L


def _scan_outputs(jaxpr) -> list[tuple]:
    """The shapes of every scan's outputs in a jaxpr, nested jaxprs included."""
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            shapes += [tuple(v.aval.shape) for v in eqn.outvars]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes += _scan_outputs(sub)
    return shapes


def test_unselected_layers_are_never_written(model):
    """The layer scans write [k, B, N, S, T] probabilities only for the k selected layers, and
    the compiled program's outputs and temporaries hold no other layer's."""
    config = bertjax.BertConfig(**{**TINY, "max_position_embeddings": 64})
    params = bertjax.init_params(jax.random.key(0), config)
    ids = jnp.ones((2, 64), jnp.int32)
    probs = lambda k: (k, 2, N, 64, 64)

    def run(capture):
        f = lambda p, i: bertjax.forward(p, i, config, capture=capture)
        return jax.make_jaxpr(f)(params, ids).jaxpr, jax.jit(f).lower(params, ids).compile()

    jaxpr, one = run({"attn.probs": (2,)})
    written = [s for s in _scan_outputs(jaxpr) if s[-2:] == (64, 64)]
    assert written == [probs(1)], written
    all_jaxpr, _ = run("attn.probs")
    assert probs(L) in _scan_outputs(all_jaxpr)
    _, none = run(())
    layer_bytes = 4 * int(np.prod(probs(1)))
    mem, base = one.memory_analysis(), none.memory_analysis()
    assert 0 <= mem.output_size_in_bytes - base.output_size_in_bytes - layer_bytes <= 64  # + tuple
    # the one selected layer's float32 scores and probabilities (the explicit softmax), no more
    assert mem.temp_size_in_bytes <= base.temp_size_in_bytes + 2 * layer_bytes


def test_reuse_writes_into_the_previous_buffers(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    previous = bertjax.forward(params, ids, config, types, mask, capture="all")
    for seed in (3, 4):
        new_ids = tiny_inputs(seed)[0]
        want = bertjax.forward(params, new_ids, config, types, mask, capture="all")
        want = jax.tree_util.tree_map(lambda x: np.array(x, copy=True), want)
        out = bertjax.forward(params, new_ids, config, types, mask, capture="all", reuse=previous)
        assert previous.last_hidden_state.is_deleted()
        assert all(a.is_deleted() for a in previous.acts.values())
        with pytest.raises(RuntimeError, match="Array has been deleted"):
            previous.acts["attn.probs"] + 1
        for name in want.acts:
            assert_close(name, out.acts[name], want.acts[name], 1e-6)
        assert_close("last_hidden_state", out.last_hidden_state, want.last_hidden_state, 1e-6)
        previous = out


def test_reuse_must_match(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    previous = bertjax.forward(params, ids, config, capture="attn.q")
    with pytest.raises(ValueError, match="reuse must have this call's output shapes and capture"):
        bertjax.forward(params, ids, config, capture="attn.k", reuse=previous)
    assert not previous.acts["attn.q"].is_deleted()  # refused before anything was donated


def test_offload_places_captures_in_host_memory(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    want = bertjax.forward(params, ids, config, types, mask, capture={"attn.probs": (1,)})
    got = bertjax.forward(params, ids, config, types, mask, capture={"attn.probs": (1,)},
                          offload=True)
    assert got.acts["attn.probs"].sharding.memory_kind == "pinned_host"
    assert got.last_hidden_state.sharding.memory_kind == "device"
    assert_close("offloaded", got.acts["attn.probs"], want.acts["attn.probs"], 0.0)
    again = bertjax.forward(params, tiny_inputs(3)[0], config, types, mask,
                            capture={"attn.probs": (1,)}, offload=True, reuse=got)
    assert again.acts["attn.probs"].sharding.memory_kind == "pinned_host"
    assert got.acts["attn.probs"].is_deleted()
