"""Train-step throughput: bertjax's jitted step against transformers' PyTorch
BertForSequenceClassification + torch.optim.AdamW, on the same batch, interleaved round by round.

Both sides do the same work per step: forward with dropout on (p = 0.1), cross-entropy on 2
classes, backward, gradient clipping to global norm 1, and an AdamW update with weight decay off
biases and LayerNorm (the BERT recipe). bertjax: `bertjax.training.train.make_train_step` (one XLA program,
compiled before timing, float32). PyTorch: eager `model(...).loss.backward(); clip_grad_norm_;
optimizer.step()`, with the model's default attention (sdpa), float32.

Each system runs in its own worker process (benchmarks/workers.py), driven over a pipe by this
script: in one process with JAX, PyTorch's OpenMP threads wait on XLA's threads (its step times
swung 0.8-8.3 s). The PyTorch worker builds the model from torch.manual_seed(0) and writes it with
`save_pretrained` to a temporary folder; the bertjax worker reads that folder with `bertjax.load`
(bertjax's converter), so both start from the same weights; both build the same batch of random
ids (NumPy seed 0, no padding). Before timing, the loss with dropout off must agree across the
workers (else the run stops), and each side takes --warmup untimed steps (bertjax's first few
steps after compiling run up to 2x slower). Threads: PyTorch
`torch.set_num_threads(--threads)`; XLA's CPU pool is sized from the affinity mask, which both
workers get set to the first --threads cores (default: all of them). On a machine with a GPU, jax
uses it and PyTorch uses CUDA when its build has it (the devices are recorded).

Sizes: "minilm" (all-MiniLM-L6-v2's shapes: 6 layers, D 384, 12 heads, I 1536, V 30522) and
"bert-base" (12 layers, D 768, 12 heads, I 3072, V 30522), random weights, batch 8 x 128 tokens by
default. Each round times `--steps` steps of one system, then of the other (the order alternating
between rounds), so that the machine's load hits both alike. Reported per size: the median and
p25-p75 of each system's step times over all timed steps, examples/s from the median, the ratio
PyTorch median / bertjax median (> 1: bertjax faster), and the per-round ratio's median and range.

Usage:  .venv/bin/python benchmarks/bench_train.py [--sizes minilm,bert-base] [--rounds 5]
                                                   [--steps 3] [--warmup 3] [--batch 8]
                                                   [--seq 128] [--threads N]
Writes benchmarks/results/train.json and benchmarks/results/train.md (--out to change).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

from machine import cpu_info, load_average, write_report
from workers import Worker, close_all, serve

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {
    "minilm": {"vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
               "num_attention_heads": 12, "intermediate_size": 1536,
               "max_position_embeddings": 512, "type_vocab_size": 2},
    "bert-base": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                  "num_attention_heads": 12, "intermediate_size": 3072,
                  "max_position_embeddings": 512, "type_vocab_size": 2},
}
LR, WEIGHT_DECAY, CLIP = 2e-5, 0.01, 1.0
SYSTEMS = ("bertjax", "torch")
SAME_LOSS_TOL = 1e-4  # |loss_torch - loss_bertjax| with dropout off, same weights and batch


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """The same batch in every worker: random ids (no padding) and random labels of 2 classes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1000, vocab, (batch, seq)).astype(np.int32),
            "token_type_ids": np.zeros((batch, seq), np.int32),
            "attention_mask": np.ones((batch, seq), np.int32),
            "labels": rng.integers(0, 2, (batch,)).astype(np.int32)}


# ---------------------------------------------------------------- the systems (in workers)


