"""Head importance and pruning curves (Michel, Levy and Neubig 2019, "Are Sixteen Heads Really
Better than One?").

* `head_importance`: each head's score I_h = E_x |d metric / d xi_h| at xi = 1, xi the `head_mask`
  [L, N] that multiplies each head's attention probabilities (a head's output is its mask times
  what it computes, so the gradient is the first-order change of the metric when the head is
  removed). As in the authors' code, the absolute value is taken per batch (the metric of a batch is
  one number, e.g. its mean loss; batches of one example give per-example absolute values) and the
  batches are averaged with weights proportional to their number of examples. Then, as the paper
  does, each layer's scores are divided by their L2 norm over the layer's heads (`normalize=False`
  keeps the raw means).
* `prune_curve`: masks heads in order of increasing importance, `step` more at a time, and
  evaluates the metric (averaged over the batches the same way) after each step.

A batch is a dict with `input_ids` [B, S] and optionally `token_type_ids`, `attention_mask` and
`position_ids` (given to `forward`); any other entry (e.g. `labels`) is for the metric only.
`metric(out, batch) -> scalar` receives the `BertOutput` (with `capture`d activations) and the batch.
The metric is a static argument of the jitted programs: pass the same function object again to
reuse them. A program is compiled per batch shape; new masks and values never recompile.
Axis letters: L layers, N heads, K steps of the curve.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from bertjax.analysis.tables import as_int
from bertjax.model import capture as C
from bertjax.model.checks import check_inputs
from bertjax.model.config import BertConfig
from bertjax.model.encoder import stack_layers
from bertjax.model.forward import forward
from bertjax.model.params import Heads

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask", "position_ids")


def _split(config: BertConfig, batch: dict) -> tuple[dict, dict, int]:
    """(forward's inputs, the other entries, number of examples), value-checked eagerly."""
    if not isinstance(batch, dict) or "input_ids" not in batch:
        got = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"each batch must be a dict with input_ids [B, S] (and optionally "
                         f"{', '.join(INPUT_NAMES[1:])}, labels, ...); got {got}")
    inputs = {k: jnp.asarray(batch[k]) for k in INPUT_NAMES if batch.get(k) is not None}
    check_inputs(config, *(inputs.get(k) for k in INPUT_NAMES))
    extra = {k: jnp.asarray(v) for k, v in batch.items() if k not in INPUT_NAMES}
    return inputs, extra, int(inputs["input_ids"].shape[0])


def _prepared(params: dict, config: BertConfig, batches: Iterable[dict], capture):
    batches = [_split(config, b) for b in batches]
    if not batches:
        raise ValueError("batches is empty: give at least one batch")
    heads = Heads.of(params)
    names = C.resolve(capture, config=config, heads=heads)
    return stack_layers(params), batches, names


def _run(params, inputs, extra, mask, config, metric, capture):
    out = forward(params, config=config, capture=capture, head_mask=mask, **inputs)
    return C.call_metric(metric, out, {**inputs, **extra}, where="head_importance / prune_curve")


@functools.partial(jax.jit, static_argnames=("config", "metric", "capture"))
def _mask_grad(params, inputs, extra, mask, *, config, metric, capture):
    return jax.grad(_run, argnums=3)(params, inputs, extra, mask, config, metric, capture)


def _weighted_mean(values: list, weights: list) -> np.ndarray:
    weights = np.asarray(weights, np.float64)
    return np.tensordot(weights / weights.sum(), np.stack(values).astype(np.float64), axes=1)


def head_importance(params: dict, config: BertConfig, batches: Iterable[dict],
                    metric: Callable, capture=(), normalize: bool = True) -> Float[np.ndarray, "L N"]:
    """Michel et al.'s head importance: the mean over the data of ``|d metric / d head_mask|`` at 1.

    Args:
      params, config: the model.
      batches: dicts of input_ids [B, S] (+ token_type_ids, attention_mask, position_ids, and
        whatever the metric reads, e.g. labels [B]).
      metric: (BertOutput, batch) -> float scalar for the batch, jittable (e.g. the mean loss).
      capture: what the metric reads from `out.acts` (e.g. "mlm.logits").
      normalize: divide each layer's scores by their L2 norm over its heads, as in the paper.

    Returns:
      float64 [L, N], NumPy.
    """
    params, batches, names = _prepared(params, config, batches, capture)
    ones = jnp.ones((config.num_layers, config.num_attention_heads), jnp.float32)
    grads = [np.abs(np.asarray(_mask_grad(params, inputs, extra, ones, config=config, metric=metric,
                                          capture=names)))
             for inputs, extra, _ in batches]
    scores = _weighted_mean(grads, [rows for *_, rows in batches])  # [L, N]
    if not np.isfinite(scores).all():
        raise ValueError("head importance is NaN or Inf: the metric or its gradient with respect to "
                         "the head mask is not finite on these batches; check the metric (a loss) "
                         "or pass importance= yourself")
    if not scores.any():
        warnings.warn("head importance is all zero: the metric's gradient with respect to the head "
                      "mask is zero everywhere (e.g. an argmax accuracy); use a differentiable "
                      "metric (a loss) for importance", RuntimeWarning, stacklevel=2)
    if normalize:
        scores = scores / (np.linalg.norm(scores, axis=1, keepdims=True) + 1e-20)
    return scores


