"""A toy masked-language model for the notebooks that need an MLM head while offline.

No real MLM checkpoint ships offline (the default all-MiniLM-L6-v2 has no MLM head), so
`toy_mlm(folder)` builds one: a 2-layer BERT (4 heads, hidden 64) with a word-level vocabulary of
about 40 tokens, trained from scratch with `bertjax.train` for a few seconds on 36 template
sentences about countries and their capitals ("the capital of france is paris ."). Every position
of every sentence is masked in turn, so the model learns the templates and the country -> capital
pairs by heart. It is a toy: it knows nothing else, and its heads are whatever 100 Adam steps made
of them. The folder it writes (config.json, flax_model.msgpack, vocab.txt and the tokenizer files)
loads like any checkpoint with `bertjax.pretrained.load_pretrained(folder)`.

From the command line (an MLM for `bertjax fill-mask` with no hub at hand):
  python notebooks/toy_mlm.py toy-mlm
  bertjax fill-mask "The capital of France is [MASK]." --model toy-mlm
"""

from __future__ import annotations

import os

import jax
import numpy as np

import bertjax
from bertjax.model.params import Heads
from bertjax.training.train import IGNORE, init_state, make_optimizer, make_train_step

CAPITALS = {"france": "paris", "italy": "rome", "spain": "madrid", "germany": "berlin",
            "japan": "tokyo", "egypt": "cairo", "peru": "lima", "kenya": "nairobi",
            "canada": "ottawa", "china": "beijing", "russia": "moscow", "greece": "athens"}
TEMPLATES = ("the capital of {country} is {city} .", "{city} is the capital of {country} .",
             "{city} is a city in {country} .")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def sentences() -> list[str]:
    return [t.format(country=c, city=city) for c, city in CAPITALS.items() for t in TEMPLATES]


def _tokenizer(folder: str):
    import transformers

    words = sorted({w for s in sentences() for w in s.split()})
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(SPECIAL + words) + "\n")
    tokenizer = transformers.BertTokenizer(vocab=path)
    tokenizer.save_pretrained(folder)
    return tokenizer


def _examples(tokenizer) -> dict:
    """Every sentence with its country, then its city, masked; the label only at the mask."""
    encoded = tokenizer(sentences(), padding=True, return_tensors="np")
    ids, mask = encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)
    rows, labels = [], []
    names = set(tokenizer.convert_tokens_to_ids(list(CAPITALS) + list(CAPITALS.values())))
    for b, s in zip(*np.nonzero(mask)):
        if ids[b, s] not in names:
            continue
        row, label = ids[b].copy(), np.full_like(ids[b], IGNORE)
        row[s], label[s] = tokenizer.mask_token_id, ids[b, s]
        rows.append((row, mask[b]))
        labels.append(label)
    input_ids, attention_mask = (np.stack(x) for x in zip(*rows))
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "token_type_ids": np.zeros_like(input_ids), "labels": np.stack(labels)}


def toy_mlm(folder: str, steps: int = 100, seed: int = 0) -> str:
    """Builds, trains and saves the toy MLM in `folder` (replaced if it exists); returns it."""
    os.makedirs(folder, exist_ok=True)
    tokenizer = _tokenizer(folder)
    config = bertjax.BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=128,
                                max_position_embeddings=16)
    params = bertjax.init_params(jax.random.PRNGKey(seed), config, Heads(pooler=False, mlm=True))
    tx = make_optimizer(5e-3, weight_decay=0.0)
    step, state = make_train_step(config, "mlm", tx, dropout=False), init_state(params, tx, seed)
    batch = _examples(tokenizer)
    for _ in range(steps):
        state, metrics = step(state, batch)
    bertjax.save(folder, config, state.params, tokenizer_dir=folder, force=True)
    print(f"toy MLM: {len(batch['labels'])} masked examples, {steps} steps, "
          f"final loss {float(metrics['loss']):.3f}")
    return folder


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python notebooks/toy_mlm.py FOLDER  (writes the toy MLM there)")
    print(f"wrote {toy_mlm(sys.argv[1])}")
