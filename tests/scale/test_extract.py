"""`bertjax extract`: results against PyTorch BERT per example, kill -9 and resume (subprocesses
sharding over 4 forced host devices), two real `jax.distributed` processes, bounded memory over a
10 000-line corpus, streaming, recompiles, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import TINY, assert_close, make_checkpoint
from torch_ref import torch_activations

from bertjax.commands.cli import main
from bertjax.scale import sharding
from bertjax.scale.buckets import bucket_lengths
from bertjax.scale.extract import Options, extract, raw_chunks
from bertjax.scale.store import ActivationStore

WORDS = [f"w{i}" for i in range(96)]  # vocab: 5 specials + 96 words = TINY vocab_size 101
MAX_POS = 40  # buckets 16, 32, 40


def devices_env(n: int) -> dict:
    """The environment of a subprocess with n forced host devices (XLA reads the flag when jax
    starts, so it cannot be set in this process, whose jax is already running)."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # conftest's folder
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
            "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}


# Runs the CLI in a subprocess. argv[1]: seconds to sleep before every fsync, so that a kill lands
# with a temporary file written but not renamed, or renamed but its folder not yet synced. Prints
# RSS (KiB, from /proc/self/statm) after every chunk's commit, and, as a check that this reading
# sees retained memory at all, the growth after allocating and touching 64 MiB at the end.
WRAPPER = """
import json, os, sys, time
import numpy as np
import bertjax.scale.extract as E

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

delay, fsync, commit, rss = float(sys.argv[1]), os.fsync, E.commit, []
def slow_fsync(fd):
    time.sleep(delay)
    fsync(fd)
def measured_commit(*args, **kwargs):
    counts = commit(*args, **kwargs)
    rss.append(rss_kib())
    return counts
if delay:
    os.fsync = slow_fsync
E.commit = measured_commit
from bertjax.commands.cli import main
rc = main(sys.argv[2:])
before = rss_kib()
ballast = np.ones(64 * 2**20 // 8)
print("MEMORY", json.dumps({"after_commits": rss, "ballast_growth": rss_kib() - before}))
sys.exit(rc)
"""


def make_tiny_bert(folder, **overrides) -> str:
    """A tiny random BertModel folder (pooler, 40 positions) with a word-level BertTokenizer."""
    import transformers

    make_checkpoint(folder, "BertModel", max_position_embeddings=MAX_POS, **overrides)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return str(folder)


def write_corpus(path, n: int, seed: int = 0, max_words: int = 45, pairs: bool = False) -> str:
    """n lines of random words (some long enough to be truncated), .txt or .jsonl."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            text = " ".join(rng.choices(WORDS, k=rng.randint(1, max_words)))
            if str(path).endswith(".jsonl"):
                record = {"text": text}
                if pairs and i % 2:
                    record["text_pair"] = " ".join(rng.choices(WORDS, k=rng.randint(1, 9)))
                text = json.dumps(record)
            f.write(text + "\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def torch_bert(tiny_bert):
    import transformers

    return transformers.BertModel.from_pretrained(tiny_bert, attn_implementation="eager").eval()


def cli_args(model, corpus, out, *extra) -> list[str]:
    return ["extract", "--model", model, "--input", corpus, "--out", str(out), "--no-progress",
            "--capture", "layer.out,attn.probs", "--layers", "1", "--batch-size", "8",
            "--chunk-size", "40", *extra]


def start(args, delay: float = 0.0, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, str(delay), *args],
                            env=env or devices_env(4), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def kill(proc: subprocess.Popen) -> None:
    """kill -9; asserts the process was still running (killed, not finished)."""
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"it ended by itself first: {err[-2000:]}"


def wait_for(path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.005)


def folder_contents(out) -> dict[str, bytes]:
    """Every file of an extract folder but summary.json (which holds timings), by relative path."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, out)] = f.read()
    files.pop("summary.json", None)
    return files


def torch_example(model, tokens, types) -> dict[str, np.ndarray]:
    """PyTorch BERT's activations for one example, unpadded, batch axis dropped."""
    acts = torch_activations(model, np.asarray(tokens)[None], np.asarray(types)[None])
    return {k: v[:, 0] if k.startswith(("attn.", "mlp.", "layer.")) else v[0]
            for k, v in acts.items()}


