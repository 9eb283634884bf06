"""Capturing activations: bertjax against TransformerLens's HookedEncoder, on the same weights.

The same random weights (transformers' `BertForPreTraining`, torch.manual_seed(0), bert-base shapes
by default) go into TransformerLens 3.9.0's `HookedEncoder` through TL's own `convert_bert_weights`
(the converter `HookedEncoder.from_pretrained` uses; it reads the MLM head, the pooler and the NSP
head, so the model is the `BertForPreTraining` TL itself loads for BERT) and into bertjax
(`bertjax.load` of the same folder: the NSP head dropped). Each system runs in its own worker
process (benchmarks/workers.py), TL from benchmarks/.venv-tl (made by benchmarks/tl_env.sh); every
round calls every entry once, in an order rotated from round to round; medians over rounds.

Paths (rows), fp32, CPU, all positions real tokens, TL under torch.no_grad():
  forward   bertjax capture=()            | TL `encoder_output` (no hooks): the final residual
  all       bertjax capture="all"         | TL `run_with_cache` with use_attn_result=True (every
                                            hook; TL's forward always computes the MLM logits, and
                                            capture="all" includes mlm.logits, so both do that work)
  all_reuse bertjax capture="all", reuse=the previous call's output (CONTRACT.md, "Capture by
            layer, edits, gradients at sites, buffer reuse"); skipped, with a note, where
            `bertjax.forward` has no `reuse` parameter
  patterns  bertjax capture=("attn.probs", "layer.out") | TL's caching hooks (`get_caching_hooks`
            with a names_filter of hook_pattern and hook_normalized_resid_post, the layer output
            of TL's post-LN BERT block) around `encoder_output`, so neither computes MLM logits
  layer0    bertjax capture={"attn.head_out": (0,), "mlp.post": (0,)} | TL's caching hooks on
            blocks.0.attn.hook_result and blocks.0.mlp.hook_post (use_attn_result=True); skipped
            with a note where bertjax's capture takes no dict
  numpy     the NumPy probe: the time to write as many bytes as bertjax's capture="all" returns
            into fresh memory (np.empty + fill: page faults) and into memory already mapped
            (the same buffer filled again), one thread; at most --probe-cap-mib (1 GiB) is
            written and the time scaled to the full size

Memory: at (8, 512) capture="all" returns about 7 GiB; with `reuse` the bertjax worker holds the
previous output (7 GiB) while its own and TL's calls run (~7 GiB each, one at a time): plan for
~20 GiB free at that shape (--shapes to leave it out).

Per row: median and p25-p75 ms, time over the same system's `forward`, TL's median / bertjax's
median ("x TL", > 1: bertjax faster), bytes captured (distinct storages for TL, whose cache shares
tensors between hooks), and peak RSS measured in a fresh process per (path, shape): the process's
VmHWM after two calls (weights, libraries and compile included) and the resident memory one more
warm call adds (VmHWM reset through /proc/self/clear_refs after malloc_trim).
Before the rounds, the two systems' outputs are compared on a few values (final hidden state,
layer-0 attention probabilities, MLM logits) so the comparison is of the same model.

Usage:
  bash benchmarks/tl_env.sh                               # once, for the TransformerLens column
  .venv/bin/python benchmarks/bench_capture.py            # bert-base, (8,128) (32,128) (8,512)
  .venv/bin/python benchmarks/bench_capture.py --model tiny --shapes 2x16 --rounds 2   # smoke
Writes benchmarks/results/capture.json and capture.md (--out DIR, --name STEM to change).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import platform
import subprocess
import sys
import tempfile
import time

from machine import cpu_info, cpu_line, load_average, pin_first_cores, rss_added, vm, write_report
from workers import Worker, close_all, marked, parse_or_serve, parse_shapes, reply, serve, timed_rounds

HERE = os.path.dirname(os.path.abspath(__file__))
TL_PYTHON = os.path.join(HERE, ".venv-tl", "bin", "python")
MODELS = {
    "base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
    # small enough for a smoke test on two shared cores; every axis its own size
    "tiny": dict(vocab_size=1000, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=80, max_position_embeddings=64, type_vocab_size=2),
}
SHAPES = ((8, 128), (32, 128), (8, 512))
CAPTURE = {"forward": (), "all": "all", "all_reuse": "all",
           "patterns": ("attn.probs", "layer.out"),
           "layer0": {"attn.head_out": (0,), "mlp.post": (0,)}}
TL_FILTER = {"patterns": ("hook_pattern", "hook_normalized_resid_post"),
             "layer0": ("blocks.0.attn.hook_result", "blocks.0.mlp.hook_post")}
ENTRIES = (("bertjax", "forward"), ("bertjax", "all"), ("bertjax", "all_reuse"),
           ("bertjax", "patterns"), ("bertjax", "layer0"),
           ("tl", "forward"), ("tl", "all"), ("tl", "patterns"), ("tl", "layer0"),
           ("numpy", "fresh"), ("numpy", "mapped"))
TL_PATH = {"all_reuse": "all"}  # the TL row a bertjax row is compared with
# --parts: where `all`'s time goes (bertjax only, timed, no fresh-process memory): the MLM logits
# alone, and `all` without the names whose compute is not in the forward (every name but these)
PARTS = ("mlm", "all_but_mlm", "all_but_mlm_head_out")
CAPTURE["mlm"] = ("mlm.logits",)
ALL_BUT = {"all_but_mlm": ("mlm.logits",), "all_but_mlm_head_out": ("mlm.logits", "attn.head_out")}


# ---------------------------------------------------------------- helpers (any worker)


def make_inputs(B: int, S: int, vocab: int, seed: int = 0):
    """The same random ids (all positions real tokens) in every worker."""
    import numpy as np

    ids = np.random.default_rng(seed).integers(0, vocab, (B, S)).astype(np.int32)
    return ids, np.ones((B, S), np.int32)


def write_weights(folder: str, model: str) -> None:
    """Random BertForPreTraining weights (torch.manual_seed(0)) in a transformers folder."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(**MODELS[model], hidden_act="gelu")
    transformers.BertForPreTraining(config).eval().save_pretrained(folder)


