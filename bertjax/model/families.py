"""The encoder families `BertConfig` reads: their names, config.json dialects and defaults.

Each family's config.json is read into BERT's field names (`BertConfig.from_dict`) and written back
in the family's own form (`BertConfig.to_dict`), as transformers 5 names and defaults it. What the
forward does differently per family is decided by `BertConfig`'s properties (config.py), never here.
"""

from __future__ import annotations

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert",
            "mpnet")
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")
# Families without a token type (segment) table.
NO_TOKEN_TYPES = ("distilbert", "mpnet")

# transformers' defaults for keys whose absence from a family's config.json must not fall back to
# BERT's (a saved config.json lists them, a hand-written one may not).
DEFAULTS = {
    "roberta": {"pad_token_id": 1, "vocab_size": 50265},
    "xlm-roberta": {"pad_token_id": 1},
    "camembert": {"pad_token_id": 1},
    "distilbert": {"vocab_size": 30522, "max_position_embeddings": 512, "hidden_size": 768,
                   "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 3072,
                   "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                   "attention_probs_dropout_prob": 0.1, "classifier_dropout": 0.2,
                   "layer_norm_eps": 1e-12, "type_vocab_size": 0, "pad_token_id": 0},
    "electra": {"vocab_size": 30522, "embedding_size": 128, "hidden_size": 256,
                "num_attention_heads": 4, "intermediate_size": 1024},
    "albert": {"vocab_size": 30000, "embedding_size": 128, "hidden_size": 4096,
               "num_attention_heads": 64, "intermediate_size": 16384, "hidden_act": "gelu_new",
               "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
               "classifier_dropout": 0.1, "num_hidden_groups": 1, "inner_group_num": 1},
    "mpnet": {"vocab_size": 30527, "pad_token_id": 1, "relative_attention_num_buckets": 32,
              "type_vocab_size": 0},
}

# DistilBERT's own key -> BERT's field name (DistilBertConfig has no layer_norm_eps: 1e-12).
DISTILBERT_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
                   "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
                   "activation": "hidden_act", "dropout": "hidden_dropout_prob",
                   "attention_dropout": "attention_probs_dropout_prob",
                   "seq_classif_dropout": "classifier_dropout"}
# Other families' keys with another name for a BERT field.
RENAMED = {"albert": {"classifier_dropout_prob": "classifier_dropout"}}
# Family fields (beyond BERT's) each family's config.json carries.
OWN_FIELDS = {"electra": ("embedding_size",),
              "albert": ("embedding_size", "num_hidden_groups", "inner_group_num"),
              "mpnet": ("relative_attention_num_buckets",)}
# MPNet's relative_position_bucket is always called with its default num_buckets=32: the table
# needs at least that many rows (config.relative_attention_num_buckets only sizes it).
MPNET_BUCKETS = 32
# MPNetEmbeddings hard-codes padding_idx = 1 for its position ids, whatever pad_token_id says.
MPNET_POSITION_PAD = 1


def family_dict(d: dict) -> dict:
    """A family's config dict with its keys renamed to BERT's and its defaults filled in."""
    model_type = d.get("model_type", "bert")
    if model_type not in FAMILIES:
        raise ValueError(f"config model_type={model_type!r} is not supported; bertjax reads "
                         f"{', '.join(FAMILIES)}")
    renames = DISTILBERT_KEYS if model_type == "distilbert" else RENAMED.get(model_type, {})
    out = {renames.get(k, k): v for k, v in d.items()
           if not (model_type == "distilbert" and k in DISTILBERT_KEYS.values())}
    for key, value in DEFAULTS.get(model_type, {}).items():
        out.setdefault(key, value)
    if model_type in NO_TOKEN_TYPES:
        out["type_vocab_size"] = 0  # the family has no table, whatever the file says
    return out


def distilbert_dict(d: dict) -> dict:
    """BERT-named config dict -> DistilBertConfig's keys (for `BertConfig.to_dict`)."""
    back = {v: k for k, v in DISTILBERT_KEYS.items()}
    drop = ("type_vocab_size", "layer_norm_eps", "embedding_size", "num_hidden_groups",
            "inner_group_num", "relative_attention_num_buckets")
    drop += ("position_embedding_type",)
    out = {back.get(k, k): v for k, v in d.items() if k not in drop}
    out["sinusoidal_pos_embds"] = False
    if out.get("seq_classif_dropout") is None:  # None means hidden dropout, as for BERT
        out["seq_classif_dropout"] = out["dropout"]
    return out


def check_family(config) -> None:
    """Raises ValueError unless the family's own fields are present where it has them and at
    their defaults elsewhere (one line naming the field)."""
    family = config.model_type
    if config.embedding_size is not None and (
            isinstance(config.embedding_size, bool) or not isinstance(config.embedding_size, int)
            or config.embedding_size < 1):
        raise ValueError(f"BertConfig.embedding_size must be a positive integer or None, "
                         f"got {config.embedding_size!r}")
    own = {"embedding_size": (None,), "num_hidden_groups": (1,), "inner_group_num": (1,),
           "relative_attention_num_buckets": (0,)}
    for name, default in own.items():
        if name not in OWN_FIELDS.get(family, ()) and getattr(config, name) not in default:
            raise ValueError(f"BertConfig.{name}={getattr(config, name)!r} is not a field of "
                             f"model_type={family!r} (leave it at {default[0]!r})")
    if family == "mpnet" and config.relative_attention_num_buckets < MPNET_BUCKETS:
        raise ValueError(f"BertConfig.relative_attention_num_buckets must be at least "
                         f"{MPNET_BUCKETS} for mpnet (its bucketing always uses 32), got "
                         f"{config.relative_attention_num_buckets}")
    if config.type_vocab_size == 0 and family not in NO_TOKEN_TYPES:
        raise ValueError(f"BertConfig.type_vocab_size must be a positive integer for "
                         f"model_type={family!r}, got 0")
    if family in NO_TOKEN_TYPES and config.type_vocab_size:
        raise ValueError(f"BertConfig.type_vocab_size must be 0 for model_type={family!r} "
                         f"(it has no token types), got {config.type_vocab_size}")
    if config.padding_aware_positions and config.position_pad_id + 1 >= config.max_position_embeddings:
        raise ValueError(f"BertConfig.max_position_embeddings={config.max_position_embeddings} "
                         f"leaves no position for a token: {family} positions start at "
                         f"{config.position_pad_id + 1}")
