"""Control tasks (Hewitt & Liang 2019): `control_labels` and selectivity.

A control task gives every word type a label drawn at random from the task's label distribution,
the same label at each of its occurrences. A probe that does well on it memorises word identity
rather than reading the property from the representation; selectivity, the probe's accuracy on the
real task minus its accuracy on the control task, is the part the control cannot explain.
"""

from __future__ import annotations

import numpy as np


def control_labels(types, labels, seed: int = 0) -> np.ndarray:
    """A control task's labels, one per item.

    Args:
      types: [N] each item's word type, a sequence or array (strings or ints; e.g. the
        lower-cased word form).
      labels: int [N] the real task's labels; their empirical distribution is what each type's
        control label is drawn from.
      seed: the draw's seed (the same seed gives the same control task).

    Returns:
      int64 [N]: every occurrence of a type gets that type's control label.
    """
    labels = np.asarray(labels)
    if len(types) != len(labels):
        raise ValueError(f"types and labels must have one entry per item, got {len(types)} "
                         f"types and {len(labels)} labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int [N], got {labels.dtype} {labels.shape}")
    # types in order of first appearance, so the draw does not depend on how types sort
    keys, inverse = {}, np.empty(len(labels), np.int64)
    for i, t in enumerate(types):
        inverse[i] = keys.setdefault(t, len(keys))
    values, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    per_type = rng.choice(values, size=len(keys), p=counts / counts.sum())
    return per_type[inverse].astype(np.int64)


def selectivity(accuracy, control_accuracy) -> np.ndarray:
    """accuracy - control_accuracy, per layer: float [L]."""
    return np.asarray(accuracy) - np.asarray(control_accuracy)
