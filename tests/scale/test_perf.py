"""Performance plumbing (no timings: those live in benchmarks/): per-layer parameters stacked once,
sequence-length buckets bounding the number of compiled programs, and the persistent compilation
cache reused by a second process."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pytest
from conftest import TINY, assert_close, tiny_inputs

import bertjax
from bertjax.model.forward import _forward

L = TINY["num_hidden_layers"]

ENCODER = sys.modules["bertjax.model.encoder"]  # the module (bertjax.model.encoder is the function)


def _tiny(**overrides):
    config = bertjax.BertConfig(**{**TINY, **overrides})
    return config, bertjax.init_params(jax.random.key(0), config)


def test_per_layer_params_are_stacked_once_and_freed_with_them():
    config, params = _tiny()
    ids, types, mask = tiny_inputs()
    first = bertjax.forward(params, ids, config, types, mask)
    stacked = ENCODER._STACKED[0][2]
    assert stacked["attention"]["self"]["query"]["kernel"].shape == (L, 15, 15)
    second = bertjax.forward(params, ids, config, types, mask)
    assert ENCODER._STACKED[0][2] is stacked  # reused, not stacked again
    assert_close("same params", second.last_hidden_state, first.last_hidden_state, 0.0)
    del params, stacked
    gc.collect()
    assert ENCODER._STACKED == []  # the copy went away with the per-layer arrays


def test_per_layer_models_called_in_turn_warn_once_to_stack_them(monkeypatch):
    config, first = _tiny()
    second = bertjax.init_params(jax.random.key(1), config)
    ids, types, mask = tiny_inputs()
    monkeypatch.setattr(ENCODER, "_WARNED", [])
    monkeypatch.setattr(ENCODER, "_EVICTED", [])
    ENCODER._STACKED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):  # one model again and again: stacked once, no warning
            bertjax.forward(first, ids, config, types, mask)
        bertjax.forward(second, ids, config, types, mask)  # a second model: no warning yet
    with pytest.warns(RuntimeWarning, match="restacking per-layer parameters on every call"):
        bertjax.forward(first, ids, config, types, mask)  # the first again: alternating
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        bertjax.forward(second, ids, config, types, mask)
    stacked = [bertjax.stack_layers(p) for p in (first, second)]
    monkeypatch.setattr(ENCODER, "_WARNED", [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stacked trees never go through the cache
        for p in stacked * 2:
            bertjax.forward(p, ids, config, types, mask)


def test_stacking_under_an_outer_jit_or_grad_is_not_cached():
    config, params = _tiny()
    ids, types, mask = tiny_inputs()
    ENCODER._STACKED.clear()
    want = bertjax.forward(params, ids, config, types, mask).last_hidden_state
    ENCODER._STACKED.clear()
    got = jax.jit(lambda p: bertjax.forward(p, ids, config, types, mask).last_hidden_state)(params)
    assert ENCODER._STACKED == []  # tracers are never kept
    assert_close("under jit", got, want)
    grads = jax.grad(lambda p: bertjax.forward(p, ids, config, types, mask)
                     .last_hidden_state.sum())(params)
    assert set(grads["encoder"]["layer"]) == {str(i) for i in range(L)}  # gradients keep the per-layer layout
    numpy_params = jax.tree_util.tree_map(np.asarray, params)
    bertjax.forward(numpy_params, ids, config, types, mask)
    assert ENCODER._STACKED == []  # mutable numpy arrays are stacked per call, not cached


def test_ragged_stream_compiles_one_program_per_bucket():
    config, params = _tiny(max_position_embeddings=64)
    params = bertjax.stack_layers(params)
    buckets = bertjax.bucket_lengths(64, smallest=8)
    assert buckets == (8, 16, 32, 64)
    rng = np.random.default_rng(0)
    lengths = sorted(rng.integers(1, 65, size=38))  # batched by length, as one would
    sequences = [rng.integers(1, config.vocab_size, size=n).tolist() for n in lengths]
    before = _forward._cache_size()
    used, longest = set(), set()
    for start in range(0, len(sequences), 4):  # 10 batches, the last one of 2
        batch = sequences[start:start + 4]
        ids, mask = bertjax.pad_batch(batch, buckets, batch_size=4)
        used.add(ids.shape)
        longest.add(max(map(len, batch)))
        out = bertjax.forward(params, ids, config, attention_mask=mask)
    assert used <= {(4, n) for n in buckets} and len(longest) == 10
    assert _forward._cache_size() - before == len(used) <= 4  # not one per distinct length
    # padding changes nothing at the real positions of the last batch
    row = sequences[-1]
    alone = bertjax.forward(params, np.asarray([row], np.int32), config).last_hidden_state
    assert_close("padded vs alone", out.last_hidden_state[1, :len(row)], alone[0], 1e-5)


_CACHE_RUN = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    import bertjax
    hits = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
    folder = bertjax.enable_compilation_cache(sys.argv[1], min_compile_time_s=0.0)
    config = bertjax.BertConfig(vocab_size=101, hidden_size=16, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=24,
                                max_position_embeddings=16)
    params = bertjax.stack_layers(bertjax.init_params(jax.random.key(0), config))
    out = bertjax.forward(params, np.ones((2, 8), np.int32), config, capture="attn.probs")
    print(json.dumps({"folder": folder, "hits": len(hits),
                      "sum": float(out.last_hidden_state.sum())}))
""")


def test_second_process_hits_the_compilation_cache(tmp_path):
    folder = tmp_path / "cache"

    def run():
        proc = subprocess.run([sys.executable, "-c", _CACHE_RUN, str(folder)], capture_output=True,
                              text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run()
    assert first["folder"] == str(folder) and first["hits"] == 0
    written = sorted(p.name for p in folder.iterdir())
    assert written  # the forward program was written
    second = run()
    assert second["hits"] >= 1  # ... and read back instead of compiled
    assert second["sum"] == first["sum"]


def test_compilation_cache_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="min_compile_time_s must be >= 0"):
        bertjax.enable_compilation_cache(tmp_path, min_compile_time_s=-1.0)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        bertjax.enable_compilation_cache(not_a_folder)


def test_default_cache_folder_follows_bertjax_cache(monkeypatch, tmp_path):
    from bertjax.scale.compile_cache import default_cache_dir

    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / "jax-compilation-cache")
