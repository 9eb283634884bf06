"""`bertjax.scale.store`: layouts, and `ActivationStore` on folders written by hand to the documented
format (no model involved): per-example arrays in the contract's axis order, the stacked view,
chunks spread over shards, completeness, errors."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from conftest import TINY
from safetensors.numpy import save_file

from bertjax import BertConfig
from bertjax.model import capture as C
from bertjax.scale.store import (
    SEQ,
    ActivationStore,
    array_layout,
    manifest_path,
    memmap_safetensors,
    shard_name,
)

CONFIG = BertConfig(**TINY)  # N=3, H=5, D=15, I=37
SIZES = {"L": 2, "N": 3, "H": 5, "D": 15, "I": 37}


@pytest.mark.parametrize("name, reduce, shape, seq_axis", [
    ("layer.out", "none", [SEQ, 2, 15], 1),
    ("embed.out", "none", [SEQ, 15], 0),
    ("attn.probs", "none", [SEQ, 2, 3, SEQ], 2),
    ("attn.k", "none", [SEQ, 2, 3, 5], 2),  # keys: their token axis is T
    ("mlp.post", "mean", [2, 37], None),
    ("attn.probs", "cls", [2, 3, SEQ], None),  # queries pooled, keys stay
    ("attn.v", "mean", [2, 3, 5], None),
    ("pooler.out", "none", [15], None),
])
def test_array_layout(name, reduce, shape, seq_axis):
    assert array_layout(name, CONFIG, 2, reduce) == {"shape": shape, "seq_axis": seq_axis}


def example_array(name: str, reduce: str, length: int, seed: int) -> np.ndarray:
    """A distinct array in the contract's axis order (without B) for one example."""
    letters = [a for a in C.SHAPES[name].split() if a != "B"]
    layout = array_layout(name, CONFIG, 2, reduce)
    if layout["seq_axis"] is None and reduce != "none" and ("S" in letters or "T" in letters):
        letters.remove("S" if "S" in letters else "T")
    shape = [length if a in "ST" else SIZES[a] for a in letters]
    return seed * 1000.0 + np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def write_folder(folder, chunks: dict[int, list[int]], names: dict[str, str], dtype="F32",
                 meta_extra=None) -> list[dict[str, np.ndarray]]:
    """An extract folder with chunk k holding examples of the given lengths; names: name ->
    reduce. Returns each example's arrays, in order."""
    folder = os.fspath(folder)
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    os.makedirs(os.path.join(folder, "manifest"), exist_ok=True)
    arrays = {n: {**array_layout(n, CONFIG, 2, r), "dtype": dtype} for n, r in names.items()}
    with open(os.path.join(folder, "extract.json"), "w") as f:
        json.dump({"format": 1, "command": meta_extra or {}, "arrays": arrays}, f)
    examples, seed = [], 0
    for k, lengths in chunks.items():
        flat, records = {n: [] for n in names}, []
        for row, length in enumerate(lengths):
            seed += 1
            example = {n: example_array(n, r, length, seed) for n, r in names.items()}
            for n, a in example.items():
                axis = arrays[n]["seq_axis"]
                flat[n].append((a if axis is None else np.moveaxis(a, axis, 0)).ravel())
            examples.append(example)
            records.append({"line": 100 * k + row + 1, "offset": row, "length": length,
                            "truncated": False, "tokens": list(range(seed, seed + length))})
        np_dtype = ml_dtypes.bfloat16 if dtype == "BF16" else np.float32
        save_file({n: np.concatenate(v).astype(np_dtype) for n, v in flat.items()},
                  os.path.join(folder, shard_name(k)))
        with open(manifest_path(folder, k), "w") as f:
            json.dump({"chunk": k, "shard": shard_name(k), "examples": records}, f)
    return examples


NAMES = {"layer.out": "none", "attn.probs": "none", "attn.k": "none", "pooler.out": "none"}


def test_examples_read_back_in_the_contract_order(tmp_path):
    want = write_folder(tmp_path, {0: [3, 1, 4], 1: [2], 2: [5, 2]}, NAMES)
    store = ActivationStore(tmp_path)
    assert len(store) == 6 and store.names == sorted(NAMES)
    np.testing.assert_array_equal(store.lengths, [3, 1, 4, 2, 5, 2])
    for i, example in enumerate(want):
        got = store[i]
        assert sorted(got) == sorted(NAMES)
        for name, a in example.items():
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], a, err_msg=f"{name} {i}")
    assert store[-1]["attn.probs"].shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(store.token_ids(4), np.arange(5, 10))  # example 4: seed 5
    with pytest.warns(DeprecationWarning, match=r"returns token ids and is renamed token_ids\(i\)"):
        np.testing.assert_array_equal(store.tokens(4), store.token_ids(4))
    assert [store.line(i) for i in range(6)] == [1, 2, 3, 101, 201, 202]
    assert not store.complete


