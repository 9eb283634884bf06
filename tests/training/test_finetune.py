"""`bertjax finetune` and `bertjax.training.datasets` on a tiny model with a tiny WordPiece tokenizer: it
learns a separable task, a run killed with SIGKILL and rerun ends bit for bit where an uninterrupted
run ends, the saved folder loads and predicts, bad data is named by file and line, and the token and
MLM tasks run end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from conftest import make_checkpoint

import bertjax
from bertjax.commands.cli import main
from bertjax.model.params import flatten
from bertjax.scale.buckets import bucket_for
from bertjax.training import datasets as D
from bertjax.training import finetune as F
from bertjax.training.train import IGNORE

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POS, NEG = ["good", "great", "nice", "fine"], ["bad", "awful", "poor", "sad"]
FILLER = [f"w{i}" for i in range(12)]
PIECES = ["un", "##real", "##ly"]  # "unreally" -> un ##real ##ly
VOCAB = SPECIALS + POS + NEG + FILLER + PIECES + [f"x{i}" for i in range(101 - 5 - 8 - 12 - 3)]
# The run the resume test repeats: 12 batches an epoch, the first checkpoint at step 5.
RUN = dict(task="classification", epochs=10, batch_size=8, lr=3e-3, max_length=32, seed=0,
           checkpoint_every=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """A tiny BertForMaskedLM (V=101, 40 positions, init std 0.2 so that it learns in a few dozen
    steps) with a WordPiece vocab.txt and its BertTokenizer."""
    import transformers

    folder = tmp_path_factory.mktemp("tiny_ft")
    # 2 layers: the learning test's step counts and thresholds were set on this size
    make_checkpoint(folder, "BertForMaskedLM", max_position_embeddings=40, initializer_range=0.2,
                    num_hidden_layers=2)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    return str(folder)


def sentences(n: int, seed: int) -> list[dict]:
    """Separable: the label is the polarity of the one POS or NEG word among 2-5 filler words."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        words = list(rng.choice(FILLER, size=rng.integers(2, 6)))
        words.insert(rng.integers(len(words) + 1), rng.choice(POS if i % 2 else NEG))
        records.append({"text": " ".join(words), "label": label})
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("ft_data")
    return {"train": D.write_jsonl(folder / "train.jsonl", sentences(96, 0)),
            "eval": D.write_jsonl(folder / "eval.jsonl", sentences(32, 1))}


@pytest.fixture(scope="module")
def reference(tiny, data, tmp_path_factory) -> dict:
    """An uninterrupted run of RUN."""
    out = str(tmp_path_factory.mktemp("ft_ref") / "out")
    opts = F.Options(train=data["train"], eval=data["eval"], out=out, model=tiny, **RUN)
    return {"opts": opts, "summary": F.finetune(opts, progress=False)}


@pytest.mark.slow
def test_learns_a_separable_task(reference):
    epochs = reference["summary"]["history"]["epochs"]
    assert len(epochs) == 10 and epochs[-1]["step"] == 120 and epochs[-1]["eval_labels"] == 32
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert epochs[-1]["eval_accuracy"] >= 0.8, epochs
    before = reference["summary"]["history"]["before"]
    assert before["eval_labels"] == 32 and before["eval_accuracy"] <= 0.7


def test_saved_model_loads_and_predicts(reference, data):
    folder = reference["summary"]["model"]
    assert {"config.json", "flax_model.msgpack", "vocab.txt", "tokenizer.json"} <= set(
        os.listdir(folder))
    from bertjax.checkpoints.files import umask

    for path in (reference["opts"].out, folder):  # the umask's mode (0755 under 022), not 0700
        assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask(), path
    config, params = bertjax.load(folder)
    assert config.num_labels == 2 and config.id2label == ("negative", "positive")
    assert params["classifier"]["kernel"].shape == (config.hidden_size, 2)
    from bertjax.checkpoints.pretrained import load_pretrained

    tokenizer = load_pretrained(folder).tokenizer
    with open(data["eval"]) as f:
        records = [json.loads(line) for line in f]
    enc = tokenizer([r["text"] for r in records], padding=True, return_tensors="np")
    out = bertjax.forward(params, enc["input_ids"], config, enc["token_type_ids"],
                          enc["attention_mask"])
    predicted = np.argmax(bertjax.classifier_logits(params, out.pooler_output, config), axis=-1)
    accuracy = np.mean([config.id2label[p] == r["label"] for p, r in zip(predicted, records)])
    assert accuracy == reference["summary"]["history"]["epochs"][-1]["eval_accuracy"]


