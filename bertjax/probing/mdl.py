"""Online codelength (Voita & Titov 2020, "Information-Theoretic Probing with Minimum Description
Length"): how many bits it takes to transmit the labels given the representations.

The items (in a seeded random order) are sent in blocks ending at 0.1, 0.2, 0.4, 0.8, 1.6, 3.2,
6.25, 12.5, 25, 50 and 100 % of the data. The first block goes with a uniform code (log2 K bits per
label); each later block with the probe trained on everything sent before it, costing
-log2 p(label) bits per item. Labels a representation makes easy cost few bits; labels independent
of it cost about the uniform code. All layers' probes for one block train in one program.
"""

from __future__ import annotations

import numpy as np

from bertjax.probing.fit import FitOptions, fit_linear, log_probs

# Voita & Titov's block ends, in percent of the data
BLOCKS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.25, 12.5, 25.0, 50.0, 100.0)


def block_ends(n: int) -> list[int]:
    """Where each block ends for n items: increasing, at least 1, the last n."""
    ends = sorted({min(n, max(1, int(round(n * p / 100)))) for p in BLOCKS})
    return ends


def online_codelength(x, y, *, k: int, opts: FitOptions, seed: int = 0, x_dev=None,
                      y_dev=None) -> np.ndarray:
    """Each layer's online codelength in bits.

    Args:
      x: float [L, N, D]; y: int [N] labels in 0..k-1; k: number of classes.
      opts: the probe's training options (early stopping is off: blocks have no held-out part).
      seed: the order in which items are transmitted.
      x_dev, y_dev: unused by the fit (no early stopping) but passed to it: arrays shaped like a
        `probe_layers` call's held-out items reuse its compiled program. Default: one item.

    Returns:
      float64 [L] bits (the uniform code would be N * log2 k).
    """
    L, n, _ = x.shape
    order = np.random.default_rng(seed).permutation(n)
    x, y = np.asarray(x)[:, order], np.asarray(y)[order]
    ends = block_ends(n)
    bits = np.full(L, ends[0] * np.log2(k))
    opts = opts._replace(patience=None)
    if x_dev is None:
        x_dev, y_dev = x[:, :1], y[:1]
    for start, end in zip(ends[:-1], ends[1:]):
        w = (np.arange(n) < start).astype(x.dtype)  # train on what was sent before the block
        params, _ = fit_linear(x, y, w, x_dev, y_dev, k=k, opts=opts)
        lp = np.asarray(log_probs(params, x, y))  # [L, N]: one shape, one compiled program
        bits -= lp[:, start:end].sum(axis=1) / np.log(2)
    return bits
