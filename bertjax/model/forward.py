"""`forward`: the whole model, embeddings -> encoder -> heads, with the activations asked for."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from bertjax.model import capture as C
from bertjax.model.checks import check_inputs, checkify_inputs
from bertjax.model.config import BertConfig
from bertjax.model.embeddings import embeddings
from bertjax.model.encoder import encoder, is_stacked, stacked_once
from bertjax.model.heads import disc_logits, mlm_logits, pooler, sop_logits
from bertjax.model.operands import check_operands, is_real_dtype
from bertjax.model.params import Heads, check_params


@functools.partial(jax.tree_util.register_dataclass, data_fields=["last_hidden_state",
                   "pooler_output", "acts"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class BertOutput:
    """What `forward` returns.

    Attributes:
      last_hidden_state: float [B, S, D].
      pooler_output: float [B, D], or None for a model without a pooler.
      acts: activation name -> array, exactly the names asked for ({} for capture=()).
    """

    # Any, not jax.Array: as a pytree its leaves may also be tracers, ShapeDtypeStructs or specs.
    last_hidden_state: Any
    pooler_output: Any
    acts: dict


def _as_array(x):
    return None if x is None else jnp.asarray(x) if not hasattr(x, "shape") else x


def _prepare(params, input_ids, config, token_type_ids, attention_mask, position_ids, capture,
             values=True):
    if not isinstance(config, BertConfig):
        raise ValueError(f"config must be a bertjax.BertConfig, got {type(config).__name__}")
    heads = check_params(params, config)  # shapes only, remembered: free on the next call
    C.check_capture(capture)
    names = C.resolve(capture, config=config, heads=heads)
    layers = C.layer_selection(capture, config.num_layers, config=config, heads=heads)
    arrays = [_as_array(x) for x in (input_ids, token_type_ids, attention_mask, position_ids)]
    check_inputs(config, *arrays, values=values)
    return names, layers, arrays


def _sizes(config: BertConfig, input_ids) -> dict[str, int]:
    return C.axis_sizes(config, *input_ids.shape)


def _interventions(config: BertConfig, input_ids, patch, edit, heads: Heads | None = None,
                   head_mask=None) -> tuple[dict, dict, Any]:
    """Checked patch, edit and head_mask, operands as arrays (named ones placed), before anything is
    traced; `heads`: the model's heads (an edit at a head it lacks would do nothing)."""
    patch, edit = C.check_patch(patch), C.check_edit(edit)
    if heads is not None:
        for name, has, what in ((C.MLM_LOGITS, heads.mlm, "MLM head"),
                                (C.POOLER_OUT, heads.pooler, "pooler")):
            if name in edit and not has:
                raise ValueError(f"cannot edit {name!r}: this model has no {what}")
    sizes = _sizes(config, input_ids)
    patch = check_operands("patch", patch, sizes, ("new", "mask"), config)
    edit = check_operands("edit", edit, sizes, ("mul", "add"), config)
    edit = {k: tuple(_as_array(x) for x in v) for k, v in edit.items()}
    if head_mask is not None:
        try:
            dtype = head_mask.dtype if hasattr(head_mask, "dtype") else np.asarray(head_mask).dtype
        except (TypeError, ValueError):  # ragged
            dtype = np.dtype(object)
        if not is_real_dtype(dtype):
            raise ValueError(f"head_mask must be a float [L, N] array, got "
                             f"{type(head_mask).__name__} of dtype {dtype}")
        head_mask = _as_array(head_mask)
    return patch, edit, head_mask


