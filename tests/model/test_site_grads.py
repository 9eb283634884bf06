"""bertjax.site_grads: against torch autograd (retain_grad on hidden states and attentions) on a
padded batch, and against finite differences for one element of every other name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY, B, S, assert_close, tiny_inputs

import bertjax
from bertjax.model import capture as C

D = TINY["hidden_size"]
W = np.random.default_rng(7).standard_normal((B, S, D)).astype(np.float32)
WP = np.random.default_rng(8).standard_normal((B, D)).astype(np.float32)


def _linear(out):
    return jnp.sum(out.last_hidden_state * W)


def _metric(out):
    return jnp.sum(out.last_hidden_state * W) + jnp.sum(out.pooler_output * WP)


def test_matches_torch_autograd_on_a_padded_batch(checkpoint_factory):
    folder = checkpoint_factory("BertModel")
    config, params = bertjax.load(folder)
    model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
    model.eval()
    ids, types, mask = tiny_inputs()  # row 1 padded from position 4
    out = model(torch.as_tensor(ids, dtype=torch.long), attention_mask=torch.as_tensor(mask),
                token_type_ids=torch.as_tensor(types, dtype=torch.long),
                output_hidden_states=True, output_attentions=True)
    for t in out.hidden_states + out.attentions:
        t.retain_grad()
    loss = (out.last_hidden_state * torch.as_tensor(W)).sum() + \
        (out.pooler_output * torch.as_tensor(WP)).sum()
    loss.backward()
    got = bertjax.site_grads(params, ids, config, _metric, ("embed.out", "layer.out", "attn.probs"),
                             token_type_ids=types, attention_mask=mask)
    assert set(got) == {"embed.out", "layer.out", "attn.probs"}
    assert_close("d/d embed.out", got["embed.out"], out.hidden_states[0].grad.numpy())
    assert_close("d/d layer.out", got["layer.out"],
                 np.stack([h.grad.numpy() for h in out.hidden_states[1:]]))
    assert_close("d/d attn.probs", got["attn.probs"],
                 np.stack([a.grad.numpy() for a in out.attentions]))
    assert float(jnp.abs(got["attn.probs"][0]).max()) > 1e-3


def _element(name: str, shape: tuple) -> tuple:
    """An index into the stacked shape: row 0 (no padding), middle of every other axis."""
    letters = C.SHAPES[name].split()
    return tuple(0 if letter == "B" else min(size - 1, 2 + i) for i, (letter, size)
                 in enumerate(zip(letters, shape)))


def _central(run, shape: tuple, index: tuple, eps: float) -> float:
    """(run(+eps at index) - run(-eps at index)) / (2 eps)."""
    one = np.zeros(shape, np.float32)
    one[index] = eps
    return (run(one) - run(-one)) / (2 * eps)


def test_every_other_name_matches_finite_differences():
    config = bertjax.BertConfig(**{**TINY, "initializer_range": 0.3})  # gradients well above noise
    params = bertjax.init_params(jax.random.key(3), config, bertjax.Heads(pooler=True, mlm=True))
    ids, types, mask = tiny_inputs(2)
    WL = np.random.default_rng(9).standard_normal((B, S, config.vocab_size)).astype(np.float32)

    def metric(out):
        return _metric(out) + 0.1 * jnp.sum(out.acts["mlm.logits"] * WL)

    others = [n for n in C.ALL_NAMES if n not in ("embed.out", "layer.out", "attn.probs")]
    kwargs = dict(token_type_ids=types, attention_mask=mask, capture="mlm.logits")
    grads = bertjax.site_grads(params, ids, config, metric, others, **kwargs)
    assert set(grads) == set(others)
    zeros = {name: np.zeros(grads[name].shape, np.float32) for name in others}
    # every name edited at once by (1, delta), all deltas zero but one: one program for them all
    # (value * 1 + 0 is the value itself)
    shifted = jax.jit(lambda deltas: metric(bertjax.forward(
        params, ids, config, edit={n: (1.0, d) for n, d in deltas.items()}, **kwargs)))
    big = 0
    for name in others:
        index = _element(name, grads[name].shape)
        central = lambda eps, name=name, index=index: _central(
            lambda d: float(shifted({**zeros, name: d})), grads[name].shape, index, eps)
        # Richardson: float32 rounding needs steps of ~1e-2 (the metric is ~20), and the step's
        # own error (1/std is curved) cancels to second order.
        fd = (4 * central(1.5e-2) - central(3e-2)) / 3
        g = float(grads[name][index])
        assert abs(g - fd) <= 1e-3 + 1e-2 * abs(fd), (name, index, g, fd)
        big += abs(g) > 1e-2
    assert big >= len(others) - 3  # most are well above the differences' noise


def test_user_edits_and_errors(checkpoint_factory):
    config, params = bertjax.load(checkpoint_factory("BertModel"))
    ids, types, mask = tiny_inputs()
    delta = np.full((D,), 0.3, np.float32)
    edited = bertjax.site_grads(params, ids, config, _linear, "layer.out", attention_mask=mask,
                                edit={"layer.out": (1.0, delta)})["layer.out"]
    plain = bertjax.site_grads(params, ids, config, _linear, "layer.out",
                               attention_mask=mask)["layer.out"]
    assert edited.shape == plain.shape == (TINY["num_hidden_layers"], B, S, D)
    assert_close("last layer: the metric is linear in it", edited[-1], plain[-1], 1e-6)
    assert np.abs(np.asarray(edited[0] - plain[0])).max() > 1e-4
    with pytest.raises(ValueError, match="unknown activation name 'attn.nope'"):
        bertjax.site_grads(params, ids, config, _metric, "attn.nope")
    with pytest.raises(ValueError, match=r"site_grads takes forward's keyword arguments"):
        bertjax.site_grads(params, ids, config, _metric, "layer.out", reuse=None)


def test_the_metric_may_read_a_layer_selection(checkpoint_factory):
    config, params = bertjax.load(checkpoint_factory("BertModel"))
    ids, _, mask = tiny_inputs()
    metric = lambda out: jnp.sum(out.acts["attn.probs"] ** 2)
    got = bertjax.site_grads(params, ids, config, metric, "layer.out", attention_mask=mask,
                             capture={"attn.probs": [1]})["layer.out"]
    want = bertjax.site_grads(params, ids, config,
                              lambda out: jnp.sum(out.acts["attn.probs"][1] ** 2), "layer.out",
                              attention_mask=mask, capture="attn.probs")["layer.out"]
    assert_close("layer.out grads", got, want, 1e-6)
    assert float(jnp.abs(got[0]).max()) > 0 and float(jnp.abs(got[1:]).max()) == 0
