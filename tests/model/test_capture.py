"""The capture mechanism: names, globs, "all", errors, and patch validation."""

from __future__ import annotations

import pytest

from bertjax.model import capture as C


def test_all_names_match_the_contract_table():
    assert len(C.ALL_NAMES) == 25 == len(set(C.ALL_NAMES))
    # 29 of BERT and the first families, 12 of DeBERTa and ModernBERT
    assert len(C.EVERY_NAME) == 41 == len(set(C.EVERY_NAME)) == len(C.SHAPES)


def test_all_follows_the_heads():
    assert C.resolve("all") == frozenset(C.ALL_NAMES)
    no_heads = C.resolve("all", has_pooler=False, has_mlm=False)
    assert C.POOLER_OUT not in no_heads and C.MLM_LOGITS not in no_heads
    assert len(no_heads) == 23


def test_globs_and_names():
    assert C.resolve("attn.*") == frozenset(C.ATTENTION_NAMES + (C.ATTN_RESID, C.ATTN_NORM,
                                                                  C.ATTN_LN_STD))
    assert C.resolve("*.ln_std") == frozenset(C.LN_STD_NAMES)
    assert C.resolve(("embed.out", "mlp.p*")) == {"embed.out", "mlp.pre", "mlp.post"}
    assert C.resolve(()) == frozenset() == C.resolve(None)


@pytest.mark.parametrize("bad", ["attn.prob", "nope.*", "layer_out"])
def test_unknown_name_lists_the_valid_ones(bad):
    with pytest.raises(ValueError, match=r"unknown activation name .* valid names: embed.word"):
        C.resolve(bad)


def test_missing_head_is_named():
    with pytest.raises(ValueError, match="this model has no MLM head"):
        C.resolve("mlm.logits", has_mlm=False)
    with pytest.raises(ValueError, match="this model has no pooler"):
        C.resolve(["pooler.out"], has_pooler=False)


def test_non_string_capture_entry():
    with pytest.raises(ValueError, match="capture entries must be strings"):
        C.resolve([1])


@pytest.mark.parametrize("patch,match", [
    ({"attn.nope": (0, 0)}, "unknown activation name 'attn.nope' in patch"),
    ({"mlm.logits": (0, 0)}, "is a model output and cannot be patched"),
    ({"attn.q": 0}, r"must be a \(new_values, mask\) pair"),
])
def test_patch_validation(patch, match):
    with pytest.raises(ValueError, match=match):
        C.check_patch(patch)
