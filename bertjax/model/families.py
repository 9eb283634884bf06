"""The encoder families `BertConfig` reads: their names, config.json dialects and defaults.

Each family's config.json is read into BERT's field names (`BertConfig.from_dict`) and written back
in the family's own form (`BertConfig.to_dict`), as transformers 5 names and defaults it. What the
forward does differently per family is decided by `BertConfig`'s properties (config.py), never here.
"""

from __future__ import annotations

FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert",
            "mpnet", "deberta-v2", "modernbert")
ROBERTA_LIKE = ("roberta", "xlm-roberta", "camembert")
# Families without a token type (segment) table.
NO_TOKEN_TYPES = ("distilbert", "mpnet", "modernbert")

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
    "deberta-v2": {"vocab_size": 128100, "hidden_size": 1536, "num_hidden_layers": 24,
                   "num_attention_heads": 24, "intermediate_size": 6144, "type_vocab_size": 0,
                   "layer_norm_eps": 1e-7, "pooler_hidden_act": "gelu", "pooler_dropout": 0.0},
    "modernbert": {"vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152,
                   "num_hidden_layers": 22, "num_attention_heads": 12, "hidden_act": "gelu",
                   "max_position_embeddings": 8192, "layer_norm_eps": 1e-5, "pad_token_id": 50283,
                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
                   "classifier_dropout": 0.0, "local_attention": 128, "norm_bias": False,
                   "attention_bias": False, "mlp_bias": False, "classifier_bias": False},
}

# DistilBERT's own key -> BERT's field name (DistilBertConfig has no layer_norm_eps: 1e-12).
DISTILBERT_KEYS = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
                   "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
                   "activation": "hidden_act", "dropout": "hidden_dropout_prob",
                   "attention_dropout": "attention_probs_dropout_prob",
                   "seq_classif_dropout": "classifier_dropout"}
# Other families' keys with another name for a BERT field.
RENAMED = {"albert": {"classifier_dropout_prob": "classifier_dropout"},
           "deberta-v2": {"cls_dropout": "classifier_dropout"},
           "modernbert": {"hidden_activation": "hidden_act", "norm_eps": "layer_norm_eps",
                          "attention_dropout": "attention_probs_dropout_prob",
                          "mlp_dropout": "hidden_dropout_prob"}}
# Family fields (beyond BERT's) each family's config.json carries.
OWN_FIELDS = {"electra": ("embedding_size",),
              "albert": ("embedding_size", "num_hidden_groups", "inner_group_num"),
              "mpnet": ("relative_attention_num_buckets",),
              "deberta-v2": ("embedding_size", "relative_attention", "max_relative_positions",
                             "position_buckets", "pos_att_type", "share_att_key", "norm_rel_ebd",
                             "position_biased_input", "conv_kernel_size", "conv_groups",
                             "conv_act", "legacy", "pooler_hidden_act", "pooler_dropout"),
              "modernbert": ("layer_types", "local_attention", "global_rope_theta",
                             "local_rope_theta", "norm_bias", "attention_bias", "mlp_bias",
                             "decoder_bias", "classifier_bias", "classifier_pooling",
                             "classifier_activation")}
# Every family field beyond BERT's, with the value it has in a family that lacks it (BERT's
# meaning: a bias everywhere, absolute positions, no relative attention, ...).
FAMILY_FIELDS = {"embedding_size": None, "num_hidden_groups": 1, "inner_group_num": 1,
                 "relative_attention_num_buckets": 0, "relative_attention": False,
                 "max_relative_positions": -1, "position_buckets": -1, "pos_att_type": (),
                 "share_att_key": False, "norm_rel_ebd": "none", "position_biased_input": True,
                 "conv_kernel_size": 0, "conv_groups": 1, "conv_act": "tanh", "legacy": True,
                 "pooler_hidden_act": "tanh", "pooler_dropout": 0.0, "layer_types": (),
                 "local_attention": 0, "global_rope_theta": 160000.0,
                 "local_rope_theta": 10000.0, "norm_bias": True, "attention_bias": True,
                 "mlp_bias": True, "decoder_bias": True, "classifier_bias": True,
                 "classifier_pooling": "cls", "classifier_activation": "gelu"}
