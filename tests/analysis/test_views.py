"""views: bertviz inputs (rendered by bertviz itself), neuron view data, the standalone head view page."""

from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import pytest
from conftest import TINY, tiny_inputs
from test_tables import TOKENS, fake_probs

import bertjax
from bertjax.analysis.views import (
    bertviz_neuron_view,
    head_view_html,
    head_view_inputs,
    model_view_html,
    neuron_view_data,
    neuron_view_html,
    save_head_view,
    save_model_view,
    save_neuron_view,
    sentence_b_start,
)

L = TINY["num_hidden_layers"]


def test_head_view_inputs_numpy():
    probs, mask = fake_probs()
    inputs = head_view_inputs(probs, TOKENS[:4], batch=1, attention_mask=mask, as_torch=False)
    assert len(inputs["attention"]) == 2 and inputs["tokens"] == TOKENS[:4]
    assert all(isinstance(a, np.ndarray) and a.shape == (1, 3, 4, 4) for a in inputs["attention"])
    np.testing.assert_array_equal(inputs["attention"][1][0], probs[1, 1, :, :4, :4])
    assert inputs["sentence_b_start"] is None


@pytest.mark.parametrize("view", ["head_view", "model_view"])
def test_bertviz_renders_our_inputs(view):
    import bertviz

    probs, _ = fake_probs()
    inputs = head_view_inputs(probs, TOKENS, sentence_b_start=4, as_torch=True)
    page = getattr(bertviz, view)(**inputs, html_action="return").data
    params = json.loads(re.search(r"const params = (\{.*?\}); // HACK", page, re.S).group(1))
    names = [view["name"] for view in params["attention"]]
    assert names == ["All", "Sentence A -> Sentence A", "Sentence B -> Sentence B",
                     "Sentence A -> Sentence B", "Sentence B -> Sentence A"]
    assert params["attention"][0]["left_text"] == TOKENS
    np.testing.assert_allclose(params["attention"][0]["attn"], probs[:, 0], rtol=1e-6)
    np.testing.assert_allclose(params["attention"][3]["attn"], probs[:, 0, :, :4, 4:], rtol=1e-6)


def test_head_view_inputs_defaults_are_what_bertviz_takes():
    """With torch installed the default gives torch tensors: bertviz.head_view(**inputs) works."""
    import bertviz
    import torch

    probs, mask = fake_probs()
    inputs = head_view_inputs(probs, TOKENS[:4], batch=1, attention_mask=mask)
    assert all(isinstance(a, torch.Tensor) for a in inputs["attention"])
    for view in (bertviz.head_view, bertviz.model_view):
        page = view(**inputs, html_action="return").data
        params = json.loads(re.search(r"const params = (\{.*?\}); // HACK", page, re.S).group(1))
        np.testing.assert_allclose(params["attention"][0]["attn"], probs[:, 1, :, :4, :4], rtol=1e-6)


def test_sentence_b_start():
    assert sentence_b_start(np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])) == 3
    assert sentence_b_start(np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]), batch=1) is None


@pytest.fixture(scope="module")
def qk_acts():
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(0), config, bertjax.Heads())
    ids, types, mask = tiny_inputs()
    acts = bertjax.forward(params, ids, config, types, mask,
                           capture=("attn.probs", "attn.q", "attn.k")).acts
    return acts, mask


def test_neuron_view_data_single(qk_acts):
    acts, mask = qk_acts
    data = neuron_view_data(acts, TOKENS[:4], batch=1, attention_mask=mask)
    assert set(data) == {"all"}
    view = data["all"]
    assert view["left_text"] == view["right_text"] == TOKENS[:4]
    assert np.shape(view["attn"]) == (L, 3, 4, 4)  # [L][N][S][T]
    assert np.shape(view["queries"]) == np.shape(view["keys"]) == (L, 3, 4, 5)  # [L][N][S][H]
    np.testing.assert_allclose(view["keys"], np.asarray(acts["attn.k"])[:, 1, :, :4], atol=1e-6)


def test_neuron_view_data_pair(qk_acts):
    acts, _ = qk_acts
    data = neuron_view_data(acts, TOKENS, sentence_b_start=3)
    assert set(data) == {"all", "aa", "bb", "ab", "ba"}
    ab = data["ab"]
    assert ab["left_text"] == TOKENS[:3] and ab["right_text"] == TOKENS[3:]
    assert np.shape(ab["attn"]) == (L, 3, 3, 4)
    assert np.shape(ab["queries"]) == (L, 3, 3, 5) and np.shape(ab["keys"]) == (L, 3, 4, 5)
    np.testing.assert_allclose(ab["attn"], np.asarray(acts["attn.probs"])[:, 0, :, :3, 3:], atol=1e-6)


def test_neuron_view_data_needs_queries_and_keys(qk_acts):
    acts, _ = qk_acts
    with pytest.raises(ValueError, match=r"needs attn.q, attn.k in acts"):
        neuron_view_data({"attn.probs": acts["attn.probs"]}, TOKENS)


