"""bertjax.training.train against transformers + torch.optim.AdamW: losses, gradients, one optimizer step,
the schedule, the decay mask, gradient accumulation, bf16 and the data-parallel step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from conftest import B, S, assert_close, tiny_inputs

import bertjax
from bertjax.checkpoints.convert import state_dict_to_params
from bertjax.model.params import flatten
from bertjax.training import train as T

LR, WD, EPS, CLIP = 1e-3, 0.01, 1e-8, 1.0
GRAD_FLOOR = 1e-6  # below this |grad| (and not exactly 0) Adam's first step amplifies rounding


def _torch_model(folder, model_class):
    model = getattr(transformers, model_class).from_pretrained(folder, attn_implementation="eager")
    model.eval()  # dropout off, gradients still flow
    return model


def _batch(task, num_labels, seed=0):
    ids, types, mask = tiny_inputs(seed)
    rng = np.random.default_rng(seed + 1)
    if task == "classification":
        labels = rng.integers(0, num_labels, size=(B,)).astype(np.int32)
    else:
        labels = rng.integers(0, num_labels, size=(B, S)).astype(np.int32)
        labels[rng.random((B, S)) < 0.4] = T.IGNORE
        labels[1, 4:] = T.IGNORE
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels}


def _torch_loss(model, batch):
    out = model(torch.as_tensor(batch["input_ids"], dtype=torch.long),
                token_type_ids=torch.as_tensor(batch["token_type_ids"], dtype=torch.long),
                attention_mask=torch.as_tensor(batch["attention_mask"]),
                labels=torch.as_tensor(batch["labels"], dtype=torch.long))
    return out.loss


def _as_tree(named: dict, config) -> dict:
    return flatten(state_dict_to_params(named, config)[0])


def _torch_adamw(model):
    """torch AdamW with the BERT recipe's param groups (no decay on biases and LayerNorm)."""
    named = list(model.named_parameters())
    no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                              {"params": no_decay, "weight_decay": 0.0}], lr=LR, eps=EPS)


@pytest.mark.parametrize("task,model_class", [("classification", "BertForSequenceClassification"),
                                              ("tokens", "BertForTokenClassification"),
                                              ("mlm", "BertForMaskedLM")])
def test_loss_and_grads_match_torch(checkpoint_factory, task, model_class):
    folder = checkpoint_factory(model_class, num_labels=3)
    config, params = bertjax.load(folder)
    model = _torch_model(folder, model_class)
    batch = _batch(task, config.vocab_size if task == "mlm" else 3)
    loss, grads = jax.value_and_grad(lambda p: T.loss_fn(p, batch, config, task)[0])(params)
    ref = _torch_loss(model, batch)
    ref.backward()
    assert abs(float(loss) - float(ref)) <= 1e-5
    want = _as_tree({n: p.grad.numpy() for n, p in model.named_parameters()
                     if p.grad is not None}, config)
    got = flatten(grads)
    for path in sorted(want):
        assert_close(path, got[path], want[path], atol=1e-5)


@pytest.fixture(scope="module")
def adamw_run(checkpoint_factory):
    """One fp32 AdamW step (dropout off) on a tiny BertForSequenceClassification, shared by tests."""
    folder = checkpoint_factory("BertForSequenceClassification", num_labels=3)
    config, params = bertjax.load(folder)
    batch = _batch("classification", 3)
    tx = T.make_optimizer(LR, weight_decay=WD, eps=EPS, clip_norm=CLIP)
    start = T.init_state(params, tx)
    state, metrics = T.make_train_step(config, "classification", tx, dropout=False)(start, batch)
    return dict(folder=folder, config=config, params=params, batch=batch, tx=tx, start=start,
                state=state, metrics=metrics)


def test_one_adamw_step_matches_torch(adamw_run):
    folder, config, batch = adamw_run["folder"], adamw_run["config"], adamw_run["batch"]
    state, metrics = adamw_run["state"], adamw_run["metrics"]
    model = _torch_model(folder, "BertForSequenceClassification")
    optimizer = _torch_adamw(model)
    ref = _torch_loss(model, batch)
    ref.backward()
    grads = _as_tree({n: p.grad.numpy().copy() for n, p in model.named_parameters()}, config)
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    assert abs(float(metrics["loss"]) - float(ref)) <= 1e-5
    want = _as_tree({n: p.detach().numpy() for n, p in model.named_parameters()}, config)
    got = flatten(state.params)
    assert int(state.step) == 1 and set(got) == set(want)
    _assert_same_step(got, want, _held(grads))


