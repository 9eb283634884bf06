"""DeBERTa-v2/v3 and ModernBERT against transformers' eager models: every activation of the
family, on a padded batch long enough for DeBERTa's log buckets (S = 13 > mid + 1 with 8 buckets)
and ModernBERT's sliding window (S = 13 > 2 w + 1 with w = 3), at 1e-5; "all" is exactly the
family's set; the heads (MLM in both DeBERTa layouts, sequence and token classification)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bertjax
from bertjax.checkpoints.convert import state_dict_to_params
from bertjax.model import capture as C
from tests.conftest import assert_close
from tests.model import modern_ref

# Parity is checked on the programs users run: compiled with XLA's optimisations (conftest).
pytestmark = pytest.mark.optimized

S = 13

# The family's names (the contract's "The encoder family" tables), per reference config.
BERT_LAYER = ("attn.q", "attn.k", "attn.v", "attn.scores", "attn.probs", "attn.context",
              "attn.head_out", "attn.out", "attn.resid", "mlp.pre", "mlp.post", "mlp.out",
              "mlp.resid", "layer.out", "attn.ln_std")
NAMES = {
    "deberta-v3": {"embed.word", "embed.sum", "embed.out", "embed.ln_std", "attn.norm",
                   "layer.ln_std", "attn.c2c", "attn.c2p", "attn.p2c", "mlm.logits",
                   *BERT_LAYER},
    "deberta-v2xl": {"embed.word", "embed.position", "embed.token_type", "embed.sum",
                     "embed.proj", "embed.out", "embed.ln_std", "attn.norm", "layer.ln_std",
                     "attn.c2c", "attn.c2p", "attn.p2c", "mlm.logits", *BERT_LAYER},
    "modernbert": {"embed.word", "embed.out", "embed.ln_std", "attn.norm_in", "attn.q_rot",
                   "attn.k_rot", "mlp.norm_in", "mlp.gate", "mlp.glu", "mlp.ln_std",
                   "final.ln_std", "final.out", "mlm.logits", *BERT_LAYER},
}


def _inputs(vocab: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (2, S))
    mask = np.ones((2, S), np.int64)
    mask[1, 6:] = 0  # a padded row: padded queries whose whole window is padding too
    return ids, mask


@pytest.fixture(scope="session")
def modern(request):
    """kind -> (torch model, config, params, ids, mask, token types, bertjax "all" output)."""
    cache = {}

    def get(kind):
        if kind not in cache:
            model = modern_ref.build(kind, "ModernBertForMaskedLM" if kind == "modernbert"
                                     else "DebertaV2ForMaskedLM")
            config = bertjax.BertConfig.from_dict(model.config.to_dict())
            state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
            params, _, _ = state_dict_to_params(state, config)
            ids, mask = _inputs(config.vocab_size)
            types = (np.arange(S)[None] >= 7).astype(np.int64).repeat(2, 0) \
                if config.has_token_types else None
            out = bertjax.forward(params, jnp.asarray(ids), config, attention_mask=mask,
                                  token_type_ids=types, capture="all")
            cache[kind] = (model, config, params, ids, mask, types, out)
        return cache[kind]
    return get


KINDS = ("deberta-v3", "deberta-v2xl", "modernbert")


@pytest.mark.parametrize("kind", KINDS)
def test_every_activation_matches_transformers(modern, kind):
    model, config, params, ids, mask, types, out = modern(kind)
    if kind == "modernbert":
        ref = modern_ref.modernbert(model, ids, mask)
    else:
        ref = modern_ref.deberta(model, ids, mask, types)
    assert set(out.acts) == NAMES[kind]
    for name in sorted(NAMES[kind]):
        assert_close(name, out.acts[name], ref[name])
    last = ref["final.out"] if kind == "modernbert" else ref["layer.out"][-1]
    assert_close("last_hidden_state", out.last_hidden_state, last)


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_matches_captured_path(modern, kind):
    """capture=() takes the fast paths (grouped, banded sliding layers): the same outputs."""
    _, config, params, ids, mask, types, out = modern(kind)
    fast = bertjax.forward(params, jnp.asarray(ids), config, attention_mask=mask,
                           token_type_ids=types)
    assert fast.acts == {}
    assert_close("last_hidden_state", fast.last_hidden_state, out.last_hidden_state)


def test_padded_queries_are_uniform_where_transformers_makes_them_so(modern):
    """DeBERTa masks queries: a padded query's row is uniform 1/S; ModernBERT's sliding layers
    too where the whole window is padding."""
    for kind, layer, query in (("deberta-v3", 0, 10), ("modernbert", 1, 12)):
        probs = np.asarray(modern(kind)[-1].acts["attn.probs"])
        np.testing.assert_allclose(probs[layer, 1, :, query], 1.0 / S, atol=1e-7)


@pytest.mark.parametrize("kind", ("deberta-v3", "modernbert"))
def test_missing_names_are_clear_errors(modern, kind):
    _, config, params, ids, mask, _, _ = modern(kind)
    missing = "embed.position" if kind == "modernbert" else "attn.q_rot"
    with pytest.raises(ValueError, match=f"cannot capture '{missing}': this {config.model_type}"):
        bertjax.forward(params, jnp.asarray(ids), config, capture=(missing,))
    if kind == "modernbert":
        with pytest.raises(ValueError, match="cannot capture 'attn.norm'.*pre-norm"):
            bertjax.forward(params, jnp.asarray(ids), config, capture=("attn.norm",))


def _classifier(kind: str, model_class: str, **overrides):
    model = modern_ref.build(kind, model_class, num_labels=3, **overrides)
    config = bertjax.BertConfig.from_dict(model.config.to_dict())
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params, heads, _ = state_dict_to_params(state, config)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    ids, mask = _inputs(config.vocab_size)
    import torch
    with torch.no_grad():
        want = model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    return config, params, heads, ids, mask, want


@pytest.mark.parametrize("kind,pooling", [("modernbert", "cls"), ("modernbert", "mean"),
                                          ("deberta-v3", None)])
def test_sequence_classification_matches_transformers(kind, pooling):
    extra = {"classifier_pooling": pooling} if pooling else {}
    model_class = ("ModernBertForSequenceClassification" if kind == "modernbert"
                   else "DebertaV2ForSequenceClassification")
    config, params, heads, ids, mask, want = _classifier(kind, model_class, **extra)
    out = bertjax.forward(params, jnp.asarray(ids), config, attention_mask=mask)
    features = out.pooler_output if kind != "modernbert" else out.last_hidden_state
    assert (out.pooler_output is not None) == (kind != "modernbert")
    got = bertjax.model.heads.classifier_logits(params, features, config, attention_mask=mask)
    assert_close("classifier logits", got, want)


@pytest.mark.parametrize("kind", ("modernbert", "deberta-v3"))
def test_token_classification_matches_transformers(kind):
    model_class = ("ModernBertForTokenClassification" if kind == "modernbert"
                   else "DebertaV2ForTokenClassification")
    config, params, heads, ids, mask, want = _classifier(kind, model_class)
    out = bertjax.forward(params, jnp.asarray(ids), config, attention_mask=mask)
    got = bertjax.model.heads.token_classifier_logits(params, out.last_hidden_state, config)
    assert_close("token logits", got, want)


def test_every_new_name_has_a_shape_and_belongs_to_one_family():
    for name in C.MODERN_LAYER_NAMES + C.FINAL_NAMES:
        assert name in C.SHAPES
    v3 = bertjax.BertConfig.from_dict({"model_type": "deberta-v2", **modern_ref.DEBERTA_V3})
    assert "attn.q_rot" not in C.model_names(v3) and "attn.c2p" in C.model_names(v3)
