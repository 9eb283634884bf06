"""embed.out's width per family: the embedding LayerNorm's output is E wide (ELECTRA, ALBERT: the
projection follows it), but D wide in DeBERTa-v2 with embedding_size != hidden_size (the
projection comes first). Edits, patches, site gradients and the store layout follow the model's
letters (`capture.shape_letters`), and a refusal names them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bertjax
from bertjax.model import capture as C
from bertjax.model.params import Heads, init_params
from bertjax.scale.store import array_layout
from tests.model import modern_ref

B, S = 2, 5


@pytest.fixture(scope="module")
def v2xl():
    """A DeBERTa-v2-xlarge-style tiny model (E=19 projected to D=33 before the LayerNorm)."""
    config = bertjax.BertConfig.from_dict({"model_type": "deberta-v2", **modern_ref.DEBERTA_V2XL})
    assert (config.embed_size, config.hidden_size) == (19, 33) and config.has_projection
    params = init_params(jax.random.PRNGKey(0), config, Heads(pooler=False))
    ids = jnp.asarray(np.random.default_rng(0).integers(4, config.vocab_size, (B, S)), jnp.int32)
    return config, params, ids


def test_letters_per_family(v2xl):
    config = v2xl[0]
    electra = bertjax.BertConfig.from_dict({"model_type": "electra", "embedding_size": 19,
                                            "hidden_size": 33, "num_attention_heads": 3})
    assert C.shape_letters("embed.out", config) == ["B", "S", "D"]
    assert C.shape_letters("embed.out", electra) == C.shape_letters("embed.out") == ["B", "S", "E"]
    assert C.shape_letters("embed.sum", config) == ["B", "S", "E"]  # before the projection
    sizes = C.axis_sizes(config, B, S)
    assert C.stacked_shape("embed.out", sizes, config) == (B, S, 33)
    assert C.stacked_shape("embed.sum", sizes, config) == (B, S, 19)
    assert C.stacked_shape("embed.out", C.axis_sizes(electra, B, S), electra) == (B, S, 19)
    assert array_layout("embed.out", config, 1, "none")["shape"][-1] == 33


def test_embed_out_edit_is_d_wide(v2xl):
    config, params, ids = v2xl
    base = bertjax.forward(params, ids, config, capture=("embed.out",))
    assert base.acts["embed.out"].shape == (B, S, 33)
    scale = np.linspace(0.5, 1.5, 33, dtype=np.float32)
    out = bertjax.forward(params, ids, config, capture=("embed.out",),
                          edit={"embed.out": (scale, 0.0)})
    np.testing.assert_allclose(out.acts["embed.out"], np.asarray(base.acts["embed.out"]) * scale,
                               atol=1e-6)
    named = bertjax.forward(params, ids, config, capture=("embed.out",),
                            edit={"embed.out": ({"D": scale}, 0.0)})
    np.testing.assert_array_equal(named.acts["embed.out"], out.acts["embed.out"])
    with pytest.raises(ValueError, match=r"edit\['embed.out'\] mul has shape \(19,\), which does "
                                         r"not broadcast to embed.out's stacked shape \[B, S, D\]="
                                         r"\(2, 5, 33\)"):
        bertjax.forward(params, ids, config, edit={"embed.out": (np.ones(19, np.float32), 0.0)})
    with pytest.raises(ValueError, match=r"unknown axis 'E' for embed.out, whose axes are "
                                         r"\[B, S, D\]"):
        bertjax.forward(params, ids, config, edit={"embed.out": ({"E": np.ones(19)}, 0.0)})


def test_embed_out_patch_and_site_grads(v2xl):
    config, params, ids = v2xl
    clean = bertjax.forward(params, ids, config, capture=("embed.out",)).acts["embed.out"]
    other = bertjax.forward(params, ids[::-1], config, capture=("embed.out",)).acts["embed.out"]
    mask = np.zeros((B, S, 1), bool)
    mask[:, 0] = True
    patched = bertjax.forward(params, ids[::-1], config, capture=("embed.out",),
                              patch={"embed.out": (clean, mask)}).acts["embed.out"]
    np.testing.assert_array_equal(patched[:, 0], clean[:, 0])
    np.testing.assert_array_equal(patched[:, 1:], other[:, 1:])
    grads = bertjax.site_grads(params, ids, config, lambda o: o.last_hidden_state.sum(),
                               ("embed.out",))
    assert grads["embed.out"].shape == (B, S, 33) and np.isfinite(grads["embed.out"]).all()
