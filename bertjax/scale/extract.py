"""`bertjax extract`: a corpus through BERT, its activations written to disk, resumable anytime.

The input (`.txt`, one text a line, or `.jsonl` with a text field and an optional pair field) is
streamed in fixed chunks of `chunk_size` lines. Each chunk is tokenized, grouped by length into
buckets (`bertjax.scale.buckets`, so a few shapes compile), run data parallel over the devices
(`bertjax.scale.sharding`; layer selection and pooling run on the devices), stripped of padding and
committed: its shard is written to a temporary name, fsynced and renamed, and only then its manifest
file, the same way. A chunk therefore counts as done exactly when its manifest exists; a run killed
at any moment (kill -9) and started again with the same command skips the committed chunks and
redoes the rest, and the folder ends up identical to an uninterrupted run's. `extract.json` keeps
the command's parameters; another command on the same OUT is refused. Each manifest keeps the
sha256 of its chunk's input bytes, so a resume over an input that changed under a committed chunk
is refused too (lines not committed yet may change: fixing a bad line and rerunning is fine).
Memory is bounded by one chunk (its tokens and its activations), never by the corpus. The format
is described in `bertjax.scale.store`, whose `ActivationStore` reads it.

Bad input: empty (or all-blank) lines are skipped and counted; a line that is not UTF-8 (or, in
.jsonl, not a JSON object with a string text field, or a text holding a lone surrogate), or longer
than MAX_LINE_BYTES (read in blocks and dropped, never held whole), stops the run with its line
number, or is skipped and counted with `skip_invalid`; texts longer than `max_length` tokens are
truncated and counted. A batch is padded to at most `batch_size` rows and never to more rows than
its chunk has texts (a power of two), so a huge --batch-size costs nothing.

Multi-host: run the same command in every process after `jax.distributed.initialize()` (the CLI's
`--distributed`), with OUT on a filesystem they all see. Process i (`jax.process_index()` of
`jax.process_count()`) streams the input but decodes, tokenizes and runs only the chunks k with
k % count == i, on its own devices (`jax.local_devices()`), and writes only those chunks' shards and
manifests (file names are per chunk, temporary names per process, so no file is written by two
processes; `extract.json` is the same for all). Each process ends with `summary-<i>-of-<n>.json`,
its own counts; the folder is complete when all n exist. Resuming works per process as above.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save as safetensors_bytes

from bertjax.checkpoints.files import (
    LongLine,
    atomic_write,
    bounded_lines,
    is_leftover,
    is_lock,
    lone_surrogate,
    out_lock,
)
from bertjax.model import capture as C
from bertjax.model.encoder import stack_layers
from bertjax.model.params import Heads
from bertjax.scale.buckets import bucket_for, bucket_lengths, pad_batch
from bertjax.scale.sharding import make_mesh, shard_batch, shard_params, sharded_forward
from bertjax.scale.store import (
    MANIFEST,
    META_FILE,
    SEQ,
    SHARDS,
    array_layout,
    manifest_path,
    read_json,
    shard_name,
    summary_file,
    token_axis,
)

REDUCE = ("none", "mean", "cls")
MAX_LINE_BYTES = 16 * 2**20  # one input line; a longer one is refused (or skipped) unread
_SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16"}


@dataclasses.dataclass(frozen=True)
class Options:
    """What `bertjax extract` was asked to do. All but `out` and `model_axis` identify the command
    (`describe`): a resume must repeat them."""

    input: str
    out: str
    capture: tuple[str, ...]
    model: str | None = None
    layers: tuple[int, ...] | None = None  # None: every layer
    batch_size: int = 32
    max_length: int | None = None  # None: min(512, max_position_embeddings)
    reduce: str = "none"
    dtype: str = "float32"
    chunk_size: int = 256  # lines per committed chunk (and so per shard)
    text_field: str = "text"
    pair_field: str = "text_pair"
    skip_invalid: bool = False
    model_axis: int = 1  # devices sharing one model replica (kernels split over them)


@dataclasses.dataclass
class Line:
    number: int  # 1-based
    text: str | None = None  # None for a skipped line
    pair: str | None = None
    skipped: str | None = None  # "empty" or "invalid"


def _parse_jsonl(text: str, number: int, opts: Options) -> Line:
    try:
        record = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(record, dict) or not isinstance(record.get(opts.text_field), str):
        raise ValueError(f"no string field {opts.text_field!r}")
    pair = record.get(opts.pair_field)
    if pair is not None and not isinstance(pair, str):
        raise ValueError(f"field {opts.pair_field!r} is not a string")
    for field, value in ((opts.text_field, record[opts.text_field]), (opts.pair_field, pair or "")):
        if why := lone_surrogate(value, field):
            raise ValueError(why)
    if not record[opts.text_field].strip():
        return Line(number, skipped="empty")
    return Line(number, record[opts.text_field], pair)


def parse_line(raw: bytes | LongLine, number: int, jsonl: bool, opts: Options) -> Line:
    """One input line: its text (and pair), or why it is skipped.

    Raises:
      ValueError: a line that is not UTF-8, not a valid record or longer than MAX_LINE_BYTES,
        unless opts.skip_invalid.
    """
    if isinstance(raw, LongLine):
        if opts.skip_invalid:
            return Line(number, skipped="invalid")
        raise ValueError(f"{opts.input}, line {number}: longer than {MAX_LINE_BYTES} bytes "
                         f"({raw.size} bytes; MAX_LINE_BYTES); split it, or pass --skip-invalid "
                         f"to skip and count such lines, and rerun: the lines before it are kept")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
        if not text.strip():
            return Line(number, skipped="empty")
        return _parse_jsonl(text, number, opts) if jsonl else Line(number, text)
    except ValueError as e:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        if opts.skip_invalid:
            return Line(number, skipped="invalid")
        what = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "not a valid record"
        raise ValueError(f"{opts.input}, line {number}: {what} ({e}); fix it, or pass "
                         f"--skip-invalid to skip and count such lines, and rerun: the lines "
                         f"before it are kept") from None


def raw_chunks(path: str, chunk_size: int) -> Iterator[list[tuple[int, bytes | LongLine]]]:
    """The file in chunks of `chunk_size` (1-based line number, raw bytes) pairs, streamed: one
    chunk in memory at a time; a line over MAX_LINE_BYTES comes as a `LongLine`, unkept."""
    with open(path, "rb") as f:
        numbered = bounded_lines(f, MAX_LINE_BYTES)
        while chunk := list(itertools.islice(numbered, chunk_size)):
            yield chunk


def parse_chunk(chunk: list[tuple[int, bytes | LongLine]], opts: Options) -> list[Line]:
    jsonl = opts.input.endswith((".jsonl", ".json"))
    return [parse_line(raw, n, jsonl, opts) for n, raw in chunk]


@dataclasses.dataclass
class Example:
    line: int
    ids: list[int]
    types: list[int]
    truncated: bool


def _encode(tokenizer, lines: list[Line], max_length: int, truncation: bool) -> list[dict]:
    texts, pairs = [x.text for x in lines], [x.pair for x in lines]
    kwargs = dict(truncation=truncation, max_length=max_length if truncation else None)
    enc = tokenizer(texts, pairs if lines[0].pair is not None else None, **kwargs)
    types = enc.get("token_type_ids") or [[0] * len(i) for i in enc["input_ids"]]  # RoBERTa: none
    return [{"ids": i, "types": t} for i, t in zip(enc["input_ids"], types)]


def tokenize(tokenizer, lines: list[Line], max_length: int) -> list[Example]:
    """Token ids and types of the lines, in order; texts over max_length tokens are truncated."""
    kept = [x for x in lines if x.skipped is None]
    out = {}
    for _, group in itertools.groupby(sorted(kept, key=lambda x: x.pair is None),
                                             key=lambda x: x.pair is None):
        group = list(group)
        encoded = _encode(tokenizer, group, max_length, truncation=False)
        long = [x for x, e in zip(group, encoded) if len(e["ids"]) > max_length]
        shortened = dict(zip([x.number for x in long],
                             _encode(tokenizer, long, max_length, True) if long else []))
        for x, e in zip(group, encoded):
            e = shortened.get(x.number, e)
            out[x.number] = Example(x.number, e["ids"], e["types"], x.number in shortened)
    return [out[x.number] for x in kept]


@dataclasses.dataclass(frozen=True)
class Post:
    """The on-device step after forward (whose capture already selected the layers): batch axis
    first, the token axis (S, or T for keys and values) second or pooled.

    Hashable and compared by value, so it keys the compile cache of `sharded_forward`: the same
    request in the same process reuses the compiled programs.
    """

    names: frozenset[str]
    reduce: str
    dtype: str

    def __call__(self, out, attention_mask) -> dict:
        result = {}
        for name in sorted(self.names):
            a, letters = out.acts[name], C.SHAPES[name].split()
            a = jnp.moveaxis(a, letters.index("B"), 0)  # [B, ...rest]
            letters = ["B"] + [x for x in letters if x != "B"]
            if axis := token_axis(letters):
                a = _pool(a, letters.index(axis), attention_mask, self.reduce)
            result[name] = a.astype(self.dtype)
        return result


def _pool(a, axis: int, attention_mask, reduce: str):
    """[B, ..., S, ...] -> [B, S, ...] (none), or the mean over real tokens / position 0."""
    if reduce == "none":
        return jnp.moveaxis(a, axis, 1)
    if reduce == "cls":
        return jnp.take(a, 0, axis=axis)
    shape = [1] * a.ndim
    shape[0], shape[axis] = attention_mask.shape
    w = attention_mask.reshape(shape).astype(jnp.float32)
    return (a.astype(jnp.float32) * w).sum(axis) / jnp.maximum(w.sum(axis), 1.0)


def _strip(row: np.ndarray, layout: dict, length: int) -> np.ndarray:
    """One example's row of a batch output with every length axis cut to its tokens, flattened."""
    cut = tuple(slice(0, length) if d == SEQ else slice(None) for d in layout["shape"])
    return np.ascontiguousarray(row[cut]).ravel()


