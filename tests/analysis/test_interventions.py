"""Head masks (against transformers 4.x semantics on the PyTorch model), activation patching,
patching sweeps and attribution patching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import ATOL_TINY, TINY, assert_close, tiny_inputs
from transformers.models.bert import modeling_bert

import bertjax
from bertjax.analysis import interventions as I
from bertjax.model import capture as C
from bertjax.model.forward import _forward

L, N, D = TINY["num_hidden_layers"], TINY["num_attention_heads"], TINY["hidden_size"]
PATCHABLE = [n for n in C.ALL_NAMES if n not in C.HEAD_NAMES]


@pytest.fixture(scope="module")
def tiny(checkpoint_factory):
    folder = checkpoint_factory("BertModel")
    config, params = bertjax.load(folder)
    return folder, config, params


@pytest.fixture(scope="module")
def sharp(tiny):
    """The tiny model with its weights scaled from std 0.02 to 0.3: sharp attention, so that
    patching one head's q or k matters."""
    folder, config, params = tiny
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 15.0 if path[-1].key in ("kernel", "embedding") else x, params)
    return folder, config, scaled


@pytest.fixture(scope="module")
def runs(sharp):
    """A clean and a corrupted run (two tokens changed), same shapes and padding."""
    _, config, params = sharp
    ids, types, mask = tiny_inputs()
    corrupted = ids.copy()
    corrupted[:, 1] = (ids[:, 1] + 7) % TINY["vocab_size"]
    corrupted[0, 5] = 3
    clean = bertjax.forward(params, ids, config, types, mask, capture="all")
    bad = bertjax.forward(params, corrupted, config, types, mask, capture="all")
    inputs = dict(input_ids=corrupted, token_type_ids=types, attention_mask=mask)
    return clean, bad, inputs


def _torch_with_head_mask(folder, head_mask, ids, types, mask, monkeypatch):
    """transformers 5 has no head_mask: its eager attention is replaced by the 4.x formula,
    probs = dropout(softmax(scores)) * head_mask[layer], then probs @ v."""
    model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    layer_of = {id(layer.attention.self): i for i, layer in enumerate(model.encoder.layer)}
    hm = torch.tensor(np.asarray(head_mask))

    def masked_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         **kwargs):
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = torch.nn.functional.softmax(weights, dim=-1)
        weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
        weights = weights * hm[layer_of[id(module)]].view(1, -1, 1, 1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_bert, "eager_attention_forward", masked_attention)
    with torch.no_grad():
        out = model(*(torch.as_tensor(x, dtype=torch.long) for x in (ids, mask, types)))
    return out.last_hidden_state.numpy()


@pytest.mark.parametrize("kind", ["ablate", "random", "ones"])
def test_head_mask_matches_transformers_4x(tiny, kind, monkeypatch):
    folder, config, params = tiny
    ids, types, mask = tiny_inputs()
    head_mask = {"ablate": I.ablate_heads(config, [(0, 1), (1, 0), (1, 2)]),
                 "random": np.random.default_rng(0).uniform(0, 1.5, (L, N)).astype(np.float32),
                 "ones": np.ones((L, N), np.float32)}[kind]
    want = _torch_with_head_mask(folder, head_mask, ids, types, mask, monkeypatch)
    got = bertjax.forward(params, ids, config, types, mask, head_mask=jnp.asarray(head_mask))
    assert_close("last_hidden_state", got.last_hidden_state, want, ATOL_TINY)
    plain = bertjax.forward(params, ids, config, types, mask).last_hidden_state
    assert (kind == "ones") == bool(np.allclose(got.last_hidden_state, plain, atol=1e-6))