def sample(last, probs0, logits) -> dict:
    """A few values of the final hidden state, the layer-0 attention probabilities [B, H, S, S]
    and the MLM logits, plus float64 sums over the whole final hidden state (numpy arrays)."""
    import numpy as np

    last, probs0, logits = (np.asarray(a, np.float64) for a in (last, probs0, logits))
    return {"last_first": last[0, :3, :4].ravel().tolist(),
            "last_last": last[-1, -1, -4:].tolist(),
            "probs0": probs0[0, 0, 1, :6].tolist(),
            "logits": logits[-1, 0, :4].tolist(),
            "last_sum": float(last.sum()), "last_abs_sum": float(np.abs(last).sum())}


# ---------------------------------------------------------------- the systems (in workers)


class BertjaxSystem:
    """bertjax.forward as users call it, on params loaded stacked (`bertjax.load(..., stacked=True)`:
    the model in memory once; per-layer params would add the stacked copy forward keeps)."""

    def __init__(self, hf_dir: str, model: str):
        import bertjax

        self.config, self.params = bertjax.load(hf_dir, stacked=True)
        self.vocab = MODELS[model]["vocab_size"]
        self.inputs = None
        self.previous = None  # the output `all_reuse` hands to the next call

    def info(self) -> dict:
        import jax

        import bertjax

        return {"jax": jax.__version__, "bertjax": getattr(bertjax, "__version__", "")}

    def set_shape(self, B: int, S: int) -> None:
        self.inputs = make_inputs(B, S, self.vocab)
        self.previous = None

    def _forward(self, path: str):
        import bertjax

        ids, mask = self.inputs
        kwargs = {}
        if path == "all_reuse":
            if "reuse" not in inspect.signature(bertjax.forward).parameters:
                raise NotImplementedError(
                    "bertjax.forward has no `reuse` parameter yet (CONTRACT.md, 'Capture by "
                    "layer, edits, gradients at sites, buffer reuse'): all_reuse not measured")
            if self.previous is not None:
                kwargs["reuse"] = self.previous
        return bertjax.forward(self.params, ids, self.config, attention_mask=mask,
                               capture=self.capture(path), **kwargs)

    def capture(self, path: str):
        """The capture of a path: CAPTURE's, or "all" without ALL_BUT's names."""
        from bertjax.model.capture import resolve

        if path in ALL_BUT:
            return tuple(sorted(resolve("all", has_pooler="pooler" in self.params)
                                - set(ALL_BUT[path])))
        return CAPTURE[path]

    def call(self, path: str, keep: bool = False) -> float:
        """Seconds of one call of `path`. all_reuse is a loop's next call: the previous output
        (made untimed first when there is none) is handed to `reuse`; `keep` holds the new one
        for the next call (in the memory probe's repeated calls), otherwise nothing is held
        between entries (the other worker's calls get the memory)."""
        import jax

        if path == "all_reuse" and self.previous is None:
            self.previous = jax.block_until_ready(self._forward("all"))
        t0 = time.perf_counter()
        out = self._forward(path)
        jax.block_until_ready(out)
        elapsed = time.perf_counter() - t0
        self.previous = out if path == "all_reuse" and keep else None
        del out
        return elapsed

    def captured_bytes(self, path: str) -> int:
        import jax

        out = self._forward(path)
        jax.block_until_ready(out)
        self.previous = None
        if isinstance(CAPTURE.get(path), dict):  # an older capture reads a dict as names
            for name, layers in CAPTURE[path].items():
                if layers is not None and out.acts[name].shape[0] != len(layers):
                    raise NotImplementedError(
                        f"bertjax's capture returned {name} with {out.acts[name].shape[0]} "
                        f"layers for the selection {layers}: capture by layer (CONTRACT.md) is "
                        f"not in this bertjax yet, {path} not measured")
        return int(sum(a.nbytes for a in jax.tree.leaves(out.acts)))

    def sample(self) -> dict:
        import bertjax

        ids, mask = self.inputs
        out = bertjax.forward(self.params, ids, self.config, attention_mask=mask,
                              capture=("attn.probs", "mlm.logits"))
        return sample(out.last_hidden_state, out.acts["attn.probs"][0], out.acts["mlm.logits"])


