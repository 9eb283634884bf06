"""Export back to transformers (`bertjax.save_transformers`, `bertjax export`): for each head the
folder loads in the matching `AutoModelFor...` class with no missing or unexpected keys and the same
outputs as bertjax's forward, in `AutoModel` with the same last hidden state, and reads back into
bertjax bit for bit; the write is atomic and refuses what it cannot write."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from conftest import assert_close, tiny_inputs

import bertjax
from bertjax.checkpoints.export import architecture, infer_task, plan_export
from bertjax.commands.cli import main
from bertjax.model.heads import classifier_logits, token_classifier_logits
from bertjax.model.params import flatten

# source class -> (task the export infers, class it writes)
CASES = {
    "BertModel": ("model", "BertModel"),
    "BertForMaskedLM": ("mlm", "BertForMaskedLM"),
    "BertForSequenceClassification": ("classification", "BertForSequenceClassification"),
    "BertForPreTraining": ("mlm", "BertForMaskedLM"),  # NSP dropped on import: an MLM model
}


def bertjax_outputs(config, params, task, ids, types, mask) -> dict:
    """last_hidden_state and the task's logits, from bertjax."""
    capture = ("mlm.logits",) if task in ("mlm", "pretraining") else ()
    out = bertjax.forward(params, ids, config, token_type_ids=types, attention_mask=mask,
                          capture=capture)
    got = {"last_hidden_state": np.asarray(out.last_hidden_state)}
    if task == "mlm":
        got["logits"] = np.asarray(out.acts["mlm.logits"])
    elif task == "classification":
        got["logits"] = np.asarray(classifier_logits(params, out.pooler_output, config))
    elif task == "tokens":
        got["logits"] = np.asarray(token_classifier_logits(params, out.last_hidden_state, config))
    return got


def torch_outputs(model, ids, types, mask) -> dict:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    token_type_ids=torch.tensor(types, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long), output_hidden_states=True)
    got = {"last_hidden_state": (out.last_hidden_state if hasattr(out, "last_hidden_state")
                                 else out.hidden_states[-1]).numpy()}
    if hasattr(out, "logits"):
        got["logits"] = out.logits.numpy()
    return got


def load_exported(folder, name):
    model, info = getattr(transformers, f"AutoModel{name[len('Bert'):]}" if name != "BertModel"
                          else "AutoModel").from_pretrained(folder, output_loading_info=True,
                                                            attn_implementation="eager")
    return model.eval(), info


