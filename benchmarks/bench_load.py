"""Memory of a loaded model: `bertjax.load` per-layer and `stacked=True`, against transformers.

Each case runs in a fresh process: load the model, then two forwards at (B, S) (capture=()),
and reports the peak resident memory (VmHWM) and the resident memory (VmRSS) after the load and
after the forwards, and the load's wall time. The cases:

  bertjax per-layer    bertjax.load(SRC), what forward then stacks once and keeps beside it
  bertjax stacked      bertjax.load(SRC, stacked=True): stacked while reading
  transformers         BertForPreTraining.from_pretrained(HF folder), two forwards under no_grad
                       (the reference: PyTorch holds the model once)

SRC is the bert-base random weights (transformers' BertForPreTraining, torch.manual_seed(0), the
same as benchmarks/bench_capture.py) as an HF folder (converted in memory) and as a folder
`bertjax convert` wrote. `--code DIR` (repeatable) runs the bertjax cases against other source
trees (through PYTHONPATH), e.g. an older commit for a before / after comparison; a tree whose
`load` has no `stacked` reports that case as not available.

Usage:  .venv/bin/python benchmarks/bench_load.py [--rounds 2] [--code . --code /tmp/old]
Writes benchmarks/results/load.json and load.md (--out DIR).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import cpu_info, cpu_line, load_average, write_report  # noqa: E402
from workers import MARK, marked  # noqa: E402

# Runs in the fresh process: argv = benchmarks folder, kind, source, B, S. Replies (workers.reply).
CASE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from machine import vm
from workers import reply
kind, src, B, S = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
memory = lambda: {"hwm": vm("VmHWM"), "rss": vm("VmRSS")}

import numpy as np
ids = lambda vocab: np.random.default_rng(0).integers(0, vocab, (B, S)).astype(np.int32)
if kind == "transformers":
    import torch, transformers
    base = memory()
    t0 = time.perf_counter()
    model = transformers.BertForPreTraining.from_pretrained(src).eval()
    load_s = time.perf_counter() - t0
    after_load = memory()
    with torch.no_grad():
        for _ in range(2):
            model.bert(torch.from_numpy(ids(model.config.vocab_size)).long())
else:
    import jax, bertjax
    base = memory()
    kwargs = {"stacked": True} if kind == "stacked" else {}
    t0 = time.perf_counter()
    try:
        config, params = bertjax.load(src, **kwargs)
    except TypeError as e:
        reply({"unavailable": str(e)})
        sys.exit(0)
    jax.block_until_ready(params)
    load_s = time.perf_counter() - t0
    after_load = memory()
    for _ in range(2):
        jax.block_until_ready(bertjax.forward(params, ids(config.vocab_size), config))
reply({"base": base, "after_load": after_load, "after_forward": memory(), "load_s": load_s})
"""


def prepare(work: str) -> dict:
    """The HF folder and the converted folder of the random bert-base weights (made once)."""
    from bench_capture import write_weights

    hf, converted = os.path.join(work, "hf"), os.path.join(work, "converted")
    if not os.path.isfile(os.path.join(hf, "config.json")):
        write_weights(hf, "base")
    if not os.path.isdir(converted):
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "bertjax"), "convert", hf,
                        converted], check=True, capture_output=True)
    return {"hf": hf, "converted": converted}


def run_case(kind: str, src: str, code: str | None, B: int, S: int) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1")
    if code:
        env["PYTHONPATH"] = os.path.abspath(code)
    proc = subprocess.run([sys.executable, "-c", CASE, HERE, kind, src, str(B), str(S)], env=env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode or MARK not in proc.stdout:
        raise RuntimeError(f"{kind} on {src} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return marked(proc.stdout)


def describe(code: str) -> str:
    """'name @ commit subject' of a source tree (git; '+ uncommitted changes' where its bertjax
    package differs from the commit), or its path."""
    git = lambda *a: subprocess.run(["git", "-C", code, *a], check=True, capture_output=True,
                                    text=True).stdout.strip()
    try:
        line, dirty = git("log", "-1", "--format=%h %s"), git("status", "--porcelain", "bertjax")
    except (OSError, subprocess.CalledProcessError):
        return os.path.abspath(code)
    return (f"{os.path.basename(os.path.abspath(code))} @ {line[:48]}"
            + (" + uncommitted changes" if dirty else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per case")
    parser.add_argument("--shape", default="8x128", help="B x S of the two forwards")
    parser.add_argument("--code", action="append", help="bertjax source trees (default: .)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bertjax-bench-load"))
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    B, S = (int(x) for x in args.shape.split("x"))
    codes = args.code or [os.path.dirname(HERE)]
    start = time.time()
    load_start = load_average()
    sources = prepare(args.work)
    cases = [(code, kind, name) for code in codes for name in sources
             for kind in ("per-layer", "stacked")] + [(None, "transformers", "hf")]
    runs: dict = {}
    for _ in range(args.rounds):  # rounds interleaved: each case once per round
        for code, kind, name in cases:
            runs.setdefault((code, kind, name), []).append(run_case(kind, sources[name], code, B, S))
    rows = []
    for code, kind, name in cases:
        got = runs[code, kind, name]
        row = {"code": describe(code) if code else "", "case": kind, "source": name}
        if "unavailable" in got[0]:
            row["unavailable"] = got[0]["unavailable"]
        else:
            for stage in ("after_load", "after_forward"):
                for field in ("hwm", "rss"):
                    row[f"{stage}_{field}"] = statistics.median(r[stage][field] for r in got)
            row["base_rss"] = statistics.median(r["base"]["rss"] for r in got)
            row["load_s"] = statistics.median(r["load_s"] for r in got)
        rows.append(row)
    import jax
    import torch
    import transformers

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "minutes": (time.time() - start) / 60,
              "command": " ".join(["benchmarks/bench_load.py"] + sys.argv[1:]),
              "machine": {"cpu_info": cpu_info()}, "load_start": load_start,
              "load_end": load_average(), "shape": [B, S], "rounds": args.rounds,
              "versions": {"jax": jax.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__},
              "rows": rows}
    write_report(os.path.join(args.out, "load"), result, markdown)


def markdown(r: dict) -> str:
    mib = lambda b: f"{b / 2**20:.0f}"
    B, S = r["shape"]
    out = ["# Memory of a loaded model (bert-base, fp32, CPU)", "",
           f"Run of {r['date']} ({r['minutes']:.1f} min, `{r['command']}`); each case in a fresh "
           f"process, median of {r['rounds']} rounds (interleaved). Random BertForPreTraining "
           f"weights (seed 0) as an HF folder (`hf`, converted in memory) and as a `bertjax "
           f"convert` folder (`converted`); then two forwards at ({B}, {S}), capture=().", "",
           f"- CPU: {cpu_line(r['machine']['cpu_info'])}",
           "- versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
           "- peak = VmHWM (the process's high-water mark, interpreter and libraries included); "
           "resident = VmRSS at that point; the interpreter with its libraries imported is "
           "`before load`", "",
           "| code | case | source | before load MiB | load s | peak after load MiB | resident "
           "after load MiB | peak after forwards MiB | resident after forwards MiB |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        head = f"| {row['code']} | {row['case']} | {row['source']} |"
        if "unavailable" in row:
            out.append(head + " not available in this tree | | | | | |")
            continue
        out.append(head + f" {mib(row['base_rss'])} | {row['load_s']:.1f} | "
                   f"{mib(row['after_load_hwm'])} | {mib(row['after_load_rss'])} | "
                   f"{mib(row['after_forward_hwm'])} | {mib(row['after_forward_rss'])} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
