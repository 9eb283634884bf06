"""`bertjax probe`: per-layer tables from a CoNLL-U file, on the offline MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertjax.commands.cli import main
from bertjax.commands.probe import parse_layers
from tests.commands import test_cli as cli_tests

NOUNS, VERBS, DETS = ["cat", "dog", "bird", "house", "tree"], ["sees", "likes", "finds"], ["the", "a"]


def write_treebank(path, n: int = 40, seed: int = 0) -> str:
    """n sentences "DET NOUN VERB DET NOUN ." with their trees (verb the root)."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        words = [rng.choice(DETS), rng.choice(NOUNS), rng.choice(VERBS), rng.choice(DETS),
                 rng.choice(NOUNS), "."]
        rows = [("DET", 2, "det"), ("NOUN", 3, "nsubj"), ("VERB", 0, "root"), ("DET", 5, "det"),
                ("NOUN", 3, "obj"), ("PUNCT", 3, "punct")]
        lines.append(f"# sent_id = {i}")
        for k, (w, (upos, head, rel)) in enumerate(zip(words, rows), 1):
            lines.append(f"{k}\t{w}\t{w}\t{upos}\t_\t_\t{head}\t{rel}\t_\t_")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_help_shows_every_default():
    cli_tests.test_every_argument_has_help_and_every_default_is_shown("probe")


def test_parse_layers():
    assert parse_layers(None, 3) == [0, 1, 2] and parse_layers("0,-1", 7) == [0, 6]
    with pytest.raises(ValueError, match=r"--layers must be in 0..6"):
        parse_layers("7", 7)
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_layers("a", 7)


@pytest.mark.slow
def test_upos_with_control_and_distance(tmp_path, capsys, minilm_dir):
    path = write_treebank(tmp_path / "t.conllu")
    assert main(["probe", path, "--model", minilm_dir, "--control", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "upos" and out["words"] == 240 and len(out["layers"]) == 7
    best = max(row["accuracy"] for row in out["layers"])
    assert best > 0.95 and all(set(r) == {"layer", "accuracy", "control", "selectivity"}
                               for r in out["layers"])
    assert main(["probe", path, "--model", minilm_dir, "--task", "depth", "--layers", "0,6",
                 "--rank", "8", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "root_accuracy" in text and "spearman" in text and len(text.splitlines()) == 4


def test_errors(tmp_path, capsys):
    path = write_treebank(tmp_path / "t.conllu", n=3)
    assert main(["probe", path, "--no-progress"]) == 2
    assert "probing needs at least 5" in capsys.readouterr().err