def forward(params: dict, input_ids: ArrayLike, config: BertConfig,
            token_type_ids: ArrayLike | None = None, attention_mask: ArrayLike | None = None,
            position_ids: ArrayLike | None = None, capture=(), rng: jax.Array | None = None,
            head_mask: ArrayLike | list | None = None, patch: dict | None = None,
            edit: dict | None = None, reuse: BertOutput | None = None,
            offload: bool = False) -> BertOutput:
    """Runs BERT and returns its outputs and the captured activations.

    Args:
      params: the full parameter tree, per-layer or with `stack_layers` applied. Concrete
        per-layer arrays are stacked once and the stacked copy is reused while they live
        (`stacked_once` in bertjax/model/encoder.py); `bertjax.load(path, stacked=True)` (or
        `stack_layers`) keeps one copy in memory. The cache holds one tree: calling several
        per-layer models in turn restacks each on every call, so stack each model once.
      input_ids: int [B, S].
      config: the model's BertConfig (static).
      token_type_ids: int [B, S], zeros when None.
      attention_mask: [B, S], 1 for tokens and 0 for padding; all ones when None.
      position_ids: int [B, S], [1, S] or [S]; 0 .. S-1 when None.
      capture: activation names, globs ("attn.*") or "all" (static); or a dict
        `{name or glob: layer indices or None}` capturing per-layer names at the selected layers
        only, stacked in the given order (`bertjax.model.capture.layer_selection`).
      rng: PRNG key; turns dropout on (training). None is deterministic inference.
      head_mask: float [L, N] multiplying each head's attention probabilities, or None.
      patch: activation name -> (new, mask) replacing that activation where mask is True (a bool
        mask, or 0/1 values; new values of every layer, not a layer-selected capture) and
        letting the change flow downstream; per-layer names take [L, ...] arrays (see
        `bertjax.model.capture.Taps` and the builders in `bertjax.analysis.interventions`).
        New values and masks do not recompile.
      edit: activation name -> (mul, add): the activation becomes value * mul + add before
        anything downstream reads it (captured values are the edited ones). mul and add broadcast
        to the stacked shape ([L, ...] for per-layer names; see `bertjax.model.operands`), or
        name their axes: `{"attn.probs": ({"N": scale}, 0.0)}` scales each head whatever S is
        (a positional [N] operand is aligned to the trailing axis T, and warns when S == N).
        Real numbers only (no None, strings or complex). New values do not recompile.
      reuse: an earlier BertOutput of the same shapes, capture and `offload`, not donated
        before and not also passed as a patch or edit value: its buffers are donated to this
        call, which may write into them; it is invalid afterwards (reading it raises).
      offload: place the captured activations in host memory (JAX memory kind "pinned_host")
        from inside the program, so that captures larger than device memory fit (static; for
        inference: outputs in host memory are not meant for differentiation).

    Returns:
      BertOutput(last_hidden_state [B, S, D], pooler_output [B, D] or None, acts).

    Raises:
      ValueError: out-of-range ids, token types or positions, a sequence longer than
        max_position_embeddings, shapes that disagree, float ids, unknown capture names, an
        empty batch or sequence, a params tree that disagrees with the config (`check_tree` in
        bertjax/model/params.py), edit or patch operands that do not broadcast to their
        activation. Value checks need concrete inputs; under an outer jit use `checked_forward`.
    """
    names, layers, arrays = _prepare(params, input_ids, config, token_type_ids, attention_mask,
                                     position_ids, capture)
    patch, edit, head_mask = _interventions(config, arrays[0], patch, edit, Heads.of(params),
                                            head_mask)
    args = (_with_stacked_layers(params), *arrays, rng, head_mask, patch, edit)
    static = dict(config=config, capture=names, layers=layers, offload=offload)
    if reuse is None:
        return _forward(*args, **static)
    _check_reuse(reuse, jax.eval_shape(functools.partial(_forward, **static), *args), offload,
                 args)
    return _forward_reusing(*args, reuse, **static)