# ModernBERT's layer kinds (transformers' layer_types) and the default every-n rule of the old
# config.json layout (global_attn_every_n_layers).
FULL, SLIDING = "full_attention", "sliding_attention"
GLOBAL_EVERY = 3
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
    if model_type == "deberta-v2":
        out = _deberta_dict(out)
    if model_type == "modernbert":
        out = _modernbert_dict(out)
    return out


def _deberta_dict(d: dict) -> dict:
    """DeBERTa-v2's keys read as transformers does: pos_att_type "p2c|c2p" or a list -> a tuple,
    embedding_size absent or equal to hidden_size -> None."""
    terms = d.get("pos_att_type") or ()
    if isinstance(terms, str):
        terms = [t.strip() for t in terms.lower().split("|") if t.strip()]
    d["pos_att_type"] = tuple(terms)
    if d.get("embedding_size") == d.get("hidden_size"):
        d["embedding_size"] = None
    if d.get("pooler_hidden_size") not in (None, d.get("hidden_size")):
        raise ValueError(f"unsupported deberta-v2 config: pooler_hidden_size="
                         f"{d['pooler_hidden_size']} differs from hidden_size")
    return d


def _modernbert_dict(d: dict) -> dict:
    """ModernBERT's two config.json layouts into one: the new `layer_types` + `rope_parameters`,
    or the old `global_attn_every_n_layers` + `global_rope_theta` / `local_rope_theta`."""
    L = d.get("num_hidden_layers", DEFAULTS["modernbert"]["num_hidden_layers"])
    every = d.pop("global_attn_every_n_layers", GLOBAL_EVERY)
    if d.get("layer_types") is None:
        d["layer_types"] = [SLIDING if i % every else FULL for i in range(L)]
    d["layer_types"] = tuple(d["layer_types"])
    rope = d.pop("rope_parameters", None) or {}
    for kind, field in ((FULL, "global_rope_theta"), (SLIDING, "local_rope_theta")):
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default":
            raise ValueError(f"unsupported modernbert config: rope_type="
                             f"{params['rope_type']!r} for {kind} (only 'default')")
        if "rope_theta" in params:
            d[field] = float(params["rope_theta"])
    if d.get("rope_scaling"):
        raise ValueError(f"unsupported modernbert config: rope_scaling={d['rope_scaling']!r}")
    if d.get("sparse_prediction"):
        d.pop("sparse_prediction")  # logits at every position, as without it
    return d


def deberta_out(d: dict) -> dict:
    """BERT-named config dict -> DebertaV2Config's keys (for `BertConfig.to_dict`), the optional
    ones (embedding_size, conv_*) left out where transformers' own config has none."""
    d["pos_att_type"] = "|".join(d["pos_att_type"]) if d["pos_att_type"] else None
    if d["embedding_size"] is None:  # absent, as in DebertaV2Config: hidden_size
        d.pop("embedding_size")
    if not d["conv_kernel_size"]:  # no convolution layer: its keys absent, as transformers writes
        for key in ("conv_kernel_size", "conv_groups", "conv_act"):
            d.pop(key)
    elif d["conv_groups"] == 1:
        d.pop("conv_groups")  # transformers reads it with getattr(config, "conv_groups", 1)
    d["pooler_hidden_size"] = d["hidden_size"]
    d["cls_dropout"] = d.pop("classifier_dropout")
    d.pop("position_embedding_type", None)
    return d


