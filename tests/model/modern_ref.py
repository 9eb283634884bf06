"""Reference activations of transformers' DeBERTa-v2 and ModernBERT (eager), by forward hooks.

Every contract name of the two families from the PyTorch model: module inputs and outputs where
the model has the step as a module, transformers' own functions where it does not (DeBERTa's
`disentangled_attention_bias` per term, ModernBERT's rotary embedding), and the masks rebuilt from
FAMILY_NOTES (probabilities are compared with transformers' `attentions` independently).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

# Tiny reference configs of FAMILY_NOTES sections 8 and 9.
DEBERTA_V3 = dict(vocab_size=97, hidden_size=33, num_attention_heads=3, num_hidden_layers=2,
                  intermediate_size=47, max_position_embeddings=29, type_vocab_size=0,
                  relative_attention=True, pos_att_type="p2c|c2p", position_buckets=8,
                  max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
                  position_biased_input=False, layer_norm_eps=1e-7, legacy=False,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
DEBERTA_V2XL = {**DEBERTA_V3, "type_vocab_size": 2, "share_att_key": False,
                "position_biased_input": True, "conv_kernel_size": 3, "conv_act": "gelu",
                "embedding_size": 19, "legacy": True}
MODERNBERT = dict(vocab_size=97, hidden_size=36, num_attention_heads=3, num_hidden_layers=4,
                  intermediate_size=47, max_position_embeddings=64, local_attention=6,
                  global_attn_every_n_layers=3, global_rope_theta=160000.0,
                  local_rope_theta=10000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  cls_token_id=1, sep_token_id=2)


def build(kind: str, model_class: str, seed: int = 0, **overrides):
    """A tiny random transformers model (eval, eager attention)."""
    base = {"deberta-v3": DEBERTA_V3, "deberta-v2xl": DEBERTA_V2XL, "modernbert": MODERNBERT}[kind]
    cfg_class = transformers.ModernBertConfig if kind == "modernbert" else \
        transformers.DebertaV2Config
    cfg = cfg_class(**{**base, **overrides}, attn_implementation="eager")
    torch.manual_seed(seed)
    return getattr(transformers, model_class)(cfg).eval()


class _Hooks:
    """Records inputs (`pre`) and outputs (`out`) of modules by name, one entry per call."""

    def __init__(self):
        self.data: dict[str, list] = {}
        self.handles = []

    def out(self, name, module, pick=lambda o: o):
        def hook(_, __, output):
            self.data.setdefault(name, []).append(pick(output).detach().numpy().copy())
        self.handles.append(module.register_forward_hook(hook))

    def pre(self, name, module):
        def hook(_, args):
            self.data.setdefault(name, []).append(args[0].detach().numpy().copy())
        self.handles.append(module.register_forward_pre_hook(hook))

    def close(self):
        for h in self.handles:
            h.remove()


def _heads(x: np.ndarray, N: int) -> np.ndarray:
    """[B, S, D] -> [B, N, S, H]."""
    B, S, D = x.shape
    return x.reshape(B, S, N, D // N).transpose(0, 2, 1, 3)


def _std(x: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    return np.sqrt(x.var(axis=-1) + eps)


def _head_out(context: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Each head's share of the output dense (no bias): [B, N, S, H] x torch [D, D] -> [B, N, S, D]."""
    N, H = context.shape[1], context.shape[3]
    kernel = weight.T.reshape(N, H, -1)
    return np.einsum("bnsh,nhd->bnsd", context, kernel)