def test_schedule_matches_transformers():
    total, warmup = 10, 3
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    torch_sched = transformers.get_linear_schedule_with_warmup(opt, warmup, total)
    want = []
    for _ in range(total + 2):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_sched.step()
    got = [float(T.linear_schedule(2e-3, warmup, total)(s)) for s in range(total + 2)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_decay_mask_spares_biases_and_layernorm():
    params = bertjax.init_params(jax.random.PRNGKey(0), bertjax.BertConfig(
        vocab_size=11, hidden_size=4, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=6, max_position_embeddings=5),
        bertjax.Heads(mlm=True))
    mask = flatten(T.decay_mask(params))
    assert mask["embeddings/word_embeddings/embedding"]
    assert mask["encoder/layer/0/attention/self/query/kernel"]
    assert not mask["encoder/layer/0/attention/self/query/bias"]
    assert not mask["encoder/layer/0/output/LayerNorm/scale"]
    assert not mask["embeddings/LayerNorm/bias"]
    assert not mask["cls/predictions/bias"]


def test_add_classifier_layout_and_init(checkpoint_factory):
    config, params = bertjax.load(checkpoint_factory("BertModel", add_pooling_layer=False))
    new_config, new = T.add_classifier(params, config, 4, jax.random.PRNGKey(1), ("a", "b", "c", "d"))
    assert new_config.num_labels == 4 and new_config.id2label == ("a", "b", "c", "d")
    assert new["classifier"]["kernel"].shape == (config.hidden_size, 4)
    assert not np.any(new["classifier"]["bias"]) and "pooler" in new
    std = float(jnp.std(new["pooler"]["dense"]["kernel"]))
    assert 0.5 * config.initializer_range < std < 1.5 * config.initializer_range
    bertjax.params.check_params(new, new_config)
    with pytest.raises(ValueError, match="num_labels must be a positive integer"):
        T.add_classifier(params, config, 0, jax.random.PRNGKey(1))


def test_errors(checkpoint_factory):
    config, params = bertjax.load(checkpoint_factory("BertModel"))
    batch = _batch("classification", 2)
    with pytest.raises(ValueError, match="task must be one of classification, tokens, mlm"):
        T.task_logits(params, batch, config, "regression")
    with pytest.raises(ValueError, match="task must be one of"):
        T.make_train_step(config, "nope", optax.sgd(0.1))
    with pytest.raises(ValueError, match="no classifier head"):
        T.loss_fn(params, batch, config, "classification")
    with pytest.raises(ValueError, match="no MLM head"):
        T.loss_fn(params, batch, config, "mlm")
    with pytest.raises(ValueError, match="grad_accum must be a positive integer"):
        T.make_optimizer(1e-3, grad_accum=0)
    no_pooler = {k: v for k, v in T.add_classifier(params, config, 2, jax.random.PRNGKey(0))[1]
                 .items() if k != "pooler"}
    with pytest.raises(ValueError, match="needs a pooler"):
        T.loss_fn(no_pooler, batch, config, "classification")


def _held(*grads: dict) -> dict:
    """Where the 1e-5 bound holds: every step's |grad| >= GRAD_FLOOR or exactly 0. Elsewhere
    Adam's g / (sqrt(v) + eps) turns rounding noise near eps into steps of up to lr."""
    return {path: np.logical_and.reduce([(np.abs(g[path]) >= GRAD_FLOOR) | (g[path] == 0)
                                          for g in grads]) for path in grads[0]}


def _assert_same_step(got: dict, want: dict, held: dict, bound: float = 2 * LR) -> None:
    """Updated params equal within 1e-5 where `held`, within `bound` elsewhere."""
    for path in sorted(want):
        h = held[path]
        assert_close(path, np.asarray(got[path])[h], want[path][h], atol=1e-5)
        assert_close(path + " (|grad| < 1e-6)", np.asarray(got[path])[~h], want[path][~h],
                     atol=bound)


STEPS, SMALL_CLIP = 3, 0.1


@pytest.mark.parametrize("task,model_class", [("classification", "BertForSequenceClassification"),
                                              ("tokens", "BertForTokenClassification"),
                                              ("mlm", "BertForMaskedLM")])
def test_adamw_steps_with_schedule_and_clipping_match_torch(checkpoint_factory, task, model_class):
    """Three steps on three batches, linear warm-up (1 step) and decay, and a clip norm (0.1) below
    every gradient's norm, so that clipping scales each step differently: losses and parameters
    equal transformers + clip_grad_norm_ + torch AdamW + get_linear_schedule_with_warmup."""
    folder = checkpoint_factory(model_class, num_labels=3)
    config, params = bertjax.load(folder)
    labels = config.vocab_size if task == "mlm" else 3
    batches = [_batch(task, labels, seed) for seed in range(STEPS)]
    tx = T.make_optimizer(T.linear_schedule(LR, 1, 5), weight_decay=WD, eps=EPS,
                          clip_norm=SMALL_CLIP)
    step = T.make_train_step(config, task, tx, dropout=False)
    state, losses = T.init_state(params, tx), []
    for batch in batches:
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
        assert float(metrics["grad_norm"]) > 2 * SMALL_CLIP  # clipping engaged
    model = _torch_model(folder, model_class)
    optimizer = _torch_adamw(model)
    schedule = transformers.get_linear_schedule_with_warmup(optimizer, 1, 5)
    grads = []
    for batch, loss in zip(batches, losses):
        optimizer.zero_grad()
        ref = _torch_loss(model, batch)
        ref.backward()
        assert abs(loss - float(ref)) <= 1e-5
        grads.append(_as_tree({n: p.grad.numpy().copy() for n, p in model.named_parameters()
                               if p.grad is not None}, config))
        torch.nn.utils.clip_grad_norm_(model.parameters(), SMALL_CLIP)
        optimizer.step()
        schedule.step()
    want = _as_tree({n: p.detach().numpy() for n, p in model.named_parameters()}, config)
    _assert_same_step(flatten(state.params), want, _held(*grads), bound=2 * STEPS * LR)


@pytest.mark.slow
def test_grad_accumulation_equals_one_big_batch(adamw_run):
    config, batch, params = adamw_run["config"], adamw_run["batch"], adamw_run["params"]
    rows = [jax.tree_util.tree_map(lambda x, i=i: x[i:i + 1], batch) for i in range(B)]
    tx = T.make_optimizer(LR, weight_decay=WD, eps=EPS, clip_norm=CLIP, grad_accum=B)
    step = T.make_train_step(config, "classification", tx, dropout=False)
    state, _ = step(T.init_state(params, tx), rows[0])
    assert_close("after 1 of 2 micro-steps", state.params["classifier"]["kernel"],
                 params["classifier"]["kernel"], atol=0)
    state, _ = step(state, rows[1])
    grads = flatten(jax.grad(lambda p: T.loss_fn(p, batch, config, "classification")[0])(params))
    _assert_same_step(flatten(state.params), flatten(adamw_run["state"].params),
                      _held(jax.tree_util.tree_map(np.asarray, grads)))


def test_bf16_step_keeps_fp32_master_weights(adamw_run):
    config, batch, tx = adamw_run["config"], adamw_run["batch"], adamw_run["tx"]
    s16, m16 = T.make_train_step(config, "classification", tx, dropout=False, bf16=True)(
        adamw_run["start"], batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(s16.params))
    assert all(x.dtype in (jnp.float32, jnp.int32)
               for x in jax.tree_util.tree_leaves(s16.opt_state))
    loss32 = float(adamw_run["metrics"]["loss"])
    assert abs(float(m16["loss"]) - loss32) < 2e-2
    assert float(m16["loss"]) != loss32  # the forward really ran in bf16


@pytest.mark.slow
def test_dropout_rng_changes_the_loss_and_advances(adamw_run):
    config, batch, start = adamw_run["config"], adamw_run["batch"], adamw_run["start"]
    on = T.make_train_step(config, "classification", adamw_run["tx"])
    s1, m1 = on(start, batch)
    _, m2 = on(s1.replace(params=start.params, opt_state=start.opt_state), batch)
    losses = {float(m1["loss"]), float(m2["loss"]), float(adamw_run["metrics"]["loss"])}
    assert len(losses) == 3  # dropout on changes the loss; the next step draws new masks
    assert float(on(start, batch)[1]["loss"]) == float(m1["loss"])  # same key, same masks


_SHARDED = textwrap.dedent("""
    import jax, numpy as np, pytest, bertjax
    from bertjax.training import train as T
    from bertjax.model.params import flatten
    jax.config.update("jax_default_matmul_precision", "highest")
    assert jax.device_count() == 2, jax.devices()
    config, params = bertjax.load({folder!r})
    rng = np.random.default_rng(0)
    batch = {{"input_ids": rng.integers(1, 101, (4, 7)).astype(np.int32),
              "attention_mask": np.ones((4, 7), np.int32),
              "labels": rng.integers(0, 3, (4,)).astype(np.int32)}}
    tx = T.make_optimizer(1e-3)
    step = T.make_train_step(config, "classification", tx)
    one, m1 = step(T.init_state(params, tx), batch)
    mesh = T.batch_mesh()
    sharded = T.shard_examples(mesh, batch)
    assert len(sharded["input_ids"].sharding.device_set) == 2
    two, m2 = step(T.replicate(mesh, T.init_state(params, tx)), sharded)
    assert abs(float(m1["loss"]) - float(m2["loss"])) <= 1e-6, (m1, m2)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree_util.tree_leaves(one.params),
                               jax.tree_util.tree_leaves(two.params)))
    print("max abs diff", diff)
    assert diff <= 1e-5, diff
    assert two.params["classifier"]["kernel"].sharding.is_fully_replicated
    with pytest.raises(ValueError, match="input_ids has 3 rows, not a multiple of the 2 devices"):
        T.shard_examples(mesh, {{"input_ids": batch["input_ids"][:3]}})
""")


@pytest.mark.slow
def test_sharded_step_equals_single_device(checkpoint_factory):
    folder = checkpoint_factory("BertForSequenceClassification", num_labels=3)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _SHARDED.format(folder=folder)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
