"""`word_features`: token activations pooled to words, for any tokenizer with `word_ids()`.

Subword tokenizers (WordPiece, BPE, SentencePiece) split a word into pieces; a tokenizer called
with `is_split_into_words=True` tells which word each token came from (`word_ids()`, None for
[CLS], [SEP] and padding). A word's feature is its first piece (the papers' choice: Hewitt &
Manning 2019, Liu et al. 2019), the mean of its pieces, or its last piece.
"""

from __future__ import annotations

import numpy as np

POOLS = ("first", "mean", "last")


def pooling_matrix(word_ids, pool: str = "first") -> np.ndarray:
    """float32 [W, S]: row w weights the tokens of word w (W = largest word id + 1).

    Raises ValueError for an unknown pool, negative ids, or a word with no token (words are
    numbered 0..W-1 in order, as `word_ids()` numbers them).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    ids = np.array([-1 if w is None else w for w in word_ids], np.int64)
    if not (ids >= 0).any():
        raise ValueError("word_ids has no word (every entry is None)")
    if (ids < -1).any():
        raise ValueError(f"word_ids must be None or non-negative, got {ids[ids < -1][0]}")
    W, S = int(ids.max()) + 1, len(ids)
    missing = sorted(set(range(W)) - set(ids.tolist()))
    if missing:
        raise ValueError(f"word {missing[0]} has no token in word_ids: words must be numbered "
                         f"0..W-1 (was the sentence truncated in the middle?)")
    m = np.zeros((W, S), np.float32)
    for w in range(W):
        where = np.flatnonzero(ids == w)
        if pool == "mean":
            m[w, where] = 1.0 / len(where)
        else:
            m[w, where[0] if pool == "first" else where[-1]] = 1.0
    return m


def word_features(acts, word_ids, pool: str = "first"):
    """Per-word features from per-token activations.

    Args:
      acts: float [L, S, D] (e.g. one example's `layer.out`) or [S, D].
      word_ids: [S] a tokenizer's `word_ids()` for this example: the word of each token, None
        for special tokens and padding.
      pool: "first", "mean" or "last" piece of each word.

    Returns:
      float [L, W, D] (or [W, D]), W the number of words, same array type (NumPy or JAX) as acts.
    """
    if acts.ndim not in (2, 3):
        raise ValueError(f"acts must be [L, S, D] or [S, D], got shape {tuple(acts.shape)}")
    if len(word_ids) != acts.shape[-2]:
        raise ValueError(f"word_ids has {len(word_ids)} entries but acts have S={acts.shape[-2]} "
                         f"tokens: pass this example's word_ids() without padding removed or added")
    m = pooling_matrix(word_ids, pool)
    if isinstance(acts, np.ndarray):
        return np.einsum("WS,...SD->...WD", m, acts.astype(np.float32))
    import jax.numpy as jnp

    return jnp.einsum("WS,...SD->...WD", m, acts)
