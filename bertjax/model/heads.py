"""Heads on top of the encoder: the pooler, the MLM head, ELECTRA's discriminator, ALBERT's
sentence-order head, and the sequence and token classifiers of each family."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.checks import check_hidden
from bertjax.model.config import BertConfig
from bertjax.model.nn import activation, dense, dropout, last_axis, layer_norm, split, subtree
from bertjax.model.params import check_tree


def pooler(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
           capture=()) -> tuple[Float[Array, "B D"], dict]:
    """act(dense(hidden at [CLS])): tanh (BERT), DeBERTa's ContextPooler pooler_hidden_act.

    Args:
      params: the `pooler` subtree (or the full tree).
      hidden: float [B, S, D], the last layer's output.

    Returns:
      pooler.out, float [B, D], and the captured activations.
    """
    check_tree(subtree(params, "pooler"), config, "pooler")
    check_hidden(hidden, config)
    out = dense(subtree(params, "pooler")["dense"], jnp.asarray(hidden)[:, 0])  # [B, D]
    out = activation(config, out, config.pooler_act)
    taps = C.taps_for(capture, has_pooler=True)
    return taps(C.POOLER_OUT, out), taps.acts


def mlm_logits(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
               capture=()) -> tuple[Float[Array, "B S V"], dict]:
    """The MLM head: dense D -> E, the family's head activation (`config.head_act`), LayerNorm,
    then the decoder (tied to the word embeddings unless the tree has
    `cls/predictions/decoder/kernel`) plus `cls/predictions/bias`.

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
    x = activation(config, x, config.head_act)
    x = layer_norm(predictions["transform"]["LayerNorm"], x, config.layer_norm_eps)  # [B, S, E]
    if "decoder" in predictions:
        logits = jnp.einsum("BSE,EV->BSV", x, predictions["decoder"]["kernel"])
    else:
        logits = jnp.einsum("BSE,VE->BSV", x, params["embeddings"]["word_embeddings"]["embedding"])
    if "bias" in predictions:  # ModernBERT without decoder_bias has none
        logits = logits + last_axis(predictions["bias"], 3)  # [B, S, V]
    taps = C.taps_for(capture, has_mlm=True)
    return taps(C.MLM_LOGITS, logits), taps.acts


def disc_logits(params: dict, hidden: Float[ArrayLike, "B S D"],
                config: BertConfig) -> Float[Array, "B S"]:
    """ELECTRA's discriminator (`discriminator_predictions`): dense, hidden_act, dense to one
    replaced-token logit per position, [B, S, D] -> [B, S] (disc.logits)."""
    head = _head(params, "discriminator_predictions", "ELECTRA discriminator head")
    x = activation(config, dense(head["dense"], jnp.asarray(hidden)))  # [B, S, D]
    return dense(head["dense_prediction"], x)[..., 0]  # [B, S]


def sop_logits(params: dict, pooled: Float[ArrayLike, "B D"], config: BertConfig,
               rng: jax.Array | None = None) -> Float[Array, "B C"]:
    """ALBERT's sentence-order head (`sop_classifier`): dropout then a dense on the pooled
    output, [B, D] -> [B, C] (sop.logits, C = num_labels = 2 for the pretrained head)."""
    head = _head(params, "sop_classifier", "ALBERT sentence-order head")
    return dense(head, dropout(rng, jnp.asarray(pooled), _classifier_rate(config)))


def _head(params: dict, key: str, what: str) -> dict:
    if key not in params:
        raise ValueError(f"this model has no {what} (no {key} in the parameter tree)")
    return params[key]


def modernbert_pool(hidden: Float[ArrayLike, "B S D"], config: BertConfig,
                    attention_mask: ArrayLike | None = None) -> Float[Array, "B D"]:
    """ModernBERT's classifier pooling of the last hidden state: the first token ("cls") or the
    mean over tokens (attention_mask's 1s; "mean"), [B, S, D] -> [B, D]."""
    hidden = jnp.asarray(hidden)
    if config.classifier_pooling == "cls":
        return hidden[:, 0]
    B, S, _ = hidden.shape
    mask = jnp.ones((B, S), hidden.dtype) if attention_mask is None else \
        jnp.asarray(attention_mask).astype(hidden.dtype)
    return (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)


