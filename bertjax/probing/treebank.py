"""`read_conllu`: sentences of a CoNLL-U treebank (Universal Dependencies), via the `conllu` package.

Only syntactic words are kept: multiword-token ranges (ID "1-2", e.g. English "don't" over "do"
and "n't") and empty nodes of enhanced dependencies (ID "1.1") are skipped, as the structural
probe papers did. Head indices are 1-based with 0 the root, as in the file.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One sentence: `words`, `upos`, `deprels` (lists of str), `heads` int [W] (1-based, 0 the
    root) and `text` (the file's `# text`, or the words joined by spaces)."""

    words: list
    heads: np.ndarray
    upos: list
    deprels: list
    text: str


def _sentence(tokens, start_line: int, path: str) -> Sentence:
    """A parsed sentence; start_line is the file line of its first token row."""
    # ranges ("1-2") parse to tuples, empty nodes ("1.1") to tuples too: only ints are words
    lines = [start_line + j for j, t in enumerate(tokens) if isinstance(t["id"], int)]
    rows = [t for t in tokens if isinstance(t["id"], int)]
    if not rows:
        raise ValueError(f"{path}:{start_line}: sentence has no words")
    for i, (t, line) in enumerate(zip(rows, lines), 1):
        if t["id"] != i or not isinstance(t["head"], int) or not 0 <= t["head"] <= len(rows):
            raise ValueError(f"{path}:{line}: word has ID {t['id']!r} and HEAD {t['head']!r}; "
                             f"expected ID {i} and HEAD in 0..{len(rows)}")
    words = [t["form"] for t in rows]
    heads = np.array([t["head"] for t in rows], np.int64)
    text = tokens.metadata.get("text", " ".join(words))
    return Sentence(words, heads, [t["upos"] for t in rows], [t["deprel"] for t in rows], text)


def read_conllu(path: str | os.PathLike) -> list[Sentence]:
    """Reads a CoNLL-U file.

    Returns:
      a list of `Sentence` (words, heads, upos, deprels, text) in file order.

    Raises:
      ValueError naming the file and line for a malformed sentence (wrong column count, a
      non-integer or out-of-range HEAD, IDs out of order).
    """
    import conllu

    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    sentences, line = [], 1
    for block in text.split("\n\n"):
        lines = block.count("\n") + 2
        if block.strip():
            offset = len(block) - len(block.lstrip("\n"))
            first = line + offset
            bad = _bad_line(block, first)
            if bad is not None:
                raise ValueError(f"{path}:{bad}: not CoNLL-U (expected 10 tab-separated columns)")
            try:
                parsed = conllu.parse(block.strip("\n") + "\n\n")
            except conllu.exceptions.ParseException as e:
                raise ValueError(f"{path}:{_failed_line(block, first, e)}: not CoNLL-U ({e})") from None
            sentences += [_sentence(s, first + _n_comments(block), path) for s in parsed]
        line += lines
    return sentences


def _n_comments(block: str) -> int:
    return sum(1 for row in block.strip("\n").split("\n") if row.startswith("#"))


def _rows(block: str):
    return enumerate(block.strip("\n").split("\n"))


def _bad_line(block: str, first: int) -> int | None:
    """The first line of the block whose column count is not 10, or None."""
    for i, row in _rows(block):
        if row and not row.startswith("#") and len(row.split("\t")) != 10:
            return first + i
    return None


def _failed_line(block: str, first: int, error: Exception) -> int:
    """The line holding the value conllu failed on (quoted in its message), else the first."""
    message = str(error)
    for i, row in _rows(block):
        if not row.startswith("#") and any(f"'{v}'" in message for v in row.split("\t")):
            return first + i
    return first
