"""forward and the parts: jit, recompilation, what capture costs, vmap, dropout, composition."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, assert_close, tiny_inputs

import bertjax
from bertjax.model import capture as C
from bertjax.model.forward import _forward


@pytest.fixture(scope="module")
def model():
    config = bertjax.BertConfig(**TINY)
    return config, bertjax.init_params(jax.random.key(1), config, bertjax.Heads(mlm=True))


def test_capture_empty_gives_empty_dict(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    out = bertjax.forward(params, ids, config, types, mask)
    assert out.acts == {}
    assert out.last_hidden_state.shape == (2, 7, 15) and out.pooler_output.shape == (2, 15)


def test_exactly_the_names_asked_for(model):
    config, params = model
    ids, _, _ = tiny_inputs()
    out = bertjax.forward(params, ids, config, capture=("attn.probs", "embed.out"))
    assert set(out.acts) == {"attn.probs", "embed.out"}
    assert out.acts["attn.probs"].shape == (TINY["num_hidden_layers"], 2, 3, 7, 7)


def test_no_pooler_gives_none():
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(0), config, bertjax.Heads(pooler=False))
    out = bertjax.forward(params, tiny_inputs()[0], config, capture="all")
    assert out.pooler_output is None and "pooler.out" not in out.acts


def test_jit_equals_eager_parts(model):
    """The parts composed by hand, unjitted, give forward's (jitted) result."""
    config, params = model
    ids, types, mask = tiny_inputs()
    out = bertjax.forward(params, ids, config, types, mask, capture="all")
    with jax.disable_jit():
        hidden, acts = bertjax.embeddings(params, ids, config, types, capture="embed.*")
        for i in range(config.num_hidden_layers):
            layer = params["encoder"]["layer"][str(i)]
            hidden, layer_acts = bertjax.encoder_layer(layer, hidden, config, mask, "all")
            for name, value in layer_acts.items():
                assert_close(f"{name}[{i}]", value, out.acts[name][i], 1e-6)
        pooled, _ = bertjax.pooler(params, hidden, config)
        logits, _ = bertjax.mlm_logits(params, hidden, config)
    for name, value in acts.items():
        assert_close(name, value, out.acts[name], 1e-6)
    assert_close("pooler", pooled, out.pooler_output, 1e-6)
    assert_close("mlm.logits", logits, out.acts["mlm.logits"], 1e-6)


def _parts(params):
    """Each part: (function, its subtree, its input, other arguments, capture, the names that
    capture resolves to for that part)."""
    ids, types, mask = tiny_inputs()
    hidden = jax.random.normal(jax.random.key(2), (2, 7, 15))
    layer = params["encoder"]["layer"]["1"]
    attention = ("attn.q", "attn.probs", "attn.head_out", "attn.out")
    return {
        "embeddings": (bertjax.embeddings, params["embeddings"], ids, dict(token_type_ids=types),
                       "embed.*", C.EMBED_NAMES),
        "attention": (bertjax.attention, layer["attention"], hidden, dict(attention_mask=mask),
                      attention, attention),
        "encoder_layer": (bertjax.encoder_layer, layer, hidden, dict(attention_mask=mask), "all",
                          C.BERT_LAYER_NAMES),
        "encoder": (bertjax.encoder, params["encoder"], hidden, dict(attention_mask=mask),
                    ("attn.scores", "layer.out"), ("attn.scores", "layer.out")),
        "pooler": (bertjax.pooler, params["pooler"], hidden, {}, ("pooler.out",),
                   (C.POOLER_OUT,)),
        "mlm_logits": (bertjax.mlm_logits, params, hidden, {}, "all", (C.MLM_LOGITS,)),
    }


@pytest.mark.parametrize("part", ["embeddings", "attention", "encoder_layer", "encoder", "pooler",
                                  "mlm_logits"])