def test_extract_equals_pytorch_per_example(tiny_bert, torch_bert, tmp_path):
    """Pairs, an empty record, truncation, two layers in a chosen order, bucketed padded batches
    of 4 over chunks of 7 lines: each stored example equals PyTorch BERT on it alone."""
    import transformers

    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, 30, pairs=True)
    with open(corpus, "a") as f:
        f.write("\n" + json.dumps({"text": "  "}) + "\n")
    summary = extract(Options(str(corpus), str(tmp_path / "out"), model=tiny_bert, layers=(1, 0),
                              capture=("embed.out", "layer.out", "attn.probs", "attn.k",
                                       "pooler.out"),
                              batch_size=4, chunk_size=7), progress=False)
    store = ActivationStore(tmp_path / "out")
    assert (summary["written"], summary["empty"], len(store), store.complete) == (30, 2, 30, True)
    assert 0 < summary["truncated"] == sum(e["truncated"] for e in store.examples)
    records = [json.loads(x) for x in open(corpus) if x.strip()]
    tokenizer = transformers.BertTokenizer.from_pretrained(tiny_bert)
    for i in range(len(store)):
        r = records[store.line(i) - 1]
        enc = tokenizer(r["text"], r.get("text_pair"), truncation=True, max_length=MAX_POS)
        np.testing.assert_array_equal(store.token_ids(i), enc["input_ids"])
        want, got = torch_example(torch_bert, enc["input_ids"], enc["token_type_ids"]), store[i]
        assert got["layer.out"].shape == (2, len(enc["input_ids"]), 15)
        assert_close(f"embed.out {i}", got["embed.out"], want["embed.out"])
        assert_close(f"layer.out {i}", got["layer.out"], want["layer.out"][[1, 0]])
        assert_close(f"attn.probs {i}", got["attn.probs"], want["attn.probs"][[1, 0]])
        assert_close(f"attn.k {i}", got["attn.k"], want["attn.k"][[1, 0]])
        assert_close(f"pooler.out {i}", got["pooler.out"], want["pooler.out"])
    keys, ids = store.stacked("attn.k")  # per token: [T_all, L, N, H]
    assert keys.shape == (sum(store.lengths), 2, 3, 5) and len(ids) == len(keys)
    np.testing.assert_array_equal(keys[ids == 4], np.moveaxis(store[4]["attn.k"], 2, 0))


@pytest.mark.parametrize("reduce", ["mean", "cls"])
def test_reduce_pools_real_tokens(tiny_bert, torch_bert, tmp_path, reduce):
    corpus = write_corpus(tmp_path / "c.txt", 9, max_words=20)
    extract(Options(corpus, str(tmp_path / "out"), model=tiny_bert, reduce=reduce,
                    capture=("layer.out", "attn.q", "attn.k", "attn.probs"), batch_size=4),
            progress=False)
    store = ActivationStore(tmp_path / "out")
    pool = (lambda a, axis: a.mean(axis)) if reduce == "mean" else (lambda a, axis: a.take(0, axis))
    for i in range(len(store)):
        tokens = store.token_ids(i)
        want = torch_example(torch_bert, tokens, np.zeros_like(tokens))
        assert_close(f"layer.out {i}", store[i]["layer.out"], pool(want["layer.out"], 1))
        assert_close(f"attn.q {i}", store[i]["attn.q"], pool(want["attn.q"], 2))
        assert_close(f"attn.k {i}", store[i]["attn.k"], pool(want["attn.k"], 2))  # over T
        # the query axis is pooled, the key axis keeps the example's length
        assert_close(f"attn.probs {i}", store[i]["attn.probs"], pool(want["attn.probs"], 2))
    values, ids = store.stacked("layer.out")
    assert values.shape == (9, TINY["num_hidden_layers"], 15) and ids.tolist() == list(range(9))


def test_bfloat16_output(tiny_bert, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", 5, max_words=10)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        extract(Options(corpus, str(tmp_path / dtype), model=tiny_bert, capture=("layer.out",),
                        reduce="mean", dtype=dtype), progress=False)
        runs[dtype] = ActivationStore(tmp_path / dtype).stacked("layer.out").values
    assert runs["bfloat16"].dtype.name == "bfloat16"
    assert_close("layer.out bf16", runs["bfloat16"], runs["float32"], atol=0.1)
    assert not np.array_equal(runs["bfloat16"].astype(np.float32), runs["float32"])