class TLSystem:
    """TransformerLens 3.9.0's HookedEncoder (run with benchmarks/.venv-tl's python)."""

    def __init__(self, hf_dir: str, model: str, threads: int):
        import torch
        import transformers
        from transformer_lens import HookedEncoder, HookedTransformerConfig
        from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights

        torch.set_num_threads(threads)
        torch.set_grad_enabled(False)  # interpretability inference: no autograd graph kept
        hf = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
        c = hf.config
        # the config TL's loading_from_pretrained builds for BERT (convert_hf_model_config)
        self.cfg = HookedTransformerConfig(
            d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads,
            n_heads=c.num_attention_heads, d_mlp=c.intermediate_size,
            n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings, eps=c.layer_norm_eps,
            d_vocab=c.vocab_size, act_fn="gelu", attention_dir="bidirectional",
            original_architecture="BertForMaskedLM", device="cpu", dtype=torch.float32)
        state = {k: v.detach().clone() for k, v in convert_bert_weights(hf, self.cfg).items()}
        del hf
        self.model = HookedEncoder(self.cfg, move_to_device=False)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "IGNORE" not in k and not k.endswith(".mask")]
        if missing or unexpected:
            raise RuntimeError(f"TL state dict: missing {missing}, unexpected {unexpected}")
        self.model.eval()
        del state
        gc.collect()
        self.inputs = None

    def info(self) -> dict:
        from importlib.metadata import version

        import torch

        return {"transformer-lens": version("transformer-lens"), "tl torch": torch.__version__,
                "tl transformers": version("transformers")}

    def set_shape(self, B: int, S: int) -> None:
        import torch

        ids, mask = make_inputs(B, S, self.cfg.d_vocab)
        self.inputs = (torch.from_numpy(ids).long(), torch.from_numpy(mask).long())

    def _run(self, path: str):
        """(output, cache dict) of one path."""
        ids, mask = self.inputs
        model = self.model
        model.cfg.use_attn_result = path in ("all", "layer0")
        if path == "forward":
            return model.encoder_output(ids, None, mask), {}
        if path == "all":
            return model.run_with_cache(ids, one_zero_attention_mask=mask,
                                        return_cache_object=False)
        suffixes = TL_FILTER[path]
        cache, fwd, _ = model.get_caching_hooks(lambda name: name.endswith(suffixes))
        with model.hooks(fwd_hooks=fwd):
            out = model.encoder_output(ids, None, mask)
        return out, cache

    def call(self, path: str) -> float:
        t0 = time.perf_counter()
        out = self._run(path)
        elapsed = time.perf_counter() - t0
        del out
        return elapsed

    def captured_bytes(self, path: str) -> int:
        _, cache = self._run(path)
        seen, total = set(), 0
        for t in cache.values():  # hooks may hand the same storage to several names
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
        return total

    def sample(self) -> dict:
        ids, mask = self.inputs
        self.model.cfg.use_attn_result = False
        logits, cache = self.model.run_with_cache(
            ids, one_zero_attention_mask=mask, return_cache_object=False,
            names_filter=lambda n: n == "blocks.0.attn.hook_pattern"
            or n == f"blocks.{self.cfg.n_layers - 1}.hook_normalized_resid_post")
        last = cache[f"blocks.{self.cfg.n_layers - 1}.hook_normalized_resid_post"]
        return sample(last.numpy(), cache["blocks.0.attn.hook_pattern"].numpy(), logits.numpy())