def _argv(opts: F.Options) -> list[str]:
    args = ["finetune", "--model", opts.model, "--train", opts.train, "--eval", opts.eval,
            "--out", opts.out, "--no-progress"]
    for name, value in RUN.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


# Runs the CLI; right after the first checkpoint is written, leaves a half-written temporary file
# (as if killed inside the next write) and sends itself SIGKILL. The jax settings are conftest's.
KILLED_AFTER_FIRST_CHECKPOINT = textwrap.dedent("""
    import os, signal, sys
    import jax
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_default_matmul_precision", "highest")
    import bertjax.training.finetune as F
    from bertjax.commands.cli import main
    write = F.write_checkpoint
    def write_then_die(out, *args):
        write(out, *args)
        with open(os.path.join(out, ".tmp-finetune-checkpoint.msgpack"), "wb") as f:
            f.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    F.write_checkpoint = write_then_die
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_killed_then_rerun_ends_bit_for_bit_as_uninterrupted(reference, tmp_path, capsys):
    opts = dataclasses.replace(reference["opts"], out=str(tmp_path / "out"))
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_FIRST_CHECKPOINT, *_argv(opts)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # the killed run's lock file stays (its lock died with it) and the resumed run takes it over
    assert sorted(os.listdir(opts.out)) == [".lock-finetune", ".tmp-finetune-checkpoint.msgpack",
                                            F.CHECKPOINT_FILE, F.META_FILE]
    assert main(_argv(opts)) == 0  # the same command resumes
    assert "finetune: 120 steps (115 this run" in capsys.readouterr().out
    assert sorted(os.listdir(opts.out)) == [F.META_FILE, F.HISTORY_FILE, F.MODEL_DIR]
    want = flatten(bertjax.load(reference["summary"]["model"])[1])
    got = flatten(bertjax.load(os.path.join(opts.out, F.MODEL_DIR))[1])
    assert set(got) == set(want)
    for path in want:
        assert np.array_equal(np.asarray(got[path]), np.asarray(want[path])), path
    with open(os.path.join(opts.out, F.HISTORY_FILE)) as f:
        assert json.load(f) == reference["summary"]["history"]


def test_bad_checkpoints_are_refused(reference, tmp_path):
    from bertjax.training.train import init_state

    opts = dataclasses.replace(reference["opts"], out=str(tmp_path / "out"))
    os.makedirs(opts.out)
    F.prepare_out(opts.out, F.describe(opts))
    tx = F.optimizer(opts.lr, opts.warmup, 120, opts.weight_decay, opts.clip_norm, 1)
    state = init_state(F.prepare(opts, 1).params, tx)  # step 0, but the position says 5
    F.write_checkpoint(opts.out, state, {"epoch": 0, "batch": 5, "seed": 0, "step": 5}, {})
    with pytest.raises(ValueError, match=r"checkpoint.msgpack is inconsistent \(state step 0"):
        F.finetune(opts, progress=False)
    with open(os.path.join(opts.out, F.CHECKPOINT_FILE), "wb") as f:
        f.write(b"\x81\xa4meta\xa2{}")  # a msgpack map without a state
    with pytest.raises(ValueError, match=r"checkpoint.msgpack cannot be resumed by this run "
                                         r"\(KeyError: 'state'\); remove it to start over"):
        F.finetune(opts, progress=False)


def test_done_run_is_not_repeated_and_other_commands_are_refused(reference, capsys):
    opts = reference["opts"]
    again = F.finetune(opts, progress=False)
    assert again["this_run"] == 0 and again["history"] == reference["summary"]["history"]
    with pytest.raises(ValueError, match=r"was made by a different command \(lr: 0.003 there, "
                                         r"0.02 here\); rerun the same command"):
        F.finetune(dataclasses.replace(opts, lr=2e-2), progress=False)
    argv = _argv(opts)
    argv[argv.index("--seed") + 1] = "1"
    assert main(argv) == 2
    assert "bertjax: error:" in capsys.readouterr().err


def test_foreign_out_folder_is_refused(data, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not a bertjax finetune folder"):
        F.check_options(F.Options(train=data["train"], out=str(tmp_path)))


def _write(tmp_path, lines: list[str], name="data.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize("task,lines,message", [
    ("classification", ['{"text": "good", "label": "a"}', '{"text": "x", "label": '],
     r"data.jsonl, line 2: invalid JSON"),
    ("classification", ['["good", "a"]'], r"line 1: not a JSON object"),
    ("classification", ['{"text": "good", "label": "a"}', '', '{"text": "bad"}'],
     r"line 3: missing label \(no field 'label'\)"),
    ("classification", ['{"text": "   ", "label": "a"}'], r"line 1: empty text in field 'text'"),
    ("classification", ['{"sentence": "good", "label": "a"}'],
     r"line 1: missing text \(no field 'text'\)"),
    ("classification", ['{"text": 3, "label": "a"}'], r"line 1: field 'text' is not a string"),
    ("classification", ['{"text": "good", "text_pair": "", "label": "a"}'],
     r"line 1: empty text in field 'text_pair'"),
    ("classification", ['{"text": "good", "label": 1.5}'],
     r"line 1: label 1.5 is not a name or an integer >= 0"),
    ("classification", ['{"text": "good", "label": true}'], r"line 1: label True is not a name"),
    ("classification", ['{"text": "good", "label": "a"}', '{"text": "bad", "label": 0}'],
     r"line 2: label 0 mixes names and integers \(line 1 has the other kind\)"),
    ("tokens", ['{"tokens": ["good", "w1"], "labels": ["A"]}'],
     r"line 1: 'tokens' has 2 words but 'labels' has 1 labels"),
    ("tokens", ['{"tokens": ["good", ""], "labels": ["A", "B"]}'],
     r"line 1: field 'tokens' must be a non-empty list of non-empty words"),
    ("tokens", ['{"tokens": ["good"]}'], r"line 1: missing labels \(no field 'labels'\)"),
    ("tokens", ['{"tokens": ["good"], "labels": [null]}'], r"line 1: missing label"),
    ("mlm", [b"\xff\xfe".decode("latin-1")], r"line 1: invalid JSON"),
    ("mlm", ['', '  '], r"data.jsonl holds no records"),
])
def test_bad_data_names_file_and_line(tmp_path, task, lines, message):
    path = _write(tmp_path, lines)
    with pytest.raises(ValueError, match=message):
        rows = D.parse(path, D.Fields.for_task(task))
        D.label_names(rows, path)


def test_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match="data.jsonl, line 2: not UTF-8"):
        D.parse(str(path), D.Fields.for_task("mlm"))


def test_unknown_eval_labels_fail_before_anything_is_written(tiny, data, tmp_path):
    bad = _write(tmp_path, ['{"text": "good w1", "label": "positive"}',
                            '{"text": "bad w2", "label": "neutral"}'], "eval.jsonl")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"eval.jsonl, line 2: unknown label 'neutral'; the "
                                         r"training labels are negative, positive"):
        F.finetune(F.Options(train=data["train"], eval=bad, out=str(out), model=tiny,
                             max_length=32), progress=False)
    assert not out.exists()
    with pytest.raises(ValueError, match=r"line 1: unknown label 3; the training labels are 0..2"):
        D.label_id(3, (), 3, "eval.jsonl", 1)


@pytest.mark.parametrize("change,message", [
    (dict(task="regression"), "--task must be one of classification, tokens, mlm"),
    (dict(epochs=0), "--epochs must be an integer >= 1, got 0"),
    (dict(batch_size=0), "--batch-size must be an integer >= 1"),
    (dict(grad_accum=0), "--grad-accum must be an integer >= 1"),
    (dict(checkpoint_every=-1), "--checkpoint-every must be an integer >= 1"),
    (dict(lr=0.0), r"need --lr > 0 \(0.0\)"),
    (dict(warmup=1.0), r"0 <= --warmup < 1 \(1.0\)"),
    (dict(mlm_probability=1.5), r"mlm_probability must be in \(0, 1\)"),
    (dict(train="missing.jsonl"), "--train file missing.jsonl does not exist"),
    (dict(eval="missing.jsonl"), "--eval file missing.jsonl does not exist"),
])
def test_bad_options(data, tmp_path, change, message):
    opts = F.Options(**{"train": data["train"], "out": str(tmp_path / "out"), **change})
    with pytest.raises(ValueError, match=message):
        F.check_options(opts)


def test_the_model_is_checked(tiny, data, tmp_path, checkpoint_factory):
    import transformers

    with pytest.raises(ValueError, match=r"--max-length must be in \[2, 40\]"):
        F.prepare(F.Options(train=data["train"], out=str(tmp_path), model=tiny, max_length=41), 1)
    bare = checkpoint_factory("BertModel")
    with pytest.raises(ValueError, match="has no tokenizer files"):
        F.prepare(F.Options(train=data["train"], out=str(tmp_path), model=bare), 1)
    no_mlm = make_checkpoint(tmp_path / "no_mlm", "BertModel")
    transformers.BertTokenizer(vocab=os.path.join(tiny, "vocab.txt")).save_pretrained(no_mlm)
    with pytest.raises(ValueError, match="has no MLM head .*; --task mlm needs one"):
        F.prepare(F.Options(train=data["train"], out=str(tmp_path), model=no_mlm, task="mlm",
                            max_length=8), 1)


def test_sentiment_splits_share_no_word_or_template():
    train, test = D.sentiment("train", 200, seed=1), D.sentiment("test", 100, seed=1)
    assert train == D.sentiment("train", 200, seed=1) and train != D.sentiment("train", 200)
    assert [r["label"] for r in test].count("positive") == 50
    for split, records in (("train", train), ("test", test)):
        for r in records:
            words = set(r["text"].replace(",", " ").replace(".", " ").replace("!", " ").split())
            polar = words & set(D.POSITIVE[split] + D.NEGATIVE[split])
            assert len(polar) == 1 and (polar <= set(D.POSITIVE[split])) == \
                (r["label"] == "positive")
    for table in (D.TEMPLATES, D.POSITIVE, D.NEGATIVE, D.NOUNS):
        assert not set(table["train"]) & set(table["test"])
    with pytest.raises(ValueError, match="split must be one of train, test, got 'dev'"):
        D.sentiment("dev", 3)
    with pytest.raises(ValueError, match="n must be a positive integer, got 0"):
        D.sentiment("train", 0)
    with pytest.raises(ValueError, match="task must be one of classification, tokens, mlm"):
        D.Fields.for_task("ner")


def test_mask_tokens_is_berts_80_10_10():
    ids = np.random.default_rng(0).integers(5, 101, (64, 100)).astype(np.int32)
    special = np.zeros(ids.shape, bool)
    special[:, 0] = special[:, -1] = True
    masked, labels = D.mask_tokens(ids, special, np.random.default_rng(1), 101, 4, 0.15)
    chosen = labels != IGNORE
    assert not chosen[special].any() and np.array_equal(labels[chosen], ids[chosen])
    assert abs(chosen.mean() - 0.15 * 98 / 100) < 0.01
    as_mask = (masked == 4)[chosen].mean()
    kept = (masked == ids)[chosen].mean()  # 10% kept, plus random draws of the same id
    assert abs(as_mask - 0.8) < 0.03 and abs(kept - 0.1) < 0.03
    assert np.array_equal(masked[~chosen], ids[~chosen])
    again, _ = D.mask_tokens(ids, special, np.random.default_rng(1), 101, 4, 0.15)
    assert np.array_equal(again, masked)


def test_epoch_batches_are_seeded_permutations_grouped_by_bucket():
    lengths = np.random.default_rng(0).integers(3, 40, 203).tolist()
    batches = D.epoch_batches(lengths, 8, (16, 32, 40), seed=3, epoch=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(203)) and len(batches) == 26
    same = D.epoch_batches(lengths, 8, (16, 32, 40), seed=3, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(batches, same))
    other = D.epoch_batches(lengths, 8, (16, 32, 40), seed=3, epoch=2)
    assert any(not np.array_equal(a, b) for a, b in zip(batches, other))
    mixed = sum(len({bucket_for(lengths[i], (16, 32, 40)) for i in b}) > 1 for b in batches)
    assert mixed <= 2  # sorted within the window: only batches at bucket borders mix


def test_token_labels_go_to_first_pieces(tiny):
    from bertjax.checkpoints.pretrained import load_pretrained

    tokenizer = load_pretrained(tiny).tokenizer
    ids, tags = D.encode_words(tokenizer, ["good", "unreally", "zzz"], [0, 1, 2], 32, {})
    assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "good", "un", "##real", "##ly",
                                                    "[UNK]", "[SEP]"]
    assert tags == [IGNORE, 0, 1, IGNORE, IGNORE, 2, IGNORE]
    ids, tags = D.encode_words(tokenizer, ["good", "unreally", "zzz"], [0, 1, 2], 4, {})
    assert len(ids) == 4 and tags == [IGNORE, 0, 1, IGNORE]


@pytest.fixture(scope="module")
def small_run(tiny, tmp_path_factory):
    """run(task) -> the summary of one epoch of the tokens or mlm task on 16 records (2 steps),
    run once per task for the module (the tokens run is also the export test's)."""
    runs = {}

    def run(task: str) -> dict:
        if task not in runs:
            folder = tmp_path_factory.mktemp(f"ft_{task}")
            rng = np.random.default_rng(0)
            if task == "tokens":  # tag each word: positive / negative / other
                words = [list(rng.choice(POS + NEG + FILLER + ["unreally"], size=4))
                         for _ in range(16)]
                records = [{"tokens": w, "labels": ["P" if x in POS else "N" if x in NEG else "O"
                                                    for x in w]} for w in words]
            else:
                records = sentences(16, 2)
            train = D.write_jsonl(folder / "train.jsonl", records)
            opts = F.Options(train=train, eval=train, out=str(folder / "out"), model=tiny,
                             task=task, epochs=1, batch_size=8, max_length=16, lr=1e-3)
            runs[task] = F.finetune(opts, progress=False)
        return runs[task]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("task", ["tokens", "mlm"])
def test_tokens_and_mlm_tasks_run_and_save(tiny, small_run, task):
    summary = small_run(task)
    last = summary["last"]
    assert summary["steps"] == 2 and np.isfinite(last["eval_loss"]) and last["eval_labels"] > 0
    config, params = bertjax.load(summary["model"])
    if task == "tokens":
        assert config.id2label == ("N", "O", "P") and "classifier" in params
        assert last["eval_labels"] == 64  # one label per word
    else:
        assert "classifier" not in params and "cls" in params
    start = flatten(bertjax.load(tiny)[1])
    moved = flatten(params)["encoder/layer/0/output/dense/kernel"]
    assert not np.array_equal(moved, start["encoder/layer/0/output/dense/kernel"])
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x: np.isfinite(x).all(), params))


