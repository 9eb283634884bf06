"""`fit_linear`: linear softmax probes for every layer, trained in one compiled program.

The objective is scikit-learn's `LogisticRegression(C=C)` (multinomial, L2 on the weights, not the
bias): C * sum_i w_i CE_i + |W|^2 / 2, divided here by C * sum_i w_i (the same minimiser, better
scaled for the line search). Full-batch L-BFGS (optax, zoom line search) or Adam, vmapped over the
layer axis (accelerators) or mapped over it inside the program (CPU; see FitOptions.parallel): one
layer's loop stops on its own (a batched `while_loop` keeps finished layers' state) when its
gradient is below `tol`, after `max_iter` steps, or, with early stopping, when its held-out
loss has not improved for `patience` steps (off by default: L-BFGS then converges to scikit-learn's
optimum); the parameters with the best held-out loss are kept.
Parameters start at zero, so a fit is deterministic.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class FitOptions(NamedTuple):
    """Training options (static). C: inverse L2 strength as in scikit-learn; optimizer: "lbfgs"
    or "adam"; max_iter: steps; tol: stop when max |gradient| of the scaled objective is below
    it (max_iter and tol as scikit-learn's defaults, whose lbfgs also scales the loss by 1/n);
    patience: held-out steps without improvement before stopping (None: no early stopping);
    learning_rate: Adam's step size. parallel: vmap the layers (they step in lockstep, so the
    batched line search runs every layer until the slowest is done: the way to fill a GPU) or
    map over them inside the program (each layer's loop alone: on CPU no more than L times one
    layer); None picks vmap on accelerators and map on CPU."""

    C: float = 1.0
    optimizer: str = "lbfgs"
    max_iter: int = 100
    tol: float = 1e-4
    patience: int | None = None
    learning_rate: float = 1e-2
    parallel: bool | None = None


def options(**train_options) -> FitOptions:
    """FitOptions from keyword arguments, each checked."""
    unknown = set(train_options) - set(FitOptions._fields)
    if unknown:
        raise ValueError(f"unknown training options {sorted(unknown)}; use {', '.join(FitOptions._fields)}")
    opts = FitOptions(**train_options)
    if opts.optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {opts.optimizer!r}")
    if not opts.C > 0:
        raise ValueError(f"C must be positive, got {opts.C}")
    if opts.max_iter < 1 or (opts.patience is not None and opts.patience < 1):
        raise ValueError(f"max_iter and patience must be at least 1, got {opts.max_iter}, {opts.patience}")
    return opts


def _loss(params, x, y, w, scale):
    """Weighted mean cross-entropy + |W|^2 / (2 C sum w); x [N, D], y int [N], w [N]."""
    logits = x @ params["W"] + params["b"][None, :]  # [N, K]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]  # [N]
    return jnp.sum(w * ce) / jnp.sum(w) + scale * jnp.sum(params["W"] ** 2)


def _fit_one(x, y, w, x_dev, y_dev, patience, *, k: int, opts: FitOptions):
    """One layer's probe: x [N, D], y [N], w [N], x_dev [M, D], y_dev [M], patience int32 []
    (0: no early stopping) -> (params, steps)."""
    scale = 0.5 / (opts.C * jnp.sum(w))
    fun = functools.partial(_loss, x=x, y=y, w=w, scale=scale)
    dev_w = jnp.ones(y_dev.shape, x.dtype)
    dev_loss = lambda p: _loss(p, x_dev, y_dev, dev_w, 0.0)
    opt = optax.lbfgs() if opts.optimizer == "lbfgs" else optax.adam(opts.learning_rate)
    value_and_grad = (optax.value_and_grad_from_state(fun) if opts.optimizer == "lbfgs"
                      else jax.value_and_grad(fun))
    params = {"W": jnp.zeros((x.shape[1], k), x.dtype), "b": jnp.zeros((k,), x.dtype)}
    stopping = patience > 0
    patience = jnp.where(stopping, patience, opts.max_iter + 1)

    def step(carry):
        params, state, best, best_loss, since, i, _ = carry
        if opts.optimizer == "lbfgs":
            value, grad = value_and_grad(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
        else:
            value, grad = value_and_grad(params)
            updates, state = opt.update(grad, state, params)
        params = optax.apply_updates(params, updates)
        held = dev_loss(params)
        better = held < best_loss
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best)
        gmax = jnp.maximum(jnp.max(jnp.abs(grad["W"])), jnp.max(jnp.abs(grad["b"])))
        return (params, state, best, jnp.minimum(held, best_loss), jnp.where(better, 0, since + 1),
                i + 1, gmax)

    def more(carry):
        *_, since, i, gmax = carry
        return (i < opts.max_iter) & (since < patience) & (gmax > opts.tol)

    init = (params, opt.init(params), params, dev_loss(params), 0, 0, jnp.inf)
    params, _, best, _, _, steps, _ = jax.lax.while_loop(more, step, init)
    return jax.tree.map(lambda b, p: jnp.where(stopping, b, p), best, params), steps


def fit_linear(x, y, w, x_dev, y_dev, *, k: int, opts: FitOptions):
    """Every layer's probe in one program.

    Args:
      x: float [L, N, D] training features; y: int [N] labels in 0..k-1 (shared by the layers, or
        [L, N]); w: float [N] sample weights (0 drops an item, as the MDL blocks do).
      x_dev: float [L, M, D]; y_dev: int [M] held-out items for early stopping.
      k: number of classes; opts: FitOptions (its patience is passed as a value, so turning early
        stopping on or off reuses the compiled program).

    Returns:
      ({"W": [L, D, K], "b": [L, K]}, steps int [L]).
    """
    patience = np.int32(0 if opts.patience is None else opts.patience)
    parallel = opts.parallel if opts.parallel is not None else jax.default_backend() != "cpu"
    return _fit(x, y, w, x_dev, y_dev, patience, k=k,
                opts=opts._replace(patience=None, parallel=None), parallel=parallel)


@functools.partial(jax.jit, static_argnames=("k", "opts", "parallel"))
def _fit(x, y, w, x_dev, y_dev, patience, *, k: int, opts: FitOptions, parallel: bool):
    one = functools.partial(_fit_one, k=k, opts=opts)
    if parallel:  # all layers in lockstep: the loop runs until the slowest layer stops
        y_axis = 0 if y.ndim == 2 else None
        return jax.vmap(one, in_axes=(0, y_axis, None, 0, None, None))(x, y, w, x_dev, y_dev,
                                                                        patience)
    ys = y if y.ndim == 2 else jnp.broadcast_to(y, (x.shape[0],) + y.shape)
    return jax.lax.map(lambda a: one(a[0], a[1], w, a[2], y_dev, patience), (x, ys, x_dev))


@jax.jit
def log_probs(params, x, y):
    """log p(y_i | x_i) under each layer's probe: params stacked over L, x [L, N, D], y int [N]
    -> float [L, N] (natural log)."""
    logits = jnp.einsum("LND,LDK->LNK", x, params["W"]) + params["b"][:, None, :]  # [L, N, K]
    lp = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(lp, jnp.broadcast_to(y[None, :, None], lp.shape[:2] + (1,)),
                               axis=2)[..., 0]


@jax.jit
def predict(params, x):
    """Each layer's predicted class: params stacked over L, x [L, N, D] -> int [L, N]."""
    logits = jnp.einsum("LND,LDK->LNK", x, params["W"]) + params["b"][:, None, :]  # [L, N, K]
    return jnp.argmax(logits, axis=-1)
