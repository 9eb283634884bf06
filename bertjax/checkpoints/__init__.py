"""The checkpoints wing: reading PyTorch / safetensors weights, locating sources (folder, file, hub
id, offline package), converting them to the parameter tree, saving and loading converted folders,
verifying a conversion against transformers, and atomic file writes.

May import: `bertjax.model`.
"""