def deberta(model, ids, mask, token_type_ids=None) -> dict[str, np.ndarray]:
    """Every contract activation of a DeBERTa-v2 model (`...ForMaskedLM` / `DebertaV2Model`)."""
    base = getattr(model, "deberta", model)
    cfg = base.config
    N, L = cfg.num_attention_heads, cfg.num_hidden_layers
    hooks = _Hooks()
    emb = base.embeddings
    hooks.out("embed.word", emb.word_embeddings)
    if emb.position_embeddings is not None:
        hooks.out("embed.position", emb.position_embeddings)
    if emb.token_type_embeddings is not None:
        hooks.out("embed.token_type", emb.token_type_embeddings)
    if emb.embed_proj is not None:
        hooks.pre("embed.sum", emb.embed_proj)
        hooks.out("embed.proj", emb.embed_proj)
    else:
        hooks.pre("embed.sum", emb.LayerNorm)
    hooks.pre("_embed_ln_in", emb.LayerNorm)
    for layer in base.encoder.layer:
        a = layer.attention
        hooks.out("_q", a.self.query_proj)
        hooks.out("_k", a.self.key_proj)
        hooks.out("_v", a.self.value_proj)
        hooks.out("_context", a.self, pick=lambda o: o[0])
        hooks.out("attn.out", a.output.dense)
        hooks.pre("attn.resid", a.output.LayerNorm)
        hooks.out("attn.norm", a.output.LayerNorm)
        hooks.out("mlp.pre", layer.intermediate.dense)
        hooks.out("mlp.post", layer.intermediate)
        hooks.out("mlp.out", layer.output.dense)
        hooks.pre("mlp.resid", layer.output.LayerNorm)
    kwargs = {} if token_type_ids is None else {"token_type_ids": torch.tensor(token_type_ids)}
    with torch.no_grad():
        o = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True,
                  output_attentions=True, **kwargs)
        # share_att_key projects the relative embeddings with query_proj / key_proj too: only
        # the calls on the [B, S, D] hidden states are the content q / k.
        data = {k: [x for x in v if k not in ("_q", "_k") or x.shape[:2] == np.shape(ids)]
                for k, v in hooks.data.items()}
        ref = {k: np.stack(v) if k.startswith(("_", "attn.", "mlp.")) else v[0]
               for k, v in data.items()}
        terms = _deberta_terms(base, ref, mask)
    hooks.close()
    eps = cfg.layer_norm_eps
    ref.update(terms)
    ref["embed.ln_std"] = _std(ref.pop("_embed_ln_in")[0], eps)
    ref["embed.out"] = o.hidden_states[0].numpy()
    if "embed.position" in ref:  # looked up once for [1, S] position ids
        ref["embed.position"] = np.broadcast_to(ref["embed.position"], ref["embed.word"].shape)
    for name in ("attn.q", "attn.k", "attn.v", "attn.context"):
        ref[name] = np.stack([_heads(x, N) for x in ref.pop("_" + name.split(".")[1])])
    ref["attn.probs"] = np.stack([a.numpy() for a in o.attentions])
    ref["attn.head_out"] = np.stack([_head_out(ref["attn.context"][i],
                                               base.encoder.layer[i].attention.output.dense
                                               .weight.detach().numpy()) for i in range(L)])
    ref["attn.ln_std"] = _std(ref["attn.resid"], eps)
    ref["layer.ln_std"] = _std(ref["mlp.resid"], eps)
    ref["layer.out"] = np.stack([h.numpy() for h in o.hidden_states[1:]])
    if hasattr(o, "logits"):
        ref["mlm.logits"] = o.logits.numpy()
    return ref


def _deberta_terms(base, ref: dict, mask) -> dict[str, np.ndarray]:
    """c2c, c2p, p2c and the masked scores per layer, c2p / p2c by transformers'
    `disentangled_attention_bias` with one term switched on at a time."""
    cfg = base.config
    N = cfg.num_attention_heads
    rel = base.encoder.get_rel_embedding()
    out = {"attn.c2c": [], "attn.c2p": [], "attn.p2c": [], "attn.scores": []}
    q_all, k_all = ref["_q"], ref["_k"]
    B, S, _ = q_all[0].shape
    m = np.asarray(mask, bool)
    both = m[:, None, :, None] & m[:, None, None, :]  # [B, 1, S, T]
    for i, layer in enumerate(base.encoder.layer):
        att = layer.attention.self
        q = att.transpose_for_scores(torch.tensor(q_all[i]), N)  # [B N, S, H]
        k = att.transpose_for_scores(torch.tensor(k_all[i]), N)
        factor = 1 + len(att.pos_att_type)
        scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * factor)
        c2c = torch.bmm(q, k.transpose(-1, -2) / scale).view(B, N, S, S).numpy()
        relative_pos = base.encoder.get_rel_pos(torch.zeros(B, S, 1))
        terms = {}
        saved = att.pos_att_type
        for term in ("c2p", "p2c"):
            att.pos_att_type = [term]
            terms[term] = att.disentangled_attention_bias(q, k, relative_pos, rel, factor) \
                .view(B, N, S, S).numpy()
        att.pos_att_type = saved
        out["attn.c2c"].append(c2c)
        out["attn.c2p"].append(terms["c2p"])
        out["attn.p2c"].append(terms["p2c"])
        scores = c2c + (terms["c2p"] + terms["p2c"])
        out["attn.scores"].append(np.where(both, scores, np.finfo(np.float32).min))
    return {k: np.stack(v) for k, v in out.items()}


