"""Each family's PyTorch key names: BERT's key of a tree path, renamed by the family's table.

A tree path `a/b/<leaf>` has BERT's key `a.b.<weight|bias>` (`convert.torch_key`); the families
whose modules are named otherwise rename it here, so one table per family (tree path <-> key)
serves import (`convert.key_table`) and export. Keys are without the base-model prefix
(`BASE_PREFIX`, optional in a file, as `bert.` is); `source_key` adds it where transformers'
task models (`...ForMaskedLM`, ...) put it.

Per parameter layer i: BERT, the RoBERTa family and ELECTRA `encoder.layer.{i}.` with BERT's
names; DistilBERT `transformer.layer.{i}.attention.{q_lin,k_lin,v_lin,out_lin}`, `sa_layer_norm`,
`ffn.{lin1,lin2}`, `output_layer_norm`; ALBERT `encoder.albert_layer_groups.{g}.albert_layers.{j}.`
(i = g x inner_group_num + j) `attention.{query,key,value,dense,LayerNorm}`, `ffn`, `ffn_output`,
`full_layer_layer_norm`; MPNet `encoder.layer.{i}.attention.attn.{q,k,v,o}`, `attention.LayerNorm`
and BERT's FFN names. MLM heads: `cls.predictions.*` (BERT), `lm_head.{dense,layer_norm,decoder,
bias}` (RoBERTa family, MPNet), `vocab_transform`/`vocab_layer_norm`/`vocab_projector`
(DistilBERT), `generator_predictions.{dense,LayerNorm}` + `generator_lm_head` (ELECTRA),
`predictions.{dense,LayerNorm,decoder,bias}` (ALBERT). Others: `embeddings_project` (ELECTRA),
`encoder.embedding_hidden_mapping_in`, `pooler` (a bare Linear) and `sop_classifier.classifier`
(ALBERT), `encoder.relative_attention_bias` (MPNet), `discriminator_predictions.*` (ELECTRA).
"""

from __future__ import annotations

import re

from bertjax.model.config import BertConfig

BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "xlm-roberta": "roberta.",
               "camembert": "roberta.", "distilbert": "distilbert.", "electra": "electra.",
               "albert": "albert.", "mpnet": "mpnet.", "deberta-v2": "deberta.",
               "modernbert": "model."}
# First components of the base model's keys (the ones the prefix goes on).
_BASE_ROOTS = ("embeddings", "encoder", "pooler", "transformer", "embeddings_project", "layers",
               "final_norm")
# Keys of a family's heads that sit outside its base model although their root is a base root
# (DeBERTa's ContextPooler is `pooler.dense` of the task model).
_HEAD_ROOTS = {"deberta-v2": ("pooler",)}

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_ATTENTION = ("attention.self.query.", "attention.self.key.", "attention.self.value.",
              "attention.output.dense.", "attention.output.LayerNorm.")
# family -> BERT's in-layer key prefix -> the family's.
_IN_LAYER = {
    "distilbert": dict(zip(_ATTENTION + ("intermediate.dense.", "output.dense.",
                                         "output.LayerNorm."),
                           ("attention.q_lin.", "attention.k_lin.", "attention.v_lin.",
                            "attention.out_lin.", "sa_layer_norm.", "ffn.lin1.", "ffn.lin2.",
                            "output_layer_norm."))),
    "albert": dict(zip(_ATTENTION + ("intermediate.dense.", "output.dense.", "output.LayerNorm."),
                       ("attention.query.", "attention.key.", "attention.value.",
                        "attention.dense.", "attention.LayerNorm.", "ffn.", "ffn_output.",
                        "full_layer_layer_norm."))),
    "mpnet": dict(zip(_ATTENTION, ("attention.attn.q.", "attention.attn.k.", "attention.attn.v.",
                                   "attention.attn.o.", "attention.LayerNorm."))),
    "deberta-v2": dict(zip(_ATTENTION[:3], ("attention.self.query_proj.",
                                            "attention.self.key_proj.",
                                            "attention.self.value_proj."))),
    "modernbert": {"attention.self.qkv.": "attn.Wqkv.", "attention.output.dense.": "attn.Wo.",
                   "intermediate.dense.": "mlp.Wi.", "output.dense.": "mlp.Wo."},
}
# DeBERTa's MLM head without `legacy` (lm_predictions.lm_head, logits against the word embeddings).
_DEBERTA_LM = {"cls.predictions.transform.dense.": "lm_predictions.lm_head.dense.",
               "cls.predictions.transform.LayerNorm.": "lm_predictions.lm_head.LayerNorm.",
               "cls.predictions.bias": "lm_predictions.lm_head.bias"}
