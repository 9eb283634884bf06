"""BertConfig for every family: each family's config.json in, its transformers form out (read back
by transformers' config class to an equal config), the derived properties, and the errors."""

from __future__ import annotations

import dataclasses

import pytest
from family_ref import CONFIGS, FAMILIES

from bertjax import BertConfig

transformers = pytest.importorskip("transformers")


def _hf(family: str, **overrides):
    name, kwargs = CONFIGS[family]
    return getattr(transformers, name)(**{**kwargs, **overrides})


@pytest.mark.parametrize("family", FAMILIES)
def test_family_config_round_trips_through_transformers(family):
    hf = _hf(family)
    config = BertConfig.from_dict(hf.to_dict())
    assert config.model_type == hf.model_type
    assert (config.hidden_size, config.num_attention_heads, config.num_hidden_layers) == (
        hf.hidden_size, hf.num_attention_heads, hf.num_hidden_layers)
    back = transformers.AutoConfig.for_model(**config.to_dict())
    assert type(back) is type(hf)
    assert BertConfig.from_dict(back.to_dict()) == config
    assert BertConfig.from_dict(config.to_dict()) == config


def test_distilbert_keys_and_hard_coded_eps():
    config = BertConfig.from_dict(_hf("distilbert").to_dict())
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (33, 47, 2)
    assert config.layer_norm_eps == 1e-12 and config.type_vocab_size == 0
    assert not config.has_token_types and config.classifier_kind == "pre_relu"
    d = config.to_dict()
    assert d["dim"] == 33 and d["hidden_dim"] == 47 and "hidden_size" not in d


def test_family_properties():
    roberta = BertConfig.from_dict(_hf("roberta").to_dict())
    assert roberta.padding_aware_positions and roberta.position_pad_id == 1
    assert roberta.head_act == "gelu" and roberta.classifier_kind == "dense_tanh"
    mpnet = BertConfig.from_dict(_hf("mpnet", pad_token_id=0).to_dict())
    assert mpnet.position_pad_id == 1  # hard-coded in MPNetEmbeddings, whatever pad_token_id is
    assert mpnet.relative_attention_num_buckets == 32 and not mpnet.has_token_types
    electra = BertConfig.from_dict(_hf("electra").to_dict())
    assert electra.embed_size == 19 and electra.has_projection
    assert electra.head_act == "gelu" and electra.classifier_kind == "dense_gelu"
    same = BertConfig.from_dict(_hf("electra", embedding_size=33).to_dict())
    assert not same.has_projection  # transformers makes embeddings_project only when E != D
    albert = BertConfig.from_dict(_hf("albert").to_dict())
    assert (albert.num_layers, albert.num_param_layers) == (8, 4)
    assert albert.layer_map == (0, 1, 0, 1, 2, 3, 2, 3) and albert.has_projection
    assert albert.head_act == "gelu_new"
    bert = BertConfig()
    assert bert.layer_map is None and bert.num_layers == 12 and bert.embed_size == 768
    assert not bert.padding_aware_positions and bert.classifier_kind == "pooler"


def test_albert_layer_map_follows_transformers():
    for layers, groups, inner in ((4, 2, 2), (12, 1, 1), (6, 3, 1), (5, 2, 3)):
        config = BertConfig(model_type="albert", num_hidden_layers=layers, num_hidden_groups=groups,
                            inner_group_num=inner, embedding_size=8)
        want = [int(i / (layers / groups)) * inner + j for i in range(layers) for j in range(inner)]
        assert [config.param_layer_of(t) for t in range(config.num_layers)] == want


@pytest.mark.parametrize("d,match", [
    ({"model_type": "gpt2"}, r"model_type='gpt2' is not supported; bertjax reads bert, roberta, "
                             r"xlm-roberta, camembert, distilbert, electra, albert, mpnet"),
    ({"model_type": "mpnet", "relative_attention_num_buckets": 16},
     r"relative_attention_num_buckets must be at least 32 for mpnet"),
    ({"model_type": "albert", "num_hidden_groups": 0}, r"num_hidden_groups must be a positive"),
    ({"model_type": "bert", "type_vocab_size": 0},
     r"type_vocab_size must be a positive integer for model_type='bert'"),
    ({"model_type": "electra", "embedding_size": "x"}, r"embedding_size must be of type"),
])
def test_bad_family_configs_are_one_line(d, match):
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict(d)


def test_family_fields_are_refused_elsewhere():
    with pytest.raises(ValueError, match=r"num_hidden_groups=2 is not a field of model_type='bert'"):
        BertConfig(num_hidden_groups=2)
    with pytest.raises(ValueError, match=r"type_vocab_size must be 0 for model_type='distilbert'"):
        BertConfig(model_type="distilbert", type_vocab_size=2)
    # keys of other families in a BERT config.json are dropped, as any unknown key
    assert BertConfig.from_dict({"embedding_size": 7}) == BertConfig()
    assert dataclasses.replace(BertConfig(), model_type="roberta").model_type == "roberta"
