"""`sentence_features`: word-level features of pre-split sentences (e.g. a CoNLL-U file's), every
layer at once: the extract path of probing.

The words go to the tokenizer with `is_split_into_words=True`, the model runs in length-bucketed
batches capturing `embed.out` and `layer.out`, and `word_features` pools each example's tokens to
its words. Layer 0 is the embeddings' output and layer l the output of encoder layer l, as in
transformers' `hidden_states` and the probing papers (13 layers for BERT-base).
"""

from __future__ import annotations

import numpy as np

from bertjax.model.forward import forward
from bertjax.probing.words import word_features

BUCKET = 16  # sequences padded to a multiple of this: few shapes, few compilations


def _encode(tokenizer, sentences, max_length: int):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("sentence_features needs a fast tokenizer (one with word_ids()): load it "
                         "with transformers.AutoTokenizer.from_pretrained(..., use_fast=True)")
    enc = tokenizer([list(s) for s in sentences], is_split_into_words=True, truncation=False)
    ids, word_ids = enc["input_ids"], [enc.word_ids(i) for i in range(len(sentences))]
    for i, row in enumerate(ids):
        if len(row) > max_length:
            raise ValueError(f"sentence {i} is {len(row)} tokens long, over the model's "
                             f"{max_length}: drop or split it before probing")
    return ids, word_ids


def sentence_features(params: dict, config, tokenizer, sentences, *, pool: str = "first",
                      batch_size: int = 32, progress: bool = False) -> list[np.ndarray]:
    """Every layer's word features for each sentence.

    Args:
      params, config: the model (`bertjax.load`).
      tokenizer: a fast transformers tokenizer (`bertjax.tokenizer_for(model)`).
      sentences: lists of words (e.g. `[s.words for s in read_conllu(path)]`).
      pool: "first", "mean" or "last" piece of each word (`word_features`).
      batch_size: sentences per forward pass.
      progress: show a tqdm bar.

    Returns:
      one float32 [L + 1, W_i, D] array per sentence, in input order.
    """
    ids, word_ids = _encode(tokenizer, sentences, config.max_position_embeddings)
    order = np.argsort([len(r) for r in ids], kind="stable")  # similar lengths batch together
    out: list = [None] * len(sentences)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sentences), desc="features", unit="sent")
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        S = min(-(-max(len(ids[i]) for i in rows) // BUCKET) * BUCKET,
                config.max_position_embeddings)
        input_ids = np.full((batch_size, S), pad, np.int32)
        mask = np.zeros((batch_size, S), np.int32)
        for r, i in enumerate(rows):
            input_ids[r, :len(ids[i])], mask[r, :len(ids[i])] = ids[i], 1
        mask[len(rows):, 0] = 1  # padded rows attend to something
        res = forward(params, input_ids, config, attention_mask=mask,
                      capture=("embed.out", "layer.out"))
        acts = np.concatenate([np.asarray(res.acts["embed.out"])[None],
                               np.asarray(res.acts["layer.out"])])  # [L + 1, B, S, D]
        for r, i in enumerate(rows):
            n = len(ids[i])
            out[i] = word_features(acts[:, r, :n], word_ids[i], pool)
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    return out
