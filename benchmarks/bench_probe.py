"""Probing and attribution speed: every layer's probe in one program against scikit-learn layer by
layer, and integrated gradients against the batched forward + backward passes it is made of.

    .venv/bin/python benchmarks/bench_probe.py                # 13 x 20000 x 768, 17 classes
    .venv/bin/python benchmarks/bench_probe.py --n 4000 --parts probes
    .venv/bin/python benchmarks/bench_probe.py --parts stream --stream-words 100000

Probes: features [L=13, N, D=768] with class structure growing with the layer (Gaussian class
centres scaled by the layer, plus noise), the same held-out split and the same L2 (C) for both;
bertjax's `probe_layers` (L-BFGS, compiled once: the first call's time is reported apart)
against `sklearn.linear_model.LogisticRegression(C=C)` (lbfgs, its defaults: tol 1e-4, max_iter
100) fitted on each layer in turn. Also each layer alone (the per-layer overhead: 13 layers
together should cost at most 1.2x the 13 layers fitted alone on CPU), timed in interleaved repeats
(`--repeats`: all layers, then each layer alone, again and again, so that a change of load hits
both; the ratio is given per repeat, its median, and best against best), and
the layers vmapped in lockstep (`parallel=True`, the accelerator default) for comparison.
Integrated gradients: the offline MiniLM, B sentences, site embed.out, 64 trapezoid steps in
chunks of 16, against one jitted forward + backward of the same 64 x B rows (the path's work
done as a plain batched gradient); both warm.
Streaming (`--parts stream`): a synthetic `extract` store of `--stream-words` words x 13 layers
(embed.out + 12 layer.out) x 768 dims, random values, written with extract's own chunk writer
(`bertjax.scale.extract.commit`, float16 by default: half the disk), 32 one-token words per
sentence; then, in a fresh process, `word_batches` + `probe_stream` (minibatch Adam, `--epochs`)
over it, 80 % of the sentences for training and 20 % held out, with the resident memory sampled
after every batch (VmRSS, and its anonymous and file-backed parts: the shards are memory-mapped,
so pages read stay counted in RSS as page cache until the kernel reclaims them) and the peak
(VmHWM, ru_maxrss). The store is deleted afterwards.
`--earlier FILE` keeps an earlier result JSON in the report (as "earlier").
Results: benchmarks/results/probe.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def features(L: int, n: int, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) / np.sqrt(d) * 3
    y = rng.integers(0, k, n)
    scale = np.linspace(0.05, 1.0, L)
    x = np.stack([centres[y] * s + rng.normal(size=(n, d)) for s in scale]).astype(np.float32)
    return x, y


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_probes(L, n, d, k, C, repeats):
    from sklearn.linear_model import LogisticRegression

    import bertjax

    x, y = features(L, n, d, k)
    held = np.sort(np.random.default_rng(1).permutation(n)[: n // 5])
    train = np.setdiff1d(np.arange(n), held)
    first, _ = timed(lambda: bertjax.probe_layers(x, y, dev=held, C=C))
    out, r = overhead(x, y, held, C, repeats)
    bertjax.probe_layers(x, y, dev=held, C=C, parallel=True)
    lockstep, _ = timed(lambda: bertjax.probe_layers(x, y, dev=held, C=C, parallel=True))
    sk_times, sk_acc = [], []
    for layer in range(L):
        t, m = timed(lambda lay=layer: LogisticRegression(C=C).fit(x[lay, train], y[train]))
        sk_times.append(t)
        sk_acc.append(float(m.score(x[layer, held], y[held])))
    return {"shape": [L, n, d], "classes": k, "C": C, "held_out": int(len(held)),
            "bertjax_first_call_s": first, **out, "bertjax_vmapped_s": lockstep,
            "sklearn_s": float(sum(sk_times)), "sklearn_per_layer_s": sk_times,
            "bertjax_accuracy": [float(a) for a in r.accuracy], "sklearn_accuracy": sk_acc,
            "max_accuracy_gap": float(np.max(np.abs(np.array(sk_acc) - r.accuracy)))}


def overhead(x, y, held, C, repeats):
    """The 13 layers in one program against each layer alone, in interleaved repeats."""
    import bertjax

    L = x.shape[0]
    bertjax.probe_layers(x, y, dev=held, C=C)
    bertjax.probe_layers(x[:1], y, dev=held, C=C)  # compile the one-layer program
    together, alone, per_layer = [], [], []
    for _ in range(repeats):  # interleaved: all layers, then each alone
        t, r = timed(lambda: bertjax.probe_layers(x, y, dev=held, C=C))
        together.append(t)
        singles = [timed(lambda lay=lay: bertjax.probe_layers(x[lay:lay + 1], y, dev=held, C=C))
                   for lay in range(L)]
        alone.append(float(sum(t for t, _ in singles)))
        per_layer.append([t for t, _ in singles])
        single_steps = [int(s.steps[0]) for _, s in singles]
    ratios = [a / b for a, b in zip(together, alone)]
    return {"repeats": repeats, "bertjax_s": min(together), "bertjax_repeats_s": together,
            "bertjax_single_layers_s": per_layer[int(np.argmin(alone))],
            "bertjax_single_layers_sum_repeats_s": alone,
            "overhead_ratio_repeats": ratios, "overhead_ratio_median": float(np.median(ratios)),
            "overhead_ratio_best": min(together) / min(alone),
            "bertjax_steps": [int(s) for s in r.steps], "bertjax_single_steps": single_steps}, r


SENTENCE = 32  # words per synthetic sentence, one token each, between [CLS] and [SEP]


def write_store(folder: str, words: int, dim: int, layers: int, dtype: str, chunk: int = 125):
    """A synthetic extract store: embed.out [S, D] and layer.out [S, layers - 1, D] per sentence,
    standard normal values, written chunk by chunk with extract's writer. Returns its bytes."""
    from bertjax.model.config import BertConfig
    from bertjax.scale import extract as E
    from bertjax.scale.store import array_layout

    config = BertConfig(vocab_size=1000, hidden_size=dim, num_hidden_layers=layers - 1,
                        num_attention_heads=12, intermediate_size=4 * dim)
    np_dtype = {"F16": np.float16, "F32": np.float32}[dtype]
    arrays = {name: {**array_layout(name, config, layers - 1, "none"), "dtype": dtype}
              for name in ("embed.out", "layer.out")}
    meta = {"format": 1, "command": {"model": "synthetic", "input": "bench_probe",
                                     "capture": sorted(arrays), "layers": list(range(layers - 1)),
                                     "reduce": "none", "dtype": dtype}, "arrays": arrays}
    E.prepare_out(folder, meta, "bench")
    rng, tokens, sentences = np.random.default_rng(0), SENTENCE + 2, -(-words // SENTENCE)
    for k, start in enumerate(range(0, sentences, chunk)):
        count = min(chunk, sentences - start)
        lines = [E.Line(number=start + i + 1, text="") for i in range(count)]
        examples = [E.Example(line=start + i + 1, ids=[101] + [1000 + j for j in range(SENTENCE)]
                              + [102], types=[0] * tokens, truncated=False) for i in range(count)]
        flats = {"embed.out": rng.standard_normal(count * tokens * dim, np.float32),
                 "layer.out": rng.standard_normal(count * tokens * (layers - 1) * dim, np.float32)}
        E.commit(folder, k, lines, examples, {n: a.astype(np_dtype) for n, a in flats.items()},
                 "bench", "synthetic")
    return sum(os.path.getsize(os.path.join(folder, "shards", f))
               for f in os.listdir(os.path.join(folder, "shards")))


def memory() -> dict:
    """VmRSS, RssAnon, RssFile and VmHWM of this process, bytes."""
    return {f: machine.vm(f) for f in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def stream_child(folder: str, k: int, epochs: int, batch_size: int) -> dict:
    """Runs in a fresh process: probe_stream over the store, memory sampled after every batch."""
    import resource

    import jax

    from bertjax.probing.stream import probe_stream, word_batches
    from bertjax.scale.store import ActivationStore

    jax.numpy.zeros(1).block_until_ready()
    store = ActivationStore(folder)
    start = memory()
    n = len(store)
    word_ids = [[None] + list(range(SENTENCE)) + [None]] * n
    labels = [np.random.default_rng(i).integers(0, k, SENTENCE) for i in range(n)]
    cut = int(0.8 * n)
    peak = dict(start)
    batches = [0]

    def sampled(examples):
        for item in word_batches(store, word_ids, labels, examples=examples, batch_size=batch_size):
            yield item
            batches[0] += 1
            now = memory()
            for f in peak:
                peak[f] = max(peak[f], now[f])

    t = time.perf_counter()
    r = probe_stream(lambda: sampled(range(cut)), lambda: sampled(range(cut, n)), k=k,
                     n_train=cut * SENTENCE, epochs=epochs, patience=epochs)
    seconds = time.perf_counter() - t
    end = memory()
    return {"examples": n, "words": n * SENTENCE, "train_words": cut * SENTENCE,
            "batches_read": batches[0], "epochs": int(r.steps[0]), "seconds": seconds,
            "rss_before": start, "rss_peak_sampled": peak, "rss_end": end,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "accuracy": [float(a) for a in r.accuracy]}


def bench_stream(words: int, dim: int, layers: int, dtype: str, epochs: int, batch_size: int,
                 folder: str) -> dict:
    import json
    import shutil
    import subprocess

    if os.path.exists(folder):
        raise SystemExit(f"{folder} exists: give --stream-dir a new folder")
    try:
        t = time.perf_counter()
        stored = write_store(folder, words, dim, layers, dtype)
        written = time.perf_counter() - t
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--stream-child", folder,
                              "--epochs", str(epochs), "--batch-size", str(batch_size)],
                             check=True, capture_output=True, text=True)
        child = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    words = child["words"]
    return {"shape": [layers, words, dim], "dtype": dtype, "store_bytes": stored,
            "float32_bytes": layers * words * dim * 4, "write_s": written,
            "batch_size": batch_size, **child}


