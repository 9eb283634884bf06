"""The encoder family's forward against transformers, and BERT's forward before / after the family.

What `bench_forward.py --family F` runs (this file is its family part; run either). Issue 23's
"Speed" targets, measured in one run with bench_forward's interleaved worker processes:

  * each family at base size (bert-base-uncased, roberta-base, distilbert-base-uncased,
    electra-base-discriminator, albert-base-v2: E=128, 12 applied layers sharing one group,
    all-mpnet-base-v2), random weights built in transformers (`torch.manual_seed(0)`, the
    family's `...Model` from its config, sdpa attention where transformers has it: MPNet has
    none, so its reference is eager, which the report says), converted to bertjax through
    `bertjax.checkpoints.convert.state_dict_to_params` from the saved safetensors; the forward
    at (8, 128), all positions real tokens, `capture=()` in bertjax (jitted, warm) vs the
    transformers model (eval, no_grad). Ratio = transformers' median / bertjax's (> 1: bertjax
    faster); target: each family's ratio >= 0.9 x BERT's ratio in the same run.
  * ALBERT's resident memory, in a fresh bertjax process: RSS after start-up, after its
    converted weights are on the device, after a warm forward; against one layer group's
    weight bytes and the L x group bytes a per-layer copy would hold.
  * BERT A/B: `--code DIR` (repeatable) runs bertjax's BERT forward from other source trees
    (e.g. a `git archive` of the commit before the family work) next to this tree's, with
    `capture=()` and `capture="all"`, in the same interleaved rounds.

Every system runs in its own worker process (workers.py); every round calls every entry once,
in an order rotated from round to round. Result files record the CPU, versions, shapes, rounds
and the load average at start and end.

Usage:
  .venv/bin/python benchmarks/bench_forward.py --family roberta,distilbert,electra,albert,mpnet \
      --code /tmp/bertjax-3c15e9e [--rounds 5]
  .venv/bin/python benchmarks/bench_forward.py --family all --tiny --code .   # the test's run
Writes benchmarks/results/forward_family.json and .md (--out DIR, --name STEM to change).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from machine import cpu_info, cpu_line, load_average, pin_first_cores, vm, write_report
from workers import Worker, close_all, marked, parse_or_serve, parse_shapes, reply, serve, timed_rounds

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
             intermediate_size=3072)
# family -> (transformers config class, model class, base-size config of the named checkpoint)
FAMILIES = {
    "bert": ("BertConfig", "BertModel",  # bert-base-uncased
             dict(_BASE, vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)),
    "roberta": ("RobertaConfig", "RobertaModel",  # roberta-base
                dict(_BASE, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)),
    "distilbert": ("DistilBertConfig", "DistilBertModel",  # distilbert-base-uncased
                   dict(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                        max_position_embeddings=512)),
    "electra": ("ElectraConfig", "ElectraModel",  # google/electra-base-discriminator
                dict(_BASE, vocab_size=30522, embedding_size=768, max_position_embeddings=512,
                     type_vocab_size=2)),
    "albert": ("AlbertConfig", "AlbertModel",  # albert-base-v2
               dict(_BASE, vocab_size=30000, embedding_size=128, max_position_embeddings=512,
                    type_vocab_size=2, num_hidden_groups=1, inner_group_num=1,
                    hidden_act="gelu_new", pad_token_id=0, bos_token_id=2, eos_token_id=3)),
    "mpnet": ("MPNetConfig", "MPNetModel",  # sentence-transformers/all-mpnet-base-v2
              dict(_BASE, vocab_size=30527, max_position_embeddings=514,
                   relative_attention_num_buckets=32, layer_norm_eps=1e-5, pad_token_id=1)),
}
# --tiny: the same families at toy sizes (the test's run; seconds, not minutes)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            dim=32, n_layers=2, n_heads=4, hidden_dim=37)
CAPTURE = {"plain": (), "all": "all"}
TARGET_SHAPE = (8, 128)
LOW_IDS = 5  # token ids drawn from [LOW_IDS, smallest vocab): no pad, bos, eos or mask ids


def family_spec(family: str, tiny: bool) -> dict:
    """The transformers config kwargs of `family` (base size, or toy sizes with --tiny)."""
    spec = dict(FAMILIES[family][2])
    if tiny:
        spec.update({k: v for k, v in TINY.items() if k in spec})
        if "embedding_size" in spec:
            spec["embedding_size"] = 16 if family == "albert" else 32
    return spec


def parse_families(values: list[str] | None) -> list[str]:
    """--family roberta --family albert,mpnet (or "all") -> ["bert", "roberta", "albert", "mpnet"]:
    BERT first and always (every ratio is judged against BERT's in the same run)."""
    names = [n.strip() for v in values or ["bert"] for n in v.split(",") if n.strip()]
    if "all" in names:
        names = list(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise SystemExit(f"--family wants some of {', '.join(FAMILIES)} (or all), got "
                         f"{', '.join(unknown)}")
    return ["bert"] + [n for n in dict.fromkeys(names) if n != "bert"]


def make_ids(B: int, S: int, tiny: bool):
    import numpy as np

    high = 100 if tiny else 30000
    return np.random.default_rng(0).integers(LOW_IDS, high, (B, S)).astype(np.int32)


# ---------------------------------------------------------------- workers


class TorchFamilies:
    """Each family's transformers `...Model` (sdpa where it has it, eval), built from its config
    with torch.manual_seed(0) and saved (config.json + model.safetensors) for the bertjax side."""

    def __init__(self, work: str, families: str, threads: str, tiny: str):
        import torch
        import transformers

        torch.set_num_threads(int(threads))
        self.models, self.attn = {}, {}
        for family in families.split(","):
            config_cls, model_cls, _ = FAMILIES[family]
            spec = family_spec(family, tiny == "1")
            torch.manual_seed(0)
            model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**spec))
            model.save_pretrained(os.path.join(work, family))
            for attn in ("sdpa", "eager"):
                try:
                    loaded = getattr(transformers, model_cls).from_pretrained(
                        os.path.join(work, family), attn_implementation=attn)
                except (ValueError, ImportError):
                    continue
                self.models[family], self.attn[family] = loaded.eval(), attn
                break
        self.ids = None

    def info(self) -> dict:
        import torch
        import transformers

        return {"torch": torch.__version__, "transformers": transformers.__version__,
                "attention": self.attn}

    def shape(self, B: int, S: int, tiny: bool) -> None:
        import torch

        self.ids = torch.from_numpy(make_ids(B, S, tiny)).long()

    def call(self, family: str, mode: str) -> float:
        import torch

        model, mask = self.models[family], torch.ones_like(self.ids)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(self.ids, attention_mask=mask)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed


