"""Edit and patch operands: what `forward` checks before anything is traced.

An operand (`mul` / `add` of an edit, `new` / `mask` of a patch) is a real number or array that
broadcasts to its activation's stacked shape (`bertjax.model.capture.SHAPES`, [L, ...] for
per-layer names), or a dict naming its axes (`{"N": x}`, `{"L N": x}`), which `named_operand`
moves onto those axes. `check_operands` returns the pairs with named operands placed and masks
as bool; every refusal is one ValueError naming `edit['name'] mul` (or the patch's operand).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.model.capture import LAYER_NAMES, SHAPES, shape_letters, stacked_shape


def check_operands(what: str, pairs: dict, sizes: dict[str, int], labels: tuple[str, str],
                   config=None) -> dict:
    """Checks each operand of `pairs` and returns the pairs with named operands placed.

    An operand is a real number or array (bool, int or float; never None, a string or complex)
    that broadcasts to its activation's stacked shape without changing it (NumPy broadcasting:
    trailing axes aligned, each either 1 or the activation's size; missing leading axes are
    broadcast), or a dict naming its axes, `{"N": x}` or `{"L N": x}` (letters of `SHAPES`, in
    the order of x's axes): x is then moved onto those axes (`named_operand`). A positional operand
    of fewer axes whose trailing alignment could be read as another axis of the same size (a per-head
    [N] edit of attn.probs when S == N is read as [T]) gives a UserWarning pointing at the named form.
    Patch masks must be boolean or hold only 0 and 1 (when concrete); a patch's new values at full
    rank must have every layer (a leading 1 is a layer-selected capture, refused).

    Args:
      what: "edit" or "patch" (named in the message).
      pairs: name -> two operands; sizes: axis letter -> size (L, B, S, N, H, D, I, V).
      labels: the operands' names in the message, e.g. ("mul", "add").
      config: the model's config, for the family's letters of a name (`shape_letters`: DeBERTa's
        embed.out is D wide); None: SHAPES's.
    """
    checked = {}
    for name, operands in pairs.items():
        target = stacked_shape(name, sizes, config)
        letters = shape_letters(name, config)
        placed = []
        for label, x in zip(labels, operands):
            where = f"{what}[{name!r}] {label}"
            x = named_operand(where, name, x, target, letters) if isinstance(x, dict) else x
            shape = real_shape(where, x)
            if len(shape) > len(target) or any(
                    a not in (1, b) for a, b in zip(shape[::-1], target[::-1])):
                raise ValueError(
                    f"{where} has shape {shape}, which does not broadcast to "
                    f"{name}'s stacked shape [{', '.join(_letters(letters, sizes))}]={target}")
            if label == "mask":
                x = _boolean_mask(where, x)
            if label == "new" and name in LAYER_NAMES and len(shape) == len(target) and (
                    shape[0] == 1 < target[0]):
                raise ValueError(f"{where} has 1 layer but the model has {target[0]}: values from "
                                 f"a layer-selected capture? capture every layer of {name} in the "
                                 f"clean run, or give values without the layer axis for all layers")
            if not isinstance(operands[len(placed)], dict):
                _warn_ambiguous(where, letters, shape, target, label)
            placed.append(x)
        checked[name] = tuple(placed)
    return checked



def _letters(letters: list[str], sizes: dict[str, int]) -> list[str]:
    """Axis letters for a message, E written D where the embeddings are D wide (BERT)."""
    same = sizes.get("E", sizes.get("D")) == sizes.get("D")
    return ["D" if letter == "E" and same else letter for letter in letters]


def real_shape(where: str, x) -> tuple[int, ...]:
    """The shape of a real number or array; ValueError for None, strings, objects, complex."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(x).dtype
        except (ValueError, TypeError):  # ragged lists
            dtype = np.dtype(object)
    if not is_real_dtype(dtype):
        got = "None" if x is None else f"{type(x).__name__} of dtype {dtype}"
        raise ValueError(f"{where} must be a real number or array (bool, int or float), got {got}")
    return tuple(np.shape(x))


def is_real_dtype(dtype) -> bool:
    """Whether a dtype is bool, int or float (bfloat16 included), not complex, string or object."""
    dtype = np.dtype(dtype)
    return dtype.kind in "biuf" or jnp.issubdtype(dtype, jnp.floating)


def _boolean_mask(where: str, mask):
    """A patch mask as bool: bool, or 0/1 values (checked when concrete); 0.5 or NaN refused."""
    if isinstance(mask, bool) or np.dtype(getattr(mask, "dtype", object)).kind == "b":
        return mask
    if isinstance(mask, jax.core.Tracer):
        return mask != 0
    values = np.asarray(mask)
    if values.dtype != bool and not np.isin(values, (0, 1)).all():
        raise ValueError(f"{where} must be boolean (or 0/1), got values like "
                         f"{values[~np.isin(values, (0, 1))].flat[0]!r}")
    return jnp.asarray(values, bool)


AXIS_WORDS = {"L": "layers", "B": "batch", "S": "query positions", "T": "key positions",
              "N": "heads", "H": "head size", "D": "hidden", "I": "intermediate", "V": "vocab"}


def named_operand(where: str, name: str, operand: dict, target: tuple[int, ...],
                  letters: list[str] | None = None):
    """`{"N": x}` or `{"L N": x}`: x's axes named by letters of name's stacked shape (`letters`,
    the model's `shape_letters`; None: SHAPES's); returns x transposed to those axes' order and
    reshaped to the full rank (1 on the other axes)."""

    axes = list(letters) if letters is not None else SHAPES[name].split()
    if len(operand) != 1:
        raise ValueError(f"{where}: a named operand is a dict of one entry {{'N': x}} or "
                         f"{{'L N': x}}, got {len(operand)} entries")
    (letters, x), = operand.items()
    letters = letters.split() if isinstance(letters, str) else [letters]
    unknown = [a for a in letters if a not in axes]
    if unknown:
        raise ValueError(f"{where}: unknown axis {unknown[0]!r} for {name}, whose axes are "
                         f"[{', '.join(axes)}]")
    if len(set(letters)) != len(letters):
        raise ValueError(f"{where}: the named operand repeats an axis: {' '.join(letters)}")
    shape = real_shape(where, x)
    want = tuple(target[axes.index(a)] for a in letters)
    if len(shape) != len(letters) or any(a not in (1, b) for a, b in zip(shape, want)):
        raise ValueError(f"{where} has shape {shape} for axes [{', '.join(letters)}], which need "
                         f"{want} (or 1s)")
    x = jnp.asarray(x)
    order = sorted(range(len(letters)), key=lambda i: axes.index(letters[i]))
    x = jnp.transpose(x, order)
    full = [1] * len(axes)
    for i in order:
        full[axes.index(letters[i])] = shape[i]
    return x.reshape(full)


def _warn_ambiguous(where: str, axes: list[str], shape: tuple, target: tuple, label: str) -> None:
    """Warns when a positional operand of fewer axes than its activation could mean other axes
    (`axes`: the activation's letters): a non-1 size that also is the size of an axis the trailing
    alignment leaves out."""
    if len(shape) >= len(target) or all(a == 1 for a in shape):
        return
    aligned = axes[len(axes) - len(shape):]
    left_out = {a: n for a, n in zip(axes[:len(axes) - len(shape)], target)}
    clash = [(a, other) for a, n in zip(aligned, shape) if n > 1
             for other, m in left_out.items() if m == n]
    if clash:
        a, other = clash[0]
        warnings.warn(f"{where} of shape {shape} is aligned to the trailing axes "
                      f"[{', '.join(aligned)}], but its size {target[axes.index(a)]} on {a} is also "
                      f"the size of {other} ({AXIS_WORDS[other]}): if it means {other}, name its "
                      f"axes, e.g. {{{other!r}: {label}}}", UserWarning, stacklevel=4)
