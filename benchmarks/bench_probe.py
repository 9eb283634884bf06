"""Probing and attribution speed: every layer's probe in one program against scikit-learn layer by
layer, and integrated gradients against the batched forward + backward passes it is made of.

    .venv/bin/python benchmarks/bench_probe.py                # 13 x 20000 x 768, 17 classes
    .venv/bin/python benchmarks/bench_probe.py --n 4000 --quick

Probes: features [L=13, N, D=768] with class structure growing with the layer (Gaussian class
centres scaled by the layer, plus noise), the same held-out split and the same L2 (C) for both;
bertjax's `probe_layers` (L-BFGS, compiled once: the first call's time is reported apart; warm
times are the best of 2) against `sklearn.linear_model.LogisticRegression(C=C)` (lbfgs, its defaults: tol
1e-4, max_iter 100) fitted on each layer in turn. Also one layer alone (the per-layer overhead:
13 layers together should cost at most 1.2x the 13 layers fitted alone on CPU), and the layers
vmapped in lockstep (`parallel=True`, the accelerator default) for comparison.
Integrated gradients: the offline MiniLM, B sentences, site embed.out, 64 trapezoid steps in
chunks of 16, against one jitted forward + backward of the same 64 x B rows (the path's work
done as a plain batched gradient); both warm. Results: benchmarks/results/probe.{json,md}.
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


def bench_probes(L, n, d, k, C):
    from sklearn.linear_model import LogisticRegression

    import bertjax

    x, y = features(L, n, d, k)
    held = np.sort(np.random.default_rng(1).permutation(n)[: n // 5])
    train = np.setdiff1d(np.arange(n), held)
    first, _ = timed(lambda: bertjax.probe_layers(x, y, dev=held, C=C))
    ours, r = timed(lambda: bertjax.probe_layers(x, y, dev=held, C=C), 2)
    bertjax.probe_layers(x[:1], y, dev=held, C=C)  # compile the one-layer program
    singles = [timed(lambda lay=lay: bertjax.probe_layers(x[lay:lay + 1], y, dev=held, C=C), 2)[0]
               for lay in range(L)]
    bertjax.probe_layers(x, y, dev=held, C=C, parallel=True)
    lockstep, _ = timed(lambda: bertjax.probe_layers(x, y, dev=held, C=C, parallel=True))
    sk_times, sk_acc = [], []
    for layer in range(L):
        t, m = timed(lambda lay=layer: LogisticRegression(C=C).fit(x[lay, train], y[train]))
        sk_times.append(t)
        sk_acc.append(float(m.score(x[layer, held], y[held])))
    return {"shape": [L, n, d], "classes": k, "C": C, "held_out": int(len(held)),
            "bertjax_first_call_s": first, "bertjax_s": ours, "bertjax_single_layers_s": singles,
            "bertjax_vmapped_s": lockstep,
            "sklearn_s": float(sum(sk_times)), "sklearn_per_layer_s": sk_times,
            "bertjax_accuracy": [float(a) for a in r.accuracy], "sklearn_accuracy": sk_acc,
            "max_accuracy_gap": float(np.max(np.abs(np.array(sk_acc) - r.accuracy))),
            "bertjax_steps": [int(s) for s in r.steps]}


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


def markdown(r: dict) -> str:
    p, g = r["probes"], r["ig"]
    L, n, d = p["shape"]
    lines = [
        "# Probing and integrated gradients (benchmarks/bench_probe.py)", "",
        f"CPU: {machine.cpu_line(r['cpu'])}; load average {r['load_start']} -> {r['load_end']}; "
        f"{r['versions']}", "",
        f"## {L} layers' linear probes, features [{L}, {n}, {d}], {p['classes']} classes, "
        f"C={p['C']}, {p['held_out']} held out", "",
        "| | seconds |", "|---|---|",
        f"| bertjax `probe_layers`, all {L} layers in one program (warm) | {p['bertjax_s']:.2f} |",
        f"| the same, first call (with compilation) | {p['bertjax_first_call_s']:.2f} |",
        f"| bertjax, each layer alone, summed (warm) | {sum(p['bertjax_single_layers_s']):.2f} |",
        f"| bertjax, the layers vmapped in lockstep (`parallel=True`, warm) | "
        f"{p['bertjax_vmapped_s']:.2f} |",
        f"| scikit-learn `LogisticRegression`, {L} layers one by one | {p['sklearn_s']:.2f} |", "",
        f"{L} layers in one program / the {L} layers alone = "
        f"{p['bertjax_s'] / sum(p['bertjax_single_layers_s']):.2f}; scikit-learn / bertjax = "
        f"{p['sklearn_s'] / p['bertjax_s']:.1f}x; largest held-out accuracy gap "
        f"{100 * p['max_accuracy_gap']:.2f} points.", "",
        f"## Integrated gradients, MiniLM, B={g['batch']}, S={g['seq']}, {g['steps']} steps in "
        f"chunks of {g['chunk']}", "",
        "| | seconds |", "|---|---|",
        f"| `integrated_gradients` (warm) | {g['ig_s']:.3f} |",
        f"| one jitted forward + backward of the same {g['steps']} x {g['batch']} rows | "
        f"{g['batched_forward_backward_s']:.3f} |", "",
        f"ratio {g['ratio']:.2f}.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "probe"))
    args = ap.parse_args(argv)
    import jax
    import sklearn

    result = {"cpu": machine.cpu_info(), "load_start": machine.load_average(),
              "versions": f"python {platform.python_version()}, jax {jax.__version__}, "
                          f"scikit-learn {sklearn.__version__}"}
    result["probes"] = bench_probes(args.layers, args.n, args.dim, args.classes, args.C)
    result["ig"] = bench_ig(args.batch, 64, 16)
    result["load_end"] = machine.load_average()
    machine.write_report(args.out, result, markdown)


if __name__ == "__main__":
    main()
