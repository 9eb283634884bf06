"""The training wing: losses, optax optimizers and the data-parallel train step, fine-tuning with
its data sets.

May import: `bertjax.model`, `bertjax.checkpoints`, `bertjax.analysis` and `bertjax.scale`.
"""