@pytest.mark.slow
@pytest.mark.parametrize("progress", [False, True], ids=["no-progress", "progress"])
def test_cli_prints_each_epochs_metrics_with_bf16_and_accumulation(tiny, tmp_path, capsys,
                                                                    progress):
    """The metrics before training and after each epoch are printed, above the progress bar or,
    with --no-progress, as plain lines; --bf16 and --grad-accum run through the CLI."""
    train = D.write_jsonl(tmp_path / "train.jsonl", sentences(16, 3))
    args = ["finetune", "--model", tiny, "--train", train, "--eval", train, "--out",
            str(tmp_path / "out"), "--epochs", "2", "--batch-size", "4", "--max-length", "16",
            "--grad-accum", "2", "--bf16", "--task", "classification"] + ([] if progress else
                                                                         ["--no-progress"])
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["before training", "epoch 1", "epoch 2",
                                                         lines[-1].split("  ")[0]]
    assert "eval_accuracy" in lines[1] and "train_loss" in lines[2]
    assert lines[-1].startswith("finetune: 8 steps (8 this run")
    assert ("finetune: 100%" in captured.err) == progress  # the bar, on stderr
    history = json.loads((tmp_path / "out" / F.HISTORY_FILE).read_text())
    assert np.isfinite(history["loss"]).all() and len(history["loss"]) == 8