@pytest.mark.parametrize("source", list(CASES))
def test_round_trip_per_head(source, checkpoint_factory, tmp_path):
    task, name = CASES[source]
    config, params = bertjax.load(checkpoint_factory(source))
    assert infer_task(config, params) == task and architecture(config, task) == name
    out = bertjax.save_transformers(tmp_path / "hf", config, params)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["architectures"] == [name]
    model, info = load_exported(out, name)
    assert type(model).__name__ == name
    assert all(not info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids, types, mask = tiny_inputs()
    want = bertjax_outputs(config, params, task, ids, types, mask)
    got = torch_outputs(model, ids, types, mask)
    assert set(got) == set(want)
    for key in want:
        assert_close(key, got[key], want[key])
    base = transformers.AutoModel.from_pretrained(out, attn_implementation="eager").eval()
    assert_close("AutoModel last_hidden_state", torch_outputs(base, ids, types, mask)
                 ["last_hidden_state"], want["last_hidden_state"])
    config2, params2 = bertjax.load(out)  # and back: bit for bit, less what the class has not
    assert config2 == config
    a, b = flatten(params), flatten(params2)
    left_out = {k.split("/")[0] for k in a.keys() - b.keys()}
    assert left_out == ({"pooler"} if source == "BertForPreTraining" else set())
    assert b.keys() <= a.keys() and all(np.array_equal(a[k], b[k]) for k in b)


def _loads_with_bertjax_logits(out, class_name: str, config, params, task: str, seed: int):
    """The exported folder loads as `class_name` with no missing or unexpected key, and its logits
    equal bertjax's on seeded tiny inputs."""
    model, info = load_exported(out, class_name)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, types, mask = tiny_inputs(seed)
    assert_close("logits", torch_outputs(model, ids, types, mask)["logits"],
                 bertjax_outputs(config, params, task, ids, types, mask)["logits"])


def test_untied_decoder_and_stacked_params(checkpoint_factory, tmp_path):
    config, params = bertjax.load(checkpoint_factory("BertForMaskedLM", tie_word_embeddings=False),
                                  stacked=True)
    assert not config.tie_word_embeddings
    plan = plan_export(config, params)
    assert "cls.predictions.decoder.weight" in plan.tensors and not plan.config["tie_word_embeddings"]
    out = bertjax.save_transformers(tmp_path / "hf", config, params)
    _loads_with_bertjax_logits(out, "BertForMaskedLM", config, params, "mlm", seed=1)


def test_tokens_task_drops_the_pooler(checkpoint_factory, tmp_path):
    config, params = bertjax.load(checkpoint_factory("BertForSequenceClassification"))
    plan = plan_export(config, params, "tokens")
    assert plan.architecture == "BertForTokenClassification"
    assert plan.notes == ["left out pooler (a BertForTokenClassification has no place for it)"]
    out = bertjax.save_transformers(tmp_path / "hf", config, params, task="tokens")
    _loads_with_bertjax_logits(out, "BertForTokenClassification", config, params, "tokens", seed=2)


def test_bfloat16_is_written_as_it_is(checkpoint_factory, tmp_path):
    config, params = bertjax.load(checkpoint_factory("BertForMaskedLM"), dtype="bfloat16")
    out = bertjax.save_transformers(tmp_path / "hf", config, params)
    model = transformers.AutoModelForMaskedLM.from_pretrained(out, dtype="auto")
    assert model.bert.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    _, back = bertjax.load(out, dtype="bfloat16")
    a, b = flatten(params), flatten(back)
    assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def test_refusals_leave_nothing(checkpoint_factory, tmp_path):
    config, params = bertjax.load(checkpoint_factory("BertForMaskedLM"))
    out = tmp_path / "hf"
    with pytest.raises(ValueError, match="BertForSequenceClassification needs pooler and "
                                         "classifier in the parameter tree"):
        bertjax.save_transformers(out, config, params, task="classification")
    with pytest.raises(ValueError, match="task must be one of model, mlm"):
        bertjax.save_transformers(out, config, params, task="nsp")
    with pytest.raises(ValueError, match="task 'pretraining' exports ELECTRA's discriminator"):
        bertjax.save_transformers(out, config, params, task="pretraining")
    assert os.listdir(tmp_path) == []  # no folder, no temporary sibling
    bertjax.save_transformers(out, config, params)
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        bertjax.save_transformers(out, config, params)
    bertjax.save_transformers(out, config, params, task="model", force=True)
    assert os.listdir(tmp_path) == ["hf"]
    with open(out / "config.json") as f:
        assert json.load(f)["architectures"] == ["BertModel"]


def test_cli_export_copies_the_tokenizer(checkpoint_factory, tmp_path, capsys):
    src = str(tmp_path / "src")  # a copy: the factory's folder is shared by other tests
    shutil.copytree(checkpoint_factory("BertForMaskedLM"), src)
    transformers.BertTokenizer(vocab=_vocab(tmp_path)).save_pretrained(src)
    converted = tmp_path / "jax"
    assert main(["convert", src, str(converted)]) == 0
    capsys.readouterr()
    assert main(["export", str(converted), str(tmp_path / "hf")]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == [f"exported {converted} as BertForMaskedLM",
                                f"  wrote {tmp_path / 'hf'}"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer.decode(tokenizer("cat sat")["input_ids"]) == "[CLS] cat sat [SEP]"
    assert main(["export", str(converted), str(tmp_path / "hf")]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["export", str(converted), str(tmp_path / "hf"), "--force", "--task",
                 "classification"]) == 2
    assert "needs pooler and classifier" in capsys.readouterr().err


def _vocab(tmp_path) -> str:
    path = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "sat"]
    path.write_text("\n".join(words + [f"w{i}" for i in range(101 - len(words))]) + "\n")
    return str(path)


# --- every family: the tiny offline models of conversion/make_tiny_checkpoint.py --family.

CORE = importlib.util.find_spec("bertjax.model.families") is not None
STEMS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
         "camembert": "Camembert", "distilbert": "DistilBert", "electra": "Electra",
         "albert": "Albert", "mpnet": "MPNet", "deberta-v2": "DebertaV2",
         "modernbert": "ModernBert"}
# make_tiny_checkpoint --head -> (export task, class suffix)
FAMILY_HEADS = {"model": ("model", "Model"), "mlm": ("mlm", "ForMaskedLM"),
                "classifier": ("classification", "ForSequenceClassification"),
                "tokens": ("tokens", "ForTokenClassification"),
                "pretraining": ("pretraining", "ForPreTraining")}
# family -> its config forms (make_tiny_checkpoint --variant; None: the family's only / first)
VARIANTS = {"deberta-v2": (None, "v2-xlarge")}
FAMILY_CASES = [pytest.param(f, h, v, marks=pytest.mark.skipif(
                    not CORE and f != "bert", reason="needs bertjax.model.families"),
                    id=f"{f}{'-' + v if v else ''}-{h}")
                for f in STEMS for v in VARIANTS.get(f, (None,)) for h in FAMILY_HEADS
                if h != "pretraining" or f in ("electra", "albert")]


def _family_inputs(tokenizer):
    batch = tokenizer(["The cat sat on the mat.", "a dog ran"], padding=True, return_tensors="np")
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}


