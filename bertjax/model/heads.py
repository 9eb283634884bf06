"""Heads on top of the encoder: the pooler, the MLM head and the sequence and token classifiers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.checks import check_hidden
from bertjax.model.config import BertConfig
from bertjax.model.nn import activation, dense, dropout, last_axis, layer_norm, subtree
from bertjax.model.params import check_tree


def pooler(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
           capture=()) -> tuple[Float[Array, "B D"], dict]:
    """tanh(dense(hidden at [CLS])).

    Args:
      params: the `pooler` subtree (or the full tree).
      hidden: float [B, S, D], the last layer's output.

    Returns:
      pooler.out, float [B, D], and the captured activations.
    """
    check_tree(subtree(params, "pooler"), config, "pooler")
    check_hidden(hidden, config)
    out = jnp.tanh(dense(subtree(params, "pooler")["dense"], jnp.asarray(hidden)[:, 0]))  # [B, D]
    taps = C.taps_for(capture, has_pooler=True)
    return taps(C.POOLER_OUT, out), taps.acts


def mlm_logits(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
               capture=()) -> tuple[Float[Array, "B S V"], dict]:
    """The MLM head: dense, activation, LayerNorm, then the decoder (tied to the word embeddings
    unless the tree has `cls/predictions/decoder/kernel`) plus `cls/predictions/bias`.

    Args:
      params: the full tree (the head needs `cls` and, when tied, the word embeddings).
      hidden: float [B, S, D], the last layer's output.

    Returns:
      mlm.logits, float [B, S, V], and the captured activations.
    """
    if "cls" not in params:
        raise ValueError("this model has no MLM head (no cls/predictions in the parameter tree)")
    check_tree(params, config)
    check_hidden(hidden, config)
    predictions = params["cls"]["predictions"]
    x = dense(predictions["transform"]["dense"], hidden)
    x = activation(config, x)
    x = layer_norm(predictions["transform"]["LayerNorm"], x, config.layer_norm_eps)  # [B, S, D]
    if "decoder" in predictions:
        logits = jnp.einsum("BSD,DV->BSV", x, predictions["decoder"]["kernel"])
    else:
        logits = jnp.einsum("BSD,VD->BSV", x, params["embeddings"]["word_embeddings"]["embedding"])
    logits = logits + last_axis(predictions["bias"], 3)  # [B, S, V]
    taps = C.taps_for(capture, has_mlm=True)
    return taps(C.MLM_LOGITS, logits), taps.acts


def classifier_logits(params: dict, pooled: Float[ArrayLike, "B D"], config: BertConfig,
                      rng: jax.Array | None = None) -> Float[Array, "B C"]:
    """Sequence classification head: dropout then `classifier` dense, [B, D] -> [B, C]."""
    return dense(subtree(params, "classifier"), dropout(rng, pooled, _classifier_rate(config)))


def token_classifier_logits(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
                            rng: jax.Array | None = None) -> Float[Array, "B S C"]:
    """Token classification head (transformers' BertForTokenClassification): dropout then the
    `classifier` dense at every position, [B, S, D] -> [B, S, C]."""
    return dense(subtree(params, "classifier"), dropout(rng, hidden, _classifier_rate(config)))


def _classifier_rate(config: BertConfig) -> float:
    """Dropout before a classifier: classifier_dropout, or hidden_dropout_prob when None."""
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
