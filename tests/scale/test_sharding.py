"""`bertjax.scale.sharding` on 4 forced host devices: sharded results equal single-device results (data
parallel, and with the kernels split over a model axis of 2), outputs stay sharded, odd batches are
padded and stripped, and `bertjax extract` on 4 devices equals extract on 1.

XLA reads `--xla_force_host_platform_device_count` when jax starts, so the checks run in one
subprocess started with the flag (`python tests/test_sharding.py DIR TINY SPLIT` runs them all and
prints one JSON line); each check is then reported by its own test here.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import traceback

import jax
import numpy as np
import pytest
from conftest import TINY, assert_close
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bertjax import BertConfig, forward, init_params, stack_layers
from bertjax.model import capture as C
from bertjax.model.params import Heads
from bertjax.scale.sharding import (
    activation_spec,
    make_mesh,
    replicate,
    shard_batch,
    shard_params,
    sharded_forward,
)

SPLIT = dict(TINY, hidden_size=16, num_attention_heads=4, intermediate_size=38)  # N, I even
B = 8


def _inputs(config: BertConfig, rows: int = 8):
    """int32 ids, mask, token types [rows, 11], with padding in every other row."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size, (8, 11)).astype(np.int32)
    types = rng.integers(0, config.type_vocab_size, (8, 11)).astype(np.int32)
    mask = np.ones((8, 11), np.int32)
    mask[1::2, 6:] = 0
    ids[1::2, 6:] = 0
    return ids[:rows], mask[:rows], types[:rows]


@functools.cache
def _model(name: str):
    """config, params and the single-device `forward` of `_inputs` (all activations)."""
    config = BertConfig(**{"tiny": TINY, "split": SPLIT}[name])
    params = init_params(jax.random.PRNGKey(1), config, Heads(mlm=True))
    ids, mask, types = _inputs(config)
    return config, params, jax.device_get(forward(params, ids, config, types, mask, capture="all"))


def _assert_equal_to_one_device(out, name: str, rows: int = B) -> None:
    """Every array of a sharded output (its first `rows` rows) against `forward` on one device
    (rows do not interact, so the first rows of the 8-row reference are the reference)."""
    want, got = _model(name)[2], jax.device_get(out)
    assert sorted(got.acts) == sorted(want.acts) == sorted(C.ALL_NAMES)
    assert_close("last_hidden_state", got.last_hidden_state[:rows], want.last_hidden_state[:rows])
    assert_close("pooler_output", got.pooler_output[:rows], want.pooler_output[:rows])
    for act, a in want.acts.items():
        b = got.acts[act]
        if act in C.LAYER_NAMES:
            assert_close(act, b[:, :rows], a[:, :rows])
        else:
            assert_close(act, b[:rows], a[:rows])