def test_buckets_bound_the_compiles(tiny_bert, tmp_path, monkeypatch):
    """Lengths 3..40 in batches of fixed size: one program per bucket (16, 32, 40), not one per
    length or per batch size; a second run with the same request compiles nothing."""
    traces = []
    forward = sharding.forward
    monkeypatch.setattr(sharding, "forward", lambda *a, **k: traces.append(1) or forward(*a, **k))
    sharding._jitted.cache_clear()
    corpus = write_corpus(tmp_path / "c.txt", 60, max_words=45)
    lengths = set()
    for out in ("a", "b"):
        extract(Options(corpus, str(tmp_path / out), model=tiny_bert, capture=("layer.out",),
                        reduce="cls", batch_size=5, chunk_size=17), progress=False)
        lengths |= {e["length"] for e in ActivationStore(tmp_path / out).examples}
        assert len(traces) == len(bucket_lengths(MAX_POS)) == 3
    assert len(lengths) > 20


def test_input_is_streamed(tmp_path):
    """The first chunk comes out while the writer of a pipe still holds the rest back."""
    fifo = tmp_path / "in.txt"
    os.mkfifo(fifo)
    first_chunk_read, in_time = threading.Event(), []

    def writer():
        with open(fifo, "w") as f:
            f.write("a\n" * 5)
            f.flush()
            in_time.append(first_chunk_read.wait(30))
            f.write("b\n" * 3)

    thread = threading.Thread(target=writer)
    thread.start()
    chunks = raw_chunks(str(fifo), 5)
    first = next(chunks)
    first_chunk_read.set()
    rest = list(chunks)
    thread.join()
    assert in_time == [True]
    assert first == [(n, b"a\n") for n in range(1, 6)] and rest == [[(6, b"b\n"), (7, b"b\n"),
                                                                      (8, b"b\n")]]


def test_processes_split_chunks(tiny_bert, tmp_path):
    """Two processes (process_index 0 and 1 of 2, as under jax.distributed) each do their own
    chunks into one OUT; together they equal one process, each leaves its own summary."""
    corpus = write_corpus(tmp_path / "c.txt", 25, max_words=12)
    kwargs = dict(model=tiny_bert, capture=("layer.out",), chunk_size=6, reduce="cls")
    extract(Options(corpus, str(tmp_path / "one"), **kwargs), progress=False)
    s = extract(Options(corpus, str(tmp_path / "two"), **kwargs), process=(1, 2), progress=False)
    assert s["this_run"] == 12 and s["process"] == [1, 2]
    assert not ActivationStore(tmp_path / "two").complete
    s = extract(Options(corpus, str(tmp_path / "two"), **kwargs), process=(0, 2), progress=False)
    assert s["this_run"] == 13 and s["process"] == [0, 2]
    one, two = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "two")
    assert sorted(os.listdir(tmp_path / "two" / "manifest")) == [f"{k:08d}.json" for k in range(5)]
    assert {f for f in os.listdir(tmp_path / "two") if f.startswith("summary")} == \
        {"summary-0-of-2.json", "summary-1-of-2.json"}
    assert one.complete and two.complete and one.examples == two.examples
    np.testing.assert_array_equal(one.stacked("layer.out").values, two.stacked("layer.out").values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_processes_write_one_folder(tiny_bert, tmp_path):
    """Two real processes joined by jax.distributed.initialize (`--distributed`), 2 devices each,
    one OUT: every chunk once, and the same examples and values as one process on one device."""
    corpus = write_corpus(tmp_path / "c.txt", 50, max_words=20)
    cluster = ["--chunk-size", "10", "--distributed", "--coordinator-address",
               f"localhost:{free_port()}", "--num-processes", "2", "--process-id"]
    procs = [start(cli_args(tiny_bert, corpus, tmp_path / "out", *cluster, str(i)),
                   env=devices_env(2)) for i in (0, 1)]
    outputs = [finish(p) for p in procs]
    for i, out in enumerate(outputs):
        assert f"by process {i} of 2 ({(30, 20)[i]} this run)" in out
    extract(Options(corpus, str(tmp_path / "one"), model=tiny_bert, layers=(1,), chunk_size=10,
                    capture=("layer.out", "attn.probs"), batch_size=8), progress=False)
    one, two = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "out")
    assert two.complete and len(two) == 50 and one.examples == two.examples
    for name in ("layer.out", "attn.probs"):
        for i in range(50):
            assert_close(f"{name} {i}", two[i][name], one[i][name])


