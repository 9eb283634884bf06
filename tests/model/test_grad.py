"""jax.grad through forward matches PyTorch autograd on the same weights and loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from conftest import assert_close, tiny_inputs

import bertjax
from bertjax.checkpoints.convert import state_dict_to_params
from bertjax.model.params import flatten


def test_grad_matches_torch_autograd(checkpoint_factory):
    folder = checkpoint_factory("BertForMaskedLM", hidden_act="gelu_new")
    config, params = bertjax.load(folder)
    model = transformers.BertForMaskedLM.from_pretrained(folder, attn_implementation="eager")
    model.eval()
    ids, types, mask = tiny_inputs(5)
    w = np.random.default_rng(0).standard_normal((2, 7, config.vocab_size)).astype(np.float32)

    def loss(p):
        out = bertjax.forward(p, ids, config, types, mask, capture="mlm.logits")
        return jnp.sum(out.acts["mlm.logits"] * w) / w.size

    value, grads = jax.value_and_grad(loss)(params)
    logits = model(torch.as_tensor(ids, dtype=torch.long),
                   token_type_ids=torch.as_tensor(types, dtype=torch.long),
                   attention_mask=torch.as_tensor(mask)).logits
    ref = (logits * torch.as_tensor(w)).sum() / w.size
    ref.backward()
    assert abs(float(value) - float(ref.detach())) <= 1e-6
    torch_grads = {k: p.grad.numpy() for k, p in model.named_parameters() if p.grad is not None}
    want, _, _ = state_dict_to_params(torch_grads, config)
    got, want = flatten(grads), flatten(want)
    assert set(got) == set(want)
    # <= 1e-4 relative to each tensor's largest gradient; key biases have an exactly-zero true
    # gradient (softmax ignores a shift shared by all keys), seen as ~1e-14 noise: floor 1e-9.
    for path in sorted(want):
        scale = float(np.abs(want[path]).max())
        assert_close(path, got[path], want[path], atol=1e-4 * scale + 1e-9)