def test_each_part_under_jit_vmap_and_grad(model, part):
    """Each part alone returns exactly its captured names, and gives the same numbers under
    jax.jit, under jax.vmap over an outer axis, and has finite, non-zero gradients."""
    config, params = model
    fn, sub, x, kwargs, capture, names = _parts(params)[part]
    out, acts = fn(sub, x, config, capture=capture, **kwargs)
    assert set(acts) == set(names)
    jitted = jax.jit(lambda p, x: fn(p, x, config, capture=capture, **kwargs))
    got, got_acts = jitted(sub, x)
    assert_close(f"{part} jit", got, out, 1e-6)
    for name in acts:
        assert_close(f"{name} jit", got_acts[name], acts[name], 1e-6)
    twice = jnp.stack([x, x[::-1]])  # an outer axis over two inputs: [2, B, S(, D)]
    vm_out, _ = jax.vmap(lambda x: fn(sub, x, config, **kwargs))(twice)
    for i in range(2):
        assert_close(f"{part} vmap[{i}]", vm_out[i], fn(sub, twice[i], config, **kwargs)[0], 1e-6)
    grads = jax.grad(lambda p: jnp.sum(fn(p, x, config, **kwargs)[0] ** 2))(sub)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_attention_part_alone(model):
    config, params = model
    hidden = jax.random.normal(jax.random.key(2), (2, 7, 15))
    mask = tiny_inputs()[2]
    att = params["encoder"]["layer"]["1"]["attention"]
    out, acts = jax.jit(bertjax.attention, static_argnames=("config", "capture"))(
        att, hidden, config=config, attention_mask=mask, capture=("attn.head_out",))
    bias = att["output"]["dense"]["bias"]
    assert_close("sum of head_out", acts["attn.head_out"].sum(axis=1) + bias[None, None], out, 1e-6)


