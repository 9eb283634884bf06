"""The command line on every family's tiny offline folder (conversion/make_tiny_checkpoint.py
--family): `convert --verify` against the family's transformers class, `inspect` with the family's
special tokens, `fill-mask` with the family's mask token (and BERT's `[MASK]` read as it), and
`export` back to a folder transformers loads. In-process (`bertjax.commands.cli.main`), compiled
without XLA's optimisation passes (the suite's default, tests/conftest.py: compile time is the cost);
tests/commands/test_cli.py runs the installed command in a subprocess."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import transformers
from conftest import tiny_script

import bertjax
from bertjax.analysis.fill_mask import fill_mask
from bertjax.commands.cli import main

# Until the family model core (bertjax/model/families.py) is merged in, only BERT can run.
CORE = importlib.util.find_spec("bertjax.model.families") is not None
FAMILIES = [pytest.param(f, marks=pytest.mark.skipif(not CORE and f != "bert",
                                                    reason="needs bertjax.model.families"))
            for f in tiny_script().FAMILIES]
# The family's mask token, [CLS] and [SEP] as its tokenizer writes them.
SPECIALS = {"bert": ("[MASK]", "[CLS]", "[SEP]"), "distilbert": ("[MASK]", "[CLS]", "[SEP]"),
            "electra": ("[MASK]", "[CLS]", "[SEP]"), "albert": ("[MASK]", "[CLS]", "[SEP]"),
            "roberta": ("<mask>", "<s>", "</s>"), "xlm-roberta": ("<mask>", "<s>", "</s>"),
            "camembert": ("<mask>", "<s>", "</s>"), "mpnet": ("<mask>", "<s>", "</s>"),
            "deberta-v2": ("[MASK]", "[CLS]", "[SEP]"), "modernbert": ("[MASK]", "[CLS]", "[SEP]")}



@pytest.fixture(scope="module")
def converted(family_checkpoint, tmp_path_factory):
    """family -> (source folder, converted folder), converted (and verified) once each."""
    cache = {}

    def get(family):
        if family not in cache:
            src = family_checkpoint(family, "mlm")
            out = tmp_path_factory.mktemp(f"cli_{family}") / "jax"
            assert main(["convert", src, str(out), "--verify"]) == 0
            cache[family] = (src, str(out))
        return cache[family]

    return get


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_verify_inspect_fill_mask_export(family, converted, capsys, tmp_path):
    src, out = converted(family)
    mask, cls, sep = SPECIALS[family]
    assert "verify: OK" in capsys.readouterr().out
    assert main(["inspect", "the cat sat on the mat.", "--model", out]) == 0
    text = capsys.readouterr().out
    assert "tokens (" in text and f": {cls} " in text and f" {sep}\n" in text
    modern = ("deberta-v2", "modernbert")
    has = {"attn.rel_bias": family == "mpnet", "embed.proj": family in ("electra", "albert"),
           "embed.token_type": family not in ("distilbert", "mpnet", *modern),
           "embed.position": family not in modern, "attn.c2p": family == "deberta-v2",
           "attn.q_rot": family == "modernbert", "attn.norm": family != "modernbert"}
    assert {name: f"  {name} " in text for name in has} == has
    tokenizer = transformers.AutoTokenizer.from_pretrained(src)
    batch = tokenizer(f"the cat {mask} on the mat.", return_tensors="pt")
    at = batch["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    assert main(["fill-mask", f"the cat {mask} on the mat.", "--model", out, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"{mask} 1 of 1 (token position {at}):" and len(lines) == 5
    # transformers' own top prediction at the mask, and BERT's [MASK] read as the family's mask
    model = transformers.AutoModelForMaskedLM.from_pretrained(src).eval()
    with torch.no_grad():
        want = model(**batch).logits[0, at].argmax().item()
    config, params = bertjax.load(out)
    got = fill_mask(params, config, tokenizer, "the cat [MASK] on the mat.", top_k=1)
    assert got[0][0]["id"] == want and got[0][0]["position"] == at
    assert main(["export", out, str(tmp_path / "hf")]) == 0
    back = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        np.testing.assert_allclose(back(**batch).logits.numpy(), model(**batch).logits.numpy(),
                                   atol=1e-5, rtol=0)
