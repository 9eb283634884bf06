"""The encoder: all layers applied in order by one `lax.scan` over stacked layer parameters.

The tree stores layers as `encoder/layer/<i>` (the contract's layout). `stack_layers` turns them into
one subtree whose leaves carry a leading L axis. When to stack:

* `encoder` given the per-layer layout stacks inside the traced function: one copy of the encoder
  weights on every call (differentiable; what happens under an outer jit or grad);
* `bertjax.forward` given concrete per-layer arrays stacks them once, outside its jit, and keeps the
  stacked copy for the next calls with the same arrays (`stacked_once`, a one-entry cache that
  holds no reference to the per-layer arrays and is dropped when they are; models called in turn
  are restacked on every call, which it warns about once);
* an already stacked tree is used as it is: `params = bertjax.stack_layers(params)` once up front
  keeps a single copy of the weights in memory.

Scanning compiles one layer body, so compile time does not grow with the number of layers, and
per-layer activations come out of the scan stacked on axis 0, exactly as the contract wants them.
"""

from __future__ import annotations

import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from bertjax.model import capture as C
from bertjax.model.checks import check_hidden
from bertjax.model.config import BertConfig
from bertjax.model.layer import encoder_layer
from bertjax.model.nn import activation, last_axis, layer_norm, subtree, tapped_layer_norm
from bertjax.model.params import check_tree
from bertjax.model.positions import deberta_index, rotary_tables
from bertjax.model.relative import relative_bias


def is_stacked(layers: dict) -> bool:
    """Whether `encoder/layer` is already stacked (no "0" key)."""
    return "0" not in layers


def stack_layers(params: dict) -> dict:
    """Returns the tree with `encoder/layer/<i>` replaced by one subtree of [L, ...] leaves.

    Accepts the full tree, the `encoder` subtree or the `encoder/layer` dict; returns the same kind.
    """
    if "encoder" in params:
        return {**params, "encoder": stack_layers(params["encoder"])}
    if "layer" in params:
        return {**params, "layer": stack_layers(params["layer"])}
    if is_stacked(params):
        return params
    layers = _complete([params[str(i)] for i in range(len(params))])
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)


def _complete(layers: list[dict]) -> list[dict]:
    """Layers given the same subtrees for stacking: a part one layer lacks (ModernBERT's layer 0
    has no attention norm) becomes a placeholder of ones shaped as the last layer's, which the
    layer never reads (`encoder_layer` skips that norm at applied layer 0)."""
    full = layers[-1]
    missing = [k for k in full if k not in layers[0]]
    if not missing:
        return layers
    filled = {k: jax.tree_util.tree_map(jnp.ones_like, full[k]) for k in missing}
    return [{**layers[0], **filled}, *layers[1:]]


# The one entry of `stacked_once`: (ids of the per-layer leaves, weakrefs to them, stacked tree).
_STACKED: list = []
# The last few trees the entry held before (key, weakrefs), to notice models called in turn.
_EVICTED: list = []
_WARNED: list = []
RESTACK_WARNING = ("forward is restacking per-layer parameters on every call: several per-layer "
                   "models are called in turn and its cache holds one stacked tree; stack each "
                   "model once (params = bertjax.stack_layers(params), or bertjax.load(path, "
                   "stacked=True))")


def stacked_once(layers: dict) -> dict:
    """`stack_layers` of a per-layer `encoder/layer` dict, cached for the same (immutable) arrays.

    Only concrete `jax.Array` leaves are cached (tracers and mutable numpy arrays are stacked
    every time). The cache holds weak references to the per-layer arrays: the stacked copy is
    freed when any of them is, or when another tree is stacked.
    """
    leaves = jax.tree_util.tree_leaves(layers)
    if is_stacked(layers) or not all(isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
                                     for x in leaves):
        return stack_layers(layers)
    key = tuple(map(id, leaves))
    if _STACKED and _STACKED[0][0] == key and all(r() is x for r, x in zip(_STACKED[0][1], leaves)):
        return _STACKED[0][2]
    stacked = stack_layers(layers)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(stacked)):
        return stacked  # called while tracing an outer function: the stack is part of its program
    _warn_if_alternating(key, leaves)
    if _STACKED:
        _EVICTED[:] = [_STACKED[0][:2], *_EVICTED[:3]]
    _STACKED[:] = [(key, [weakref.ref(x, _drop(key)) for x in leaves], stacked)]
    return stacked