def _check_reuse(reuse, expected: BertOutput, offload: bool = False, inputs=()) -> None:
    """Raises ValueError unless `reuse` can be donated to this call: the structure, shapes and
    dtypes of its output, live buffers (not donated before), each in the memory (device or host,
    `offload`) and on the devices this call writes it to, and none of them also an input of the
    call (a patch value, say). XLA aborts the process, or fails with a long log, on each of these."""
    if not isinstance(reuse, BertOutput):
        raise ValueError(f"reuse must be a BertOutput of an earlier forward, got "
                         f"{type(reuse).__name__}")
    got = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), reuse)
    want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), expected)
    if got != want:
        raise ValueError(f"reuse must have this call's output shapes and capture: "
                         f"{_differences(want, got)}")
    leaves = jax.tree_util.tree_leaves_with_path(reuse)
    if any(isinstance(x, jax.Array) and x.is_deleted() for _, x in leaves):
        raise ValueError("reuse: its buffers were already donated to an earlier call (an output "
                         "given as reuse= is invalid afterwards): pass the latest output")
    devices = _devices(inputs)
    taken = {id(x) for x in jax.tree_util.tree_leaves(inputs)}
    for path, x in leaves:
        where = jax.tree_util.keystr(path).lstrip(".")
        if not isinstance(x, jax.Array):
            raise ValueError(f"reuse: {where} is a {type(x).__name__}, not a jax.Array of an "
                             f"earlier forward")
        if id(x) in taken:
            raise ValueError(f"reuse: {where} is also passed as an input of this call (a patch or "
                             f"edit value?): donating it would free an input; pass a copy "
                             f"(jnp.array(x)) or another output as reuse")
        memory = x.sharding.memory_kind
        want = "pinned_host" if offload and where.startswith("acts") else _device_memory(x)
        if memory is not None and memory != want:
            raise ValueError(f"reuse: {where} is in {memory} memory, this call writes it to {want} "
                             f"memory: reuse an output of a call with the same offload="
                             f"{offload}")
        if devices and not x.sharding.device_set <= devices:
            raise ValueError(f"reuse: {where} is on {sorted(map(str, x.sharding.device_set))}, "
                             f"this call runs on {sorted(map(str, devices))}: reuse an output of a "
                             f"call on the same devices")


def _device_memory(x) -> str | None:
    """The default memory kind of x's devices ("device" on CPU and GPU)."""
    try:
        return next(iter(x.sharding.device_set)).default_memory().kind
    except Exception:  # noqa: BLE001 (platforms without memory kinds)
        return x.sharding.memory_kind


def _devices(inputs) -> set:
    """The devices of the call's concrete array inputs (empty when it has none to go by)."""
    devices = set()
    for x in jax.tree_util.tree_leaves(inputs):
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
            devices |= x.sharding.device_set
    return devices


def _differences(want: BertOutput, got: BertOutput) -> str:
    """The fields of two (shape, dtype) trees that differ, as 'field: X here, Y in reuse; ...'."""
    def shown(x):
        return "none" if x is None else f"{x[0]} {x[1]}"

    out = [f"{f}: {shown(getattr(want, f))} here, {shown(getattr(got, f))} in reuse"
           for f in ("last_hidden_state", "pooler_output") if getattr(want, f) != getattr(got, f)]
    if set(want.acts) != set(got.acts):
        out.append(f"capture: {sorted(want.acts)} here, {sorted(got.acts)} in reuse")
    out += [f"acts[{k!r}]: {shown(want.acts[k])} here, {shown(got.acts[k])} in reuse"
            for k in sorted(set(want.acts) & set(got.acts)) if want.acts[k] != got.acts[k]]
    return "; ".join(out)


def _with_stacked_layers(params: dict) -> dict:
    """The tree with its layers stacked once, outside jit (`stacked_once` in bertjax/model/encoder.py)."""
    layers = params.get("encoder", {}).get("layer")
    if layers is None or is_stacked(layers):
        return params
    return {**params, "encoder": {**params["encoder"], "layer": stacked_once(layers)}}