def converted(work: str, family: str):
    """(config, stacked params on the device) of `family`'s saved transformers model, through
    state_dict_to_params (NumPy state dict from the safetensors file; no torch here)."""
    import jax
    from safetensors.numpy import load_file

    import bertjax
    from bertjax.checkpoints.convert import state_dict_to_params

    folder = os.path.join(work, family)
    with open(os.path.join(folder, "config.json")) as f:
        config = bertjax.BertConfig.from_dict(json.load(f))
    state = load_file(os.path.join(folder, "model.safetensors"))
    params, _heads, _notes = state_dict_to_params(state, config)
    del state
    # Stacked once up front, as a user holding several models does: `forward`'s stacking cache
    # holds one tree, so interleaved per-layer trees would be restacked on every call.
    return config, bertjax.stack_layers(jax.device_put(params))


class BertjaxFamilies:
    """The jitted `bertjax.forward` of each family, from the source tree on PYTHONPATH."""

    def __init__(self, work: str, families: str):
        self.models = {f: converted(work, f) for f in families.split(",")}
        self.ids = self.mask = None

    def info(self) -> dict:
        import jax
        import jaxlib

        import bertjax

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "bertjax_file": bertjax.__file__}

    def shape(self, B: int, S: int, tiny: bool) -> None:
        import numpy as np

        self.ids = make_ids(B, S, tiny)
        self.mask = np.ones_like(self.ids)

    def call(self, family: str, mode: str) -> float:
        import jax

        import bertjax

        config, params = self.models[family]
        t0 = time.perf_counter()
        out = bertjax.forward(params, self.ids, config, attention_mask=self.mask,
                              capture=CAPTURE[mode])
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed


def serve_system(kind: str, args: list[str]) -> None:
    system = TorchFamilies(*args) if kind == "torch" else BertjaxFamilies(*args)

    def handle(cmd: str, msg: dict) -> dict:
        if cmd == "call":
            return {"seconds": system.call(msg["family"], msg["mode"])}
        if cmd == "shape":
            return {"ok": system.shape(msg["B"], msg["S"], msg["tiny"])}
        return system.info()

    serve(handle)


# ---------------------------------------------------------------- ALBERT's resident memory


