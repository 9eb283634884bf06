"""First-hour traps of issue 26 (training wing)."""

from __future__ import annotations

import numpy as np
from test_finetune import data, tiny  # noqa: F401, F811  (module fixtures)

from bertjax.commands.cli import build_parser
from bertjax.training import finetune as F


def test_finetune_max_length_defaults_to_the_models_limit(data, tiny, tmp_path):  # noqa: F811
    """As extract does: min(512, max_position_embeddings); a fixed 128 refused a 40-position model."""
    run = F.prepare(F.Options(train=data["train"], out=str(tmp_path), model=tiny), 1)
    assert run.opts.max_length == min(512, run.config.max_position_embeddings) == 40
    args = build_parser().parse_args(["finetune", "--train", "t.jsonl", "--task", "mlm", "--out", "o"])
    assert args.max_length is None


def test_training_and_scale_share_no_name_with_another_argument_order():
    import inspect

    from bertjax.scale import sharding
    from bertjax.training import train

    assert not hasattr(train, "shard_batch")
    for name in set(vars(train)) & set(vars(sharding)):
        a, b = getattr(train, name), getattr(sharding, name)
        if inspect.isfunction(a) and inspect.isfunction(b) and a is not b:
            assert list(inspect.signature(a).parameters)[0] == list(inspect.signature(b).parameters)[0]
    mesh = train.batch_mesh()
    batch = train.shard_examples(mesh, {"input_ids": np.zeros((2, 3), np.int32)})
    assert batch["input_ids"].shape == (2, 3)
    assert train.replicate(mesh, {"w": np.ones(2)})["w"].sharding.is_fully_replicated
