"""Where bertjax's forward spends its time on CPU: matmul, GELU's erf, LayerNorm, softmax, copies.

Runs `bertjax.forward(..., capture=())` (bert-base shapes, random weights from
`bertjax.init_params`, stacked once up front, fp32) at one shape (default (32, 128)) under
`jax.profiler.trace`, and reads the trace back with `jax.profiler.ProfileData`: XLA's CPU runtime
records one event per executed thunk, named by its HLO instruction (`hlo_op`). Each instruction is
put in a category from the optimized HLO of the same program (XLA's own dump, --xla_dump_to, read
after the compile):

  matmul     fusions / ops containing a dot (including epilogues XLA fused into them, e.g. a bias
             add or softmax's exp fused behind q.k: counted as matmul, the ops are listed)
  gelu_erf   fusions containing erf / erfc (the intermediate activation)
  softmax    exp, or reductions / elementwise work on attention-shaped [B, H, S, S] arrays
  layernorm  rsqrt, and reductions / normalising over the hidden axis (arrays with a token-stats
             [B, S] operand)
  copies     data movement: copy, transpose, dynamic-slice (the scan's per-layer slice of the
             stacked weights), dynamic-update-slice, concatenate, slice, broadcast, bitcast, and
             transposes with a bias add fused into them (the head split / merge)
  other      the rest (embedding gathers, residual adds not fused elsewhere, ...)

The shares are of the summed thunk time (the thunk executor may overlap independent thunks, so
the sum can differ from the wall time, which is reported beside it). Also reported:

- the run's XLA matmul peak: plain jitted matmuls of the model's own shapes (Q, K, V and output
  projections, the two FFN denses, q.k and probs.v), timed alone; the forward's matmul FLOPs over
  its wall time as a % of that peak (issue 17's "% of XLA matmul peak"), and the same for the
  matmul thunks' own time (how well the model's matmuls run where they sit);
- the big-square peak (a 2048^3 jnp.dot, as benchmarks/bench_forward.py measures it);
- two measured proposals: one fused QKV matmul [B*S, D] x [D, 3D] against three [D, D] ones, and
  the time of the per-layer weight slices (dynamic-slice thunks in the scan body) per forward.

--isa avx2 caps XLA at AVX2 (XLA_FLAGS=--xla_cpu_max_isa=AVX2, see benchmarks/machine.py);
--xla-flags "..." adds XLA options to try (recorded in the result; --name to keep the runs apart).

Usage: .venv/bin/python benchmarks/profile_forward.py                 # bert-base, (32, 128)
       .venv/bin/python benchmarks/profile_forward.py --model tiny --shape 2x16 --calls 2  # smoke
Writes benchmarks/results/profile.json and profile.md (--out DIR, --name STEM).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

from machine import ISAS, cpu_info, cpu_line, isa_env, load_average, pin_first_cores, write_report

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
    "tiny": dict(vocab_size=1000, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=80, max_position_embeddings=64, type_vocab_size=2),
}
CATEGORIES = ("matmul", "gelu_erf", "softmax", "layernorm", "copies", "other")
MOVES = {"copy", "transpose", "dynamic-slice", "dynamic-update-slice", "concatenate", "slice",
         "broadcast", "bitcast", "reshape", "parameter", "constant", "tuple",
         "get-tuple-element", "iota", "convert"}
LIGHT = {"add", "multiply", "subtract"}  # what XLA fuses into a transpose without changing its cost
CONTAINERS = {"while", "conditional", "call"}  # their bodies' thunks are counted, not them


# ---------------------------------------------------------------- the optimized HLO


_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"(?:calls|to_apply|body)=%?([\w.\-]+)")
_SHAPE = re.compile(r"([a-z]\w*)\[([\d,]*)\]")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1,
          "f64": 8, "s64": 8}


def parse_hlo(text: str) -> tuple[dict, dict]:
    """(computations: name -> [instruction], instructions: name -> instruction), an instruction
    being {"name", "op", "shape", "calls", "computation", "operand_shapes"}."""
    comps, instrs, current = {}, {}, None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m and not line[:1].isspace():  # headers start the line, instructions are indented
            current = m.group(1)
            comps[current] = []
            continue
        m = _INSTR.match(line)
        if m and current is not None:
            name, shape, op, rest = m.groups()
            args = rest.split("),")[0]
            ins = {"name": name, "op": op, "shape": shape, "computation": current,
                   "calls": _CALLS.findall(rest), "operand_shapes": _SHAPE.findall(args)}
            comps[current].append(ins)
            instrs[name] = ins
    return comps, instrs


def shape_dims(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _SHAPE.findall(shape)]


def nbytes(shape: str) -> int:
    total = 0
    for t, dims in shape_dims(shape):
        n = 1
        for d in dims:
            n *= d
        total += n * _BYTES.get(t, 4)
    return total


def ops_of(ins: dict, comps: dict, depth: int = 0) -> list[dict]:
    """The instructions an instruction runs: a fusion's fused instructions (nested fusions
    opened), anything else itself (a reduce is a reduce, not its reducer's add)."""
    if ins["op"] != "fusion" or depth > 3:
        return [ins]
    out = []
    for c in ins["calls"]:
        for sub in comps.get(c, []):
            out += ops_of(sub, comps, depth + 1)
    return out or [ins]


def categorize(ins: dict, comps: dict, B: int, S: int, H: int) -> str:
    """One of CATEGORIES for an executed instruction (see the module docstring)."""
    ops = ops_of(ins, comps)
    kinds = {o["op"] for o in ops}
    if kinds & {"dot", "convolution"} or (ins["op"] == "custom-call"
                                          and "matmul" in str(ins).lower()):
        return "matmul"
    if kinds & {"erf", "erfc"} or any(o["name"].startswith("erf") for o in ops):
        return "gelu_erf"
    if kinds & {"gather", "scatter"}:
        return "other"  # the embedding lookups
    attention = (B, H, S, S)
    if "exponential" in kinds or any(d == attention for o in ops for _, d in shape_dims(o["shape"])):
        return "softmax"
    if "rsqrt" in kinds or any(tuple(int(x) for x in dims.split(",") if x) == (B, S)
                               for o in ops for _, dims in o["operand_shapes"]) \
            or any(d == (B, S) for o in ops for _, d in shape_dims(o["shape"])):
        return "layernorm"
    if kinds <= MOVES or (kinds & {"copy", "transpose"} and kinds <= MOVES | LIGHT):
        return "copies"  # data movement, or a transpose with a bias add fused into it
    return "other"


# ---------------------------------------------------------------- measuring


def timed(fn, *args, repeats: int = 5) -> float:
    """Median seconds of fn(*args) (jitted, warmed up), blocking on the result."""
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_shapes(c: dict, B: int, S: int) -> list[dict]:
    """The forward's matmuls per layer: (name, lhs, rhs, count, flops each, kind)."""
    D, I, H = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    Dh, T = D // H, B * S
    return [
        {"name": "q/k/v/out projections [BS,D]x[D,D]", "lhs": (T, D), "rhs": (D, D), "count": 4},
        {"name": "FFN in [BS,D]x[D,I]", "lhs": (T, D), "rhs": (D, I), "count": 1},
        {"name": "FFN out [BS,I]x[I,D]", "lhs": (T, I), "rhs": (I, D), "count": 1},
        {"name": "q.k [B,H,S,Dh]x[B,H,Dh,S]", "lhs": (B, H, S, Dh), "rhs": (B, H, Dh, S),
         "count": 1},
        {"name": "probs.v [B,H,S,S]x[B,H,S,Dh]", "lhs": (B, H, S, S), "rhs": (B, H, S, Dh),
         "count": 1},
    ]


def flops_of(m: dict) -> float:
    *batch, n, k = m["lhs"]
    out = m["rhs"][-1]
    b = 1
    for x in batch:
        b *= x
    return 2.0 * b * n * k * out


def matmul_peak(c: dict, B: int, S: int, repeats: int) -> dict:
    """Plain jitted matmuls of the model's shapes, timed alone, and the FLOP-weighted peak."""
    import jax
    import jax.numpy as jnp

    rows, total_f, total_t = [], 0.0, 0.0
    key = jax.random.key(0)
    for m in matmul_shapes(c, B, S):
        a = jax.random.normal(key, m["lhs"], jnp.float32)
        b = jax.random.normal(key, m["rhs"], jnp.float32)
        t = timed(jax.jit(jnp.matmul), a, b, repeats=repeats)
        f = flops_of(m)
        rows.append({**m, "seconds": t, "gflops": f / t / 1e9})
        total_f += f * m["count"]
        total_t += t * m["count"]
    n = 2048
    x = jax.random.normal(key, (n, n), jnp.float32)
    square = 2 * n**3 / timed(jax.jit(jnp.dot), x, x, repeats=repeats) / 1e9
    return {"shapes": rows, "per_layer_flops": total_f, "per_layer_matmul_s": total_t,
            "peak_gflops": total_f / total_t / 1e9, "square_2048_gflops": square}


def fused_qkv(c: dict, B: int, S: int, repeats: int) -> dict:
    """Three [BS,D]x[D,D] matmuls (one jit) against one [BS,D]x[D,3D] on the concatenated
    kernel (concatenated once, outside)."""
    import jax
    import jax.numpy as jnp

    D, key = c["hidden_size"], jax.random.key(1)
    x = jax.random.normal(key, (B * S, D), jnp.float32)
    w = [jax.random.normal(jax.random.fold_in(key, i), (D, D), jnp.float32) for i in range(3)]
    wqkv = jnp.concatenate(w, axis=1)
    three = jax.jit(lambda x, a, b, c: (x @ a, x @ b, x @ c))
    one = jax.jit(lambda x, w: jnp.split(x @ w, 3, axis=-1))
    t3, t1 = timed(three, x, *w, repeats=repeats), timed(one, x, wqkv, repeats=repeats)
    return {"three_separate_s": t3, "one_fused_s": t1, "speedup": t3 / t1}


def profile(config, params, ids, mask, calls: int, trace_dir: str) -> tuple[list, list]:
    """Wall seconds of `calls` forwards, and the leaf thunk events of the traced calls:
    [(module, hlo_op, duration_ns)]."""
    import jax

    import bertjax

    def run():
        return bertjax.forward(params, ids, config, attention_mask=mask).last_hidden_state

    jax.block_until_ready(run())
    jax.block_until_ready(run())
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        walls.append(time.perf_counter() - t0)
    with jax.profiler.trace(trace_dir):
        for _ in range(calls):
            jax.block_until_ready(run())
    path = max(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
               key=os.path.getmtime)
    data = jax.profiler.ProfileData.from_file(path)
    events = []
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if "hlo_op" in stats:
                    events.append((stats.get("hlo_module", ""), stats["hlo_op"], ev.duration_ns))
    return walls, events


def forward_hlo(dump: str, module: str) -> str:
    """The optimized HLO text XLA dumped for `module` (the largest, if several)."""
    files = glob.glob(os.path.join(dump, f"*{module}*after_optimizations.txt"))
    if not files:
        raise RuntimeError(f"no optimized HLO of {module} in the dump {dump}")
    with open(max(files, key=os.path.getsize)) as f:
        return f.read()


def breakdown(events: list, text: str, module: str, c: dict, B: int, S: int,
              calls: int) -> dict:
    comps, instrs = parse_hlo(text)
    H = c["num_attention_heads"]
    per_op = collections.defaultdict(float)
    for mod, op, ns in events:
        if mod == module:
            per_op[op] += ns / calls
    cats = collections.defaultdict(float)
    top, unknown = [], 0.0
    for op, ns in per_op.items():
        ins = instrs.get(op)
        if ins is None:
            unknown += ns
            continue
        if ins["op"] in CONTAINERS:
            continue
        cat = categorize(ins, comps, B, S, H)
        cats[cat] += ns
        kinds = sorted({o["op"] for o in ops_of(ins, comps)} - {"parameter", "constant"})
        top.append({"op": op, "category": cat, "ms": ns / 1e6, "out_bytes": nbytes(ins["shape"]),
                    "ops": kinds[:12], "in_loop": ins["computation"] != _entry_name(text)})
    total = sum(cats.values())
    top.sort(key=lambda r: -r["ms"])
    return {"per_category_ms": {k: cats.get(k, 0.0) / 1e6 for k in CATEGORIES},
            "per_category_pct": {k: 100 * cats.get(k, 0.0) / total if total else 0.0
                                 for k in CATEGORIES},
            "thunk_sum_ms": total / 1e6, "unmatched_ms": unknown / 1e6, "ops": top,
            "top_ops": top[:25], **derived(top, c)}


def derived(ops: list[dict], c: dict) -> dict:
    """From the per-thunk rows: the per-layer weight slices (dynamic-slice thunks in the loop
    whose output is the size of one layer's kernel or bias: the scan's slice of the stacked
    weights) and the matmul time split by what XLA fused into the matmul (LayerNorm: rsqrt;
    softmax: exp)."""
    D, I = c["hidden_size"], c["intermediate_size"]
    sizes = {4 * D * D, 4 * D * I, 4 * D, 4 * I}
    slices = [r for r in ops if r["in_loop"] and "dynamic-slice" in r["ops"]
              and r["category"] == "copies" and r["out_bytes"] in sizes]
    split = collections.defaultdict(float)
    for r in ops:
        if r["category"] == "matmul":
            key = ("matmul + LayerNorm" if "rsqrt" in r["ops"] else
                   "matmul + softmax" if "exponential" in r["ops"] else "matmul")
            split[key] += r["ms"]
    return {"weight_slice_ms": sum(r["ms"] for r in slices),
            "weight_slice_bytes_per_layer": sum(r["out_bytes"] for r in slices),
            "matmul_split_ms": dict(split)}


def _entry_name(text: str) -> str:
    m = re.search(r"^ENTRY\s+%?([\w.\-]+)", text, re.M)
    return m.group(1) if m else ""


# ---------------------------------------------------------------- report


def markdown(r: dict) -> str:
    c, b, p = r["config"], r["breakdown"], r["peak"]
    lines = [
        f"# Where bertjax's forward spends its time (CPU, fp32, {r['B']} x {r['S']}, "
        f"capture=())", "",
        f"Model `{r['model']}` (hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, "
        f"intermediate {c['intermediate_size']}), random weights stacked once. Run of {r['date']} "
        f"(`{r['command']}`).", "",
        f"- CPU: {cpu_line(r['machine']['cpu_info'])}; instruction set: {r['isa']} "
        f"(XLA_FLAGS={r['xla_flags'] or '(unset)'}); load average at start {r['load_start']}, "
        f"at end {r['load_end']}" + ("; **the machine was shared with other jobs: absolute "
                                     "times are noisy, the shares less so**" if r["shared"] else ""),
        f"- versions: jax {r['versions']['jax']}",
        f"- forward wall time: median {r['wall_ms_median']:.1f} ms over {r['calls']} calls "
        f"(outside the profiler); thunk time summed from the trace: {b['thunk_sum_ms']:.1f} ms "
        f"per forward (XLA's thunk executor runs independent thunks at the same time, e.g. the "
        f"Q, K and V matmuls, so the sum can exceed the wall time and a thunk's time includes "
        f"sharing the cores)", "",
        "| category | ms per forward | % of thunk time |", "|---|---:|---:|"]
    lines += [f"| {k} | {b['per_category_ms'][k]:.1f} | {b['per_category_pct'][k]:.1f} |"
              for k in CATEGORIES]
    total = b["thunk_sum_ms"] or 1.0
    lines += ["", "The matmul thunks by what XLA fused into them (LayerNorm and softmax mostly run "
              "inside matmul fusions, so their own rows above stay small):", "",
              "| matmul thunks | ms per forward | % of thunk time |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {100 * v / total:.1f} |"
              for k, v in sorted(b["matmul_split_ms"].items())]
    lines += [
        "", "Matmul efficiency:", "",
        f"- the run's XLA matmul peak (plain jitted matmuls of the model's shapes, FLOP-weighted): "
        f"{p['peak_gflops']:.1f} GFLOP/s; big square 2048^3 jnp.dot: {p['square_2048_gflops']:.1f}"
        f" GFLOP/s",
        f"- forward: {r['model_gflops']:.1f} GFLOP of matmuls in {r['wall_ms_median']:.1f} ms = "
        f"{r['forward_gflops']:.1f} GFLOP/s = **{r['pct_of_peak']:.0f} % of the run's matmul "
        f"peak**",
        f"- the forward's matmul thunks alone: {b['per_category_ms']['matmul']:.1f} ms = "
        f"{r['matmul_thunk_gflops']:.1f} GFLOP/s ({r['matmul_thunk_pct_of_peak']:.0f} % of the "
        f"peak; fused epilogues included)", "",
        "| matmul (per layer) | count | GFLOP/s alone | ms alone |", "|---|---:|---:|---:|"]
    lines += [f"| {m['name']} | {m['count']} | {m['gflops']:.1f} | {m['seconds'] * 1e3:.2f} |"
              for m in p["shapes"]]
    q = r["fused_qkv"]
    lines += [
        "", "Measured proposals:", "",
        f"- fused QKV: three [BS,D]x[D,D] matmuls {q['three_separate_s'] * 1e3:.2f} ms, one "
        f"[BS,D]x[D,3D] on a kernel concatenated once {q['one_fused_s'] * 1e3:.2f} ms "
        f"({q['speedup']:.2f}x) per layer",
        f"- per-layer weight slices (dynamic-slice thunks in the scan body): "
        f"{b['weight_slice_ms']:.2f} ms per forward, {b['weight_slice_bytes_per_layer'] / 2**20:.1f}"
        f" MiB written per layer", ""]
    if b.get("derived_from"):
        lines += [f"(matmul split and weight slices derived from {b['derived_from']})", ""]
    lines += [
        "Slowest thunks (ms per forward, all layers summed; `in_loop` = inside the scan body):",
        "",
        "| op | category | ms | out MiB | in loop | ops |", "|---|---|---:|---:|---|---|"]
    lines += [f"| {t['op']} | {t['category']} | {t['ms']:.2f} | {t['out_bytes'] / 2**20:.1f} | "
              f"{t['in_loop']} | {', '.join(t['ops'])} |" for t in b["top_ops"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="base")
    parser.add_argument("--shape", default="32x128", help="B x S, e.g. 32x128")
    parser.add_argument("--calls", type=int, default=5, help="forwards timed and traced")
    parser.add_argument("--isa", choices=ISAS, default="native")
    parser.add_argument("--xla-flags", default="",
                        help="extra XLA_FLAGS to try (e.g. an XLA CPU option), recorded in the result")
    parser.add_argument("--threads", type=int, help="cores (affinity mask) for XLA's pool")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", help="output stem (default profile, profile_avx2 with --isa)")
    args = parser.parse_args()
    try:
        B, S = (int(x) for x in args.shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape wants e.g. 32x128, got {args.shape!r}") from None
    pin_first_cores(args.threads)
    work = tempfile.mkdtemp(prefix="profile_forward-")
    dump = os.path.join(work, "dump")
    # Before jax is imported: the instruction-set cap, and XLA's dump of the forward's HLO.
    os.environ.update(isa_env(args.isa))
    xla_flags = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    os.environ["XLA_FLAGS"] = (f"{xla_flags} --xla_dump_to={dump} "
                               "--xla_dump_hlo_module_re=.*forward.*").strip()
    try:
        run(args, B, S, work, dump, xla_flags)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, B: int, S: int, work: str, dump: str, xla_flags: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import bertjax

    load_start = load_average()
    c = MODELS[args.model]
    config = bertjax.BertConfig(**c)
    params = jax.block_until_ready(bertjax.stack_layers(bertjax.init_params(jax.random.key(0),
                                                                            config)))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, c["vocab_size"], (B, S)).astype(np.int32))
    mask = jnp.ones((B, S), jnp.int32)
    walls, events = profile(config, params, ids, mask, args.calls, os.path.join(work, "trace"))
    modules = collections.Counter()
    for mod, _, ns in events:
        modules[mod] += ns
    module = next((m for m, _ in modules.most_common() if "forward" in m), None)
    if module is None:
        raise SystemExit(f"no forward module among the traced ones: {dict(modules)}")
    text = forward_hlo(dump, module)
    b = breakdown(events, text, module, c, B, S, args.calls)
    repeats = max(3, args.calls)
    peak = matmul_peak(c, B, S, repeats)
    L = c["num_hidden_layers"]
    model_flops = peak["per_layer_flops"] * L
    wall = statistics.median(walls)
    matmul_s = b["per_category_ms"]["matmul"] / 1e3
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["benchmarks/profile_forward.py"] + sys.argv[1:]),
        "machine": {"cpu_info": cpu_info()}, "isa": args.isa, "xla_flags": xla_flags,
        "versions": {"jax": jax.__version__}, "model": args.model, "config": c, "B": B, "S": S,
        "calls": args.calls, "module": module, "load_start": load_start,
        "load_end": load_average(),
        "wall_ms": [w * 1e3 for w in walls], "wall_ms_median": wall * 1e3,
        "breakdown": b, "peak": peak, "model_gflops": model_flops / 1e9,
        "forward_gflops": model_flops / wall / 1e9,
        "pct_of_peak": 100 * model_flops / wall / 1e9 / peak["peak_gflops"],
        "matmul_thunk_gflops": model_flops / matmul_s / 1e9 if matmul_s else 0.0,
        "matmul_thunk_pct_of_peak": (100 * model_flops / matmul_s / 1e9 / peak["peak_gflops"]
                                     if matmul_s else 0.0),
        "fused_qkv": fused_qkv(c, B, S, repeats),
    }
    result["shared"] = max(load_start[0], result["load_end"][0]) > 0.5 * (os.cpu_count() or 1)
    name = args.name or ("profile" if args.isa == "native" else f"profile_{args.isa}")
    write_report(os.path.join(args.out, name), result, markdown)


if __name__ == "__main__":
    main()
