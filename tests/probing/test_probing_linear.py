"""probe_layers: every layer's probe in one program, against scikit-learn; control tasks; MDL."""

import jax
import numpy as np
import pytest

import bertjax
from bertjax.probing import fit as F
from bertjax.probing.linear import split
from bertjax.probing.mdl import block_ends

L, N, D, K = 4, 900, 23, 5


@pytest.fixture(scope="module")
def data():
    """Layers of increasing signal: class centres scaled by 0.1 .. 1.5 plus noise."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(K, D))
    y = rng.integers(0, K, N)
    x = np.stack([centers[y] * s + 2 * rng.normal(size=(N, D)) for s in np.linspace(0.1, 1.5, L)])
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def result(data):
    types = np.random.default_rng(2).integers(0, 60, N)  # word types unrelated to the features
    return bertjax.probe_layers(*data, C=0.5, control=bertjax.control_labels(types, data[1]))


def test_accuracy_matches_scikit_learn(data, result):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = data
    train = np.setdiff1d(np.arange(N), result.dev)
    want = [sklearn.LogisticRegression(C=0.5, max_iter=2000, tol=1e-8).fit(x[i, train], y[train])
            .score(x[i, result.dev], y[result.dev]) for i in range(L)]
    np.testing.assert_allclose(result.accuracy, want, atol=0.01)
    assert result.accuracy[-1] > result.accuracy[0] + 0.3  # the signal grows with the layer
    assert result.params["W"].shape == (L, D, K) and result.params["b"].shape == (L, K)


def test_deterministic_for_a_seed(data, result):
    again = bertjax.probe_layers(*data, C=0.5)
    np.testing.assert_array_equal(again.accuracy, result.accuracy)
    np.testing.assert_array_equal(again.params["W"], result.params["W"])
    other = bertjax.probe_layers(*data, C=0.5, seed=1)
    assert not np.array_equal(other.dev, result.dev)


def test_control_task_and_selectivity(data, result):
    x, y = data
    # the control labels follow word types the features do not encode: only the real task is
    # readable from them
    assert result.control_accuracy.shape == (L,)
    np.testing.assert_allclose(result.selectivity, result.accuracy - result.control_accuracy)
    assert result.selectivity[-1] > 0.3


def test_control_labels_one_label_per_type_from_the_distribution():
    rng = np.random.default_rng(1)
    types = rng.integers(0, 400, 20000)
    labels = np.where(rng.random(20000) < 0.8, 0, 1)
    c = bertjax.control_labels([f"w{t}" for t in types], labels, seed=3)
    for t in range(0, 400, 37):
        assert len(set(c[types == t])) <= 1
    first = c[np.unique(types, return_index=True)[1]]
    assert 0.7 < (first == 0).mean() < 0.9  # drawn from the label distribution (80 % zeros)
    np.testing.assert_array_equal(c, bertjax.control_labels([f"w{t}" for t in types], labels, 3))
    with pytest.raises(ValueError, match="one entry per item"):
        bertjax.control_labels(["a"], [0, 1])
    with pytest.raises(ValueError, match="labels must be int"):
        bertjax.control_labels(["a", "b"], [0.5, 1.0])


@pytest.mark.slow
def test_mdl_known_answers():
    rng = np.random.default_rng(0)
    n, k = 1200, 4
    y = rng.integers(0, k, n)
    noise = rng.normal(size=(n, 9)).astype(np.float32)
    separable = noise.copy()
    separable[:, :k] += 8 * np.eye(k)[y]
    r = bertjax.probe_layers(np.stack([noise, separable]), y, mdl=True)
    assert r.uniform_bits == pytest.approx((n - round(0.2 * n)) * 2)
    assert 0.95 * r.uniform_bits < r.mdl_bits[0] < 1.3 * r.uniform_bits  # independent labels
    assert r.mdl_bits[1] < 0.1 * r.uniform_bits  # separable: far fewer bits


def test_block_schedule():
    assert block_ends(1000) == [1, 2, 4, 8, 16, 32, 62, 125, 250, 500, 1000]
    assert block_ends(10)[0] == 1 and block_ends(10)[-1] == 10


def test_early_stopping_keeps_the_best_held_out_loss(data):
    x, y = data
    r = bertjax.probe_layers(x, y, C=1e4, optimizer="adam", learning_rate=0.05, patience=5,
                             max_iter=500)
    assert (r.steps < 500).all() and r.accuracy[-1] > 0.8


def test_errors(data):
    x, y = data
    with pytest.raises(ValueError, match=r"features must be float \[L, N, D\]"):
        bertjax.probe_layers(x[0], y)
    with pytest.raises(ValueError, match="labels must be int"):
        bertjax.probe_layers(x, y[:-1])
    with pytest.raises(ValueError, match="unknown training options"):
        bertjax.probe_layers(x, y, lr=0.1)
    with pytest.raises(ValueError, match="optimizer must be"):
        F.options(optimizer="sgd")
    with pytest.raises(ValueError, match="C must be positive"):
        F.options(C=0)
    with pytest.raises(ValueError, match="max_iter and patience"):
        F.options(max_iter=0)
    with pytest.raises(ValueError, match="dev must be a fraction"):
        split(10, 1.5, 0)
    with pytest.raises(ValueError, match=r"dev indices must be in 0..9"):
        split(10, np.array([3, 10]), 0)
    with pytest.raises(ValueError, match="holds out every item"):
        split(3, np.arange(3), 0)


def test_vmapped_and_mapped_layers_agree(data, result):
    """parallel=True (the accelerator default: layers in lockstep) and the CPU default (layers
    mapped one after the other inside the program) reach the same probes."""
    x, y = data
    other = bertjax.probe_layers(x, y, C=0.5, parallel=jax.default_backend() == "cpu")
    np.testing.assert_allclose(other.accuracy, result.accuracy, atol=0.01)
    np.testing.assert_allclose(other.params["W"], result.params["W"], atol=2e-2, rtol=2e-2)