def albert_memory_probe(work: str, B: str, S: str, tiny: str) -> None:
    """In a fresh process: RSS after start-up (jax initialised), after ALBERT's converted weights
    are on the device, after a warm forward; the weight bytes of one layer group and in all."""
    import ctypes

    import jax
    import jax.numpy as jnp

    import bertjax

    jax.block_until_ready(jax.jit(lambda x: x + 1)(jnp.ones(4)))
    trim = lambda: (gc.collect(), ctypes.CDLL("libc.so.6").malloc_trim(0))
    trim()
    start = vm("VmRSS")
    config, params = converted(work, "albert")
    trim()
    loaded = vm("VmRSS")
    size = lambda tree: sum(x.nbytes for x in jax.tree_util.tree_leaves(tree))
    group = size(params["encoder"]["layer"])  # num_param_layers = groups x inner = 1 here
    ids = make_ids(int(B), int(S), tiny == "1")
    run = lambda: jax.block_until_ready(bertjax.forward(params, ids, config, capture=()))
    run(), run()
    trim()
    reply({"rss_start": start, "rss_loaded": loaded, "rss_after_forward": vm("VmRSS"),
           "peak_rss": vm("VmHWM"), "weights": size(params), "group_weights": group,
           "param_layers": config.num_param_layers, "applied_layers": config.num_layers,
           "per_layer_copy": group // config.num_param_layers * config.num_layers})


def albert_memory(work: str, B: int, S: int, tiny: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--albert-memory", work,
                           str(B), str(S), "1" if tiny else "0"], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise RuntimeError(f"ALBERT memory probe failed: {proc.stderr[-1500:]}")
    return marked(proc.stdout)


# ---------------------------------------------------------------- BERT's program, before / after


def jaxpr_probe(mode: str) -> None:
    """In a fresh process (the tree on PYTHONPATH): the sha256 of the jaxpr of BERT's forward
    (a toy config, stacked params, capture=() or "all"): equal digests = the same program."""
    import hashlib

    import jax
    import jax.numpy as jnp

    import bertjax
    from bertjax.model.params import init_params

    config = bertjax.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=37,
                                max_position_embeddings=64, type_vocab_size=2)
    params = bertjax.stack_layers(init_params(jax.random.key(0), config))
    ids = jnp.ones((2, 8), jnp.int32)
    jaxpr = jax.make_jaxpr(lambda p, i, m: bertjax.forward(p, i, config, attention_mask=m,
                                                           capture=CAPTURE[mode]))(params, ids, ids)
    reply({"sha256": hashlib.sha256(str(jaxpr).encode()).hexdigest()})


def jaxpr_digest(code: str, mode: str) -> str:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--jaxpr", mode],
                          capture_output=True, text=True, cwd=tempfile.gettempdir(),
                          env=dict(os.environ, PYTHONPATH=os.path.abspath(code)))
    if proc.returncode:
        raise RuntimeError(f"jaxpr probe of {code} failed: {proc.stderr[-1500:]}")
    return marked(proc.stdout)["sha256"]


# ---------------------------------------------------------------- the run


def describe(code: str) -> str:
    """'name @ commit subject' of a source tree, or its path (bench_load's describe)."""
    from bench_load import describe as described

    return described(code)


def start_workers(work: str, families: list[str], codes: list[str], threads: int,
                  tiny: bool) -> dict:
    """The transformers worker (it builds and saves every family), then one bertjax worker per
    source tree: this tree with every family, each --code tree with BERT only."""
    workers = {"torch": Worker("torch", __file__, work, ",".join(families), str(threads),
                               "1" if tiny else "0")}
    for i, code in enumerate([ROOT, *codes]):
        os.environ["PYTHONPATH"] = os.path.abspath(code)  # read by the worker at start
        workers[f"bertjax{i}"] = Worker("bertjax", __file__, work,
                                        ",".join(families) if i == 0 else "bert")
    os.environ["PYTHONPATH"] = ROOT
    return workers


def entries_for(families: list[str], codes: list[str]) -> list[tuple]:
    """(worker, family, mode) timed in every round: each family in bertjax and transformers,
    BERT's capture="all", and BERT plain / all from each --code tree."""
    out = [(w, f, "plain") for f in families for w in ("bertjax0", "torch")]
    if codes:
        out += [("bertjax0", "bert", "all")]
        out += [(f"bertjax{i + 1}", "bert", m) for i in range(len(codes)) for m in CAPTURE]
    return out