def cls_metric(out):
    import jax.numpy as jnp

    return jnp.sum(out.last_hidden_state[:, 0, :8])


def bench_ig(batch: int, steps: int, chunk: int):
    import jax
    import jax.numpy as jnp

    import bertjax

    model = bertjax.load_pretrained(None)
    texts = ["the movie was surprisingly good and the actors were wonderful",
             "a dull and tedious film that nobody should have to sit through"] * batch
    enc = model.tokenizer(texts[:batch], padding="max_length", max_length=16, truncation=True,
                          return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    run = lambda: bertjax.integrated_gradients(model.params, ids, model.config, cls_metric,
                                               steps=steps, batch_size=chunk,
                                               attention_mask=mask)[0].block_until_ready()
    run()
    ig, _ = timed(run, 3)
    big_ids, big_mask = np.tile(ids, (steps, 1)), np.tile(mask, (steps, 1))
    x = bertjax.forward(model.params, big_ids, model.config, attention_mask=big_mask,
                        capture=("embed.out",)).acts["embed.out"]

    @jax.jit
    def fwd_bwd(params, x):  # the same rows, one forward + backward at embed.out
        def f(p):
            out = bertjax.forward(params, big_ids, model.config, attention_mask=big_mask,
                                  edit={"embed.out": (0.0, p)})
            return cls_metric(out)
        return jax.grad(f)(x)

    fwd_bwd(model.params, x).block_until_ready()
    plain, _ = timed(lambda: fwd_bwd(model.params, x).block_until_ready(), 3)
    del jnp
    return {"batch": batch, "seq": 16, "steps": steps, "chunk": chunk, "ig_s": ig,
            "batched_forward_backward_s": plain, "ratio": ig / plain}


GIB = 1024 ** 3


def probes_md(p: dict, title: str) -> list[str]:
    L, n, d = p["shape"]
    alone = sum(p["bertjax_single_layers_s"])
    lines = [f"## {title}{L} layers' linear probes, features [{L}, {n}, {d}], {p['classes']} "
             f"classes, C={p['C']}, {p['held_out']} held out", "",
             "| | seconds |", "|---|---|",
             f"| bertjax `probe_layers`, all {L} layers in one program (warm) | "
             f"{p['bertjax_s']:.2f} |",
             f"| the same, first call (with compilation) | {p['bertjax_first_call_s']:.2f} |",
             f"| bertjax, each layer alone, summed (warm) | {alone:.2f} |",
             f"| bertjax, the layers vmapped in lockstep (`parallel=True`, warm) | "
             f"{p['bertjax_vmapped_s']:.2f} |",
             f"| scikit-learn `LogisticRegression`, {L} layers one by one | "
             f"{p['sklearn_s']:.2f} |", ""]
    if "overhead_ratio_repeats" in p:
        reps = ", ".join(f"{a:.2f} / {b:.2f} = {a / b:.2f}" for a, b in
                         zip(p["bertjax_repeats_s"], p["bertjax_single_layers_sum_repeats_s"]))
        lines += [f"{L} layers in one program / the {L} layers alone, {p['repeats']} interleaved "
                  f"repeats (seconds): {reps}; median {p['overhead_ratio_median']:.2f}, best "
                  f"against best {p['overhead_ratio_best']:.2f}. Optimiser steps in one program "
                  f"{p['bertjax_steps']}, alone {p['bertjax_single_steps']}.", ""]
    else:
        lines += [f"{L} layers in one program / the {L} layers alone = "
                  f"{p['bertjax_s'] / alone:.2f} (each warm time the best of 2).", ""]
    lines += [f"scikit-learn / bertjax = {p['sklearn_s'] / p['bertjax_s']:.1f}x; largest held-out "
              f"accuracy gap {100 * p['max_accuracy_gap']:.2f} points.", ""]
    return lines


def overhead_md(o: dict, title: str) -> list[str]:
    L, n, d = o["shape"]
    reps = ", ".join(f"{a:.2f} / {b:.2f} = {a / b:.2f}" for a, b in
                     zip(o["bertjax_repeats_s"], o["bertjax_single_layers_sum_repeats_s"]))
    return [f"## {title}{L} layers in one program against each layer alone, [{L}, {n}, {d}]", "",
            f"Load average {o['load_start']} -> {o['load_end']}. {o['repeats']} interleaved "
            f"repeats (seconds, all layers / the layers alone summed): {reps}; median "
            f"{o['overhead_ratio_median']:.2f}, best against best {o['overhead_ratio_best']:.2f}. "
            f"Optimiser steps in one program {o['bertjax_steps']}, alone "
            f"{o['bertjax_single_steps']}.", ""]


def ig_md(g: dict, title: str) -> list[str]:
    return [f"## {title}Integrated gradients, MiniLM, B={g['batch']}, S={g['seq']}, {g['steps']} "
            f"steps in chunks of {g['chunk']}", "",
            "| | seconds |", "|---|---|",
            f"| `integrated_gradients` (warm) | {g['ig_s']:.3f} |",
            f"| one jitted forward + backward of the same {g['steps']} x {g['batch']} rows | "
            f"{g['batched_forward_backward_s']:.3f} |", "",
            f"ratio {g['ratio']:.2f}.", ""]


def stream_md(s: dict) -> list[str]:
    L, n, d = s["shape"]
    gib = lambda b: f"{b / GIB:.2f} GiB"
    b, pk, e = s["rss_before"], s["rss_peak_sampled"], s["rss_end"]
    return [f"## Streaming {n:,} words x {L} layers x {d} dims from an extract store", "",
            f"Synthetic store ({s['dtype']}, {s['examples']} sentences of {SENTENCE} words, random "
            f"values): {gib(s['store_bytes'])} on disk, {gib(s['float32_bytes'])} as float32 "
            f"features; written in {s['write_s']:.0f} s. `word_batches` + `probe_stream`, batches "
            f"of {s['batch_size']} words, {s['epochs']} epochs, {s['batches_read']} batches read "
            f"in {s['seconds']:.0f} s, in a fresh process:", "",
            "| resident memory | before streaming | peak (sampled after each batch) | end |",
            "|---|---|---|---|",
            f"| RSS | {gib(b['VmRSS'])} | {gib(pk['VmRSS'])} | {gib(e['VmRSS'])} |",
            f"| anonymous (the process's own) | {gib(b['RssAnon'])} | {gib(pk['RssAnon'])} | "
            f"{gib(e['RssAnon'])} |",
            f"| file-backed (memory-mapped shards, page cache) | {gib(b['RssFile'])} | "
            f"{gib(pk['RssFile'])} | {gib(e['RssFile'])} |", "",
            f"Peak RSS of the process (VmHWM) {gib(e['VmHWM'])}: "
            f"{e['VmHWM'] / s['float32_bytes']:.2f} of the float32 data, "
            f"{e['VmHWM'] / s['store_bytes']:.2f} of the store (ru_maxrss "
            f"{gib(s['ru_maxrss_bytes'])} carries the forking benchmark's own high-water mark "
            f"across exec, so VmHWM is the figure).", ""]


def markdown(r: dict) -> str:
    lines = ["# Probing and integrated gradients (benchmarks/bench_probe.py)", "",
             f"CPU: {machine.cpu_line(r['cpu'])}; load average {r['load_start']} -> "
             f"{r['load_end']}; {r['versions']}", ""]
    if "probes" in r:
        lines += probes_md(r["probes"], "")
    for key, title in (("overhead", ""), ("overhead_recheck", "Recheck: ")):
        if key in r:
            lines += overhead_md(r[key], title)
    if "ig" in r:
        lines += ig_md(r["ig"], "")
    if "stream" in r:
        lines += stream_md(r["stream"])
    old = r.get("earlier")
    if old:
        lines += ["# Earlier run", "", f"load average {old['load_start']} -> {old['load_end']}; "
                  f"{old['versions']}", ""]
        if "probes" in old:
            lines += probes_md(old["probes"], "Earlier run: ")
        if "ig" in old:
            lines += ig_md(old["ig"], "Earlier run: ")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="probes,ig,stream",
                    help="comma-separated: probes, overhead (only the one-program / alone repeats), "
                         "ig, stream (default probes, ig, stream)")
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--stream-words", type=int, default=100_000)
    ap.add_argument("--stream-dtype", choices=("F16", "F32"), default="F16")
    ap.add_argument("--stream-dir", default=os.path.join("/tmp", f"bench_probe_store_{os.getpid()}"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--stream-child", help=argparse.SUPPRESS)
    ap.add_argument("--earlier", help="an earlier result JSON to keep in the report")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "probe"))
    args = ap.parse_args(argv)
    if args.stream_child:
        import json

        print(json.dumps(stream_child(args.stream_child, args.classes, args.epochs,
                                      args.batch_size)))
        return
    import jax
    import sklearn

    parts = set(args.parts.split(","))
    known = {"probes", "overhead", "ig", "stream"}
    if parts - known:
        raise SystemExit(f"--parts: unknown {sorted(parts - known)}")
    result = {"cpu": machine.cpu_info(), "load_start": machine.load_average(),
              "versions": f"python {platform.python_version()}, jax {jax.__version__}, "
                          f"scikit-learn {sklearn.__version__}"}
    if "probes" in parts:
        result["probes"] = bench_probes(args.layers, args.n, args.dim, args.classes, args.C,
                                        args.repeats)
    if "overhead" in parts:
        x, y = features(args.layers, args.n, args.dim, args.classes)
        held = np.sort(np.random.default_rng(1).permutation(args.n)[: args.n // 5])
        load = machine.load_average()
        result["overhead"] = {"shape": [args.layers, args.n, args.dim], "load_start": load,
                              **overhead(x, y, held, args.C, args.repeats)[0],
                              "load_end": machine.load_average()}
    if "ig" in parts:
        result["ig"] = bench_ig(args.batch, 64, 16)
    if "stream" in parts:
        result["stream"] = bench_stream(args.stream_words, args.dim, args.layers,
                                        args.stream_dtype, args.epochs, args.batch_size,
                                        args.stream_dir)
    result["load_end"] = machine.load_average()
    if args.earlier:
        import json

        with open(args.earlier) as f:
            old = json.load(f)
        result["earlier"] = {k: v for k, v in old.items() if k != "earlier"}
    machine.write_report(args.out, result, markdown)


if __name__ == "__main__":
    main()
