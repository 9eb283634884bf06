"""The benchmark scripts' own logic (no timings): the instruction-set cap, the profile's HLO
categories, the GPU check's parity verdicts, the capture benchmark's agreement figures, the load
benchmark's fresh-process case and the modern encoders' comparison with transformers (tiny)."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY

import bertjax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench_capture  # noqa: E402
import bench_family  # noqa: E402
import bench_forward  # noqa: E402
import bench_load  # noqa: E402
import bench_modern  # noqa: E402
import gpu_check  # noqa: E402
import machine  # noqa: E402
import profile_forward  # noqa: E402
import workers  # noqa: E402


def test_isa_env_caps_both_libraries_and_rejects_unknown():
    assert machine.isa_env("native") == {}
    env = machine.isa_env("avx2")
    assert "--xla_cpu_max_isa=AVX2" in env["XLA_FLAGS"]
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env["MKL_ENABLE_INSTRUCTIONS"] == "AVX2"  # torch's fp32 Linear is MKL's sgemm
    with pytest.raises(ValueError, match="isa must be one of .* got 'avx512'"):
        machine.isa_env("avx512")


def test_perf_report_rows_name_the_hottest_symbols():
    text = """# Samples: 20K of event 'cpu-clock:ppp'
#
# Overhead  Symbol
# ........  ..........
#
    58.33%  [.] mkl_blas_avx2_sgemm_kernel_0                                 -      -
    19.54%  [.] mkl_blas_avx2_sgemm_kernel_0_b0                              -      -
     3.56%  [k] exc_page_fault
     1.00%  [.] PyObject_RichCompare