def assert_prefix_of(partial, reference) -> int:
    """A killed run's folder reads as a consistent prefix of the finished one; returns its size."""
    part, ref = ActivationStore(partial), ActivationStore(reference)
    assert not part.complete and part.examples == ref.examples[:len(part)]
    for i in range(len(part)):
        for name in ref.names:
            np.testing.assert_array_equal(part[i][name], ref[i][name])
    return len(part)


class Crash(Exception):
    pass


# Each write is: temporary file written, fsync, rename, fsync of the folder. A run stops at the
# n-th fsync: extract.json takes the first two, then each chunk four (shard, then manifest).
CRASH_POINTS = {
    3 + 4: ("shard written, not renamed", "shards/.tmp-p0-00000001.safetensors", 8),
    4 + 4: ("shard renamed, no manifest", "shards/00000001.safetensors", 8),
    5 + 4: ("manifest written, not renamed", "manifest/.tmp-p0-00000001.json", 8),
    6 + 4: ("manifest renamed, folder not synced", "manifest/00000001.json", 16),
}


def test_stopped_at_each_write_step_then_resumed(tiny_bert, tmp_path, monkeypatch):
    """A run stopped at each step of chunk 1's commit leaves a folder that reads as a consistent
    prefix, and the same command then finishes it byte for byte like an uninterrupted run."""
    corpus = write_corpus(tmp_path / "c.txt", 40, max_words=12)

    def run(out):
        return extract(Options(corpus, str(tmp_path / out), model=tiny_bert, layers=(0,),
                               capture=("layer.out",), chunk_size=8, batch_size=4),
                       progress=False)

    run("ref")
    fsync = os.fsync
    for n, (what, left, examples) in CRASH_POINTS.items():
        calls = []

        def crashing_fsync(fd, n=n, what=what, calls=calls):
            calls.append(fd)
            if len(calls) == n:
                raise Crash(what)
            fsync(fd)

        monkeypatch.setattr(os, "fsync", crashing_fsync)
        with pytest.raises(Crash, match=what):
            run(what)
        monkeypatch.setattr(os, "fsync", fsync)
        assert (tmp_path / what / left).exists(), what
        assert assert_prefix_of(tmp_path / what, tmp_path / "ref") == examples, what
        assert run(what)["this_run"] == 40 - examples
        assert folder_contents(tmp_path / what) == folder_contents(tmp_path / "ref"), what


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume(tiny_bert, tmp_path):
    """kill -9 at a random moment after the first commit (most of the time is spent in fsyncs
    slowed to 0.1 s, so the kill lands between the steps of a commit), resume: the folder is byte
    for byte the uninterrupted run's (4 devices in each process); the killed one reads as a
    prefix of it."""
    corpus = write_corpus(tmp_path / "c.txt", 240, max_words=12)  # 6 chunks of 40 lines
    ref, out = tmp_path / "ref", tmp_path / "out"
    reference = start(cli_args(tiny_bert, corpus, ref))
    seed = random.randrange(10**6)
    killed = start(cli_args(tiny_bert, corpus, out), delay=0.1)
    wait_for(out / "manifest" / "00000000.json", killed)
    # chunks 1 to 5 still to go, each with 4 fsyncs of 0.1 s (2.3 s of sleeps in all)
    time.sleep(random.Random(seed).uniform(0.0, 1.6))
    kill(killed)
    left = sorted(os.listdir(out / "manifest")) + sorted(os.listdir(out / "shards"))
    finish(reference)
    assert 40 <= assert_prefix_of(out, ref) < 240, (seed, left)
    finish(start(cli_args(tiny_bert, corpus, out)))
    assert folder_contents(out) == folder_contents(ref), (seed, left)
    assert ActivationStore(out).complete


