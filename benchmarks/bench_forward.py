"""Forward speed of bertjax against transformers' PyTorch BertModel and FlaxBertModel, in one run.

bert-base shapes (hidden 768, 12 layers x 12 heads, intermediate 3072, vocab 30522) with random
weights (torch.manual_seed(0)), fp32 (bf16 with --dtype bfloat16), on CPU. Each system runs in
its own worker process, driven over a pipe one call at a time by this script: the jitted
`bertjax.forward`; transformers' PyTorch `BertModel` (eager and sdpa attention, eval mode,
`torch.no_grad`); and, from benchmarks/.venv-flax4 (made by benchmarks/flax4_env.sh),
transformers 4.x `FlaxBertModel`, jitted, on the same weights (a folder written by
`bertjax.save`, whose flax_model.msgpack FlaxBertModel reads). Separate processes
because PyTorch's OpenMP threads, in one process with JAX, wait on XLA's threads (bert-base at
(1, 128) ran 14x slower). Every round calls every system once, in an order rotated from round to
round, so that machine noise hits all alike; the timings are taken inside the workers.

Modes (rows):
  plain    bertjax capture=()   | PyTorch / Flax returning nothing extra
  outputs  bertjax capture=("attn.probs", "layer.out", "embed.out")
           | output_attentions=True, output_hidden_states=True (PyTorch eager, Flax)
  all      bertjax capture="all" (compared with PyTorch eager returning outputs)

Per row: median and spread (p25-p75) in ms over the rounds, tokens/s, speed relative to PyTorch
eager (its median / this median, > 1 is faster), the share of the machine's fp32 matmul peak (model
matmul FLOPs / time / the best of a big jnp.dot and torch.mm measured at the start of the run), cold
compile time (trace+lower and XLA compile of `jax.jit(...).lower(...).compile()` after
`jax.clear_caches()`), and peak memory: for the XLA systems the compiled program's temp + output
bytes (`memory_analysis`; the weights and inputs not counted), for PyTorch the resident memory its
first call adds in a fresh process (VmHWM reset through /proc/self/clear_refs, after malloc_trim;
in-process RSS deltas are useless here, the allocators keep freed memory for the next call).
Compile time against the number of layers (2, 6, 12, 24) is measured each in a fresh process.

--isa avx2 caps both sides' instruction set as on a CPU without AVX-512 (XLA_FLAGS=
--xla_cpu_max_isa=AVX2 for the XLA workers, ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2
for PyTorch; see benchmarks/machine.py) and checks in fresh processes that each library took it
(the run stops when one did not). Every result file records the CPU model, family and its
AVX-512 / AMX / BF16 flags, and the instruction-set check.

Usage:
  bash benchmarks/flax4_env.sh                        # once, for the FlaxBertModel column
  .venv/bin/python benchmarks/bench_forward.py        # 5 shapes x 9 rounds
  .venv/bin/python benchmarks/bench_forward.py --quick   # (1,128), (8,128) x 3 rounds
  .venv/bin/python benchmarks/bench_forward.py --isa avx2 --shapes 8x128,32x128,8x512
Writes benchmarks/results/forward.json and forward.md (--out DIR to change; forward_avx2.* with
--isa avx2).

--family F (repeatable or comma-separated: roberta, distilbert, electra, albert, mpnet, ... or all)
and --code DIR run the encoder family's benchmark instead (benchmarks/bench_family.py: each
family at base size against its transformers model with sdpa at (8, 128), BERT in the same run,
ALBERT's resident memory, and BERT's forward A/B against the source tree DIR); it writes
forward_family.json and .md.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

import bench_family
from machine import (
    ISAS,
    cpu_info,
    cpu_line,
    hot_kernels,
    isa_env,
    load_average,
    pin_first_cores,
    probe,
    rss_added,
    write_report,
)
from workers import Worker, close_all, marked, parse_or_serve, parse_shapes, reply, serve, timed_rounds

HERE = os.path.dirname(os.path.abspath(__file__))
FLAX_PYTHON = os.path.join(HERE, ".venv-flax4", "bin", "python")
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
SHAPES = ((1, 128), (8, 128), (32, 128), (1, 512), (8, 512))
QUICK_SHAPES = ((1, 128), (8, 128))
CAPTURE = {"plain": (), "outputs": ("attn.probs", "layer.out", "embed.out"), "all": "all"}
# (system, mode) pairs timed in every round; the reference of each mode for the "x eager" column.
ENTRIES = (("bertjax", "plain"), ("bertjax", "outputs"), ("bertjax", "all"),
           ("torch_eager", "plain"), ("torch_eager", "outputs"), ("torch_sdpa", "plain"),
           ("flax", "plain"), ("flax", "outputs"))
KIND = {"bertjax": "bertjax", "torch_eager": "torch", "torch_sdpa": "torch", "flax": "flax"}
REFERENCE = {"plain": ("torch_eager", "plain"), "outputs": ("torch_eager", "outputs"),
             "all": ("torch_eager", "outputs")}
TARGET_SHAPES = ((8, 128), (32, 128), (8, 512))


# ---------------------------------------------------------------- memory and machine helpers


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def matmul_peak(workers: dict, n: int = 2048, repeats: int = 10) -> dict:
    """Best GFLOP/s of an n x n fp32 jnp.dot (jitted, bertjax worker) and torch.mm (PyTorch
    worker), measured alternately."""
    best = {"jax_dot": 0.0, "torch_mm": 0.0}
    for _ in range(repeats):
        for key, kind in (("jax_dot", "bertjax"), ("torch_mm", "torch")):
            best[key] = max(best[key], workers[kind].request("peak", n=n)["gflops"])
    return {"n": n, "gflops": {k: round(v, 1) for k, v in best.items()},
            "peak_gflops": round(max(best.values()), 1)}


# ---------------------------------------------------------------- the systems (in workers)
#
# Each system runs in its own worker process: in one process with JAX, PyTorch's OpenMP threads
# wait on XLA's idle threads (measured here: bert-base at (1, 128) 14x slower), so a shared
# process would measure that, not the models.


class BertjaxSystem:
    """The jitted `bertjax.forward`, called as users call it (per-layer params as loaded)."""

    def __init__(self, hf_dir: str, jax_dir: str, dtype: str = "float32"):
        import jax.numpy as jnp

        import bertjax

        self.config, self.params = bertjax.load(hf_dir, jnp.dtype(dtype))
        bertjax.save(jax_dir, self.config, self.params)  # what the Flax worker reads (fp32 only)
        self.inputs = None

    def info(self) -> dict:
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__}

    def peak(self, n: int) -> float:
        return _timed_matmul("jax", n)

    def matmuls(self, B: int, S: int) -> dict:
        return _timed_model_matmuls("jax", B, S)

    def set_shape(self, B: int, S: int) -> None:
        self.inputs = make_inputs(B, S)

    def compile(self, mode: str) -> dict:
        """Cold compile: caches cleared, then trace+lower and XLA compile timed apart."""
        import jax

        import bertjax
        from bertjax.model.forward import _with_stacked_layers

        ids, mask = self.inputs
        names = bertjax.resolve_capture(CAPTURE[mode], has_pooler=True, has_mlm=False)
        params = _with_stacked_layers(self.params)
        jax.clear_caches()
        t0 = time.perf_counter()
        lowered = lower_forward(params, ids, mask, self.config, names)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        m = compiled.memory_analysis()
        return {"trace_s": t1 - t0, "compile_s": t2 - t1,
                "peak_bytes": int(m.temp_size_in_bytes + m.output_size_in_bytes)}

    def call(self, mode: str) -> float:
        import jax

        import bertjax

        ids, mask = self.inputs
        t0 = time.perf_counter()
        out = bertjax.forward(self.params, ids, self.config, attention_mask=mask,
                              capture=CAPTURE[mode])
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed


class TorchSystem:
    """transformers' PyTorch BertModel (eager and sdpa) in eval mode under torch.no_grad."""

    def __init__(self, hf_dir: str | None, threads: int, attns=("eager", "sdpa"),
                 dtype: str = "float32"):
        import torch
        import transformers

        torch.set_num_threads(threads)
        if hf_dir is None:  # random weights, for the memory probe
            self.models = {a: transformers.BertModel(transformers.BertConfig(
                **BERT_BASE, attn_implementation=a)).eval() for a in attns}
        else:
            if not os.path.exists(os.path.join(hf_dir, "config.json")):
                torch.manual_seed(0)
                transformers.BertModel(transformers.BertConfig(**BERT_BASE)).save_pretrained(hf_dir)
            self.models = {a: transformers.BertModel.from_pretrained(hf_dir, attn_implementation=a)
                           .to(getattr(torch, dtype)).eval() for a in ("eager", "sdpa")}
        self.inputs = None

    def info(self) -> dict:
        import torch
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__}

    def peak(self, n: int) -> float:
        return _timed_matmul("torch", n)

    def matmuls(self, B: int, S: int) -> dict:
        return _timed_model_matmuls("torch", B, S)

    def set_shape(self, B: int, S: int) -> None:
        import torch

        ids, mask = make_inputs(B, S)
        self.inputs = (torch.from_numpy(ids).long(), torch.from_numpy(mask).long())

    def compile(self, mode: str) -> dict:
        return {}

    def call(self, system: str, mode: str) -> float:
        import torch

        ids, mask = self.inputs
        model = self.models[system.removeprefix("torch_")]
        extra = mode == "outputs"
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(ids, attention_mask=mask, output_attentions=extra,
                        output_hidden_states=extra)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed


