"""Structural probes on synthetic trees whose features are an exact linear image of the tree."""

import numpy as np
import pytest

import bertjax
from bertjax.probing import trees as T

D_TREE, D = 14, 17  # tree embedding size, feature size


def random_tree(rng, w: int) -> np.ndarray:
    """heads [w], 1-based, 0 the root: each word attaches to an earlier one after a random root."""
    order = rng.permutation(w)
    heads = np.zeros(w, np.int64)
    for k in range(1, w):
        heads[order[k]] = order[rng.integers(0, k)] + 1
    return heads


def tree_embedding(heads) -> np.ndarray:
    """[W, D_TREE]: word i is the sum of one-hots of the words on its path to the root (root
    excluded), so |h_i - h_j|^2 is the tree distance and |h_i|^2 the depth."""
    W = len(heads)
    h = np.zeros((W, D_TREE))
    for i in range(W):
        w = i
        while heads[w] != 0:
            h[i, w] = 1
            w = heads[w] - 1
    return h


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(D_TREE, D)) / np.sqrt(D_TREE)  # a random linear image
    heads, feats, upos = [], [], []
    for _ in range(120):
        h = random_tree(rng, int(rng.integers(5, D_TREE + 1)))
        exact = tree_embedding(h) @ A
        noise = rng.normal(size=exact.shape)
        heads.append(h)
        feats.append(np.stack([noise, exact]).astype(np.float32))  # layer 0 noise, layer 1 tree
        upos.append(["PUNCT" if k == len(h) - 1 and h[k] != 0 else "X" for k in range(len(h))])
    return feats, heads, upos


def test_tree_helpers_by_hand():
    heads = np.array([2, 0, 2, 3])  # 1 <- 2 -> 3 -> 4
    np.testing.assert_array_equal(T.depth_of(heads), [1, 0, 1, 2])
    d = T.distances_of(heads)
    assert d[0, 3] == 3 and d[3, 0] == 3 and (np.diag(d) == 0).all()
    assert T.mst_edges(d) == {(0, 1), (1, 2), (2, 3)}
    assert T.uuas_counts(d, d, np.ones(4, bool)) == (3, 3)
    np.testing.assert_allclose(T.spearman(np.array([1.0, 2, 3, 3]), np.array([1.0, 2, 4, 4])), 1)
    assert T.length_averaged([(5, 1.0), (5, 0.0), (6, 1.0), (4, -9.0)]) == pytest.approx(0.75)


def test_distance_probe_recovers_the_tree(corpus):
    feats, heads, upos = corpus
    r = bertjax.distance_probe(feats, heads, rank=D_TREE, upos=upos, learning_rate=0.02, epochs=60,
                               patience=6)
    assert r.uuas[1] > 0.97 and r.spearman[1] > 0.93, (r.uuas, r.spearman)
    assert r.uuas[0] < 0.7 and r.spearman[0] < 0.5
    assert r.params["B"].shape == (2, D_TREE, D) and r.root_accuracy is None


def test_depth_probe_recovers_the_root(corpus):
    feats, heads, upos = corpus
    r = bertjax.depth_probe(feats, heads, rank=D_TREE, upos=upos, learning_rate=0.02, epochs=60,
                            patience=6)
    assert r.root_accuracy[1] > 0.95 and r.spearman[1] > 0.93, (r.root_accuracy, r.spearman)
    assert r.root_accuracy[0] < 0.6 and r.uuas is None


def test_errors(corpus):
    feats, heads, _ = corpus
    with pytest.raises(ValueError, match="one entry per sentence"):
        bertjax.depth_probe(feats[:3], heads[:2])
    with pytest.raises(ValueError, match="sentence 1: heads must have exactly one root"):
        bertjax.depth_probe(feats[:2], [heads[0], np.ones(len(heads[1]), np.int64)])
    with pytest.raises(ValueError, match=r"sentence 0: heads must be in 0..3"):
        T.check_heads([0, 4, 1], 0)
    with pytest.raises(ValueError, match="cycle through word"):
        T.check_heads([0, 3, 2])
    with pytest.raises(ValueError, match=r"sentence 0: features must be \[L, W_i, D\]"):
        bertjax.depth_probe([feats[0][:, :-1]] + feats[1:3], heads[:3])
    with pytest.raises(ValueError, match="rank must be at least 1"):
        bertjax.distance_probe(feats[:3], heads[:3], rank=0)