def summarize(timed: dict, families: list[str], codes: list[str], attention: dict) -> dict:
    """Per family the ratio transformers / bertjax, and the targets."""
    med = {e: r["median_s"] for e, r in timed.items()}
    rows, targets = [], []
    bert_ratio = med["torch", "bert", "plain"] / med["bertjax0", "bert", "plain"]
    for f in families:
        ours, theirs = timed["bertjax0", f, "plain"], timed["torch", f, "plain"]
        ratio = theirs["median_s"] / ours["median_s"]
        rows.append({"family": f, "checkpoint_shape": FAMILIES[f][1], "attention": attention[f],
                     "bertjax_ms": 1e3 * ours["median_s"],
                     "bertjax_iqr_ms": [1e3 * ours["p25_s"], 1e3 * ours["p75_s"]],
                     "transformers_ms": 1e3 * theirs["median_s"],
                     "transformers_iqr_ms": [1e3 * theirs["p25_s"], 1e3 * theirs["p75_s"]],
                     "ratio": ratio, "over_bert": ratio / bert_ratio,
                     # per round (both timed in the same round): the noise of the ratio
                     "ratio_by_round": [t / o for t, o in zip(theirs["times_s"], ours["times_s"])]})
        if f != "bert":
            targets.append({"target": f"{f}: ratio >= 0.9 x BERT's ratio "
                                      f"(transformers {attention[f]})",
                            "value": ratio / bert_ratio, "ok": ratio >= 0.9 * bert_ratio})
    ab = []
    for i, code in enumerate(codes):
        for mode in CAPTURE:
            new, old = timed["bertjax0", "bert", mode], timed[f"bertjax{i + 1}", "bert", mode]
            overlap = new["p25_s"] <= old["p75_s"] and old["p25_s"] <= new["p75_s"]
            change = new["median_s"] / old["median_s"] - 1
            same = jaxpr_digest(ROOT, mode) == jaxpr_digest(code, mode)
            ab.append({"code": describe(code), "mode": mode, "this_ms": 1e3 * new["median_s"],
                       "before_ms": 1e3 * old["median_s"], "change": change,
                       "iqr_overlap": overlap, "same_jaxpr": same})
            targets.append({"target": f"BERT capture={CAPTURE[mode]!r}: the same program as "
                                      f"{describe(code)} (jaxpr of a toy BERT, sha256)",
                            "value": float(same), "ok": same})
            targets.append({"target": f"BERT capture={CAPTURE[mode]!r} within noise of "
                                      f"{describe(code)} (|change| <= 5 % or p25-p75 overlap)",
                            "value": change, "ok": abs(change) <= 0.05 or overlap})
    return {"rows": rows, "ab": ab, "targets": targets}


def run(args) -> None:
    """The family benchmark with `args` (bench_forward's or this file's options)."""
    start = time.perf_counter()
    families = parse_families(args.family)
    codes = args.code or []
    tiny = getattr(args, "tiny", False)
    B, S = (args.shapes or (((2, 16),) if tiny else (TARGET_SHAPE,)))[0]
    rounds = args.rounds or (1 if tiny else 5)
    pin_first_cores(args.threads)
    load_start = load_average()
    work = tempfile.mkdtemp(prefix="bench_family-")
    workers: dict = {}
    try:
        workers = start_workers(work, families, codes, args.threads, tiny)
        infos = {k: w.request("info") for k, w in workers.items()}
        for w in workers.values():
            w.request("shape", B=B, S=S, tiny=tiny)
        entries = entries_for(families, codes)
        call = lambda e: workers[e[0]].request("call", family=e[1], mode=e[2])["seconds"]
        timed = timed_rounds(entries, call, rounds)
        memory = albert_memory(work, B, S, tiny) if "albert" in families else None
    finally:
        close_all(workers, work)
    summary = summarize(timed, families, codes, infos["torch"]["attention"])
    if memory:
        extra = memory["rss_loaded"] - memory["rss_start"]
        summary["targets"].append({
            "target": "ALBERT: resident memory the loaded weights add <= 1.5 x the weights held "
                      "once (one group + embeddings), far below the per-layer copy",
            "value": extra / memory["weights"], "ok": extra <= 1.5 * memory["weights"]})
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "machine": {"cpu": cpu_info(), "threads": args.threads, "python": platform.python_version()},
        "versions": {k: v for k, v in {**infos["bertjax0"], **infos["torch"]}.items()
                     if k not in ("attention", "bertjax_file")},
        "trees": {k: infos[k]["bertjax_file"] for k in infos if k.startswith("bertjax")},
        "shape": [B, S], "tiny": tiny, "rounds": rounds,
        "configs": {f: family_spec(f, tiny) for f in families},
        "load_start": load_start, "load_end": load_average(),
        "albert_memory": memory, **summary,
        "timings": [{"worker": w, "family": f, "mode": m, **timed[w, f, m]}
                    for w, f, m in entries],
        "wall_s": time.perf_counter() - start,
    }
    write_report(os.path.join(args.out, args.name or "forward_family"), result, markdown)


