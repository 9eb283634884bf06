"""Parity on the real all-MiniLM-L6-v2 weights (offline package) on a padded batch of sentences."""

from __future__ import annotations

import pytest
import transformers
from conftest import ATOL_REAL, RTOL_REAL, assert_close
from torch_ref import torch_activations

import bertjax

# Parity is checked on the programs users run: compiled with XLA's optimisations (conftest).
pytestmark = pytest.mark.optimized

SENTENCES = [
    "The cat sat on the mat.",
    "BERT reads the whole sentence at once, left and right context together.",
    "Paris is the capital of France.",
]


def test_minilm_every_activation(minilm_dir):
    config, params = bertjax.load(minilm_dir)
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(SENTENCES, ["A second segment.", "Another one here.", "Short."], padding=True,
                return_tensors="np")
    assert batch["attention_mask"].min() == 0 and batch["token_type_ids"].max() == 1
    model = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager")
    model.eval()
    want = torch_activations(model, batch["input_ids"], batch["token_type_ids"],
                             batch["attention_mask"])
    out = bertjax.forward(params, batch["input_ids"], config, batch["token_type_ids"],
                          batch["attention_mask"], capture="all")
    assert set(out.acts) == set(want)
    for name in sorted(want):
        assert_close(name, out.acts[name], want[name], ATOL_REAL, RTOL_REAL)
    assert_close("pooler_output", out.pooler_output, want["pooler.out"], ATOL_REAL, RTOL_REAL)