"""
    assert machine.parse_perf_report(text) == [
        "58.33% mkl_blas_avx2_sgemm_kernel_0", "19.54% mkl_blas_avx2_sgemm_kernel_0_b0",
        "3.56% exc_page_fault"]


def test_cpu_info_names_the_watched_flags():
    info = machine.cpu_info()
    assert set(info["flags"]) == set(machine.WATCHED_FLAGS)
    assert info["model"] and info["cores"] >= 1
    assert info["model"] in machine.cpu_line(info)


def test_profile_categories_of_a_tiny_forward():
    config = bertjax.BertConfig(**TINY)
    params = bertjax.stack_layers(bertjax.init_params(jax.random.key(0), config))
    B, S = 2, 7
    ids = jnp.ones((B, S), jnp.int32)
    fn = jax.jit(lambda p, i: bertjax.forward(p, i, config).last_hidden_state)
    text = fn.lower(params, ids).compile().as_text()
    comps, instrs = profile_forward.parse_hlo(text)
    H = TINY["num_attention_heads"]
    loop = [i for i in instrs.values() if i["op"] == "while"]
    assert loop, "the encoder's scan is a while loop"
    body = [instrs[i["name"]] for c in loop[0]["calls"] for i in comps.get(c, [])]
    cats = [profile_forward.categorize(i, comps, B, S, H) for i in body
            if i["op"] not in ("parameter", "constant", "tuple", "get-tuple-element")]
    # q, k, v, output, FFN in and out, q.k and probs.v: fused or not, at least six dots a layer
    assert cats.count("matmul") >= 6, cats
    for expected in ("gelu_erf", "softmax", "layernorm"):
        assert expected in cats, (expected, cats)


def test_forward_benchmark_lowers_the_jitted_forward():
    # the program bench_forward's cold-compile rows time, on abstract tiny shapes
    config = bertjax.BertConfig(**TINY)
    shapes = jax.eval_shape(bertjax.stack_layers, bertjax.param_shapes(config))
    ids = jax.ShapeDtypeStruct((2, 7), jnp.int32)
    names = bertjax.resolve_capture(("attn.probs",), has_pooler=False, has_mlm=False)
    compiled = bench_forward.lower_forward(shapes, ids, ids, config, names).compile()
    assert compiled.memory_analysis().output_size_in_bytes > 0


def test_forward_benchmark_flops_are_its_matmuls_plus_the_pooler():
    B, S, D, I, L = 3, 5, 768, 3072, 12
    per_layer = 2 * B * S * (4 * D * D + 2 * D * I) + 2 * 2 * B * S * S * D
    assert bench_forward.model_flops(B, S) == L * per_layer + 2 * B * D * D


def test_profile_bytes_and_flops():
    assert profile_forward.nbytes("f32[2,3]{1,0}") == 24
    assert profile_forward.nbytes("(f32[4], bf16[2,2])") == 16 + 8
    m = {"lhs": (2, 3, 5, 7), "rhs": (2, 3, 7, 11)}
    assert profile_forward.flops_of(m) == 2 * 2 * 3 * 5 * 7 * 11


def test_gpu_parity_verdicts():
    rng = np.random.default_rng(0)
    ref = {k: rng.standard_normal(shape).astype(np.float32)
           for k, shape in (("last", (2, 4, 6)), ("layers", (3, 2, 4, 6)), ("probs", (3, 2, 2, 4, 4)))}
    ref["mask"] = np.ones((2, 4), np.int32)
    near = {k: v + np.float32(5e-5) if k != "mask" else v for k, v in ref.items()}
    assert all(x["ok"] for x in gpu_check.fp32_parity(near, ref).values())
    far = dict(near, layers=ref["layers"] + np.float32(3e-4))
    verdict = gpu_check.fp32_parity(far, ref)
    assert not verdict["layers"]["ok"] and verdict["last"]["ok"]
    assert verdict["layers"]["max_abs_diff"] == pytest.approx(3e-4, rel=1e-2)
    same = gpu_check.agreement(ref, ref)
    assert same == {"hidden_argmax": 1.0, "attention_argmax": 1.0}
    flipped = dict(ref, last=-ref["last"])
    assert gpu_check.agreement(flipped, ref)["hidden_argmax"] < 0.5


def test_gpu_padded_batch_pads_each_row_less():
    ids, mask = gpu_check.padded_batch(4, 16, 1000)
    assert mask[0].all() and mask.sum(1).tolist() == [16, 14, 12, 10]
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] > 0).all()


def test_capture_agreement_figures():
    a = {"last_first": [1.0, 2.0], "last_last": [0.0], "probs0": [0.5], "logits": [3.0],
         "last_sum": 10.0, "last_abs_sum": 20.0}
    b = dict(a, last_first=[1.0, 2.5], last_sum=10.2)
    diffs = bench_capture.compare(a, b)
    assert diffs["last_first"] == 0.5 and diffs["probs0"] == 0.0
    assert diffs["last_sum_rel"] == pytest.approx(0.01)


def test_load_benchmark_case_reads_its_own_memory(tiny_dir):
    """One fresh-process case on a tiny checkpoint: the memory figures are read and ordered, and
    the report shows them (and a tree without `stacked` as not available)."""
    got = bench_load.run_case("stacked", tiny_dir, None, 2, 8)
    for stage in ("after_load", "after_forward"):
        assert got[stage]["hwm"] >= got[stage]["rss"] > 0
    assert got["after_forward"]["hwm"] >= got["after_load"]["hwm"] >= got["base"]["rss"]
    row = {"code": "x", "case": "stacked", "source": "hf", "base_rss": got["base"]["rss"],
           "load_s": got["load_s"], **{f"{s}_{f}": got[s][f] for s in ("after_load", "after_forward")
                                       for f in ("hwm", "rss")}}
    report = {"shape": [2, 8], "date": "d", "minutes": 1.0, "command": "c", "rounds": 1,
              "machine": {"cpu_info": machine.cpu_info()}, "versions": {"jax": jax.__version__},
              "rows": [row, {"code": "old", "case": "stacked", "source": "hf",
                             "unavailable": "unexpected keyword argument 'stacked'"}]}
    text = bench_load.markdown(report)
    assert f"| {got['after_load']['hwm'] / 2**20:.0f} |" in text
    assert "| old | stacked | hf | not available in this tree |" in text


def test_capture_benchmark_parts_leave_out_their_names(tmp_path):
    """--parts: `all` without the MLM logits (and head_out), and the logits alone, on the bench's
    own tiny model loaded stacked."""
    bench_capture.write_weights(str(tmp_path), "tiny")
    system = bench_capture.BertjaxSystem(str(tmp_path), "tiny")
    assert "0" not in system.params["encoder"]["layer"]
    B, S, c = 2, 8, bench_capture.MODELS["tiny"]
    system.set_shape(B, S)
    everything = system.captured_bytes("all")
    logits = B * S * c["vocab_size"] * 4
    head_out = c["num_hidden_layers"] * B * S * c["num_attention_heads"] * c["hidden_size"] * 4
    assert system.captured_bytes("mlm") == logits
    assert system.captured_bytes("all_but_mlm") == everything - logits
    assert system.captured_bytes("all_but_mlm_head_out") == everything - logits - head_out


def test_timed_rounds_leave_out_an_entry_whose_worker_died():
    calls = []

    def call(entry):
        calls.append(entry)
        if entry == "b" and calls.count("b") == 2:
            raise RuntimeError("tl worker exited with code -9")
        return 1.0

    failures = []
    got = workers.timed_rounds(["a", "b"], call, 3, lambda e, err: failures.append((e, str(err))))
    assert sorted(got) == ["a"] and got["a"]["n"] == 3
    assert failures == [("b", "tl worker exited with code -9")] and calls.count("b") == 2
    calls.clear()
    with pytest.raises(RuntimeError, match="code -9"):
        workers.timed_rounds(["a", "b"], call, 3)


def test_family_benchmark_options_put_bert_first_and_refuse_unknown_families():
    assert bench_family.parse_families(None) == ["bert"]
    assert bench_family.parse_families(["albert,roberta", "bert", "albert"]) == [
        "bert", "albert", "roberta"]
    assert bench_family.parse_families(["all"]) == list(bench_family.FAMILIES)
    with pytest.raises(SystemExit, match="--family wants some of bert, .* got gpt2"):
        bench_family.parse_families(["roberta,gpt2"])
    albert = bench_family.family_spec("albert", tiny=True)
    assert albert["embedding_size"] < albert["hidden_size"] == bench_family.TINY["hidden_size"]
    assert bench_family.family_spec("albert", tiny=False)["embedding_size"] == 128
    entries = bench_family.entries_for(["bert", "mpnet"], ["/old"])
    assert ("torch", "mpnet", "plain") in entries and ("bertjax1", "bert", "all") in entries


@pytest.mark.slow
def test_family_benchmark_runs_every_family_tiny(tmp_path):
    """`bench_forward.py --family all --tiny` end to end (transformers models built, saved,
    converted, timed in workers; ALBERT's memory probe; the A/B against a --code tree, here this
    tree itself): every family has a ratio, every target a verdict, both files are written."""
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "bench_forward.py"),
                           "--family", "all", "--tiny", "--rounds", "1", "--code", root,
                           "--out", str(tmp_path), "--name", "fam"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "fam.json").read_text())
    assert [r["family"] for r in result["rows"]] == list(bench_family.FAMILIES)
    assert all(r["ratio"] > 0 and r["bertjax_ms"] > 0 for r in result["rows"])
    assert [a["mode"] for a in result["ab"]] == ["plain", "all"]
    mem = result["albert_memory"]
    assert mem["applied_layers"] == 2 and mem["param_layers"] == 1
    assert mem["group_weights"] < mem["per_layer_copy"] and mem["rss_loaded"] > 0
    assert all(a["same_jaxpr"] for a in result["ab"])  # this tree against itself
    assert len(result["targets"]) == len(bench_family.FAMILIES) - 1 + 2 + 2 + 1
    assert "| albert |" in (tmp_path / "fam.md").read_text()


@pytest.mark.slow
def test_modern_benchmark_compares_each_family_with_transformers_tiny():
    """bench_modern's one comparison helper on tiny ModernBERT and DeBERTa-v3 shapes: both systems
    timed in the same rounds, the speedup their medians' ratio, every row in the report."""
    from tests.model import modern_ref

    modern = {"model_type": "modernbert", **modern_ref.MODERNBERT}
    deberta = {"model_type": "deberta-v2", **modern_ref.DEBERTA_V3}
    mb = bench_modern.modernbert_vs_transformers(1, 3, spec=modern, shape=(2, 16))
    db = bench_modern.deberta_vs_transformers(1, spec=deberta, shape=(2, 8))
    assert mb["layers"] == 3 and mb["shape"] == [2, 16] and db["layers"] == 2
    for r, name in ((mb, "transformers_sdpa"), (db, "transformers_eager")):
        assert r["speedup"] == pytest.approx(r[name]["median_s"] / r["bertjax"]["median_s"])
        assert 0 < r["bertjax"]["min_s"] <= r["bertjax"]["median_s"] <= r["bertjax"]["max_s"]
    timing = {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0}
    results = {"machine": "m", "rounds": 1, "load_before": [1.0], "load_after": [2.0],
               "modernbert_8192": {**timing, "peak_rss_gib": 1.5},
               "layer_8192": {"sliding": timing, "global": timing, "sliding_over_global": 1.0},
               "modernbert_8x512": mb, "modernbert_full_8x512": {**mb, "layers": 22},
               "deberta_8x128": db}
    text = bench_modern.markdown(results)
    assert "ModernBERT-base shapes (3 layers) forward (2, 16)" in text
    assert "ModernBERT-base shapes (22 layers) forward (2, 16)" in text
    assert "; sdpa)" in text and "DeBERTa-v3-base forward (2, 8)" in text and "; eager)" in text


def test_modern_benchmark_parts_keep_their_order_and_refuse_unknown_ones():
    assert bench_modern.parse_parts("full, long") == ("long", "full")
    with pytest.raises(ValueError, match="--only takes parts among long, layer, deberta, short, "
                                         "full; got 'fulll'"):
        bench_modern.parse_parts("fulll")