_LM_HEAD = {"cls.predictions.transform.dense.": "lm_head.dense.",
            "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.",
            "cls.predictions.bias": "lm_head.bias", "cls.predictions.decoder.": "lm_head.decoder."}
# family -> BERT's key prefix (outside the layers) -> the family's.
_OUTSIDE = {
    "roberta": _LM_HEAD, "xlm-roberta": _LM_HEAD, "camembert": _LM_HEAD, "mpnet": _LM_HEAD,
    "distilbert": {"cls.predictions.transform.dense.": "vocab_transform.",
                   "cls.predictions.transform.LayerNorm.": "vocab_layer_norm.",
                   "cls.predictions.bias": "vocab_projector.bias",
                   "cls.predictions.decoder.": "vocab_projector."},
    "electra": {"embeddings.project.": "embeddings_project.",
                "cls.predictions.transform.dense.": "generator_predictions.dense.",
                "cls.predictions.transform.LayerNorm.": "generator_predictions.LayerNorm.",
                "cls.predictions.bias": "generator_lm_head.bias",
                "cls.predictions.decoder.": "generator_lm_head."},
    "albert": {"embeddings.project.": "encoder.embedding_hidden_mapping_in.",
               "pooler.dense.": "pooler.",
               "cls.predictions.transform.dense.": "predictions.dense.",
               "cls.predictions.transform.LayerNorm.": "predictions.LayerNorm.",
               "cls.predictions.bias": "predictions.bias",
               "cls.predictions.decoder.": "predictions.decoder.",
               "sop_classifier.": "sop_classifier.classifier."},
    "deberta-v2": {"embeddings.project.": "embeddings.embed_proj."},
    "modernbert": {"embeddings.word_embeddings.": "embeddings.tok_embeddings.",
                   "embeddings.LayerNorm.": "embeddings.norm.",
                   "encoder.final_norm.": "final_norm.",
                   "cls.predictions.transform.dense.": "head.dense.",
                   "cls.predictions.transform.LayerNorm.": "head.norm.",
                   "cls.predictions.bias": "decoder.bias", "cls.predictions.decoder.": "decoder.",
                   "head.LayerNorm.": "head.norm."},
}


def rename(config: BertConfig, key: str) -> str:
    """BERT's key of a tree path -> the family's key (no base-model prefix)."""
    family = config.model_type
    layer = _LAYER.match(key)
    if layer:
        i, rest = int(layer.group(1)), layer.group(2)
        rest = _replace_prefix(rest, _IN_LAYER.get(family, {}))
        if family == "distilbert":
            return f"transformer.layer.{i}.{rest}"
        if family == "albert":
            g, j = divmod(i, config.inner_group_num)
            return f"encoder.albert_layer_groups.{g}.albert_layers.{j}.{rest}"
        if family == "modernbert":
            return f"layers.{i}.{rest}"
        return f"encoder.layer.{i}.{rest}"
    if family == "deberta-v2" and not config.legacy:
        key = _replace_prefix(key, _DEBERTA_LM)
    return _replace_prefix(key, _OUTSIDE.get(family, {}))


def _replace_prefix(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def source_key(config: BertConfig, key: str) -> str:
    """A family key as transformers' task models name it: the base-model prefix added to the base
    model's keys (embeddings, encoder, pooler, ...), the heads' keys as they are."""
    root = key.split(".")[0]
    if root in _BASE_ROOTS and root not in _HEAD_ROOTS.get(config.model_type, ()):
        return BASE_PREFIX[config.model_type] + key
    return key