def _warn_if_alternating(key: tuple, leaves: list) -> None:
    """Warns once per process when a tree the cache held before comes back: models called in
    turn are restacked on every call (each restack copies every layer's weights)."""
    if _WARNED:
        return
    for old_key, refs in _EVICTED:
        if old_key == key and all(r() is x for r, x in zip(refs, leaves)):
            _WARNED.append(True)
            warnings.warn(RESTACK_WARNING, RuntimeWarning, stacklevel=5)
            return


def _drop(key: tuple):
    """Weakref callback: forget the cached stack of `key` when one of its arrays goes away."""
    def callback(_):
        if _STACKED and _STACKED[0][0] == key:
            _STACKED.clear()
    return callback


def encoder(params: dict, hidden: Float[ArrayLike, "B S D"], config: BertConfig,
            attention_mask: ArrayLike | None = None, capture=(), rng: jax.Array | None = None,
            head_mask: Float[ArrayLike, "L N"] | None = None,
            patch: dict | None = None, edit: dict | None = None,
            layers: tuple = (), position_ids: ArrayLike | None = None
            ) -> tuple[Float[Array, "B S D"], dict]:
    """All encoder layers.

    Args:
      params: the `encoder` subtree (or the full tree), per-layer or stacked. ALBERT's stored
        layers are shared: applied layer t reads `config.param_layer_of(t)`.
      hidden: float [B, S, D], the embeddings' output (the encoder's input).
      attention_mask: [B, S] of 1 (token) / 0 (padding), or None.
      capture: per-layer names; each comes back stacked over layers, [L, ...]. A dict
        `{name or glob: layers}` selects layers (`bertjax.model.capture.layer_selection`).
      rng: PRNG key for dropout; None for inference.
      head_mask: float [L, N] scaling each head's attention probabilities, or None.
      patch: per-layer name -> (new, mask), both with a leading L axis ([L, ...] of the
        activation's stacked shape, mask broadcastable), replacing activations in place.
      edit: per-layer name -> (mul, add), each a scalar or broadcastable to the stacked shape
        [L, ...]: the activation becomes value * mul + add at every layer.
      layers: (name, layer indices) pairs of a resolved selection (what `layer_selection`
        returns); a dict `capture` gives its own.
      position_ids: ModernBERT's rotary positions, [S], [1, S] or [B, S]; 0 .. S-1 when None
        (the other families read positions in the embeddings).

    Returns:
      the last layer's output, float [B, S, D], and the captured activations: [L, ...] per name
      (L = config.num_layers, the applied layers), [len(layers), ...] for a selected name, in
      the selection's order; attn.rel_bias [N, S, T] once (MPNet).
    """
    if isinstance(capture, C.Taps):
        capture, patch, edit = capture.capture, capture.patch, capture.edit
    L = config.num_layers
    if isinstance(capture, dict):
        layers = C.layer_selection(capture, L, has_pooler=False, has_mlm=False, config=config)
    capture = C.as_frozenset(capture, config=config)
    patch, edit = C.check_patch(patch), C.check_edit(edit)
    params = subtree(params, "encoder")
    check_tree(params, config, "encoder")
    check_hidden(hidden, config)
    hidden = jnp.asarray(hidden)
    extra, shared = _shared_terms(params, hidden, config, capture, patch, edit)
    rel = _deberta_rel(params, config, hidden.shape[1])
    rope = _rope_tables(config, hidden.shape[1], position_ids)
    final_capture, patch_all, edit_all = capture & frozenset(C.FINAL_NAMES), patch, edit
    capture = capture & frozenset(C.LAYER_NAMES)
    patch = {k: v for k, v in patch.items() if k in C.LAYER_NAMES}
    edit = {k: v for k, v in edit.items() if k in C.LAYER_NAMES}
    stacked = stack_layers(params["layer"])
    if config.layer_map is None:  # applied layer i is parameter layer i: scan over the weights
        xs = {"params": stacked}
    else:  # ALBERT: each applied layer reads its shared parameter layer by index, no copies
        xs = {"index": jnp.asarray(config.layer_map, jnp.int32)}
    if rng is not None:
        xs["rng"] = jax.random.split(rng, L)
    if config.pre_norm:
        xs["first"] = jnp.arange(L) == 0
        xs["local"] = jnp.asarray(config.local_layers)
    if config.conv_kernel_size:
        xs["first"] = jnp.arange(L) == 0
    if head_mask is not None:
        if tuple(head_mask.shape) != (L, config.num_attention_heads):
            raise ValueError(f"head_mask must have shape [L, N]={(L, config.num_attention_heads)}, "
                             f"got {tuple(head_mask.shape)}")
        xs["head_mask"] = head_mask
    if patch:
        xs["patch"] = {k: tuple(_leading_layers(a, len(C.SHAPES[k].split()), L) for a in v)
                       for k, v in patch.items()}
    scanned, fixed = _split_edit(edit, L)
    if scanned:
        xs["edit"] = scanned

    def step(names, h, x):
        per_layer = {k: tuple(fixed[k][j] if j in fixed.get(k, {}) else x["edit"][k][j]
                              for j in range(2)) for k in edit}
        taps = C.Taps(names, x.get("patch"), per_layer)
        weights = x["params"] if "params" in x else jax.tree_util.tree_map(
            lambda a: a[x["index"]], stacked)
        positions = _layer_positions(config, x, rope, rel)
        out, acts = encoder_layer(weights, h, config, attention_mask, taps, x.get("rng"),
                                  x.get("head_mask"), extra=extra, positions=positions)
        if config.conv_kernel_size:  # DeBERTa's ConvLayer replaces layer 0's output
            out = jax.lax.cond(x["first"], lambda: _conv(params["conv"], hidden0, out, config,
                                                         attention_mask), lambda: out)
            if C.LAYER_OUT in acts:
                acts[C.LAYER_OUT] = out
        return out, acts

    hidden0 = hidden

    if not layers:
        hidden, acts = jax.lax.scan(lambda h, x: step(capture, h, x), hidden, xs)
    else:
        hidden, acts = _scan_runs(step, hidden, xs, capture, dict(layers), L)
    if config.pre_norm:  # ModernBERT's final norm: last_hidden_state = final.out
        taps = C.Taps(final_capture, {k: v for k, v in patch_all.items() if k in C.FINAL_NAMES},
                      {k: v for k, v in edit_all.items() if k in C.FINAL_NAMES})
        hidden = tapped_layer_norm(params["final_norm"], hidden, config.layer_norm_eps, taps,
                                   C.FINAL_LN_STD)
        hidden = taps(C.FINAL_OUT, hidden)
        shared = {**shared, **taps.acts}
    return hidden, {**shared, **acts}


