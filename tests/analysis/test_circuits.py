"""circuits: every circuit, spectrum and composition score against plain NumPy on the dense matrices,
and the circuits' conventions against the model's own scores and head outputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import TINY, assert_close, tiny_inputs

import bertjax
from bertjax.analysis import circuits as K

L, N, D, V = TINY["num_hidden_layers"], TINY["num_attention_heads"], TINY["hidden_size"], TINY["vocab_size"]
H = D // N
CONFIG = bertjax.BertConfig(**TINY)


def _params(untied: bool = False, biases: bool = False, seed: int = 0) -> dict:
    heads = bertjax.Heads(mlm=True, untied_decoder=untied)
    params = bertjax.init_params(jax.random.key(seed), CONFIG, heads)
    # std 0.02 -> 0.3 keeps the scores of order one; optionally non-zero biases
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x * 15.0 if path[-1].key in ("kernel", "embedding")
        else x + rng.normal(size=x.shape).astype(np.float32) * biases if path[-1].key == "bias"
        else x, params)


def _dense(params) -> dict:
    """NumPy: per (layer, head) the dense QK and OV matrices, [L][N] of [D, D]."""
    qk, ov = np.zeros((L, N, D, D)), np.zeros((L, N, D, D))
    for layer in range(L):
        p = params["encoder"]["layer"][str(layer)]["attention"]
        q, k, v = (np.asarray(p["self"][n]["kernel"], np.float64) for n in ("query", "key", "value"))
        o = np.asarray(p["output"]["dense"]["kernel"], np.float64)
        for h in range(N):
            cols = slice(h * H, (h + 1) * H)
            qk[layer, h] = q[:, cols] @ k[:, cols].T
            ov[layer, h] = v[:, cols] @ o[cols]
    return {"qk": qk, "ov": ov}


@pytest.fixture(scope="module")
def params():
    return _params()


@pytest.fixture(scope="module")
def dense(params):
    return _dense(params)


def test_circuits_are_factored_and_match_numpy(params, dense):
    for name, circuit in (("qk", K.qk_circuit(params, CONFIG)), ("ov", K.ov_circuit(params, CONFIG))):
        assert circuit.left.shape == (L, N, D, H) and circuit.right.shape == (L, N, H, D)
        assert circuit.shape == (L, N, D, D)
        assert_close(name, circuit.dense(), dense[name])
        assert_close(f"{name}[2, 1]", circuit[2, 1].dense(), dense[name][2, 1])
        assert_close(f"{name} rows", circuit[1, 2].rows([3, 0]), dense[name][1, 2][[3, 0]])


def test_spectra_and_norms_match_numpy(params, dense):
    spectra = K.circuit_spectra(params, CONFIG)
    for name in ("qk", "ov"):
        want = np.linalg.svd(dense[name], compute_uv=False)[..., :H]  # rank H: the rest are ~0
        assert spectra[name].shape == (L, N, H)
        assert_close(f"{name} singular values", spectra[name], want)
        circuit = K.qk_circuit(params, CONFIG) if name == "qk" else K.ov_circuit(params, CONFIG)
        assert_close(f"{name} norm", circuit.norm(), np.linalg.norm(dense[name], axis=(-2, -1)))


def test_composition_scores_match_numpy(params, dense):
    scores = K.composition_scores(params, CONFIG)
    qk, ov = dense["qk"], dense["ov"]
    fro = np.linalg.norm
    want = {n: np.zeros((L, N, L, N)) for n in "qkv"}
    for l1 in range(L):
        for l2 in range(l1 + 1, L):
            for h1 in range(N):
                for h2 in range(N):
                    o1, q2, o2 = ov[l1, h1], qk[l2, h2], ov[l2, h2]
                    # Elhage et al. (column vectors): W_QK^T W_OV, W_QK W_OV, W_OV W_OV; ours are
                    # the transposes of their matrices (OV) and the same QK.
                    want["q"][l1, h1, l2, h2] = fro(q2.T @ o1.T) / (fro(q2) * fro(o1))
                    want["k"][l1, h1, l2, h2] = fro(q2 @ o1.T) / (fro(q2) * fro(o1))
                    want["v"][l1, h1, l2, h2] = fro(o2.T @ o1.T) / (fro(o2) * fro(o1))
    for name in "qkv":
        assert scores[name].shape == (L, N, L, N)
        assert_close(f"{name}-composition", scores[name], want[name])
    assert not np.allclose(scores["q"], scores["k"])  # the two sides really differ


@pytest.mark.parametrize("untied", [False, True], ids=["tied", "untied"])
def test_full_ov_circuit_matches_numpy(untied):
    params = _params(untied=untied)
    W_E = np.asarray(params["embeddings"]["word_embeddings"]["embedding"], np.float64)
    W_U = (np.asarray(params["cls"]["predictions"]["decoder"]["kernel"], np.float64) if untied
           else W_E.T)
    ov = _dense(params)["ov"]
    full = K.full_ov_circuit(params, CONFIG, layer=-1, head=1)
    assert full.left.shape == (V, H) and full.right.shape == (H, V)
    want = W_E @ ov[L - 1, 1] @ W_U
    assert_close("full OV", full.dense(), want, atol=1e-4)
    assert_close("full OV rows", full.rows([5, 7]), want[[5, 7]], atol=1e-4)
    spectra = K.full_ov_singular_values(params, CONFIG)
    assert spectra.shape == (L, N, H)
    assert_close("full OV singular values", spectra[L - 1, 1],
                 np.linalg.svd(want, compute_uv=False)[:H], atol=1e-4)


def test_copying_scores_match_numpy():
    params = _params()
    W_E = np.asarray(params["embeddings"]["word_embeddings"]["embedding"], np.float64)
    ov = _dense(params)["ov"]
    tokens = np.array([3, 17, 42, 99, 5, 60], np.int32)
    scores = K.copying_scores(params, CONFIG, tokens, k=10)
    assert scores.shape == (L, N)
    want = np.zeros((L, N))
    for layer in range(L):
        for head in range(N):
            logits = W_E[tokens] @ ov[layer, head] @ W_E.T  # [n, V]
            ranks = (logits > logits[np.arange(len(tokens)), tokens][:, None]).sum(1)
            want[layer, head] = (ranks < 10).mean()
    np.testing.assert_allclose(scores, want, atol=1e-6)
    assert 0 < want.mean() < 1  # neither all nor none: the comparison can fail
    with pytest.raises(ValueError, match=r"token_ids must be int \[n\]"):
        K.copying_scores(params, CONFIG, np.array([[1, 2]]))


def test_full_ov_circuit_needs_an_unembedding():
    params = bertjax.init_params(jax.random.key(0), CONFIG, bertjax.Heads())
    with pytest.raises(ValueError, match=r"no MLM head .* pass unembed="):
        K.full_ov_circuit(params, CONFIG, 0, 0)
    with pytest.raises(ValueError, match=r"unembed must have shape \[D, V\]=\(15, 101\), got \(101, 15\)"):
        K.full_ov_circuit(params, CONFIG, 0, 0, unembed=params["embeddings"]["word_embeddings"]["embedding"])
    W_U = params["embeddings"]["word_embeddings"]["embedding"].T
    assert K.full_ov_circuit(params, CONFIG, 0, 0, unembed=W_U).shape == (V, V)


def test_the_circuits_are_the_models_bias_free_scores_and_outputs():
    """With zero biases, layer 0's scores are x W_QK y^T / sqrt(H) and each head writes
    probs @ (x W_OV): the circuits describe the computation the forward does."""
    params = _params(biases=False)
    ids, types, _ = tiny_inputs()
    acts = bertjax.forward(params, ids, CONFIG, types,
                           capture=("embed.out", "attn.scores", "attn.probs", "attn.head_out")).acts
    x = np.asarray(acts["embed.out"], np.float64)  # [B, S, D]
    qk, ov = _dense(params)["qk"][0], _dense(params)["ov"][0]  # [N, D, D]
    scores = np.einsum("BSD,NDE,BTE->BNST", x, qk, x) / np.sqrt(H)
    assert_close("attn.scores[0]", acts["attn.scores"][0], scores, atol=1e-4)
    written = np.einsum("BNST,BTD,NDE->BNSE", np.asarray(acts["attn.probs"][0], np.float64), x, ov)
    assert_close("attn.head_out[0]", acts["attn.head_out"][0], written)


def test_stacked_params_and_jit(params):
    stacked = bertjax.stack_layers(params)
    a = K.composition_scores(stacked, CONFIG)["v"]
    b = jax.jit(K.composition_scores, static_argnames="config")(params, config=CONFIG)["v"]
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert K.head_weights(stacked["encoder"], CONFIG)["o"].shape == (L, N, H, D)
