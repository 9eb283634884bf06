"""`site_grads`: d metric / d activation at named sites, all in one backward pass.

The gradient at a site is the gradient with respect to an additive edit of zero there
(`forward(..., edit={name: (1, add)})` at add = 0): everything upstream of the site is held fixed
and everything downstream, later layers included, responds. This is what transformers' hidden
states and attentions give with `retain_grad()`, for every named activation at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.forward import forward
from bertjax.model.operands import check_operands
from bertjax.model.params import Heads

# forward's keyword arguments that are arrays (traced); `capture` is static.
_ARRAY_KWARGS = ("token_type_ids", "attention_mask", "position_ids", "rng", "head_mask", "patch",
                 "edit")


def site_grads(params: dict, input_ids: ArrayLike, config: BertConfig,
               metric: Callable, names, **forward_kwargs) -> dict:
    """The gradient of `metric(forward(...))` with respect to each named activation.

    Args:
      params, input_ids, config: as for `bertjax.forward`.
      metric: BertOutput -> float scalar, jittable. It is a static argument: pass the same function
        object again to reuse the compiled program.
      names: activation names or globs ("all", "attn.*"), as for `capture`; a dict
        `{name: layers}` gives the gradients at those layers only ([len(layers), ...]).
      **forward_kwargs: any other `forward` argument (token_type_ids, attention_mask, capture for
        what the metric reads, head_mask, patch, edit, rng); not `reuse`. A name also in `edit`
        gets the gradient at its edited value.

    Returns:
      name -> float32 array of the activation's stacked shape ([L, ...] for per-layer names).

    Raises:
      ValueError: unknown names, `reuse` given, or any error `forward` raises.
    """
    heads = Heads.of(params)
    selection = dict(C.layer_selection(names, config.num_layers, config=config, heads=heads))
    names = C.resolve(names, config=config, heads=heads)
    unknown = set(forward_kwargs) - set(_ARRAY_KWARGS) - {"capture"}
    if unknown:
        raise ValueError(f"site_grads takes forward's keyword arguments "
                         f"{', '.join(_ARRAY_KWARGS)} and capture; got {sorted(unknown)}")
    input_ids = jnp.asarray(input_ids)
    arrays = {k: v for k, v in forward_kwargs.items() if k != "capture"}
    for k in ("token_type_ids", "attention_mask", "position_ids"):
        if arrays.get(k) is not None:
            arrays[k] = jnp.asarray(arrays[k])
    check_inputs(config, input_ids, arrays.get("token_type_ids"), arrays.get("attention_mask"),
                 arrays.get("position_ids"))
    capture = forward_kwargs.get("capture", ())
    if isinstance(capture, dict):  # hashable for the static argument; lists become tuples
        capture = tuple(sorted((k, _static_layers(v)) for k, v in capture.items()))
    B, S = input_ids.shape
    sizes = C.axis_sizes(config, B, S)
    for what, pair in (("edit", ("mul", "add")), ("patch", ("new", "mask"))):
        if arrays.get(what):  # checked here, on concrete values, not inside the trace
            checked = (C.check_edit if what == "edit" else C.check_patch)(arrays[what])
            arrays[what] = check_operands(what, checked, sizes, pair, config)
    zeros = {name: jnp.zeros(C.stacked_shape(name, sizes, config), jnp.float32) for name in names}
    grads = _grads(params, input_ids, arrays, zeros, config=config, metric=metric,
                   capture=capture if isinstance(capture, (str, tuple)) else tuple(capture))
    # a dict `names` selects layers, as for capture: those layers, in the given order
    return {name: grads[name][jnp.asarray(selection[name])] if name in selection else grads[name]
            for name in grads}


def _static_layers(layers):
    """A capture dict's layer selection, hashable (NumPy integers as ints, lists as tuples)."""
    layers = C._python_ints(layers)
    return layers if layers is None or isinstance(layers, (int, str)) else tuple(layers)


@functools.partial(jax.jit, static_argnames=("config", "metric", "capture"))
def _grads(params, input_ids, arrays, zeros, *, config, metric, capture):
    user = C.check_edit(arrays.pop("edit", None))
    if isinstance(capture, tuple) and capture and isinstance(capture[0], tuple):
        capture = dict(capture)  # a layer selection, made hashable above

    def run(adds):
        edit = dict(user)
        for name, add in adds.items():
            mul, extra = user.get(name, (1.0, 0.0))
            extra = jnp.asarray(extra, jnp.float32)
            extra = extra.reshape((1,) * (add.ndim - extra.ndim) + extra.shape)
            edit[name] = (mul, add + jnp.broadcast_to(extra, add.shape))
        out = forward(params, input_ids, config, capture=capture, edit=edit, **arrays)
        return C.call_metric(metric, out, where="site_grads")

    return jax.grad(run)(zeros)