SHARDED_FINETUNE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    import bertjax.training.finetune as F
    from bertjax.model.params import flatten
    import bertjax
    assert jax.device_count() == 2, jax.devices()
    train, tiny, out = sys.argv[1:4]
    params, losses = [], []
    for n in (1, 2):
        opts = F.Options(train=train, eval=train, out=f"{out}-{n}", model=tiny, epochs=1,
                         batch_size=8, max_length=16, lr=1e-3, task="classification")
        s = F.finetune(opts, progress=False, devices=jax.devices()[:n])
        params.append(flatten(bertjax.load(s["model"])[1]))
        losses.append(s["history"]["loss"])
    diffs = np.concatenate([np.abs(np.asarray(params[0][k]) - np.asarray(params[1][k])).ravel()
                            for k in params[0]])
    print("RESULT", json.dumps({"loss": float(np.abs(np.subtract(*losses)).max()),
                                "max": float(diffs.max()), "over": float((diffs > 1e-5).mean())}))
""")


@pytest.mark.slow
def test_finetune_over_two_devices_equals_one(tiny, tmp_path):
    """The same run (dropout on) with each batch split over 2 (forced host) devices ends where
    1 device does."""
    train = D.write_jsonl(tmp_path / "train.jsonl", sentences(32, 4))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", SHARDED_FINETUNE, train, tiny,
                          str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT")[1])
    # Losses agree to float32 rounding (measured 6e-8 over the 4 steps). The gradient all-reduce
    # sums in another order, and Adam's g / (sqrt(v) + eps) turns that rounding into steps of up
    # to lr where |g| is near eps: measured 0.4 % of the elements off by more than 1e-5, the
    # largest by 1.9e-4 (0.2 lr).
    assert result["loss"] <= 1e-5 and result["over"] <= 0.01 and result["max"] <= 1e-3, result


@pytest.mark.parametrize("label", [1_000_000_000, 2**70])
def test_integer_labels_are_bounded(tmp_path, label):
    """One label of 1e9 would make a billion-class classifier; 2**70 a JAX overflow."""
    path = _write(tmp_path, ['{"text": "good", "label": 1}', f'{{"text": "bad", "label": {label}}}'])
    with pytest.raises(ValueError, match=rf"data\.jsonl, line 2: label {label} is over the limit: "
                                         rf"integer labels must be < {D.MAX_LABELS} "
                                         rf"\(datasets\.MAX_LABELS\)"):
        D.parse(path, D.Fields.for_task("classification"))
    tokens = _write(tmp_path, [f'{{"tokens": ["good"], "labels": [{label}]}}'], "t.jsonl")
    with pytest.raises(ValueError, match=r"t\.jsonl, line 1: label .* is over the limit"):
        D.parse(tokens, D.Fields.for_task("tokens"))


def test_label_names_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_LABELS", 3)
    path = _write(tmp_path, [f'{{"text": "w{i}", "label": "n{i}"}}' for i in range(5)])
    rows = D.parse(path, D.Fields.for_task("classification"))
    with pytest.raises(ValueError, match=r"data\.jsonl: 5 label names, over the limit of 3 "
                                         r"\(datasets\.MAX_LABELS\)"):
        D.label_names(rows, path)


@pytest.mark.parametrize("line, message", [
    ('{"text": ' + "[" * 100_000 + "]" * 100_000 + ', "label": "a"}',
     r"line 2: invalid JSON \(nested too deeply\)"),
    ('{"text": "w1 \\ud800", "label": "a"}',
     r"line 2: field 'text' holds a lone surrogate \('\\ud800'\) at character 3"),
    ('{"tokens": ["w1", "\\udc00"], "labels": ["a", "b"]}',
     r"line 2: field 'tokens' holds a lone surrogate"),
    ('{"text": "w1", "label": ' + "9" * 5000 + "}", r"line 2: invalid JSON \(Exceeds the limit"),
], ids=["nested", "surrogate", "surrogate-word", "5000-digits"])
def test_lines_python_or_the_tokenizer_cannot_take(tmp_path, line, message):
    task = "tokens" if "tokens" in line else "classification"
    first = '{"tokens": ["w0"], "labels": ["a"]}' if task == "tokens" else '{"text": "w0", "label": "a"}'
    path = _write(tmp_path, [first, line])
    with pytest.raises(ValueError, match=r"data\.jsonl, " + message):
        D.parse(path, D.Fields.for_task(task))


def test_a_line_over_the_limit_is_never_held_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "MAX_LINE_BYTES", 64)
    path = _write(tmp_path, ['{"text": "w0", "label": "a"}', '{"text": "' + "w1 " * 100 + '"}'])
    with pytest.raises(ValueError, match=r"data\.jsonl, line 2: longer than 64 bytes \(\d+ bytes; "
                                         r"datasets\.MAX_LINE_BYTES\); split or shorten it"):
        D.parse(path, D.Fields.for_task("classification"))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["classification", "tokens"])
def test_finetuned_model_exports_to_transformers(reference, small_run, tmp_path, task, capsys):
    """`bertjax export` of a finetune run's model/ (the module's classification and tokens runs)
    picks the class from finetune.json; transformers loads it with every key in place and computes
    bertjax's logits."""
    import torch
    import transformers

    from bertjax.model.heads import classifier_logits, token_classifier_logits

    model_dir = (reference["summary"] if task == "classification" else small_run("tokens"))["model"]
    assert main(["export", model_dir, str(tmp_path / "hf")]) == 0
    name = {"classification": "ForSequenceClassification", "tokens": "ForTokenClassification"}[task]
    assert f"as Bert{name}" in capsys.readouterr().out
    auto = getattr(transformers, f"AutoModel{name}")
    model, info = auto.from_pretrained(tmp_path / "hf", output_loading_info=True,
                                       attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tokenizer(["good w1 w2", "bad"], padding=True, return_tensors="np")
    config, params = bertjax.load(model_dir)
    out = bertjax.forward(params, batch["input_ids"], config,
                          token_type_ids=batch["token_type_ids"],
                          attention_mask=batch["attention_mask"])
    want = (classifier_logits(params, out.pooler_output, config) if task == "classification"
            else token_classifier_logits(params, out.last_hidden_state, config))
    with torch.no_grad():
        got = model.eval()(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    assert model.config.id2label == dict(enumerate(config.id2label))
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-5, rtol=0)
