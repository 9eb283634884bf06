"""Input validation shared by the public entry points.

JAX clamps out-of-range gathers silently, so a token id >= vocab_size would quietly read the last
row of the table. Two layers of checks prevent a silently wrong answer:

* shape, rank and dtype checks run at trace time on static shapes (free once compiled);
* value checks (ids in range, sequence length) run eagerly whenever the inputs are concrete, which is
  the case for every call of `bertjax.forward` not wrapped in an outer `jax.jit`.

Inside an outer `jax.jit` the values are tracers and cannot be read: use `bertjax.checked_forward`,
which carries the same value checks through `jax.experimental.checkify`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from bertjax.model.config import BertConfig


def _is_concrete(x) -> bool:
    return x is not None and not isinstance(x, (jax.core.Tracer, jax.ShapeDtypeStruct))


def _shapes_only(*arrays):
    """The arrays as ShapeDtypeStructs (None stays None): what the value checks skip."""
    return [None if x is None else jax.ShapeDtypeStruct(tuple(x.shape), x.dtype) for x in arrays]


def _check_int(name: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {x.dtype}")


def _check_range(name: str, x, limit: int, what: str) -> None:
    if not _is_concrete(x) or x.size == 0:
        return
    lo, hi = int(np.min(x)), int(np.max(x))
    if lo < 0 or hi >= limit:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} must be in [0, {limit}) ({what}), got {bad}")


def check_inputs(config: BertConfig, input_ids, token_type_ids=None, attention_mask=None,
                 position_ids=None, values: bool = True) -> None:
    """Raises ValueError naming the argument for any input that would give a wrong answer.

    Args:
      input_ids: int [B, S], B >= 1 and S >= 1.
      token_type_ids: int [B, S] or None.
      attention_mask: [B, S] of 0/1 (any dtype) or None.
      position_ids: int [B, S], [1, S] or [S], or None.
      values: also check the values of concrete inputs (False: shapes and dtypes only, for
        `checked_forward`, whose value checks go through checkify).
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [B, S], got shape {tuple(input_ids.shape)}")
    _check_int("input_ids", input_ids)
    B, S = input_ids.shape
    if B == 0 or S == 0:
        raise ValueError(f"input_ids has shape {(B, S)}: an empty "
                         f"{'batch' if B == 0 else 'sequence'}; need at least one sequence of at "
                         f"least one token")
    if not values:
        input_ids, token_type_ids, attention_mask, position_ids = _shapes_only(
            input_ids, token_type_ids, attention_mask, position_ids)
    _check_range("input_ids", input_ids, config.vocab_size, f"vocab_size={config.vocab_size}")
    if token_type_ids is not None:
        if not config.has_token_types:
            raise ValueError(f"token_type_ids must be None: a {config.model_type} model has no "
                             f"token types")
        if tuple(token_type_ids.shape) != (B, S):
            raise ValueError(f"token_type_ids must have the shape of input_ids {(B, S)}, "
                             f"got {tuple(token_type_ids.shape)}")
        _check_int("token_type_ids", token_type_ids)
        _check_range("token_type_ids", token_type_ids, config.type_vocab_size,
                     f"type_vocab_size={config.type_vocab_size}")
    if attention_mask is not None:
        if tuple(attention_mask.shape) != (B, S):
            raise ValueError(f"attention_mask must have the shape of input_ids {(B, S)}, "
                             f"got {tuple(attention_mask.shape)}")
        if _is_concrete(attention_mask) and not np.isin(np.asarray(attention_mask), (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    if position_ids is None:
        if S > config.max_sequence_length:
            raise ValueError(f"input_ids: sequence length {S} exceeds "
                             f"{_longest(config)}")
    else:
        if tuple(position_ids.shape) not in ((B, S), (1, S), (S,)):
            raise ValueError(f"position_ids must have shape [B, S], [1, S] or [S] with "
                             f"(B, S)={(B, S)}, got {tuple(position_ids.shape)}")
        _check_int("position_ids", position_ids)
        _check_range("position_ids", position_ids, config.max_position_embeddings,
                     f"max_position_embeddings={config.max_position_embeddings}")


def _longest(config: BertConfig) -> str:
    """The longest sequence the default position ids allow, with why."""
    P = config.max_position_embeddings
    if not config.padding_aware_positions:
        return f"max_position_embeddings={P}"
    return (f"{config.max_sequence_length}, the longest a {config.model_type} model takes "
            f"(max_position_embeddings={P}, positions start at {config.position_pad_id + 1})")


def _first_bad(x, ok):
    """The first value of `x` where `ok` is False (any value when all are fine)."""
    return jnp.ravel(x)[jnp.argmin(jnp.ravel(ok))]


def _check_values(name: str, x, ok, expected: str) -> None:
    checkify.check(jnp.all(ok), f"{name} must be {expected}, got {{}}", _first_bad(x, ok))


def check_hidden(hidden, config: BertConfig, name: str = "hidden") -> None:
    """Raises ValueError unless `hidden` is a float [B, S, D] array with D = hidden_size."""
    shape = tuple(getattr(hidden, "shape", np.shape(hidden)))
    if len(shape) != 3 or shape[-1] != config.hidden_size:
        raise ValueError(f"{name} must have shape [B, S, D] with D = hidden_size = "
                         f"{config.hidden_size}, got shape {shape}")


def checkify_inputs(config: BertConfig, input_ids, token_type_ids=None, position_ids=None,
                    attention_mask=None) -> None:
    """The value checks of `check_inputs` as `checkify.check`s, for use under an outer jit; each
    message names the argument, what is allowed and the first offending value."""
    V, Y, P = config.vocab_size, config.type_vocab_size, config.max_position_embeddings
    _check_values("input_ids", input_ids, (input_ids >= 0) & (input_ids < V),
                  f"in [0, {V}) (vocab_size={V})")
    if token_type_ids is not None and not config.has_token_types:
        raise ValueError(f"token_type_ids must be None: a {config.model_type} model has no "
                         f"token types")
    if token_type_ids is not None:
        _check_values("token_type_ids", token_type_ids, (token_type_ids >= 0) & (token_type_ids < Y),
                      f"in [0, {Y}) (type_vocab_size={Y})")
    if position_ids is not None:
        _check_values("position_ids", position_ids, (position_ids >= 0) & (position_ids < P),
                      f"in [0, {P}) (max_position_embeddings={P})")
    if attention_mask is not None:
        _check_values("attention_mask", attention_mask, (attention_mask == 0) | (attention_mask == 1),
                      "0 (padding) or 1 (token)")