@dataclasses.dataclass
class _Model:
    """Everything a chunk needs: the sharded program, its inputs' padding and the output layouts."""

    run: object
    params: dict
    mesh: object
    tokenizer: object
    buckets: tuple[int, ...]
    rows: int  # padded batch size, a multiple of the devices on the "batch" axis
    pad_id: int
    layouts: dict
    max_length: int
    token_types: bool = True  # False for a family without them (DistilBERT, MPNet)


def _batches(examples: list[Example], model: _Model, rows: int) -> Iterator[list[int]]:
    """Indices of examples grouped by bucket, in batches of at most `rows` (deterministic)."""
    def bucket(i):
        return bucket_for(len(examples[i].ids), model.buckets)

    order = sorted(range(len(examples)), key=lambda i: (bucket(i), i))
    for _, group in itertools.groupby(order, key=bucket):
        group = list(group)
        for start in range(0, len(group), rows):
            yield group[start: start + rows]


def chunk_rows(model: _Model, count: int) -> int:
    """The rows a chunk of `count` texts pads its batches to: `model.rows`, or fewer when the chunk
    has fewer texts (the power of two above, a multiple of the batch axis' devices), so that a
    huge --batch-size pads to what is there while the shapes stay few."""
    per = model.mesh.shape["batch"]
    fewer = -(-(1 << max(count - 1, 0).bit_length()) // per) * per
    return min(model.rows, fewer)


def _run_batch(model: _Model, batch: list[Example], rows: int) -> dict[str, np.ndarray]:
    ids, mask = pad_batch([e.ids for e in batch], model.buckets, model.pad_id, rows)
    types, _ = pad_batch([e.types for e in batch], model.buckets, 0, rows)
    (ids, mask, types), _ = shard_batch(model.mesh, ids, mask, types)
    types = types if model.token_types else None
    return jax.device_get(model.run(model.params, ids, mask, types))


def run_chunk(model: _Model, examples: list[Example], bar) -> dict[str, np.ndarray]:
    """name -> flat 1-D array: the examples' stored arrays concatenated in input order."""
    flats = {name: [None] * len(examples) for name in model.layouts}
    rows = chunk_rows(model, len(examples))
    for batch in _batches(examples, model, rows):
        outputs = _run_batch(model, [examples[i] for i in batch], rows)
        for name, layout in model.layouts.items():
            for row, i in enumerate(batch):
                flats[name][i] = _strip(outputs[name][row], layout, len(examples[i].ids))
        bar.update(len(batch))
    return {name: np.concatenate(parts) for name, parts in flats.items()} if examples else {}


def chunk_digest(chunk: list[tuple[int, bytes | LongLine]]) -> str:
    """sha256 of a chunk's raw input bytes (kept in its manifest, checked on resume)."""
    digest = hashlib.sha256()
    for _, raw in chunk:
        digest.update(raw.sha256 if isinstance(raw, LongLine) else raw)
    return digest.hexdigest()


def commit(out: str, k: int, lines: list[Line], examples: list[Example],
           arrays: dict[str, np.ndarray], tag: str, digest: str) -> dict:
    """Writes chunk k's shard, then its manifest (the commit point). Returns its counts."""
    shard = shard_name(k) if examples else None
    if shard:
        atomic_write(os.path.join(out, shard), safetensors_bytes(arrays), tag)
    counts = {"written": len(examples), "truncated": sum(e.truncated for e in examples),
              "empty": sum(x.skipped == "empty" for x in lines),
              "invalid": sum(x.skipped == "invalid" for x in lines)}
    records = [{"line": e.line, "offset": row, "length": len(e.ids), "truncated": e.truncated,
                "tokens": e.ids} for row, e in enumerate(examples)]
    manifest = {"chunk": k, "lines": [lines[0].number, lines[-1].number], "sha256": digest,
                "shard": shard, "counts": counts, "examples": records}
    atomic_write(manifest_path(out, k), json.dumps(manifest).encode(), tag)
    return counts


def check_request(opts: Options) -> None:
    """Checks what can be checked before loading anything (names, options, files)."""
    if not opts.capture:
        raise ValueError("--capture needs at least one activation name (or 'all')")
    C.resolve(opts.capture)  # unknown names: the message lists the valid ones
    if opts.reduce not in REDUCE:
        raise ValueError(f"--reduce must be one of {', '.join(REDUCE)}, got {opts.reduce!r}")
    if opts.dtype not in _SAFETENSORS_DTYPE:
        raise ValueError(f"--dtype must be float32 or bfloat16, got {opts.dtype!r}")
    if opts.model_axis < 1:
        raise ValueError(f"--model-axis must be >= 1, got {opts.model_axis}")
    if opts.batch_size < 1 or opts.chunk_size < 1:
        raise ValueError(f"--batch-size ({opts.batch_size}) and --chunk-size ({opts.chunk_size}) "
                         f"must be >= 1")
    if not os.path.isfile(opts.input):
        raise ValueError(f"input file {opts.input} does not exist")
    if os.path.isdir(opts.out) and not os.path.isfile(os.path.join(opts.out, META_FILE)) and \
            any(not is_leftover(name) and not is_lock(name) for name in os.listdir(opts.out)):
        raise ValueError(f"{opts.out} exists and is not a bertjax extract folder (no {META_FILE}); "
                         f"choose another --out")


def resolve_request(opts: Options, config, heads: Heads) -> tuple[frozenset, tuple, int]:
    """The capture names, the selected layers and max_length, checked against the model."""
    names = C.resolve(opts.capture, config=config, heads=heads)
    L = config.num_layers
    layers = tuple(range(L)) if opts.layers is None else tuple(opts.layers)
    bad = [i for i in layers if not 0 <= i < L]
    if bad or not layers:
        raise ValueError(f"--layers {','.join(map(str, bad or layers))} out of range: this model "
                         f"has {L} layers, 0..{L - 1}")
    max_length = opts.max_length or min(512, config.max_position_embeddings)
    if not 2 <= max_length <= config.max_position_embeddings:
        raise ValueError(f"--max-length must be in [2, {config.max_position_embeddings}] "
                         f"(max_position_embeddings), got {max_length}")
    return names, layers, max_length


def describe(opts: Options, config, names, layers, max_length) -> dict:
    """extract.json: the command (compared on resume) and each name's stored layout."""
    from bertjax.checkpoints.sources import DEFAULT_MODEL

    # skip_invalid is left out: it changes no committed chunk (one with a bad line was not
    # committed without it), so a run stopped at a bad line resumes with --skip-invalid.
    command = {"model": opts.model or DEFAULT_MODEL, "input": os.path.abspath(opts.input),
               "capture": sorted(names),
               "layers": list(layers), "max_length": max_length, "reduce": opts.reduce,
               "dtype": opts.dtype, "batch_size": opts.batch_size, "chunk_size": opts.chunk_size,
               "text_field": opts.text_field, "pair_field": opts.pair_field}
    arrays = {name: {**array_layout(name, config, len(layers), opts.reduce),
                     "dtype": _SAFETENSORS_DTYPE[opts.dtype]} for name in sorted(names)}
    return {"format": 1, "command": command, "arrays": arrays}


def prepare_out(out: str, meta: dict, tag: str) -> None:
    """Creates OUT with extract.json, or checks that OUT was made by the same command.

    extract.json is written before anything else, so a killed run leaves either nothing that
    counts (temporary files, removed here) or a folder that the same command resumes.
    """
    os.makedirs(out, exist_ok=True)
    for folder in (out, os.path.join(out, SHARDS), os.path.join(out, MANIFEST)):
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if is_leftover(name, tag):  # what a killed run of this process left half-written
                os.remove(os.path.join(folder, name))
    path = os.path.join(out, META_FILE)
    if os.path.isfile(path):
        old = read_json(path)["command"]
        diffs = [f"{k}: {old.get(k)!r} there, {v!r} here" for k, v in meta["command"].items()
                 if old.get(k) != v]
        if diffs:
            raise ValueError(f"{out} was made by a different command ({'; '.join(diffs)}); "
                             f"rerun the same command to resume it, or choose another --out")
    else:
        atomic_write(path, json.dumps(meta, indent=1).encode(), tag)
    for sub in (SHARDS, MANIFEST):
        os.makedirs(os.path.join(out, sub), exist_ok=True)


def build_model(opts: Options, pre, names, layers, max_length, devices=None) -> _Model:
    """The sharded program over `devices` (default: this process's local devices)."""
    if pre.tokenizer is None:
        raise ValueError(f"model {opts.model} has no tokenizer files (vocab.txt or tokenizer.json)")
    mesh = make_mesh(jax.local_devices() if devices is None else devices, opts.model_axis)
    params = shard_params(mesh, stack_layers(pre.params), pre.config)
    post = Post(names, opts.reduce, opts.dtype)
    # Per-layer names captured at the selected layers only: the others are never written.
    capture = {name: layers if name in C.LAYER_NAMES else None for name in names}
    run = sharded_forward(mesh, params, pre.config, capture, post=post)
    per = mesh.shape["batch"]
    rows = -(-min(opts.batch_size, opts.chunk_size) // per) * per  # a batch is at most a chunk
    pad_id = pre.tokenizer.pad_token_id or 0
    layouts = {name: array_layout(name, pre.config, len(layers), opts.reduce) for name in names}
    return _Model(run, params, mesh, pre.tokenizer, bucket_lengths(max_length), rows, pad_id,
                  layouts, max_length, pre.config.has_token_types)


def extract(opts: Options, devices=None, process: tuple[int, int] | None = None,
            progress: bool = True, pretrained=None) -> dict:
    """Runs (or resumes) an extraction; returns the closing summary's counts.

    Args:
      devices: the devices to shard over (default: this process's local devices).
      process: (index, count); this process does the chunks k with k % count == index
        (default: jax.process_index(), jax.process_count()).
      pretrained: `load_pretrained(opts.model, opts.dtype)` already loaded, to skip loading it.

    Raises:
      FolderInUseError (an OSError) when another run holds OUT's lock for this process index
      (`bertjax.checkpoints.files.out_lock`): each process of a multi-host run takes its own.
    """
    start = time.perf_counter()
    check_request(opts)
    index, count = process or (jax.process_index(), jax.process_count())
    with out_lock(opts.out, f"extract-p{index}", "extract"):  # one lock per process of a run
        return _extract(opts, devices, index, count, progress, pretrained, start)


def _extract(opts: Options, devices, index: int, count: int, progress: bool, pretrained,
             start: float) -> dict:
    from tqdm import tqdm

    from bertjax.checkpoints.pretrained import load_pretrained

    pre = pretrained or load_pretrained(opts.model, jnp.dtype(opts.dtype))
    names, layers, max_length = resolve_request(opts, pre.config, Heads.of(pre.params))
    tag = f"p{index}"
    model = build_model(opts, pre, names, layers, max_length, devices)  # may still refuse
    prepare_out(opts.out, describe(opts, pre.config, names, layers, max_length), tag)
    with tqdm(desc="extract", unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        totals, new = _process_chunks(opts, model, index, count, tag, bar)
    seconds = time.perf_counter() - start
    summary = {**totals, "this_run": new, "seconds": seconds, "examples_per_s": new / seconds,
               "process": [index, count]}
    atomic_write(os.path.join(opts.out, summary_file(index, count)), json.dumps(summary).encode(),
                  tag)
    return summary


def _process_chunks(opts: Options, model: _Model, index: int, count: int, tag: str,
                    bar) -> tuple[dict, int]:
    """Runs and commits this process's chunks that are not committed yet; returns the counts of
    all its chunks and how many examples this run wrote."""
    totals = dict.fromkeys(("written", "truncated", "empty", "invalid"), 0)
    new = 0
    for k, chunk in enumerate(raw_chunks(opts.input, opts.chunk_size)):
        if k % count != index:
            continue  # another process's chunk
        done, digest = manifest_path(opts.out, k), chunk_digest(chunk)
        if os.path.isfile(done):  # committed by an earlier run
            manifest = read_json(done)
            if manifest.get("sha256") != digest:
                first, last = manifest["lines"]
                raise ValueError(f"{opts.input} changed since lines {first}-{last} were extracted "
                                 f"into {opts.out}; rerun with the original input, or choose "
                                 f"another --out")
            counts = manifest["counts"]
        else:
            lines = parse_chunk(chunk, opts)
            examples = tokenize(model.tokenizer, lines, model.max_length)
            counts = commit(opts.out, k, lines, examples, run_chunk(model, examples, bar), tag,
                            digest)
            new += counts["written"]
        totals = {key: totals[key] + counts[key] for key in totals}
    return totals, new


def summary_line(out: str, s: dict) -> str:
    index, count = s.get("process", (0, 1))
    who = f" by process {index} of {count}" if count > 1 else ""
    return (f"extract: {s['written']} examples in {out}{who} ({s['this_run']} this run), "
            f"{s['truncated']} truncated, skipped {s['empty']} empty and {s['invalid']} invalid "
            f"lines; {s['seconds']:.1f} s, {s['examples_per_s']:.1f} examples/s")
