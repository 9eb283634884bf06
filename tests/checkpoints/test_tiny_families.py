"""conversion/make_tiny_checkpoint.py --family: a tiny random model of every family with a real
tokenizer of its kind, built offline, that transformers loads (tokenizer and model) with the
family's special tokens at the family's ids and vocab_size equal to the tokenizer's size."""

from __future__ import annotations

import json
import os

import pytest
import transformers
from conftest import tiny_script

import bertjax

SCRIPT = tiny_script()
TEXT = "The cat sat on the mat, it was tired."  # 12 WordPiece tokens: fits BERT's 13 positions
# family -> (tokenizer model type in tokenizer.json, mask token, {special token: id})
KINDS = {
    "bert": ("WordPiece", "[MASK]", {"[PAD]": 0, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}),
    "distilbert": ("WordPiece", "[MASK]", {"[PAD]": 0, "[CLS]": 2, "[SEP]": 3}),
    "electra": ("WordPiece", "[MASK]", {"[PAD]": 0, "[CLS]": 2, "[SEP]": 3}),
    "mpnet": ("WordPiece", "<mask>", {"<s>": 0, "<pad>": 1, "</s>": 2}),
    "roberta": ("BPE", "<mask>", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}),
    "xlm-roberta": ("Unigram", "<mask>", {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}),
    "camembert": ("Unigram", "<mask>", {"<pad>": 1, "<unk>": 3, "<s>": 5, "</s>": 6}),
    "albert": ("Unigram", "[MASK]", {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}),
    "deberta-v2": ("Unigram", "[MASK]", {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3}),
    # ModernBERT's specials follow the byte-level pieces: their ids are the config's (below)
    "modernbert": ("BPE", "[MASK]", {}),
}


def test_every_family_is_listed():
    assert set(KINDS) == set(SCRIPT.FAMILIES)


@pytest.mark.parametrize("family", list(KINDS))
def test_family_folder_loads_offline(family, family_checkpoint):
    folder = family_checkpoint(family)
    kind, mask, specials = KINDS[family]
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        assert json.load(f)["model"]["type"] == kind
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["model_type"] == family and config["vocab_size"] == len(tokenizer)
    assert tokenizer.mask_token == mask
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in specials} == specials
    assert config["pad_token_id"] == tokenizer.pad_token_id
    if family == "modernbert":  # [UNK] [CLS] [SEP] [PAD] [MASK] last, at the config's ids
        assert [tokenizer.convert_ids_to_tokens(config[f"{t}_token_id"]) for t in
                ("cls", "sep", "pad", "bos", "eos")] == ["[CLS]", "[SEP]", "[PAD]", "[CLS]", "[SEP]"]
        assert tokenizer.convert_tokens_to_ids(["[UNK]", "[MASK]"]) == [len(tokenizer) - 5,
                                                                        len(tokenizer) - 1]
    ids = tokenizer(TEXT)["input_ids"]
    assert bertjax.tokenizer_for(folder)(TEXT)["input_ids"] == ids  # what load / the CLI use
    assert tokenizer.unk_token_id not in ids and len(ids) <= tokenizer.model_max_length
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    expected = TEXT.lower() if kind == "WordPiece" or family == "albert" else TEXT
    assert tokenizer.decode(ids, skip_special_tokens=True) == expected
    masked = tokenizer(f"The cat {mask} on the mat.")["input_ids"]
    assert masked.count(tokenizer.mask_token_id) == 1
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.vocab_size == len(tokenizer)


def test_deberta_variants(family_checkpoint, tmp_path):
    """DeBERTa-v2's two config forms: v3 (the default) and --variant v2-xlarge; the variant of a
    family without any is refused, naming the families that have them."""
    with open(os.path.join(family_checkpoint("deberta-v2"), "config.json")) as f:
        v3 = json.load(f)
    folder = family_checkpoint("deberta-v2", "mlm", variant="v2-xlarge")
    with open(os.path.join(folder, "config.json")) as f:
        xl = json.load(f)
    assert (v3["share_att_key"], v3["position_biased_input"], v3.get("conv_kernel_size", 0),
            v3["legacy"]) == (True, False, 0, False)
    assert (xl["share_att_key"], xl["position_biased_input"], xl["conv_kernel_size"],
            xl["legacy"], xl["embedding_size"], xl["type_vocab_size"]) == (False, True, 3, True,
                                                                            19, 2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert type(tokenizer).__name__ == "DebertaV2Tokenizer" and len(tokenizer) == xl["vocab_size"]
    with pytest.raises(ValueError, match="--variant 'v2-xlarge' is not a variant of modernbert: "
                                         "only deberta-v2 has variants"):
        SCRIPT.build_family(str(tmp_path / "m"), "modernbert", variant="v2-xlarge")
    with pytest.raises(ValueError, match="--variant 'xl' is not a variant of deberta-v2: "
                                         "deberta-v2's are v3, v2-xlarge"):
        SCRIPT.build_family(str(tmp_path / "d"), "deberta-v2", variant="xl")


def test_family_folders_are_the_same_on_every_run(tmp_path):
    a = SCRIPT.build_family(str(tmp_path / "a"), "xlm-roberta", "classifier", seed=1)
    b = SCRIPT.build_family(str(tmp_path / "b"), "xlm-roberta", "classifier", seed=1)
    for name in ("tokenizer.json", "model.safetensors"):
        with open(os.path.join(a, name), "rb") as f, open(os.path.join(b, name), "rb") as g:
            assert f.read() == g.read(), name


def test_script_cli_heads_and_refusals(tmp_path, capsys):
    assert SCRIPT.main([str(tmp_path / "e"), "--family", "electra", "--head", "pretraining"]) == 0
    assert "wrote a tiny electra (pretraining)" in capsys.readouterr().out
    with open(tmp_path / "e" / "config.json") as f:
        assert json.load(f)["architectures"] == ["ElectraForPreTraining"]
    assert SCRIPT.main([str(tmp_path / "t"), "--family", "mpnet", "--head", "tokens"]) == 0
    with pytest.raises(SystemExit):
        SCRIPT.main([str(tmp_path / "r"), "--family", "roberta", "--head", "pretraining"])
    assert "roberta has no ForPreTraining class" in capsys.readouterr().err
    with pytest.raises(ValueError, match="family must be one of bert, roberta"):
        SCRIPT.build_family(str(tmp_path / "x"), "gpt2")
