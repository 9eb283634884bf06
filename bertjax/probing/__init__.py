"""The probing wing: BERTology methods that read what a layer knows. Linear probes for every layer
in one compiled program (`probe_layers`, with control tasks and online codelength), word features
from token activations, CoNLL-U reading, the structural probes of Hewitt & Manning (2019), and
attributions: integrated gradients, gradient x activation and gradient-weighted attention rollout.

May import: `bertjax.model`, `bertjax.checkpoints`, `bertjax.analysis` and `bertjax.scale`.
"""
