"""The benchmark scripts' own logic (no timings): the instruction-set cap, the profile's HLO
categories, the GPU check's parity verdicts and the capture benchmark's agreement figures."""

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
import bench_forward  # noqa: E402
import gpu_check  # noqa: E402
import machine  # noqa: E402
import profile_forward  # noqa: E402


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
