"""The embedding block: word + token type + position lookups, summed, LayerNorm, then the
family's E -> D projection where it has one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.nn import dense, dropout, subtree, tapped_layer_norm
from bertjax.model.params import check_tree


def embeddings(params: dict, input_ids: ArrayLike, config: BertConfig,
               token_type_ids: ArrayLike | None = None, position_ids: ArrayLike | None = None,
               capture=(), rng: jax.Array | None = None,
               patch: dict | None = None,
               edit: dict | None = None,
               attention_mask: ArrayLike | None = None) -> tuple[Float[Array, "B S D"], dict]:
    """Embeds token ids: the encoder's input.

    Args:
      params: the `embeddings` subtree (or the full tree).
      input_ids: int [B, S].
      token_type_ids: int [B, S]; zeros when None (as transformers); must be None for a family
        without token types (DistilBERT, MPNet).
      position_ids: int [B, S], [1, S] or [S]; when None 0 .. S-1, or for the RoBERTa family and
        MPNet the padding-aware ids transformers makes (`default_positions`).
      capture: names among embed.word, embed.position, embed.token_type, embed.sum, embed.out,
        embed.ln_std, embed.proj (the family's own: `bertjax.model.capture.model_names`).
      rng: PRNG key for hidden dropout; None for inference.
      patch: name -> (new, mask) replacing embed.* activations (see `bertjax.model.capture.Taps`).
      edit: name -> (mul, add) editing embed.* activations: value * mul + add.
      attention_mask: [B, S] of 1 / 0; DeBERTa zeroes embed.out at its padding (the others
        ignore it).

    Returns:
      float [B, S, D] in the parameters' dtype: embed.out, or embed.proj (its E -> D projection)
      where the family has one; and the captured activations (embed.* E-wide).
    """
    taps = C.taps_for(capture, patch, edit=edit, config=config)
    params = subtree(params, "embeddings")
    check_tree(params, config, "embeddings")
    check_inputs(config, input_ids, token_type_ids, None, position_ids)
    input_ids = jnp.asarray(input_ids)
    B, S = input_ids.shape
    if config.has_token_types:
        token_type_ids = (jnp.zeros((B, S), jnp.int32) if token_type_ids is None
                          else jnp.asarray(token_type_ids))
    position_ids = (default_positions(input_ids, config) if position_ids is None
                    else jnp.asarray(position_ids))
    word = params["word_embeddings"]["embedding"][input_ids]  # [B, S, E]
    # As torch's nn.Embedding(padding_idx=pad_token_id): the [PAD] row gets no gradient from the
    # lookup (values unchanged; the tied MLM decoder still trains it).
    is_pad = (input_ids == config.pad_token_id)[..., None]  # [B, S, 1]
    word = taps(C.EMBED_WORD, jnp.where(is_pad, jax.lax.stop_gradient(word), word))
    summed = _summed(params, word, config, taps, token_type_ids, position_ids) \
        if config.has_embed_sum else word  # [B, S, E]
    if config.projection_before_norm and config.has_projection:  # DeBERTa: E -> D, then norm
        summed = taps(C.EMBED_PROJ, dense(params["project"], summed))  # [B, S, D]
    out = tapped_layer_norm(params["LayerNorm"], summed, config.layer_norm_eps, taps,
                            C.EMBED_LN_STD)
    if config.masks_queries:  # DeBERTa zeroes the padded rows
        mask = jnp.ones((B, S)) if attention_mask is None else jnp.asarray(attention_mask)
        out = out * mask[..., None].astype(out.dtype)
    out = taps(C.EMBED_OUT, dropout(rng, out, config.hidden_dropout_prob))  # [B, S, E]
    if config.has_projection and not config.projection_before_norm:
        out = taps(C.EMBED_PROJ, dense(params["project"], out))  # [B, S, D]
    return out, taps.acts


def _summed(params: dict, word: jax.Array, config: BertConfig, taps: C.Taps,
            token_type_ids, position_ids) -> jax.Array:
    """embed.sum: the word lookup plus the position and token type lookups the family has, in
    transformers' order of addition: (word + token type) + position, DeBERTa's
    (word + position) + token type. [B, S, E]."""
    B, S = word.shape[:2]
    if config.has_token_types:
        token_type = taps(C.EMBED_TOKEN_TYPE,
                          params["token_type_embeddings"]["embedding"][token_type_ids])  # [B, S, E]
    if config.has_position_table:
        position = params["position_embeddings"]["embedding"][jnp.reshape(position_ids, (-1, S))]
        if config.padding_aware_positions:  # nn.Embedding(padding_idx=pad): no gradient there
            at_pad = (jnp.reshape(position_ids, (-1, S)) == config.position_pad_id)[..., None]
            position = jnp.where(at_pad, jax.lax.stop_gradient(position), position)
        position = taps(C.EMBED_POSITION, jnp.broadcast_to(position, word.shape))  # [B, S, E]
    if config.model_type == "deberta-v2":
        summed = word + position if config.has_position_table else word
        summed = summed + token_type if config.has_token_types else summed
    else:
        summed = (word + token_type) + position if config.has_token_types else word + position
    return taps(C.EMBED_SUM, summed)


def default_positions(input_ids: jax.Array, config: BertConfig) -> jax.Array:
    """The position ids transformers makes when none are given: 0 .. S-1 ([S]), or for the
    RoBERTa family and MPNet `cumsum(ids != pad) * (ids != pad) + pad` ([B, S]) with pad =
    `config.position_pad_id`: tokens count from pad + 1, padding sits at pad."""
    S = input_ids.shape[1]
    if not config.padding_aware_positions:
        return jnp.arange(S, dtype=jnp.int32)
    pad = config.position_pad_id
    real = (input_ids != pad).astype(jnp.int32)  # [B, S]
    return jnp.cumsum(real, axis=1, dtype=jnp.int32) * real + pad  # [B, S]
