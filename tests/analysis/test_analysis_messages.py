"""Messages that lead with their cause, and the first-hour traps of issue 26 (analysis wing)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bertjax.analysis import views
from bertjax.analysis.attribution import logit_attribution
from bertjax.commands.cli import main

PROBS = np.full((2, 1, 3, 4, 4), 0.25, np.float32)  # [L, B, N, S, T]
TOKENS = ["[CLS]", "the", "cat", "[SEP]"]
IDS = "tokens must be the token strings, got token ids: pass tokens_for\\(tokenizer, ids\\)"


# The suite runs bertjax under jaxtyping + beartype (pyproject's addopts), which refuses ids for
# `Sequence[str]` before the function's own check: the message users meet, in a plain interpreter.
TOKEN_IDS = """
import numpy as np
from bertjax.analysis import tables, views
probs = np.full((2, 1, 3, 4, 4), 0.25, np.float32)
for tokens in ([101, 7, 8, 102], np.array([101, 7, 8, 102]), np.array([[101, 7, 8, 102]]),
               [np.int64(101)] * 4):
    for draw in (lambda t: views.head_view_html(probs, t), lambda t: views.model_view_html(probs, t),
                 lambda t: tables.attention_table(probs, t, layer=0, head=0)):
        try:
            draw(tokens)
            print("accepted")
        except ValueError as e:
            print(e)
"""


def test_token_ids_given_as_tokens_say_so():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", TOKEN_IDS], capture_output=True, text=True,
                            timeout=300, check=True)
    lines = result.stdout.splitlines()
    assert len(lines) == 12 and all(re.match(f"^{IDS}", line) for line in lines), lines


def test_a_page_into_a_missing_folder_says_so(tmp_path):
    path = tmp_path / "no-such-folder" / "view.html"
    with pytest.raises(FileNotFoundError, match=f"^cannot write {path}: the folder "
                                                f"{path.parent} does not exist$"):
        views.save_head_view(str(path), PROBS, TOKENS)
    assert list(tmp_path.iterdir()) == []


def test_logit_attribution_without_an_mlm_head_names_itself(tiny_dir):
    import bertjax

    config, params = bertjax.load(tiny_dir)
    bare = {k: v for k, v in params.items() if k != "cls"}
    with pytest.raises(ValueError, match=r"\): logit_attribution needs a model with its MLM head"):
        logit_attribution(bare, config, np.array([[2, 5, 4, 3]], np.int32), 1, 1)


def test_fill_mask_offline_suggests_the_toy_mlm(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path))
    assert main(["fill-mask", "the cat [MASK] on the mat."]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip().endswith(
        "offline, train the toy MLM in about a minute (python notebooks/toy_mlm.py toy-mlm, in the "
        "repository) and pass --model toy-mlm")
