"""Dependency-tree quantities of the structural probes (Hewitt & Manning 2019): tree distances and
depths from head indices, the minimum spanning tree of a distance matrix, UUAS and Spearman
correlations as the paper's code reports them.

Punctuation: the paper scores UUAS and root accuracy on non-punctuation words only (its gold and
predicted trees are the minimum spanning trees over those words), while its Spearman correlations
use every word. With UD data, punctuation is UPOS "PUNCT"; pass `keep` masks accordingly.
"""

from __future__ import annotations

import numpy as np

SPEARMAN_LENGTHS = (5, 50)  # the paper averages Spearman per sentence length over 5..50 words


def check_heads(heads, i: int | None = None) -> np.ndarray:
    """heads int [W] (1-based, 0 the root) checked: one root, values in 0..W, no cycle."""
    h = np.asarray(heads)
    where = "" if i is None else f"sentence {i}: "
    if h.ndim != 1 or not len(h) or not np.issubdtype(h.dtype, np.integer):
        raise ValueError(f"{where}heads must be a non-empty int [W] array, got {h.dtype} {h.shape}")
    if h.min() < 0 or h.max() > len(h):
        raise ValueError(f"{where}heads must be in 0..{len(h)} (1-based, 0 the root), got "
                         f"{h.min()}..{h.max()}")
    if (h == 0).sum() != 1:
        raise ValueError(f"{where}heads must have exactly one root (head 0), got {(h == 0).sum()}")
    depth_of(h, where)
    return h


def depth_of(heads, where: str = "") -> np.ndarray:
    """int [W]: each word's number of edges to the root."""
    W = len(heads)
    depth = np.full(W, -1)
    for start in range(W):
        path, w = [], start
        while w >= 0 and depth[w] < 0:
            path.append(w)
            w = heads[w] - 1
            if len(path) > W:
                raise ValueError(f"{where}heads contain a cycle through word {start + 1}")
        d = -1 if w < 0 else depth[w]
        for v in reversed(path):
            d += 1
            depth[v] = d
    return depth


def distances_of(heads) -> np.ndarray:
    """int [W, W]: the number of tree edges between every two words."""
    W = len(heads)
    adj = [[] for _ in range(W)]
    for child, head in enumerate(heads):
        if head:
            adj[child].append(head - 1)
            adj[head - 1].append(child)
    dist = np.zeros((W, W), np.int64)
    for s in range(W):  # breadth-first from every word
        seen, frontier, d = {s}, [s], 0
        while frontier:
            d += 1
            nxt = [v for u in frontier for v in adj[u] if v not in seen]
            for v in nxt:
                seen.add(v)
                dist[s, v] = d
            frontier = nxt
    return dist


def mst_edges(dist: np.ndarray) -> set[tuple[int, int]]:
    """Undirected edges (i < j) of a minimum spanning tree of a symmetric [W, W] matrix (Prim's
    algorithm, ties to the lowest index, as the paper's code)."""
    W = len(dist)
    if W < 2:
        return set()
    inside = np.zeros(W, bool)
    inside[0] = True
    best, parent = dist[0].astype(np.float64).copy(), np.zeros(W, np.int64)
    edges = set()
    for _ in range(W - 1):
        cand = np.where(inside, np.inf, best)
        v = int(np.argmin(cand))
        p = int(parent[v])
        edges.add((min(v, p), max(v, p)))
        inside[v] = True
        closer = ~inside & (dist[v] < best)
        best[closer], parent[closer] = dist[v][closer], v
    return edges


def uuas_counts(pred: np.ndarray, gold: np.ndarray, keep: np.ndarray) -> tuple[int, int]:
    """(correct, total) undirected edges of the MST of `pred` against that of `gold`, both over
    the kept (non-punctuation) words only."""
    idx = np.flatnonzero(keep)
    if len(idx) < 2:
        return 0, 0
    sub = np.ix_(idx, idx)
    want = mst_edges(gold[sub])
    return len(mst_edges(pred[sub]) & want), len(want)


def rank(a: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties averaged (for Spearman's rho)."""
    order = np.argsort(a, axis=-1, kind="stable")
    r = np.empty(a.shape, np.float64)
    np.put_along_axis(r, order, np.arange(a.shape[-1], dtype=np.float64) * np.ones(a.shape), -1)
    out = np.empty_like(r)
    for idx in np.ndindex(a.shape[:-1]):  # average the ranks of equal values
        _, inv = np.unique(a[idx], return_inverse=True)
        sums = np.bincount(inv, r[idx])
        out[idx] = (sums / np.bincount(inv))[inv]
    return out


def spearman(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis (nan where either side is constant)."""
    a, b = rank(pred), rank(gold)
    a, b = a - a.mean(-1, keepdims=True), b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((a * b).sum(-1) / den)


def length_averaged(values: list[tuple[int, float]]) -> float:
    """Mean over sentence lengths 5..50 of the mean value at each length, as the paper."""
    lo, hi = SPEARMAN_LENGTHS
    per: dict[int, list[float]] = {}
    for length, v in values:
        if lo <= length <= hi and np.isfinite(v):
            per.setdefault(length, []).append(v)
    return float(np.mean([np.mean(v) for v in per.values()])) if per else float("nan")