def _assert_batch_split(a, spec: P, mesh, devices: int = 4) -> None:
    """`a` lives on every device of the mesh, split over "batch" as `spec` says (in `devices`
    different pieces: 2 on a 2 x 2 mesh, where the "model" devices hold copies)."""
    assert a.sharding.is_equivalent_to(NamedSharding(mesh, spec), a.ndim), (a.sharding, spec)
    axis = list(spec).index("batch")
    shards = a.addressable_shards
    assert len({s.device for s in shards}) == 4
    assert {s.data.shape[axis] for s in shards} == {a.shape[axis] // mesh.shape["batch"]}
    assert len({str(s.index) for s in shards}) == devices


def check_four_devices(_):
    assert len(jax.devices()) == 4 and jax.devices()[0].platform == "cpu"


def check_data_parallel_equals_one_device_and_stays_sharded(_):
    config, params, want = _model("tiny")
    mesh = make_mesh()
    assert dict(mesh.shape) == {"batch": 4, "model": 1}
    (ids, mask, types), rows = shard_batch(mesh, *_inputs(config))
    assert rows == B
    _assert_batch_split(ids, P("batch"), mesh)
    placed = shard_params(mesh, params, config)
    out = sharded_forward(mesh, params, config, capture="all")(placed, ids, mask, types)
    _assert_batch_split(out.last_hidden_state, P("batch"), mesh)
    _assert_batch_split(out.pooler_output, P("batch"), mesh)
    for name, a in out.acts.items():
        _assert_batch_split(a, activation_spec(name), mesh)
    assert activation_spec("attn.probs") == P(None, "batch")
    _assert_equal_to_one_device(out, "tiny")

    def post(out, attention_mask):  # pools on the devices: only [B, D] leaves them
        return {"sum": (out.acts["layer.out"][-1] * attention_mask[..., None]).sum(1)}

    summed = sharded_forward(mesh, params, config, ("layer.out",), post)(
        replicate(mesh, params), ids, mask, types)["sum"]
    _assert_batch_split(summed, P("batch"), mesh)
    mask = np.asarray(mask)[..., None]
    assert_close("summed", summed, (want.acts["layer.out"][-1] * mask).sum(1))


def check_model_axis_splits_kernels(_):
    config, params, _ = _model("split")
    mesh = make_mesh(model_axis=2)
    assert dict(mesh.shape) == {"batch": 2, "model": 2}
    L, D, I, NH = TINY["num_hidden_layers"], 16, 38, 16  # noqa: E741 (the package's axis letters)
    split = {("attention", "self", "query", "kernel"): (D, NH // 2),
             ("attention", "self", "value", "bias"): (NH // 2,),
             ("attention", "output", "dense", "kernel"): (NH // 2, D),
             ("attention", "output", "dense", "bias"): (D,),  # replicated: added after the sum
             ("intermediate", "dense", "kernel"): (D, I // 2),
             ("intermediate", "dense", "bias"): (I // 2,),
             ("output", "dense", "kernel"): (I // 2, D),
             ("output", "dense", "bias"): (D,),
             ("output", "LayerNorm", "scale"): (D,)}
    for tree, lead in ((params, ()), (stack_layers(params), (L,))):
        placed = shard_params(mesh, tree, config)
        layer = placed["encoder"]["layer"] if lead else placed["encoder"]["layer"]["1"]
        for path, shape in split.items():
            leaf = layer
            for key in path:
                leaf = leaf[key]
            assert {s.data.shape for s in leaf.addressable_shards} == {lead + shape}, path
        table = placed["embeddings"]["word_embeddings"]["embedding"]
        assert {s.data.shape for s in table.addressable_shards} == {(config.vocab_size, D)}
    (ids, mask, types), _ = shard_batch(mesh, *_inputs(config))
    out = sharded_forward(mesh, placed, config, "all")(placed, ids, mask, types)
    _assert_batch_split(out.acts["mlp.post"], P(None, "batch"), mesh, devices=2)
    _assert_equal_to_one_device(out, "split")


def check_odd_batches_padded_and_stripped(_):
    for name, model_axis, rows, padded in (("tiny", 1, 5, 8), ("tiny", 1, 1, 4),
                                           ("split", 2, 3, 4)):
        config, params, _ = _model(name)
        mesh = make_mesh(model_axis=model_axis)
        inputs = _inputs(config, rows)
        sharded, real = shard_batch(mesh, *inputs)
        assert real == rows and sharded[0].shape == (padded, 11)
        for a, b in zip(sharded, inputs):
            a = np.asarray(a)
            np.testing.assert_array_equal(a[:rows], b)
            assert not a[rows:].any()  # all-padding rows: ids 0, mask 0
        out = sharded_forward(mesh, params, config, "all")(shard_params(mesh, params, config),
                                                           *sharded)
        _assert_equal_to_one_device(out, name, rows)


def check_errors(_):
    with pytest.raises(ValueError, match=r"model_axis=3 must be >= 1 and divide the number of "
                                         r"devices \(4\)"):
        make_mesh(model_axis=3)
    config, params, _ = _model("tiny")  # 3 heads, I = 37
    message = (r"a model axis of 2 needs num_attention_heads \(3\) and intermediate_size \(37\) "
               r"divisible by 2")
    with pytest.raises(ValueError, match=message):
        sharded_forward(make_mesh(model_axis=2), params, config)
    with pytest.raises(ValueError, match=message):
        shard_params(make_mesh(model_axis=2), params, config)
    config = BertConfig(**dict(SPLIT, intermediate_size=37))
    params = init_params(jax.random.PRNGKey(1), config)
    with pytest.raises(ValueError, match=r"intermediate_size \(37\) divisible by 2"):
        shard_params(make_mesh(model_axis=2), params, config)
    mesh, (config, params, _) = make_mesh(), _model("tiny")
    ids, mask, types = _inputs(config, 4)
    ids[2, 3] = 101
    run, inputs = sharded_forward(mesh, params, config), shard_batch(mesh, ids, mask, types)[0]
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 101\) \(vocab_size=101\), "
                                         r"got 101"):
        run(replicate(mesh, params), *inputs)


def check_extract_on_four_devices_equals_one(argv):
    from test_extract import write_corpus

    from bertjax.scale.extract import Options, extract
    from bertjax.scale.store import ActivationStore

    folder, tiny, split = argv
    corpus = write_corpus(os.path.join(folder, "c.txt"), 30, max_words=12)  # one bucket
    runs = {"one": (tiny, jax.devices()[:1], 1), "four": (tiny, None, 1),
            "split-one": (split, jax.devices()[:1], 1), "split-2x2": (split, None, 2)}
    for name, (model, devices, model_axis) in runs.items():
        extract(Options(corpus, os.path.join(folder, name), model=model, layers=(1, 0),
                        capture=("layer.out", "attn.probs", "pooler.out"), batch_size=6,
                        chunk_size=11, model_axis=model_axis), devices=devices, progress=False)
    for a, b in (("one", "four"), ("split-one", "split-2x2")):
        one, many = (ActivationStore(os.path.join(folder, x)) for x in (a, b))
        assert one.examples == many.examples and len(one) == 30
        for i in range(30):
            for name in one.names:
                assert_close(f"{b} {name} {i}", many[i][name], one[i][name])


CHECKS = {name[len("check_"):]: f for name, f in globals().items() if name.startswith("check_")}


@pytest.fixture(scope="module")
def four_device_results(tmp_path_factory) -> dict[str, str]:
    from test_extract import devices_env, make_tiny_bert

    folder = tmp_path_factory.mktemp("sharding")
    tiny = make_tiny_bert(folder / "tiny")
    split = make_tiny_bert(folder / "split", **{k: SPLIT[k] for k in ("hidden_size",
                                                "num_attention_heads", "intermediate_size")})
    proc = subprocess.run([sys.executable, __file__, str(folder), tiny, split],
                          env=devices_env(4), capture_output=True, text=True, timeout=600)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULTS ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(CHECKS))
def test_on_four_devices(four_device_results, check):
    assert four_device_results[check] == "ok", four_device_results[check]


def test_mesh_errors_on_one_device():
    assert len(jax.devices()) == 1  # this process: the flag is only in the subprocess
    with pytest.raises(ValueError, match=r"model_axis=0 must be >= 1 and divide the number of "
                                         r"devices \(1\)"):
        make_mesh(model_axis=0)
    with pytest.raises(ValueError, match=r"model_axis=2 must be >= 1 and divide the number of "
                                         r"devices \(1\)"):
        make_mesh(model_axis=2)
    with pytest.raises(ValueError, match=r"shard_batch needs arrays with one leading size, "
                                         r"got \[3, 4\]"):
        shard_batch(make_mesh(), np.zeros((3, 5)), np.zeros((4, 5)))


if __name__ == "__main__":
    results = {}
    for name, check in CHECKS.items():
        start = time.perf_counter()
        try:
            check(sys.argv[1:])
            results[name] = "ok"
        except Exception:  # reported per check by test_on_four_devices
            results[name] = traceback.format_exc()[-3000:]
        print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print("RESULTS " + json.dumps(results))
