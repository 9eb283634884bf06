"""`bertjax extract`: results against direct `forward` per example, resume after kill -9 (in
subprocesses with 4 forced host devices), bounded memory over a 10 000-line corpus, bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ATOL_TINY, assert_close, make_checkpoint
from bertjax import forward
from bertjax.cli import main
from bertjax.extract import Options, extract
from bertjax.pretrained import load_pretrained
from bertjax.store import ActivationStore

WORDS = [f"w{i}" for i in range(96)]  # vocab: 5 specials + 96 words = TINY vocab_size 101
MAX_POS = 40  # buckets 16, 32, 40
FOUR_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                "JAX_PLATFORMS": "cpu"}

# Runs the CLI in a subprocess; sleeps argv[1] seconds after each shard is written (before its
# manifest: the moment a kill leaves a shard without a manifest), prints peak RSS growth (KiB)
# between the first commit and the end.
WRAPPER = """
import resource, sys, time
import bertjax.extract as E
delay, write, first = float(sys.argv[1]), E._atomic_write, []
def slow(path, data, tag):
    write(path, data, tag)
    if not first and "manifest" in path:
        first.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    if path.endswith(".safetensors"):
        time.sleep(delay)
E._atomic_write = slow
from bertjax.cli import main
rc = main(sys.argv[2:])
print("RSS_GROWTH_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - first[0])
sys.exit(rc)
"""


def make_tiny_bert(folder) -> str:
    """A tiny random BertModel folder (pooler, 40 positions) with a word-level BertTokenizer."""
    import transformers

    make_checkpoint(folder, "BertModel", max_position_embeddings=MAX_POS)
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


def cli_args(model, corpus, out, *extra) -> list[str]:
    return ["extract", "--model", model, "--input", corpus, "--out", str(out), "--no-progress",
            "--capture", "layer.out,attn.probs", "--layers", "1", "--batch-size", "8",
            "--chunk-size", "40", *extra]


def start(args, delay: float = 0.0, env=FOUR_DEVICES) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, str(delay), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    return out


def folder_contents(out) -> dict[str, bytes]:
    """Every file of an extract folder but summary.json (which holds timings), by relative path."""
    files = {}
    for root, _, names in os.walk(out):
        for name in names:
            path = os.path.join(root, name)
            files[os.path.relpath(path, out)] = open(path, "rb").read()
    files.pop("summary.json", None)
    return files


def direct(pre, tokens, types, capture):
    out = forward(pre.params, tokens[None], pre.config, np.asarray(types)[None], capture=capture)
    return {k: np.asarray(v) for k, v in out.acts.items()}, np.asarray(out.pooler_output)


def test_extract_equals_forward_per_example(tiny_bert, tmp_path):
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, 30, pairs=True)
    with open(corpus, "a") as f:
        f.write("\n" + json.dumps({"text": "  "}) + "\n")
    summary = extract(Options(str(corpus), str(tmp_path / "out"), model=tiny_bert, layers=(1, 0),
                              capture=("embed.out", "layer.out", "attn.probs", "pooler.out"),
                              batch_size=4, chunk_size=7), progress=False)
    store, pre = ActivationStore(tmp_path / "out"), load_pretrained(tiny_bert)
    assert (summary["written"], summary["empty"], len(store)) == (30, 2, 30)
    assert 0 < summary["truncated"] == sum(e["truncated"] for e in store.examples)
    records = [json.loads(x) for x in open(corpus) if x.strip()]
    for i in range(len(store)):
        r = records[store.line(i) - 1]
        enc = pre.tokenizer(r["text"], r.get("text_pair"), truncation=True, max_length=MAX_POS)
        np.testing.assert_array_equal(store.tokens(i), enc["input_ids"])
        want, pooled = direct(pre, store.tokens(i), enc["token_type_ids"],
                              ("embed.out", "layer.out", "attn.probs"))
        got = store[i]
        assert_close(f"embed.out {i}", got["embed.out"], want["embed.out"][0])
        assert_close(f"layer.out {i}", got["layer.out"], want["layer.out"][[1, 0], 0])
        assert_close(f"attn.probs {i}", got["attn.probs"], want["attn.probs"][[1, 0], 0])
        assert_close(f"pooler.out {i}", got["pooler.out"], pooled[0])


@pytest.mark.parametrize("reduce", ["mean", "cls"])
def test_reduce_pools_real_tokens(tiny_bert, tmp_path, reduce):
    corpus = write_corpus(tmp_path / "c.txt", 9, max_words=20)
    extract(Options(corpus, str(tmp_path / "out"), model=tiny_bert, reduce=reduce,
                    capture=("layer.out", "attn.q"), batch_size=4), progress=False)
    store, pre = ActivationStore(tmp_path / "out"), load_pretrained(tiny_bert)
    pool = (lambda a, axis: a.mean(axis)) if reduce == "mean" else (lambda a, axis: a.take(0, axis))
    for i in range(len(store)):
        tokens = store.tokens(i)
        want, _ = direct(pre, tokens, np.zeros_like(tokens), ("layer.out", "attn.q"))
        assert_close(f"layer.out {i}", store[i]["layer.out"], pool(want["layer.out"][:, 0], 1))
        assert_close(f"attn.q {i}", store[i]["attn.q"], pool(want["attn.q"][:, 0], 2))
    values, ids = store.stacked("layer.out")
    assert values.shape == (9, 2, 15) and ids.tolist() == list(range(9))


def test_bfloat16_output(tiny_bert, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", 5, max_words=10)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        extract(Options(corpus, str(tmp_path / dtype), model=tiny_bert, capture=("layer.out",),
                        reduce="mean", dtype=dtype), progress=False)
        runs[dtype] = ActivationStore(tmp_path / dtype).stacked("layer.out").values
    assert runs["bfloat16"].dtype.name == "bfloat16"
    assert_close("layer.out bf16", runs["bfloat16"], runs["float32"], atol=0.1)


def test_processes_split_chunks(tiny_bert, tmp_path):
    """Two processes (as under jax.distributed) each do their own chunks into one OUT."""
    corpus = write_corpus(tmp_path / "c.txt", 25, max_words=12)
    kwargs = dict(model=tiny_bert, capture=("layer.out",), chunk_size=6, reduce="cls")
    extract(Options(corpus, str(tmp_path / "one"), **kwargs), progress=False)
    for index in (1, 0):
        s = extract(Options(corpus, str(tmp_path / "two"), **kwargs), process=(index, 2),
                    progress=False)
        assert s["this_run"] == (13 if index == 0 else 12)
    one, two = ActivationStore(tmp_path / "one"), ActivationStore(tmp_path / "two")
    assert one.examples == two.examples
    np.testing.assert_array_equal(one.stacked("layer.out").values, two.stacked("layer.out").values)


def test_kill_after_first_commit_then_resume(tiny_bert, tmp_path):
    """kill -9 between a shard and its manifest; the rerun gives exactly the uninterrupted result,
    which also equals a single-device run (the subprocesses shard over 4 devices)."""
    corpus = write_corpus(tmp_path / "c.txt", 200)
    reference = start(cli_args(tiny_bert, corpus, tmp_path / "ref"))
    killed = start(cli_args(tiny_bert, corpus, tmp_path / "out"), delay=1.0)
    second_shard = tmp_path / "out" / "shards" / "00000001.safetensors"
    deadline = time.time() + 60
    while not second_shard.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    committed = os.listdir(tmp_path / "out" / "manifest")
    assert committed == ["00000000.json"] and second_shard.exists()
    finish(start(cli_args(tiny_bert, corpus, tmp_path / "out")))
    finish(reference)
    assert folder_contents(tmp_path / "out") == folder_contents(tmp_path / "ref")
    extract(Options(corpus, str(tmp_path / "single"), model=tiny_bert, layers=(1,),
                    capture=("layer.out", "attn.probs"), chunk_size=40), progress=False)
    single, sharded = ActivationStore(tmp_path / "single"), ActivationStore(tmp_path / "ref")
    assert single.examples == sharded.examples and len(single) == 200
    for i in (0, 57, 199):
        for name in ("layer.out", "attn.probs"):
            assert_close(f"{name} {i}", sharded[i][name], single[i][name], atol=ATOL_TINY)


def test_kill_at_a_random_moment_then_resume(tiny_bert, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", 200)
    reference = start(cli_args(tiny_bert, corpus, tmp_path / "ref"))
    seed = random.randrange(10**6)
    killed = start(cli_args(tiny_bert, corpus, tmp_path / "out"), delay=0.2)
    first = tmp_path / "out" / "manifest" / "00000000.json"
    deadline = time.time() + 60
    while not first.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0.0, 0.75))  # 4 shards x 0.2 s still to go
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL, f"seed {seed}"
    finish(start(cli_args(tiny_bert, corpus, tmp_path / "out")))
    finish(reference)
    assert folder_contents(tmp_path / "out") == folder_contents(tmp_path / "ref"), f"seed {seed}"


def test_large_corpus_in_bounded_memory(tiny_bert, tmp_path):
    """10 000 lines, every token's mlp.post kept: the process's peak RSS grows by far less after
    its first commit than the activations written (memory bounded by a chunk, not the corpus)."""
    corpus = write_corpus(tmp_path / "c.txt", 10_000, max_words=30)
    args = ["extract", "--model", tiny_bert, "--input", corpus, "--out", str(tmp_path / "out"),
            "--capture", "mlp.post", "--batch-size", "64", "--no-progress"]
    out = finish(start(args, env={**os.environ, "JAX_PLATFORMS": "cpu"}))
    assert "extract: 10000 examples" in out
    growth_kib = int(out.split("RSS_GROWTH_KIB")[1])
    shards = tmp_path / "out" / "shards"
    written_kib = sum(os.path.getsize(shards / f) for f in os.listdir(shards)) // 1024
    assert written_kib > 60_000 and growth_kib < written_kib / 3, (growth_kib, written_kib)
    assert len(ActivationStore(tmp_path / "out")) == 10_000


def _run(tiny_bert, tmp_path, corpus_text: bytes, *extra, name="c.txt"):
    corpus = tmp_path / name
    tmp_path.mkdir(exist_ok=True)
    corpus.write_bytes(corpus_text)
    return extract(Options(str(corpus), str(tmp_path / "out"), model=tiny_bert,
                           capture=("layer.out",), reduce="mean", **dict(extra)), progress=False)


def test_invalid_utf8_names_the_line(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match=r"line 3: not UTF-8 .*--skip-invalid"):
        _run(tiny_bert, tmp_path, b"w1 w2\nw3\n\xff\xfe w4\nw5\n")
    s = _run(tiny_bert, tmp_path / "b", b"w1 w2\nw3\n\xff\xfe w4\n\nw5\n", ("skip_invalid", True))
    assert (s["written"], s["invalid"], s["empty"]) == (3, 1, 1)


def test_jsonl_without_text_field(tiny_bert, tmp_path):
    with pytest.raises(ValueError, match=r"line 2: not a valid record \(no string field 'text'\)"):
        _run(tiny_bert, tmp_path, b'{"text": "w1"}\n{"txt": "w2"}\n', name="c.jsonl")
    with pytest.raises(ValueError, match=r"line 1: not a valid record .*is not a string"):
        _run(tiny_bert, tmp_path / "a", b'{"text": "w1", "text_pair": 3}\n', name="c.jsonl")
    s = _run(tiny_bert, tmp_path / "b", b'{"body": "w1"}\n', ("text_field", "body"),
             name="c.jsonl")
    assert s["written"] == 1


def test_different_command_is_refused(tiny_bert, tmp_path):
    _run(tiny_bert, tmp_path, b"w1 w2\n")
    with pytest.raises(ValueError, match=r"made by a different command \(reduce: 'mean' there, "
                                         r"'cls' here\); rerun the same command"):
        _run(tiny_bert, tmp_path, b"w1 w2\n", ("reduce", "cls"))
    with pytest.raises(ValueError, match=r"different command \(input_bytes: 6 there, 9 here\)"):
        _run(tiny_bert, tmp_path, b"w1 w2 w3\n")


BAD_REQUESTS = [
    ({"capture": ("layer.outt",)},
     r"unknown activation name 'layer.outt' in capture; valid names: embed.word"),
    ({"capture": ("mlm.logits",)}, r"cannot capture 'mlm.logits': this model has no MLM head"),
    ({"capture": ()}, r"--capture needs at least one activation name"),
    ({"layers": (0, 2)}, r"--layers 2 out of range: this model has 2 layers, 0..1"),
    ({"max_length": 41}, r"--max-length must be in \[2, 40\] \(max_position_embeddings\)"),
    ({"batch_size": 0}, r"--batch-size \(0\) and --chunk-size \(256\) must be >= 1"),
    ({"reduce": "max"}, r"--reduce must be one of none, mean, cls, got 'max'"),
    ({"input": "missing.txt"}, r"input file .*missing.txt does not exist"),
    ({"out": "other"}, r"other exists and is not a bertjax extract folder \(no extract.json\)"),
]


@pytest.mark.parametrize("change, message", BAD_REQUESTS, ids=[m[:20] for _, m in BAD_REQUESTS])
def test_bad_requests(tiny_bert, tmp_path, change, message):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("x")
    opts = {"input": write_corpus(tmp_path / "c.txt", 2), "out": "out", "model": tiny_bert,
            "capture": ("layer.out",), **change}
    opts["input"], opts["out"] = str(tmp_path / opts["input"]), str(tmp_path / opts["out"])
    with pytest.raises(ValueError, match=message):
        extract(Options(**opts), progress=False)


def test_cli_reports_one_line(tiny_bert, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", 3)
    args = ["extract", "--model", tiny_bert, "--input", corpus, "--out", str(tmp_path / "o"),
            "--no-progress", "--capture", "layer.out,attn.nope"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertjax: error: unknown activation name 'attn.nope'") and \
        err.count("\n") == 1
    assert main(args[:-1] + ["pooler.out", "--reduce", "mean"]) == 0
    assert capsys.readouterr().out.startswith(f"extract: 3 examples in {tmp_path / 'o'} (3 this")