def modernbert(model, ids, mask) -> dict[str, np.ndarray]:
    """Every contract activation of a ModernBERT model (`...ForMaskedLM` / `ModernBertModel`)."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    base = getattr(model, "model", model)
    cfg = base.config
    N, L, D = cfg.num_attention_heads, cfg.num_hidden_layers, cfg.hidden_size
    B, S = np.shape(ids)
    hooks = _Hooks()
    hooks.out("embed.word", base.embeddings.tok_embeddings)
    hooks.pre("_embed_ln_in", base.embeddings.norm)
    for layer in base.layers:
        hooks.out("attn.norm_in", layer.attn_norm)
        hooks.out("_qkv", layer.attn.Wqkv)
        hooks.pre("_context", layer.attn.Wo)
        hooks.out("attn.out", layer.attn.Wo)
        hooks.pre("attn.resid", layer.mlp_norm)
        hooks.out("mlp.norm_in", layer.mlp_norm)
        hooks.out("_wi", layer.mlp.Wi)
        hooks.out("mlp.post", layer.mlp.act)
        hooks.pre("mlp.glu", layer.mlp.Wo)
        hooks.out("mlp.out", layer.mlp.Wo)
        hooks.out("layer.out", layer, pick=lambda o: o[0] if isinstance(o, tuple) else o)
    hooks.pre("_final_in", base.final_norm)
    with torch.no_grad():
        o = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True,
                  output_attentions=True)
        ref = {k: np.stack(v) for k, v in hooks.data.items()}
        ref["embed.word"], ref["_embed_ln_in"] = ref["embed.word"][0], ref["_embed_ln_in"][0]
        ref["_final_in"] = ref["_final_in"][0]
        qkv = ref.pop("_qkv").reshape(L, B, S, 3, N, D // N).transpose(3, 0, 1, 4, 2, 5)
        ref["attn.q"], ref["attn.k"], ref["attn.v"] = qkv
        pos = torch.arange(S)[None]
        q_rot, k_rot = [], []
        for i in range(L):
            kind = cfg.layer_types[i]
            cos, sin = base.rotary_emb(torch.zeros(1, S, D), pos, kind)
            qr, kr = apply_rotary_pos_emb(torch.tensor(qkv[0, i]), torch.tensor(qkv[1, i]), cos,
                                          sin)
            q_rot.append(qr.numpy())
            k_rot.append(kr.numpy())
    hooks.close()
    eps = cfg.norm_eps
    ref["attn.q_rot"], ref["attn.k_rot"] = np.stack(q_rot), np.stack(k_rot)
    w = cfg.local_attention // 2
    near = np.abs(np.arange(S)[:, None] - np.arange(S)[None, :]) <= w
    keys = np.asarray(mask, bool)[:, None, None, :]
    scores = np.einsum("lbnsh,lbnth->lbnst", ref["attn.q_rot"], ref["attn.k_rot"]) / np.sqrt(D // N)
    allowed = np.stack([np.broadcast_to(keys & (near if t == "sliding_attention" else True),
                                        (B, 1, S, S)) for t in cfg.layer_types])  # [L, B, 1, S, T]
    ref["attn.scores"] = np.where(allowed, scores, np.finfo(np.float32).min)
    ref["attn.probs"] = np.stack([a.numpy() for a in o.attentions])
    ref["attn.context"] = np.stack([_heads(x, N) for x in ref.pop("_context")])
    ref["attn.head_out"] = np.stack([_head_out(ref["attn.context"][i],
                                               base.layers[i].attn.Wo.weight.detach().numpy())
                                     for i in range(L)])
    wi = ref.pop("_wi")
    I = wi.shape[-1] // 2
    ref["mlp.pre"], ref["mlp.gate"] = wi[..., :I], wi[..., I:]
    ref["mlp.resid"] = ref["layer.out"]
    layer_in = np.stack([h.numpy() for h in o.hidden_states[:L]])  # each layer's input
    ref["attn.ln_std"] = _std(layer_in, eps)
    ref["mlp.ln_std"] = _std(ref["attn.resid"], eps)
    ref["embed.ln_std"] = _std(ref.pop("_embed_ln_in"), eps)
    ref["final.ln_std"] = _std(ref.pop("_final_in"), eps)
    ref["embed.out"] = o.hidden_states[0].numpy()
    ref["final.out"] = o.hidden_states[-1].numpy()
    if hasattr(o, "logits"):
        ref["mlm.logits"] = o.logits.numpy()
    return ref