class FlaxSystem:
    """transformers 4.x FlaxBertModel, jitted (run with benchmarks/.venv-flax4's python)."""

    def __init__(self, jax_dir: str):
        import functools

        import jax
        from transformers import FlaxBertModel

        self.model = FlaxBertModel.from_pretrained(jax_dir)
        self.fns = {m: jax.jit(functools.partial(self._run, outputs=m == "outputs"))
                    for m in ("plain", "outputs")}
        self.inputs = None

    def _run(self, params, ids, mask, outputs: bool):
        return tuple(self.model(ids, attention_mask=mask, params=params, return_dict=False,
                                output_attentions=outputs, output_hidden_states=outputs))

    def info(self) -> dict:
        import flax
        import jax
        import transformers

        return {"transformers": transformers.__version__, "jax": jax.__version__,
                "flax": flax.__version__}

    def set_shape(self, B: int, S: int) -> None:
        self.inputs = make_inputs(B, S)

    def compile(self, mode: str) -> dict:
        import jax

        jax.clear_caches()
        t0 = time.perf_counter()
        lowered = self.fns[mode].trace(self.model.params, *self.inputs).lower()
        t1 = time.perf_counter()
        m = lowered.compile().memory_analysis()
        return {"trace_s": t1 - t0, "compile_s": time.perf_counter() - t1,
                "peak_bytes": int(m.temp_size_in_bytes + m.output_size_in_bytes)}

    def call(self, mode: str) -> float:
        import jax

        t0 = time.perf_counter()
        out = self.fns[mode](self.model.params, *self.inputs)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed


