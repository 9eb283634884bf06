"""MLM logit attribution: one masked position's logit for one token, split into exact parts.

BERT is post-LN: every residual stream is normalised after each add. Each LayerNorm becomes affine
once its run-time mean and std are frozen: LN(x) = (x - mean(x)) * gamma / std + beta, linear in x.
The MLM head's activation is frozen the same way, as its gate act(x) / x at the run's value
(exact for gelu, relu and silu, which are x times a gate). With everything frozen the logit is an
affine function of what each part writes into the residual stream at that position, so

  logit = embed.word + embed.position + embed.token_type                 (the embedding sum)
        + sum over layers l and heads n of  L{l}.H{n}                     (attn.head_out)
        + sum over layers of  L{l}.attn_bias + L{l}.mlp                   (output bias, mlp.out)
        + bias                       (every LayerNorm beta, the head's dense bias, decoder bias)

exactly up to float error. `mlp.out` includes its output dense bias. Every family splits the same
way: without `embed.token_type` where it has none (DistilBERT, MPNet), through the E -> D
projection (`embed.proj`, ELECTRA and ALBERT; its bias goes to "bias"), with ALBERT's parts per
applied layer, and through the family's MLM head activation (`config.head_act`). Attention and MLP inputs are
not followed: a head's part is what it writes at this position (its direct effect on the logit),
however it computed it from earlier positions.

The parts are computed backwards, as in a gradient: the readout direction (the decoder column of
the token) is pulled back through the head and each frozen LayerNorm, x . u -> x . centre(gamma /
std * u), and each part is the dot product of what it writes with the direction where it enters.

The frozen-scale assumption is explicit and checkable. The stds are the run's own `embed.ln_std`,
`attn.ln_std` and `layer.ln_std` (captured, not recomputed), returned in `Attribution.ln_std`;
`Attribution.check()` raises unless the parts add up to the logit. With `ln_std=` the scales are
frozen at given values (e.g. a clean run's, for a corrupted input): the forward then runs with
`edit={name: (0, std)}`, so `logit` is the logit of the model whose LayerNorms divide by those
stds, and the parts split that logit exactly. Feeding a run's own stds back the same way
(`forward(..., edit={"attn.ln_std": (0.0, std), ...})`) leaves its logits unchanged: with the
scales held constant the model is the affine function the parts decompose. (The MLM head's own
LayerNorm, which has no activation name, is frozen at its input as computed in the run.)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.analysis.fill_mask import check_mlm_head
from bertjax.model import capture as C
from bertjax.model.config import BertConfig
from bertjax.model.encoder import stack_layers
from bertjax.model.forward import forward
from bertjax.model.nn import activation, dense

# What `logit_parts` reads from a forward run (BERT's; `needed` gives each family's).
NEEDED = (C.EMBED_WORD, C.EMBED_POSITION, C.EMBED_TOKEN_TYPE, C.ATTN_HEAD_OUT, C.MLP_OUT,
          C.LAYER_OUT, C.MLM_LOGITS) + C.LN_STD_NAMES
EMBED_PARTS = (C.EMBED_WORD, C.EMBED_POSITION, C.EMBED_TOKEN_TYPE)
# ModernBERT (pre-norm): the residual stream is embed.out plus every attn.out and mlp.out, read
# through the final norm; the frozen scales are the embedding norm's and the final norm's.
PRE_NORM_NEEDED = (C.EMBED_WORD, C.ATTN_HEAD_OUT, C.MLP_OUT, C.FINAL_OUT, C.MLM_LOGITS,
                   C.EMBED_LN_STD, C.FINAL_LN_STD)
PRE_NORM_SCALES = (C.EMBED_LN_STD, C.FINAL_LN_STD)


def needed(config: BertConfig) -> tuple[str, ...]:
    """The names `logit_parts` reads for this model (the embedding parts its family has)."""
    have = set(C.model_names(config, has_mlm=True))
    names = PRE_NORM_NEEDED if config.pre_norm else NEEDED
    return tuple(n for n in names if n in have)


def scale_names(config: BertConfig) -> tuple[str, ...]:
    """The LayerNorm scales a split freezes (what `ln_std=` may give)."""
    return PRE_NORM_SCALES if config.pre_norm else C.LN_STD_NAMES


def check_attributable(config: BertConfig) -> None:
    """Raises ValueError, one line naming the reason, where the split is not implemented."""
    if config.conv_kernel_size:
        raise ValueError("logit_attribution does not follow DeBERTa's ConvLayer (conv_kernel_size"
                         f"={config.conv_kernel_size}): its convolution of the embeddings joins "
                         "layer 0's output before a LayerNorm")


def embed_parts(config: BertConfig) -> tuple[str, ...]:
    """The embedding parts of the model's split: no embed.token_type for DistilBERT and MPNet."""
    return tuple(n for n in EMBED_PARTS if n != C.EMBED_TOKEN_TYPE or config.has_token_types)


