"""Worker processes for the benchmarks: each system timed in its own process, driven over a pipe.

Why: in one process with JAX, PyTorch's OpenMP threads wait on XLA's idle threads (bert-base's
forward at (1, 128) ran 14x slower, train steps swung 0.8-8.3 s), so a shared process would measure
that, not the models. The driver starts one worker per system with `Worker`, the worker builds its
system and calls `serve`; then every request is one JSON line on the worker's stdin, answered by
one JSON line on its stdout prefixed with MARK (anything else the worker prints is ignored, so
libraries may log freely). Timings are taken inside the workers.

A benchmark script is its own worker: it runs `script --worker KIND ARGS...` and hands those to
`serve`. Only the standard library here, so any python (e.g. benchmarks/.venv-flax4's) can run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

MARK = "@@ "  # prefix of the worker's reply lines (anything else on its stdout is ignored)


def reply(message: dict) -> None:
    """Worker side: sends one reply line to the driver."""
    print(MARK + json.dumps(message), flush=True)


def serve(handle: Callable[[str, dict], dict]) -> None:
    """Worker side, once the system is built: announces "ready", then answers each request line
    `{"cmd": ..., **args}` with `handle(cmd, args)`; an exception is sent back as {"error": ...}
    (the driver raises it). Returns when the driver closes the pipe."""
    reply({"ready": True})
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            answer = handle(msg.pop("cmd"), msg)
        except Exception as e:  # noqa: BLE001  (any failure is reported to the driver)
            answer = {"error": f"{type(e).__name__}: {e}"}
        reply(answer)


def marked(stdout: str) -> dict:
    """The first MARK line of a finished process's stdout, decoded (for one-shot subprocesses)."""
    return json.loads(next(line for line in stdout.splitlines()
                           if line.startswith(MARK))[len(MARK):])


def first_cores(threads: int | None) -> list[int] | None:
    """The first `threads` cores of this process's affinity mask (None: leave the mask as is)."""
    if threads is None:
        return None
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(cores):
        raise ValueError(f"threads must be between 1 and {len(cores)} (the cores available), "
                         f"got {threads}")
    return cores[:threads]


class Worker:
    """The driver's handle on a worker process: `python script --worker kind *args`.

    threads: restrict the worker to the first `threads` cores of the driver's affinity mask (XLA
    sizes its thread pool from the mask); None inherits the driver's mask. The worker sets its own
    torch thread count (pass it in `args`).
    """

    def __init__(self, kind: str, script: str, *args: str, python: str = sys.executable,
                 threads: int | None = None):
        self.kind = kind
        self._start = (script, args, python, threads)
        self.restart()

    def restart(self) -> None:
        """Starts the worker process (again, after it died) and waits until it is ready."""
        script, args, python, threads = self._start
        cores = first_cores(threads)
        # The driver starts no threads of its own, so a preexec_fn is safe here.
        pin = None if cores is None else lambda: os.sched_setaffinity(0, cores)
        self.proc = subprocess.Popen(
            [python, os.path.abspath(script), "--worker", self.kind, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=pin)  # noqa: PLW1509
        self._read()  # "ready", once the system is built

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                answer = json.loads(line[len(MARK):])
                if "error" in answer:
                    raise RuntimeError(f"{self.kind} worker: {answer['error']}")
                return answer
        raise RuntimeError(f"{self.kind} worker exited with code {self.proc.wait()}")

    def request(self, cmd: str, **msg) -> dict:
        """Sends one command and returns its answer; RuntimeError when the worker reports an error
        or has exited (killed for memory, say), so callers can skip it and go on."""
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **msg}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RuntimeError(f"{self.kind} worker exited with code {self.proc.wait()}") from None
        return self._read()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


def close_all(workers: dict, folder: str) -> None:
    """Close every worker of `workers` (name -> Worker) and remove their scratch `folder`."""
    import shutil

    for w in workers.values():
        w.close()
    shutil.rmtree(folder, ignore_errors=True)


def parse_or_serve(parser, serve_system: Callable[[str, list], None], **helpers):
    """Parse the command line, with the hidden options by which a script runs as its own helper
    process: `--worker KIND ARGS...` calls serve_system(KIND, ARGS), and `--NAME ARGS` (NAME with
    dashes for underscores) calls function(*ARGS) for each NAME=(nargs, function[, type]).

    Returns the parsed options, or None when a helper ran (the script is then done)."""
    import argparse

    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    for name, (nargs, _, *kind) in helpers.items():
        parser.add_argument("--" + name.replace("_", "-"), nargs=nargs, help=argparse.SUPPRESS,
                            type=kind[0] if kind else None)
    args = parser.parse_args()
    if args.worker:
        serve_system(args.worker[0], args.worker[1:])
        return None
    for name, (_, function, *_) in helpers.items():
        if getattr(args, name):
            function(*getattr(args, name))
            return None
    return args


def parse_shapes(text: str) -> tuple:
    """--shapes "8x128,32x128" -> ((8, 128), (32, 128))."""
    try:
        return tuple(tuple(int(n) for n in item.lower().split("x")) for item in text.split(","))
    except ValueError:
        raise SystemExit(f"--shapes wants e.g. 8x128,32x128, got {text!r}") from None


def timed_rounds(entries: list, call: Callable, rounds: int,
                 failed: Callable | None = None) -> dict:
    """Two warm-up calls of each entry, then `rounds` rounds that call every entry once, each
    round starting one entry later (so no entry always runs first); call(entry) returns seconds.
    Returns entry -> {median_s, p25_s, p75_s, min_s, max_s, n, times_s}. (The driver's side: numpy.)

    failed(entry, error): where given, a call raising RuntimeError (its worker killed for memory,
    say) is handed to it (to restart the worker) and the entry is left out of the rest and of the
    result; without it the error propagates."""
    import numpy as np

    times, dropped = {e: [] for e in entries}, set()

    def timed(e, keep: bool) -> None:
        if e in dropped:
            return
        try:
            seconds = call(e)
        except RuntimeError as error:
            if failed is None:
                raise
            dropped.add(e)
            failed(e, error)
            return
        if keep:
            times[e].append(seconds)

    for e in entries:
        timed(e, False), timed(e, False)
    for r in range(rounds):
        k = r % len(entries)
        for e in entries[k:] + entries[:k]:
            timed(e, True)
    out = {}
    for e, got in times.items():
        if e in dropped:
            continue
        t = np.asarray(got)
        out[e] = {"median_s": float(np.median(t)), "p25_s": float(np.percentile(t, 25)),
                  "p75_s": float(np.percentile(t, 75)), "min_s": float(t.min()),
                  "max_s": float(t.max()), "n": len(got), "times_s": got}
    return out
