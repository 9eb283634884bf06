"""ModernBERT and DeBERTa-v3 on CPU: long context, sliding vs global layers, and transformers.

Random weights of the real shapes (no hub needed):
  * ModernBERT-base (D 768, 12 heads, I 1152, local_attention 128, every third layer global):
    the forward at (1, 8192) with capture=() (wall time and the process's peak RSS: it must fit
    in 24 GiB); one sliding layer vs one global layer at S = 8192 (jitted `encoder_layer`);
    the forward at (8, 512) against transformers' ModernBertModel with sdpa, same run, for the
    full 22 layers and for a shorter stack (`--layers`);
  * DeBERTa-v3-base (D 768, 12 layers, 12 heads, I 3072, 256 buckets): the forward at (8, 128)
    against transformers' DebertaV2Model (eager, its only implementation), same run.
Each timing: one warm-up call, then the median of `--rounds` calls; bertjax and transformers in
interleaved rounds (one call of each per round). The load average of the machine is recorded
before and after (other processes share the CPU).

Usage:  .venv/bin/python benchmarks/bench_modern.py [--rounds 2] [--layers 6] [--only full,...]
  --layers: ModernBERT layers of the short (8, 512) comparison (both libraries; 0 skips it); the
  full 22-layer comparison always runs. --only reruns some parts (long, layer, deberta, short,
  full) and merges them into the existing results.
Writes benchmarks/results/modern.json and modern.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import bertjax
from bertjax.model.layer import encoder_layer
from bertjax.model.params import Heads, init_params
from bertjax.model.positions import rotary_tables

HERE = os.path.dirname(os.path.abspath(__file__))
MODERNBERT_BASE = dict(model_type="modernbert", vocab_size=50368, hidden_size=768,
                       intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
                       max_position_embeddings=8192, local_attention=128,
                       global_attn_every_n_layers=3, pad_token_id=50283)
DEBERTA_V3_BASE = dict(model_type="deberta-v2", vocab_size=128100, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       max_position_embeddings=512, type_vocab_size=0, relative_attention=True,
                       pos_att_type="p2c|c2p", position_buckets=256, max_relative_positions=-1,
                       norm_rel_ebd="layer_norm", share_att_key=True,
                       position_biased_input=False, layer_norm_eps=1e-7)


def timed(fn, rounds: int) -> dict:
    """One warm-up call, then `rounds` timed calls: median, min, max seconds."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _ids(vocab: int, B: int, S: int) -> np.ndarray:
    return np.random.default_rng(0).integers(5, min(vocab, 50000), (B, S)).astype(np.int32)


def modernbert_long(rounds: int) -> dict:
    config = bertjax.BertConfig.from_dict(MODERNBERT_BASE)
    params = bertjax.stack_layers(init_params(jax.random.key(0), config, Heads(pooler=False)))
    ids = _ids(config.vocab_size, 1, 8192)
    run = lambda: bertjax.forward(params, ids, config).last_hidden_state.block_until_ready()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    return {"shape": [1, 8192], "first_call_s": first, **timed(run, max(rounds - 1, 1)),
            "peak_rss_gib": peak_rss_gib()}


def layer_costs(rounds: int) -> dict:
    """One sliding and one global ModernBERT-base layer at S = 8192 (banded vs full attention)."""
    config = bertjax.BertConfig.from_dict({**MODERNBERT_BASE, "num_hidden_layers": 2,
                                           "global_attn_every_n_layers": 2})
    layer = init_params(jax.random.key(1), config, Heads(pooler=False))["encoder"]["layer"]["1"]
    hidden = jax.random.normal(jax.random.key(2), (1, 8192, 768), jnp.float32)
    out = {}
    for kind, local in (("sliding", True), ("global", False)):
        theta = config.local_rope_theta if local else config.global_rope_theta
        rope = rotary_tables(jnp.arange(8192), theta, config.head_size)
        fn = jax.jit(lambda p, h, rope=rope, local=local: encoder_layer(
            p, h, config, positions={"rope": rope, "local": local})[0])
        out[kind] = timed(lambda fn=fn: fn(layer, hidden).block_until_ready(), rounds)
    out["sliding_over_global"] = out["sliding"]["median_s"] / out["global"]["median_s"]
    return out


