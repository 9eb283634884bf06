"""Labelled .jsonl sets for fine-tuning: reading, validation, tokenization, masking and batching,
and a small generated set that shows fine-tuning learns.

Formats (one JSON object a line; blank lines are skipped), by task:
  classification  {"text": str, "text_pair": str (optional), "label": str | int}
  tokens          {"tokens": [word, ...], "labels": [label, ...]}  one label per word; the word's
                  first word piece carries it, its other pieces and [CLS]/[SEP] are IGNORE
  mlm             {"text": str, "text_pair": str (optional)}  BERT's masking (`mask_tokens`)
Labels are all names (sorted, they become the config's id2label) or all integers >= 0
(num_labels = the largest + 1), at most MAX_LABELS of them (each is an output of the classifier).
Bad data (invalid JSON, a missing or empty text, a missing label, a label the training set does not
have, a line over MAX_LINE_BYTES, a text holding a lone surrogate) raises ValueError naming the
file and the line.

Batches (`epoch_batches`): each epoch's order is a permutation drawn from (seed, epoch); windows of
50 batches are sorted by length bucket (`bertjax.scale.buckets`) so that a batch holds similar lengths,
then the batches are shuffled. `collate` pads a batch to its bucket's length and a fixed number of
rows (IGNORE labels), so a jitted step compiles once per bucket.

The generated set, `sentiment(split, n, seed)`, fills sentence templates with a noun (what is
reviewed) and an adjective whose polarity is the label, "positive" or "negative": a sentence is
positive exactly when its adjective is in POSITIVE. The "train" and "test" splits share no template,
no adjective and no noun, so a test accuracy measures whether the model learnt what the sentences
say from words it never saw labelled (its pretraining knows that "superb" and "dreadful" differ),
not the strings it saw. `write_jsonl` writes records in the format above.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np

from bertjax.checkpoints.files import LongLine, bounded_lines, lone_surrogate
from bertjax.scale.buckets import bucket_for, pad_batch
from bertjax.training.train import IGNORE, TASKS

MAX_LABELS = 10_000  # classes of a classifier: a label of 1e9 would allocate a billion outputs
MAX_LINE_BYTES = 16 * 2**20  # one record; a longer line is refused without being held whole
_WINDOW = 50  # batches sorted by length together: similar lengths per batch, still well shuffled
_DEFAULT_FIELDS = {"classification": ("text", "label"), "tokens": ("tokens", "labels"),
                   "mlm": ("text", None)}


@dataclasses.dataclass(frozen=True)
class Fields:
    """Which task a file is for and which JSON fields hold its texts and labels."""

    task: str
    text: str
    pair: str = "text_pair"
    label: str | None = None

    @classmethod
    def for_task(cls, task: str, text: str | None = None, pair: str = "text_pair",
                 label: str | None = None) -> Fields:
        """The fields, with the task's defaults for those left None."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        default_text, default_label = _DEFAULT_FIELDS[task]
        return cls(task, text or default_text, pair, label or default_label)


@dataclasses.dataclass
class Example:
    """One tokenized record."""

    line: int  # 1-based line of the file
    ids: list[int]
    types: list[int]
    label: int | list[int] | None  # int (classification), per-piece ids (tokens), None (mlm)


def _bad(path: str, number: int, what: str) -> ValueError:
    return ValueError(f"{path}, line {number}: {what}")