@pytest.mark.slow
def test_large_corpus_in_bounded_memory(tiny_bert, tmp_path):
    """10 000 lines on 4 devices, every token's mlp.pre and mlp.post kept (over 90 MB written): the process's
    resident memory after each commit stays within a fraction of that after its first (memory
    bounded by a chunk, not the corpus). The ballast check shows the reading sees retained
    memory: a run that kept what it wrote would fail."""
    corpus = write_corpus(tmp_path / "c.txt", 10_000, max_words=30)
    args = ["extract", "--model", tiny_bert, "--input", corpus, "--out", str(tmp_path / "out"),
            "--capture", "mlp.pre,mlp.post", "--batch-size", "64", "--no-progress"]
    out = finish(start(args, env=devices_env(4)))  # sharded over 4 forced host devices
    assert "extract: 10000 examples" in out
    memory = json.loads(out.split("MEMORY")[1])
    shards = tmp_path / "out" / "shards"
    written_kib = sum(os.path.getsize(shards / f) for f in os.listdir(shards)) // 1024
    rss = memory["after_commits"]
    assert len(rss) == 40 and written_kib > 90_000
    assert memory["ballast_growth"] > 60_000, memory["ballast_growth"]
    assert max(rss) - rss[0] < written_kib / 4, (rss, written_kib)
    assert len(ActivationStore(tmp_path / "out")) == 10_000


def _run(tiny_bert, folder, corpus_text: bytes, name="c.txt", **options):
    corpus = folder / name
    folder.mkdir(exist_ok=True)
    corpus.write_bytes(corpus_text)
    options = {"capture": ("layer.out",), "reduce": "mean", **options}
    return extract(Options(str(corpus), str(folder / "out"), model=tiny_bert, **options),
                   progress=False)


def test_invalid_utf8_names_the_line(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match=r"c.txt, line 3: not UTF-8 .*--skip-invalid.*and rerun"):
        _run(tiny_bert, tmp_path, b"w1 w2\nw3\n\xff\xfe w4\nw5\n")
    assert not os.listdir(tmp_path / "out" / "manifest")  # the first chunk holds line 3
    s = _run(tiny_bert, tmp_path / "b", b"w1 w2\nw3\n\xff\xfe w4\n\nw5\n", skip_invalid=True)
    assert (s["written"], s["invalid"], s["empty"]) == (3, 1, 1)
    assert [ActivationStore(tmp_path / "b" / "out").line(i) for i in range(3)] == [1, 2, 5]


@pytest.mark.parametrize("fix", ["skip-invalid", "fixed-line"])
def test_a_run_stopped_at_a_bad_line_resumes_on_the_same_out(tiny_bert, tmp_path, fix):
    """What the message advises works on the same OUT: the chunks before the bad line are kept,
    and the folder ends as a fresh run of the final command makes it."""
    good = b"w1 w2\nw3\nw4 w5\nw6\n"
    bad = good + b"\xff\xfe w7\nw8\n"  # line 5, in chunk 2 of 3 (chunk size 2)
    with pytest.raises(ValueError, match=r"line 5: not UTF-8"):
        _run(tiny_bert, tmp_path, bad, chunk_size=2)
    assert sorted(os.listdir(tmp_path / "out" / "manifest")) == ["00000000.json", "00000001.json"]
    final = (bad, {"skip_invalid": True}) if fix == "skip-invalid" else (good + b"w7\nw8\n", {})
    s = _run(tiny_bert, tmp_path, final[0], chunk_size=2, **final[1])
    assert s["this_run"] == 2 - (fix == "skip-invalid") and s["written"] == 6 - (fix == "skip-invalid")
    _run(tiny_bert, tmp_path / "fresh", final[0], chunk_size=2, **final[1])
    resumed, fresh = folder_contents(tmp_path / "out"), folder_contents(tmp_path / "fresh" / "out")
    metas = [json.loads(files.pop("extract.json")) for files in (resumed, fresh)]
    assert [m["command"].pop("input") for m in metas] == [str(tmp_path / p / "c.txt")
                                                          for p in ("", "fresh")]
    assert metas[0] == metas[1] and resumed == fresh


