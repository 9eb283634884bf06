"""`bertjax finetune`: fine-tune a BERT on a .jsonl file, resumable at any moment, bit for bit.

The data formats, their validation and the batching are in `bertjax.training.datasets`; the losses, the
optimizer (AdamW with linear warm-up and decay, clipping, accumulation) and the jitted,
data-parallel train step are in `bertjax.training.train`. This module runs them: it adds a fresh classifier
head for "classification" and "tokens" (the model's MLM head serves "mlm"), trains for `epochs`,
evaluates after each epoch and saves the result.

OUT holds
  finetune.json      the command; a different command on the same OUT is refused;
  checkpoint.msgpack the TrainState (step, float32 params, optimizer state, dropout key), the data
                     position (epoch, next batch, shuffle seed) and the history so far, written
                     atomically (temporary file, fsync, rename) every `checkpoint_every` steps and at
                     each epoch end;
  model/             the final model, written by `bertjax.checkpoints.checkpoint.save`: what `bertjax.load`
                     reads, with the head (`classifier/{kernel,bias}`, config num_labels and
                     id2label) and the tokenizer files;
  history.json       the loss of every step, the metrics of every epoch and the eval metrics
                     before training ("before"), written last: the run is done when it exists (the
                     checkpoint is then removed).
Everything a step depends on is a function of the checkpoint (the batches of an epoch of (seed,
epoch), the MLM masks of (seed, epoch, batch), the dropout keys of the state's key), so a run killed
at any moment and rerun with the same command continues from its last checkpoint and ends with the
parameters, bit for bit, of a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time

import jax
import numpy as np
from flax import serialization

from bertjax.checkpoints.files import atomic_write, is_leftover, is_lock, out_lock
from bertjax.scale.buckets import bucket_lengths
from bertjax.training import datasets as D
from bertjax.training.train import (
    TASKS,
    TrainState,
    add_classifier,
    batch_mesh,
    init_state,
    linear_schedule,
    make_eval_step,
    make_optimizer,
    make_train_step,
    replicate,
    shard_batch,
)

META_FILE = "finetune.json"
CHECKPOINT_FILE = "checkpoint.msgpack"
HISTORY_FILE = "history.json"
MODEL_DIR = "model"
_TAG = "finetune"  # temporary files are named .tmp-finetune-<name>
_TRAIN_MASKS, _EVAL_MASKS = 1, 2  # rng streams: default_rng([seed, stream, ...])


@dataclasses.dataclass(frozen=True)
class Options:
    """What `bertjax finetune` was asked to do (all of it but `out` identifies the run)."""

    train: str
    out: str
    task: str = "classification"
    model: str | None = None  # None: the offline default model
    eval: str | None = None
    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-5
    warmup: float = 0.1  # fraction of the optimizer steps spent warming up linearly
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    max_length: int = 128
    seed: int = 0
    grad_accum: int = 1
    bf16: bool = False
    text_field: str | None = None  # None: "text" ("tokens" for the tokens task)
    pair_field: str = "text_pair"
    label_field: str | None = None  # None: "label" ("labels" for the tokens task)
    checkpoint_every: int = 100  # train steps (batches) between checkpoints
    mlm_probability: float = 0.15


def check_options(opts: Options) -> None:
    """Checks what can be checked before loading anything (values, files, OUT)."""
    if opts.task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {opts.task!r}")
    for name in ("epochs", "batch_size", "grad_accum", "checkpoint_every"):
        value = getattr(opts, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
    if not opts.lr > 0 or not 0 <= opts.warmup < 1 or opts.weight_decay < 0 or opts.clip_norm <= 0:
        raise ValueError(f"need --lr > 0 ({opts.lr}), 0 <= --warmup < 1 ({opts.warmup}), "
                         f"--weight-decay >= 0 ({opts.weight_decay}), --clip-norm > 0 "
                         f"({opts.clip_norm})")
    if not 0 < opts.mlm_probability < 1:
        raise ValueError(f"mlm_probability must be in (0, 1), got {opts.mlm_probability}")
    for flag, path in (("--train", opts.train), ("--eval", opts.eval)):
        if path is not None and not os.path.isfile(path):
            raise ValueError(f"{flag} file {path} does not exist")
    if os.path.isdir(opts.out) and any(not is_lock(n) for n in os.listdir(opts.out)) and \
            not os.path.isfile(os.path.join(opts.out, META_FILE)):
        raise ValueError(f"{opts.out} exists and is not a bertjax finetune folder (no {META_FILE}); "
                         f"choose another --out")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(opts: Options) -> dict:
    """The command as finetune.json keeps it: every option but OUT, the data files by content."""
    from bertjax.checkpoints.sources import DEFAULT_MODEL

    command = {k: v for k, v in dataclasses.asdict(opts).items() if k != "out"}
    model = opts.model or DEFAULT_MODEL
    command["model"] = os.path.abspath(model) if os.path.exists(model) else model
    for name in ("train", "eval"):
        path = getattr(opts, name)
        command[name] = None if path is None else {"path": os.path.abspath(path),
                                                   "sha256": _sha256(path)}
    return command


def prepare_out(out: str, command: dict) -> None:
    """Creates OUT with finetune.json, or checks that OUT was made by the same command."""
    path = os.path.join(out, META_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)["command"]
        diffs = [f"{k}: {old.get(k)!r} there, {v!r} here" for k, v in command.items()
                 if old.get(k) != v]
        if diffs:
            raise ValueError(f"{out} was made by a different command ({'; '.join(diffs)}); rerun "
                             f"the same command to resume it, or choose another --out")
    else:
        os.makedirs(out, exist_ok=True)
        atomic_write(path, json.dumps({"format": 1, "command": command}, indent=1).encode(), _TAG)
    for name in os.listdir(out):  # leftovers of a killed write
        if is_leftover(name, _TAG):
            os.remove(os.path.join(out, name))


@dataclasses.dataclass
class Run:
    """A prepared run: the model with its head, the tokenized data and the batch layout."""

    opts: Options
    config: object
    params: dict
    tokenizer_dir: str
    train: list
    eval: list | None
    pad: D.Padding
    steps_per_epoch: int
    tx: object = None  # the optax transformation, set once the schedule is known


def _add_head(opts: Options, pre, labels: tuple) -> tuple:
    if opts.task == "mlm":
        if "cls" not in pre.params:
            raise ValueError(f"model {opts.model or 'default'} has no MLM head (cls/predictions); "
                             f"--task mlm needs one")
        return pre.config, pre.params
    names, num_labels = labels
    return add_classifier(pre.params, pre.config, num_labels, jax.random.PRNGKey(opts.seed), names,
                          task=opts.task)


def _read(opts: Options, path: str, tokenizer, labels, fields) -> tuple[list, tuple]:
    rows = D.parse(path, fields)
    if labels is None:
        labels = ((), 0) if opts.task == "mlm" else D.label_names(rows, path)
    return D.encode(rows, tokenizer, opts.task, opts.max_length, labels, path), labels


def prepare(opts: Options, devices: int) -> Run:
    """Loads the model and tokenizer, reads and checks the data, adds the head."""
    from bertjax.checkpoints.pretrained import load_pretrained

    pre = load_pretrained(opts.model)
    tok = pre.tokenizer
    if tok is None:
        raise ValueError(f"model {opts.model} has no tokenizer files (vocab.txt or tokenizer.json)")
    if not 2 <= opts.max_length <= pre.config.max_position_embeddings:
        raise ValueError(f"--max-length must be in [2, {pre.config.max_position_embeddings}] "
                         f"(max_position_embeddings), got {opts.max_length}")
    fields = D.Fields.for_task(opts.task, opts.text_field, opts.pair_field, opts.label_field)
    train, labels = _read(opts, opts.train, tok, None, fields)
    evals = None if opts.eval is None else _read(opts, opts.eval, tok, labels, fields)[0]
    config, params = _add_head(opts, pre, labels)
    rows = -(-opts.batch_size // devices) * devices
    pad = D.Padding(bucket_lengths(opts.max_length), rows, tok.pad_token_id or 0,
                    tuple(tok.all_special_ids), tok.mask_token_id, pre.config.vocab_size,
                    opts.mlm_probability)
    return Run(opts, config, params, pre.folder, train, evals, pad,
               math.ceil(len(train) / opts.batch_size))


def write_checkpoint(out: str, state: TrainState, position: dict, history: dict) -> None:
    """checkpoint.msgpack: the state, the data position and the history, atomically."""
    tree = {"state": jax.device_get(serialization.to_state_dict(state)),
            "meta": json.dumps({"position": position, "history": history})}
    atomic_write(os.path.join(out, CHECKPOINT_FILE), serialization.msgpack_serialize(tree), _TAG)


def read_checkpoint(out: str, template: TrainState) -> tuple[TrainState, dict, dict] | None:
    """(state, position, history) of the last checkpoint, or None when there is none."""
    path = os.path.join(out, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
        meta = json.loads(tree["meta"])
        state = serialization.from_state_dict(template, tree["state"])
        return state, meta["position"], meta["history"]
    except Exception as e:  # noqa: BLE001  (msgpack and flax raise many types on a bad file)
        raise ValueError(f"{path} cannot be resumed by this run ({type(e).__name__}: "
                         f"{str(e)[:200]}); remove it to start over, or choose another --out") \
            from None


def evaluate(run: Run, params: dict, eval_fn, mesh) -> dict:
    """Mean loss and accuracy over the eval set's labels (sorted by length, fixed MLM masks)."""
    order = sorted(range(len(run.eval)), key=lambda i: len(run.eval[i].ids))
    totals = {"loss_sum": 0.0, "correct": 0, "count": 0}
    for b, start in enumerate(range(0, len(order), run.opts.batch_size)):
        examples = [run.eval[i] for i in order[start: start + run.opts.batch_size]]
        rng = np.random.default_rng([run.opts.seed, _EVAL_MASKS, b])
        out = eval_fn(params, shard_batch(D.collate(run.pad, examples, run.opts.task, rng), mesh))
        totals = {k: totals[k] + out[k].item() for k in totals}
    count = max(totals["count"], 1)
    return {"eval_loss": totals["loss_sum"] / count, "eval_accuracy": totals["correct"] / count,
            "eval_labels": totals["count"]}