def through_norm(params: dict, std: Float[ArrayLike, ""],
                 u: Float[Array, "D"]) -> tuple[Float[Array, "D"], Float[Array, ""]]:
    """Pulls a readout direction back through a LayerNorm frozen at the scale `std`.

    LN(x) . u = x . centre(gamma / std * u) + beta . u, with std = sqrt(var + eps) held fixed
    (a `*.ln_std` value).

    Returns:
      the direction at the LayerNorm's input, float32 [D], and beta . u (its bias part).
    """
    v = params["scale"].astype(jnp.float32) / jnp.asarray(std, jnp.float32) * u  # [D]
    bias = jnp.dot(params["bias"].astype(jnp.float32), u) if "bias" in params else jnp.float32(0)
    return v - jnp.mean(v), bias


def _through_head(params: dict, config: BertConfig, hidden: Float[Array, "D"],
                  token: ArrayLike) -> tuple[Float[Array, "D"], Float[Array, ""]]:
    """The direction at the last layer's output whose dot product gives the token's logit,
    minus the head's bias part (returned second): dense, frozen activation gate, frozen LN."""
    predictions = params["cls"]["predictions"]
    if "decoder" in predictions:
        readout = predictions["decoder"]["kernel"][:, token]  # [D]
    else:
        readout = params["embeddings"]["word_embeddings"]["embedding"][token]  # [D]
    transform = predictions["transform"]
    pre = dense(transform["dense"], hidden).astype(jnp.float32)  # [D]
    post = activation(config, pre, config.head_act)
    std = jnp.sqrt(jnp.var(post) + config.layer_norm_eps)  # the head's LayerNorm, frozen here
    u, bias = through_norm(transform["LayerNorm"], std, readout.astype(jnp.float32))
    gate = jnp.where(pre != 0, post / jnp.where(pre != 0, pre, 1.0), 0.0)  # act(x) = gate * x
    u = gate * u
    if "bias" in predictions:  # ModernBERT without decoder_bias has none
        bias = bias + predictions["bias"][token]
    if "bias" in transform["dense"]:
        bias = bias + jnp.dot(transform["dense"]["bias"], u)
    return transform["dense"]["kernel"].astype(jnp.float32) @ u, bias  # [D]


def _through_layers(layers: dict, acts: dict, config: BertConfig,
                    u: Float[Array, "D"]) -> tuple[Float[Array, "D"], dict]:
    """Reverse scan over the layers; `acts` holds one position's per-layer activations.

    Returns:
      the direction at embed.out, and per layer: heads [L, N], attn_bias [L], mlp [L], bias [L].
    """
    def step(u, x):  # u: the direction at this layer's output
        u, out_bias = through_norm(x["out_norm"], x[C.LAYER_LN_STD], u)
        mlp = jnp.dot(x[C.MLP_OUT].astype(jnp.float32), u)
        u, attn_bias_norm = through_norm(x["attn_norm"], x[C.ATTN_LN_STD], u)
        heads = x[C.ATTN_HEAD_OUT].astype(jnp.float32) @ u  # [N, D] @ [D] -> [N]
        attn_bias = jnp.dot(x["attn_bias"].astype(jnp.float32), u)
        return u, {"heads": heads, "attn_bias": attn_bias, "mlp": mlp,
                   "bias": out_bias + attn_bias_norm}

    xs = {**acts, "out_norm": layers["output"]["LayerNorm"],
          "attn_norm": layers["attention"]["output"]["LayerNorm"],
          "attn_bias": layers["attention"]["output"]["dense"]["bias"]}
    return jax.lax.scan(step, u, xs, reverse=True)