def read_records(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line; ValueError names a bad line."""
    with open(path, "rb") as f:
        for number, raw in bounded_lines(f, MAX_LINE_BYTES):
            if isinstance(raw, LongLine):
                raise _bad(path, number, f"longer than {MAX_LINE_BYTES} bytes ({raw.size} bytes; "
                                         f"datasets.MAX_LINE_BYTES); split or shorten it")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad(path, number, "not UTF-8") from None
            if not text.strip():
                continue
            record = _json(text, path, number)
            if not isinstance(record, dict):
                raise _bad(path, number, "not a JSON object")
            yield number, record


def _json(text: str, path: str, number: int):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(path, number, f"invalid JSON ({e.msg})") from None
    except RecursionError:
        raise _bad(path, number, "invalid JSON (nested too deeply)") from None
    except ValueError as e:  # a number with more digits than Python's int takes
        raise _bad(path, number, f"invalid JSON ({e})") from None


def _text(record: dict, field: str, path: str, number: int, required: bool = True):
    value = record.get(field)
    if value is None and not required:
        return None
    if value is None:
        raise _bad(path, number, f"missing text (no field {field!r})")
    if not isinstance(value, str):
        raise _bad(path, number, f"field {field!r} is not a string")
    if not value.strip():
        raise _bad(path, number, f"empty text in field {field!r}")
    if why := lone_surrogate(value, field):
        raise _bad(path, number, why)
    return value


def _check_label(value, path: str, number: int, field: str):
    if value is None:
        raise _bad(path, number, f"missing label (no field {field!r})")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or \
            (isinstance(value, int) and value < 0) or value == "":
        raise _bad(path, number, f"label {value!r} is not a name or an integer >= 0")
    if isinstance(value, int) and value >= MAX_LABELS:
        raise _bad(path, number, f"label {value} is over the limit: integer labels must be < "
                                 f"{MAX_LABELS} (datasets.MAX_LABELS), one classifier output each; "
                                 f"renumber them, or use names")
    return value


def _words(record: dict, fields: Fields, path: str, number: int) -> tuple[list[str], list]:
    text_field, label_field = fields.text, fields.label
    words, labels = record.get(text_field), record.get(label_field)
    if not isinstance(words, list) or not words or \
            not all(isinstance(w, str) and w.strip() for w in words):
        raise _bad(path, number, f"field {text_field!r} must be a non-empty list of non-empty words")
    if why := next(filter(None, (lone_surrogate(w, text_field) for w in words)), None):
        raise _bad(path, number, why)
    if labels is None:
        raise _bad(path, number, f"missing labels (no field {label_field!r})")
    if not isinstance(labels, list) or len(labels) != len(words):
        raise _bad(path, number, f"{text_field!r} has {len(words)} words but {label_field!r} "
                                 f"has {len(labels) if isinstance(labels, list) else 'no list of'} "
                                 f"labels")
    return words, [_check_label(x, path, number, label_field) for x in labels]


def parse(path: str, fields: Fields) -> list[tuple[int, tuple, object]]:
    """(line, texts, raw label) per record: texts is (text, pair) or (words,); label None for mlm."""
    rows = []
    for number, record in read_records(path):
        if fields.task == "tokens":
            words, labels = _words(record, fields, path, number)
            rows.append((number, (words,), labels))
            continue
        texts = (_text(record, fields.text, path, number),
                 _text(record, fields.pair, path, number, required=False))
        label = None if fields.task == "mlm" else \
            _check_label(record.get(fields.label), path, number, fields.label)
        rows.append((number, texts, label))
    if not rows:
        raise ValueError(f"{path} holds no records")
    return rows


def label_names(rows: list, path: str) -> tuple[tuple[str, ...], int]:
    """(names, num_labels) of the training labels: sorted names, or () and the largest int + 1."""
    seen, first = set(), {}
    for number, _, label in rows:
        for value in (label if isinstance(label, list) else [label]):
            kind = type(value)
            first.setdefault(kind, number)
            if len(first) > 1:
                raise _bad(path, number, f"label {value!r} mixes names and integers (line "
                                         f"{min(first.values())} has the other kind); use one kind")
            seen.add(value)
    if str in first:
        names = tuple(sorted(seen))
        if len(names) > MAX_LABELS:
            raise ValueError(f"{path}: {len(names)} label names, over the limit of {MAX_LABELS} "
                             f"(datasets.MAX_LABELS) classifier outputs")
        return names, len(names)
    return (), max(seen) + 1


def label_id(value, names: tuple[str, ...], num_labels: int, path: str, number: int) -> int:
    """The id of a raw label; ValueError naming the line for one the training set does not have."""
    if names and value in names:
        return names.index(value)
    if not names and isinstance(value, int) and value < num_labels:
        return value
    known = ", ".join(names) if names else f"0..{num_labels - 1}"
    raise _bad(path, number, f"unknown label {value!r}; the training labels are {known}")


def _pieces(tokenizer, words: list[str], cache: dict) -> list[list[int]]:
    """Each word's piece ids ([UNK] for a word with none), memoised in `cache`."""
    for w in words:
        if w not in cache:
            cache[w] = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w)) or \
                [tokenizer.unk_token_id]
    return [cache[w] for w in words]


