"""Token-labelled tables of what the model computed: attention maps, the embedding decomposition and
per-head attention statistics, as pandas DataFrames.

The array helpers here (`token_labels`, `example_attention`, `pick_head`) use NumPy only and are
shared by `bertjax.analysis.views` and `bertjax.analysis.plots`;
pandas is imported inside the functions that build
DataFrames, so `import bertjax` works without it.

Axis letters: L layers, B batch, N heads, S query positions, T key positions, D hidden.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from bertjax.model import capture as C

# One example's tokens, or every example's (one list per example of the batch).
Tokens = Sequence[str] | Sequence[Sequence[str]]
_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _pandas():
    try:
        import pandas
    except ImportError as e:
        raise ImportError("bertjax tables need pandas: pip install 'bertjax[analysis]'") from e
    return pandas


def tokens_for(tokenizer, input_ids) -> list[str]:
    """The tokenizer's token strings for one example's ids, int [S]."""
    return list(tokenizer.convert_ids_to_tokens([int(i) for i in np.asarray(input_ids)]))


def token_labels(tokens: Sequence[str]) -> list[str]:
    """Unique labels for table axes: a repeated token gets a subscript count ("the", "the₂")."""
    seen: dict[str, int] = {}
    labels = []
    for token in tokens:
        seen[token] = seen.get(token, 0) + 1
        labels.append(token if seen[token] == 1 else f"{token}{str(seen[token]).translate(_SUBSCRIPTS)}")
    return labels


_COUNTED = {"layer": "the model has {} layers", "head": "the model has {} heads",
            "batch": "the batch has {} examples"}


def as_int(value) -> int | None:
    """An int, NumPy int or integer scalar array as a Python int; None for anything else (floats,
    bools, strings, arrays of several values)."""
    if isinstance(value, (bool, np.bool_)) or np.dtype(getattr(value, "dtype", object)).kind == "b":
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_index(name: str, index, count: int) -> int:
    """A layer, head or batch index in [-count, count), returned as a non-negative Python int
    (NumPy ints are taken; floats and bools refused)."""
    if as_int(index) is None:
        raise ValueError(f"{name} must be an integer index, got {type(index).__name__} {index!r}")
    index = as_int(index)
    if not -count <= index < count:
        raise ValueError(f"{name} {index} is out of range: {_COUNTED[name].format(count)} "
                         f"(0..{count - 1}, or negative from the end)")
    return index % count


def real_positions(attention_mask, S: int, batch: int = 0) -> np.ndarray:
    """Indices of the real (non-padding) tokens of one example: mask [B, S] or [S] (None: all S)."""
    if attention_mask is None:
        return np.arange(S)
    mask = np.asarray(attention_mask)
    mask = mask[batch] if mask.ndim == 2 else mask
    if mask.shape != (S,):
        raise ValueError(f"attention_mask must have shape [B, S] or [S] with S={S}, "
                         f"got {np.asarray(attention_mask).shape}")
    return np.flatnonzero(mask)


PAD_TOKEN = "[PAD]"  # BERT's padding token: at a real position, the tokens are another example's


def _example_tokens(tokens: Tokens, B: int, batch: int) -> list[str]:
    """One example's tokens: `tokens` itself, or `tokens[batch]` when it holds every example's."""
    tokens = list(tokens)
    _check_not_ids(tokens)
    if tokens and not isinstance(tokens[0], str):  # the batch's tokens, one list per example
        if len(tokens) != B:
            raise ValueError(f"tokens holds {len(tokens)} token lists for a batch of {B} examples")
        return [str(t) for t in tokens[batch]]
    return tokens


def _check_not_ids(tokens: list) -> None:
    """Token ids where the token strings belong get a message saying so."""
    first = tokens[0] if tokens else None
    if first is not None and not isinstance(first, str) and np.ndim(first) == 1 and len(first):
        first = first[0]  # every example's tokens
    if first is not None and not isinstance(first, str) and np.asarray(first).dtype.kind in "iu":
        raise ValueError("tokens must be the token strings, got token ids: pass "
                         "tokens_for(tokenizer, ids) (bertjax.analysis.tables), i.e. "
                         "tokenizer.convert_ids_to_tokens(ids)")


def padded_keys(probs: np.ndarray) -> np.ndarray:
    """bool [T]: the keys no query attends to in any layer or head of one example's attention
    [L, N, S, T], which is what padding gets (its bias of at most -1e4 underflows to exactly 0)."""
    unseen = ~np.any(probs != 0, axis=(0, 1, 2))
    return unseen if not unseen.all() else np.zeros_like(unseen)


def _fit_tokens(tokens: list[str], keep: np.ndarray, padded: np.ndarray, batch: int) -> list[str]:
    """The example's real tokens (at `keep`) from its S tokens or only its real ones, checked
    against its padding (`padded`, bool [S]) so that another example's tokens cannot pass."""
    S, n = len(padded), len(keep)
    if len(tokens) == S:
        real, pads = [tokens[i] for i in keep], {tokens[i] for i in np.flatnonzero(padded)}
    elif len(tokens) == n:
        real, pads = tokens, set()
    else:
        raise ValueError(f"got {len(tokens)} tokens for {S} positions ({n} real tokens) of example "
                         f"{batch}: pass that example's tokens, or the tokens of every example")
    if PAD_TOKEN in real or len(pads) > 1 or pads & set(real):
        where = f"padding from position {int(np.argmax(padded))}" if padded.any() else "no padding"
        raise ValueError(f"the tokens do not fit example {batch} ({n} real tokens, {where}): they "
                         f"look like another example's; pass batch= for theirs, or the tokens of "
                         f"every example")
    return real