def _matmul_runner(lib: str, a, b):
    """A call of a @ b on two NumPy arrays in `lib`: jnp.matmul jitted (waited for), or
    torch.matmul."""
    if lib == "jax":
        import jax
        import jax.numpy as jnp

        x, y, mm = jnp.asarray(a), jnp.asarray(b), jax.jit(jnp.matmul)
        return lambda: mm(x, y).block_until_ready()
    import torch

    x, y = torch.from_numpy(a), torch.from_numpy(b)
    return lambda: torch.matmul(x, y)


def _timed_matmul(lib: str, n: int) -> float:
    """GFLOP/s of one n x n fp32 matmul (after a warm-up): jitted jnp.matmul or torch.matmul
    (jnp.dot / torch.mm in 2-D)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    run = _matmul_runner(lib, a, a)
    run()
    t0 = time.perf_counter()
    run()
    return 2 * n**3 / (time.perf_counter() - t0) / 1e9


def model_matmuls(B: int, S: int, c: dict = BERT_BASE) -> list[tuple]:
    """The forward's matmuls as (name, lhs shape, rhs shape, times per forward): per layer the
    four [BS, D] x [D, D] projections, the two FFN denses, q.k and probs.v batched over B x N."""
    D, I, L, N = (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"],
                  c["num_attention_heads"])
    H = D // N
    return [("projection", (B * S, D), (D, D), 4 * L), ("ffn_in", (B * S, D), (D, I), L),
            ("ffn_out", (B * S, I), (I, D), L), ("q.k", (B * N, S, H), (B * N, H, S), L),
            ("probs.v", (B * N, S, S), (B * N, S, H), L)]


def model_flops(B: int, S: int, c: dict = BERT_BASE) -> float:
    """Matmul FLOPs of one forward: the layers' matmuls (`model_matmuls`) plus the pooler."""
    D = c["hidden_size"]
    layers = sum(2 * math.prod(lhs) * rhs[-1] * count for _, lhs, rhs, count in model_matmuls(B, S, c))
    return layers + 2 * B * D * D


