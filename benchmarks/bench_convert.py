"""Time and peak memory of `bertjax convert` on a bert-base-sized checkpoint.

Builds a random BertForMaskedLM with bert-base's shapes (hidden 768, 12 layers x 12 heads,
intermediate 3072, vocab 30522: 110 M parameters) and saves it with transformers' `save_pretrained`
(safetensors) into a temporary folder, then runs `bertjax convert SRC OUT` in a subprocess, several
times, under `/usr/bin/time -v` for the peak resident memory (falling back to
`resource.getrusage(RUSAGE_CHILDREN)` when /usr/bin/time is missing).

The issue's targets: a few seconds at most, and a peak under 2.5x the checkpoint size. The time and
the peak include the interpreter with jax, flax and numpy imported, which the script measures on its
own (`import bertjax` alone), interleaved with the conversions round by round, so that the
conversion's share can be read off under the same load.

Usage:  .venv/bin/python benchmarks/bench_convert.py [--repeats 3] [--dtype float32]
Writes benchmarks/results/convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from machine import cpu_info

HERE = os.path.dirname(os.path.abspath(__file__))
BERTJAX = os.path.join(os.path.dirname(sys.executable), "bertjax")
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
             "type_vocab_size": 2}


def make_bert_base(folder: str) -> str:
    """A random bert-base-sized BertForMaskedLM saved as model.safetensors; returns the folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**BERT_BASE))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def timed_run(cmd: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one subprocess."""
    use_time = os.path.exists("/usr/bin/time")
    full = ["/usr/bin/time", "-v", *cmd] if use_time else cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(full, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    if use_time:
        kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    else:
        kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if kib <= before:
            raise RuntimeError("getrusage cannot separate this run's peak from an earlier one")
    return wall, kib * 1024


def machine() -> dict:
    """CPU model, core count and library versions."""
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    import flax
    import jax
    import numpy
    import safetensors
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_info": cpu_info(),
            "python": platform.python_version(),
            "jax": jax.__version__, "flax": flax.__version__, "numpy": numpy.__version__,
            "safetensors": safetensors.__version__, "transformers": transformers.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "convert.json"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench_convert-")
    try:
        src = make_bert_base(os.path.join(work, "bert-base"))
        size = os.path.getsize(os.path.join(src, "model.safetensors"))
        runs = []
        for i in range(args.repeats):  # the baseline and the conversion interleaved, round by round
            import_wall, import_rss = timed_run([sys.executable, "-c", "import bertjax"])
            out = os.path.join(work, f"out{i}")
            wall, rss = timed_run([BERTJAX, "convert", src, out, "--dtype", args.dtype])
            runs.append({"seconds": round(wall, 3), "peak_rss_bytes": rss,
                         "import_seconds": round(import_wall, 3), "import_rss_bytes": import_rss})
            print(f"run {i}: {wall:.2f} s, peak RSS {rss / 2**20:.0f} MiB "
                  f"({rss / size:.2f}x the checkpoint); import bertjax alone {import_wall:.2f} s, "
                  f"{import_rss / 2**20:.0f} MiB", flush=True)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = min(runs, key=lambda r: r["seconds"])
    peak = max(r["peak_rss_bytes"] for r in runs)
    import_best = min(r["import_seconds"] for r in runs)
    import_rss = max(r["import_rss_bytes"] for r in runs)
    result = {
        "checkpoint": {"shape": BERT_BASE, "model": "BertForMaskedLM", "format": "safetensors",
                       "bytes": size},
        "dtype": args.dtype, "runs": runs, "best_seconds": best["seconds"],
        "peak_rss_bytes": peak, "peak_over_checkpoint": round(peak / size, 3),
        "import_bertjax_seconds": import_best, "import_bertjax_rss_bytes": import_rss,
        "conversion_seconds_beyond_import": round(best["seconds"] - import_best, 3),
        "conversion_rss_beyond_import_over_checkpoint": round((peak - import_rss) / size, 3),
        "load_average_at_end": os.getloadavg(), "machine": machine(),
        "targets": {"seconds": "a few at most", "peak_over_checkpoint": 2.5},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"checkpoint {size / 2**20:.0f} MiB; best {best['seconds']:.2f} s; peak RSS "
          f"{peak / 2**20:.0f} MiB = {peak / size:.2f}x (import bertjax alone: {import_best:.2f} s, "
          f"{import_rss / 2**20:.0f} MiB); wrote {args.out}")


if __name__ == "__main__":
    main()