def example_attention(probs, tokens: Tokens | None, batch: int = 0,
                      attention_mask=None) -> tuple[np.ndarray, list[str]]:
    """One example's attention over all layers and heads, padding stripped.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T] for one example).
      tokens: the example's S tokens, or only its real tokens when a mask is given; or the
        tokens of every example of the batch (B lists), of which `batch` picks one; or None
        (labels "0", "1", ...: the kept positions).
      batch: which example of the batch.
      attention_mask: [B, S] or [S] of 1 (token) / 0 (padding), or None.

    Returns:
      float32 [L, N, S', S'] over the S' real tokens (rows sum to 1), and their S' tokens.

    Raises ValueError when the tokens do not fit the example: a count other than S or S', or a
    padding token where the example has a real one, or a real token where it has padding (its
    padding read from the mask, else from the keys that get no attention at all).
    """
    probs = np.asarray(probs, np.float32)
    B = probs.shape[1] if probs.ndim == 5 else 1
    if probs.ndim == 5:
        batch = check_index("batch", batch, B)
        probs = probs[:, batch]
    if probs.ndim != 4 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"probs must be attn.probs with shape [L, B, N, S, T] or [L, N, S, T], "
                         f"got {probs.shape}")
    S = probs.shape[-1]
    keep = real_positions(attention_mask, S, batch)
    padded = padded_keys(probs) if attention_mask is None else ~np.isin(np.arange(S), keep)
    if tokens is None:  # labels for maps that show none: the kept positions
        tokens = [str(i) for i in keep]
    else:
        tokens = _fit_tokens(_example_tokens(tokens, B, batch), keep, padded, batch)
    return probs[..., keep[:, None], keep[None, :]], tokens


def pick_head(probs: np.ndarray, layer: int, head: int | None) -> np.ndarray:
    """[L, N, S, T] -> [S, T]: one head of one layer, or the mean over heads when head is None."""
    L, N = probs.shape[:2]
    per_layer = probs[check_index("layer", layer, L)]  # [N, S, T]
    if head is None:
        return per_layer.mean(axis=0)
    return per_layer[check_index("head", head, N)]


