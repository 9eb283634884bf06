"""Conversion of every family's transformers state dict: bit-exact against the source tensors, with
and without the base-model prefix, tied decoders, legacy gamma/beta, buffers; the key table
matches transformers' own keys (the table export uses); folders load and convert."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from family_ref import build, inputs

import bertjax
from bertjax.checkpoints.convert import BASE_PREFIX, key_table, source_key, state_dict_to_params
from bertjax.checkpoints.readers import CheckpointError
from bertjax.commands.cli import main
from bertjax.model.params import Heads, flatten

_CLASS = {"albert": "Albert", "mpnet": "MPNet", "electra": "Electra", "distilbert": "DistilBert"}
# (family, task) covering every head form and key dialect.
MODELS = [("bert", "ForPreTraining"), ("roberta", "ForMaskedLM"), ("xlm-roberta", "ForMaskedLM"),
          ("camembert", "ForSequenceClassification"), ("distilbert", "ForMaskedLM"),
          ("distilbert", "ForSequenceClassification"), ("electra", "ForMaskedLM"),
          ("electra", "ForPreTraining"), ("electra", "ForSequenceClassification"),
          ("albert", "ForPreTraining"), ("mpnet", "ForMaskedLM"), ("mpnet", "Model")]


@pytest.fixture(scope="session")
def family_folder(tmp_path_factory):
    cache = {}

    def get(family, task):
        if (family, task) not in cache:
            folder = tmp_path_factory.mktemp(f"convert-{family}-{task}")
            cache[family, task] = (folder, build(family, task, folder))
        return cache[family, task]

    return get


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family,task", MODELS, ids=[f"{f}-{t}" for f, t in MODELS])
def test_bit_exact_with_and_without_prefix(family_folder, family, task):
    folder, model = family_folder(family, task)
    config = bertjax.BertConfig.from_json(folder)
    state = _state(model)
    prefix = BASE_PREFIX[family]
    bare = {k.removeprefix(prefix): v for k, v in state.items()}
    for source in (state, bare):
        params, heads, _ = state_dict_to_params(source, config)
        flat = flatten(params)
        for key, path, transposed in key_table(config, heads):
            want = state.get(source_key(config, key), state.get(key))
            np.testing.assert_array_equal(flat[path], want.T if transposed else want,
                                          err_msg=f"{family} {path} <- {key}")
        assert set(flat) == {path for _, path, _ in key_table(config, heads)}
    assert heads == Heads.of(params)


@pytest.mark.parametrize("family,task", MODELS, ids=[f"{f}-{t}" for f, t in MODELS])
def test_key_table_is_transformers_naming(family_folder, family, task):
    """Every table key, prefixed as task models name it, is a key of transformers' state dict;
    the state dict's other keys are the tied decoder weight (and its bias alias) only."""
    folder, model = family_folder(family, task)
    config, params = bertjax.load(folder)
    table = key_table(config, Heads.of(params))
    keys = {source_key(config, key) for key, _, _ in table}
    state = set(model.state_dict())
    if task == "Model":  # the bare base model's keys carry no prefix
        keys = {k.removeprefix(BASE_PREFIX[family]) for k in keys}
    assert keys <= state, keys - state
    tied = {k for k in state - keys if "decoder" in k or "vocab_projector" in k
            or "generator_lm_head" in k or "seq_relationship" in k}
    assert state - keys == tied


def test_albert_shared_layers_are_stored_once(family_folder):
    folder, model = family_folder("albert", "ForPreTraining")
    config, params = bertjax.load(folder)
    assert sorted(params["encoder"]["layer"], key=int) == ["0", "1", "2", "3"]
    g1j0 = model.albert.encoder.albert_layer_groups[1].albert_layers[0].ffn.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(params["encoder"]["layer"]["2"]["intermediate"]
                                             ["dense"]["kernel"]), g1j0.T)


def test_legacy_names_buffers_and_tied_copy(family_folder):
    folder, model = family_folder("roberta", "ForMaskedLM")
    config = bertjax.BertConfig.from_json(folder)
    state = _state(model)
    want, heads, _ = state_dict_to_params(state, config)
    ln = "roberta.embeddings.LayerNorm"
    state[f"{ln}.gamma"], state[f"{ln}.beta"] = state.pop(f"{ln}.weight"), state.pop(f"{ln}.bias")
    state["roberta.embeddings.position_ids"] = np.arange(34)[None]
    state["lm_head.decoder.weight"] = state["roberta.embeddings.word_embeddings.weight"].copy()
    got, _, _ = state_dict_to_params(state, config)
    for path, array in flatten(want).items():
        np.testing.assert_array_equal(flatten(got)[path], array, err_msg=path)
    assert "decoder" not in got["cls"]["predictions"] and heads.mlm


