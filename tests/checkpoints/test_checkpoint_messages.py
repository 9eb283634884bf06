"""First-hour traps of issue 26 (checkpoints wing)."""

from __future__ import annotations

import subprocess
import sys

import bertjax

# The suite runs bertjax under jaxtyping + beartype (pyproject's addopts), which would refuse a
# str for a bool before load's own check: the check users meet runs in a plain interpreter.
REFUSED = """
import sys, bertjax
for flag in ("stacked", "strict"):
    for value in ("yes", "no", 1, None):
        try:
            bertjax.load(sys.argv[1], **{flag: value})
        except ValueError as e:
            print(e)
        else:
            print(f"{flag}={value!r} accepted")
"""


def test_load_refuses_flags_that_are_not_bools(tiny_dir):
    result = subprocess.run([sys.executable, "-c", REFUSED, tiny_dir], capture_output=True,
                            text=True, timeout=300, check=True)
    assert result.stdout.splitlines() == [f"{flag} must be True or False, got {value!r}"
                                          for flag in ("stacked", "strict")
                                          for value in ("yes", "no", 1, None)]


def test_load_takes_bool_flags(tiny_dir):
    config, params = bertjax.load(tiny_dir, stacked=True, strict=False)
    assert params["encoder"]["layer"]["attention"]["self"]["query"]["kernel"].shape[0] == \
        config.num_hidden_layers
