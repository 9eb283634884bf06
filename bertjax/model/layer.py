"""One encoder layer: attention, first add & norm, feed-forward, second add & norm (post-LN BERT)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.attention import attention
from bertjax.model.checks import check_hidden
from bertjax.model.config import BertConfig
from bertjax.model.nn import activation, dense, dropout, split, tapped_layer_norm
from bertjax.model.params import check_tree


def feed_forward(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig, capture=(),
                 rng: jax.Array | None = None,
                 patch: dict | None = None) -> tuple[Float[Array, "B S D"], dict]:
    """Intermediate dense, activation, output dense (before the residual).

    Args:
      params: one layer's tree (uses `intermediate/dense` and `output/dense`).
      hidden: float [B, S, D], the first add & norm's output.

    Returns:
      mlp.out, float [B, S, D], and the captured mlp.pre / mlp.post ([B, S, I]) and mlp.out.
    """
    taps = C.taps_for(capture, patch)
    pre = dense(params["intermediate"]["dense"], hidden)  # [B, S, I] (GeGLU: [B, S, 2I])
    if config.glu_mlp:  # ModernBERT: the first half is activated, the second gates it
        pre, gate = jnp.split(pre, 2, axis=-1)  # [B, S, I] each
        gate = taps(C.MLP_GATE, gate)
    pre = taps(C.MLP_PRE, pre)
    post = taps(C.MLP_POST, activation(config, pre))  # [B, S, I]
    if config.glu_mlp:
        post = taps(C.MLP_GLU, post * gate)  # [B, S, I]
    out = dropout(rng, dense(params["output"]["dense"], post), config.hidden_dropout_prob)
    return taps(C.MLP_OUT, out), taps.acts


def encoder_layer(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
                  attention_mask: ArrayLike | None = None, capture=(),
                  rng: jax.Array | None = None,
                  head_mask: Float[ArrayLike, "N"] | None = None,
                  patch: dict | None = None,
                  edit: dict | None = None,
                  extra: Float[ArrayLike, "N S T"] | None = None,
                  positions: dict | None = None) -> tuple[Float[Array, "B S D"], dict]:
    """One post-LN encoder layer (BERT's, and that of every family of bertjax.model.families).

    Args:
      params: one layer's subtree (`encoder/layer/<i>`).
      hidden: float [B, S, D].
      attention_mask: [B, S] of 1 (token) / 0 (padding), or None.
      capture: any per-layer names (attn.*, mlp.*, layer.out), with one layer's shapes.
      rng: PRNG key for dropout; None for inference.
      head_mask: float [N] scaling each head's probabilities, or None.
      patch: name -> (new, mask) replacing activations of this layer (see `bertjax.model.capture.Taps`).
      edit: name -> (mul, add): the activation becomes value * mul + add (this layer's shapes).
      extra: float [N, S, T] added to every attention score before the padding mask (MPNet's
        `attn.rel_bias`), or None.
      positions: the family's position inputs of `attention` (rotary tables, the sliding-window
        flag, DeBERTa's relative embeddings), and for ModernBERT "first": a bool scalar, True at
        applied layer 0 (whose attention reads its input unnormalised).

    Returns:
      layer.out, float [B, S, D], and the captured activations.
    """
    taps = C.taps_for(capture, patch, edit=edit)
    # ModernBERT's layer 0 has no attention norm, the others have one: checked as layer 0's
    check_tree({k: v for k, v in params.items() if k != "attn_norm"}, config, "encoder/layer/0")
    check_hidden(hidden, config)
    hidden = jnp.asarray(hidden)
    if config.pre_norm:
        return _pre_norm_layer(params, hidden, config, attention_mask, taps, rng, head_mask,
                               positions or {})
    r_attn, r_hidden, r_mlp = split(rng, 3)
    # attn.out is tapped inside attention, before this dropout: identical at inference.
    attn_out, _ = attention(params["attention"], hidden, config, attention_mask, taps, r_attn,
                            head_mask, extra=extra, positions=positions)
    attn_out = dropout(r_hidden, attn_out, config.hidden_dropout_prob)
    resid = taps(C.ATTN_RESID, hidden + attn_out)
    normed = tapped_layer_norm(params["attention"]["output"]["LayerNorm"], resid,
                               config.layer_norm_eps, taps, C.ATTN_LN_STD)
    normed = taps(C.ATTN_NORM, normed)
    mlp_out, _ = feed_forward(params, normed, config, taps, r_mlp)
    mlp_resid = taps(C.MLP_RESID, normed + mlp_out)
    out = tapped_layer_norm(params["output"]["LayerNorm"], mlp_resid, config.layer_norm_eps, taps,
                            C.LAYER_LN_STD)
    return taps(C.LAYER_OUT, out), taps.acts


def _pre_norm_layer(params: dict, hidden: jax.Array, config: BertConfig, attention_mask,
                    taps: C.Taps, rng, head_mask, positions: dict) -> tuple[jax.Array, dict]:
    """ModernBERT's pre-norm layer: h = x + attn(attn_norm(x)) (no norm at layer 0), then
    y = h + mlp(mlp_norm(h)); attn.resid is h and mlp.resid = layer.out is y."""
    r_attn, r_hidden, r_mlp = split(rng, 3)
    eps = config.layer_norm_eps
    if "attn_norm" in params:
        normed = tapped_layer_norm(params["attn_norm"], hidden, eps, taps, C.ATTN_LN_STD)
        first = positions.get("first", False)
        normed = jnp.where(first, hidden, normed) if first is not False else normed
    else:  # a one-layer model: only layer 0, which has no attention norm
        normed = hidden
    normed = taps(C.ATTN_NORM_IN, normed)  # [B, S, D]
    attn_out, _ = attention(params["attention"], normed, config, attention_mask, taps, r_attn,
                            head_mask, positions=positions)
    attn_out = dropout(r_hidden, attn_out, config.hidden_dropout_prob)
    resid = taps(C.ATTN_RESID, hidden + attn_out)
    mlp_in = tapped_layer_norm(params["mlp_norm"], resid, eps, taps, C.MLP_LN_STD)
    mlp_out, _ = feed_forward(params, taps(C.MLP_NORM_IN, mlp_in), config, taps, r_mlp)
    out = taps(C.MLP_RESID, resid + mlp_out)
    return taps(C.LAYER_OUT, out), taps.acts