@dataclasses.dataclass(frozen=True)
class PruneCurve:
    """What `prune_curve` returns.

    Attributes:
      pruned: int [K], heads masked at each step (0, step, 2 step, ..., L * N).
      share: float [K], pruned / (L * N).
      values: float64 [K], the metric (mean over the data) with those heads masked.
      order: int [L * N, 2], the (layer, head) pairs in the order they are masked.
      importance: float [L, N], the scores the order comes from.
    """

    pruned: np.ndarray
    share: np.ndarray
    values: np.ndarray
    order: np.ndarray
    importance: np.ndarray

    def mask(self, step) -> np.ndarray:
        """The head_mask [L, N] of step `step` (1 kept, 0 masked); an int in [-K, K), negative
        from the end."""
        K = len(self.pruned)
        if as_int(step) is None or not -K <= as_int(step) < K:
            raise ValueError(f"step must be an int in [-{K}, {K}) (the curve has {K} steps), got "
                             f"{step!r}")
        L, N = self.importance.shape
        return _masks(self.order, self.pruned[[as_int(step)]], L, N)[0]


def _masks(order: np.ndarray, pruned: np.ndarray, L: int, N: int) -> np.ndarray:
    masks = np.ones((len(pruned), L, N), np.float32)
    for i, count in enumerate(pruned):
        masks[i, order[:count, 0], order[:count, 1]] = 0.0
    return masks  # [K, L, N]


@functools.partial(jax.jit, static_argnames=("config", "metric", "capture"))
def _curve(params, inputs, extra, masks, *, config, metric, capture):
    return jax.lax.map(lambda m: _run(params, inputs, extra, m, config, metric, capture), masks)


def _check_importance(importance: np.ndarray) -> None:
    """Refuses an order that means nothing: NaN or Inf scores, or all zero."""
    if not np.issubdtype(importance.dtype, np.number) or not np.isfinite(importance).all():
        raise ValueError("importance= holds NaN or Inf (or is not numeric): the order of the heads "
                         "would be arbitrary; give finite scores")
    if not importance.any():
        raise ValueError("importance= is all zero, so every order is a tie (the metric's gradient "
                         "is zero everywhere, e.g. argmax accuracy): pass importance_metric= a "
                         "differentiable loss, or importance= your own scores")


def prune_curve(params: dict, config: BertConfig, batches: Iterable[dict], metric: Callable,
                importance=None, step: int = 1, capture=(),
                importance_metric: Callable | None = None) -> PruneCurve:
    """The metric as heads are masked in order of increasing importance.

    Args:
      params, config, batches, capture: as `head_importance`.
      metric: (BertOutput, batch) -> float scalar evaluated after each step (e.g. accuracy).
      importance: float [L, N] scores giving the order (ties broken by layer, then head); None
        computes `head_importance` on the same batches with `importance_metric` (default `metric`,
        which must then be differentiable: use a loss there and accuracy here).
      step: heads masked per step; the last step masks every head.

    Returns:
      a `PruneCurve`; step k's metric comes from one jitted program over all K masks per batch.
    """
    L, N = config.num_layers, config.num_attention_heads
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int (heads masked per step), got {step!r}")
    batches = list(batches)
    if importance is None:
        importance = head_importance(params, config, batches, importance_metric or metric, capture)
    importance = np.asarray(importance)
    if importance.shape != (L, N):
        raise ValueError(f"importance must have shape [L, N]={(L, N)}, got {importance.shape}")
    _check_importance(importance)
    flat = np.argsort(importance.ravel(), kind="stable")  # least important first
    order = np.stack([flat // N, flat % N], axis=1)  # [L * N, 2]
    pruned = np.unique(np.r_[np.arange(0, L * N, step), L * N])
    masks = jnp.asarray(_masks(order, pruned, L, N))
    params, prepared, names = _prepared(params, config, batches, capture)
    values = [np.asarray(_curve(params, inputs, extra, masks, config=config, metric=metric,
                                capture=names)) for inputs, extra, _ in prepared]
    values = _weighted_mean(values, [rows for *_, rows in prepared])
    return PruneCurve(pruned=pruned, share=pruned / (L * N), values=values, order=order,
                      importance=importance)
