"""Interventions: head masks, activation patching, patching sweeps and attribution patching.

Everything here builds data for `forward`'s two intervention arguments (see `bertjax.model.capture.Taps`):

* `head_mask`: float [L, N] multiplying each head's attention probabilities (after dropout), the
  meaning it had in transformers 4.x. 0 removes a head's output (its output bias stays), 1 keeps it.
* `patch`: activation name -> (new, mask): where the bool mask is True the activation is replaced by
  `new`, and the change flows downstream. Per-layer names take arrays of their stacked shape
  [L, ...] (the shapes of `capture.SHAPES`).

Masks and values are arrays, so new ones never recompile; which names are patched is static.
Everything is pure and differentiable: `jax.grad` flows through head masks and patched values.
The axis letters are the package's: L layers, B batch, N heads, S query positions, T key positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from bertjax.analysis.tables import as_int
from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.forward import forward

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask", "position_ids")
# What a sweep patches one at a time: the axis swept besides L.
SWEEPS = {"heads": "N", "layer_position": "S"}


def axes_of(name: str) -> list[str]:
    """The axis letters of an activation's (stacked) shape, e.g. ['L', 'B', 'N', 'S', 'D']."""
    if name not in C.ALL_NAMES or name in C.HEAD_NAMES:
        patchable = [n for n in C.ALL_NAMES if n not in C.HEAD_NAMES]
        raise ValueError(f"cannot patch {name!r}; patchable names: {', '.join(patchable)}")
    return C.SHAPES[name].split()


def _position_axis(axes: list[str]) -> str:
    """Positions select the query axis S, or the key axis T for attn.k and attn.v."""
    return "S" if "S" in axes else "T"


def _config_sizes(config: BertConfig) -> dict[str, int]:
    return {"L": config.num_layers, "N": config.num_attention_heads,
            "D": config.hidden_size, "H": config.head_size, "I": config.intermediate_size}


def _check_shape(config: BertConfig | None, name: str, axes: list[str], shape: tuple) -> None:
    if len(shape) != len(axes):
        raise ValueError(f"{name} has axes [{', '.join(axes)}], got shape {shape}")
    sizes = {} if config is None else _config_sizes(config)
    for letter, size in zip(axes, shape):
        if letter in sizes and sizes[letter] != size:
            raise ValueError(f"{name} has axes [{', '.join(axes)}] and the config says "
                             f"{letter}={sizes[letter]}, got shape {shape}")


def _select(what: str, which, size: int) -> np.ndarray:
    """None -> all of the axis; an int or ints (NumPy ints too; no floats or bools) -> a bool vector
    [size] with those set."""
    chosen = np.zeros(size, bool)
    if which is None:
        return ~chosen
    items = (which if isinstance(which, (list, tuple)) else [which] if np.ndim(which) == 0
             else list(np.ravel(np.asarray(which))))
    for i in items:
        if as_int(i) is None:
            raise ValueError(f"{what} must be ints, got {i!r}")
        i = as_int(i)
        if not 0 <= i < size:
            raise ValueError(f"{what} must be in [0, {size}), got {int(i)}")
        chosen[i] = True
    return chosen


def outer_mask(axes: list[str], shape: tuple, chosen: dict) -> Bool[Array, "..."]:
    """The bool mask of `shape` that is True where every chosen axis is selected.

    Args:
      axes: the axis letters of `shape`.
      chosen: letter -> bool [size] (numpy or traced); axes not in it are selected entirely.
    """
    mask = jnp.ones(shape, bool)
    for axis, letter in enumerate(axes):
        if letter in chosen:
            view = (1,) * axis + (shape[axis],) + (1,) * (len(shape) - axis - 1)
            mask = mask & jnp.broadcast_to(jnp.reshape(chosen[letter], view), shape)
    return mask


def patch_where(config: BertConfig | None, name: str, shape: tuple, *, layers=None, heads=None,
                positions=None, batch=None) -> Bool[Array, "..."]:
    """The bool patch mask of activation `name` (of stacked `shape`) selecting the given indices.

    Args:
      config: checks the L, N, D, H, I sizes of `shape` when given (None skips the check).
      name: a patchable contract name (every name but the model outputs).
      shape: its stacked shape, e.g. (L, B, N, S, D) for attn.head_out.
      layers, heads, positions, batch: an int or ints each, None for all. `positions` selects
        the query positions S (the key positions T for attn.k / attn.v).

    Raises:
      ValueError: an unknown name, a shape that does not fit it, an index out of range, or
        layers / heads given for a name without that axis.
    """
    axes, shape = axes_of(name), tuple(shape)
    _check_shape(config, name, axes, shape)
    wanted = {"L": layers, "N": heads, _position_axis(axes): positions, "B": batch}
    words = {"L": "layers", "N": "heads", "S": "positions", "T": "positions", "B": "batch"}
    chosen = {}
    for letter, which in wanted.items():
        if which is None:
            continue
        if letter not in axes:
            raise ValueError(f"{name} has no {words[letter]} axis (axes [{', '.join(axes)}])")
        chosen[letter] = _select(words[letter], which, shape[axes.index(letter)])
    return outer_mask(axes, shape, chosen)