def _shared_terms(params: dict, hidden: jax.Array, config: BertConfig, capture: frozenset,
                  patch: dict, edit: dict) -> tuple[jax.Array | None, dict]:
    """The score term every layer adds (MPNet's relative bias, tapped as attn.rel_bias [N, S, T])
    and its captured value; (None, {}) for a family without one."""
    if not config.relative_attention_num_buckets:
        return None, {}
    taps = C.Taps(capture & frozenset(C.ENCODER_NAMES),
                  {k: v for k, v in patch.items() if k in C.ENCODER_NAMES},
                  {k: v for k, v in edit.items() if k in C.ENCODER_NAMES})
    table = params["relative_attention_bias"]["embedding"]  # [R, N]
    return taps(C.ATTN_REL_BIAS, relative_bias(table, hidden.shape[1])), taps.acts


def _deberta_rel(params: dict, config: BertConfig, S: int) -> tuple | None:
    """DeBERTa's relative embeddings as every layer reads them: the rows S positions reach
    (after the shared LayerNorm when norm_rel_ebd says so) [R, D], and the index int32 [S, T]."""
    if not config.position_terms:
        return None
    index, lo, hi = deberta_index(config, S)
    rel = params["rel_embeddings"]["embedding"]  # [2 span, D]
    if "LayerNorm" in params:
        rel = layer_norm(params["LayerNorm"], rel, config.layer_norm_eps)
    return rel[lo:hi], jnp.asarray(index)


def _rope_tables(config: BertConfig, S: int, position_ids) -> dict | None:
    """ModernBERT's rotary cos / sin [S, H] (or [B, S, H]) for global and sliding layers."""
    if not config.rotary:
        return None
    ids = jnp.arange(S) if position_ids is None else jnp.asarray(position_ids)
    ids = ids[0] if ids.ndim == 2 and ids.shape[0] == 1 else ids
    return {False: rotary_tables(ids, config.global_rope_theta, config.head_size),
            True: rotary_tables(ids, config.local_rope_theta, config.head_size)}