def _mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    B, S = result["shape"]
    lines = [
        f"# The encoder family's forward: bertjax vs transformers ({B}, {S}), fp32, CPU", "",
        f"Run of {result['date']} ({result['wall_s'] / 60:.1f} min, `{result['command']}`); "
        f"{'toy sizes (--tiny)' if result['tiny'] else 'base-size shapes'}, random weights "
        "(torch.manual_seed(0), the family's transformers `...Model`), converted with "
        "`state_dict_to_params`; all positions real tokens; bertjax `capture=()` jitted and warm.",
        "",
        f"- CPU: {cpu_line(m['cpu'])}; threads: {m['threads']}",
        "- versions: python " + m["python"] + ", "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        f"- {result['rounds']} interleaved rounds (every entry once per round, order rotated, "
        f"each system in its own worker process); load average at start {result['load_start']}, "
        f"at end {result['load_end']}",
        "- ratio = transformers' median / bertjax's median (> 1: bertjax faster); "
        "/ BERT = this ratio / BERT's ratio in the same run", "",
        "| family | transformers class (attention) | bertjax ms (p25-p75) "
        "| transformers ms (p25-p75) | ratio | ratio per round | / BERT |",
        "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lo, hi = r["bertjax_iqr_ms"]
        tlo, thi = r["transformers_iqr_ms"]
        lines.append(f"| {r['family']} | {r['checkpoint_shape']} ({r['attention']}) "
                     f"| {r['bertjax_ms']:.0f} ({lo:.0f}-{hi:.0f}) "
                     f"| {r['transformers_ms']:.0f} ({tlo:.0f}-{thi:.0f}) "
                     f"| {r['ratio']:.2f} | {min(r['ratio_by_round']):.2f}-"
                     f"{max(r['ratio_by_round']):.2f} | {r['over_bert']:.2f} |")
    if result["ab"]:
        lines += ["", "BERT before / after the family work (same rounds):", "",
                  "| mode | this tree ms | before ms | change | p25-p75 overlap | same jaxpr |",
                  "|---|---:|---:|---:|---|---|"]
        lines += [f"| {a['mode']} ({a['code']}) | {a['this_ms']:.0f} | {a['before_ms']:.0f} "
                  f"| {100 * a['change']:+.1f} % | {'yes' if a['iqr_overlap'] else 'no'} "
                  f"| {'yes' if a.get('same_jaxpr') else 'no'} |"
                  for a in result["ab"]]
    mem = result["albert_memory"]
    if mem:
        lines += ["", f"ALBERT's resident memory (fresh bertjax process, {mem['applied_layers']} "
                  f"applied layers over {mem['param_layers']} stored layer): RSS after start-up "
                  f"{_mib(mem['rss_start'])} MiB, with the weights "
                  f"{_mib(mem['rss_loaded'])} MiB (+{_mib(mem['rss_loaded'] - mem['rss_start'])}),"
                  f" after a warm forward {_mib(mem['rss_after_forward'])} MiB (peak "
                  f"{_mib(mem['peak_rss'])}); weights {_mib(mem['weights'])} MiB in all, one "
                  f"group {_mib(mem['group_weights'])} MiB, a per-layer copy would hold "
                  f"{_mib(mem['per_layer_copy'])} MiB of layers."]
    lines += ["", "Targets:", ""]
    lines += [f"- {'PASS' if t['ok'] else 'MISS'}: {t['target']} (measured {t['value']:.2f})"
              for t in result["targets"]]
    return "\n".join(lines) + "\n"


def add_options(parser) -> None:
    """The family options (shared with bench_forward.py)."""
    parser.add_argument("--family", action="append",
                        help="families to compare with BERT, repeatable or comma-separated: "
                             + ", ".join(FAMILIES) + ", or all")
    parser.add_argument("--code", action="append",
                        help="another bertjax source tree whose BERT forward runs next to this "
                             "tree's (A/B, capture=() and 'all'); repeatable")
    parser.add_argument("--tiny", action="store_true",
                        help="the families at toy sizes, (2, 16), 1 round: the test's run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, tiny 1)")
    parser.add_argument("--shapes", type=parse_shapes, help="B x S (default 8x128)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", help="output file stem (default forward_family)")
    args = parse_or_serve(parser, serve_system, albert_memory=(4, albert_memory_probe),
                          jaxpr=(1, jaxpr_probe))
    if args is not None:
        run(args)


if __name__ == "__main__":
    main()
