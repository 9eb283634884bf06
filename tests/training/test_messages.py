"""First-hour traps of issue 26 (training wing)."""

from __future__ import annotations

from test_finetune import data, tiny  # noqa: F401, F811  (module fixtures)

from bertjax.commands.cli import build_parser
from bertjax.training import finetune as F


def test_finetune_max_length_defaults_to_the_models_limit(data, tiny, tmp_path):  # noqa: F811
    """As extract does: min(512, max_position_embeddings); a fixed 128 refused a 40-position model."""
    run = F.prepare(F.Options(train=data["train"], out=str(tmp_path), model=tiny), 1)
    assert run.opts.max_length == min(512, run.config.max_position_embeddings) == 40
    args = build_parser().parse_args(["finetune", "--train", "t.jsonl", "--task", "mlm", "--out", "o"])
    assert args.max_length is None
