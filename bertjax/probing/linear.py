"""`probe_layers`: a linear probe per layer, with control tasks and online codelength.

Tenney et al. (2019) and Liu et al. (2019) train a linear classifier on each layer's frozen
features; Hewitt & Liang (2019) make it honest with a control task (`selectivity`), Voita & Titov
(2020) with the description length (`mdl_bits`). Here all layers' probes train at once
(`bertjax.probing.fit.fit_linear`: mapped over L inside the program on CPU, vmapped on
accelerators), with scikit-learn's LogisticRegression objective, so accuracies can be compared
with it directly.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from bertjax.probing import fit as F
from bertjax.probing.control import selectivity as _selectivity
from bertjax.probing.mdl import online_codelength


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What `probe_layers` returns.

    Attributes:
      accuracy: float [L] held-out accuracy per layer.
      train_accuracy: float [L].
      control_accuracy, selectivity: float [L] when a control task was given, else None.
      mdl_bits: float [L] online codelength in bits when mdl=True, else None; uniform_bits the
        uniform code's length (N log2 K) for comparison (compression = uniform_bits / mdl_bits).
      params: the probes {"W": [L, D, K], "b": [L, K]}; steps int [L] optimiser steps taken.
      dev: int [M] indices of the held-out items.
    """

    accuracy: np.ndarray
    train_accuracy: np.ndarray
    params: dict
    steps: np.ndarray
    dev: np.ndarray
    control_accuracy: np.ndarray | None = None
    selectivity: np.ndarray | None = None
    mdl_bits: np.ndarray | None = None
    uniform_bits: float | None = None


def split(n: int, dev, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, dev) indices: dev a fraction in (0, 1) of n drawn with `seed`, or an index array."""
    if isinstance(dev, float):
        if not 0 < dev < 1:
            raise ValueError(f"dev must be a fraction in (0, 1) or an index array, got {dev}")
        order = np.random.default_rng(seed).permutation(n)
        m = min(n - 1, max(1, int(round(dev * n))))
        held = np.sort(order[:m])
    else:
        held = np.unique(np.asarray(dev))
        if held.ndim != 1 or not np.issubdtype(held.dtype, np.integer) or not len(held):
            raise ValueError(f"dev must be a fraction or a non-empty int index array, got {dev!r}")
        if held[0] < 0 or held[-1] >= n:
            raise ValueError(f"dev indices must be in 0..{n - 1}, got {held[0]}..{held[-1]}")
        if len(held) == n:
            raise ValueError("dev holds out every item: leave some to train on")
    train = np.setdiff1d(np.arange(n), held)
    return train, held


def _check(features, labels) -> tuple[np.ndarray, np.ndarray, int]:
    x = np.asarray(features)
    if x.ndim != 3:
        raise ValueError(f"features must be float [L, N, D], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"features must be float [L, N, D], got {x.dtype}")
    y = np.asarray(labels)
    if y.shape != (x.shape[1],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be int [N] with N={x.shape[1]} (features' axis 1), got "
                         f"{y.dtype} {y.shape}")
    if len(y) < 2 or y.min() < 0:
        raise ValueError("labels must be at least 2 non-negative class ids")
    return x.astype(np.float32, copy=False), y.astype(np.int32), int(y.max()) + 1


def _train(x_train, x_held, y, train, held, k, opts):
    """x_train [L, n, D], x_held [L, m, D] on the device: the fit and the accuracies read the same
    copies (moving the features to the device again to predict cost more than the fit's overhead)."""
    params, steps = F.fit_linear(x_train, y[train], np.ones(len(train), np.float32),
                                 x_held, y[held], k=k, opts=opts)
    acc = (np.asarray(F.predict(params, x_held)) == y[held][None]).mean(1)  # [L]
    train_acc = (np.asarray(F.predict(params, x_train)) == y[train][None]).mean(1)
    return params, np.asarray(steps), acc, train_acc


def probe_layers(features, labels, *, dev=0.2, control=None, mdl: bool = False, seed: int = 0,
                 **train_options) -> ProbeResult:
    """Trains one linear softmax probe per layer, all layers in one compiled program.

    Args:
      features: float [L, N, D], N labelled items (e.g. `word_features` of every sentence,
        concatenated on axis 1).
      labels: int [N] class ids 0..K-1.
      dev: fraction of the items held out (drawn with `seed`), or an int index array of them.
        Accuracies are measured on them; early stopping watches their loss too.
      control: int [N] labels of a control task (`control_labels`), or None.
      mdl: also compute each layer's online codelength (Voita & Titov 2020) on the training
        items, in a seeded order.
      seed: the split and the MDL order; training itself starts at zero and is deterministic.
      **train_options: C (scikit-learn's inverse L2 strength, default 1), optimizer ("lbfgs" or
        "adam"), max_iter, tol, patience (None: no early stopping), learning_rate (Adam).

    Returns:
      ProbeResult.
    """
    opts = F.options(**train_options)
    x, y, k = _check(features, labels)
    train, held = split(x.shape[1], dev, seed)
    x_train, x_held = jax.device_put((x[:, train], x[:, held]))  # once, for every fit below
    params, steps, acc, train_acc = _train(x_train, x_held, y, train, held, k, opts)
    result = dict(accuracy=acc, train_accuracy=train_acc, params=jax.device_get(params),
                  steps=steps, dev=held)
    if control is not None:
        _, yc, kc = _check(x[:1, :, :1], control)
        _, _, control_acc, _ = _train(x_train, x_held, yc, train, held, max(k, kc), opts)
        result.update(control_accuracy=control_acc, selectivity=_selectivity(acc, control_acc))
    if mdl:
        bits = online_codelength(x[:, train], y[train], k=k, opts=opts, seed=seed,
                                 x_dev=x[:, held], y_dev=y[held])
        result.update(mdl_bits=bits,
                      uniform_bits=float(len(train) * np.log2(k)))
    return ProbeResult(**result)
