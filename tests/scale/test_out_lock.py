"""One run per output folder: `bertjax extract` and `bertjax finetune` take an OS-level lock on OUT
(per process of a multi-host run); a second run is refused naming the first's pid; a run killed
with kill -9 leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from bertjax.checkpoints.files import FolderInUseError, out_lock
from bertjax.commands.cli import main
from bertjax.scale.extract import Options, extract
from bertjax.training import finetune as F

HOLD = ("import sys, time\n"
        "from bertjax.checkpoints.files import out_lock\n"
        "with out_lock(sys.argv[1], sys.argv[2], 'extract'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(120)\n")


@pytest.fixture
def holder():
    """start(folder, tag) -> a process holding out_lock(folder, tag) until it is killed."""
    procs = []

    def start(folder, tag):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), tag], stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _extract_opts(tmp_path, out) -> Options:
    (tmp_path / "c.txt").write_text("w1 w2\n")
    return Options(input=str(tmp_path / "c.txt"), out=str(out), model=str(tmp_path / "no-model"),
                   capture=("layer.out",))


def test_second_extract_on_the_same_out_is_refused(tmp_path, holder):
    p = holder(tmp_path / "out", "extract-p0")
    with pytest.raises(FolderInUseError, match=rf"out is in use by another bertjax extract run \(pid "
                                               rf"{p.pid} on \S+\); wait for it to end, or choose "
                                               r"another --out"):
        extract(_extract_opts(tmp_path, tmp_path / "out"), progress=False)


def test_cli_extract_refusal_is_one_line(tmp_path, holder, capsys):
    p = holder(tmp_path / "out", "extract-p0")
    opts = _extract_opts(tmp_path, tmp_path / "out")
    rc = main(["extract", "--input", opts.input, "--out", opts.out, "--capture", "layer.out",
               "--model", opts.model, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err == (f"bertjax: error: {opts.out} is in use by another bertjax extract run "
                               f"(pid {p.pid} on {os.uname().nodename}); wait for it to end, or "
                               f"choose another --out\n")


def test_kill_9_leaves_no_stale_lock(tmp_path, holder):
    p = holder(tmp_path / "out", "extract-p0")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert os.listdir(tmp_path / "out") == [".lock-extract-p0"]  # the file stays, the lock does not
    with pytest.raises(ValueError, match=r"no-model"):  # past the lock, refused for the model
        extract(_extract_opts(tmp_path, tmp_path / "out"), progress=False)
    with out_lock(str(tmp_path / "out"), "extract-p0", "extract") as path:
        assert open(path).read() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    assert not os.path.exists(path)


def test_each_process_of_a_distributed_run_locks_its_own_share(tmp_path, holder):
    holder(tmp_path / "out", "extract-p0")  # process 0 of 2 is running
    with pytest.raises(ValueError, match=r"no-model"):  # process 1 gets past its lock
        extract(_extract_opts(tmp_path, tmp_path / "out"), process=(1, 2), progress=False)
    with pytest.raises(FolderInUseError, match=r"in use by another bertjax extract run"):
        extract(_extract_opts(tmp_path, tmp_path / "out"), process=(0, 2), progress=False)


def test_a_refused_run_leaves_no_folder_it_created(tmp_path):
    with pytest.raises(ValueError, match=r"no-model"):
        extract(_extract_opts(tmp_path, tmp_path / "new"), progress=False)
    assert not (tmp_path / "new").exists()


def test_second_finetune_on_the_same_out_is_refused(tmp_path, holder):
    p = holder(tmp_path / "out", "finetune")
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 0}\n')
    opts = F.Options(train=str(tmp_path / "t.jsonl"), out=str(tmp_path / "out"),
                     model=str(tmp_path / "no-model"))
    with pytest.raises(FolderInUseError, match=rf"out is in use by another bertjax finetune run "
                                               rf"\(pid {p.pid} on "):
        F.finetune(opts, progress=False)
