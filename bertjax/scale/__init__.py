"""The scale wing: running the model over many devices and whole corpora. Sharding over a device
mesh, length buckets, the persistent compilation cache, and `extract` with its on-disk store.

May import: `bertjax.model` and `bertjax.checkpoints`.
"""