def _layer_positions(config: BertConfig, x: dict, rope: dict | None, rel) -> dict | None:
    """One layer's `positions` for `encoder_layer` from the scanned flags."""
    if rope is not None:
        kinds = set(config.local_layers)
        if len(kinds) == 1:  # every layer global, or every layer sliding: known at trace time
            local = kinds.pop()
            return {"rope": rope[local], "first": x["first"], "local": local}
        local = x["local"]
        tables = tuple(jnp.where(local, a, b) for a, b in zip(rope[True], rope[False]))
        return {"rope": tables, "first": x["first"], "local": local}
    if rel is not None:
        return {"rel": rel}
    return None


def _conv(params: dict, hidden0: jax.Array, out: jax.Array, config: BertConfig,
          attention_mask) -> jax.Array:
    """DeBERTa's ConvLayer: LayerNorm(layer 0's output + act(masked conv1d of the encoder's
    input)) * mask, [B, S, D]."""
    B, S, _ = hidden0.shape
    k = config.conv_kernel_size
    mask = jnp.ones((B, S), out.dtype) if attention_mask is None else \
        jnp.asarray(attention_mask).astype(out.dtype)
    conv = jax.lax.conv_general_dilated(
        hidden0, params["conv"]["kernel"], window_strides=(1,), padding=[((k - 1) // 2,) * 2],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=config.conv_groups,
        precision=jax.lax.Precision.HIGHEST)  # [B, S, D]
    conv = (conv + last_axis(params["conv"]["bias"], 3)) * mask[..., None]
    conv = activation(config, conv, config.conv_act)
    return layer_norm(params["LayerNorm"], out + conv, config.layer_norm_eps) * mask[..., None]


def _leading_layers(x, rank: int, L: int) -> jax.Array:
    """An operand broadcastable to a stacked [L, ...] shape of `rank` axes -> [L, ...] (its other
    axes kept as they are, leading 1s added)."""
    x = jnp.asarray(x)
    x = x.reshape((1,) * (rank - x.ndim) + x.shape)
    return jnp.broadcast_to(x, (L,) + x.shape[1:])


def _split_edit(edit: dict, L: int) -> tuple[dict, dict]:
    """Edit operands with a leading L axis (scanned over layers: name -> {j: [L, ...]}) and the
    ones equal at every layer (kept out of the scan: name -> {j: one layer's operand})."""
    scanned, fixed = {}, {}
    for name, pair in edit.items():
        rank = len(C.SHAPES[name].split())
        for j, x in enumerate(pair):
            x = jnp.asarray(x)
            if x.ndim == rank and x.shape[0] == L and L > 1:
                scanned.setdefault(name, {})[j] = x
            else:  # a scalar, or leading axes missing or 1: the same at every layer
                fixed.setdefault(name, {})[j] = x if x.ndim < rank else x[0]
    scanned = {k: tuple(v.get(j, jnp.zeros((L,))) for j in range(2)) for k, v in scanned.items()}
    return scanned, fixed


def _scan_runs(step, hidden, xs: dict, capture: frozenset, selected: dict, L: int):
    """The layers in runs where the captured set is constant, one scan each: a name is written
    only by the runs of its selected layers (the others never trace it), then its pieces are put in
    the selection's order."""
    per_layer = [frozenset(n for n in capture if n not in selected or i in selected[n])
                 for i in range(L)]
    pieces: dict = {n: [] for n in capture}  # name -> [(first layer, [run length, ...])]
    start = 0
    for i in range(1, L + 1):
        if i < L and per_layer[i] == per_layer[start]:
            continue
        run = jax.tree_util.tree_map(lambda a, s=start, e=i: a[s:e], xs)
        hidden, acts = jax.lax.scan(lambda h, x, n=per_layer[start]: step(n, h, x), hidden, run)
        for name, value in acts.items():
            pieces[name].append((start, value))
        start = i
    out = {}
    for name, parts in pieces.items():
        value = parts[0][1] if len(parts) == 1 else jnp.concatenate([v for _, v in parts])
        if name in selected:
            order = sorted(selected[name])
            index = [order.index(i) for i in selected[name]]
            value = value if index == list(range(len(index))) else value[np.asarray(index)]
        out[name] = value
    return hidden, out