def patch_from(clean_acts: dict, name: str, *, layers=None, heads=None, positions=None,
               batch=None, config: BertConfig | None = None) -> tuple[Array, Array]:
    """The (new, mask) pair that patches `name` with a clean run's captured values.

    `forward(..., patch={name: patch_from(clean.acts, name, layers=[3], heads=[5])})` replaces
    layer 3 head 5's activation by the clean run's. The selections are those of `patch_where`.
    """
    clean = _clean_values(clean_acts, name, config)
    mask = patch_where(config, name, clean.shape, layers=layers, heads=heads,
                       positions=positions, batch=batch)
    return clean, mask


def _clean_values(clean_acts: dict, name: str, config: BertConfig | None = None) -> Array:
    """clean_acts[name] as an array; with `config`, refused unless it has every layer (a
    layer-selected capture, [k, ...], would be patched into the wrong layers)."""
    axes_of(name)
    if name not in clean_acts:
        raise ValueError(f"the clean activations have no {name!r}: capture it in the clean run "
                         f"(have: {', '.join(sorted(clean_acts)) or 'none'})")
    clean = jnp.asarray(clean_acts[name])
    L = None if config is None else config.num_layers
    if L is not None and name in C.LAYER_NAMES and (clean.ndim == 0 or clean.shape[0] != L):
        got = clean.shape[0] if clean.ndim else 0
        raise ValueError(f"clean_acts[{name!r}] has {got} layers but the model has {L}: a "
                         f"layer-selected capture? capture every layer of {name} in the clean run")
    return clean


def ablate_heads(config: BertConfig, heads: Iterable[tuple],
                 scale: float = 0.0) -> Float[Array, "L N"]:
    """A head_mask [L, N] of ones with `scale` (0: ablate) at each (layer, head) in `heads`."""
    mask = np.ones((config.num_layers, config.num_attention_heads), np.float32)
    for pair in heads:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(
                as_int(i) is not None for i in pair)):
            raise ValueError(f"heads must be (layer, head) pairs of ints, got {pair!r}")
        layer, head = (as_int(i) for i in pair)
        _select("layer", layer, config.num_layers)
        _select("head", head, config.num_attention_heads)
        mask[layer, head] = scale
    return jnp.asarray(mask)


def keep_heads(config: BertConfig, heads: Iterable[tuple]) -> Float[Array, "L N"]:
    """A head_mask [L, N] that keeps only the (layer, head) pairs in `heads` (all others 0)."""
    return 1.0 - ablate_heads(config, heads)


def _inputs(config: BertConfig, corrupted_inputs: dict) -> dict:
    """The inputs as arrays, value-checked eagerly (as `forward` does)."""
    unknown = set(corrupted_inputs) - set(INPUT_NAMES)
    if unknown or "input_ids" not in corrupted_inputs:
        raise ValueError(f"inputs must be a dict with input_ids and optionally "
                         f"{', '.join(INPUT_NAMES[1:])}; got keys {sorted(corrupted_inputs)}")
    inputs = {k: jnp.asarray(v) for k, v in corrupted_inputs.items() if v is not None}
    check_inputs(config, *(inputs.get(k) for k in INPUT_NAMES))
    return inputs


def _sweep_axes(name: str, over: str) -> tuple[list[str], str]:
    axes = axes_of(name)
    if over not in SWEEPS:
        raise ValueError(f"over must be one of {', '.join(SWEEPS)}, got {over!r}")
    letter = _position_axis(axes) if over == "layer_position" else SWEEPS[over]
    if "L" not in axes or letter not in axes:
        raise ValueError(f"cannot sweep {name} over {over}: it has axes [{', '.join(axes)}]")
    return axes, letter


