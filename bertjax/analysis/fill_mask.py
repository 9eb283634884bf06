"""`fill_mask`: the MLM head's top predictions for every mask token in a text.

The mask is the tokenizer's own (`[MASK]` for BERT, DistilBERT, ELECTRA and ALBERT, `<mask>` for
the RoBERTa family and MPNet); a text written with `[MASK]` for a model whose mask is another token
has its `[MASK]`s read as that token (`with_mask_token`), so one text serves every family.

The model runs once (`forward(..., capture="mlm.logits")`); the softmax and top-k over the
vocabulary run jitted on the logits of the masked positions only. Each `[MASK]` is filled on its
own: the other masks stay masked in the `sequence` of a result, as in transformers' fill-mask
pipeline.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from bertjax.model import capture as C
from bertjax.model.config import BertConfig
from bertjax.model.forward import forward
from bertjax.model.params import Heads


def check_mlm_head(params: dict, who: str = "fill-mask") -> None:
    """Raises ValueError unless the tree has an MLM head (`cls/predictions`); `who` needs it."""
    if not Heads.of(params).mlm:
        raise ValueError(f"this model has no MLM head (no cls/predictions in its parameters): "
                         f"{who} needs a model with its MLM head (a ...ForMaskedLM checkpoint, "
                         f"or BertForPreTraining, ElectraForMaskedLM, AlbertForPreTraining)")


@functools.partial(jax.jit, static_argnames=("top_k",))
def top_predictions(logits: Float[Array, "M V"],
                    top_k: int) -> tuple[Float[Array, "M K"], Int[Array, "M K"]]:
    """Softmax over the vocabulary (float32) and its `top_k` largest probabilities and their ids."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [M, V]
    scores, ids = jax.lax.top_k(probs, top_k)  # [M, K], [M, K]
    return scores, ids


def with_mask_token(tokenizer, text: str) -> str:
    """`text` with BERT's `[MASK]` written as the tokenizer's mask token (`<mask>` for the RoBERTa
    family and MPNet) when the text does not use that token already."""
    mask = tokenizer.mask_token
    if mask and mask != "[MASK]" and mask not in text:
        return text.replace("[MASK]", mask)
    return text


def _encode(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [1, S] of `text` and the positions of its mask tokens."""
    if tokenizer is None:
        raise ValueError("fill_mask needs a tokenizer: this model's folder has no tokenizer files "
                         "(vocab.txt or tokenizer.json)")
    text = with_mask_token(tokenizer, text)
    ids = np.asarray([tokenizer(text)["input_ids"]], np.int32)  # [1, S]
    positions = np.flatnonzero(ids[0] == tokenizer.mask_token_id)
    if positions.size == 0:
        raise ValueError(f"the text has no {tokenizer.mask_token} token to fill: {text!r}")
    return ids, positions


def _fill(tokenizer, ids: np.ndarray, position: int, token_id: int) -> str:
    """The text with the mask at `position` replaced by `token_id`; the text's own [CLS], [SEP]
    and [PAD] (<s>, </s>, <pad>, ...) are dropped, the prediction is always shown (even a special token)."""
    drop = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id}
    kept = [token_id if j == position else int(i) for j, i in enumerate(ids[0])
            if j == position or int(i) not in drop]
    return tokenizer.decode(kept)


def fill_mask(params: dict, config: BertConfig, tokenizer, text: str,
              top_k: int = 5) -> list[list[dict]]:
    """Top-k MLM predictions for each mask token of `text`.

    Args:
      params: a full parameter tree with an MLM head.
      config: its BertConfig.
      tokenizer: a transformers tokenizer for the model (`Pretrained.tokenizer`).
      text: a string with one or more mask tokens (the tokenizer's, e.g. `<mask>` for RoBERTa;
        `[MASK]` is read as the tokenizer's mask token too, see `with_mask_token`).
      top_k: how many predictions per mask, 1 .. vocab_size.

    Returns:
      one list per mask, in text order, of `top_k` dicts, most probable first:
      `token` (str), `id` (int), `score` (softmax probability over the vocabulary), `position`
      (index in the token sequence, [CLS] = 0) and `sequence` (the text with this mask filled,
      other masks left as they are, without [CLS] and [SEP]).

    Raises:
      ValueError: no MLM head, no tokenizer, no mask in the text, or top_k out of range.
    """
    check_mlm_head(params)
    if not 1 <= top_k <= config.vocab_size:
        raise ValueError(f"top_k must be in [1, vocab_size={config.vocab_size}], got {top_k}")
    ids, positions = _encode(tokenizer, text)
    logits = forward(params, ids, config, capture=(C.MLM_LOGITS,)).acts[C.MLM_LOGITS]  # [1, S, V]
    scores, top_ids = top_predictions(logits[0, positions], top_k)  # [M, K]
    scores, top_ids = np.asarray(scores), np.asarray(top_ids)
    return [[{"token": tokenizer.convert_ids_to_tokens(int(i)), "id": int(i), "score": float(p),
              "position": int(pos), "sequence": _fill(tokenizer, ids, int(pos), int(i))}
             for p, i in zip(scores[m], top_ids[m])]
            for m, pos in enumerate(positions)]