def _timed_model_matmuls(lib: str, B: int, S: int, repeats: int = 5) -> dict:
    """Seconds of one forward's matmuls run alone, one by one, each the best of `repeats`:
    {name: seconds for all its occurrences, "total": the sum} (what a library's own matmul allows
    the forward, with nothing else around it)."""
    import numpy as np

    out = {}
    for name, lhs, rhs, count in model_matmuls(B, S):
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal(x).astype(np.float32) for x in (lhs, rhs))
        run = _matmul_runner(lib, a, b)
        run()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        out[name] = best * count
    out["total"] = sum(out.values())
    return out


def make_inputs(B: int, S: int, seed: int = 0):
    """The same random ids (all positions real tokens) in every worker."""
    import numpy as np

    ids = np.random.default_rng(seed).integers(0, BERT_BASE["vocab_size"], (B, S)).astype(np.int32)
    return ids, np.ones((B, S), np.int32)


def serve_system(kind: str, args: list[str]) -> None:
    """A worker: builds its system, then answers the driver's requests (see workers.serve)."""
    if kind == "bertjax":
        system = BertjaxSystem(*args)
    elif kind == "torch":
        system = TorchSystem(args[0], int(args[1]), dtype=args[2])
    else:
        system = FlaxSystem(*args)

    def handle(cmd: str, msg: dict) -> dict:
        if cmd == "call" and kind == "torch":
            return {"seconds": system.call(msg["system"], msg["mode"])}
        if cmd == "call":
            return {"seconds": system.call(msg["mode"])}
        if cmd == "shape":
            return {"ok": system.set_shape(msg["B"], msg["S"])}
        if cmd == "compile":
            return system.compile(msg["mode"])
        if cmd == "peak":
            return {"gflops": system.peak(msg["n"])}
        if cmd == "matmuls":
            return system.matmuls(msg["B"], msg["S"])
        return system.info()

    serve(handle)


def torch_memory(attn: str, B: int, S: int, mode: str) -> int | None:
    """Resident memory the first PyTorch call adds, measured in a fresh process."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-memory", attn,
                           str(B), str(S), mode], capture_output=True, text=True, check=True)
    return marked(proc.stdout)["bytes"]


def torch_memory_probe(attn: str, B: str, S: str, mode: str) -> None:
    system = TorchSystem(None, 1, (attn,))
    system.set_shape(int(B), int(S))
    reply({"bytes": rss_added(lambda: system.call("torch_" + attn, mode))})


# ---------------------------------------------------------------- compile time vs layers


def lower_forward(params, ids, mask, config, names: frozenset):
    """The jitted forward's program for (params, ids, mask), traced and lowered (not compiled):
    what `compile` and `compile_one` time. Arrays or ShapeDtypeStructs; stacked layers."""
    from bertjax.model.forward import _forward

    return _forward.trace(params=params, input_ids=ids, token_type_ids=None, attention_mask=mask,
                          position_ids=None, rng=None, head_mask=None, patch={}, edit={},
                          config=config, capture=names).lower()


def compile_one(layers: int, B: int, S: int) -> None:
    """Prints the cold trace+lower and compile seconds of the forward with `layers` layers."""
    import jax
    import jax.numpy as jnp

    import bertjax

    config = bertjax.BertConfig(**{**BERT_BASE, "num_hidden_layers": layers})
    shapes = jax.eval_shape(bertjax.stack_layers, bertjax.param_shapes(config))
    ids = jax.ShapeDtypeStruct((B, S), jnp.int32)
    t0 = time.perf_counter()
    lowered = lower_forward(shapes, ids, ids, config, frozenset())
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    reply({"layers": layers, "trace_s": t1 - t0, "compile_s": t2 - t1})


def compile_sweep(layers=(2, 6, 12, 24), B: int = 8, S: int = 128) -> list[dict]:
    """`compile_one` for each layer count, each in a fresh process."""
    rows = []
    for L in layers:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--compile-one", str(L),
                               str(B), str(S)], capture_output=True, text=True, check=True)
        rows.append(marked(proc.stdout))
        print(f"  compile, {L:2d} layers: trace+lower {rows[-1]['trace_s']:.2f} s, "
              f"XLA {rows[-1]['compile_s']:.2f} s", flush=True)
    return rows


# ---------------------------------------------------------------- the run


def run_shape(workers: dict, B: int, S: int, rounds: int) -> dict:
    """Compile (cold) and memory, warm-up, then every entry timed once per round."""
    entries = [e for e in ENTRIES if KIND[e[0]] in workers]
    for w in workers.values():
        w.request("shape", B=B, S=S)
    info = {}
    for system, mode in entries:  # compiles clear the caches: all of them before any warm-up
        kind = KIND[system]
        info[system, mode] = workers[kind].request("compile", mode=mode)
        if kind == "torch":
            info[system, mode]["peak_bytes"] = torch_memory(system[len("torch_"):], B, S, mode)
    call = lambda e: workers[KIND[e[0]]].request("call", system=e[0], mode=e[1])["seconds"]
    timed = timed_rounds(entries, call, rounds)
    results = {e: {**info[e], **timed[e]} for e in entries}
    # the model's matmuls alone in each library (best of 3 alternated requests, each best of 5)
    alone = {}
    for _ in range(3):
        for lib, kind in (("xla", "bertjax"), ("torch", "torch")):
            got = workers[kind].request("matmuls", B=B, S=S)
            if lib not in alone or got["total"] < alone[lib]["total"]:
                alone[lib] = got
    results["matmuls_alone"] = alone
    return results


def rows_for(B: int, S: int, results: dict, peak: dict) -> list[dict]:
    """One row per (system, mode): ratios against PyTorch eager and sdpa, % of the run's peaks,
    and, for plain forwards, the share of the time its own library's matmuls alone would take."""
    rows = []
    flops = model_flops(B, S)
    alone = results.get("matmuls_alone", {})
    sdpa = results.get(("torch_sdpa", "plain"))
    for key, r in results.items():
        if key == "matmuls_alone":
            continue
        system, mode = key
        ref = results.get(REFERENCE[mode])
        lib = {"bertjax": "xla", "flax": "xla"}.get(system, "torch")
        row = {"B": B, "S": S, "mode": mode, "system": system, **r,
               "tokens_per_s": B * S / r["median_s"],
               "x_eager": ref["median_s"] / r["median_s"] if ref else None,
               "x_sdpa": sdpa["median_s"] / r["median_s"] if sdpa and mode == "plain" else None,
               "pct_peak": 100 * flops / r["median_s"] / 1e9 / peak["peak_gflops"],
               "pct_xla_peak": 100 * flops / r["median_s"] / 1e9 / peak["gflops"]["jax_dot"]}
        if lib in alone and mode == "plain":
            row["matmuls_alone_s"] = alone[lib]["total"]
            row["pct_own_matmuls"] = 100 * alone[lib]["total"] / r["median_s"]
        rows.append(row)
    plain = results.get(("bertjax", "plain"))
    for row in rows:
        if row["system"] == "bertjax" and plain:
            row["time_over_plain"] = row["median_s"] / plain["median_s"]
        flax = results.get(("flax", row["mode"]))
        if row["system"] == "bertjax" and flax:
            row["x_flax"] = flax["median_s"] / row["median_s"]
    return rows


