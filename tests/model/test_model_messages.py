"""Messages that lead with their cause, and the first-hour traps of issue 26 (model wing)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_inputs

import bertjax


@pytest.fixture(scope="module")
def model(tiny_dir):
    return bertjax.load(tiny_dir)


def test_reuse_of_other_shapes_names_only_the_fields_that_differ(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    previous = bertjax.forward(params, ids[:, :5], config, capture="attn.q")
    with pytest.raises(ValueError) as e:
        bertjax.forward(params, ids, config, capture="attn.q", reuse=previous)
    message = str(e.value)
    assert message.startswith("reuse must have this call's output shapes and capture: "
                              "last_hidden_state: (2, 7, 15) float32 here, (2, 5, 15) float32 in reuse")
    assert "acts['attn.q']" in message and "pooler_output" not in message
    assert "capture: [" not in message
    with pytest.raises(ValueError, match=r"capture: \['attn.k'\] here, \['attn.q'\] in reuse$"):
        bertjax.forward(params, ids[:, :5], config, capture="attn.k", reuse=previous)


def test_a_metric_reading_an_uncaptured_name_says_to_capture_it(model):
    config, params = model
    ids, types, mask = tiny_inputs()

    def metric(out):
        return out.acts["attn.probs"].sum()

    with pytest.raises(ValueError, match=r"^the metric reads out.acts\['attn.probs'\], which was not "
                                         r"captured: pass capture=\('attn.probs',\) to site_grads(\n|$)"):
        bertjax.site_grads(params, ids, config, metric, "layer.out")
    grads = bertjax.site_grads(params, ids, config, metric, "layer.out", capture="attn.probs")
    assert grads["layer.out"].shape == (config.num_hidden_layers, *ids.shape, config.hidden_size)


@pytest.mark.parametrize("layers", [(np.int64(1), np.int32(3)), [np.int64(1), 3], np.array([1, 3])])
def test_numpy_integer_layer_indices_in_capture(model, layers):
    config, params = model
    ids, types, mask = tiny_inputs()
    out = bertjax.forward(params, ids, config, capture={"layer.out": layers})
    want = bertjax.forward(params, ids, config, capture={"layer.out": (1, 3)})
    np.testing.assert_array_equal(out.acts["layer.out"], want.acts["layer.out"])
    grads = bertjax.site_grads(params, ids, config, lambda o: o.acts["layer.out"].sum(), "embed.out",
                               capture={"layer.out": layers})
    assert grads["embed.out"].shape == (*ids.shape, config.hidden_size)


def test_a_single_numpy_integer_layer(model):
    config, params = model
    ids, types, mask = tiny_inputs()
    out = bertjax.forward(params, ids, config, capture={"attn.probs": np.int64(2)})
    assert out.acts["attn.probs"].shape[0] == 1
    grads = bertjax.site_grads(params, ids, config, lambda o: o.acts["attn.probs"].sum(), "embed.out",
                               capture={"attn.probs": np.int64(2)})
    assert grads["embed.out"].shape == (*ids.shape, config.hidden_size)
