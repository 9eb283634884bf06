"""First-hour traps of issue 26 (commands wing)."""

from __future__ import annotations

import pytest

from bertjax.commands.cli import main


def test_extract_help_names_the_public_store_and_documents_its_reading(capsys):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bertjax.ActivationStore(OUT)" in text and "bertjax.store." not in text
    for what in ("store.line(i) the 1-based input line", "store.token_ids(i)", "store.stacked(NAME)",
                 "L the --layers kept in the order given"):
        assert what in text, what