def test_bertviz_neuron_view_page(qk_acts):
    acts, _ = qk_acts
    data = neuron_view_data(acts, TOKENS, sentence_b_start=3)
    page = bertviz_neuron_view(data, layer=1).data
    assert "window.bertviz_params = " in page and '"layer": 1' in page and '"head": 0' in page
    assert "function initialize()" in page  # bertviz's own neuron_view.js
    # the labels carry the class bertviz's script colours for the display mode (not black on black)
    assert page.count('<span class="dropdown-label">') == 3
    assert "font-family:'Helvetica Neue', Helvetica, Arial, sans-serif" in page
    assert '<option value="ab">Sentence A -&gt; Sentence B</option>' in page  # not a raw "ab"


def test_bertviz_neuron_view_negative_indices_and_one_sentence(qk_acts):
    acts, _ = qk_acts
    page = bertviz_neuron_view(neuron_view_data(acts, TOKENS), layer=-1, head=-1).data
    params = json.loads(re.search(r"window.bertviz_params = (\{.*?\})</script>", page, re.S).group(1))
    assert params["layer"] == L - 1 and params["head"] == 2  # a blank page with -1 before
    assert 'id="filter"' not in page  # one sentence: no filter, as bertviz
    with pytest.raises(ValueError, match=f"layer {L} is out of range: the model has {L} layers"):
        bertviz_neuron_view(neuron_view_data(acts, TOKENS), layer=L)


def _embedded(page: str) -> dict:
    blob = re.search(r'<script type="application/json" id="[\w-]+-data">(.*?)</script>', page, re.S)
    return json.loads(blob.group(1))


def test_save_head_view_is_one_standalone_file(tmp_path):
    probs, mask = fake_probs()
    tokens = TOKENS[:3] + ["</script>"]  # the real tokens of example 1
    path = save_head_view(str(tmp_path / "view.html"), probs, tokens, batch=1,
                          attention_mask=mask, title="a <test>")
    assert sorted(os.listdir(tmp_path)) == ["view.html"]  # one file, no temp left
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and "a &lt;test&gt;" in page
    assert not re.search(r"(src|href)=", page) and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "").replace('"http://www.w3.org/2000/svg"', "")
    data = _embedded(page)
    assert data["tokens"] == tokens[:4]  # "</script>" survives the embedding
    np.testing.assert_allclose(data["attn"], probs[:, 1, :, :4, :4], atol=5e-5)
    assert data["layer"] == 1 and "[CLS]" in page


def test_head_view_html_fragment_is_deterministic():
    probs, _ = fake_probs()
    first = head_view_html(probs, TOKENS, layer=0, sentence_b_start=4)
    assert first == head_view_html(probs, TOKENS, layer=0, sentence_b_start=4)
    data = _embedded(first)
    assert data["layer"] == 0 and data["sentence_b_start"] == 4 and np.shape(data["attn"]) == (2, 3, 7, 7)
    assert data["head"] is None  # every head shown
    with pytest.raises(ValueError, match="layer 5 is out of range"):
        head_view_html(probs, TOKENS, layer=5)
    with pytest.raises(ValueError, match="head 3 is out of range: the model has 3 heads"):
        head_view_html(probs, TOKENS, head=3)


def test_head_view_selected_head_and_title_escaping(tmp_path):
    probs, _ = fake_probs()
    page = head_view_html(probs, TOKENS, head=-2, title="my __DATA__ <view> __ROOT__")
    assert _embedded(page)["head"] == 1
    assert "<b>my __DATA__ &lt;view&gt; __ROOT__</b>" in page  # no payload or id in the title
    assert page.count('"tokens":') == 1
    path = save_head_view(str(tmp_path / "v.html"), probs, TOKENS, head=2, title="t __DATA__")
    text = open(path, encoding="utf-8").read()
    assert "<title>t __DATA__</title>" in text and _embedded(text)["head"] == 2


def test_model_view_page(tmp_path):
    probs, mask = fake_probs()
    path = save_model_view(str(tmp_path / "model.html"), probs, TOKENS[:4], batch=1, attention_mask=mask,
                           layer=-1, head=2, title="a <model>")
    page = open(path, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and "<b>a &lt;model&gt;</b>" in page
    assert not re.search(r"(src|href)=", page)
    data = _embedded(page)
    assert data["tokens"] == TOKENS[:4] and (data["layer"], data["head"]) == (1, 2)
    np.testing.assert_allclose(data["attn"], probs[:, 1, :, :4, :4], atol=5e-5)
    with pytest.raises(ValueError, match="head 3 is out of range"):
        model_view_html(probs, TOKENS, head=3)


def test_neuron_view_page(qk_acts, tmp_path):
    acts, _ = qk_acts
    data = neuron_view_data(acts, TOKENS, sentence_b_start=3)
    path = save_neuron_view(str(tmp_path / "neuron.html"), data, layer=-1, head=1)
    page = open(path, encoding="utf-8").read()
    assert not re.search(r"(src|href)=", page)
    embedded = _embedded(page)
    assert (embedded["layer"], embedded["head"]) == (L - 1, 1)
    assert embedded["views"] == json.loads(json.dumps(data))
    assert embedded["labels"]["ba"] == "Sentence B -> Sentence A"
    assert embedded == _embedded(neuron_view_html(data, layer=L - 1, head=1))
    with pytest.raises(ValueError, match="head -4 is out of range"):
        neuron_view_html(data, head=-4)
