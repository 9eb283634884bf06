"""bertjax: BERT in JAX for studying its insides.

Axis letters used in every docstring, comment and einsum:
  B batch, S query positions, T key positions (= S in self-attention), D hidden size,
  N attention heads, H head size (D / N), I intermediate size, V vocabulary, L layers.

The public API (fixed in the project contract): `load`, `forward`, `BertConfig`, and the parts
`embeddings`, `attention`, `encoder_layer`, `encoder`, `pooler`, `mlm_logits`, each pure, jittable and
returning `(output, acts)` with exactly the activations named in `capture`.
"""

from bertjax.attention import attention
from bertjax.buckets import bucket_lengths, pad_batch
from bertjax.capture import ALL_NAMES
from bertjax.capture import resolve as resolve_capture
from bertjax.checkpoint import convert_checkpoint, load, save
from bertjax.compile_cache import enable_compilation_cache
from bertjax.config import BertConfig
from bertjax.embeddings import embeddings
from bertjax.encoder import encoder, stack_layers
from bertjax.heads import classifier_logits, mlm_logits, pooler
from bertjax.layer import encoder_layer
from bertjax.model import BertOutput, checked_forward, forward
from bertjax.params import Heads, init_params, param_shapes
from bertjax.pretrained import load_pretrained, tokenizer_for
from bertjax.store import ActivationStore

__all__ = [
    "ActivationStore", "ALL_NAMES", "attention", "BertConfig", "BertOutput", "bucket_lengths",
    "checked_forward", "classifier_logits", "convert_checkpoint", "embeddings",
    "enable_compilation_cache", "encoder", "encoder_layer", "forward", "Heads", "init_params",
    "load", "load_pretrained", "mlm_logits", "pad_batch", "param_shapes", "pooler",
    "resolve_capture", "save", "stack_layers", "tokenizer_for",
]