def attention_table(probs, tokens: Tokens, layer: int = -1, head: int | None = None,
                    batch: int = 0, attention_mask=None):
    """One head's attention (or the mean over one layer's heads) as a token-labelled DataFrame.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's S tokens (see `tokens_for`), or only its real tokens with a mask; or
        the tokens of every example (B lists), of which `batch` picks the example's.
      layer: layer index (negative counts from the end; default the last layer).
      head: head index, or None for the mean over the layer's heads.
      batch: which example.
      attention_mask: [B, S] or [S]; padded rows and columns are dropped (without it, nothing is).

    Returns:
      DataFrame [S', T'] with query tokens as rows and key tokens as columns; rows sum to 1.

    Raises ValueError when the tokens do not fit example `batch` (see `example_attention`), e.g.
    the tokens of example 1 with the default batch=0.
    """
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    labels = token_labels(tokens)
    frame = _pandas().DataFrame(pick_head(probs, layer, head), index=labels, columns=labels)
    frame.index.name, frame.columns.name = "query", "key"
    return frame


EMBED_PARTS = {"word": C.EMBED_WORD, "position": C.EMBED_POSITION,
               "token_type": C.EMBED_TOKEN_TYPE, "sum": C.EMBED_SUM, "normalized": C.EMBED_OUT}


def embedding_table(acts: dict, tokens: Tokens, batch: int = 0, attention_mask=None):
    """The embedding decomposition of one example as a token-labelled DataFrame.

    Args:
      acts: captured activations holding every `embed.*` name (capture="embed.*"), each [B, S, D].
      tokens: the example's tokens (all S, or only the real ones with a mask), or every
        example's (B lists).

    Returns:
      DataFrame with one row per real token: the L2 norm of each part (word, position,
      token_type, sum = word + position + token_type, normalized = after LayerNorm), and
      `sum_error`, the max abs difference between word + position + token_type and sum.
    """
    missing = [name for name in EMBED_PARTS.values() if name not in acts]
    if missing:
        raise ValueError(f"embedding_table needs {', '.join(missing)} in acts "
                         f"(capture=\"embed.*\")")
    parts = {part: np.asarray(acts[name], np.float32) for part, name in EMBED_PARTS.items()}
    B, S, _ = parts["sum"].shape
    batch = check_index("batch", batch, B)
    keep = real_positions(attention_mask, S, batch)
    tokens = _fit_tokens(_example_tokens(tokens, B, batch), keep, ~np.isin(np.arange(S), keep), batch)
    parts = {part: value[batch][keep] for part, value in parts.items()}  # each [S', D]
    columns = {part: np.linalg.norm(value, axis=-1) for part, value in parts.items()}
    recomputed = parts["word"] + parts["position"] + parts["token_type"]
    columns["sum_error"] = np.abs(recomputed - parts["sum"]).max(axis=-1)
    frame = _pandas().DataFrame(columns, index=token_labels(tokens))
    frame.index.name = "token"
    return frame


STAT_COLUMNS = ("entropy", "to_cls", "to_sep", "to_self", "to_prev")


def stats_table(stats, batch: int | None = None):
    """Per-head attention statistics (`bertjax.analysis.reductions.AttentionStats`) as a long DataFrame.

    Returns:
      DataFrame with one row per (layer, head) and the columns of STAT_COLUMNS, averaged over
      the batch (or for one example when `batch` is given); e.g. `.nlargest(5, "to_prev")`.
    """
    columns = {}
    for name in STAT_COLUMNS:
        value = np.asarray(getattr(stats, name), np.float32)  # [L, B, N]
        columns[name] = (value.mean(axis=1) if batch is None else value[:, batch]).reshape(-1)
    L, _, N = np.asarray(stats.entropy).shape
    index = _pandas().MultiIndex.from_product([range(L), range(N)], names=["layer", "head"])
    return _pandas().DataFrame(columns, index=index)