@functools.partial(jax.jit, static_argnames=("config",))
def logit_parts(params: dict, acts: dict, config: BertConfig, batch: ArrayLike,
                position: ArrayLike, token: ArrayLike) -> dict:
    """The exact split of one logit (jitted; batch, position and token are data, not static).

    Args:
      params: the full tree with an MLM head.
      acts: a forward run's activations with at least the names in `NEEDED`.
      batch, position, token: int scalars: the row, the (masked) position and the token id.

    Returns:
      float32 arrays: "embed.word", "embed.position", "embed.token_type", "bias" and "logit" (the
      model's own logit) as scalars, "heads" [L, N], "attn_bias" [L] and "mlp" [L], and the
      frozen scales used: "embed.ln_std" (a scalar), "attn.ln_std" and "layer.ln_std" ([L]).
    """
    if config.pre_norm:
        return _pre_norm_parts(params, acts, config, batch, position, token)
    at = {name: acts[name][:, batch, ..., position, :]  # per-layer [L, (N,) D]
          for name in (C.ATTN_HEAD_OUT, C.MLP_OUT)}
    scales = {name: acts[name][..., batch, position] for name in C.LN_STD_NAMES}  # [L] or []
    at.update({name: scales[name] for name in (C.ATTN_LN_STD, C.LAYER_LN_STD)})
    last = acts[C.LAYER_OUT][-1, batch, position]  # [D]
    u, head_bias = _through_head(params, config, last, token)
    layers = stack_layers(params["encoder"])["layer"]
    if config.layer_map is not None:  # ALBERT: each applied layer's shared weights
        index = jnp.asarray(config.layer_map)
        layers = jax.tree_util.tree_map(lambda x: x[index], layers)
    u, per_layer = _through_layers(layers, at, config, u)
    project = None if config.projection_before_norm else params["embeddings"].get("project")
    project_bias = 0.0
    if project is not None:  # ELECTRA (E != D), ALBERT: embed.proj = project(embed.out)
        project_bias = jnp.dot(project["bias"].astype(jnp.float32), u)
        u = project["kernel"].astype(jnp.float32) @ u  # [E, D] @ [D] -> [E]
    u, embed_bias = through_norm(params["embeddings"]["LayerNorm"], scales[C.EMBED_LN_STD], u)
    if config.projection_before_norm and config.has_projection:  # DeBERTa: E -> D before it
        u = params["embeddings"]["project"]["kernel"].astype(jnp.float32) @ u  # [E]
    parts = {name: jnp.dot(acts[name][batch, position].astype(jnp.float32), u)
             for name in embed_parts(config) if name in acts}
    bias = head_bias + jnp.sum(per_layer.pop("bias")) + embed_bias + project_bias
    logit = acts[C.MLM_LOGITS][batch, position, token].astype(jnp.float32)
    return {**parts, **per_layer, "bias": bias, "logit": logit, **scales}


def _pre_norm_parts(params: dict, acts: dict, config: BertConfig, batch, position,
                    token) -> dict:
    """`logit_parts` for ModernBERT: the residual stream at the position is embed.out plus each
    layer's attn.out (the sum of its heads, and the output bias where there is one) and mlp.out;
    the readout goes back through the head and the final norm (frozen at final.ln_std), and
    embed.out back through the embedding norm (frozen at embed.ln_std) to embed.word."""
    last = acts[C.FINAL_OUT][batch, position]  # [D]
    u, head_bias = _through_head(params, config, last, token)
    final = params["encoder"]["final_norm"]
    u, final_bias = through_norm(final, acts[C.FINAL_LN_STD][batch, position], u)
    heads = jnp.einsum("LND,D->LN", acts[C.ATTN_HEAD_OUT][:, batch, :, position].astype(
        jnp.float32), u)
    mlp = jnp.einsum("LD,D->L", acts[C.MLP_OUT][:, batch, position].astype(jnp.float32), u)
    layers = stack_layers(params["encoder"])["layer"]
    out_dense = layers["attention"]["output"]["dense"]
    attn_bias = (out_dense["bias"].astype(jnp.float32) @ u if "bias" in out_dense
                 else jnp.zeros_like(mlp))  # [L]
    scale = acts[C.EMBED_LN_STD][batch, position]
    u, embed_bias = through_norm(params["embeddings"]["LayerNorm"], scale, u)
    word = jnp.dot(acts[C.EMBED_WORD][batch, position].astype(jnp.float32), u)
    logit = acts[C.MLM_LOGITS][batch, position, token].astype(jnp.float32)
    return {C.EMBED_WORD: word, "heads": heads, "attn_bias": attn_bias, "mlp": mlp,
            "bias": head_bias + final_bias + embed_bias, "logit": logit,
            C.EMBED_LN_STD: scale, C.FINAL_LN_STD: acts[C.FINAL_LN_STD][batch, position]}


