"""BertConfig for DeBERTa-v2/v3 and ModernBERT: both families' config.json dialects (ModernBERT's
old and new layouts), to_dict read back by transformers' config classes, and every new error."""

from __future__ import annotations

import dataclasses

import pytest
import transformers

from bertjax import BertConfig
from bertjax.checkpoints.convert import key_table
from bertjax.model.params import Heads
from tests.model import modern_ref

OLD_LAYOUT = {"model_type": "modernbert", **modern_ref.MODERNBERT}
NEW_LAYOUT = {"model_type": "modernbert", "vocab_size": 97, "hidden_size": 36,
              "num_attention_heads": 3, "num_hidden_layers": 4, "intermediate_size": 47,
              "layer_types": ["full_attention", "sliding_attention", "sliding_attention",
                              "full_attention"],
              "rope_parameters": {"full_attention": {"rope_type": "default",
                                                     "rope_theta": 160000.0},
                                  "sliding_attention": {"rope_type": "default",
                                                        "rope_theta": 10000.0}},
              "local_attention": 6, "hidden_activation": "gelu", "norm_eps": 1e-5,
              "pad_token_id": 0, "max_position_embeddings": 64}


def test_modernbert_layouts_read_the_same():
    old, new = BertConfig.from_dict(OLD_LAYOUT), BertConfig.from_dict(NEW_LAYOUT)
    assert old == new
    assert old.local_layers == (False, True, True, False) and old.sliding_window == 3
    assert not old.norm_bias and not old.attention_bias and old.decoder_bias
    assert old.layer_norm_eps == 1e-5 and old.type_vocab_size == 0


def test_modernbert_to_dict_round_trips_through_transformers():
    config = BertConfig.from_dict(OLD_LAYOUT)
    hf = transformers.ModernBertConfig(**config.to_dict())
    assert hf.layer_types == list(config.layer_types) and hf.sliding_window == 3
    assert hf.rope_parameters["sliding_attention"]["rope_theta"] == 10000.0
    assert BertConfig.from_dict(hf.to_dict()) == config


@pytest.mark.parametrize("kind", ["deberta-v3", "deberta-v2xl"])
def test_deberta_configs_round_trip_through_transformers(kind):
    base = modern_ref.DEBERTA_V3 if kind == "deberta-v3" else modern_ref.DEBERTA_V2XL
    config = BertConfig.from_dict(transformers.DebertaV2Config(**base).to_dict())
    assert config.pos_att_type == ("p2c", "c2p") and config.position_terms == ("c2p", "p2c")
    assert config.has_position_table == (kind == "deberta-v2xl")
    assert config.has_projection == (kind == "deberta-v2xl") and config.rel_span == 8
    hf = transformers.DebertaV2Config(**config.to_dict())
    assert BertConfig.from_dict(hf.to_dict()) == config


def test_key_tables_use_transformers_names():
    v3 = BertConfig.from_dict({"model_type": "deberta-v2", **modern_ref.DEBERTA_V3})
    keys = {k for k, _, _ in key_table(v3, Heads(pooler=False, mlm=True))}
    assert {"lm_predictions.lm_head.dense.weight", "encoder.rel_embeddings.weight",
            "encoder.layer.1.attention.self.query_proj.weight"} <= keys
    legacy = dataclasses.replace(v3, legacy=True)
    assert "cls.predictions.transform.dense.weight" in {
        k for k, _, _ in key_table(legacy, Heads(pooler=False, mlm=True))}
    mb = BertConfig.from_dict(OLD_LAYOUT)
    keys = {k for k, _, _ in key_table(mb, Heads(pooler=False, mlm=True))}
    assert {"layers.1.attn_norm.weight", "layers.0.attn.Wqkv.weight", "final_norm.weight",
            "decoder.bias", "head.norm.weight"} <= keys
    assert "layers.0.attn_norm.weight" not in keys and "layers.0.attn.Wqkv.bias" not in keys


@pytest.mark.parametrize("change,match", [
    ({"pos_att_type": "c2p|p2p"}, "pos_att_type=.*terms are 'c2p' and 'p2c'"),
    ({"norm_rel_ebd": "rms"}, "norm_rel_ebd='rms'"),
    ({"legacy": False, "embedding_size": 19}, "legacy=false with embedding_size"),
    ({"pooler_hidden_size": 7}, "pooler_hidden_size=7 differs"),
    ({"conv_kernel_size": 3, "conv_groups": 2}, "groups must divide hidden_size"),
])
def test_deberta_errors(change, match):
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict({"model_type": "deberta-v2", **modern_ref.DEBERTA_V3, **change})


@pytest.mark.parametrize("change,match", [
    ({"layer_types": ["full_attention"] * 3}, "layer_types=.*4 layers"),
    ({"hidden_size": 33}, "rotary embeddings need an even head size"),
    ({"classifier_pooling": "max"}, "classifier_pooling='max'"),
    ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0}}},
     "rope_type='linear'"),
    ({"rope_scaling": {"type": "linear"}}, "rope_scaling"),
    ({"local_attention": 1}, "sliding layers need >= 2"),
])
def test_modernbert_errors(change, match):
    with pytest.raises(ValueError, match=match):
        BertConfig.from_dict({**OLD_LAYOUT, **change})


def test_family_fields_stay_at_their_defaults_elsewhere():
    with pytest.raises(ValueError, match="BertConfig.local_attention=4 is not a field of "
                                         "model_type='bert'"):
        BertConfig(local_attention=4)
    assert "layer_types" not in BertConfig().to_dict()