def test_jsonl_without_text_field(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match=r"line 2: not a valid record \(no string field 'text'\)"):
        _run(tiny_bert, tmp_path, b'{"text": "w1"}\n{"txt": "w2"}\n', name="c.jsonl")
    with pytest.raises(ValueError, match=r"line 1: not a valid record .*is not a string"):
        _run(tiny_bert, tmp_path / "a", b'{"text": "w1", "text_pair": 3}\n', name="c.jsonl")
    with pytest.raises(ValueError, match=r"line 1: not a valid record \(Expecting value"):
        _run(tiny_bert, tmp_path / "c", b'w1 w2\n', name="c.jsonl")
    s = _run(tiny_bert, tmp_path / "b", b'{"body": "w1"}\n', text_field="body", name="c.jsonl")
    assert s["written"] == 1


def test_different_command_is_refused(tiny_bert, tmp_path):
    _run(tiny_bert, tmp_path, b"w1 w2\n")
    before = folder_contents(tmp_path / "out")
    with pytest.raises(ValueError, match=r"made by a different command \(reduce: 'mean' there, "
                                         r"'cls' here\); rerun the same command"):
        _run(tiny_bert, tmp_path, b"w1 w2\n", reduce="cls")
    with pytest.raises(ValueError, match=r"c.txt changed since lines 1-1 were extracted into "):
        _run(tiny_bert, tmp_path, b"w1 w3\n")  # the same size, other words
    assert folder_contents(tmp_path / "out") == before
    assert _run(tiny_bert, tmp_path, b"w1 w2\n")["this_run"] == 0  # the same command: nothing to do