def encode_words(tokenizer, words: list[str], labels: list[int], max_length: int,
                 cache: dict) -> tuple[list[int], list[int]]:
    """[CLS] pieces [SEP] cut to max_length, and per-piece labels (first piece of a word only)."""
    ids, tags = [tokenizer.cls_token_id], [IGNORE]
    for pieces, label in zip(_pieces(tokenizer, words, cache), labels):
        ids += pieces
        tags += [label] + [IGNORE] * (len(pieces) - 1)
    ids, tags = ids[: max_length - 1], tags[: max_length - 1]
    return ids + [tokenizer.sep_token_id], tags + [IGNORE]


def encode(rows: list, tokenizer, task: str, max_length: int, labels: tuple[tuple[str, ...], int],
           path: str) -> list[Example]:
    """Token ids, token types and label ids of the parsed rows (texts cut to max_length), in order.

    labels: (names, num_labels) of the training set (`label_names`).
    """
    names, num_labels = labels
    if task == "tokens":
        cache: dict = {}
        out = []
        for number, (words,), raw in rows:
            tags = [label_id(x, names, num_labels, path, number) for x in raw]
            ids, tags = encode_words(tokenizer, words, tags, max_length, cache)
            out.append(Example(number, ids, [0] * len(ids), tags))
        return out
    out = {}
    for has_pair in (False, True):
        group = [r for r in rows if (r[1][1] is not None) == has_pair]
        if not group:
            continue
        enc = tokenizer([r[1][0] for r in group], [r[1][1] for r in group] if has_pair else None,
                        truncation=True, max_length=max_length)
        types_of = enc.get("token_type_ids") or [[0] * len(i) for i in enc["input_ids"]]  # RoBERTa's
        for (number, _, raw), ids, types in zip(group, enc["input_ids"], types_of):  # have none
            label = None if raw is None else label_id(raw, names, num_labels, path, number)
            out[number] = Example(number, ids, types, label)
    return [out[r[0]] for r in rows]