def patch_sweep(params: dict, config: BertConfig, corrupted_inputs: dict, clean_acts: dict,
                name: str, metric: Callable, over: str = "heads", capture=(),
                batch_size: int | None = None) -> Float[Array, "L K"]:
    """Patches `name` from the clean run into the corrupted run one group at a time.

    Each group is one (layer, head) for over="heads", or one (layer, position) for
    over="layer_position", across the whole batch. The runs go through one compiled body
    (`jax.lax.map` over the group index; the masks are built from it inside).

    Args:
      params, config: the model.
      corrupted_inputs: dict of input_ids [B, S] and optionally token_type_ids, attention_mask,
        position_ids, as for `forward`.
      clean_acts: a clean run (same B, S) with `name` captured.
      name: a per-layer activation with a heads axis (attn.q/k/v/scores/probs/context/head_out)
        for "heads", with a position axis for "layer_position".
      metric: BertOutput -> float scalar, jittable. It is a static argument: pass the same
        function object again to reuse the compiled sweep.
      capture: what `metric` reads from `out.acts` (e.g. "mlm.logits").
      batch_size: groups run together (vmapped) per step; None runs them one by one.

    Returns:
      the metric of each patched run, float [L, N] or [L, S].
    """
    axes, letter = _sweep_axes(name, over)
    inputs = _inputs(config, corrupted_inputs)
    clean = _clean_values(clean_acts, name, config)
    return _sweep(params, inputs, clean, config=config, name=name, metric=metric, axes=tuple(axes),
                  letter=letter, capture=C.resolve(capture, has_mlm="cls" in params,
                                                   has_pooler="pooler" in params),
                  batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("config", "name", "metric", "axes", "letter",
                                             "capture", "batch_size"))
def _sweep(params, inputs, clean, *, config, name, metric, axes, letter, capture, batch_size):
    axes = list(axes)
    L, K = clean.shape[0], clean.shape[axes.index(letter)]

    def one(index):
        chosen = {"L": jnp.arange(L) == index // K, letter: jnp.arange(K) == index % K}
        mask = outer_mask(axes, clean.shape, chosen)
        out = forward(params, config=config, capture=capture, patch={name: (clean, mask)},
                      **inputs)
        return C.call_metric(metric, out, where="patch_sweep")

    values = jax.lax.map(one, jnp.arange(L * K), batch_size=batch_size)  # [L * K]
    return values.reshape(L, K)


def attribution_patch(params: dict, config: BertConfig, corrupted_inputs: dict, clean_acts: dict,
                      name: str, metric: Callable, over: str = "heads",
                      capture=()) -> Float[Array, "L K"]:
    """Attribution patching: a first-order estimate of each group's patching effect.

    effect[l, k] ~ sum over the group of  d metric / d act[l]  *  (clean - corrupted)[l],
    the gradients taken in the corrupted run. It estimates
    `patch_sweep(...) - metric(corrupted run)` with L gradients (a forward and a backward pass
    each) instead of L * K forwards. Arguments as `patch_sweep`.

    The gradient at layer l must let every later layer respond (as it does when the sweep patches
    layer l alone), so it is taken with only layer l patched: a patch replaces the computed value,
    and patching all layers at once would cut the paths from layer l through the later layers'
    `name` (e.g. through a later layer's heads for attn.head_out). Groups within one layer
    (heads, positions) do not feed each other, so one gradient per layer serves them all.
    """
    axes, letter = _sweep_axes(name, over)
    inputs = _inputs(config, corrupted_inputs)
    clean = _clean_values(clean_acts, name, config)
    capture = C.resolve(capture, has_mlm="cls" in params, has_pooler="pooler" in params)
    return _attribution(params, inputs, clean, config=config, name=name, metric=metric,
                        axes=tuple(axes), letter=letter, capture=capture)


@functools.partial(jax.jit, static_argnames=("config", "name", "metric", "axes", "letter",
                                             "capture"))
def _attribution(params, inputs, clean, *, config, name, metric, axes, letter, capture):
    corrupted = forward(params, config=config, capture=capture | {name}, **inputs).acts[name]
    L = corrupted.shape[0]

    def layer_grad(layer):  # d metric / d act[layer], the later layers live
        only = (jnp.arange(L) == layer).reshape((L,) + (1,) * (corrupted.ndim - 1))  # [L, 1, ...]

        def run(values):
            patch = {name: (values, only)}
            return C.call_metric(metric, forward(params, config=config, capture=capture, patch=patch,
                                                 **inputs), where="attribution_patch")

        return jax.grad(run)(corrupted)[layer]

    grad = jax.lax.map(layer_grad, jnp.arange(L))  # the activation's shape
    contribution = grad * (clean - corrupted)
    keep = (0, list(axes).index(letter))
    return jnp.sum(contribution, axis=tuple(i for i in range(len(axes)) if i not in keep))
