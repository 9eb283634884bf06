"""BertConfig: Hugging Face dicts and files in and out, validation naming the field."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

from bertjax import BertConfig


def test_from_dict_reads_hf_names_and_defaults():
    config = BertConfig.from_dict(TINY)
    assert (config.hidden_size, config.num_attention_heads, config.head_size) == (15, 3, 5)
    assert config.attention_probs_dropout_prob == 0.1  # bert-base default for an absent key


def test_round_trip_through_to_dict():
    for config in (BertConfig(), BertConfig.from_dict(TINY),
                   BertConfig(num_labels=3, id2label=("neg", "neutral", "pos"), classifier_dropout=0.2)):
        assert BertConfig.from_dict(config.to_dict()) == config
        assert hash(BertConfig.from_dict(config.to_dict())) == hash(config)


def test_to_json_from_json_round_trip(tmp_path):
    config = BertConfig(**TINY, tie_word_embeddings=False, num_labels=4)
    config.to_json(tmp_path / "config.json")
    assert BertConfig.from_json(tmp_path) == config  # a folder means its config.json
    assert BertConfig.from_json(tmp_path / "config.json") == config


def test_transformers_reads_our_config_json(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = BertConfig(**TINY, num_labels=3, id2label=("a", "b", "c"), tie_word_embeddings=False)
    config.to_json(tmp_path / "config.json")
    hf = transformers.BertConfig.from_pretrained(tmp_path)
    for name, value in TINY.items():
        assert getattr(hf, name) == value, name
    assert hf.id2label == {0: "a", 1: "b", 2: "c"} and hf.num_labels == 3
    assert hf.tie_word_embeddings is False and hf.position_embedding_type == "absolute"


def test_transformers_config_dict_reads_back():
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(**TINY, num_labels=5).to_dict()
    config = BertConfig.from_dict(hf)
    assert config.num_labels == 5 and config.id2label == ()  # LABEL_i names mean unnamed
    assert config == BertConfig(**TINY, num_labels=5)


def test_harmless_extra_keys_are_accepted():
    extra = {"_name_or_path": "x", "architectures": ["BertForMaskedLM"], "transformers_version": "4.41",
             "gradient_checkpointing": False, "use_cache": True, "torch_dtype": "float32",
             "position_embedding_type": "absolute", "is_decoder": False, "pruned_heads": {}}
    assert BertConfig.from_dict({**TINY, **extra}) == BertConfig(**TINY)


@pytest.mark.parametrize("key,value", [
    ("position_embedding_type", "relative_key"),
    ("position_embedding_type", "relative_key_query"),
    ("is_decoder", True),
    ("add_cross_attention", True),
    ("is_encoder_decoder", True),
    ("pruned_heads", {"0": [1]}),
])
def test_unsupported_features_name_the_field(key, value):
    with pytest.raises(ValueError, match=rf"unsupported BERT config feature\(s\): {key}="):
        BertConfig.from_dict({**TINY, key: value})


def test_other_model_type_is_refused():
    with pytest.raises(ValueError, match=r"model_type='gpt2' is not supported; bertjax reads bert, roberta"):
        BertConfig.from_dict({"model_type": "gpt2", "n_embd": 16})


@pytest.mark.parametrize("key,value,match", [
    ("hidden_size", 16, r"hidden_size=16 is not a multiple of num_attention_heads=3"),
    ("num_hidden_layers", 0, r"num_hidden_layers must be a positive integer, got 0"),
    ("vocab_size", 10.5, r"vocab_size must be of type int, got 10.5"),
    ("num_attention_heads", True, r"num_attention_heads must be of type int, got True"),
    ("hidden_act", "tanh", r"hidden_act='tanh' is not supported"),
    ("hidden_act", 3, r"hidden_act must be of type str, got 3"),
    ("hidden_dropout_prob", 1.0, r"hidden_dropout_prob must be a number in \[0, 1\), got 1.0"),
    ("attention_probs_dropout_prob", "0.1", r"attention_probs_dropout_prob must be of type float"),
    ("classifier_dropout", -0.5, r"classifier_dropout must be a number in \[0, 1\), got -0.5"),
    ("layer_norm_eps", 0, r"layer_norm_eps must be a number > 0, got 0.0"),
    ("tie_word_embeddings", "yes", r"tie_word_embeddings must be of type bool, got 'yes'"),
])
def test_bad_values_name_the_field(key, value, match):
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict({**TINY, key: value})


def test_json_ints_are_valid_floats():
    config = BertConfig.from_dict({**TINY, "hidden_dropout_prob": 0, "layer_norm_eps": 1})
    assert config.hidden_dropout_prob == 0.0 and isinstance(config.layer_norm_eps, float)


def test_id2label_must_match_num_labels():
    with pytest.raises(ValueError, match=r"id2label has 2 names but num_labels=3"):
        BertConfig(num_labels=3, id2label=("a", "b"))
    with pytest.raises(ValueError, match=r"id2label keys must be label ids"):
        BertConfig.from_dict({**TINY, "id2label": {"first": "a"}})


def test_from_json_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no config file at .*missing\.json"):
        BertConfig.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        BertConfig.from_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match=r"list\.json does not hold a JSON object"):
        BertConfig.from_json(tmp_path / "list.json")


def test_config_is_frozen_and_hashable():
    config = BertConfig(**TINY)
    with pytest.raises(AttributeError):
        config.hidden_size = 30  # type: ignore[misc]
    assert {config: 1}[BertConfig(**TINY)] == 1