def _forward_body(params, input_ids, token_type_ids, attention_mask, position_ids, rng, head_mask,
                  patch, edit, *, config: BertConfig, capture: frozenset[str],
                  layers: tuple = (), offload: bool = False) -> BertOutput:
    r_embed, r_encoder = (None, None) if rng is None else jax.random.split(rng)
    embed_names = frozenset(C.EMBEDDING_NAMES)
    hidden, acts = embeddings(params["embeddings"], input_ids, config, token_type_ids,
                              position_ids, capture & embed_names, r_embed,
                              {k: v for k, v in patch.items() if k in embed_names},
                              {k: v for k, v in edit.items() if k in embed_names},
                              attention_mask=attention_mask)
    hidden, layer_acts = encoder(params["encoder"], hidden, config, attention_mask, capture,
                                 r_encoder, head_mask, patch, edit, layers,
                                 position_ids=position_ids if config.rotary else None)
    acts.update(layer_acts)
    outputs = C.Taps(capture, edit={k: v for k, v in edit.items() if k in C.OUTPUT_NAMES})
    pooled = None
    if "pooler" in params:
        pooled = outputs(C.POOLER_OUT, pooler(params["pooler"], hidden, config)[0])
    if C.MLM_LOGITS in capture:
        outputs(C.MLM_LOGITS, mlm_logits(params, hidden, config)[0])
    if C.DISC_LOGITS in capture:
        outputs(C.DISC_LOGITS, disc_logits(params, hidden, config))
    if C.SOP_LOGITS in capture:
        outputs(C.SOP_LOGITS, sop_logits(params, pooled, config))
    acts.update(outputs.acts)
    if offload:  # written to host memory by the program itself
        acts = {name: jax.device_put(value, jax.memory.Space.Host) for name, value in acts.items()}
    return BertOutput(hidden, pooled, acts)


_forward = jax.jit(_forward_body, static_argnames=("config", "capture", "layers", "offload"))


def _reusing(params, input_ids, token_type_ids, attention_mask, position_ids, rng, head_mask,
             patch, edit, reuse, *, config, capture, layers, offload):
    del reuse  # donated: XLA may place this call's outputs in its buffers
    return _forward_body(params, input_ids, token_type_ids, attention_mask, position_ids, rng,
                         head_mask, patch, edit, config=config, capture=capture, layers=layers,
                         offload=offload)


_forward_reusing = jax.jit(_reusing, static_argnames=("config", "capture", "layers", "offload"),
                           donate_argnames=("reuse",), keep_unused=True)


def checked_forward(params: dict, input_ids: ArrayLike, config: BertConfig,
                    token_type_ids=None, attention_mask=None, position_ids=None, capture=(),
                    rng=None, head_mask=None, patch=None,
                    edit=None) -> tuple[checkify.Error, BertOutput]:
    """`forward` with its value checks carried through jit by `jax.experimental.checkify`.

    Use it where the inputs are traced (inside your own `jax.jit`); outside jit too it returns
    `(err, out)` without raising: `err.throw()` raises the first failed value check (an
    out-of-range id, token type or position, a mask value other than 0/1), naming the offending
    value. Shapes, dtypes and the params tree are still checked at once (ValueError).
    """
    names, layers, arrays = _prepare(params, input_ids, config, token_type_ids, attention_mask,
                                     position_ids, capture, values=False)
    patch, edit, head_mask = _interventions(config, arrays[0], patch, edit, Heads.of(params),
                                            head_mask)
    return _checked(_with_stacked_layers(params), *arrays, rng, head_mask, patch, edit,
                    config=config, capture=names, layers=layers)


@functools.partial(jax.jit, static_argnames=("config", "capture", "layers"))
@functools.partial(checkify.checkify, errors=checkify.user_checks)
def _checked(params, input_ids, token_type_ids, attention_mask, position_ids, rng, head_mask,
             patch, edit, *, config, capture, layers):
    checkify_inputs(config, input_ids, token_type_ids, position_ids, attention_mask)
    return _forward_body(params, input_ids, token_type_ids, attention_mask, position_ids, rng,
                         head_mask, patch, edit, config=config, capture=capture, layers=layers)