def test_stacked_per_token_and_per_example(tmp_path):
    want = write_folder(tmp_path, {0: [3, 1], 1: [4]},
                        {"layer.out": "none", "attn.k": "none", "mlp.post": "mean"})
    store = ActivationStore(tmp_path)
    values, ids = store.stacked("layer.out")  # [T_all, L, D]: tokens first
    assert values.shape == (8, 2, 15)
    np.testing.assert_array_equal(ids, [0, 0, 0, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(values, np.concatenate([np.moveaxis(w["layer.out"], 1, 0)
                                                          for w in want]))
    values, ids = store.stacked("attn.k")
    np.testing.assert_array_equal(values[ids == 2], np.moveaxis(want[2]["attn.k"], 2, 0))
    values, ids = store.stacked("mlp.post")  # reduced: one row per example
    np.testing.assert_array_equal(values, np.stack([w["mlp.post"] for w in want]))
    np.testing.assert_array_equal(ids, [0, 1, 2])


def test_bfloat16_and_empty_stores(tmp_path):
    write_folder(tmp_path / "bf16", {0: [2, 3]}, {"layer.out": "mean"}, dtype="BF16")
    store = ActivationStore(tmp_path / "bf16")
    assert store[1]["layer.out"].dtype == ml_dtypes.bfloat16
    assert store.stacked("layer.out").values.shape == (2, 2, 15)
    write_folder(tmp_path / "empty", {}, {"layer.out": "none"})
    empty = ActivationStore(tmp_path / "empty")
    values, ids = empty.stacked("layer.out")
    assert len(empty) == 0 and values.shape == (0, 2, 15) and values.dtype == np.float32
    assert ids.shape == (0,)


def test_complete_with_one_or_many_processes(tmp_path):
    write_folder(tmp_path, {0: [2]}, {"pooler.out": "none"})
    store = ActivationStore(tmp_path)
    assert not store.complete
    for name, complete in (("summary-1-of-3.json", False), ("summary-0-of-3.json", False),
                           ("summary-2-of-3.json", True)):
        (tmp_path / name).write_text("{}")
        assert store.complete == complete, name
    for name in os.listdir(tmp_path):
        if name.startswith("summary"):
            os.remove(tmp_path / name)
    (tmp_path / "summary.json").write_text("{}")
    assert store.complete


def test_a_rewritten_shard_is_read_again(tmp_path):
    """Shards are memory-mapped and cached by path, modification time and size."""
    write_folder(tmp_path, {0: [2, 3]}, {"layer.out": "mean"})
    first = ActivationStore(tmp_path)[1]["layer.out"].copy()
    path = os.path.join(tmp_path, shard_name(0))
    before = memmap_safetensors(path)["layer.out"]
    save_file({"layer.out": -np.asarray(before)}, path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    np.testing.assert_array_equal(ActivationStore(tmp_path)[1]["layer.out"], -first)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"is not a bertjax extract folder \(no extract.json\)"):
        ActivationStore(tmp_path)
    write_folder(tmp_path, {0: [2, 3]}, {"layer.out": "none", "attn.probs": "none"})
    store = ActivationStore(tmp_path)
    with pytest.raises(IndexError, match=r"example 2 out of range for a store of 2"):
        store[2]
    with pytest.raises(IndexError, match=r"example -3 out of range for a store of 2"):
        store.token_ids(-3)
    with pytest.raises(ValueError, match=r"'mlp.post' was not extracted; this store has "
                                         r"attn.probs, layer.out"):
        store.stacked("mlp.post")
    with pytest.raises(ValueError, match=r"'attn.probs' has a key axis as long as each example, "
                                         r"so examples do not stack; read them one by one"):
        store.stacked("attn.probs")


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd", "shards/../../x.safetensors",
                                   "shards/sub/x.safetensors", "shards/", "x.safetensors",
                                   "shards/00000000.json", 3],
                         ids=["dotdot", "absolute", "shards-dotdot", "subfolder", "no-name",
                              "outside-shards", "not-safetensors", "not-a-string"])
def test_manifest_shard_paths_must_be_plain_names_in_shards(tmp_path, shard):
    """The same rule as a sharded checkpoint's index: a manifest names a plain file of shards/."""
    write_folder(tmp_path / "s", {0: [2, 3]}, {"layer.out": "mean"})
    (tmp_path / "x.safetensors").write_bytes(b"secret")
    path = manifest_path(str(tmp_path / "s"), 0)
    with open(path) as f:
        manifest = json.load(f)
    manifest["shard"] = shard
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ValueError, match=r"00000000\.json: shard .* is not a plain file name in the "
                                         r"store's shards folder .*shards|is not a shard file"):
        ActivationStore(tmp_path / "s")


def test_a_shard_linking_out_of_the_store_is_refused(tmp_path):
    write_folder(tmp_path / "s", {0: [2, 3]}, {"layer.out": "mean"})
    shard = tmp_path / "s" / shard_name(0)
    os.replace(shard, tmp_path / "elsewhere.safetensors")
    os.symlink(tmp_path / "elsewhere.safetensors", shard)
    with pytest.raises(ValueError, match=r"shard 'shards/00000000\.safetensors' is a symlink leading "
                                         r"out of the store's shards folder"):
        ActivationStore(tmp_path / "s")


def test_a_manifest_nested_too_deeply_is_one_line(tmp_path):
    write_folder(tmp_path / "s", {0: [2, 3]}, {"layer.out": "mean"})
    with open(manifest_path(str(tmp_path / "s"), 0), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"00000000\.json is not valid JSON \(nested too deeply\)"):
        ActivationStore(tmp_path / "s")


@pytest.mark.parametrize("header", [b"[" * 100_000 + b"]" * 100_000, b"{not json"],
                         ids=["nested", "invalid"])
def test_a_shard_header_python_cannot_read_is_one_line(tmp_path, header):
    write_folder(tmp_path / "s", {0: [2, 3]}, {"layer.out": "mean"})
    shard = tmp_path / "s" / shard_name(0)
    shard.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(ValueError, match=r"00000000\.safetensors has a corrupted safetensors header"):
        ActivationStore(tmp_path / "s")[0]