def test_head_mask_builders(tiny):
    _, config, _ = tiny
    np.testing.assert_array_equal(I.ablate_heads(config, [(1, 2)]),
                                  [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(I.keep_heads(config, [(0, 0), (1, 2)]),
                                  [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"head must be in \[0, 3\), got 3"):
        I.ablate_heads(config, [(0, 3)])
    with pytest.raises(ValueError, match=r"layer must be in \[0, 4\), got -1"):
        I.keep_heads(config, [(-1, 0)])


def test_gradient_flows_through_head_mask(tiny):
    _, config, params = tiny
    ids, types, mask = tiny_inputs()

    def loss(head_mask):
        out = bertjax.forward(params, ids, config, types, mask, head_mask=head_mask)
        return jnp.sum(out.last_hidden_state[:, 0] ** 2)

    grad = jax.jit(jax.grad(loss))(jnp.ones((L, N)))
    assert grad.shape == (L, N) and bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(grad != 0))


def test_patch_where_selects_the_given_indices(tiny):
    _, config, _ = tiny
    shape = (L, 2, N, 7, D)
    mask = np.asarray(I.patch_where(config, "attn.head_out", shape, layers=1, heads=[0, 2],
                                    positions=3))
    assert mask.shape == shape and mask.sum() == 2 * 2 * D  # 2 heads x 2 rows x D
    assert mask[1, :, 0, 3].all() and mask[1, :, 2, 3].all() and not mask[1, :, 1].any()
    assert not mask[0].any() and not mask[1, :, :, 2].any()
    keys = np.asarray(I.patch_where(config, "attn.k", (L, 2, N, 7, 5), positions=[6], batch=0))
    assert keys[:, 0, :, 6].all() and keys.sum() == L * N * 5  # keys: positions select T
    embed = np.asarray(I.patch_where(None, "embed.word", (2, 7, D), positions=0))
    assert embed[:, 0].all() and embed.sum() == 2 * D


@pytest.mark.parametrize("name,shape,kwargs,match", [
    ("mlm.logits", (2, 7, 101), {}, "cannot patch 'mlm.logits'; patchable names: embed.word"),
    ("attn.nope", (1,), {}, "cannot patch 'attn.nope'"),
    ("attn.out", (L, 2, 7), {}, r"attn.out has axes \[L, B, S, D\], got shape \(4, 2, 7\)"),
    ("attn.out", (3, 2, 7, D), {}, r"the config says L=4, got shape \(3, 2, 7, 15\)"),
    ("attn.out", (L, 2, 7, D), dict(heads=0), r"attn.out has no heads axis"),
    ("embed.out", (2, 7, D), dict(layers=0), r"embed.out has no layers axis"),
    ("attn.probs", (L, 2, N, 7, 7), dict(heads=[1, 3]), r"heads must be in \[0, 3\), got 3"),
    ("mlp.pre", (L, 2, 7, 37), dict(positions=7), r"positions must be in \[0, 7\), got 7"),
])
def test_patch_where_errors(tiny, name, shape, kwargs, match):
    _, config, _ = tiny
    with pytest.raises(ValueError, match=match):
        I.patch_where(config, name, shape, **kwargs)


def test_patching_own_values_changes_nothing(sharp, runs):
    _, config, params = sharp
    clean, _, _ = runs
    ids, types, mask = tiny_inputs()
    patch = {name: I.patch_from(clean.acts, name, layers=None if name in C.EMBED_NAMES else 1,
                                positions=[0, 3]) for name in PATCHABLE}
    out = bertjax.forward(params, ids, config, types, mask, patch=patch)
    # not bitwise: a patched attn.head_out sums the heads one by one instead of in one einsum
    assert_close("own values", out.last_hidden_state, clean.last_hidden_state, ATOL_TINY)


@pytest.mark.parametrize("name", ["embed.sum", "attn.norm", "layer.out"])
def test_patching_everything_from_clean_gives_the_clean_run(sharp, runs, name):
    _, config, params = sharp
    clean, bad, inputs = runs
    out = bertjax.forward(params, config=config, patch={name: I.patch_from(clean.acts, name)},
                          **inputs)
    # the same values through another program: its rounding differs by up to 2e-6 on these
    # sharp weights when compiled without XLA's optimisations (conftest), far below the 1e-3
    # by which the corrupted run differs
    assert_close(name, out.last_hidden_state, clean.last_hidden_state, ATOL_TINY)
    assert not np.allclose(bad.last_hidden_state, clean.last_hidden_state, atol=1e-3)


def test_patching_one_position_of_the_last_layer(sharp, runs):
    _, config, params = sharp
    clean, bad, inputs = runs
    patch = {"layer.out": I.patch_from(clean.acts, "layer.out", layers=L - 1, positions=2)}
    out = bertjax.forward(params, config=config, patch=patch, **inputs).last_hidden_state
    np.testing.assert_array_equal(out[:, 2], clean.last_hidden_state[:, 2])
    assert_close("other positions", np.delete(out, 2, 1), np.delete(bad.last_hidden_state, 2, 1),
                 1e-6)  # the same numbers from a differently fused program


def test_new_patch_values_and_masks_do_not_recompile(sharp, runs):
    _, config, params = sharp
    clean, _, inputs = runs
    calls = [I.patch_from(clean.acts, "attn.probs", layers=0, heads=1),
             I.patch_from(clean.acts, "attn.probs", layers=1, positions=[2, 4]),
             (clean.acts["attn.probs"] * 0.5, I.patch_where(config, "attn.probs",
                                                             clean.acts["attn.probs"].shape))]
    bertjax.forward(params, config=config, patch={"attn.probs": calls[0]}, **inputs)
    size = _forward._cache_size()
    outs = [bertjax.forward(params, config=config, patch={"attn.probs": c}, **inputs)
            for c in calls[1:]]
    assert _forward._cache_size() == size
    assert not np.allclose(outs[0].last_hidden_state, outs[1].last_hidden_state)


def test_new_head_masks_do_not_recompile(sharp, runs):
    _, config, params = sharp
    _, _, inputs = runs
    masks = [I.ablate_heads(config, [(0, 1)]), I.ablate_heads(config, [(1, 0), (1, 2)]),
             I.keep_heads(config, [(0, 0)])]
    bertjax.forward(params, config=config, head_mask=masks[0], **inputs)
    size = _forward._cache_size()
    outs = [bertjax.forward(params, config=config, head_mask=m, **inputs) for m in masks[1:]]
    assert _forward._cache_size() == size
    assert not np.allclose(outs[0].last_hidden_state, outs[1].last_hidden_state)


def _metric(out):
    """The first row's [CLS] output along a fixed direction."""
    return jnp.dot(out.last_hidden_state[0, 0], jnp.linspace(-1.0, 1.0, D))


@pytest.mark.parametrize("name,over", [("attn.head_out", "heads"), ("attn.q", "heads"),
                                       ("mlp.out", "layer_position")])
def test_sweep_equals_patching_one_group_at_a_time(sharp, runs, name, over):
    _, config, params = sharp
    clean, _, inputs = runs
    got = I.patch_sweep(params, config, inputs, clean.acts, name, _metric, over=over)
    K = N if over == "heads" else 7
    want = np.zeros((L, K))
    for layer in range(L):
        for k in range(K):
            select = dict(heads=k) if over == "heads" else dict(positions=k)
            patch = {name: I.patch_from(clean.acts, name, layers=layer, **select)}
            want[layer, k] = _metric(bertjax.forward(params, config=config, patch=patch, **inputs))
    assert_close(f"sweep {name}", got, want, 1e-5)
    assert np.ptp(want) > 1e-3  # the groups differ


def test_sweep_compiles_once(sharp, runs):
    _, config, params = sharp
    clean, _, inputs = runs
    traces = []

    def metric(out):
        traces.append(1)  # runs only while tracing
        return jnp.sum(out.last_hidden_state[:, 0])

    first = I.patch_sweep(params, config, inputs, clean.acts, "attn.context", metric)
    other = {"attn.context": clean.acts["attn.context"] * 2.0}
    second = I.patch_sweep(params, config, inputs, other, "attn.context", metric)
    assert len(traces) == 1 and not np.allclose(first, second)
    batched = I.patch_sweep(params, config, inputs, clean.acts, "attn.context", metric,
                            batch_size=3)
    assert_close("batched sweep", batched, first, 1e-5)


@pytest.mark.parametrize("name,over,step", [("attn.head_out", "heads", 0.05),
                                             ("attn.head_out", "heads", 1.0),
                                             ("mlp.out", "layer_position", 0.05)],
                         ids=["near", "full", "mlp-positions-near"])
def test_attribution_patching_tracks_the_sweep(sharp, runs, name, over, step):
    """A first-order estimate: close to the real effects for a small step from corrupted towards
    clean, still correlated with them for the whole way. Layer 0's estimates need the gradient
    with layer 1 live (a patch of every layer at once would cut that path)."""
    _, config, params = sharp
    clean, bad, inputs = runs
    target = {name: bad.acts[name] + step * (clean.acts[name] - bad.acts[name])}
    real = I.patch_sweep(params, config, inputs, target, name, _metric, over=over) - _metric(bad)
    estimate = I.attribution_patch(params, config, inputs, target, name, _metric, over=over)
    assert estimate.shape == real.shape == (L, N if over == "heads" else 7)
    corr = np.corrcoef(np.ravel(real), np.ravel(estimate))[0, 1]
    assert corr > (0.99 if step < 1 else 0.9), (corr, real, estimate)
    if step < 1:
        assert_close("attribution patching", estimate, real, 0.05 * float(np.abs(real).max()))


@pytest.mark.parametrize("name,over,kwargs,match", [
    ("attn.out", "heads", {}, r"cannot sweep attn.out over heads: it has axes \[L, B, S, D\]"),
    ("embed.out", "layer_position", {}, "cannot sweep embed.out over layer_position"),
    ("attn.probs", "layers", {}, "over must be one of heads, layer_position, got 'layers'"),
    ("attn.probs", "heads", dict(clean={}), "the clean activations have no 'attn.probs'"),
    ("attn.probs", "heads", dict(inputs={"ids": 0}),
     r"inputs must be a dict with input_ids and optionally token_type_ids"),
    ("attn.probs", "heads", dict(inputs={"input_ids": np.full((2, 7), 101)}),
     r"input_ids must be in \[0, 101\)"),
])
def test_sweep_errors(sharp, runs, name, over, kwargs, match):
    _, config, params = sharp
    clean, _, inputs = runs
    for sweep in (I.patch_sweep, I.attribution_patch):
        with pytest.raises(ValueError, match=match):
            sweep(params, config, kwargs.get("inputs", inputs), kwargs.get("clean", clean.acts),
                  name, _metric, over=over)
