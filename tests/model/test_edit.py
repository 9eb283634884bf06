"""forward(..., edit={name: (mul, add)}): parity with PyTorch BERT edited by forward hooks,
compounding, no recompiles, jit / vmap / grad, shape errors; the LayerNorm internals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY, B, S, assert_close, tiny_inputs

import bertjax
from bertjax.model.forward import _forward

L, N, D = TINY["num_hidden_layers"], TINY["num_attention_heads"], TINY["hidden_size"]


@pytest.fixture(scope="module")
def pair(checkpoint_factory):
    folder = checkpoint_factory("BertModel")
    config, params = bertjax.load(folder)
    model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
    model.eval()
    return config, params, model


def _torch_run(model, inputs, hooks) -> np.ndarray:
    """last_hidden_state of the torch model with `hooks` [(module, hook)] registered."""
    ids, types, mask = (torch.as_tensor(x, dtype=torch.long) for x in inputs)
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            return model(ids, token_type_ids=types, attention_mask=mask).last_hidden_state.numpy()
    finally:
        for h in handles:
            h.remove()


def _add_hook(delta):
    return lambda module, args, output: output + torch.as_tensor(np.asarray(delta))


def _deltas(layers) -> np.ndarray:
    """float32 [L, B, S, D], random at `layers`, zero elsewhere."""
    rng = np.random.default_rng(0)
    delta = np.zeros((L, B, S, D), np.float32)
    for layer in layers:
        delta[layer] = rng.standard_normal((B, S, D))
    return delta


@pytest.mark.parametrize("layers", [(1,), (0, 2)], ids=["one-layer", "two-layers"])
def test_additive_deltas_at_layer_outputs_match_torch_hooks(pair, layers):
    config, params, model = pair
    inputs = tiny_inputs()
    delta = _deltas(layers)
    want = _torch_run(model, inputs, [(model.encoder.layer[i], _add_hook(delta[i]))
                                      for i in layers])
    ids, types, mask = inputs
    out = bertjax.forward(params, ids, config, types, mask, capture="layer.out",
                          edit={"layer.out": (1.0, delta)})
    assert_close("edited last_hidden_state", out.last_hidden_state, want)
    plain = bertjax.forward(params, ids, config, types, mask).last_hidden_state
    assert np.abs(np.asarray(plain) - want).max() > 1e-2  # the edit changed something
    assert_close("captured = edited", out.acts["layer.out"][-1], out.last_hidden_state, 0.0)


def test_one_heads_probs_scaled_to_zero_matches_torch_hooks(pair):
    config, params, model = pair
    inputs = tiny_inputs(1)
    layer, head = 1, 2
    attention = model.encoder.layer[layer].attention.self
    values = {}

    def keep_v(module, args, output):  # [B, S, D] -> [B, N, S, H]
        values["v"] = output.reshape(B, S, N, D // N).transpose(1, 2)

    def scale_head(module, args, output):
        probs = output[1].clone()
        probs[:, head] = 0.0
        context = torch.matmul(probs, values["v"]).transpose(1, 2).reshape(B, S, D)
        return context, probs

    want = _torch_run(model, inputs, [(attention.value, keep_v), (attention, scale_head)])
    mul = np.ones((L, 1, N, 1, 1), np.float32)
    mul[layer, :, head] = 0.0
    ids, types, mask = inputs
    out = bertjax.forward(params, ids, config, types, mask, capture="attn.probs",
                          edit={"attn.probs": (mul, 0.0)})
    assert_close("last_hidden_state", out.last_hidden_state, want)
    assert float(jnp.abs(out.acts["attn.probs"][layer, :, head]).max()) == 0.0
    assert float(out.acts["attn.probs"][layer, :, head - 1].max()) > 0.0


def test_edits_compound_in_one_pass(pair):
    """Layer 3 sees layer 0's edit: two edits together differ from each alone."""
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    delta = _deltas((0, 3))
    run = lambda d: bertjax.forward(params, ids, config, types, mask,
                                    edit={"layer.out": (1.0, d)}).last_hidden_state
    only3 = _deltas((0, 3))
    only3[0] = 0.0
    both, last = run(delta), run(only3)
    assert np.abs(np.asarray(both - last)).max() > 1e-3
    zero_then = bertjax.forward(params, ids, config, types, mask, capture="layer.out",
                                edit={"layer.out": (1.0, delta)}).acts["layer.out"]
    assert_close("layer 3 = its input's edit carried + delta", both, zero_then[3], 0.0)