def _metrics_line(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}".rstrip()
                     for k, v in metrics.items())


def _epoch_end(run: Run, state, history: dict, epoch: int, eval_fn, mesh, say) -> dict:
    losses = history["loss"][epoch * run.steps_per_epoch:]
    metrics = {"epoch": epoch + 1, "step": int(state.step), "train_loss": float(np.mean(losses))}
    if run.eval:
        metrics.update(evaluate(run, state.params, eval_fn, mesh))
    say(_metrics_line(metrics))
    history["epochs"].append(metrics)
    return history


@functools.lru_cache(maxsize=4)
def _programs(config, task: str, tx, bf16: bool) -> tuple:
    """The jitted train and eval steps, kept so that a run repeated in one process (a resumed
    run, a notebook cell run again) reuses their compilations."""
    return make_train_step(config, task, tx, bf16=bf16), make_eval_step(config, task)


def train_loop(run: Run, state: TrainState, position: dict, history: dict, mesh, bar,
               say) -> TrainState:
    """Runs the epochs from `position` on; checkpoints as it goes; `say`s each epoch's metrics."""
    opts, lengths = run.opts, [len(e.ids) for e in run.train]
    step_fn, eval_fn = _programs(run.config, opts.task, run.tx, opts.bf16)
    for epoch in range(position["epoch"], opts.epochs):
        batches = D.epoch_batches(lengths, opts.batch_size, run.pad.buckets, opts.seed, epoch)
        first = position["batch"] if epoch == position["epoch"] else 0
        for b in range(first, len(batches)):
            rng = np.random.default_rng([opts.seed, _TRAIN_MASKS, epoch, b])
            batch = D.collate(run.pad, [run.train[i] for i in batches[b]], opts.task, rng)
            state, metrics = step_fn(state, shard_batch(batch, mesh))
            history["loss"].append(metrics["loss"].item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(history['loss'][-20:]):.4f}")
            done = epoch * run.steps_per_epoch + b + 1
            if done % opts.checkpoint_every == 0 and b + 1 < len(batches):
                write_checkpoint(opts.out, state, {"epoch": epoch, "batch": b + 1,
                                                   "seed": opts.seed, "step": done}, history)
        history = _epoch_end(run, state, history, epoch, eval_fn, mesh, say)
        write_checkpoint(opts.out, state, {"epoch": epoch + 1, "batch": 0, "seed": opts.seed,
                                           "step": (epoch + 1) * run.steps_per_epoch}, history)
    return state


