"""The analysis wing: what researchers do with the activations. Attention tables and plots, head
views, reductions over heads, logit attribution, interventions, fill-mask, weight circuits (QK/OV,
composition), head importance and pruning.

May import: `bertjax.model` and `bertjax.checkpoints`.
"""