def test_scale_and_replace_and_captured_values(pair):
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    plain = bertjax.forward(params, ids, config, types, mask, capture="mlp.post").acts["mlp.post"]
    mul = np.ones((L, 1, 1, 1), np.float32)
    mul[3] = 2.0
    add = np.zeros((L, 1, 1, 1), np.float32)
    add[3] = 0.5
    got = bertjax.forward(params, ids, config, types, mask, capture="mlp.post",
                          edit={"mlp.post": (mul, add)}).acts["mlp.post"]
    assert_close("layers 0-2 untouched", got[:3], plain[:3], 0.0)
    assert_close("layer 3 scaled", got[3], plain[3] * 2.0 + 0.5, 1e-6)
    new = jnp.full((B, S, D), 0.25)
    replaced = bertjax.forward(params, ids, config, types, mask, capture="embed.out",
                               edit={"embed.out": (0.0, new)}).acts["embed.out"]
    assert_close("replace", replaced, new, 0.0)


@pytest.mark.parametrize("add", [
    np.float32(0.1), np.full((D,), 0.1, np.float32), np.full((L, 1, 1, D), 0.1, np.float32),
    np.full((1, B, S, D), 0.1, np.float32), np.full((S, 1), 0.1, np.float32)],
    ids=["scalar", "D", "L11D", "1BSD", "S1"])
def test_accepted_broadcasts(pair, add):
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    want = bertjax.forward(params, ids, config, types, mask,
                           edit={"attn.out": (1.0, np.full((L, B, S, D), 0.1, np.float32))})
    got = bertjax.forward(params, ids, config, types, mask, edit={"attn.out": (1.0, add)})
    assert_close("broadcast", got.last_hidden_state, want.last_hidden_state, 1e-6)


@pytest.mark.parametrize("edit,patch,match", [
    ({"layer.out": (1.0, np.zeros((L, B, S, D + 1)))}, None,
     r"edit\['layer.out'\] add has shape \(4, 2, 7, 16\), which does not broadcast to layer.out's "
     r"stacked shape \[L, B, S, D\]=\(4, 2, 7, 15\)"),
    ({"attn.probs": (np.ones((L + 1, 1, 1, 1, 1)), 0.0)}, None,
     r"edit\['attn.probs'\] mul has shape \(5, 1, 1, 1, 1\).*\[L, B, N, S, T\]=\(4, 2, 3, 7, 7\)"),
    ({"embed.out": (1.0, np.zeros((L, B, S, D)))}, None,
     r"edit\['embed.out'\] add has shape \(4, 2, 7, 15\).*\[B, S, D\]=\(2, 7, 15\)"),
    (None, {"mlp.pre": (np.zeros((B, S, 37)), np.ones((3, 1, 1, 1), bool))},
     r"patch\['mlp.pre'\] mask has shape \(3, 1, 1, 1\).*\[L, B, S, I\]=\(4, 2, 7, 37\)"),
    ({"attn.nope": (1.0, 0.0)}, None, "unknown activation name 'attn.nope' in edit"),
    ({"attn.out": 1.0}, None, r"edit\['attn.out'\] must be a \(mul, add\) pair"),
], ids=["layer.out", "probs-L", "embed-rank", "patch", "unknown", "not-a-pair"])
def test_shape_errors_name_the_site(pair, edit, patch, match):
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    with pytest.raises(ValueError, match=match):
        bertjax.forward(params, ids, config, types, mask, edit=edit, patch=patch)