def _modernbert_head(head: dict, x: jax.Array, config: BertConfig) -> jax.Array:
    """ModernBERT's prediction head: LayerNorm(act(dense(x))), act = classifier_activation."""
    x = activation(config, dense(head["dense"], x), config.classifier_activation)
    return layer_norm(head["LayerNorm"], x, config.layer_norm_eps)


def classifier_logits(params: dict, features: Float[ArrayLike, "B D"] | Float[ArrayLike, "B S D"],
                      config: BertConfig, rng: jax.Array | None = None,
                      attention_mask: ArrayLike | None = None) -> Float[Array, "B C"]:
    """The sequence classification head of the tree's form, [B, C] (transformers' family
    `...ForSequenceClassification` heads, dropout where they have it):

    * `classifier/{kernel,bias}` (BERT, ALBERT): dropout, dense on the pooled output;
    * `classifier/{dense,out_proj}` (RoBERTa family, MPNet: tanh; ELECTRA: exact gelu): dropout,
      dense, activation, dropout, out_proj on the first token's hidden state;
    * `pre_classifier` + `classifier` (DistilBERT): pre_classifier, ReLU, dropout, classifier on
      the first token's hidden state;
    * `head` + `classifier` (ModernBERT): the head (dense, classifier_activation, LayerNorm) on
      the cls or mean pooling (`modernbert_pool`, which reads `attention_mask`), dropout,
      classifier.

    DeBERTa's sequence head is the first form with its ContextPooler as the pooler.

    Args:
      features: the pooled output [B, D] (`pooler_output`) for the first form; the last hidden
        state [B, S, D] (or its first token [B, D]) for the others. Given [B, S, D] with the first
        form, the tree's pooler is applied to it.
    """
    features = jnp.asarray(features)
    head = subtree(params, "classifier")
    if "head" in params:  # ModernBERT: pooled [B, D] (see `modernbert_pool`), head, classifier
        if features.ndim == 3:
            features = modernbert_pool(features, config, attention_mask)
        x = _modernbert_head(params["head"], features, config)
        return dense(head, dropout(rng, x, _classifier_rate(config)))
    if "dense" in head:
        r1, r2 = split(rng, 2)
        x = _first_token(features)
        x = dense(head["dense"], dropout(r1, x, _classifier_rate(config)))
        x = jnp.tanh(x) if config.classifier_kind != "dense_gelu" else activation(config, x, "gelu")
        return dense(head["out_proj"], dropout(r2, x, _classifier_rate(config)))
    if "pre_classifier" in params:
        x = jax.nn.relu(dense(params["pre_classifier"], _first_token(features)))
        return dense(head, dropout(rng, x, _classifier_rate(config)))
    if features.ndim == 3:
        if "pooler" not in params:
            raise ValueError(f"this {config.model_type} model's classifier is a token head "
                             f"(classifier/kernel without a pooler): use token_classifier_logits")
        features = pooler(params, features, config)[0]
    return dense(head, dropout(rng, features, _classifier_rate(config)))


def _first_token(features: jax.Array) -> jax.Array:
    """The first token's hidden state [B, D] of [B, S, D] (a [B, D] input as it is)."""
    return features[:, 0] if features.ndim == 3 else features


def token_classifier_logits(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
                            rng: jax.Array | None = None) -> Float[Array, "B S C"]:
    """Token classification head (transformers' ...ForTokenClassification of every family):
    dropout then the `classifier` dense at every position, [B, S, D] -> [B, S, C]."""
    head = subtree(params, "classifier")
    if "kernel" not in head:
        raise ValueError("the classifier is a sequence head (classifier/dense, out_proj): a token "
                         "head is classifier/{kernel,bias}")
    hidden = jnp.asarray(hidden)
    if "head" in params:  # ModernBERT's token head: head at every position, then classifier
        hidden = _modernbert_head(params["head"], hidden, config)
    return dense(head, dropout(rng, hidden, _classifier_rate(config)))


def _classifier_rate(config: BertConfig) -> float:
    """Dropout before a classifier: classifier_dropout, or hidden_dropout_prob when None."""
    return config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
