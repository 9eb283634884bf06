"""Every contract activation from transformers' PyTorch BERT, through forward hooks.

q, k, v, context, attn.out, the add & norm inputs and outputs and the MLP steps come from hooks on
the transformers modules; scores are recomputed from the hooked q, k and the exact additive mask
transformers passed to its attention; head_out from the hooked context and the output kernel; each
LayerNorm's std (the *.ln_std names) from its hooked input.
"""

from __future__ import annotations

import numpy as np
import torch


def _np(t) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _heads(t, n):  # [B, S, D] -> [B, N, S, H]
    b, s, d = t.shape
    return t.reshape(b, s, n, d // n).transpose(1, 2)


def _ln_std(x: np.ndarray, eps: float) -> np.ndarray:
    """sqrt(var + eps) over the last axis, as torch's LayerNorm computes it (biased variance)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    return np.sqrt(t.var(dim=-1, unbiased=False).numpy() + eps).astype(np.float32)


def torch_activations(model, input_ids, token_type_ids=None, attention_mask=None,
                      position_ids=None) -> dict[str, np.ndarray]:
    """name -> array (per-layer names stacked over layers on axis 0) for a transformers BERT."""
    base = getattr(model, "bert", model)
    n = base.config.num_attention_heads
    got: dict[str, list] = {}
    hooks = []

    def out_hook(name, fn=lambda o: o):
        def hook(module, args, output):
            got.setdefault(name, []).append(fn(output))
        return hook

    def in_hook(name):
        def hook(module, args, output):
            got.setdefault(name, []).append(args[0])
        return hook

    def mask_hook(module, args, kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        got.setdefault("_mask", []).append(mask)

    emb = base.embeddings
    hooks += [emb.word_embeddings.register_forward_hook(out_hook("embed.word")),
              emb.position_embeddings.register_forward_hook(out_hook("embed.position")),
              emb.token_type_embeddings.register_forward_hook(out_hook("embed.token_type")),
              emb.LayerNorm.register_forward_hook(in_hook("embed.sum")),
              emb.LayerNorm.register_forward_hook(out_hook("embed.out"))]
    for layer in base.encoder.layer:
        att = layer.attention
        hooks += [
            att.self.query.register_forward_hook(out_hook("attn.q", lambda o: _heads(o, n))),
            att.self.key.register_forward_hook(out_hook("attn.k", lambda o: _heads(o, n))),
            att.self.value.register_forward_hook(out_hook("attn.v", lambda o: _heads(o, n))),
            att.self.register_forward_pre_hook(mask_hook, with_kwargs=True),
            att.self.register_forward_hook(out_hook("attn.context", lambda o: _heads(o[0], n))),
            att.self.register_forward_hook(out_hook("attn.probs", lambda o: o[1])),
            att.output.dense.register_forward_hook(out_hook("attn.out")),
            att.output.LayerNorm.register_forward_hook(in_hook("attn.resid")),
            att.output.LayerNorm.register_forward_hook(out_hook("attn.norm")),
            layer.intermediate.dense.register_forward_hook(out_hook("mlp.pre")),
            layer.intermediate.register_forward_hook(out_hook("mlp.post")),
            layer.output.dense.register_forward_hook(out_hook("mlp.out")),
            layer.output.LayerNorm.register_forward_hook(in_hook("mlp.resid")),
            layer.output.LayerNorm.register_forward_hook(out_hook("layer.out")),
        ]
    if base.pooler is not None:
        hooks.append(base.pooler.register_forward_hook(out_hook("pooler.out")))
    kwargs = {k: None if v is None else torch.as_tensor(np.asarray(v), dtype=torch.long)
              for k, v in dict(token_type_ids=token_type_ids, attention_mask=attention_mask,
                               position_ids=position_ids).items()}
    try:
        with torch.no_grad():
            output = model(torch.as_tensor(np.asarray(input_ids), dtype=torch.long), **kwargs)
            acts = _finish(base, got, output)
    finally:
        for h in hooks:
            h.remove()
    return acts


def _finish(base, got, output) -> dict[str, np.ndarray]:
    n = base.config.num_attention_heads
    h = base.config.hidden_size // n
    acts = {}
    for name in ("embed.word", "embed.token_type", "embed.sum", "embed.out"):
        acts[name] = _np(got[name][0])
    acts["embed.position"] = np.broadcast_to(_np(got["embed.position"][0]), acts["embed.word"].shape)
    scores, head_out = [], []
    for i, layer in enumerate(base.encoder.layer):
        q, k, mask = got["attn.q"][i], got["attn.k"][i], got["_mask"][i]
        s = torch.matmul(q, k.transpose(2, 3)) * layer.attention.self.scaling
        scores.append(s if mask is None else s + mask)
        w = layer.attention.output.dense.weight.T.reshape(n, h, -1)  # [N, H, D]
        head_out.append(torch.einsum("bnsh,nhd->bnsd", got["attn.context"][i], w))
    got["attn.scores"], got["attn.head_out"] = scores, head_out
    for name, values in got.items():
        if name.startswith(("attn.", "mlp.", "layer.")):
            acts[name] = np.stack([_np(v) for v in values])
    for name, source in (("attn.ln_std", "attn.resid"), ("layer.ln_std", "mlp.resid")):
        acts[name] = _ln_std(acts[source], base.config.layer_norm_eps)
    acts["embed.ln_std"] = _ln_std(acts["embed.sum"], base.config.layer_norm_eps)
    if "pooler.out" in got:
        acts["pooler.out"] = _np(got["pooler.out"][0])
    logits = getattr(output, "prediction_logits", getattr(output, "logits", None))
    if logits is not None and logits.shape[-1] == base.config.vocab_size:
        acts["mlm.logits"] = _np(logits)
    return acts
