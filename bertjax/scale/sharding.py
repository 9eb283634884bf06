"""`forward` over many devices with `jax.sharding`: data parallel, optionally model parallel.

A `Mesh` has two axes: "batch" (rows of the input split over devices: data parallel) and "model"
(large kernels split over devices: for models bigger than one device). Inputs get a `NamedSharding`
over "batch"; parameters are replicated, or with `shard_params` the attention and feed-forward
kernels are split over "model" (query/key/value columns by heads, the attention output rows by
heads, the intermediate dense columns and the output dense rows over I). `sharded_forward` jits
`bertjax.forward` with these shardings in and out, so captured activations stay sharded on their
devices until a caller writes or reduces them; XLA (GSPMD) inserts the collectives. The jitted
program is cached per (mesh, config, capture, post, parameter layout), so calling `sharded_forward`
again with the same arguments reuses the compiled programs.

Rows: `shard_batch` pads the batch up to a multiple of the "batch" axis size with all-padding rows
(ids 0, mask 0) and returns how many rows are real; every output keeps the padded batch, and the
caller drops rows from that number on (`out[:rows]` after `jax.device_get`).

Multi-host (a TPU pod, several GPU hosts, several CPU processes): every process calls
`jax.distributed.initialize()` before any other JAX call (arguments are detected on TPU, Slurm and
Open MPI; otherwise pass `coordinator_address`, `num_processes` and `process_id`). Then
`jax.devices()` lists every process's devices but each process can only feed its own
(`jax.local_devices()`), so each process builds `make_mesh(jax.local_devices())`, runs its own
slice of the data through `sharded_forward` on it and writes its own results: no array spans
processes and no collective crosses hosts. `bertjax.scale.extract` works this way (process i takes the
input chunks k with k % process_count == i); `bertjax extract --distributed` does the
initialization.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.forward import BertOutput, forward
from bertjax.model.params import Heads, flatten, unflatten

BATCH, MODEL = "batch", "model"

# Parameter paths split over the "model" axis -> which axis of the kernel, counted from the end
# (so the same rule holds for per-layer [in, out] and stacked [L, in, out] leaves).
_MODEL_SPLIT = (
    (r"attention/self/(query|key|value)/kernel$", -1),  # [D, N*H]: columns by heads
    (r"attention/self/(query|key|value)/bias$", -1),
    (r"attention/output/dense/kernel$", -2),            # [N*H, D]: rows by heads
    (r"intermediate/dense/(kernel|bias)$", -1),         # [D, I]: columns over I
    (r"layer/(\d+/)?output/dense/kernel$", -2),         # [I, D]: rows over I
)


def make_mesh(devices: Sequence | None = None, model_axis: int = 1) -> Mesh:
    """A ("batch", "model") mesh over `devices` (default: all of `jax.devices()`).

    Args:
      devices: the devices to use, in order.
      model_axis: how many devices share one model replica (1: pure data parallel).

    Raises:
      ValueError: model_axis < 1 or not a divisor of the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model_axis < 1 or len(devices) % model_axis:
        raise ValueError(f"model_axis={model_axis} must be >= 1 and divide the number of "
                         f"devices ({len(devices)})")
    grid = np.array(devices, dtype=object).reshape(len(devices) // model_axis, model_axis)
    return Mesh(grid, (BATCH, MODEL))


def batch_size_multiple(mesh: Mesh) -> int:
    """Batches are padded to a multiple of this (the size of the "batch" axis)."""
    return mesh.shape[BATCH]


def shard_batch(mesh: Mesh, *arrays) -> tuple[tuple[jax.Array, ...], int]:
    """Places arrays of equal leading size B on the mesh, rows split over "batch".

    Rows are padded with zeros (pad ids, mask 0) up to a multiple of the "batch" axis size.

    Args:
      arrays: [B, ...] each (int ids, masks, token types).

    Returns:
      the sharded arrays ([B', ...], B' the padded size) and B, the number of real rows.
    """
    sizes = {np.shape(a)[0] for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"shard_batch needs arrays with one leading size, got {sorted(sizes)}")
    (rows,) = sizes
    padded = -(-rows // batch_size_multiple(mesh)) * batch_size_multiple(mesh)
    sharding = NamedSharding(mesh, P(BATCH))
    out = []
    for a in arrays:
        a = np.asarray(a)
        a = np.pad(a, [(0, padded - rows)] + [(0, 0)] * (a.ndim - 1))
        out.append(jax.device_put(a, sharding))
    return tuple(out), rows


def _param_spec(path: str, ndim: int, model_parallel: bool) -> P:
    if model_parallel:
        for pattern, axis in _MODEL_SPLIT:
            if re.search(pattern, path):
                spec = [None] * ndim
                spec[ndim + axis] = MODEL
                return P(*spec)
    return P()


def param_shardings(mesh: Mesh, params: dict, config: BertConfig) -> dict:
    """A tree of NamedShardings for `params`: replicated, kernels over "model" when it is > 1.

    Raises:
      ValueError: the heads N or the intermediate size I do not split evenly over "model".
    """
    split = mesh.shape[MODEL]
    if split > 1 and (config.num_attention_heads % split or config.intermediate_size % split):
        raise ValueError(f"a model axis of {split} needs num_attention_heads "
                         f"({config.num_attention_heads}) and intermediate_size "
                         f"({config.intermediate_size}) divisible by {split}")
    return _layout_shardings(mesh, _layout(params))


def _layout(params: dict) -> tuple[tuple[str, int], ...]:
    """(path, ndim) of every leaf: all that the shardings depend on (hashable)."""
    return tuple((path, np.ndim(leaf)) for path, leaf in flatten(params).items())


def _layout_shardings(mesh: Mesh, layout: tuple[tuple[str, int], ...]) -> dict:
    split = mesh.shape[MODEL] > 1
    return unflatten({path: NamedSharding(mesh, _param_spec(path, ndim, split))
                      for path, ndim in layout})


def replicate(mesh: Mesh, params: dict) -> dict:
    """Every parameter copied onto every device of the mesh."""
    return jax.device_put(params, NamedSharding(mesh, P()))


def shard_params(mesh: Mesh, params: dict, config: BertConfig) -> dict:
    """Parameters placed by `param_shardings`: kernels split over "model", the rest replicated."""
    return jax.device_put(params, param_shardings(mesh, params, config))


def activation_spec(name: str) -> P:
    """Where the batch axis B of an activation is: axis 1 for per-layer names ([L, B, ...])."""
    return P(None, BATCH) if name in C.LAYER_NAMES else P(BATCH)


def output_shardings(mesh: Mesh, names: frozenset[str], has_pooler: bool):
    """The sharding tree of a `BertOutput` with the activations `names`, batch-split everywhere."""
    rows = NamedSharding(mesh, P(BATCH))
    acts = {name: NamedSharding(mesh, activation_spec(name)) for name in names}
    return BertOutput(rows, rows if has_pooler else None, acts)


def sharded_forward(mesh: Mesh, params: dict, config: BertConfig, capture=(),
                    post: Callable | None = None) -> Callable:
    """`bertjax.forward` jitted over the mesh, for parameters shaped like `params`.

    Args:
      mesh: from `make_mesh`.
      params: the parameter tree (used for its heads and layout). Place the tree that `run`
        gets with `shard_params` (for a model axis of 1 the same as `replicate`): jit refuses
        arrays placed otherwise.
      capture: activation names, globs or "all", as for `forward`, or a dict selecting layers
        (`{name: layers}`): unselected layers are never written.
      post: optional `post(out, attention_mask) -> dict of [B, ...] arrays`, traced into the same
        program (selecting layers, pooling), so that only its results leave the devices. It keys
        the compile cache: pass the same (or an equal, hashable) object to reuse a compilation.

    Returns:
      run(params, input_ids, attention_mask, token_type_ids) with int [B, S] inputs, B a multiple of
      the "batch" axis size (see `shard_batch`): a `BertOutput` whose arrays are split over "batch"
      (per-layer activations [L, B, ...] on their axis 1), or post's dict, batch-split on axis 0.
      Value checks (`bertjax.model.checks.check_inputs`) run eagerly on the inputs first.

    Raises:
      ValueError: unknown capture names; heads or I that do not split over the "model" axis.
    """
    heads = Heads.of(params)
    names = C.resolve(capture, config=config, heads=heads)
    layers = C.layer_selection(capture, config.num_layers, config=config, heads=heads)
    param_shardings(mesh, params, config)  # raises now when the model axis does not divide
    jitted = _jitted(mesh, config, names, post, heads.pooler, _layout(params), layers)

    def run(params, input_ids, attention_mask, token_type_ids):
        check_inputs(config, input_ids, token_type_ids, attention_mask)
        return jitted(params, input_ids, attention_mask, token_type_ids)

    return run


@functools.lru_cache(maxsize=16)
def _jitted(mesh: Mesh, config: BertConfig, names: frozenset, post, pooler: bool,
            layout: tuple[tuple[str, int], ...], layers: tuple = ()):
    """One jitted program per distinct request (jax.jit caches compilations per function object).
    `layers`: a layer selection (`bertjax.model.capture.layer_selection`), () for all layers."""
    rows = NamedSharding(mesh, P(BATCH))
    request = {**dict.fromkeys(names), **dict(layers)} if layers else names

    def program(params, input_ids, attention_mask, token_type_ids):
        out = forward(params, input_ids, config, token_type_ids, attention_mask, capture=request)
        return out if post is None else post(out, attention_mask)

    return jax.jit(program, in_shardings=(_layout_shardings(mesh, layout), rows, rows, rows),
                   out_shardings=rows if post else output_shardings(mesh, names, pooler))