class NumpyProbe:
    """Writes n bytes into fresh memory (np.empty, then fill: every page faulted in) or into a
    buffer already mapped (written once before): the floor of what returning captures costs.
    At most `cap` bytes are written, the time scaled by n / cap (writing is linear in the bytes
    at these sizes), so that the probe does not hold gigabytes beside the systems."""

    def __init__(self):
        self.nbytes = self.probe_bytes = 0
        self.buffer = None

    def info(self) -> dict:
        import numpy as np

        return {"numpy": np.__version__}

    def set_shape(self, nbytes: int, cap: int) -> None:
        import numpy as np

        self.buffer = None
        self.nbytes, self.probe_bytes = nbytes, max(4, min(nbytes, cap))
        self.buffer = np.empty(self.probe_bytes // 4, np.float32)
        self.buffer.fill(1.0)  # mapped from now on

    def call(self, path: str) -> float:
        import numpy as np

        scale = self.nbytes / self.probe_bytes
        t0 = time.perf_counter()
        if path == "fresh":
            fresh = np.empty(self.probe_bytes // 4, np.float32)
            fresh.fill(2.0)
            elapsed = time.perf_counter() - t0
            del fresh
            return elapsed * scale
        self.buffer.fill(2.0)
        return (time.perf_counter() - t0) * scale


def serve_system(kind: str, args: list[str]) -> None:
    """A worker: builds its system, then answers the driver's requests (see workers.serve)."""
    if kind == "bertjax":
        system = BertjaxSystem(args[0], args[1])
    elif kind == "tl":
        system = TLSystem(args[0], args[1], int(args[2]))
    else:
        system = NumpyProbe()

    def handle(cmd: str, msg: dict) -> dict:
        if cmd == "call":
            return {"seconds": system.call(msg["path"])}
        if cmd == "shape":
            system.set_shape(**msg)
            return {"ok": True}
        if cmd == "bytes":
            return {"bytes": system.captured_bytes(msg["path"])}
        if cmd == "sample":
            return system.sample()
        return system.info()

    serve(handle)


def memory_probe(kind: str, hf_dir: str, model: str, threads: str, path: str, B: str,
                 S: str) -> None:
    """In a fresh process: builds the system, calls `path` twice, reports the process's peak
    RSS so far and what one more warm call adds (all_reuse: each call reusing the last's output,
    as in a loop)."""
    system = (BertjaxSystem(hf_dir, model) if kind == "bertjax"
              else TLSystem(hf_dir, model, int(threads)))
    system.set_shape(int(B), int(S))
    call = (lambda: system.call(path, keep=True)) if kind == "bertjax" else \
        (lambda: system.call(path))
    call(), call()
    process_peak = vm("VmHWM")
    added = rss_added(call)
    reply({"process_peak_bytes": process_peak, "call_added_bytes": added})


# ---------------------------------------------------------------- the driver


def fresh_memory(python: str, kind: str, hf_dir: str, model: str, threads: int, path: str,
                 B: int, S: int) -> dict:
    proc = subprocess.run([python, os.path.abspath(__file__), "--memory", kind, hf_dir, model,
                           str(threads), path, str(B), str(S)], capture_output=True, text=True)
    if proc.returncode:
        return {"memory_error": proc.stderr.strip().splitlines()[-1:]}
    return marked(proc.stdout)


def compare(a: dict, b: dict) -> dict:
    """Max abs difference of the sampled values, and of the sums relative to the abs sum."""
    diffs = {key: max(abs(x - y) for x, y in zip(a[key], b[key]))
             for key in ("last_first", "last_last", "probs0", "logits")}
    diffs["last_sum_rel"] = abs(a["last_sum"] - b["last_sum"]) / max(a["last_abs_sum"], 1e-30)
    return diffs


def run_shape(workers: dict, B: int, S: int, rounds: int, hf_dir: str, model: str,
              threads: int, memory: bool, probe_cap: int,
              parts: bool = False) -> tuple[dict, dict, dict]:
    """Agreement, bytes, memory (fresh processes), warm-up, then every entry once per round
    (with `parts`, PARTS' bertjax entries too, timed only).
    Returns (results per entry, agreement, notes per entry)."""
    for kind in ("bertjax", "tl"):
        if kind in workers:
            workers[kind].request("shape", B=B, S=S)
    notes, info = {}, {}
    entries = []
    shape_of = {"numpy": {}}  # the numpy worker's shape is set below, once the bytes are known

    def revive(system: str) -> None:  # a worker killed (for memory, say): back, at this shape
        if not workers[system].alive:
            workers[system].restart()
            workers[system].request("shape", **shape_of.get(system, {"B": B, "S": S}))

    for system, path in ENTRIES + (tuple(("bertjax", p) for p in PARTS) if parts else ()):
        if system == "numpy" or system not in workers:
            continue
        try:
            info[system, path] = {"captured_bytes": workers[system].request("bytes",
                                                                            path=path)["bytes"]}
            entries.append((system, path))
        except RuntimeError as e:
            notes[system, path] = str(e).split(": ", 1)[-1]
            if not workers[system].alive:  # killed (for memory, say): this path is skipped
                notes[system, path] += " (killed while computing it: out of memory?)"
                revive(system)
            print(f"  ({B}, {S}) {system} {path}: skipped: {notes[system, path]}", flush=True)
    agreement = None
    if "tl" in workers:
        try:
            agreement = compare(workers["bertjax"].request("sample"),
                                workers["tl"].request("sample"))
        except RuntimeError as e:  # a worker killed: no agreement figures for this shape
            notes["agreement", "sample"] = str(e)
            for system in ("bertjax", "tl"):
                revive(system)
    if agreement:
        print(f"  ({B}, {S}) bertjax vs TL, max abs diff: "
              + ", ".join(f"{k} {v:.2e}" for k, v in agreement.items()), flush=True)
    if memory:  # one fresh process at a time, the workers holding no captures meanwhile
        workers["bertjax"].request("shape", B=B, S=S)  # drops the output kept for reuse
        for system, path in [e for e in entries if e[1] not in PARTS]:
            python = TL_PYTHON if system == "tl" else sys.executable
            info[system, path].update(fresh_memory(python, system, hf_dir, model, threads,
                                                   path, B, S))
    nbytes = info.get(("bertjax", "all"), {}).get("captured_bytes")
    if nbytes:
        shape_of["numpy"] = {"nbytes": nbytes, "cap": probe_cap}
        workers["numpy"].request("shape", **shape_of["numpy"])
        for path in ("fresh", "mapped"):
            entries.append(("numpy", path))
            info["numpy", path] = {"captured_bytes": nbytes}
    call = lambda e: workers[e[0]].request("call", path=e[1])["seconds"]

    def failed(entry, error) -> None:  # killed while timed (for memory, say): skipped from here
        system, path = entry
        notes[entry] = str(error).split(": ", 1)[-1] + " (while timed: out of memory?)"
        print(f"  ({B}, {S}) {system} {path}: dropped: {notes[entry]}", flush=True)
        revive(system)

    timed = timed_rounds(entries, call, rounds, failed)
    return {e: {**info[e], **timed[e]} for e in timed}, agreement, notes


def rows_for(B: int, S: int, results: dict) -> list[dict]:
    rows = []
    for (system, path), r in results.items():
        row = {"B": B, "S": S, "system": system, "path": path, **r}
        base = results.get((system, "forward"))
        if base and system != "numpy":
            row["time_over_forward"] = r["median_s"] / base["median_s"]
        tl = results.get(("tl", TL_PATH.get(path, path)))
        if system == "bertjax" and tl:
            row["x_tl"] = tl["median_s"] / r["median_s"]
        if system in ("bertjax", "tl") and r.get("captured_bytes"):
            row["capture_gb_per_s"] = r["captured_bytes"] / r["median_s"] / 1e9
        rows.append(row)
    fresh, mapped = results.get(("numpy", "fresh")), results.get(("numpy", "mapped"))
    for row in rows:
        if row["system"] == "numpy":
            row["gb_per_s"] = row["captured_bytes"] / row["median_s"] / 1e9
        if fresh and mapped and row["system"] == "bertjax" and row["path"] in ("all", "all_reuse"):
            plain = results.get(("bertjax", "forward"))
            if plain:  # the capture's extra time against the probe's write times
                extra = row["median_s"] - plain["median_s"]
                row["extra_over_fresh_write"] = extra / fresh["median_s"]
                row["extra_over_mapped_write"] = extra / mapped["median_s"]
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    """The goals of issue 15 with their measured values."""
    checks = []
    for r in rows:
        if r["system"] != "bertjax":
            continue
        where = f"{r['path']} at ({r['B']}, {r['S']})"
        if r.get("x_tl") is not None:
            checks.append({"target": f"bertjax >= 1.0x TL speed, {where}", "value": r["x_tl"],
                           "ok": r["x_tl"] >= 1.0})
        tl = next((t for t in rows if t["system"] == "tl" and t["B"] == r["B"]
                   and t["S"] == r["S"] and t["path"] == TL_PATH.get(r["path"], r["path"])), None)
        if tl and r.get("process_peak_bytes") and tl.get("process_peak_bytes"):
            ratio = r["process_peak_bytes"] / tl["process_peak_bytes"]
            checks.append({"target": f"bertjax peak RSS <= TL's, {where} (ratio)", "value": ratio,
                           "ok": ratio <= 1.0})
        if r["path"] == "layer0" and (r["B"], r["S"]) == (8, 128):
            checks.append({"target": "one layer of attn.head_out + mlp.post <= 1.15x capture=() "
                                     "at (8, 128)", "value": r["time_over_forward"],
                           "ok": r["time_over_forward"] <= 1.15})
        if r["path"] == "all_reuse" and (r["B"], r["S"]) == (8, 128):
            checks.append({"target": "capture='all' with reuse <= 1.6x capture=() at (8, 128)",
                           "value": r["time_over_forward"], "ok": r["time_over_forward"] <= 1.6})
    return checks


def _ms(s):
    return f"{s * 1e3:.1f}" if s is not None else ""


def _mb(b):
    return f"{b / 2**20:.0f}" if b is not None else ""


def _x(v, digits=2):
    return f"{v:.{digits}f}" if v is not None else ""


def markdown(result: dict) -> str:
    m, v = result["machine"], result["versions"]
    c = result["config"]
    lines = [
        "# Capture benchmark: bertjax against TransformerLens HookedEncoder (CPU, fp32)", "",
        f"Model `{result['model']}` (hidden {c['hidden_size']}, {c['num_hidden_layers']} layers x "
        f"{c['num_attention_heads']} heads, intermediate {c['intermediate_size']}, vocab "
        f"{c['vocab_size']}), random BertForPreTraining weights (seed 0) in both systems, all "
        f"positions real tokens. Run of {result['date']} ({result['wall_s'] / 60:.1f} min, "
        f"`{result['command']}`).", "",
        f"- CPU: {cpu_line(m['cpu_info'])}; threads: {m['threads']} (torch.set_num_threads; "
        f"XLA's pool = the cores of the affinity mask); load average at start "
        f"{result['load_start']}, at end {result['load_end']}",
        "- versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
        f"- {result['rounds']} rounds per shape, every entry once per round (order rotated), "
        "each system in its own worker process; TL under torch.no_grad(); bertjax's weights "
        "loaded stacked (`bertjax.load(hf, stacked=True)`)",
        "- paths: forward = capture=() | TL encoder_output without hooks; all = capture='all' | "
        "TL run_with_cache(use_attn_result=True) (both compute and return the MLM logits); "
        "all_reuse = capture='all' with reuse= the previous output; patterns = "
        "capture=('attn.probs', 'layer.out') | TL caching hooks on hook_pattern + "
        "hook_normalized_resid_post around encoder_output; layer0 = capture={'attn.head_out': "
        "(0,), 'mlp.post': (0,)} | TL caching hooks on blocks.0 hook_result + hook_post; numpy = "
        "writing as many bytes as capture='all' returns into fresh / already-mapped memory "
        f"(one thread; at most {result['probe_cap_mib']} MiB written, the time scaled to the "
        "full size)" + ("; bertjax alone (--parts): mlm = capture=('mlm.logits',); "
                        "all_but_mlm = every name of 'all' but mlm.logits; all_but_mlm_head_out "
                        "= every name but mlm.logits and attn.head_out"
                        if any(r["path"] in PARTS for r in result["rows"]) else ""),
        "- x TL = TL's median / bertjax's (> 1: bertjax faster); / fwd = time over the same "
        "system's forward; peak RSS = VmHWM of a fresh process after two calls (weights, "
        "libraries and compile included); call adds = what one more warm call adds to the RSS", "",
        "| B x S | path | system | median ms | p25-p75 ms | / fwd | x TL | captured MiB "
        "| GB/s | peak RSS MiB | call adds MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        gbs = r.get("gb_per_s", r.get("capture_gb_per_s"))
        lines.append(
            f"| {r['B']} x {r['S']} | {r['path']} | {r['system']} | {_ms(r['median_s'])} "
            f"| {_ms(r['p25_s'])}-{_ms(r['p75_s'])} | {_x(r.get('time_over_forward'))} "
            f"| {_x(r.get('x_tl'))} | {_mb(r.get('captured_bytes'))} | {_x(gbs, 1)} "
            f"| {_mb(r.get('process_peak_bytes'))} | {_mb(r.get('call_added_bytes'))} |")
    probe = [r for r in result["rows"] if r.get("extra_over_fresh_write") is not None]
    if probe:
        lines += ["", "capture='all' against the NumPy write probe (the extra time over "
                  "capture=() divided by the time to write the same bytes):", ""]
        lines += [f"- ({r['B']}, {r['S']}) {r['path']}: {r['extra_over_fresh_write']:.2f}x the "
                  f"fresh-memory write, {r['extra_over_mapped_write']:.2f}x the mapped-memory "
                  f"write" for r in probe]
    if result["agreement"]:
        lines += ["", "Same model: max abs difference bertjax vs TL on sampled values (final "
                  "hidden state, layer-0 attention probs, MLM logits) and relative difference "
                  "of the final hidden state's sum:", ""]
        lines += [f"- ({a['B']}, {a['S']}): " + ", ".join(f"{k} {x:.1e}" for k, x in a.items()
                                                         if k not in ("B", "S"))
                  for a in result["agreement"]]
    if result["notes"]:
        lines += ["", "Not measured:", ""]
        lines += [f"- {n}" for n in result["notes"]]
    lines += ["", "Targets (issue 15, from this run):", ""]
    lines += [f"- {'PASS' if t['ok'] else 'MISS'}: {t['target']} (measured {t['value']:.2f})"
              for t in result["targets"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="base")
    parser.add_argument("--shapes", type=parse_shapes, help="e.g. 8x128,32x128 (default the "
                                                            "issue's three)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="cores for every worker (affinity mask) and torch threads")
    parser.add_argument("--no-tl", action="store_true", help="bertjax alone")
    parser.add_argument("--no-memory", action="store_true", help="skip the fresh-process RSS")
    parser.add_argument("--parts", action="store_true",
                        help="also time bertjax's " + ", ".join(PARTS) + " (where all's time goes)")
    parser.add_argument("--probe-cap-mib", type=int, default=1024,
                        help="most MiB the NumPy probe writes (its time scaled to the full size)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--name", default="capture", help="output file stem (default capture)")
    args = parse_or_serve(parser, serve_system, memory=(7, memory_probe),
                          write_weights=(2, write_weights))
    if args is not None:
        run(args)


def start_workers(hf_dir: str, model: str, threads: int, tl: bool, notes: list) -> dict:
    workers = {"bertjax": Worker("bertjax", __file__, hf_dir, model),
               "numpy": Worker("numpy", __file__)}
    if tl and not os.path.exists(TL_PYTHON):
        notes.append(f"TransformerLens column left out: no {TL_PYTHON} "
                     "(bash benchmarks/tl_env.sh)")
    elif tl:
        try:
            workers["tl"] = Worker("tl", __file__, hf_dir, model, str(threads), python=TL_PYTHON)
        except RuntimeError as e:
            notes.append(f"TransformerLens column left out: {e}")
    for n in notes:
        print(n, flush=True)
    return workers


def run(args) -> None:
    start = time.perf_counter()
    shapes = args.shapes or SHAPES
    pin_first_cores(args.threads)
    too_long = [s for s in shapes if s[1] > MODELS[args.model]["max_position_embeddings"]]
    if too_long:
        raise SystemExit(f"--shapes: sequence longer than the {args.model} model's "
                         f"{MODELS[args.model]['max_position_embeddings']} positions: {too_long}")
    load_start = load_average()
    work = tempfile.mkdtemp(prefix="bench_capture-")
    hf_dir = os.path.join(work, "hf")
    subprocess.run([sys.executable, os.path.abspath(__file__), "--write-weights", hf_dir,
                    args.model], check=True)
    notes, workers = [], {}
    rows, agreement, skipped = [], [], {}
    try:
        workers = start_workers(hf_dir, args.model, args.threads, not args.no_tl, notes)
        infos = {kind: w.request("info") for kind, w in workers.items()}
        for B, S in shapes:
            results, agree, skip = run_shape(workers, B, S, args.rounds, hf_dir, args.model,
                                             args.threads, not args.no_memory,
                                             args.probe_cap_mib * 2**20, args.parts)
            skipped.update({(system, f"{path} at ({B}, {S})"): why
                            for (system, path), why in skip.items()})
            if agree:
                agreement.append({"B": B, "S": S, **agree})
            rows += rows_for(B, S, results)
            for r in rows[-len(results):]:
                x = f"x{r['x_tl']:.2f} TL" if r.get("x_tl") else ""
                print(f"({B:2d}, {S:3d}) {r['path']:20s} {r['system']:7s} median "
                      f"{r['median_s'] * 1e3:9.1f} ms  [{r['p25_s'] * 1e3:.1f}-"
                      f"{r['p75_s'] * 1e3:.1f}]  {x}", flush=True)
    finally:
        close_all(workers, work)
    notes += sorted({f"{system} {path}: {why}" for (system, path), why in skipped.items()})
    versions = {"python": platform.python_version()}
    for info in infos.values():
        versions.update(info)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["benchmarks/bench_capture.py"] + sys.argv[1:]),
        "machine": {"cpu_info": cpu_info(), "threads": args.threads},
        "versions": versions, "model": args.model, "config": MODELS[args.model],
        "rounds": args.rounds, "probe_cap_mib": args.probe_cap_mib, "load_start": load_start,
        "load_end": load_average(), "agreement": agreement,
        "notes": notes, "rows": rows, "wall_s": time.perf_counter() - start,
    }
    result["targets"] = check_targets(rows)
    write_report(os.path.join(args.out, args.name), result, markdown)


if __name__ == "__main__":
    main()