def check_targets(rows: list[dict], sweep: list[dict]) -> list[dict]:
    """Each target of the issue with its measured value (None where not measured)."""
    get = {(r["B"], r["S"], r["system"], r["mode"]): r for r in rows}
    checks = []
    for B, S in TARGET_SHAPES:
        r = get.get((B, S, "bertjax", "plain"))
        if r:
            checks.append({"target": f"capture=() >= 1.0x PyTorch eager at ({B}, {S})",
                           "value": r["x_eager"], "ok": r["x_eager"] >= 1.0})
            if r.get("x_sdpa") is not None:
                checks.append({"target": f"capture=() >= 1.0x PyTorch sdpa at ({B}, {S})",
                               "value": r["x_sdpa"], "ok": r["x_sdpa"] >= 1.0})
            if S == 128:
                checks.append({"target": f"capture=() >= 80 % of the run's XLA matmul peak "
                                         f"(2048^3 jnp.dot) at ({B}, {S})",
                               "value": r["pct_xla_peak"], "ok": r["pct_xla_peak"] >= 80})
            if r.get("pct_own_matmuls") is not None:
                checks.append({"target": f"capture=() >= 80 % of XLA's speed on the model's own "
                                         f"matmuls, each run alone, at ({B}, {S})",
                               "value": r["pct_own_matmuls"], "ok": r["pct_own_matmuls"] >= 80})
            if r.get("x_flax") is not None:
                checks.append({"target": f"capture=() >= 1.25x FlaxBertModel at ({B}, {S})",
                               "value": r["x_flax"], "ok": r["x_flax"] >= 1.25})
    for r in rows:
        if r["system"] == "bertjax" and r["mode"] == "outputs":
            checks.append({"target": f"attentions+hidden >= 1.0x PyTorch eager with outputs at "
                                     f"({r['B']}, {r['S']})", "value": r["x_eager"],
                           "ok": r["x_eager"] >= 1.0})
        if r["system"] == "bertjax" and r["mode"] == "all":
            checks.append({"target": f"capture='all' <= 1.5x the time of capture=() at "
                                     f"({r['B']}, {r['S']})", "value": r["time_over_plain"],
                           "ok": r["time_over_plain"] <= 1.5})
    if sweep:
        totals = {s["layers"]: s["trace_s"] + s["compile_s"] for s in sweep}
        if 12 in totals:
            checks.append({"target": "cold compile of bert-base (12 layers, (8, 128)) <= 3 s",
                           "value": totals[12], "ok": totals[12] <= 3.0})
        spread = max(totals.values()) / min(totals.values())
        checks.append({"target": f"compile independent of layers ({min(totals)}..{max(totals)}): "
                                 f"max/min <= 1.5", "value": spread, "ok": spread <= 1.5})
    return checks


