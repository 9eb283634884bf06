"""Examples per second of `bertjax extract` against the number of devices (1, 2, 4 forced host
devices).

The model is the real all-MiniLM-L6-v2 (`bertjax.checkpoints.pretrained.load_pretrained(None)`, the CLI's
default `--model`: 6 layers, D 384, 12 heads, I 1536). The corpus is generated: lines of 4 to 60
words drawn from the model's vocabulary (seeded), so token lengths spread over the buckets
16, 32, 64 and 128 (`--max-length 128`). The request is a probing one: `--capture layer.out --reduce
mean` over all 6 layers, batch 32, chunks of 128 lines.

One worker process per device count, started with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` (XLA reads it when jax starts, so each count
needs its own process). Each worker loads the model and runs the whole extraction once to compile
every bucket, then waits for its turn: the rounds are interleaved (1, 2, 4 devices, then again),
so that the machine's load hits every count alike, and the ratios to 1 device are taken within a
round. Two numbers per run:

* extract: `extract()` end to end on the loaded model (stream, tokenize, sharded forward, strip,
  write shards and manifests), examples / wall seconds;
* forward: the sharded program underneath alone (`run_chunk` on pre-tokenized chunks: padding,
  device transfer, forward with layer selection and pooling on the devices, copy back), examples /
  seconds.

Forced host devices split the same CPU cores: the numbers show what sharding costs or saves on one
machine (the mechanism's overhead and scaling), not more compute. With `--default-backend` a fourth
worker runs on whatever jax finds without forcing (a GPU, when there is one).

Usage:  .venv/bin/python benchmarks/bench_extract.py [--lines 512] [--rounds 3] [--default-backend]
Writes benchmarks/results/extract.json and benchmarks/results/extract.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from machine import cpu_info

HERE = os.path.dirname(os.path.abspath(__file__))
COUNTS = (1, 2, 4)
SETTINGS = {"capture": ("layer.out",), "reduce": "mean", "batch_size": 32, "max_length": 128,
            "chunk_size": 128}


def write_corpus(path: str, lines: int, vocab_file: str, seed: int = 0) -> dict:
    """Random lines of 4..60 whole words from the vocabulary; returns their word counts."""
    import random

    with open(vocab_file, encoding="utf-8") as f:
        words = [w.strip() for w in f if w.strip().isalpha() and w.strip().islower()]
    rng = random.Random(seed)
    counts = []
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            n = rng.randint(4, 60)
            counts.append(n)
            f.write(" ".join(rng.choices(words, k=n)) + "\n")
    return {"lines": lines, "words_mean": statistics.mean(counts), "words_max": max(counts)}


# ---- worker: one per device count, driven over stdin ----

def worker(corpus: str, scratch: str) -> None:
    import shutil

    import jax
    import jax.numpy as jnp

    from bertjax.checkpoints.pretrained import load_pretrained
    from bertjax.model.params import Heads
    from bertjax.scale.extract import (
        Options,
        build_model,
        extract,
        parse_chunk,
        raw_chunks,
        resolve_request,
        run_chunk,
        tokenize,
    )

    pre = load_pretrained(None, jnp.float32)

    def options(out):
        return Options(corpus, out, **SETTINGS)

    opts = options(os.path.join(scratch, "warmup"))
    names, layers, max_length = resolve_request(opts, pre.config, Heads.of(pre.params))
    model = build_model(opts, pre, names, layers, max_length)
    chunks = [tokenize(model.tokenizer, parse_chunk(c, opts), max_length)
              for c in raw_chunks(corpus, opts.chunk_size)]
    examples = sum(len(c) for c in chunks)
    start = time.perf_counter()
    extract(opts, progress=False, pretrained=pre)  # compiles every bucket
    print(json.dumps({"ready": True, "devices": len(jax.local_devices()),
                      "platform": jax.local_devices()[0].platform,
                      "warmup_s": time.perf_counter() - start}), flush=True)

    class NoBar:
        def update(self, n):
            pass

    for line in sys.stdin:
        out = os.path.join(scratch, f"run-{line.strip()}")
        start = time.perf_counter()
        summary = extract(options(out), progress=False, pretrained=pre)
        extract_s = time.perf_counter() - start
        start = time.perf_counter()
        for chunk in chunks:
            run_chunk(model, chunk, NoBar())
        forward_s = time.perf_counter() - start
        shutil.rmtree(out)
        print(json.dumps({"examples": summary["written"], "extract_s": extract_s,
                          "forward_s": forward_s, "forward_examples": examples}), flush=True)


# ---- driver ----

def start_worker(devices: int | None, corpus: str, scratch: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if devices is None:
        env.pop("XLA_FLAGS", None)
    else:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                   JAX_PLATFORMS="cpu")
    folder = os.path.join(scratch, f"worker-{devices or 'default'}")
    os.makedirs(folder)
    return subprocess.Popen([sys.executable, __file__, "--worker", corpus, folder], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def read_reply(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker exited with {proc.wait()}")
    return json.loads(line)


def rates(runs: list[dict], examples: str, seconds: str) -> list[float]:
    return [x[examples] / x[seconds] for x in runs]


def markdown(result: dict) -> str:
    rows = ["| devices | extract ex/s (range) | vs 1 device | forward ex/s (range) | vs 1 device |",
            "|---|---|---|---|---|"]
    for name, r in result["by_devices"].items():
        ext = rates(r["runs"], "examples", "extract_s")
        fwd = rates(r["runs"], "forward_examples", "forward_s")
        rows.append(f"| {name} | {r['extract_examples_per_s']:.1f} ({min(ext):.0f}-{max(ext):.0f}) "
                    f"| {r['extract_vs_1']:.2f}x | {r['forward_examples_per_s']:.1f} "
                    f"({min(fwd):.0f}-{max(fwd):.0f}) | {r['forward_vs_1']:.2f}x |")
    c, s = result["corpus"], result["settings"]
    return "\n".join([
        f"`bertjax extract` on all-MiniLM-L6-v2, {c['lines']} generated lines "
        f"({c['words_mean']:.0f} words on average, {c['tokens_mean']:.0f} tokens), "
        f"--capture {','.join(s['capture'])} --reduce {s['reduce']} --batch-size "
        f"{s['batch_size']} --max-length {s['max_length']}; medians of {result['rounds']} "
        f"interleaved rounds (range: slowest and fastest round), ratios within a round. "
        f"{result['machine']}, load average {result['load_average'][0]:.1f} at the end.",
        "", *rows, "",
        "Forced host devices share the same CPU cores: the ratios show the overhead and scaling "
        "of the sharding mechanism on one machine, not more compute.", ""])


def write_results(result: dict) -> str:
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "extract.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    with open(os.path.join(HERE, "results", "extract.md"), "w") as f:
        f.write(table)
    return table


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        return worker(*sys.argv[2:4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--default-backend", action="store_true",
                        help="also a worker on jax's default devices without forcing (a GPU)")
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite results/extract.md from results/extract.json, run nothing")
    args = parser.parse_args()
    if args.table_only:
        with open(os.path.join(HERE, "results", "extract.json")) as f:
            return print(write_results(json.load(f)))

    from bertjax.checkpoints.pretrained import load_pretrained

    pre = load_pretrained(None)  # converts the offline MiniLM into the user cache on first use
    with tempfile.TemporaryDirectory() as scratch:
        corpus_path = os.path.join(scratch, "corpus.txt")
        corpus = write_corpus(corpus_path, args.lines, os.path.join(pre.folder, "vocab.txt"))
        with open(corpus_path, encoding="utf-8") as f:
            tokens = [len(pre.tokenizer(x.rstrip("\n"), truncation=True, max_length=128)
                          ["input_ids"]) for x in f]
        corpus["tokens_mean"] = statistics.mean(tokens)
        systems = list(COUNTS) + ([None] if args.default_backend else [])
        workers, ready = {}, {}
        for n in systems:  # one at a time: their warm-ups would otherwise compete
            workers[n] = start_worker(n, corpus_path, scratch)
            ready[n] = read_reply(workers[n])
            print(f"worker {n or 'default'}: {ready[n]}", file=sys.stderr)
        runs = {n: [] for n in systems}
        for r in range(args.rounds):
            for n in systems:
                workers[n].stdin.write(f"{r}\n")
                workers[n].stdin.flush()
                runs[n].append(read_reply(workers[n]))
                print(f"round {r}, {n or 'default'}: {runs[n][-1]}", file=sys.stderr)
        for proc in workers.values():
            proc.stdin.close()
            proc.wait()
    import jax

    by_devices = {}
    extract_rates = {n: rates(runs[n], "examples", "extract_s") for n in systems}
    forward_rates = {n: rates(runs[n], "forward_examples", "forward_s") for n in systems}
    for n in systems:
        name = str(n) if n else f"{ready[n]['devices']} ({ready[n]['platform']}, default)"
        by_devices[name] = {
            "extract_examples_per_s": statistics.median(extract_rates[n]),
            "forward_examples_per_s": statistics.median(forward_rates[n]),
            "extract_vs_1": statistics.median(a / b for a, b in zip(extract_rates[n],
                                                                    extract_rates[1])),
            "forward_vs_1": statistics.median(a / b for a, b in zip(forward_rates[n],
                                                                    forward_rates[1])),
            "warmup_s": ready[n]["warmup_s"], "runs": runs[n]}
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"jax {jax.__version__}, {platform.python_version()}")
    result = {"model": "all-MiniLM-L6-v2", "corpus": corpus, "settings": SETTINGS,
              "rounds": args.rounds, "machine": machine, "cpu_info": cpu_info(),
              "load_average": os.getloadavg(), "by_devices": by_devices}
    print(write_results(result))


if __name__ == "__main__":
    main()
