"""Start-up of the `bertjax` command: the wall time of a whole process, from exec to exit.

Each command runs in a fresh process (the installed console script, or `python -c` for the import
references), once per round, the commands interleaved within a round so that they share the same
load; after one untimed warm-up round (the page cache), `--rounds` timed rounds. Reported: the median
and the min-max per command.

The commands:
  bertjax --help / --version / convert --help    what the issue wants under 1 s
  convert MISSING OUT                            a refusal (no such source): exits before JAX
  fill-mask on a model without MLM head          a refusal from the parameter names
  convert TINY OUT                               a whole conversion of a tiny checkpoint (10,884
                                                 parameters): start-up is nearly all of it
  inspect, warm                                  `bertjax inspect` on the default model, already
                                                 converted into the run's BERTJAX_CACHE (and, where
                                                 the tree turns it on, its compilation cache filled)
                                                 by the warm-up round: what a user's second run costs
  python -c "import jax"                         the reference: what any JAX work costs first
  python -c "import bertjax.checkpoints.checkpoint"  what convert imports before it starts working

`--code DIR` (repeatable) runs the same commands against other source trees of bertjax (through
PYTHONPATH, as an editable checkout), e.g. an older commit for a before / after comparison.

`--only NAME` (repeatable, a substring of a command's name) runs only those commands.

Usage:  .venv/bin/python benchmarks/bench_startup.py [--rounds 5] [--code . --code ../old] [--only inspect]
Writes benchmarks/results/startup.json and startup.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BERTJAX = os.path.join(os.path.dirname(sys.executable), "bertjax")


def _make_tiny():
    spec = importlib.util.spec_from_file_location(
        "make_tiny_checkpoint", os.path.join(ROOT, "conversion", "make_tiny_checkpoint.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands(work: str) -> dict[str, list[str]]:
    """name -> argv; `{out}` is replaced by a fresh folder for each run."""
    tiny, bare = os.path.join(work, "tiny-mlm"), os.path.join(work, "tiny-model")
    return {
        "bertjax --help": [BERTJAX, "--help"],
        "bertjax --version": [BERTJAX, "--version"],
        "bertjax convert --help": [BERTJAX, "convert", "--help"],
        "convert, no such source (refused)": [BERTJAX, "convert", "./no-such-model", "{out}"],
        "fill-mask, no MLM head (refused)": [BERTJAX, "fill-mask", "a [MASK]", "--model", bare],
        "convert a tiny checkpoint (whole run)": [BERTJAX, "convert", tiny, "{out}"],
        "inspect, warm": [BERTJAX, "inspect"],
        "python -c 'import jax'": [sys.executable, "-c", "import jax"],
        "python -c 'import bertjax.checkpoints.checkpoint'":
            [sys.executable, "-c", "import bertjax.checkpoints.checkpoint"],
    }


def run_once(argv: list[str], code: str, out: str, cache: str) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": code, "HF_HUB_OFFLINE": "1", "BERTJAX_CACHE": cache}
    argv = [a.replace("{out}", out) for a in argv]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return wall, proc.returncode


def git(code: str, *args: str, fallback: str) -> str:
    """`git -C code args...`'s output, or `fallback` where git or the checkout is missing."""
    try:
        return subprocess.run(["git", "-C", code, *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return fallback


def describe(code: str) -> str:
    commit = git(code, "log", "-1", "--format=%h %s", fallback="not a git checkout")
    return f"{os.path.abspath(code)} ({commit[:70]})"


def machine() -> dict:
    import jax
    import transformers

    return {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "jax": jax.__version__,
            "transformers": transformers.__version__, "platform": platform.platform()}


def markdown(result: dict) -> str:
    codes = list(result["trees"])
    lines = ["# Start-up of the `bertjax` command", "",
             f"Wall time of a whole process, exec to exit; median (min-max) of {result['rounds']} "
             f"rounds after a warm-up round, commands interleaved. Run of {result['date']} "
             f"(`benchmarks/bench_startup.py`); load average at start {result['load_start']}, at "
             f"end {result['load_end']}; {result['machine']['affinity']} cores.", ""]
    for label, tree in result["trees"].items():
        lines.append(f"- {label}: {tree['code']}")
    lines += ["", "Seconds, and the exit status (0: ran; 2: refused with one line, as meant, or "
              "argparse's usage error, e.g. for `--version` before it existed).", "",
              "| command | " + " | ".join(f"{c} s | exit" for c in codes) + " |",
              "|---|" + "---:|---:|" * len(codes)]
    for name in result["commands"]:
        cells = []
        for c in codes:
            r = result["trees"][c]["results"][name]
            cells.append(f"{r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f}) | {r['exit']}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def label(code: str) -> str:
    """A tree's column name: its folder and commit."""
    commit = git(code, "rev-parse", "--short", "HEAD", fallback="no git")
    return f"{os.path.basename(os.path.abspath(code))} @ {commit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--code", action="append", help="a bertjax source tree (default: this one)")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only the commands whose name holds NAME (repeatable)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "startup"),
                        help="path of the results, without .json / .md")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite OUT.md from OUT.json (no runs)")
    args = parser.parse_args(argv)
    if args.render:  # the markdown again from the json (e.g. after changing its layout)
        with open(args.out + ".json") as f:
            result = json.load(f)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(result))
        return 0
    codes = args.code or [ROOT]
    labels = [label(code) for code in codes]
    work = tempfile.mkdtemp(prefix="bench_startup-")
    load_start = [round(x, 2) for x in os.getloadavg()]
    try:
        make = _make_tiny()
        make.main([os.path.join(work, "tiny-mlm"), "--head", "mlm"])
        make.main([os.path.join(work, "tiny-model"), "--head", "model"])
        cmds = {n: c for n, c in commands(work).items()
                if not args.only or any(o in n for o in args.only)}
        times = {label: {name: [] for name in cmds} for label in labels}
        exits = {label: {} for label in labels}
        for r in range(args.rounds + 1):  # round 0: warm-up, not kept
            for i, (tree, code) in enumerate(zip(labels, codes)):
                for name, cmd in cmds.items():
                    wall, rc = run_once(cmd, code, os.path.join(work, "out"),
                                        os.path.join(work, f"cache-{i}"))
                    exits[tree][name] = rc
                    if r:
                        times[tree][name].append(wall)
            if r:
                print(f"round {r}: " + ", ".join(f"{n} {times[labels[0]][n][-1]:.2f}"
                                                for n in cmds), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds, "commands": list(cmds),
        "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "trees": {label: {"code": describe(code), "results": {
            name: {"median": round(statistics.median(t), 3), "min": round(min(t), 3),
                   "max": round(max(t), 3), "runs": [round(x, 3) for x in t],
                   "exit": exits[label][name]}
            for name, t in times[label].items()}} for label, code in zip(labels, codes)},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(args.out + ".md", "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
