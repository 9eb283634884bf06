"""tables: token labels, attention tables (padding stripped, rows sum to 1), embedding and stats tables."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax
from bertjax.analysis.tables import (
    attention_table,
    check_index,
    embedding_table,
    example_attention,
    padded_keys,
    stats_table,
    token_labels,
    tokens_for,
)

TOKENS = ["[CLS]", "the", "cat", "saw", "the", "dog", "[SEP]"]
PADDED = ["[CLS]", "a", "cat", "[SEP]", "[PAD]", "[PAD]", "[PAD]"]  # example 1 of fake_probs


def fake_probs(L=2, B=2, N=3, S=7, pad_from=4, seed=0):
    """Random attention [L, B, N, S, T] whose row 1 is padded from `pad_from` (zero weight on
    padded keys, as the model gives), and its mask [B, S]."""
    rng = np.random.default_rng(seed)
    mask = np.ones((B, S), np.int32)
    mask[1, pad_from:] = 0
    logits = rng.normal(size=(L, B, N, S, S)) + np.where(mask == 1, 0.0, -np.inf)[None, :, None, None]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float32), mask


def test_token_labels_make_duplicates_unique():
    assert token_labels(TOKENS) == ["[CLS]", "the", "cat", "saw", "the₂", "dog", "[SEP]"]
    assert token_labels(["a"] * 12)[11] == "a₁₂"


def test_attention_table_one_head():
    probs, _ = fake_probs()
    table = attention_table(probs, TOKENS, layer=1, head=2)
    np.testing.assert_array_equal(table.to_numpy(), probs[1, 0, 2])
    assert list(table.columns) == token_labels(TOKENS) and list(table.index) == list(table.columns)
    assert table.loc["the₂", "cat"] == probs[1, 0, 2, 4, 2]


def test_attention_table_mean_over_heads_with_padding():
    probs, mask = fake_probs()
    table = attention_table(probs, PADDED, layer=0, batch=1, attention_mask=mask)
    assert table.shape == (4, 4) and list(table.index) == PADDED[:4]
    np.testing.assert_allclose(table.to_numpy(), probs[0, 1, :, :4, :4].mean(0), rtol=1e-6)
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=1e-5)
    # only the real tokens may be passed too
    same = attention_table(probs, PADDED[:4], layer=0, batch=1, attention_mask=mask)
    assert same.equals(table)
    # or every example's tokens, of which batch= picks the example's, with its mask row
    assert attention_table(probs, [TOKENS, PADDED], layer=0, batch=1, attention_mask=mask).equals(table)


def test_attention_table_one_example_and_negative_layer():
    probs, _ = fake_probs()
    assert attention_table(probs[:, 0], TOKENS, layer=-1, head=0).equals(
        attention_table(probs, TOKENS, layer=1, head=0))


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer=2), r"layer 2 is out of range: the model has 2 layers \(0..1"),
    (dict(layer=-3), "layer -3 is out of range"),
    (dict(head=3), "head 3 is out of range: the model has 3 heads"),
    (dict(batch=5), "batch 5 is out of range: the batch has 2 examples"),
])
def test_bad_indices(kwargs, match):
    probs, _ = fake_probs()
    with pytest.raises(ValueError, match=match):
        attention_table(probs, TOKENS, **kwargs)


def test_bad_shapes():
    probs, mask = fake_probs()
    with pytest.raises(ValueError, match=r"got 3 tokens for 7 positions \(7 real tokens\) of example 0: "
                                         r"pass that example's tokens, or the tokens of every example"):
        attention_table(probs, TOKENS[:3])
    with pytest.raises(ValueError, match=r"probs must be attn.probs with shape \[L, B, N, S, T\]"):
        attention_table(probs[0, 0, 0], TOKENS)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[B, S\] or \[S\] with S=7"):
        attention_table(probs, TOKENS, attention_mask=mask[:, :3])


@pytest.mark.parametrize("batch,tokens,mask", [
    (0, PADDED, True), (0, PADDED, False),  # example 1's tokens, example 0 shown: [PAD] at real
    (1, TOKENS, True), (1, TOKENS, False),  # example 0's tokens for example 1: words at padding
    (1, TOKENS[:5], True),                  # a count that is neither 7 nor 4
], ids=["pad-at-real-mask", "pad-at-real-no-mask", "words-at-padding-mask",
        "words-at-padding-no-mask", "wrong-count"])
def test_tokens_of_another_example_are_refused(batch, tokens, mask):
    """Never example 0's attention under another example's tokens: without a mask the padding is
    read from the keys that get no attention at all."""
    probs, m = fake_probs()
    with pytest.raises(ValueError, match=rf"(do not fit example {batch} |got 5 tokens for 7 "
                                         rf"positions \(4 real tokens\) of example 1)"):
        attention_table(probs, tokens, batch=batch, attention_mask=m if mask else None)
    with pytest.raises(ValueError, match=r"tokens holds 3 token lists for a batch of 2 examples"):
        attention_table(probs, [TOKENS, PADDED, TOKENS], batch=1)


def test_padded_keys_are_the_keys_nobody_attends_to():
    probs, mask = fake_probs()
    np.testing.assert_array_equal(padded_keys(probs[:, 1]), mask[1] == 0)
    assert not padded_keys(probs[:, 0]).any()
    assert not padded_keys(np.zeros((1, 1, 3, 3))).any()  # all zero (every head ablated): none


def test_example_attention_strips_padding():
    probs, mask = fake_probs()
    kept, tokens = example_attention(probs, PADDED, batch=1, attention_mask=mask)
    assert kept.shape == (2, 3, 4, 4) and tokens == PADDED[:4]
    assert check_index("head", -1, 3) == 2


def test_tokens_for():
    class Tok:
        def convert_ids_to_tokens(self, ids):
            return [f"t{i}" for i in ids]

    assert tokens_for(Tok(), np.array([3, 1])) == ["t3", "t1"]


@pytest.fixture(scope="module")
def embed_acts():
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(0), config, bertjax.Heads())
    ids, types, mask = tiny_inputs()
    return bertjax.forward(params, ids, config, types, mask, capture="embed.*").acts, mask


def test_embedding_table(embed_acts):
    acts, mask = embed_acts
    table = embedding_table(acts, PADDED, batch=1, attention_mask=mask)
    assert list(table.columns) == ["word", "position", "token_type", "sum", "normalized", "sum_error"]
    assert list(table.index) == PADDED[:4]
    with pytest.raises(ValueError, match="the tokens do not fit example 1"):
        embedding_table(acts, TOKENS, batch=1, attention_mask=mask)
    np.testing.assert_allclose(table["word"], np.linalg.norm(np.asarray(acts["embed.word"])[1, :4], axis=-1),
                               rtol=1e-6)
    assert (table["sum_error"] < 1e-6).all()
    # after LayerNorm with unit scale and zero bias every row has norm sqrt(D)
    np.testing.assert_allclose(table["normalized"], np.sqrt(TINY["hidden_size"]), rtol=1e-4)


def test_embedding_table_needs_every_part(embed_acts):
    acts, _ = embed_acts
    with pytest.raises(ValueError, match=r'needs embed.sum in acts \(capture="embed.\*"\)'):
        embedding_table({k: v for k, v in acts.items() if k != "embed.sum"}, TOKENS)


def test_stats_table():
    from bertjax.analysis.reductions import AttentionStats

    values = {name: np.arange(12, dtype=np.float32).reshape(2, 2, 3) + i
              for i, name in enumerate(["entropy", "to_cls", "to_sep", "to_self", "to_prev"])}
    stats = AttentionStats(rollout=None, **values)
    table = stats_table(stats)
    assert table.shape == (6, 5) and table.index.names == ["layer", "head"]
    assert table.loc[(1, 2), "entropy"] == (8 + 11) / 2
    assert stats_table(stats, batch=0).loc[(1, 0), "to_prev"] == 6 + 4


def test_missing_pandas_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    probs, _ = fake_probs()
    with pytest.raises(ImportError, match=r"need pandas: pip install 'bertjax\[analysis\]'"):
        attention_table(probs, TOKENS)
