"""Every family against its transformers PyTorch model (eager attention, fp32, tiny odd-sized
reference configs of FAMILY_NOTES, a padded batch): every activation the family has, its exact
"all" set, the MLM / discriminator / SOP / pooler outputs, and the classifier heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ATOL_TINY, assert_close
from family_ref import FAMILIES, build, family_activations, inputs

import bertjax
from bertjax.model import capture as C

# Parity is checked on the programs users run: compiled with XLA's optimisations (conftest).
pytestmark = pytest.mark.optimized

# family -> the task model whose every activation is compared (the MLM model; ELECTRA's
# discriminator and ALBERT's pretraining model add disc.logits / sop.logits and the pooler).
PARITY = [(f, "ForMaskedLM") for f in FAMILIES] + [("electra", "ForPreTraining"),
                                                    ("albert", "ForPreTraining")]
# Names each family lacks from BERT's set, and the family names it adds.
LACKS = {"distilbert": {C.EMBED_TOKEN_TYPE}, "mpnet": {C.EMBED_TOKEN_TYPE}}
ADDS = {"electra": {C.EMBED_PROJ}, "albert": {C.EMBED_PROJ}, "mpnet": {C.ATTN_REL_BIAS}}


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """(family, task) -> (bertjax config, params, torch model), built once per session."""
    cache = {}

    def get(family, task, **overrides):
        key = (family, task, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-{task}")
            model = build(family, task, folder, **overrides)
            cache[key] = (*bertjax.load(folder), model)
        return cache[key]

    return get


@pytest.mark.parametrize("family,task", PARITY, ids=[f"{f}-{t}" for f, t in PARITY])
def test_every_activation_matches_transformers(family_model, family, task):
    config, params, model = family_model(family, task)
    ids, types, mask = inputs(family)
    want, output = family_activations(family, model, ids, types, mask)
    out = bertjax.forward(params, ids, config, types, mask, capture="all")
    heads = bertjax.Heads.of(params)
    bert = set(C.ALL_NAMES) - {C.POOLER_OUT, C.MLM_LOGITS}
    expected = (bert - LACKS.get(family, set())) | ADDS.get(family, set())
    expected |= {n for n, has in ((C.POOLER_OUT, heads.pooler), (C.MLM_LOGITS, heads.mlm),
                                  (C.DISC_LOGITS, heads.disc), (C.SOP_LOGITS, heads.sop)) if has}
    assert set(out.acts) == expected  # "all" is exactly the family's set
    assert set(want) | {n for n in C.OUTPUT_NAMES if n in expected} - {C.POOLER_OUT} == expected
    for name in sorted(want):
        assert_close(f"{family} {name}", out.acts[name], want[name], ATOL_TINY)
    hidden = output.hidden_states if getattr(output, "hidden_states", None) else None
    assert hidden is None or len(hidden) == config.num_layers + 1
    last = want["layer.out"][-1]
    assert_close(f"{family} last_hidden_state", out.last_hidden_state, last)
    assert np.asarray(out.acts["attn.probs"]).shape[0] == config.num_layers == len(output.attentions)
    assert_close(f"{family} attentions", out.acts["attn.probs"],
                 np.stack([a.numpy() for a in output.attentions]))
    if heads.pooler:
        assert_close(f"{family} pooler", out.pooler_output, want["pooler.out"])
    logits = {C.MLM_LOGITS: getattr(output, "prediction_logits", None)}
    if task == "ForMaskedLM":
        logits[C.MLM_LOGITS] = output.logits
    if heads.disc:
        logits[C.DISC_LOGITS] = output.logits
    if heads.sop:
        logits[C.SOP_LOGITS] = output.sop_logits
    for name, ref in logits.items():
        if ref is not None:
            assert_close(f"{family} {name}", out.acts[name], ref.numpy())


@pytest.mark.parametrize("family", ["roberta", "mpnet"])
def test_pooler_of_the_base_model(family_model, family):
    config, params, model = family_model(family, "Model")
    ids, types, mask = inputs(family, seed=1)
    want, _ = family_activations(family, model, ids, types, mask)
    out = bertjax.forward(params, ids, config, types, mask, capture=("pooler.out", "layer.out"))
    assert_close(f"{family} pooler", out.pooler_output, want["pooler.out"])
    assert_close(f"{family} layer.out", out.acts["layer.out"], want["layer.out"])


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_heads_match_transformers(family_model, family):
    ids, types, mask = inputs(family, seed=2)
    kwargs = {"attention_mask": torch.as_tensor(mask, dtype=torch.long)}
    if types is not None:
        kwargs["token_type_ids"] = torch.as_tensor(types, dtype=torch.long)
    for task in ("ForSequenceClassification", "ForTokenClassification"):
        config, params, model = family_model(family, task, num_labels=5)
        with torch.no_grad():
            want = model(torch.as_tensor(ids, dtype=torch.long), **kwargs).logits.numpy()
        out = bertjax.forward(params, ids, config, types, mask)
        if task == "ForTokenClassification":
            got = bertjax.token_classifier_logits(params, out.last_hidden_state, config)
        elif config.classifier_kind == "pooler":
            got = bertjax.classifier_logits(params, out.pooler_output, config)
        else:
            got = bertjax.classifier_logits(params, out.last_hidden_state, config)
        assert_close(f"{family} {task}", got, want)


def test_albert_stores_each_shared_layer_once(family_model):
    config, params, _ = family_model("albert", "ForPreTraining")
    assert config.num_layers == 8 and config.num_param_layers == 4
    assert set(params["encoder"]["layer"]) == {"0", "1", "2", "3"}


@pytest.mark.parametrize("family,name", [("distilbert", "embed.token_type"),
                                         ("mpnet", "embed.token_type"),
                                         ("roberta", "embed.proj"), ("bert", "attn.rel_bias"),
                                         ("electra", "sop.logits")])
def test_a_name_the_family_lacks_is_refused(family_model, family, name):
    config, params, _ = family_model(family, "ForMaskedLM")
    ids, types, mask = inputs(family)
    with pytest.raises(ValueError, match=f"cannot capture '{name}': this {family} model has no"):
        bertjax.forward(params, ids, config, types, mask, capture=name)


def test_token_types_refused_without_a_table(family_model):
    config, params, _ = family_model("distilbert", "ForMaskedLM")
    ids, _, mask = inputs("distilbert")
    with pytest.raises(ValueError, match="token_type_ids must be None: a distilbert model has no"):
        bertjax.forward(params, ids, config, np.zeros_like(ids), mask)


def test_roberta_sequence_length_counts_the_pad_offset(family_model):
    config, params, _ = family_model("roberta", "ForMaskedLM")
    assert config.max_sequence_length == 34 - 2
    ids = np.full((1, 33), 5, np.int32)
    with pytest.raises(ValueError, match=r"sequence length 33 exceeds 32, the longest a roberta"):
        bertjax.forward(params, ids, config)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["roberta", "mpnet"])
def test_padding_position_row_gets_no_gradient(family_model, family):
    """As nn.Embedding(padding_idx=pad) in transformers: the embedding gradients match torch's."""
    import jax

    config, params, model = family_model(family, "ForMaskedLM")
    ids, types, mask = inputs(family)
    model.zero_grad()
    model(torch.as_tensor(ids, dtype=torch.long),
          attention_mask=torch.as_tensor(mask, dtype=torch.long)).logits.sum().backward()
    grads = jax.grad(lambda p: bertjax.forward(p, ids, config, attention_mask=mask,
                                               capture="mlm.logits").acts["mlm.logits"].sum())(params)
    emb = model.base_model.embeddings
    for name in ("position_embeddings", "word_embeddings"):
        want = getattr(emb, name).weight.grad.numpy()
        assert_close(f"{family} d{name}", grads["embeddings"][name]["embedding"], want, atol=1e-4)
