"""bertjax: BERT in JAX for studying its insides.

Axis letters used in every docstring, comment and einsum:
  B batch, S query positions, T key positions (= S in self-attention), D hidden size,
  N attention heads, H head size (D / N), I intermediate size, V vocabulary, L layers.

The public API (fixed in the project contract): `load`, `forward`, `BertConfig`, and the parts
`embeddings`, `attention`, `encoder_layer`, `encoder`, `pooler`, `mlm_logits`, each pure, jittable and
returning `(output, acts)` with exactly the activations named in `capture`.

The package is laid out in wings; each may import only the wings before it in this list:
  model/        the ground floor: config, parameter tree, capture, the forward and its parts
  checkpoints/  reading, converting, verifying and saving checkpoints (imports model)
  analysis/     tables, views, plots, attribution, interventions, circuits (model, checkpoints)
  scale/        sharding, corpus extraction, activation store, buckets (model, checkpoints)
  probing/      probes, control tasks, MDL, structural probes, integrated gradients
                (model, checkpoints, analysis, scale)
  training/     losses, train step, fine-tuning, data sets (the four above)
  commands/     the `bertjax` command line (anything)

Names are imported on first use (PEP 562), so `import bertjax` and `bertjax --help` stay cheap.
The module paths of the flat layout before the wings (`bertjax.train`, `bertjax.interventions`, ...)
remain importable: `_aliases` maps each to its wing.
"""

import importlib

from bertjax import _aliases

# public name -> module that defines it
_EXPORTS = {
    "ActivationStore": "bertjax.scale.store",
    "ALL_NAMES": "bertjax.model.capture",
    "attention": "bertjax.model.attention",
    "attention_distance": "bertjax.analysis.reductions",
    "attention_relevance": "bertjax.probing.relevance",
    "BertConfig": "bertjax.model.config",
    "BertOutput": "bertjax.model.forward",
    "bucket_lengths": "bertjax.scale.buckets",
    "checked_forward": "bertjax.model.forward",
    "classifier_logits": "bertjax.model.heads",
    "composition_scores": "bertjax.analysis.circuits",
    "control_labels": "bertjax.probing.control",
    "convert_checkpoint": "bertjax.checkpoints.checkpoint",
    "depth_probe": "bertjax.probing.structural",
    "distance_probe": "bertjax.probing.structural",
    "disc_logits": "bertjax.model.heads",
    "embeddings": "bertjax.model.embeddings",
    "enable_compilation_cache": "bertjax.scale.compile_cache",
    "encoder": "bertjax.model.encoder",
    "encoder_layer": "bertjax.model.layer",
    "forward": "bertjax.model.forward",
    "full_ov_circuit": "bertjax.analysis.circuits",
    "gradient_x_activation": "bertjax.probing.integrated_gradients",
    "head_importance": "bertjax.analysis.pruning",
    "Heads": "bertjax.model.params",
    "init_params": "bertjax.model.params",
    "integrated_gradients": "bertjax.probing.integrated_gradients",
    "load": "bertjax.checkpoints.checkpoint",
    "load_pretrained": "bertjax.checkpoints.pretrained",
    "mlm_logits": "bertjax.model.heads",
    "ov_circuit": "bertjax.analysis.circuits",
    "pad_batch": "bertjax.scale.buckets",
    "param_shapes": "bertjax.model.params",
    "pooler": "bertjax.model.heads",
    "probe_layers": "bertjax.probing.linear",
    "ProbeResult": "bertjax.probing.linear",
    "prune_curve": "bertjax.analysis.pruning",
    "qk_circuit": "bertjax.analysis.circuits",
    "read_conllu": "bertjax.probing.treebank",
    "resolve_capture": "bertjax.model.capture:resolve",
    "save": "bertjax.checkpoints.checkpoint",
    "save_transformers": "bertjax.checkpoints.export",
    "site_grads": "bertjax.model.site_grads",
    "sop_logits": "bertjax.model.heads",
    "stack_layers": "bertjax.model.encoder",
    "StructuralResult": "bertjax.probing.structural",
    "term_shares": "bertjax.analysis.terms",
    "token_classifier_logits": "bertjax.model.heads",
    "tokenizer_for": "bertjax.checkpoints.pretrained",
    "word_features": "bertjax.probing.words",
}

__all__ = sorted(_EXPORTS, key=str.lower)
__version__ = "0.1.0"

_aliases.install(__name__)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, _, attr = _EXPORTS[name].partition(":")
        value = getattr(importlib.import_module(module), attr or name)
    elif name in _aliases.ALIASES:
        value = importlib.import_module(_aliases.ALIASES[name])
    else:
        raise AttributeError(f"module 'bertjax' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_aliases.ALIASES))