def modernbert_out(d: dict) -> dict:
    """BERT-named config dict -> ModernBertConfig's keys, in the new layout (layer_types,
    rope_parameters)."""
    back = {v: k for k, v in RENAMED["modernbert"].items()}
    d = {back.get(k, k): v for k, v in d.items() if k not in ("position_embedding_type",
                                                              "type_vocab_size")}
    d["layer_types"] = list(d["layer_types"])
    d["rope_parameters"] = {
        FULL: {"rope_type": "default", "rope_theta": d.pop("global_rope_theta")},
        SLIDING: {"rope_type": "default", "rope_theta": d.pop("local_rope_theta")}}
    d["embedding_dropout"] = d["mlp_dropout"]
    return d


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
    for name, default in FAMILY_FIELDS.items():
        if name not in OWN_FIELDS.get(family, ()) and getattr(config, name) != default:
            raise ValueError(f"BertConfig.{name}={getattr(config, name)!r} is not a field of "
                             f"model_type={family!r} (leave it at {default!r})")
    if family == "mpnet" and config.relative_attention_num_buckets < MPNET_BUCKETS:
        raise ValueError(f"BertConfig.relative_attention_num_buckets must be at least "
                         f"{MPNET_BUCKETS} for mpnet (its bucketing always uses 32), got "
                         f"{config.relative_attention_num_buckets}")
    if config.type_vocab_size == 0 and family not in NO_TOKEN_TYPES + ("deberta-v2",):
        raise ValueError(f"BertConfig.type_vocab_size must be a positive integer for "
                         f"model_type={family!r}, got 0")
    if family in NO_TOKEN_TYPES and config.type_vocab_size:
        raise ValueError(f"BertConfig.type_vocab_size must be 0 for model_type={family!r} "
                         f"(it has no token types), got {config.type_vocab_size}")
    if config.padding_aware_positions and config.position_pad_id + 1 >= config.max_position_embeddings:
        raise ValueError(f"BertConfig.max_position_embeddings={config.max_position_embeddings} "
                         f"leaves no position for a token: {family} positions start at "
                         f"{config.position_pad_id + 1}")


def check_modern(config, activations: tuple[str, ...]) -> None:
    """DeBERTa's and ModernBERT's own fields: values transformers would run (`activations`:
    the hidden_act values bertjax implements)."""
    bad = None
    if config.model_type == "deberta-v2":
        odd = [t for t in config.pos_att_type if t not in ("c2p", "p2c")]
        if odd:
            bad = f"pos_att_type={config.pos_att_type!r} (terms are 'c2p' and 'p2c')"
        elif config.conv_kernel_size < 0 or config.hidden_size % config.conv_groups:
            bad = (f"conv_kernel_size={config.conv_kernel_size}, conv_groups="
                   f"{config.conv_groups} (groups must divide hidden_size)")
        elif config.conv_act not in activations + ("tanh",):
            bad = f"conv_act={config.conv_act!r}"
        elif config.pooler_hidden_act not in activations + ("tanh",):
            bad = f"pooler_hidden_act={config.pooler_hidden_act!r}"
        elif not config.legacy and config.embed_size != config.hidden_size:
            bad = "legacy=false with embedding_size != hidden_size (transformers cannot run it)"
        elif config.norm_rel_ebd.lower() not in ("none", "layer_norm"):
            bad = f"norm_rel_ebd={config.norm_rel_ebd!r} (use 'none' or 'layer_norm')"
    else:
        if len(config.layer_types) != config.num_hidden_layers or any(
                t not in (FULL, SLIDING) for t in config.layer_types):
            bad = (f"layer_types={config.layer_types!r} (one of {FULL!r}, {SLIDING!r} per "
                   f"layer, {config.num_hidden_layers} layers)")
        elif config.head_size % 2:
            bad = f"head size {config.head_size} (rotary embeddings need an even head size)"
        elif config.local_attention < 2 and SLIDING in config.layer_types:
            bad = f"local_attention={config.local_attention} (sliding layers need >= 2)"
        elif config.classifier_pooling not in ("cls", "mean"):
            bad = f"classifier_pooling={config.classifier_pooling!r} (use 'cls' or 'mean')"
        elif config.classifier_activation not in activations:
            bad = f"classifier_activation={config.classifier_activation!r}"
    if bad:
        raise ValueError(f"BertConfig: unsupported {config.model_type} value {bad}")
