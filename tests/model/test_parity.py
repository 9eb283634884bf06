"""Parity of every contract activation with transformers' PyTorch BERT (eager attention), fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from conftest import ATOL_TINY, assert_close, tiny_inputs
from torch_ref import torch_activations

import bertjax

# Parity is checked on the programs users run: compiled with XLA's optimisations (conftest).
pytestmark = pytest.mark.optimized

VARIANTS = {
    "default": {},
    "one-layer": dict(num_hidden_layers=1),
    "one-head": dict(num_attention_heads=1),
    "gelu_new": dict(hidden_act="gelu_new"),
    "gelu_pytorch_tanh": dict(hidden_act="gelu_pytorch_tanh"),
    "relu": dict(hidden_act="relu"),
    "silu": dict(hidden_act="silu"),
    "eps-1e-3": dict(layer_norm_eps=1e-3),
}


def _compare(folder, model_class, inputs, atol=ATOL_TINY):
    config, params = bertjax.load(folder)
    model = getattr(transformers, model_class).from_pretrained(folder, attn_implementation="eager")
    model.eval()
    ids, types, mask = inputs
    want = torch_activations(model, ids, types, mask)
    out = bertjax.forward(params, ids, config, token_type_ids=types, attention_mask=mask,
                          capture="all")
    assert set(out.acts) == set(want), set(out.acts) ^ set(want)
    for name in sorted(want):
        assert_close(name, out.acts[name], want[name], atol)
    assert_close("last_hidden_state", out.last_hidden_state, want["layer.out"][-1], atol)
    if "pooler.out" in want:
        assert_close("pooler_output", out.pooler_output, want["pooler.out"], atol)
    return out, want


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_activation_matches_transformers(checkpoint_factory, overrides):
    folder = checkpoint_factory("BertModel", **overrides)
    _compare(folder, "BertModel", tiny_inputs())


@pytest.mark.parametrize("model_class,kwargs", [
    ("BertForMaskedLM", {}),
    ("BertForMaskedLM", dict(tie_word_embeddings=False)),
    ("BertForPreTraining", {}),
], ids=["mlm-tied", "mlm-untied", "pretraining"])
def test_heads_match_transformers(checkpoint_factory, model_class, kwargs):
    folder = checkpoint_factory(model_class, **kwargs)
    out, want = _compare(folder, model_class, tiny_inputs(1))
    assert "mlm.logits" in want


def test_untied_decoder_is_kept(checkpoint_factory):
    folder = checkpoint_factory("BertForMaskedLM", tie_word_embeddings=False)
    _, params = bertjax.load(folder)
    assert "decoder" in params["cls"]["predictions"]
    _, tied = bertjax.load(checkpoint_factory("BertForMaskedLM"))
    assert "decoder" not in tied["cls"]["predictions"]


def test_classifier_head_matches(checkpoint_factory):
    folder = checkpoint_factory("BertForSequenceClassification", num_labels=4)
    config, params = bertjax.load(folder)
    model = transformers.BertForSequenceClassification.from_pretrained(folder,
                                                                       attn_implementation="eager")
    model.eval()
    ids, types, mask = tiny_inputs(3)
    with torch.no_grad():
        want = model(torch.as_tensor(ids, dtype=torch.long), token_type_ids=torch.as_tensor(
            types, dtype=torch.long), attention_mask=torch.as_tensor(mask)).logits.numpy()
    out = bertjax.forward(params, ids, config, types, mask)
    got = bertjax.classifier_logits(params, out.pooler_output, config)
    assert_close("classifier", got, want)


def test_position_ids_and_fully_padded_row(checkpoint_factory):
    folder = checkpoint_factory("BertModel")
    config, params = bertjax.load(folder)
    model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
    ids, types, mask = tiny_inputs(4)
    mask[1, :] = 0  # a row that is all padding: uniform attention, no NaN
    position_ids = np.array([[3, 4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 4, 5, 6]], np.int32)
    want = torch_activations(model, ids, types, mask, position_ids)
    out = bertjax.forward(params, ids, config, types, mask, position_ids, capture="all")
    assert np.isfinite(np.asarray(out.acts["attn.probs"])).all()
    for name in want:
        assert_close(name, out.acts[name], want[name])


def test_masked_scores_are_large_negative(checkpoint_factory):
    config, params = bertjax.load(checkpoint_factory("BertModel"))
    ids, types, mask = tiny_inputs()
    scores = np.asarray(bertjax.forward(params, ids, config, types, mask,
                                        capture="attn.scores").acts["attn.scores"])
    assert (scores[:, 1, :, :, 4:] <= -1e4).all()
    assert (scores[:, 0] > -1e4).all()
