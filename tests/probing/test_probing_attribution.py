"""integrated_gradients (completeness on MiniLM, a step-by-step reference), gradient x activation,
and attention_relevance against a NumPy rollout of PyTorch's attention gradients."""

import jax.numpy as jnp
import numpy as np
import pytest

import bertjax
from bertjax.probing.integrated_gradients import quadrature
from tests.conftest import TINY, tiny_inputs


def cls_metric(out):
    """A scalar read from the [CLS] vectors of every example."""
    return jnp.sum(jnp.tanh(out.last_hidden_state[:, 0, :5]) * jnp.arange(1.0, 6.0)[None, :])


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    config, params = bertjax.load(tiny_dir)
    return config, params


def test_quadrature_integrates_polynomials():
    for method, steps, tol in [("riemann_trapezoid", 64, 1e-3), ("gausslegendre", 8, 1e-12)]:
        a, w = quadrature(steps, method)
        assert w.sum() == pytest.approx(1.0)
        assert (w * a ** 3).sum() == pytest.approx(0.25, abs=tol)
    with pytest.raises(ValueError, match="method must be one of"):
        quadrature(8, "left")
    with pytest.raises(ValueError, match="steps must be at least 2"):
        quadrature(1, "gausslegendre")


@pytest.mark.slow
@pytest.mark.parametrize("site, layer", [("embed.out", None), ("layer.out", 1)])
def test_matches_a_step_by_step_reference(tiny, site, layer):
    config, params = tiny
    ids, types, mask = tiny_inputs()
    kw = dict(token_type_ids=types, attention_mask=mask)
    x = bertjax.forward(params, ids, config, capture=(site,), **kw).acts[site]
    x = np.asarray(x if layer is None else x[layer])
    # (not zeros: the tiny model's biases are zero, so an all-zero site makes every LayerNorm
    # input exactly zero, where its gradient is not finite)
    rand = np.random.default_rng(0).normal(size=x.shape[1:]).astype(np.float32)
    for b in (np.full_like(x, 0.1), np.broadcast_to(rand, x.shape)):
        got, delta = bertjax.integrated_gradients(
            params, ids, config, cls_metric, site=site, steps=7, batch_size=3, layer=layer,
            baseline=b[0], **kw)  # [S, D] or [S, ...] broadcast over the batch
        alphas, weights = quadrature(7, "riemann_trapezoid")
        total = 0
        for a, w in zip(alphas, weights):  # one site_grads per point, edited to the path point
            point = b + a * (x - b)
            if layer is None:
                edit = {site: (0.0, point)}
            else:
                mul = np.ones((TINY["num_hidden_layers"], 1, 1, 1), np.float32)
                mul[layer] = 0
                add = np.zeros((TINY["num_hidden_layers"],) + x.shape, np.float32)
                add[layer] = point
                edit = {site: (mul, add)}
            g = bertjax.site_grads(params, ids, config, cls_metric, (site,), edit=edit, **kw)[site]
            total = total + w * np.asarray(g if layer is None else g[layer])
        assert np.isfinite(got).all() and np.isfinite(float(delta))
        np.testing.assert_allclose(got, (x - b) * total, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("site", ["embed.word", "embed.out"])
def test_completeness_on_minilm(minilm_dir, site):
    """delta within 1 % of metric(x) - metric(baseline) at 64 steps: embed.word against zeros
    (Captum's classic), embed.out against the embeddings of a reference input with every word
    replaced by [PAD] (at embed.out a zero baseline makes the first LayerNorms' inputs nearly
    zero, where the path turns sharply and 64 steps are not enough)."""
    config, params = bertjax.load(minilm_dir)
    tok = bertjax.tokenizer_for(minilm_dir)
    enc = tok(["the movie was surprisingly good", "a dull and tedious film"], padding=True,
              return_tensors="np")
    kw = dict(attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"])
    ids, baseline = enc["input_ids"], None
    if site == "embed.out":
        ref = np.where(np.isin(ids, tok.all_special_ids), ids, tok.pad_token_id)
        baseline = bertjax.forward(params, ref, config, capture=(site,), **kw).acts[site]
    x = bertjax.forward(params, ids, config, capture=(site,), **kw).acts[site]
    b = np.zeros_like(x) if baseline is None else baseline
    at_b = bertjax.forward(params, ids, config, edit={site: (0.0, b)}, **kw)
    gap = float(cls_metric(bertjax.forward(params, ids, config, **kw)) - cls_metric(at_b))
    assert abs(gap) > 0.1
    for method in ("riemann_trapezoid", "gausslegendre"):
        attr, delta = bertjax.integrated_gradients(params, ids, config, cls_metric, site=site,
                                                   baseline=baseline, steps=64, method=method,
                                                   batch_size=16, **kw)
        assert abs(float(delta)) < 0.01 * abs(gap), (method, float(delta), gap)
        np.testing.assert_allclose(float(jnp.sum(attr)), gap, rtol=0.01)
        assert attr.shape == x.shape


@pytest.mark.slow
def test_gradient_x_activation(tiny):
    config, params = tiny
    ids, types, mask = tiny_inputs()
    got = bertjax.gradient_x_activation(params, ids, config, cls_metric, site="layer.out",
                                        attention_mask=mask)
    g = bertjax.site_grads(params, ids, config, cls_metric, ("layer.out",), attention_mask=mask)
    x = bertjax.forward(params, ids, config, capture=("layer.out",), attention_mask=mask)
    np.testing.assert_allclose(got, np.asarray(g["layer.out"]) * np.asarray(x.acts["layer.out"]))


def test_errors(tiny):
    config, params = tiny
    ids, _, _ = tiny_inputs()
    ig = bertjax.integrated_gradients
    with pytest.raises(ValueError, match="site must be one activation name"):
        ig(params, ids, config, cls_metric, site="embed")
    with pytest.raises(ValueError, match=r"per layer: pass layer=0..3, got None"):
        ig(params, ids, config, cls_metric, site="layer.out")
    with pytest.raises(ValueError, match=r"per layer: pass layer=0..3, got 4"):
        ig(params, ids, config, cls_metric, site="layer.out", layer=4)
    with pytest.raises(ValueError, match="is not per layer: leave layer None"):
        ig(params, ids, config, cls_metric, layer=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        ig(params, ids, config, cls_metric, baseline=np.zeros(4))
    with pytest.raises(ValueError, match="must not change the attributed site"):
        ig(params, ids, config, cls_metric, edit={"embed.out": (1.0, 0.0)})
    with pytest.raises(ValueError, match="keyword arguments"):
        ig(params, ids, config, cls_metric, reuse=None)
    with pytest.raises(ValueError, match="leave rng None"):
        import jax

        ig(params, ids, config, cls_metric, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="site must be one activation name"):
        bertjax.gradient_x_activation(params, ids, config, cls_metric, site="nope")


@pytest.mark.slow
def test_attention_relevance_against_torch_and_numpy(tiny, tiny_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config, params = tiny
    ids, types, mask = tiny_inputs()
    per_head, rolled = bertjax.attention_relevance(params, ids, config, cls_metric,
                                                   token_type_ids=types, attention_mask=mask)
    model = transformers.BertModel.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types, dtype=torch.long), output_attentions=True)
    for a in out.attentions:
        a.retain_grad()
    metric = (torch.tanh(out.last_hidden_state[:, 0, :5]) * torch.arange(1.0, 6.0)).sum()
    metric.backward()
    # the reference, written out: per layer the clipped grad * probs averaged over heads, then
    # R = I; R = R + A_bar @ R layer by layer
    L = TINY["num_hidden_layers"]
    want_heads = np.stack([np.maximum(a.grad.numpy() * a.detach().numpy(), 0) for a in out.attentions])
    R = np.stack([np.eye(ids.shape[1])] * ids.shape[0])
    for layer in range(L):
        a_bar = want_heads[layer].mean(axis=1)
        R = R + np.stack([a_bar[b] @ R[b] for b in range(ids.shape[0])])
    np.testing.assert_allclose(per_head, want_heads, atol=1e-5)
    np.testing.assert_allclose(rolled, R, atol=1e-5)
    assert rolled.shape == (ids.shape[0], ids.shape[1], ids.shape[1])
