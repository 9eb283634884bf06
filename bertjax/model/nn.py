"""Small shared operations: dense, LayerNorm, activations and dropout.

Each takes only its own parameter subtree. LayerNorm statistics are computed in float32 and cast
back to the input dtype, as are softmax inputs elsewhere, so bf16 and fp16 parameters stay stable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bertjax.model.config import BertConfig


def last_axis(v: jax.Array, ndim: int) -> jax.Array:
    """A vector [K] viewed as [1, ..., 1, K] of rank `ndim` (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - 1) + (-1,))


def dense(params: dict, x: jax.Array) -> jax.Array:
    """x @ kernel + bias over the last axis: [..., in] -> [..., out] (no bias where the tree has
    none: ModernBERT's bias-free layers, DeBERTa's embedding projection)."""
    out = jnp.einsum("...i,io->...o", x, params["kernel"])
    return out + last_axis(params["bias"], x.ndim) if "bias" in params else out


def layer_norm(params: dict, x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis with float32 statistics (biased variance, as torch)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return _affine(params, y).astype(x.dtype)


def _affine(params: dict, y: jax.Array) -> jax.Array:
    """y * scale + bias in float32 (no bias where the tree has none: ModernBERT's norms)."""
    scale = last_axis(params["scale"].astype(jnp.float32), y.ndim)
    if "bias" not in params:
        return y * scale
    bias = last_axis(params["bias"].astype(jnp.float32), y.ndim)  # BERT's order of operations
    return y * scale + bias


def layer_norm_std(x: jax.Array, eps: float) -> jax.Array:
    """sqrt(var + eps) of x over the last axis, float32 [...] (the last axis dropped)."""
    x32 = x.astype(jnp.float32)
    return jnp.sqrt(jnp.var(x32, axis=-1) + eps)


def tapped_layer_norm(params: dict, x: jax.Array, eps: float, taps, name: str) -> jax.Array:
    """`layer_norm` whose std passes through `taps(name, std)` (see `bertjax.model.capture.Taps`).

    Untouched when `name` is not asked for; when it is only captured the output is `layer_norm`'s
    own; when it is edited or patched the output divides by the changed std.
    """
    if not taps.wants(name):
        return layer_norm(params, x, eps)
    std = taps(name, layer_norm_std(x, eps))  # [...], float32
    if not taps.changes(name):
        return layer_norm(params, x, eps)
    x32 = x.astype(jnp.float32)
    y = (x32 - jnp.mean(x32, axis=-1, keepdims=True)) / std[..., None]
    return _affine(params, y).astype(x.dtype)


_ACT = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # exact erf form, transformers' "gelu"
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,  # DeBERTa's conv_act default and BERT's pooler
}


def activation(config: BertConfig, x: jax.Array, name: str | None = None) -> jax.Array:
    """The config's hidden_act (or the activation `name`, e.g. `config.head_act`) elementwise."""
    return _ACT[name or config.hidden_act](x)


def dropout(rng: jax.Array | None, x: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout; the identity when rng is None (inference) or rate is 0."""
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def split(rng: jax.Array | None, n: int) -> list:
    """n independent keys, or n Nones when dropout is off."""
    if rng is None:
        return [None] * n
    return list(jax.random.split(rng, n))


def subtree(params: dict, key: str) -> dict:
    """params[key] when given the full tree, params itself when already given the subtree."""
    return params[key] if key in params else params