@pytest.mark.parametrize(("family", "head", "variant"), FAMILY_CASES)
def test_family_round_trip(family, head, variant, family_checkpoint, tmp_path):
    """Each family (and config form) and head: bertjax.load -> save_transformers gives the
    matching class, every key in place, the source model's outputs exactly, the family's own
    config (transformers reads the same config back), and reads back into bertjax bit for bit."""
    src = family_checkpoint(family, head, seed=1, **({"variant": variant} if variant else {}))
    task, suffix = FAMILY_HEADS[head]
    name = STEMS[family] + suffix
    config, params = bertjax.load(src)
    if family == "modernbert" and head in ("classifier", "tokens"):  # one head form for both
        with pytest.raises(ValueError, match="give the task, 'classification' or 'tokens' "
                                             "\\(bertjax export --task\\): a modernbert "
                                             "classifier \\(head and classifier\\) serves "
                                             "ModernBertForSequenceClassification and"):
            infer_task(config, params)
    else:
        assert infer_task(config, params) == task
    out = bertjax.save_transformers(tmp_path / "hf", config, params, tokenizer_dir=src, task=task)
    cls = getattr(transformers, name)
    model, info = cls.from_pretrained(out, output_loading_info=True, attn_implementation="eager")
    assert all(not info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    source = cls.from_pretrained(src, attn_implementation="eager").eval()
    batch = {k: torch.tensor(v) for k, v in
             _family_inputs(transformers.AutoTokenizer.from_pretrained(out)).items()}
    with torch.no_grad():
        got, want = model.eval()(**batch), source(**batch)
    keys = {"model": ("last_hidden_state",), "pretraining": ("prediction_logits", "sop_logits")
            if family == "albert" else ("logits",)}.get(head, ("logits",))
    for key in keys:
        np.testing.assert_array_equal(getattr(got, key).numpy(), getattr(want, key).numpy())
    a, b = flatten(params), flatten(bertjax.load(out)[1])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if family in VARIANTS or family == "modernbert":  # the family's own config.json form
        ours, theirs = (transformers.AutoConfig.from_pretrained(f).to_dict() for f in (out, src))
        differ = {k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k)}
        assert differ == {"_name_or_path", "dtype"}, differ
    if head == "mlm":  # and bertjax's own logits (eager attention, padded batch)
        ours = bertjax.forward(params, batch["input_ids"].numpy(), config,
                               attention_mask=batch["attention_mask"].numpy(),
                               capture=("mlm.logits",)).acts["mlm.logits"]
        assert_close(f"{family} mlm.logits", ours, got.logits.numpy())


def test_modern_special_ids_without_a_tokenizer(family_checkpoint, tmp_path):
    """ModernBERT's cls/sep/bos/eos ids, which BertConfig does not keep, come from the exported
    tokenizer; without one they are None, not ModernBertConfig's ids of the real vocabulary."""
    src = family_checkpoint("modernbert", "mlm")
    config, params = bertjax.load(src)
    with open(os.path.join(src, "config.json")) as f:
        want = {k: v for k, v in json.load(f).items() if k in ("cls_token_id", "sep_token_id",
                                                                "bos_token_id", "eos_token_id")}
    assert len(want) == 4 and max(want.values()) < config.vocab_size
    for folder, tokenizer, ids in (("a", src, want), ("b", None, dict.fromkeys(want))):
        out = bertjax.save_transformers(tmp_path / folder, config, params, tokenizer_dir=tokenizer)
        with open(os.path.join(out, "config.json")) as f:
            written = json.load(f)
        assert {k: written[k] for k in want} == ids


def test_cli_export_of_a_modernbert_classifier_needs_its_task(family_checkpoint, tmp_path, capsys):
    """ModernBERT's sequence and token classifiers have one form: `bertjax export` refuses to
    guess, leaving nothing behind, and writes the class --task names."""
    src = family_checkpoint("modernbert", "tokens")
    converted = tmp_path / "jax"
    assert main(["convert", src, str(converted)]) == 0
    capsys.readouterr()
    assert main(["export", str(converted), str(tmp_path / "hf")]) == 2
    assert "give the task, 'classification' or 'tokens'" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["jax"]
    assert main(["export", str(converted), str(tmp_path / "hf"), "--task", "tokens"]) == 0
    assert "as ModernBertForTokenClassification" in capsys.readouterr().out
    _, info = transformers.AutoModelForTokenClassification.from_pretrained(
        tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