@dataclasses.dataclass(frozen=True)
class Attribution:
    """A labelled logit split.

    Attributes:
      parts: label -> contribution, in forward order: "embed.word", "embed.position",
        "embed.token_type", then per layer "L{l}.H{n}" for each head, "L{l}.attn_bias", "L{l}.mlp",
        and last "bias". Their sum is the logit.
      logit: the model's own logit for the token at the position.
      token: the token id.
      position: the position in the sequence.
      ln_std: the frozen LayerNorm scales the split assumes at this position: "embed.ln_std" (a
        float), "attn.ln_std" and "layer.ln_std" (float [L]).
    """

    parts: dict
    logit: float
    token: int
    position: int
    ln_std: dict = dataclasses.field(default_factory=dict)

    def check(self, atol: float = 1e-4, rtol: float = 1e-5) -> float:
        """Checks the frozen-scale split: the parts must add up to the logit.

        Returns:
          the gap, total() - logit.

        Raises:
          ValueError: the gap exceeds atol + rtol * |logit|.
        """
        gap = self.total() - self.logit
        if abs(gap) > atol + rtol * abs(self.logit):
            raise ValueError(f"the parts add up to {self.total():.6g}, not the logit "
                             f"{self.logit:.6g} (gap {gap:.3g} > atol {atol:g} + rtol {rtol:g}"
                             f"*|logit|): the LayerNorm scales are not the frozen ones")
        return gap

    def total(self) -> float:
        """The sum of the parts (equals `logit` up to float error)."""
        return float(sum(self.parts.values()))

    def heads(self) -> np.ndarray:
        """The head parts as a float [L, N] array."""
        rows = {}
        for label, value in self.parts.items():
            layer, _, head = label.partition(".H")
            if head.isdigit():
                rows.setdefault(int(layer[1:]), []).append(value)
        return np.asarray([rows[layer] for layer in sorted(rows)])

    def table(self):
        """A pandas DataFrame: part, kind, layer, head, contribution (needs pandas)."""
        import pandas as pd

        rows = []
        for label, value in self.parts.items():
            layer, _, rest = label.partition(".")
            if layer.startswith("L") and layer[1:].isdigit():
                kind = "head" if rest.startswith("H") else rest
                head = int(rest[1:]) if kind == "head" else None
                rows.append((label, kind, int(layer[1:]), head, value))
            else:
                rows.append((label, label, None, None, value))
        table = pd.DataFrame(rows, columns=["part", "kind", "layer", "head", "contribution"])
        return table.astype({"layer": "Int64", "head": "Int64"})


def label_parts(arrays: dict) -> dict:
    """`logit_parts`' arrays -> label -> float, in the order documented on `Attribution`."""
    parts = {name: float(arrays[name]) for name in EMBED_PARTS if name in arrays}
    heads = np.asarray(arrays["heads"])
    for layer in range(heads.shape[0]):
        parts.update({f"L{layer}.H{n}": float(v) for n, v in enumerate(heads[layer])})
        parts[f"L{layer}.attn_bias"] = float(arrays["attn_bias"][layer])
        parts[f"L{layer}.mlp"] = float(arrays["mlp"][layer])
    parts["bias"] = float(arrays["bias"])
    return parts


def _check_index(name: str, value: int, size: int, what: str) -> None:
    if not 0 <= value < size:
        raise ValueError(f"{name} must be in [0, {size}) ({what}), got {value}")


def logit_attribution(params: dict, config: BertConfig, input_ids: ArrayLike, position: int,
                      token: int, *, batch: int = 0, token_type_ids: ArrayLike | None = None,
                      attention_mask: ArrayLike | None = None,
                      ln_std: dict | None = None) -> Attribution:
    """Splits the MLM logit of `token` at `position` (of row `batch`) into labelled parts.

    Args:
      params: a full tree with an MLM head; config: its BertConfig.
      input_ids: int [B, S]; token_type_ids, attention_mask: [B, S] or None, as for `forward`.
      position: the position to explain (usually a [MASK]); token: the token id whose logit.
      ln_std: None to freeze each LayerNorm at this run's own scale; or some of "embed.ln_std"
        ([B, S]), "attn.ln_std", "layer.ln_std" ([L, B, S], e.g. another run's captures) to run
        the model with those scales held fixed (`edit={name: (0, std)}`) and split its logit.

    Raises:
      ValueError: no MLM head, batch, position or token out of range, or ln_std with other names
        or shapes.
    """
    check_mlm_head(params, "logit_attribution")
    input_ids = np.asarray(input_ids)
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [B, S], got shape {input_ids.shape}")
    _check_index("batch", batch, input_ids.shape[0], "rows of input_ids")
    _check_index("position", position, input_ids.shape[1], "the sequence length")
    _check_index("token", token, config.vocab_size, f"vocab_size={config.vocab_size}")
    check_attributable(config)
    names = scale_names(config)
    if ln_std is not None and not set(ln_std) <= set(names):
        raise ValueError(f"ln_std keys must be among {', '.join(names)}, got "
                         f"{sorted(ln_std)}")
    edit = {name: (0.0, jnp.asarray(std)) for name, std in (ln_std or {}).items()}
    acts = forward(params, input_ids, config, token_type_ids, attention_mask,
                   capture=needed(config), edit=edit).acts
    arrays = logit_parts(params, acts, config, batch, position, token)
    scales = {name: np.asarray(arrays[name]) for name in names}
    for name in (C.EMBED_LN_STD, C.FINAL_LN_STD):
        if name in scales:
            scales[name] = float(scales[name])
    return Attribution(label_parts(arrays), float(arrays["logit"]), token, position, scales)