def versions(infos: dict) -> dict:
    out = {"python": platform.python_version(), **infos["bertjax"], **infos["torch"]}
    if "flax" in infos:
        f = infos["flax"]
        out["flax column"] = f"transformers {f['transformers']}, jax {f['jax']}, flax {f['flax']}"
    return out


def _ms(s):
    return f"{s * 1e3:.1f}" if s is not None else ""


def _mb(b):
    return f"{b / 2**20:.0f}" if b is not None else ""


def markdown(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    lines = [
        f"# Forward benchmark: bertjax vs PyTorch BertModel vs FlaxBertModel (CPU, {result['dtype']})", "",
        f"bert-base shapes (hidden 768, 12 layers x 12 heads, intermediate 3072, vocab 30522), "
        f"random weights, all positions real tokens. Run of {result['date']} "
        f"({result['wall_s'] / 60:.1f} min, `{result['command']}`).", "",
        f"- CPU: {cpu_line(m['cpu_info'])}; threads: {m['threads']} "
        f"(torch.set_num_threads; XLA's pool = the cores of the affinity mask); GLIBC_TUNABLES="
        f"{m.get('glibc_tunables') or '(unset)'}",
        f"- instruction set: {m['isa']}; checked in fresh processes: " + isa_summary(m["isa_check"]),
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- fp32 matmul peak ({result['peak']['n']}^3, best of 10, start of run): "
        f"jnp.dot {result['peak']['gflops']['jax_dot']} GFLOP/s, torch.mm "
        f"{result['peak']['gflops']['torch_mm']} GFLOP/s; % peak uses "
        f"{result['peak']['peak_gflops']}",
        f"- {result['rounds']} rounds per shape, every system once per round (order rotated); "
        f"load average at start {result['load_start']}, at end {result['load_end']}",
        "- median and p25-p75 over rounds; x eager = PyTorch eager's median / this median "
        "(> 1 is faster; `outputs` and `all` are compared with eager returning attentions and "
        "hidden states); compile = trace+lower / XLA compile after jax.clear_caches(); "
        "peak MiB = the compiled program's temp + output bytes (XLA memory_analysis) for bertjax "
        "and flax, the resident memory the first call adds in a fresh process for PyTorch", "",
        "- x sdpa = PyTorch sdpa's median / this median (plain forwards); % XLA peak = model "
        "FLOPs / time / jnp.dot's 2048^3 GFLOP/s; own matmuls = the time the model's matmuls "
        "take run alone, one by one, in the system's own library (XLA or torch), as a % of this "
        "forward's time: how close the forward is to what its library's matmuls allow", "",
        "| B x S | mode | system | median ms | p25-p75 ms | tokens/s | x eager | x sdpa | % peak "
        "| % XLA peak | own matmuls | compile s | peak MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        compile_s = (f"{r['trace_s']:.2f} + {r['compile_s']:.2f}" if "trace_s" in r else "")
        x = f"{r['x_eager']:.2f}" if r["x_eager"] is not None else ""
        xs = f"{r['x_sdpa']:.2f}" if r.get("x_sdpa") is not None else ""
        own = f"{r['pct_own_matmuls']:.0f} %" if r.get("pct_own_matmuls") is not None else ""
        lines.append(f"| {r['B']} x {r['S']} | {r['mode']} | {r['system']} | {_ms(r['median_s'])} "
                     f"| {_ms(r['p25_s'])}-{_ms(r['p75_s'])} | {r['tokens_per_s']:.0f} | {x} "
                     f"| {xs} | {r['pct_peak']:.0f} | {r.get('pct_xla_peak', 0):.0f} | {own} "
                     f"| {compile_s} | {_mb(r.get('peak_bytes'))} |")
    if result.get("matmuls_alone"):
        lines += ["", "The model's matmuls run alone, one by one (best of 5, best of 3 alternated "
                  "requests), ms per forward; torch / XLA > 1 means XLA's matmuls are faster:", "",
                  "| B x S | " + " | ".join(n for n, *_ in model_matmuls(1, 1)) + " | XLA total "
                  "| torch total | XLA speed / torch speed |",
                  "|---|" + "---:|" * (len(model_matmuls(1, 1)) + 3)]
        for shape, alone in result["matmuls_alone"].items():
            x, t = alone["xla"], alone["torch"]
            per = " | ".join(f"{x[n] * 1e3:.0f} / {t[n] * 1e3:.0f}" for n, *_ in model_matmuls(1, 1))
            lines.append(f"| {shape.replace('x', ' x ')} | {per} | {x['total'] * 1e3:.0f} "
                         f"| {t['total'] * 1e3:.0f} | {t['total'] / x['total']:.2f} |")
    if result["compile_sweep"]:
        lines += ["", "Cold compile of `bertjax.forward` at (8, 128), capture=(), each in a fresh "
                  "process:", "", "| layers | trace+lower s | XLA compile s | total s |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {s['layers']} | {s['trace_s']:.2f} | {s['compile_s']:.2f} "
                  f"| {s['trace_s'] + s['compile_s']:.2f} |" for s in result["compile_sweep"]]
    lines += ["", "Targets (ratios from this run):", ""]
    lines += [f"- {'PASS' if c['ok'] else 'MISS'}: {c['target']} (measured {c['value']:.2f})"
              for c in result["targets"]]
    return "\n".join(lines) + "\n"


def isa_summary(check: dict) -> str:
    """The instruction-set check of the run in words."""
    t, j = check.get("torch", {}), check.get("jax", {})
    kernels = check.get("kernels") or {}
    hot = "; ".join(f"{lib}'s hottest matmul symbol: {rows[0]}" for lib, rows in kernels.items()
                    if rows)
    return (f"torch.backends.cpu.get_cpu_capability() = {t.get('torch_cpu_capability')} "
            f"(ONEDNN_MAX_CPU_ISA={t.get('ONEDNN_MAX_CPU_ISA') or '(unset)'}, "
            f"MKL_ENABLE_INSTRUCTIONS={t.get('MKL_ENABLE_INSTRUCTIONS') or '(unset)'}); XLA "
            f"xla_cpu_max_isa = {j.get('xla_cpu_max_isa')}, AVX-512 (zmm) instructions in the "
            f"compiled kernels of a test program: {j.get('zmm_instructions')}"
            + (f"; sampled with perf: {hot}" if hot else "; perf not available to name the "
               "matmul kernels"))


def check_isa(isa: str) -> dict:
    """Probes torch and jax in fresh processes with this environment (the cap already set in
    os.environ), and names the matmul kernels each runs (`hot_kernels`, where perf works); stops
    the run when a capped library did not take the cap. XLA's YNNPACK dots are exempt: they
    ignore the cap (see benchmarks/machine.py), which the report says."""
    check = {"torch": probe(sys.executable, "torch", {}), "jax": probe(sys.executable, "jax", {}),
             "kernels": {lib: hot_kernels(sys.executable, lib, {}) for lib in ("torch", "jax")}}
    if isa == "avx2":
        bad = []
        if check["torch"].get("torch_cpu_capability") not in ("AVX2", "DEFAULT"):
            bad.append(f"torch reports {check['torch']}")
        if any("avx512" in row for row in check["kernels"]["torch"] or []):
            bad.append(f"torch's matmuls still run {check['kernels']['torch']}")
        if check["jax"].get("xla_cpu_max_isa") != "AVX2" or check["jax"].get("zmm_instructions"):
            bad.append(f"XLA reports {check['jax']}")
        if bad:
            raise SystemExit("--isa avx2 did not take effect: " + "; ".join(bad))
    return check


def start_workers(work: str, threads: int, flax: bool, dtype: str) -> dict:
    """The PyTorch worker (it writes the random weights), the bertjax worker (it loads them and
    writes the folder the Flax worker reads), then the Flax worker when its venv exists (float32
    only)."""
    hf, jx = os.path.join(work, "hf"), os.path.join(work, "jax")
    workers = {"torch": Worker("torch", __file__, hf, str(threads), dtype)}
    workers["bertjax"] = Worker("bertjax", __file__, hf, jx, dtype)
    if flax and not os.path.exists(FLAX_PYTHON):
        print(f"FlaxBertModel column left out: no {FLAX_PYTHON} (bash benchmarks/flax4_env.sh)")
    elif flax:
        try:
            workers["flax"] = Worker("flax", __file__, jx, python=FLAX_PYTHON)
        except RuntimeError as e:
            print(f"FlaxBertModel column left out: {e}", flush=True)
    return workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(1,128), (8,128), 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds per shape (default 9, quick 3)")
    parser.add_argument("--shapes", type=parse_shapes, help="e.g. 8x128,32x128")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="cores for every worker (affinity mask) and torch threads")
    parser.add_argument("--no-flax", action="store_true", help="leave the FlaxBertModel column out")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="weights and activations of bertjax and PyTorch (bfloat16: no Flax "
                             "column; %% of peak stays relative to the fp32 matmul peak)")
    parser.add_argument("--no-sweep", action="store_true", help="skip compile time vs layers")
    parser.add_argument("--hugepages", action="store_true",
                        help="run every worker with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 "
                             "(transparent huge pages for large allocations: fewer page faults)")
    parser.add_argument("--isa", choices=ISAS, default="native",
                        help="avx2: cap XLA's and PyTorch's instruction set at AVX2 (as on a CPU "
                             "without AVX-512) in every worker, and check that each took it")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", help="output file stem (default forward, forward_avx2 with "
                                       "--isa avx2)")
    bench_family.add_options(parser)
    args = parse_or_serve(parser, serve_system, compile_one=(3, compile_one, int),
                          torch_memory=(4, torch_memory_probe))
    if args is not None and (args.family or args.code):
        bench_family.run(args)  # the encoder family / BERT A/B (bench_family.py)
    elif args is not None:
        run(args)


