"""Training: the task losses, classifier-head init, the BERT AdamW recipe and a jitted train step.

A batch is a dict of arrays: `input_ids`, `token_type_ids`, `attention_mask` (int [B, S]) and
`labels`, int [B] for "classification" and int [B, S] for "tokens" and "mlm". A label of IGNORE
(-100) is skipped by the loss and the metrics, as transformers' `CrossEntropyLoss(ignore_index=-100)`
skips it; padded rows of a short last batch carry IGNORE labels and so weigh nothing.

Everything here is pure and works under `jax.jit`: the train step closes over the static config,
task and optax transformation (`make_train_step`), takes and returns a `TrainState`, and draws its
dropout keys from the state's key, so a run is reproducible from its state alone. Data parallelism
is `jax.sharding`: `shard_examples` splits the batch over a one-axis "batch" mesh of all devices,
`replicate` copies the state to every device, and XLA inserts the gradient all-reduce. Both take
the mesh first, as `bertjax.scale.sharding`'s functions do (whose `shard_batch` pads a tuple of
arrays instead: a different function, so a different name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from bertjax.model.config import BertConfig
from bertjax.model.forward import forward
from bertjax.model.heads import classifier_logits, mlm_logits, token_classifier_logits
from bertjax.model.nn import split
from bertjax.model.params import cast

IGNORE = -100  # the label value losses and metrics skip (transformers' ignore_index)
TASKS = ("classification", "tokens", "mlm")


def _dense_init(rng: jax.Array, d_in: int, d_out: int, std: float) -> dict:
    """A transformers-style Dense: normal(std) kernel [in, out], zero bias [out]."""
    return {"kernel": std * jax.random.normal(rng, (d_in, d_out), jnp.float32),
            "bias": jnp.zeros((d_out,), jnp.float32)}


def add_classifier(params: dict, config: BertConfig, num_labels: int, rng: jax.Array,
                   id2label: tuple[str, ...] = (), task: str = "classification",
                   ) -> tuple[BertConfig, dict]:
    """A fresh classifier head of the family's form for `num_labels` classes.

    The form is transformers' head of the family for the task (`BertConfig.classifier_kind`):
    `classifier/{kernel, bias}` for tokens and for BERT/ALBERT sequences (with a `pooler`, added
    when the tree has none); `classifier/{dense, out_proj}` for RoBERTa-family, ELECTRA and MPNet
    sequences; `pre_classifier` + `classifier` for DistilBERT sequences; ModernBERT's `head`
    (dense, activation, norm; biases as classifier_bias / norm_bias say) + `classifier` for
    sequences and tokens alike (DeBERTa's sequence head is BERT's form, its `pooler` the
    ContextPooler). Initialised as transformers initialises them: kernels
    normal(initializer_range), zero biases, unit norm scales. An existing classifier is replaced.

    Returns:
      (config with num_labels and id2label set, params with the head).
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    config = dataclasses.replace(config, num_labels=num_labels, id2label=tuple(id2label))
    D, std = config.hidden_size, config.initializer_range
    r_classifier, r_pooler = jax.random.split(rng)
    r_pre = jax.random.fold_in(rng, 2)
    kind = "pooler" if task == "tokens" and config.classifier_kind != "head" else \
        config.classifier_kind
    params = {k: v for k, v in params.items() if k not in ("classifier", "pre_classifier", "head")}
    if kind == "head":  # ModernBERT, both tasks: ModernBertPredictionHead, then the classifier
        dense = _dense_init(r_pre, D, D, std)
        norm = {"scale": jnp.ones((D,), jnp.float32), "bias": jnp.zeros((D,), jnp.float32)}
        params["head"] = {
            "dense": dense if config.classifier_bias else {"kernel": dense["kernel"]},
            "LayerNorm": norm if config.norm_bias else {"scale": norm["scale"]}}
        params["classifier"] = _dense_init(r_classifier, D, num_labels, std)
        return config, params
    if kind in ("dense_tanh", "dense_gelu"):
        params["classifier"] = {"dense": _dense_init(r_pre, D, D, std),
                                "out_proj": _dense_init(r_classifier, D, num_labels, std)}
        return config, params
    params["classifier"] = _dense_init(r_classifier, D, num_labels, std)
    if kind == "pre_relu":
        params["pre_classifier"] = _dense_init(r_pre, D, D, std)
    elif "pooler" not in params and config.classifier_kind == "pooler":
        params["pooler"] = {"dense": _dense_init(r_pooler, D, D, std)}
    return config, params


def cross_entropy(logits: Float[ArrayLike, "*R C"],
                  labels: Int[ArrayLike, "*R"]) -> tuple[Array, Array]:
    """Mean softmax cross-entropy over the labels that are not IGNORE, in float32.

    Args:
      logits: float [..., C].
      labels: int [...], class ids or IGNORE.

    Returns:
      (mean loss, 0 when no label counts; number of counted labels), both scalars.
    """
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)  # [..., C]
    labels = jnp.asarray(labels)
    keep = labels != IGNORE
    picked = jnp.take_along_axis(logp, jnp.where(keep, labels, 0)[..., None], axis=-1)[..., 0]
    count = jnp.sum(keep)
    return -jnp.sum(jnp.where(keep, picked, 0.0)) / jnp.maximum(count, 1), count


