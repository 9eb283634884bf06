"""Train-step throughput: bertjax's jitted step against transformers' PyTorch
BertForSequenceClassification + torch.optim.AdamW, on the same batch, interleaved round by round.

Both sides do the same work per step: forward with dropout on (p = 0.1), cross-entropy on 2
classes, backward, gradient clipping to global norm 1, and an AdamW update with weight decay off
biases and LayerNorm (the BERT recipe). They start from the same random weights (the PyTorch model's,
converted with `bertjax.convert.state_dict_to_params`) and step on the same batch of random ids
(no padding). bertjax: `bertjax.train.make_train_step` (one XLA program, compiled before timing,
float32). PyTorch: eager `model(...).loss.backward(); clip_grad_norm_; optimizer.step()`, with the
model's default attention (sdpa), float32, `torch.set_num_threads(--threads)`; XLA's CPU backend
uses every core, so --threads defaults to the core count. On a machine with a GPU, jax uses it and
PyTorch uses CUDA when its build has it (the devices are recorded).

Sizes: "minilm" (all-MiniLM-L6-v2's shapes: 6 layers, D 384, 12 heads, I 1536, V 30522) and
"bert-base" (12 layers, D 768, 12 heads, I 3072, V 30522), random weights, batch 8 x 128 tokens by
default. Each round times `--steps` steps of one system, then of the other (the order alternating
between rounds), so that the machine's load hits both alike; the speed ratio is taken within each
round and its median reported, with the spread over rounds, and so is the ratio of each system's
fastest round (on a busy machine PyTorch's threads lose much more than XLA's, which inflates the
per-round ratios; the fastest rounds are the least disturbed).

Usage:  .venv/bin/python benchmarks/bench_train.py [--sizes minilm,bert-base] [--rounds 5]
                                                   [--steps 3] [--batch 8] [--seq 128]
Writes benchmarks/results/train.json and benchmarks/results/train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {
    "minilm": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                   intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2),
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=512, type_vocab_size=2),
}
LR, WEIGHT_DECAY, CLIP = 2e-5, 0.01, 1.0


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(1000, vocab, (batch, seq)).astype(np.int32),
            "token_type_ids": np.zeros((batch, seq), np.int32),
            "attention_mask": np.ones((batch, seq), np.int32),
            "labels": rng.integers(0, 2, (batch,)).astype(np.int32)}


class TorchSide:
    """BertForSequenceClassification (train mode) + AdamW with the BERT recipe's param groups."""

    def __init__(self, shape: dict, batch: dict):
        import torch
        import transformers

        torch.manual_seed(0)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        config = transformers.BertConfig(**shape, num_labels=2)
        self.model = transformers.BertForSequenceClassification(config).to(self.device)
        self.model.train()  # dropout on
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
        decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                            {"params": no_decay, "weight_decay": 0.0}], lr=LR)
        self.inputs = {k: torch.as_tensor(v, dtype=torch.long, device=self.device)
                       for k, v in batch.items()}

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().numpy() for k, v in self.model.state_dict().items()}

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
    """bertjax.train's jitted step from the same weights (converted), compiled before timing."""

    def __init__(self, shape: dict, state_dict: dict, batch: dict):
        import jax

        import bertjax
        from bertjax import train as T
        from bertjax.convert import state_dict_to_params

        self.config = bertjax.BertConfig(**shape, num_labels=2)
        params = state_dict_to_params(state_dict, self.config)[0]
        tx = T.make_optimizer(LR, weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
        self.state = T.init_state(params, tx)
        self.batch = jax.device_put(batch)
        self.fn = T.make_train_step(self.config, "classification", tx)
        self.device = str(jax.devices()[0])
        start = time.perf_counter()
        self.fn = self.fn.lower(self.state, self.batch).compile()
        self.compile_seconds = time.perf_counter() - start

    def eval_loss(self) -> float:
        import jax

        from bertjax import train as T

        loss = jax.jit(lambda p, b: T.loss_fn(p, b, self.config, "classification")[0])
        return float(loss(self.state.params, self.batch))

    def step(self) -> float:
        self.state, metrics = self.fn(self.state, self.batch)
        return float(metrics["loss"])  # blocks until the step is done


def timed(side, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        side.step()
        times.append(time.perf_counter() - start)
    return times


def bench_size(name: str, args) -> dict:
    shape = SIZES[name]
    batch = make_batch(args.batch, args.seq, shape["vocab_size"])
    torch_side = TorchSide(shape, batch)
    jax_side = JaxSide(shape, torch_side.state_dict(), batch)
    same = {"torch": torch_side.eval_loss(), "bertjax": jax_side.eval_loss()}
    if abs(same["torch"] - same["bertjax"]) > 1e-3:
        raise RuntimeError(f"the two sides do not start from the same model: {same}")
    first = {"torch": torch_side.step(), "bertjax": jax_side.step()}  # warm-up (and compile)
    sides = {"bertjax": jax_side, "torch": torch_side}
    rounds = []
    for r in range(args.rounds):
        order = ("bertjax", "torch") if r % 2 == 0 else ("torch", "bertjax")
        times = {s: statistics.median(timed(sides[s], args.steps)) for s in order}
        rounds.append({"step_seconds": times, "ratio": times["torch"] / times["bertjax"]})
        print(f"{name} round {r}: bertjax {times['bertjax'] * 1e3:.0f} ms, torch "
              f"{times['torch'] * 1e3:.0f} ms per step (bertjax {rounds[-1]['ratio']:.2f}x)",
              flush=True)
    ratios = [x["ratio"] for x in rounds]
    per_step = {s: statistics.median(x["step_seconds"][s] for x in rounds) for s in sides}
    return {"shape": shape, "batch": [args.batch, args.seq], "loss_without_dropout": same,
            "first_step_loss": first,
            "bertjax_compile_seconds": round(jax_side.compile_seconds, 2),
            "devices": {"bertjax": jax_side.device, "torch": torch_side.device},
            "step_seconds_median": per_step,
            "examples_per_second": {s: args.batch / t for s, t in per_step.items()},
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "rounds": rounds}


def machine(threads: int) -> dict:
    import flax
    import jax
    import optax
    import torch
    import transformers

    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}


def markdown(result: dict) -> str:
    header = ("| size | batch x seq | bertjax ex/s | PyTorch ex/s | bertjax / PyTorch (median, "
              "min-max over rounds) | best round of each: ex/s, ratio |")
    rows = [header, "|---|---|---|---|---|---|"]
    for name, r in result["sizes"].items():
        eps = r["examples_per_second"]
        best = {s: min(x["step_seconds"][s] for x in r["rounds"]) for s in ("bertjax", "torch")}
        rows.append(f"| {name} | {r['batch'][0]} x {r['batch'][1]} | {eps['bertjax']:.1f} | "
                    f"{eps['torch']:.1f} | {r['ratio_median']:.2f}x ({r['ratio_min']:.2f}-"
                    f"{r['ratio_max']:.2f}) | {r['batch'][0] / best['bertjax']:.1f} vs "
                    f"{r['batch'][0] / best['torch']:.1f}, {best['torch'] / best['bertjax']:.2f}x |")
    m = result["machine"]
    rows.append(f"\nTrain step (forward with dropout, backward, clip, AdamW), float32; "
                f"{m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}; jax "
                f"{m['jax']}, torch {m['torch']}, transformers {m['transformers']}; "
                f"{result['rounds']} interleaved rounds of {result['steps']} steps. The last "
                f"column compares each system's fastest round: the least disturbed by other load "
                f"(PyTorch's threads slow down more than XLA's on a busy machine).")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="minilm,bert-base")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per system per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "train.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    result = {"sizes": {name: bench_size(name, args) for name in names}, "rounds": args.rounds,
              "steps": args.steps, "machine": machine(args.threads)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    table = markdown(result)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