class TorchSide:
    """BertForSequenceClassification (train mode) + AdamW with the BERT recipe's param groups.
    Builds the model from seed 0 and writes it to `folder` for the bertjax worker."""

    def __init__(self, size: str, folder: str, batch: int, seq: int, threads: int):
        import torch
        import transformers

        transformers.utils.logging.disable_progress_bar()  # no "Writing model shards" bar
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        config = transformers.BertConfig(**SIZES[size], num_labels=2)
        model = transformers.BertForSequenceClassification(config)
        model.save_pretrained(folder)
        self.model = model.to(self.device)
        self.model.train()  # dropout on
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
        decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=LR)
        self.inputs = {k: torch.as_tensor(v, dtype=torch.long, device=self.device)
                       for k, v in make_batch(batch, seq, config.vocab_size).items()}

    def info(self) -> dict:
        import transformers

        return {"versions": {"torch": self.torch.__version__,
                             "transformers": transformers.__version__},
                "device": self.device, "torch_threads": self.torch.get_num_threads(),
                "torch_interop_threads": self.torch.get_num_interop_threads(),
                "cores_in_affinity_mask": len(os.sched_getaffinity(0))}

    def step(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(**self.inputs).loss
        loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return float(loss.detach())

    def eval_loss(self) -> float:
        """The loss with dropout off, for checking that both sides hold the same weights."""
        self.model.eval()
        with self.torch.no_grad():
            loss = float(self.model(**self.inputs).loss)
        self.model.train()
        return loss


class JaxSide:
    """bertjax.training.train's jitted step from the PyTorch worker's folder, compiled before timing."""

    def __init__(self, folder: str, batch: int, seq: int):
        import jax

        import bertjax
        import bertjax.checkpoints.convert
        from bertjax.training import train as T

        bertjax.convert.PROGRESS_MIN_PARAMS = float("inf")  # no "converting" bar in the output
        self.config, params = bertjax.load(folder)
        tx = T.make_optimizer(LR, weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
        self.state = T.init_state(params, tx)
        self.batch = jax.device_put(make_batch(batch, seq, self.config.vocab_size))
        self.device = str(jax.devices()[0])
        start = time.perf_counter()
        self.fn = T.make_train_step(self.config, "classification", tx).lower(
            self.state, self.batch).compile()
        self.compile_seconds = time.perf_counter() - start

    def info(self) -> dict:
        import flax
        import jax
        import jaxlib
        import optax

        return {"versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                             "flax": flax.__version__, "optax": optax.__version__},
                "device": self.device, "compile_seconds": self.compile_seconds,
                "cores_in_affinity_mask": len(os.sched_getaffinity(0))}

    def eval_loss(self) -> float:
        import jax

        from bertjax.training import train as T

        loss = jax.jit(lambda p, b: T.loss_fn(p, b, self.config, "classification")[0])
        return float(loss(self.state.params, self.batch))

    def step(self) -> float:
        import jax

        self.state, metrics = self.fn(self.state, self.batch)
        jax.block_until_ready(self.state)
        return float(metrics["loss"])


def serve_side(kind: str, args: list[str]) -> None:
    """A worker: builds its side, then answers "info", "eval_loss" and "steps" requests."""
    if kind == "torch":
        side = TorchSide(args[0], args[1], int(args[2]), int(args[3]), int(args[4]))
    else:
        side = JaxSide(args[0], int(args[1]), int(args[2]))

    def handle(cmd: str, msg: dict) -> dict:
        if cmd == "steps":  # timed here, in the worker
            seconds, losses = [], []
            for _ in range(msg["n"]):
                start = time.perf_counter()
                losses.append(side.step())
                seconds.append(time.perf_counter() - start)
            return {"seconds": seconds, "losses": losses}
        if cmd == "eval_loss":
            return {"loss": side.eval_loss()}
        if cmd == "info":
            return side.info()
        raise ValueError(f"unknown request {cmd!r}")

    serve(handle)


# ---------------------------------------------------------------- the run


def spread(times: list[float]) -> dict:
    import numpy as np

    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "p25_s": float(np.percentile(t, 25)),
            "p75_s": float(np.percentile(t, 75)), "min_s": float(t.min()),
            "max_s": float(t.max()), "n": len(times)}


def bench_size(name: str, work: str, args) -> dict:
    """Both workers for one size: same weights checked, warm-up, then interleaved rounds."""
    folder = os.path.join(work, name)
    workers = {}
    try:
        workers["torch"] = Worker("torch", __file__, name, folder, str(args.batch), str(args.seq),
                                  str(args.threads), threads=args.threads)
        workers["bertjax"] = Worker("bertjax", __file__, folder, str(args.batch), str(args.seq),
                                    threads=args.threads)
        info = {s: workers[s].request("info") for s in SYSTEMS}
        same = {s: workers[s].request("eval_loss")["loss"] for s in SYSTEMS}
        if abs(same["torch"] - same["bertjax"]) > SAME_LOSS_TOL:
            raise RuntimeError(f"{name}: the two workers do not hold the same model: losses "
                               f"with dropout off {same}")
        first = {s: workers[s].request("steps", n=args.warmup)["losses"][0] for s in SYSTEMS}
        times = {s: [] for s in SYSTEMS}
        rounds = []
        for r in range(args.rounds):
            order = SYSTEMS if r % 2 == 0 else SYSTEMS[::-1]
            step_s = {}
            for s in order:
                got = workers[s].request("steps", n=args.steps)["seconds"]
                times[s] += got
                step_s[s] = statistics.median(got)
            rounds.append({"order": list(order), "step_seconds": step_s,
                           "ratio": step_s["torch"] / step_s["bertjax"]})
            print(f"{name} round {r}: bertjax {step_s['bertjax'] * 1e3:.0f} ms, PyTorch "
                  f"{step_s['torch'] * 1e3:.0f} ms per step (PyTorch / bertjax "
                  f"{rounds[-1]['ratio']:.2f})", flush=True)
    finally:
        close_all(workers, folder)
    steps = {s: spread(times[s]) for s in SYSTEMS}
    ratios = [x["ratio"] for x in rounds]
    return {"shape": SIZES[name], "batch": [args.batch, args.seq],
            "loss_without_dropout": same, "first_step_loss": first,
            "bertjax_compile_seconds": round(info["bertjax"]["compile_seconds"], 2),
            "devices": {s: info[s]["device"] for s in SYSTEMS},
            "threads": {"torch_threads": info["torch"]["torch_threads"],
                        "torch_interop_threads": info["torch"]["torch_interop_threads"],
                        "torch_worker_cores": info["torch"]["cores_in_affinity_mask"],
                        "xla_worker_cores": info["bertjax"]["cores_in_affinity_mask"]},
            "versions": {**info["bertjax"]["versions"], **info["torch"]["versions"]},
            "step_seconds": steps, "step_times_s": times,
            "examples_per_second": {s: args.batch / steps[s]["median_s"] for s in SYSTEMS},
            "ratio": steps["torch"]["median_s"] / steps["bertjax"]["median_s"],
            "round_ratio_median": statistics.median(ratios), "round_ratio_min": min(ratios),
            "round_ratio_max": max(ratios), "rounds": rounds}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def _ms(s: float) -> str:
    return f"{s * 1e3:.0f}"


def markdown(result: dict) -> str:
    m, th = result["machine"], result["machine"]["threads"]
    lines = [
        "# Train step: bertjax vs PyTorch BertForSequenceClassification + AdamW", "",
        (f"Forward with dropout (0.1), cross-entropy on 2 classes, backward, clip to norm 1, "
         f"AdamW; float32, random weights (the same in both), the same batch. Run of "
         f"{result['date']} ({result['wall_s'] / 60:.1f} min, `{result['command']}`)."), "",
        (f"- CPU: {m['cpu']}, {m['cores']} cores; each system in its own worker process; threads: "
         f"torch.set_num_threads {th['torch_threads']} (interop {th['torch_interop_threads']}), "
         f"XLA's pool sized from an affinity mask of {th['xla_worker_cores']} cores; devices: "
         f"bertjax {m['devices']['bertjax']}, PyTorch {m['devices']['torch']}"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        (f"- {result['rounds']} rounds of {result['steps']} timed steps per system (order "
         f"alternating), after {result['warmup']} untimed warm-up steps each; load average at "
         f"start {result['load_start']}, at end {result['load_end']}"),
        ("- ms/step: median and p25-p75 over all timed steps; ex/s = batch / median; ratio = "
         "PyTorch median / bertjax median (> 1: bertjax faster); per round: the ratio of the two "
         "medians within each round, median (min-max) over rounds"), "",
        ("| size | B x S | bertjax ms/step | PyTorch ms/step | bertjax ex/s | PyTorch ex/s "
         "| ratio | per round | bertjax compile s | loss, dropout off (bertjax / PyTorch) |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["sizes"].items():
        j, t = r["step_seconds"]["bertjax"], r["step_seconds"]["torch"]
        eps, loss = r["examples_per_second"], r["loss_without_dropout"]
        lines.append(
            f"| {name} | {r['batch'][0]} x {r['batch'][1]} "
            f"| {_ms(j['median_s'])} ({_ms(j['p25_s'])}-{_ms(j['p75_s'])}) "
            f"| {_ms(t['median_s'])} ({_ms(t['p25_s'])}-{_ms(t['p75_s'])}) "
            f"| {eps['bertjax']:.2f} | {eps['torch']:.2f} | {r['ratio']:.2f} "
            f"| {r['round_ratio_median']:.2f} ({r['round_ratio_min']:.2f}-"
            f"{r['round_ratio_max']:.2f}) | {r['bertjax_compile_seconds']:.1f} "
            f"| {loss['bertjax']:.6f} / {loss['torch']:.6f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="minilm,bert-base")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per system first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads, and the cores of both workers' affinity masks "
                             "(default: all)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "train.json"))
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return serve_side(args.worker[0], args.worker[1:])
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    if not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        parser.error(f"--threads must be between 1 and {len(os.sched_getaffinity(0))}")
    if args.rounds < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--rounds, --steps and --warmup must be at least 1")
    run(args, names)


def run(args, names: list[str]) -> None:
    start = time.perf_counter()
    load_start = load_average()
    work = tempfile.mkdtemp(prefix="bench_train-")
    try:
        sizes = {name: bench_size(name, work, args) for name in names}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = next(iter(sizes.values()))
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["benchmarks/bench_train.py"] + sys.argv[1:]),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": first["threads"],
                    "devices": first["devices"], "cpu_info": cpu_info()},
        "versions": {"python": platform.python_version(), **first["versions"]},
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
        "load_start": load_start,
        "load_end": load_average(), "sizes": sizes,
        "wall_s": time.perf_counter() - start,
    }
    write_report(os.path.splitext(args.out)[0], result, markdown)


if __name__ == "__main__":
    main()