def task_logits(params: dict, batch: dict, config: BertConfig, task: str,
                rng: jax.Array | None = None) -> jax.Array:
    """The task's logits: classification [B, C], tokens [B, S, C], mlm [B, S, V].

    rng turns dropout on in the encoder and the classifier (None: deterministic).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    r_model, r_head = split(rng, 2)
    types = batch.get("token_type_ids") if config.has_token_types else None  # DistilBERT, MPNet
    out = forward(params, batch["input_ids"], config, types, batch.get("attention_mask"),
                  rng=r_model)
    if task == "mlm":
        return mlm_logits(params, out.last_hidden_state, config)[0]
    if "classifier" not in params:
        raise ValueError("the model has no classifier head; add one with "
                         "bertjax.training.train.add_classifier(params, config, num_labels, rng)")
    if task == "tokens":
        return token_classifier_logits(params, out.last_hidden_state, config, r_head)
    if config.classifier_kind != "pooler":  # the family's head reads the first token
        return classifier_logits(params, out.last_hidden_state, config, r_head)
    if out.pooler_output is None:
        raise ValueError("sequence classification needs a pooler; the model has none")
    return classifier_logits(params, out.pooler_output, config, r_head)


def loss_fn(params: dict, batch: dict, config: BertConfig, task: str,
            rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy of the task, logits); differentiable in params."""
    logits = task_logits(params, batch, config, task, rng)
    return cross_entropy(logits, batch["labels"])[0], logits


def linear_schedule(lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """transformers' get_linear_schedule_with_warmup: lr * step / warmup for step < warmup, then
    lr * (total - step) / (total - warmup), never below 0."""
    warmup, total = int(warmup_steps), max(int(total_steps), 1)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        up = step / max(warmup, 1)
        down = jnp.maximum(0.0, (total - step) / max(total - warmup, 1))
        return lr * jnp.where(step < warmup, up, down)

    return schedule


def decay_mask(params: dict) -> dict:
    """True where weight decay applies: every leaf except biases and LayerNorm parameters (the
    BERT recipe's no_decay = ["bias", "LayerNorm.weight"])."""
    def decays(path, _leaf) -> bool:
        keys = [str(getattr(k, "key", k)) for k in path]
        return keys[-1] != "bias" and "LayerNorm" not in keys

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(lr: float | optax.Schedule, weight_decay: float = 0.01, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, clip_norm: float | None = 1.0,
                   grad_accum: int = 1) -> optax.GradientTransformation:
    """The BERT fine-tuning optimizer: clip by global norm, then AdamW (torch.optim.AdamW's
    update) with weight decay masked off biases and LayerNorm.

    Args:
      lr: a constant, or a schedule of the optimizer step (e.g. `linear_schedule`).
      clip_norm: max global gradient norm, None for no clipping.
      grad_accum: average the gradients of this many calls before one update (optax.MultiSteps).
    """
    if not isinstance(grad_accum, int) or grad_accum < 1:
        raise ValueError(f"grad_accum must be a positive integer, got {grad_accum!r}")
    adamw = optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    tx = adamw if clip_norm is None else optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
    return optax.MultiSteps(tx, grad_accum).gradient_transformation() if grad_accum > 1 else tx


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: step count, fp32 params, optimizer state and the
    dropout key (a raw uint32 key, so flax.serialization can write it)."""

    step: ArrayLike  # int32 scalar (a NumPy array once read back from a checkpoint)
    params: dict
    opt_state: optax.OptState
    rng: ArrayLike  # uint32 [2]


def init_state(params: dict, tx: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """A step-0 TrainState with float32 master weights."""
    params = cast(params, jnp.float32)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(seed))


def make_train_step(config: BertConfig, task: str, tx: optax.GradientTransformation,
                    dropout: bool = True, bf16: bool = False) -> Callable:
    """A jitted `step(state, batch) -> (state, {"loss", "grad_norm"})`.

    dropout=False runs the forward deterministically (for parity checks); bf16=True runs the forward
    and backward on a bfloat16 copy of the params while the gradients, the master weights and the
    optimizer state stay float32.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")

    def objective(params, batch, rng):
        if bf16:
            params = cast(params, jnp.bfloat16)
        return loss_fn(params, batch, config, task, rng)[0]

    @jax.jit
    def step(state: TrainState, batch: dict):
        rng, r_drop = jax.random.split(state.rng)
        loss, grads = jax.value_and_grad(objective)(state.params, batch,
                                                    r_drop if dropout else None)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(state.step + 1, params, opt_state, rng), metrics

    return step


def make_eval_step(config: BertConfig, task: str) -> Callable:
    """A jitted `evaluate(params, batch) -> {"loss_sum", "correct", "count"}` (dropout off);
    accuracy is correct / count over the labels that are not IGNORE."""
    @jax.jit
    def evaluate(params: dict, batch: dict):
        logits = task_logits(params, batch, config, task)
        labels = batch["labels"]
        loss, count = cross_entropy(logits, labels)
        correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) & (labels != IGNORE))
        return {"loss_sum": loss * count, "correct": correct, "count": count}

    return evaluate


def batch_mesh(devices=None) -> Mesh:
    """A one-axis mesh named "batch" over `devices` (all devices when None)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("batch",))


def shard_examples(mesh: Mesh, batch: dict) -> dict:
    """Places each [B, ...] array of a batch dict split along B over the mesh's "batch" axis (B a
    multiple of the axis size; `bertjax.scale.sharding.shard_batch` pads instead)."""
    n = mesh.shape["batch"]
    for name, x in batch.items():
        if np.shape(x)[0] % n:
            raise ValueError(f"batch {name} has {np.shape(x)[0]} rows, not a multiple of the "
                             f"{n} devices of the mesh; use a batch size divisible by {n}")
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec("batch")))


def replicate(mesh: Mesh, tree):
    """Places a copy of every leaf on every device of the mesh (params, optimizer state)."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