def interleaved(calls: dict, rounds: int) -> dict:
    """One warm-up call of each system, then `rounds` rounds in which every system is called once
    (in turn, so that a change of load on the shared machine hits them alike): name -> `timed`'s
    median, min, max seconds."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                   "times_s": t} for name, t in times.items()}


def versus_transformers(spec: dict, shape: tuple[int, int], rounds: int, seed: int,
                        implementation: str) -> dict:
    """bertjax's jitted forward (capture=()) against transformers' base model of the same config
    (`ModernBertModel` / `DebertaV2Model`, random weights, eval, inference mode) at `shape`, in
    interleaved rounds: {"shape", "layers", "bertjax", "transformers_<implementation>",
    "speedup", "round_speedups"} (speedup = transformers' median / bertjax's; round_speedups
    the same ratio in each round, where both ran back to back under the same load)."""
    import torch
    import transformers

    config = bertjax.BertConfig.from_dict(spec)
    params = bertjax.stack_layers(init_params(jax.random.key(seed), config, Heads(pooler=False)))
    ids = _ids(config.vocab_size, *shape)
    hf = {k: v for k, v in spec.items() if k != "model_type"}
    modern = spec["model_type"] == "modernbert"
    config_class, model_class = (("ModernBertConfig", "ModernBertModel") if modern else
                                 ("DebertaV2Config", "DebertaV2Model"))
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(
        **hf, attn_implementation=implementation)).eval()
    torch_ids = torch.tensor(ids, dtype=torch.long)

    def theirs():
        with torch.inference_mode():
            model(torch_ids)

    name = f"transformers_{implementation}"
    times = interleaved({"bertjax": lambda: bertjax.forward(params, ids, config)
                         .last_hidden_state.block_until_ready(), name: theirs}, rounds)
    paired = [t / o for t, o in zip(times[name]["times_s"], times["bertjax"]["times_s"])]
    return {"shape": list(shape), "layers": config.num_hidden_layers, **times,
            "speedup": times[name]["median_s"] / times["bertjax"]["median_s"],
            "round_speedups": paired}


def modernbert_vs_transformers(rounds: int, layers: int, spec: dict = MODERNBERT_BASE,
                               shape: tuple[int, int] = (8, 512)) -> dict:
    """ModernBERT (`layers` layers of `spec`) against transformers' ModernBertModel with sdpa."""
    return versus_transformers({**spec, "num_hidden_layers": layers}, shape, rounds, 3, "sdpa")


def deberta_vs_transformers(rounds: int, spec: dict = DEBERTA_V3_BASE,
                            shape: tuple[int, int] = (8, 128)) -> dict:
    """DeBERTa-v3 against transformers' DebertaV2Model (eager, its only implementation)."""
    return versus_transformers(spec, shape, rounds, 4, "eager")


def _load(r: dict) -> str:
    """The load average around one part, and its rounds, where recorded."""
    if "load_before" not in r:
        return ""
    return f"{r['load_before'][0]} / {r['load_after'][0]}, {r['rounds']} rounds"


def _versus_row(label: str, r: dict) -> str:
    name = next(k for k in r if k.startswith("transformers_"))
    kind = name.removeprefix("transformers_")
    return (f"| {label} forward ({r['shape'][0]}, {r['shape'][1]}) | {r['bertjax']['median_s']:.3f} s "
            f"({r['bertjax']['min_s']:.2f}-{r['bertjax']['max_s']:.2f}) "
            f"| {r[name]['median_s']:.3f} s ({r[name]['min_s']:.2f}-{r[name]['max_s']:.2f}; {kind}) "
            f"| {r['speedup']:.2f}x faster{_paired(r)} | {_load(r)} |")


def _paired(r: dict) -> str:
    """The speedup round by round (both systems called back to back), where recorded."""
    paired = r.get("round_speedups")
    if not paired:
        return ""
    return f" (per round: {', '.join(f'{x:.2f}' for x in paired)})"


