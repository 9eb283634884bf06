"""matplotlib figures of attention: one head, a layers x heads grid, and a per-head statistic.

Each function builds a `matplotlib.figure.Figure` directly (no pyplot state, so nothing is left
open and a notebook shows the returned figure once) and returns it; save it with
`fig.savefig(path)`. matplotlib is imported inside the functions, so `import bertjax` works without it.

Axis letters: L layers, B batch, N heads, S query positions, T key positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bertjax.analysis.tables import check_index, example_attention, pick_head, token_labels


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("bertjax plots need matplotlib: pip install 'bertjax[analysis]'") from e
    return Figure(figsize=(width, height), layout="constrained")


def plot_head(probs, tokens: Sequence[str], layer: int = -1, head: int | None = None,
              batch: int = 0, attention_mask=None, cmap: str = "viridis",
              vmax: float | None = 1.0):
    """Heatmap of one head's attention (or the mean over a layer's heads), tokens on both axes.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's tokens (padding stripped with `attention_mask`).
      layer, head: which map (negative from the end); head None is the mean over the layer's heads.
      vmax: the probability at the top of the colour scale (0 at the bottom): 1.0 compares maps on
        one scale; None scales to this map's largest weight, which shows the structure of a
        diffuse head (e.g. one whose weights stay below 0.3).

    Returns:
      the Figure (rows: queries, columns: keys, colour: probability), titled with the layer's
      non-negative index.
    """
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    matrix = pick_head(probs, layer, head)  # [S', T']
    layer = check_index("layer", layer, probs.shape[0])
    size = 1.5 + 0.3 * len(tokens)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=float(matrix.max()) if vmax is None else vmax)
    labels = token_labels(tokens)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    which = "mean over heads" if head is None else f"head {check_index('head', head, probs.shape[1])}"
    ax.set_title(f"layer {layer}, {which}")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_heads_grid(probs, tokens: Sequence[str] | None = None, batch: int = 0,
                    attention_mask=None, cmap: str = "viridis", cell: float = 1.1):
    """A layers x heads grid of small attention heatmaps of one example.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's tokens (only used to strip padding and count positions; the small
        maps carry no labels); None: not checked.
      cell: inches per small map.

    Returns:
      the Figure with L rows (layers) and N columns (heads).
    """
    probs, _ = example_attention(probs, tokens, batch, attention_mask)
    L, N = probs.shape[:2]
    fig = _figure(cell * N, cell * L)
    axes = fig.subplots(L, N, squeeze=False)
    for layer in range(L):
        for head in range(N):
            ax = axes[layer, head]
            ax.imshow(probs[layer, head], cmap=cmap, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    return fig


def plot_head_stat(values, title: str = "attention entropy (nats)", cmap: str = "magma",
                   annotate: bool = True):
    """Heatmap of one number per head, float [L, N] (e.g. an `AttentionStats` field averaged over
    the batch: `stats.entropy.mean(1)`), with layers as rows and heads as columns.

    Returns:
      the Figure.
    """
    values = np.asarray(values, np.float32)
    if values.ndim != 2:
        raise ValueError(f"values must have shape [L, N] (one number per head), got {values.shape}")
    L, N = values.shape
    fig = _figure(1.5 + 0.55 * N, 1.0 + 0.45 * L)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set_xticks(range(N))
    ax.set_yticks(range(L))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if annotate:
        middle = (values.max() + values.min()) / 2
        for (layer, head), value in np.ndenumerate(values):
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax)
    return fig


def plot_entropy(stats, batch: int | None = None):
    """Attention entropy per head (L x N) from `bertjax.analysis.reductions.attention_stats`' result,
    averaged over the batch or for one example."""
    entropy = np.asarray(stats.entropy, np.float32)  # [L, B, N]
    values = entropy.mean(axis=1) if batch is None else entropy[:, batch]
    return plot_head_stat(values, "attention entropy (nats), mean over real queries")