def run(args) -> None:
    start = time.perf_counter()
    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    rounds = args.rounds or (3 if args.quick else 9)
    pin_first_cores(args.threads)
    if args.hugepages:  # read by glibc at the start of each worker
        os.environ["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    os.environ.update(isa_env(args.isa))  # read by XLA / ATen / oneDNN at the start of each worker
    isa_checked = check_isa(args.isa)
    print(f"instruction set {args.isa}: {isa_summary(isa_checked)}", flush=True)
    name = args.name or ("forward" if args.isa == "native" else f"forward_{args.isa}")
    load_start = load_average()
    sweep = [] if args.no_sweep else compile_sweep()
    work = tempfile.mkdtemp(prefix="bench_forward-")
    workers = {}
    try:
        workers = start_workers(work, args.threads, not args.no_flax and args.dtype == "float32",
                                args.dtype)
        infos = {kind: w.request("info") for kind, w in workers.items()}
        peak = matmul_peak(workers)
        print(f"fp32 matmul peak: {peak['gflops']} GFLOP/s", flush=True)
        rows, alone_by_shape = [], {}
        for B, S in shapes:
            results = run_shape(workers, B, S, rounds)
            alone_by_shape[f"{B}x{S}"] = results["matmuls_alone"]
            new = rows_for(B, S, results, peak)
            rows += new
            alone = results["matmuls_alone"]
            print(f"({B:2d}, {S:3d}) the model's matmuls alone: XLA "
                  f"{alone['xla']['total'] * 1e3:.1f} ms, torch {alone['torch']['total'] * 1e3:.1f} ms",
                  flush=True)
            for r in new:
                x = f"x{r['x_eager']:.2f} eager" if r["x_eager"] else ""
                print(f"({B:2d}, {S:3d}) {r['mode']:7s} {r['system']:11s} median "
                      f"{r['median_s'] * 1e3:9.1f} ms  [{r['p25_s'] * 1e3:.1f}-"
                      f"{r['p75_s'] * 1e3:.1f}]  {x}", flush=True)
    finally:
        close_all(workers, work)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["benchmarks/bench_forward.py"] + sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
                    "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), "cpu_info": cpu_info(),
                    "isa": args.isa, "isa_env": isa_env(args.isa), "isa_check": isa_checked},
        "versions": versions(infos), "bert": BERT_BASE, "dtype": args.dtype, "rounds": rounds,
        "peak": peak, "load_start": load_start, "load_end": load_average(),
        "matmuls_alone": alone_by_shape,
        "compile_sweep": sweep, "rows": rows, "wall_s": time.perf_counter() - start,
    }
    result["targets"] = check_targets(rows, sweep)
    write_report(os.path.join(args.out, name), result, markdown)


if __name__ == "__main__":
    main()