def markdown(results: dict) -> str:
    long, layer = results["modernbert_8192"], results["layer_8192"]
    rows = [_versus_row(f"ModernBERT-base shapes ({r['layers']} layers)", r)
            for r in (results.get("modernbert_8x512"), results["modernbert_full_8x512"]) if r]
    return "\n".join([
        f"# ModernBERT and DeBERTa-v3 on CPU ({results['machine']})", "",
        f"Load average before / after: {results['load_before']} / {results['load_after']} "
        f"(other processes shared the {os.cpu_count()} cores: figures are upper bounds). "
        f"Each comparison with transformers: one warm-up call of each, then interleaved rounds "
        f"(one call of each per round). Parts rerun with `--only` carry their own load and "
        f"rounds in the last column.", "",
        "| measurement | bertjax median (min-max) | transformers median (min-max) | ratio "
        "| load average 1 min, before / after |", "|---|---|---|---|---|",
        f"| ModernBERT-base forward (1, 8192), capture=() | {long['median_s']:.2f} s "
        f"(peak RSS {long['peak_rss_gib']:.1f} GiB) | | | {_load(long)} |",
        f"| one ModernBERT-base layer at S=8192: sliding (banded) / global | "
        f"{layer['sliding']['median_s']:.3f} s / {layer['global']['median_s']:.3f} s | | "
        f"{layer['sliding_over_global']:.2f}x | {_load(layer)} |",
        *rows,
        _versus_row("DeBERTa-v3-base", results["deberta_8x128"]),
        ""])


PARTS = ("long", "layer", "deberta", "short", "full")


def parse_parts(text: str) -> tuple[str, ...]:
    """--only's comma-separated parts, in PARTS' order."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ValueError(f"--only takes parts among {', '.join(PARTS)}; got {text!r}")
    return tuple(p for p in PARTS if p in parts)


def run_parts(parts: tuple[str, ...], rounds: int, layers: int) -> dict:
    """Each part's result, under its results key, with the load average around it."""
    runs = {"long": ("modernbert_8192", lambda: modernbert_long(rounds)),  # first: own peak RSS
            "layer": ("layer_8192", lambda: layer_costs(rounds)),
            "deberta": ("deberta_8x128", lambda: deberta_vs_transformers(rounds)),
            "short": ("modernbert_8x512", lambda: modernbert_vs_transformers(rounds, layers)),
            "full": ("modernbert_full_8x512", lambda: modernbert_vs_transformers(
                rounds, MODERNBERT_BASE["num_hidden_layers"]))}
    out = {}
    for part in parts:
        key, fn = runs[part]
        before = [round(x, 2) for x in os.getloadavg()]
        out[key] = {**fn(), "rounds": rounds, "load_before": before,
                    "load_after": [round(x, 2) for x in os.getloadavg()]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layers", type=int, default=6,
                        help="layers of the short ModernBERT (8, 512) comparison (0: skip it)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated parts among {', '.join(PARTS)}, rerun and merged "
                             f"into the existing results (default: all)")
    args = parser.parse_args()
    parts = parse_parts(args.only) if args.only else \
        tuple(p for p in PARTS if p != "short" or args.layers)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    path = os.path.join(HERE, "results", "modern.json")
    results = {}
    if args.only:
        if not os.path.exists(path):
            parser.error(f"--only merges into {path}, which does not exist: run every part first")
        with open(path) as f:
            results = json.load(f)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results.update(run_parts(parts, args.rounds, args.layers))
    results.update({"machine": f"{platform.processor() or platform.machine()}, "
                               f"{os.cpu_count()} cores"})
    if not args.only:
        results.update({"rounds": args.rounds, "load_before": load_before,
                        "load_after": [round(x, 2) for x in os.getloadavg()]})
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    write_atomic(path, json.dumps(results, indent=2))
    write_atomic(os.path.join(HERE, "results", "modern.md"), markdown(results))
    print(markdown(results))


def write_atomic(path: str, text: str) -> None:
    """Writes text to path through a temporary file in the same folder, then a rename."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