def test_new_values_never_recompile(pair):
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    bertjax.forward(params, ids, config, types, mask, edit={"attn.out": (1.0, _deltas((1,)))})
    size = _forward._cache_size()
    for seed in range(3):
        delta = np.random.default_rng(seed).standard_normal((L, B, S, D)).astype(np.float32)
        bertjax.forward(params, ids, config, types, mask, edit={"attn.out": (seed + 2.0, delta)})
    assert _forward._cache_size() == size


def test_jit_vmap_and_grads_wrt_mul_and_add(pair):
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    w = jnp.asarray(np.random.default_rng(1).standard_normal((B, S, D)), jnp.float32)

    def metric(mul, add):
        out = bertjax.forward(params, ids, config, types, mask,
                              edit={"mlp.out": (mul, add)})
        return jnp.sum(out.last_hidden_state * w)

    mul, add = jnp.full((L, 1, 1, 1), 1.0), jnp.zeros((L, B, S, D))
    g_mul, g_add = jax.jit(jax.grad(metric, argnums=(0, 1)))(mul, add)
    eps = 1e-2
    for layer in range(L):  # central differences
        e = jnp.zeros_like(mul).at[layer].set(eps)
        fd = (metric(mul + e, add) - metric(mul - e, add)) / (2 * eps)
        assert abs(float(g_mul[layer, 0, 0, 0]) - float(fd)) < 2e-3 * max(1.0, abs(float(fd)))
    for index in [(0, 0, 1, 2), (2, 1, 3, 14), (3, 1, 6, 0)]:
        e = jnp.zeros_like(add).at[index].set(eps)
        fd = (metric(mul, add + e) - metric(mul, add - e)) / (2 * eps)
        assert abs(float(g_add[index]) - float(fd)) < 2e-3 * max(1.0, abs(float(fd)))
    scales = jnp.asarray([0.5, 1.0, 2.0])
    batched = jax.vmap(lambda m: metric(jnp.full((L, 1, 1, 1), m), add))(scales)
    for k in range(3):
        assert abs(float(batched[k]) - float(metric(jnp.full((L, 1, 1, 1), scales[k]), add))) < 1e-4


def test_ln_std_decomposes_the_layernorms(pair):
    config, params, _ = pair
    ids, types, mask = tiny_inputs()
    acts = bertjax.forward(params, ids, config, types, mask, capture="all").acts
    acts = {k: np.asarray(v) for k, v in acts.items()}
    params = jax.tree_util.tree_map(np.asarray, params)
    assert acts["embed.ln_std"].shape == (B, S) and acts["attn.ln_std"].shape == (L, B, S)
    for layer in range(L):
        p = params["encoder"]["layer"][str(layer)]
        for norm, resid, std, out in (
                (p["attention"]["output"]["LayerNorm"], "attn.resid", "attn.ln_std", "attn.norm"),
                (p["output"]["LayerNorm"], "mlp.resid", "layer.ln_std", "layer.out")):
            x = acts[resid][layer]
            centred = x - x.mean(-1, keepdims=True)
            rebuilt = centred / acts[std][layer][..., None] * norm["scale"] + norm["bias"]
            assert_close(f"{out}[{layer}] from {std}", rebuilt, acts[out][layer], 1e-5)
    # Doubling a std halves the normalised part: the edit reaches the LayerNorm.
    doubled = bertjax.forward(params, ids, config, types, mask, capture="embed.out",
                              edit={"embed.ln_std": (2.0, 0.0)}).acts["embed.out"]
    doubled = np.asarray(doubled)
    beta = params["embeddings"]["LayerNorm"]["bias"]
    assert_close("halved", doubled - beta, (acts["embed.out"] - beta) / 2, 1e-6)