@functools.lru_cache(maxsize=4)
def optimizer(lr: float, warmup: float, updates: int, weight_decay: float, clip_norm: float,
              grad_accum: int):
    """The run's AdamW: `warmup` (a fraction) of the `updates` optimizer steps warming up linearly,
    then linear decay to 0 (one object per setting, so that `_programs` can be reused)."""
    schedule = linear_schedule(lr, int(warmup * updates), updates)
    return make_optimizer(schedule, weight_decay, clip_norm=clip_norm, grad_accum=grad_accum)


def _finish(run: Run, state: TrainState, history: dict) -> None:
    """Saves model/ (replacing a copy left by a run killed after saving), then history.json."""
    from bertjax.checkpoints.checkpoint import save

    out = run.opts.out
    params = jax.device_get(state.params)
    save(os.path.join(out, MODEL_DIR), run.config, params, run.tokenizer_dir, force=True)
    atomic_write(os.path.join(out, HISTORY_FILE), json.dumps(history).encode(), _TAG)
    os.remove(os.path.join(out, CHECKPOINT_FILE))


def _start(run: Run, mesh) -> tuple[TrainState, dict, dict]:
    """(state, data position, history) to train from: the last checkpoint's, or a fresh start's
    (whose history holds the eval metrics before training, under "before")."""
    opts = run.opts
    state = init_state(run.params, run.tx, opts.seed)
    restored = read_checkpoint(opts.out, state)
    if restored is not None:
        state, position, history = restored
        if int(state.step) != position["step"] or position["seed"] != opts.seed:
            raise ValueError(f"{opts.out}/{CHECKPOINT_FILE} is inconsistent (state step "
                             f"{int(state.step)}, position {position}); choose another --out")
        return replicate(state, mesh), position, history
    state = replicate(state, mesh)
    history = {"loss": [], "epochs": [], "labels": list(run.config.id2label), "before": None}
    if run.eval:
        eval_fn = _programs(run.config, opts.task, run.tx, opts.bf16)[1]
        history["before"] = evaluate(run, state.params, eval_fn, mesh)
    return state, {"epoch": 0, "batch": 0, "seed": opts.seed, "step": 0}, history