def test_same_shapes_and_capture_do_not_recompile(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    bertjax.forward(params, ids, config, types, mask, capture="attn.q")
    before = _forward._cache_size()
    for seed in range(3):
        new_ids, new_types, _ = tiny_inputs(seed + 10)
        bertjax.forward(params, new_ids, config, new_types, mask, capture=("attn.q",))
    assert _forward._cache_size() == before
    bertjax.forward(params, ids, config, types, mask, capture="attn.k")
    assert _forward._cache_size() == before + 1


def test_uncaptured_activations_cost_nothing():
    """With capture=() the compiled program has no [.., S, S] output and needs no more memory than
    a forward whose activations are all discarded; capturing the probabilities adds them."""
    config = bertjax.BertConfig(**{**TINY, "max_position_embeddings": 64})
    params = bertjax.init_params(jax.random.key(0), config)
    ids = jnp.ones((2, 64), jnp.int32)

    def compiled(capture, keep_acts):
        def f(p, i):
            out = bertjax.forward(p, i, config, capture=capture)
            return (out.last_hidden_state, out.acts) if keep_acts else out.last_hidden_state
        return jax.jit(f).lower(params, ids).compile()

    plain = compiled((), False).memory_analysis()
    nothing = compiled((), True)
    all_discarded = compiled("all", False).memory_analysis()
    probs = compiled(("attn.probs",), True).memory_analysis()
    shapes = [x.shape for x in jax.tree_util.tree_leaves(jax.eval_shape(
        lambda p, i: bertjax.forward(p, i, config), params, ids))]
    assert not any(s[-2:] == (64, 64) for s in shapes)
    mem = nothing.memory_analysis()
    assert mem.temp_size_in_bytes <= plain.temp_size_in_bytes
    assert all_discarded.temp_size_in_bytes <= plain.temp_size_in_bytes
    probs_bytes = 2 * 2 * 3 * 64 * 64 * 4  # L B N S T float32
    assert probs.output_size_in_bytes >= mem.output_size_in_bytes + probs_bytes


def test_vmap_over_an_outer_axis(model):
    config, params = model
    ids = np.stack([tiny_inputs(s)[0] for s in range(3)])  # [K, B, S]
    f = jax.vmap(lambda i: bertjax.forward(params, i, config, capture="attn.probs").acts["attn.probs"])
    got = f(ids)
    for k in range(3):
        want = bertjax.forward(params, ids[k], config, capture="attn.probs").acts["attn.probs"]
        assert_close(f"vmap[{k}]", got[k], want, 1e-6)


def test_stacked_params_give_the_same_result(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    stacked = bertjax.stack_layers(params)
    assert stacked["encoder"]["layer"]["attention"]["self"]["query"]["kernel"].shape == (4, 15, 15)
    a = bertjax.forward(params, ids, config, types, mask, capture="layer.out")
    b = bertjax.forward(stacked, ids, config, types, mask, capture="layer.out")
    assert_close("layer.out", b.acts["layer.out"], a.acts["layer.out"], 0.0)


def test_dropout_only_with_rng(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    det = bertjax.forward(params, ids, config, types, mask).last_hidden_state
    again = bertjax.forward(params, ids, config, types, mask).last_hidden_state
    assert_close("deterministic", again, det, 0.0)
    r1 = bertjax.forward(params, ids, config, types, mask, rng=jax.random.key(0)).last_hidden_state
    r1b = bertjax.forward(params, ids, config, types, mask, rng=jax.random.key(0)).last_hidden_state
    r2 = bertjax.forward(params, ids, config, types, mask, rng=jax.random.key(1)).last_hidden_state
    assert_close("same rng", r1b, r1, 0.0)
    assert not np.allclose(r1, det) and not np.allclose(r1, r2)
    no_drop = bertjax.BertConfig(**{**TINY, "hidden_dropout_prob": 0.0,
                                    "attention_probs_dropout_prob": 0.0})
    zero = bertjax.forward(params, ids, no_drop, types, mask, rng=jax.random.key(0))
    assert_close("rate 0", zero.last_hidden_state, det, 0.0)


def test_dropout_probs_keep_rows_in_expectation(model):
    config = bertjax.BertConfig(**{**TINY, "attention_probs_dropout_prob": 0.5})
    from bertjax.model.nn import dropout

    x = jnp.ones((200_000,))
    y = dropout(jax.random.key(3), x, 0.5)
    assert abs(float(y.mean()) - 1.0) < 0.01 and float((y == 0).mean()) == pytest.approx(0.5, abs=0.01)
    assert config.attention_probs_dropout_prob == 0.5


def test_grad_flows_through_forward(model):
    config, params = model
    ids, types, mask = tiny_inputs()

    def loss(p):
        out = bertjax.forward(p, ids, config, types, mask, capture="mlm.logits")
        return jnp.mean(out.acts["mlm.logits"] ** 2) + jnp.mean(out.pooler_output)

    grads = jax.grad(loss)(params)
    flat = jax.tree_util.tree_leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in flat)
    assert float(jnp.abs(grads["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]).sum()) > 0


def test_sharded_inputs_over_four_devices(tmp_path):
    """Inputs sharded over 4 (forced host) devices give the single-device result."""
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))!r})
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        import bertjax
        from conftest import TINY
        assert jax.device_count() == 4, jax.devices()
        config = bertjax.BertConfig(**TINY)
        params = bertjax.init_params(jax.random.key(0), config)
        ids = np.random.default_rng(0).integers(1, 101, (8, 7)).astype(np.int32)
        mask = np.ones((8, 7), np.int32); mask[3, 5:] = 0
        want = bertjax.forward(params, ids, config, attention_mask=mask, capture="attn.probs")
        mesh = Mesh(np.array(jax.devices()), ("batch",))
        shard = NamedSharding(mesh, P("batch"))
        out = bertjax.forward(params, jax.device_put(ids, shard), config,
                              attention_mask=jax.device_put(mask, shard), capture="attn.probs")
        assert len(out.last_hidden_state.sharding.device_set) == 4
        np.testing.assert_allclose(out.last_hidden_state, want.last_hidden_state, atol=1e-6)
        np.testing.assert_allclose(out.acts["attn.probs"], want.acts["attn.probs"], atol=1e-6)
        print("OK")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-2000:]