def test_leftovers_of_a_killed_run_are_cleaned(tiny_bert, tmp_path):
    """A run killed while writing extract.json leaves only a temporary file: not refused. A rerun
    removes this process's (tag p0) temporary files and leaves another process's alone."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".tmp-p0-extract.json").write_text("{")
    assert _run(tiny_bert, tmp_path, b"w1 w2\n")["written"] == 1
    assert not [f for f in os.listdir(tmp_path / "out") if f.startswith(".tmp")]
    for name in (".tmp-p0-00000099.json", ".tmp-p1-00000001.json"):
        (tmp_path / "out" / "manifest" / name).write_text("{")
    assert _run(tiny_bert, tmp_path, b"w1 w2\n")["this_run"] == 0
    assert sorted(os.listdir(tmp_path / "out" / "manifest")) == [".tmp-p1-00000001.json",
                                                                  "00000000.json"]


BAD_REQUESTS = [
    ({"capture": ("layer.outt",)},
     r"unknown activation name 'layer.outt' in capture; valid names: embed.word"),
    ({"capture": ("mlm.logits",)}, r"cannot capture 'mlm.logits': this model has no MLM head"),
    ({"capture": ()}, r"--capture needs at least one activation name"),
    ({"layers": (0, 4)}, r"--layers 4 out of range: this model has 4 layers, 0..3"),
    ({"max_length": 41}, r"--max-length must be in \[2, 40\] \(max_position_embeddings\)"),
    ({"batch_size": 0}, r"--batch-size \(0\) and --chunk-size \(256\) must be >= 1"),
    ({"reduce": "max"}, r"--reduce must be one of none, mean, cls, got 'max'"),
    ({"dtype": "float16"}, r"--dtype must be float32 or bfloat16, got 'float16'"),
    ({"model_axis": 0}, r"--model-axis must be >= 1, got 0"),
    ({"model_axis": 2}, r"model_axis=2 must be >= 1 and divide the number of devices \(1\)"),
    ({"input": "missing.txt"}, r"input file .*missing.txt does not exist"),
    ({"out": "other"}, r"other exists and is not a bertjax extract folder \(no extract.json\)"),
]


@pytest.mark.parametrize("change, message", BAD_REQUESTS, ids=[m[:20] for _, m in BAD_REQUESTS])
def test_bad_requests_fail_before_writing(tiny_bert, tmp_path, change, message):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    opts = {"input": write_corpus(tmp_path / "c.txt", 2), "out": "out", "model": tiny_bert,
            "capture": ("layer.out",), **change}
    opts["input"], opts["out"] = str(tmp_path / opts["input"]), str(tmp_path / opts["out"])
    with pytest.raises(ValueError, match=message):
        extract(Options(**opts), progress=False)
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path / "other") == ["x"]


def test_cli_progress_and_summary(tiny_bert, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("w1 w2\n\n" + " ".join(WORDS[:50]) + "\nw3\n")
    args = ["extract", "--model", tiny_bert, "--input", str(corpus), "--out", str(tmp_path / "o"),
            "--capture", "layer.out,attn.nope"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertjax: error: unknown activation name 'attn.nope'") and \
        err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert main(args[:-1] + ["layer.out", "--num-processes", "2"]) == 2
    assert "--coordinator-address, --num-processes and --process-id need --distributed" in \
        capsys.readouterr().err
    assert main(args[:-1] + ["pooler.out", "--reduce", "mean"]) == 0
    captured = capsys.readouterr()
    assert "ex/s]" in captured.err  # the progress bar's rate
    assert captured.out.startswith(f"extract: 3 examples in {tmp_path / 'o'} (3 this run), "
                                   f"1 truncated, skipped 1 empty and 0 invalid lines; ")
    assert captured.out.rstrip().endswith("examples/s")


def test_a_line_over_the_limit_is_never_held_whole(tiny_bert, tmp_path, monkeypatch):
    """A line longer than MAX_LINE_BYTES stops the run naming it and the limit, or is skipped and
    counted with --skip-invalid; it is read in blocks and dropped, never held whole."""
    from bertjax.scale import extract as X

    monkeypatch.setattr(X, "MAX_LINE_BYTES", 64)
    corpus = b"w1 w2\n" + b"w3 " * 100 + b"\nw4\n"
    with pytest.raises(ValueError, match=r"c\.txt, line 2: longer than 64 bytes \(301 bytes; "
                                         r"MAX_LINE_BYTES\); split it, or pass --skip-invalid"):
        _run(tiny_bert, tmp_path, corpus)
    s = _run(tiny_bert, tmp_path / "b", corpus, skip_invalid=True)
    assert (s["written"], s["invalid"]) == (2, 1)
    assert [ActivationStore(tmp_path / "b" / "out").line(i) for i in range(2)] == [1, 3]


@pytest.mark.parametrize("line, why", [
    (b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", r"nested too deeply"),
    (b'{"text": "w1 \\ud800 w2"}', r"field 'text' holds a lone surrogate \('\\ud800'\) at "
                                   r"character 3, which is not text"),
    (b'{"text": "w1", "text_pair": "\\udfff"}', r"field 'text_pair' holds a lone surrogate"),
    (b'{"text": "w1", "n": ' + b"9" * 5000 + b"}", r"Exceeds the limit"),
], ids=["nested", "surrogate", "surrogate-pair-field", "5000-digits"])
def test_jsonl_lines_python_or_the_tokenizer_cannot_take(tiny_bert, tmp_path, line, why):
    corpus = b'{"text": "w1 w2"}\n' + line + b'\n{"text": "w3"}\n'
    with pytest.raises(ValueError, match=r"c\.jsonl, line 2: not a valid record \(.*" + why):
        _run(tiny_bert, tmp_path, corpus, name="c.jsonl")
    s = _run(tiny_bert, tmp_path / "b", corpus, name="c.jsonl", skip_invalid=True)
    assert (s["written"], s["invalid"]) == (2, 1)


def test_a_huge_batch_size_pads_only_to_the_texts(tiny_bert, tmp_path, monkeypatch):
    """--batch-size 50000 on three texts: batches are padded to a few rows, not to 50000."""
    from bertjax.scale import extract as X

    rows, pad_batch = [], X.pad_batch

    def spy(sequences, buckets, pad_id=0, batch_size=None):
        rows.append(batch_size)
        return pad_batch(sequences, buckets, pad_id, batch_size)

    monkeypatch.setattr(X, "pad_batch", spy)
    s = _run(tiny_bert, tmp_path, b"w1\nw2 w3\nw4\n", batch_size=50_000)
    assert s["written"] == 3 and rows and max(rows) <= 4, rows
    rows.clear()
    s = _run(tiny_bert, tmp_path / "b", b"w1\nw2 w3\nw4\nw5\nw6\n", batch_size=50_000, chunk_size=2)
    assert s["written"] == 5 and max(rows) <= 2, rows