def finetune(opts: Options, progress: bool = True, devices=None, log=None) -> dict:
    """Runs (or resumes, or finds done) a fine-tuning; returns its summary.

    Args:
      progress: show a progress bar (the metrics lines are then written above it).
      devices: the devices to split each batch over (default: all).
      log: called with the metrics line before training and after each epoch when there is no
        progress bar (e.g. `print`); None: those lines are not shown (they are in the history).

    Raises:
      FolderInUseError (an OSError) when another run holds OUT's lock.
    """
    start = time.perf_counter()
    check_options(opts)
    with out_lock(opts.out, "finetune", "finetune"):  # a second run on OUT is refused
        return _finetune(opts, progress, devices, log, start)


def _finetune(opts: Options, progress: bool, devices, log, start: float) -> dict:
    from tqdm import tqdm

    mesh = batch_mesh(devices)
    run = prepare(opts, mesh.size)
    total = opts.epochs * run.steps_per_epoch
    prepare_out(opts.out, describe(opts))
    history_path = os.path.join(opts.out, HISTORY_FILE)
    if os.path.isfile(history_path):  # done (a checkpoint left by a kill at the end is stale)
        if os.path.isfile(os.path.join(opts.out, CHECKPOINT_FILE)):
            os.remove(os.path.join(opts.out, CHECKPOINT_FILE))
        with open(history_path, encoding="utf-8") as f:
            return summary(opts, json.load(f), 0, time.perf_counter() - start)
    run.tx = optimizer(opts.lr, opts.warmup, max(total // opts.grad_accum, 1), opts.weight_decay,
                       opts.clip_norm, opts.grad_accum)
    state, position, history = _start(run, mesh)
    with tqdm(total=total, initial=position["step"], desc="finetune", unit="step",
              disable=not progress, dynamic_ncols=True) as bar:
        say = bar.write if progress else (log or (lambda line: None))
        if position["step"] == 0 and history["before"]:
            say(_metrics_line({"before training": "", **history["before"]}))
        state = train_loop(run, state, position, history, mesh, bar, say)
    _finish(run, state, history)
    return summary(opts, history, total - position["step"], time.perf_counter() - start)


def summary(opts: Options, history: dict, steps: int, seconds: float) -> dict:
    """What the command prints: where the model is, the steps run now and the last metrics."""
    return {"model": os.path.join(opts.out, MODEL_DIR), "steps": len(history["loss"]),
            "this_run": steps, "seconds": seconds, "last": history["epochs"][-1],
            "history": history}


def summary_line(s: dict) -> str:
    return (f"finetune: {s['steps']} steps ({s['this_run']} this run, {s['seconds']:.1f} s); "
            f"{_metrics_line(s['last'])}; model in {s['model']}")
