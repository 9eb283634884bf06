"""Tiny transformers models of every family (FAMILY_NOTES' reference configs, odd sizes) and every
activation of them through forward hooks, as tests/torch_ref.py does for BERT.

Hooks append per call, so ALBERT's shared layers give one entry per applied layer. q, k, v, the
output dense, the add & norm inputs and outputs and the MLP steps come from hooks on the family's
own modules; the context from the output dense's input; scores are recomputed from the hooked q, k
(plus MPNet's hooked relative bias) and transformers' eager mask (0 / finfo.min at padded keys).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch_ref import _heads, _ln_std, _np

V = 97
COMMON = dict(vocab_size=V, num_attention_heads=3, intermediate_size=47)
DROPOUTS = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
ROBERTA = dict(hidden_size=33, num_hidden_layers=2, max_position_embeddings=34, type_vocab_size=1,
               pad_token_id=1, layer_norm_eps=1e-5)
# family -> (transformers config class, its keyword arguments), FAMILY_NOTES' tiny references.
CONFIGS = {
    "bert": ("BertConfig", dict(**COMMON, **DROPOUTS, hidden_size=33, num_hidden_layers=2,
                                max_position_embeddings=29, type_vocab_size=3)),
    "roberta": ("RobertaConfig", dict(**COMMON, **DROPOUTS, **ROBERTA)),
    "xlm-roberta": ("XLMRobertaConfig", dict(**COMMON, **DROPOUTS, **ROBERTA)),
    "camembert": ("CamembertConfig", dict(**COMMON, **DROPOUTS, **ROBERTA)),
    "distilbert": ("DistilBertConfig", dict(vocab_size=V, dim=33, n_heads=3, n_layers=2,
                                            hidden_dim=47, max_position_embeddings=29, dropout=0.0,
                                            attention_dropout=0.0)),
    "electra": ("ElectraConfig", dict(**COMMON, **DROPOUTS, embedding_size=19, hidden_size=33,
                                      num_hidden_layers=2, max_position_embeddings=29)),
    "albert": ("AlbertConfig", dict(**COMMON, **DROPOUTS, embedding_size=19, hidden_size=33,
                                    num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2,
                                    hidden_act="gelu_new", max_position_embeddings=29)),
    "mpnet": ("MPNetConfig", dict(**COMMON, **DROPOUTS, hidden_size=33, num_hidden_layers=2,
                                  max_position_embeddings=34, pad_token_id=1, layer_norm_eps=1e-5,
                                  relative_attention_num_buckets=32)),
}
FAMILIES = tuple(CONFIGS)
_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
           "camembert": "Camembert", "distilbert": "DistilBert", "electra": "Electra",
           "albert": "Albert", "mpnet": "MPNet"}


def model_class(family: str, task: str):
    """transformers' class of a family for a task: "Model", "ForMaskedLM", "ForPreTraining",
    "ForSequenceClassification", "ForTokenClassification"."""
    import transformers

    return getattr(transformers, _PREFIX[family] + task)


def build(family: str, task: str, folder, seed: int = 0, **overrides):
    """A tiny random model of the family (eager attention, eval mode), saved to `folder`."""
    import transformers

    name, kwargs = CONFIGS[family]
    config = getattr(transformers, name)(**{**kwargs, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    model = model_class(family, task)(config).eval()
    model.save_pretrained(os.fspath(folder))
    return model


def inputs(family: str, seed: int = 0, B: int = 3, S: int = 9):
    """int ids [B, S] (no pad id among the tokens), mask [B, S]: row 1 right-padded, row 2
    left-padded (padding-aware positions differ there); token types where the family has them."""
    pad = CONFIGS[family][1].get("pad_token_id", 0)
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, V, size=(B, S)).astype(np.int32)
    mask = np.ones((B, S), np.int32)
    mask[1, 6:] = 0
    mask[2, :2] = 0
    ids[mask == 0] = pad
    types = None
    if family in ("bert", "electra", "albert"):
        types = rng.integers(0, 2, size=(B, S)).astype(np.int32)
    return ids, types, mask


# family -> name -> (module path in one layer, "out" (output) or "in" (first input)).
_BERT_LAYER = {"attn.q": "attention.self.query", "attn.k": "attention.self.key",
               "attn.v": "attention.self.value", "attn.out": "attention.output.dense",
               "attn.resid": ("attention.output.LayerNorm", "in"),
               "attn.norm": "attention.output.LayerNorm", "mlp.pre": "intermediate.dense",
               "mlp.post": "intermediate", "mlp.out": "output.dense",
               "mlp.resid": ("output.LayerNorm", "in"), "layer.out": "output.LayerNorm"}
_LAYER = {
    "bert": _BERT_LAYER, "roberta": _BERT_LAYER, "xlm-roberta": _BERT_LAYER,
    "camembert": _BERT_LAYER, "electra": _BERT_LAYER,
    "distilbert": {"attn.q": "attention.q_lin", "attn.k": "attention.k_lin",
                   "attn.v": "attention.v_lin", "attn.out": "attention.out_lin",
                   "attn.resid": ("sa_layer_norm", "in"), "attn.norm": "sa_layer_norm",
                   "mlp.pre": "ffn.lin1", "mlp.post": "ffn.activation", "mlp.out": "ffn.lin2",
                   "mlp.resid": ("output_layer_norm", "in"), "layer.out": "output_layer_norm"},
    "albert": {"attn.q": "attention.query", "attn.k": "attention.key",
               "attn.v": "attention.value", "attn.out": "attention.dense",
               "attn.resid": ("attention.LayerNorm", "in"), "attn.norm": "attention.LayerNorm",
               "mlp.pre": "ffn", "mlp.post": "activation", "mlp.out": "ffn_output",
               "mlp.resid": ("full_layer_layer_norm", "in"), "layer.out": "full_layer_layer_norm"},
    "mpnet": {**_BERT_LAYER, "attn.q": "attention.attn.q", "attn.k": "attention.attn.k",
              "attn.v": "attention.attn.v", "attn.out": "attention.attn.o",
              "attn.resid": ("attention.LayerNorm", "in"), "attn.norm": "attention.LayerNorm"},
}
# The module whose output[1] is the attention probabilities.
_PROBS = {"distilbert": "attention", "albert": "attention", "mpnet": "attention.attn"}


def _layers(family: str, base) -> list:
    if family == "distilbert":
        return list(base.transformer.layer)
    if family == "albert":
        return [layer for group in base.encoder.albert_layer_groups for layer in group.albert_layers]
    return list(base.encoder.layer)


def _module(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def family_activations(family: str, model, ids, types, mask) -> tuple[dict, object]:
    """(name -> array, the model's output) for a transformers model of `family`; per-layer names
    stacked over applied layers on axis 0."""
    base = model.base_model
    cfg = model.config
    n = cfg.num_attention_heads
    got: dict[str, list] = {}
    hooks = []

    def hook(name, where="out", fn=lambda o: o):
        def record(module, args, output):
            got.setdefault(name, []).append(fn(args[0] if where == "in" else output))
        return record

    emb = base.embeddings
    on = lambda m, name, where="out", fn=lambda o: o: hooks.append(  # noqa: E731
        m.register_forward_hook(hook(name, where, fn)))
    on(emb.word_embeddings, "embed.word")
    on(emb.position_embeddings, "embed.position")
    if getattr(emb, "token_type_embeddings", None) is not None and family not in ("distilbert", "mpnet"):
        on(emb.token_type_embeddings, "embed.token_type")
    on(emb.LayerNorm, "embed.sum", "in")
    on(emb.LayerNorm, "embed.out")
    if family == "electra" and hasattr(base, "embeddings_project"):
        on(base.embeddings_project, "embed.proj")
    if family == "albert":
        on(base.encoder.embedding_hidden_mapping_in, "embed.proj")
    if family == "mpnet":
        on(base.encoder.relative_attention_bias, "attn.rel_bias")
    spec = _LAYER[family]
    for layer in _layers(family, base):
        for name, where in spec.items():
            path, kind = (where, "out") if isinstance(where, str) else where
            fn = (lambda o: _heads(o, n)) if name in ("attn.q", "attn.k", "attn.v") else (lambda o: o)
            on(_module(layer, path), name, kind, fn)
        on(_module(layer, spec["attn.out"]), "attn.context", "in", lambda o: _heads(o, n))
        probs = _PROBS.get(family, "attention.self")
        on(_module(layer, probs), "attn.probs", "out", lambda o: o[1])
    if getattr(base, "pooler", None) is not None:
        on(base.pooler, "pooler.out")
    kwargs = {"attention_mask": torch.as_tensor(mask, dtype=torch.long)}
    if types is not None:
        kwargs["token_type_ids"] = torch.as_tensor(types, dtype=torch.long)
    try:
        with torch.no_grad():
            output = model(torch.as_tensor(ids, dtype=torch.long), output_attentions=True, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return _finish(family, base, cfg, got, mask), output


def _finish(family: str, base, cfg, got: dict, mask) -> dict:
    n = cfg.num_attention_heads
    eps = getattr(cfg, "layer_norm_eps", 1e-12)
    acts = {name: _np(got[name][0]) for name in ("embed.word", "embed.sum", "embed.out",
                                                 "embed.token_type", "embed.proj") if name in got}
    acts["embed.position"] = np.broadcast_to(_np(got["embed.position"][0]),
                                             acts["embed.word"].shape).copy()
    bias = None
    if "attn.rel_bias" in got:  # [S, S, N] table rows -> [N, S, S]
        bias = got.pop("attn.rel_bias")[0].permute(2, 0, 1)
        acts["attn.rel_bias"] = _np(bias)
    pad = torch.where(torch.as_tensor(mask)[:, None, None, :] == 0,
                      torch.finfo(torch.float32).min, 0.0)  # [B, 1, 1, T]
    out_kernels = [_module(layer, _LAYER[family]["attn.out"]).weight
                   for layer in _layers(family, base)]
    scores, head_out = [], []
    for i, (q, k) in enumerate(zip(got["attn.q"], got["attn.k"])):
        s = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5)
        if bias is not None:
            s = s + bias[None]
        scores.append(s + pad)
        w = out_kernels[cfg_layer(family, cfg, i)].T.reshape(n, q.shape[-1], -1)  # [N, H, D]
        head_out.append(torch.einsum("bnsh,nhd->bnsd", got["attn.context"][i], w))
    got["attn.scores"], got["attn.head_out"] = scores, head_out
    for name, values in got.items():
        if name.startswith(("attn.", "mlp.", "layer.")):
            acts[name] = np.stack([_np(v) for v in values])
    acts["attn.ln_std"] = _ln_std(acts["attn.resid"], eps)
    acts["layer.ln_std"] = _ln_std(acts["mlp.resid"], eps)
    acts["embed.ln_std"] = _ln_std(acts["embed.sum"], eps)
    if "pooler.out" in got:
        pooled = got["pooler.out"][0]
        acts["pooler.out"] = _np(pooled if family != "albert" else torch.tanh(pooled))
    return acts


def cfg_layer(family: str, cfg, t: int) -> int:
    """The parameter layer of applied layer t (ALBERT's sharing; t elsewhere)."""
    if family != "albert":
        return t
    inner = cfg.inner_group_num
    return int((t // inner) / (cfg.num_hidden_layers / cfg.num_hidden_groups)) * inner + t % inner
