"""The embedding block: word + token type + position lookups, summed, then LayerNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.nn import dropout, subtree, tapped_layer_norm
from bertjax.model.params import check_tree


def embeddings(params: dict, input_ids: ArrayLike, config: BertConfig,
               token_type_ids: ArrayLike | None = None, position_ids: ArrayLike | None = None,
               capture=(), rng: jax.Array | None = None,
               patch: dict | None = None,
               edit: dict | None = None) -> tuple[Float[Array, "B S D"], dict]:
    """Embeds token ids.

    Args:
      params: the `embeddings` subtree (or the full tree).
      input_ids: int [B, S].
      token_type_ids: int [B, S]; zeros when None (as transformers).
      position_ids: int [B, S], [1, S] or [S]; 0 .. S-1 when None.
      capture: names among embed.word, embed.position, embed.token_type, embed.sum, embed.out.
      rng: PRNG key for hidden dropout; None for inference.
      patch: name -> (new, mask) replacing embed.* activations (see `bertjax.model.capture.Taps`).
      edit: name -> (mul, add) editing embed.* activations: value * mul + add.

    Returns:
      embed.out, float [B, S, D] in the parameters' dtype, and the captured activations.
    """
    taps = C.taps_for(capture, patch, edit=edit)
    params = subtree(params, "embeddings")
    check_tree(params, config, "embeddings")
    check_inputs(config, input_ids, token_type_ids, None, position_ids)
    input_ids = jnp.asarray(input_ids)
    token_type_ids = None if token_type_ids is None else jnp.asarray(token_type_ids)
    position_ids = None if position_ids is None else jnp.asarray(position_ids)
    B, S = input_ids.shape
    if token_type_ids is None:
        token_type_ids = jnp.zeros((B, S), jnp.int32)
    if position_ids is None:
        position_ids = jnp.arange(S, dtype=jnp.int32)
    word = params["word_embeddings"]["embedding"][input_ids]  # [B, S, D]
    # As torch's nn.Embedding(padding_idx=pad_token_id): the [PAD] row gets no gradient from the
    # lookup (values unchanged; the tied MLM decoder still trains it).
    is_pad = (input_ids == config.pad_token_id)[..., None]  # [B, S, 1]
    word = taps(C.EMBED_WORD, jnp.where(is_pad, jax.lax.stop_gradient(word), word))
    token_type = taps(C.EMBED_TOKEN_TYPE,
                      params["token_type_embeddings"]["embedding"][token_type_ids])  # [B, S, D]
    position = params["position_embeddings"]["embedding"][jnp.reshape(position_ids, (-1, S))]
    position = taps(C.EMBED_POSITION, jnp.broadcast_to(position, word.shape))  # [B, S, D]
    summed = taps(C.EMBED_SUM, (word + token_type) + position)  # transformers' order of addition
    out = tapped_layer_norm(params["LayerNorm"], summed, config.layer_norm_eps, taps,
                            C.EMBED_LN_STD)
    out = taps(C.EMBED_OUT, dropout(rng, out, config.hidden_dropout_prob))
    return out, taps.acts