def test_config_that_disagrees_with_the_weights(family_folder):
    folder, model = family_folder("distilbert", "ForMaskedLM")
    config = bertjax.BertConfig.from_json(folder)
    wrong = dataclasses.replace(config, intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"distilbert\.transformer\.layer\.0\.ffn\.lin1\.bias "
                                              r"has shape \(47,\), the config needs \(48,\)"):
        state_dict_to_params(_state(model), wrong)
    with pytest.raises(CheckpointError, match=r"not a mpnet checkpoint: no 'embeddings\.word_"
                                              r"embeddings\.weight' \(mpnet\. prefix optional\)"):
        state_dict_to_params({"x.weight": np.zeros(3, np.float32)},
                             dataclasses.replace(config, model_type="mpnet", type_vocab_size=0,
                                                 relative_attention_num_buckets=32))


@pytest.mark.parametrize("family,task", [("albert", "ForPreTraining"), ("mpnet", "ForMaskedLM"),
                                         ("electra", "ForPreTraining"),
                                         ("distilbert", "ForSequenceClassification")])
def test_cli_convert_verify_then_load(family_folder, tmp_path, capsys, family, task):
    folder, _ = family_folder(family, task)
    out = tmp_path / "out"
    assert main(["convert", str(folder), str(out), "--verify"]) == 0
    report = capsys.readouterr().out
    assert "verify: OK" in report and f"transformers {_CLASS[family]}{task}" in report
    config, params = bertjax.load(out)
    ref_config, ref = bertjax.load(folder)
    assert config == ref_config
    ids, types, mask = inputs(family)
    a = bertjax.forward(params, ids, config, types, mask)
    b = bertjax.forward(ref, ids, ref_config, types, mask)
    np.testing.assert_array_equal(np.asarray(a.last_hidden_state), np.asarray(b.last_hidden_state))


# --- DeBERTa-v2 (v3 and v2-xlarge configs, both MLM head layouts) and ModernBERT: every source form.

MODERN = [("deberta-v3", "DebertaV2ForMaskedLM"), ("deberta-v2xl", "DebertaV2ForMaskedLM"),
          ("deberta-v3", "DebertaV2ForSequenceClassification"),
          ("modernbert", "ModernBertForMaskedLM"), ("modernbert", "ModernBertForTokenClassification")]


def _source_forms(model, folder) -> dict[str, str]:
    """The model saved as a folder (safetensors), a .safetensors file, a .bin file (transformers
    4's pickled state dict) and a sharded safetensors index, each beside its config.json."""
    import os

    import torch

    forms = {}
    for form in ("folder", "bin", "sharded"):
        path = folder / form
        model.save_pretrained(path, **({"max_shard_size": "20KB"} if form == "sharded" else {}))
        forms[form] = str(path)
    forms["safetensors"] = str(folder / "folder" / "model.safetensors")
    os.remove(folder / "bin" / "model.safetensors")
    torch.save(model.state_dict(), folder / "bin" / "pytorch_model.bin")
    forms["bin"] = str(folder / "bin" / "pytorch_model.bin")
    assert os.path.isfile(folder / "sharded" / "model.safetensors.index.json")
    return forms


@pytest.mark.parametrize("kind,name", MODERN, ids=[f"{k}-{n}" for k, n in MODERN])
def test_modern_source_forms_bit_exact(kind, name, tmp_path):
    from tests.model import modern_ref

    model = modern_ref.build(kind, name)
    state = _state(model)
    forms = _source_forms(model, tmp_path)
    config, params = bertjax.load(forms["folder"])
    table = key_table(config, Heads.of(params))
    flat = flatten(params)
    for key, path, transposed in table:  # every tensor from its transformers key, exactly
        want = state[source_key(config, key)]
        np.testing.assert_array_equal(flat[path], want.T if transposed else want, err_msg=path)
    assert set(flat) == {path for _, path, _ in table}
    for form in ("safetensors", "bin", "sharded"):
        config2, other = bertjax.load(forms[form])
        assert config2 == config, form
        got = flatten(other)
        assert got.keys() == flat.keys() and all(np.array_equal(got[k], flat[k]) for k in flat), form


@pytest.mark.parametrize("kind,name", [("deberta-v2xl", "DebertaV2ForMaskedLM"),
                                       ("modernbert", "ModernBertForTokenClassification")])
def test_modern_cli_convert_verify(kind, name, tmp_path, capsys):
    """--verify on a sharded source; ModernBERT's classifier, one form for both tasks, against
    the class its config.json's `architectures` names (the final norm compared as transformers'
    last hidden_states entry)."""
    from tests.model import modern_ref

    forms = _source_forms(modern_ref.build(kind, name), tmp_path)
    assert main(["convert", forms["sharded"], str(tmp_path / "out"), "--verify"]) == 0
    report = capsys.readouterr().out
    assert "verify: OK" in report and f"transformers {name}" in report
    assert ("  final norm " in report) == (kind == "modernbert")