def epoch_batches(lengths: list[int], batch_size: int, buckets: tuple[int, ...], seed: int,
                  epoch: int) -> list[np.ndarray]:
    """The example indices of each batch of the epoch, in order (a function of seed and epoch)."""
    rng = np.random.default_rng([seed, 0, epoch])
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), batch_size * _WINDOW):
        window = sorted(order[start: start + batch_size * _WINDOW],
                        key=lambda i: bucket_for(lengths[i], buckets))  # stable: keeps the shuffle
        batches += [np.asarray(window[j: j + batch_size]) for j in range(0, len(window), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def mask_tokens(ids: np.ndarray, special: np.ndarray, rng: np.random.Generator, vocab_size: int,
                mask_id: int, probability: float) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking of int ids [B, S]: chosen positions (not special) become [MASK] (80%), a random
    id (10%) or stay (10%). Returns (masked ids [B, S], labels [B, S]: the original id where
    chosen, IGNORE elsewhere)."""
    chosen = (rng.random(ids.shape) < probability) & ~special
    draw = rng.random(ids.shape)
    random_ids = rng.integers(0, vocab_size, ids.shape)
    labels = np.where(chosen, ids, IGNORE).astype(np.int32)
    ids = np.where(chosen & (draw < 0.8), mask_id, ids)
    ids = np.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, ids)
    return ids.astype(np.int32), labels


@dataclasses.dataclass(frozen=True)
class Padding:
    """How `collate` shapes a batch, and the ids MLM masking needs."""

    buckets: tuple[int, ...]
    rows: int  # rows per batch (padded rows carry IGNORE labels)
    pad_id: int
    special_ids: tuple[int, ...] = ()  # never masked
    mask_id: int | None = None
    vocab_size: int = 0  # random replacement ids are drawn from [0, vocab_size)
    mlm_probability: float = 0.15


def collate(pad: Padding, examples: list[Example], task: str,
            mask_rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """A padded batch: input_ids, token_type_ids, attention_mask int32 [rows, S] (S the bucket of
    the longest example) and labels int32 [rows] (classification) or [rows, S]; mlm masks ids with
    `mask_rng`."""
    ids, mask = pad_batch([e.ids for e in examples], pad.buckets, pad.pad_id, pad.rows)
    types, _ = pad_batch([e.types for e in examples], pad.buckets, 0, pad.rows)
    if task == "classification":
        labels = np.full((pad.rows,), IGNORE, np.int32)
        labels[: len(examples)] = [e.label for e in examples]
    elif task == "tokens":
        labels = np.full(ids.shape, IGNORE, np.int32)
        for row, e in enumerate(examples):
            labels[row, : len(e.label)] = e.label
    else:
        special = np.isin(ids, pad.special_ids) | (mask == 0)
        ids, labels = mask_tokens(ids, special, mask_rng, pad.vocab_size, pad.mask_id,
                                  pad.mlm_probability)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


# The generated sentiment set.

SPLITS = ("train", "test")

TEMPLATES = {
    "train": ("the {noun} was {adj}.", "i thought the {noun} was {adj}.",
              "honestly, a {adj} {noun}.", "what a {adj} {noun} that was!",
              "my friends found the {noun} {adj}.", "overall the {noun} felt {adj}."),
    "test": ("this {noun} is {adj}.", "we all agreed it was a {adj} {noun}.",
             "the {noun} turned out {adj}.", "such a {adj} {noun}, really."),
}
POSITIVE = {
    "train": ("great", "wonderful", "excellent", "delightful", "superb", "lovely", "brilliant",
              "enjoyable", "fantastic", "charming"),
    "test": ("amazing", "pleasant", "outstanding", "marvelous", "terrific", "good"),
}
NEGATIVE = {
    "train": ("terrible", "awful", "boring", "dreadful", "horrible", "dull", "disappointing",
              "miserable", "poor", "unpleasant"),
    "test": ("bad", "lousy", "mediocre", "painful", "annoying", "tedious"),
}
NOUNS = {
    "train": ("movie", "meal", "hotel", "concert", "book", "service", "trip", "game"),
    "test": ("show", "restaurant", "album", "flight", "play", "course"),
}
LABELS = ("negative", "positive")


def sentiment(split: str, n: int, seed: int = 0) -> list[dict]:
    """n records {"text", "label"} of the split, labels alternating (balanced), drawn from a seeded
    rng: the same (split, n, seed) always gives the same records."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    records = []
    for i in range(n):
        label = LABELS[i % 2]
        words = (POSITIVE if label == "positive" else NEGATIVE)[split]
        template = TEMPLATES[split][rng.integers(len(TEMPLATES[split]))]
        text = template.format(noun=NOUNS[split][rng.integers(len(NOUNS[split]))],
                               adj=words[rng.integers(len(words))])
        records.append({"text": text, "label": label})
    return records


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> str:
    """Writes one JSON object a line; returns the path."""
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return path
