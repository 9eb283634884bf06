"""plots: each figure has the right axes, labels and pixel values (Agg backend)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_tables import TOKENS, fake_probs  # noqa: E402

from bertjax.analysis.plots import plot_entropy, plot_head, plot_head_stat, plot_heads_grid  # noqa: E402
from bertjax.analysis.reductions import AttentionStats  # noqa: E402


def test_plot_head(tmp_path):
    probs, mask = fake_probs()
    fig = plot_head(probs, TOKENS[:4], layer=1, head=2, batch=1, attention_mask=mask)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), probs[1, 1, 2, :4, :4])
    assert [t.get_text() for t in ax.get_xticklabels()] == TOKENS[:4]
    assert ax.get_title() == "layer 1, head 2"
    fig.savefig(tmp_path / "head.png")
    assert (tmp_path / "head.png").stat().st_size > 1000


def test_plot_head_mean_and_unique_labels():
    probs, _ = fake_probs()
    ax = plot_head(probs, TOKENS, layer=0).axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), probs[0, 0].mean(0), rtol=1e-6)
    assert ax.get_yticklabels()[4].get_text() == "the₂"
    assert ax.get_title() == "layer 0, mean over heads"


def test_plot_head_default_layer_title_and_colour_scale():
    probs, _ = fake_probs()
    ax = plot_head(probs, TOKENS, head=-1).axes[0]
    assert ax.get_title() == "layer 1, head 2"  # not "layer -1"
    assert ax.images[0].get_clim() == (0.0, 1.0)
    ax = plot_head(probs, TOKENS, head=0, vmax=None).axes[0]
    assert ax.images[0].get_clim() == (0.0, pytest.approx(float(probs[1, 0, 0].max())))
    assert plot_head(probs, TOKENS, vmax=0.5).axes[0].images[0].get_clim() == (0.0, 0.5)


def test_plot_heads_grid():
    probs, mask = fake_probs()
    fig = plot_heads_grid(probs, batch=1, attention_mask=mask)
    assert len(fig.axes) == 2 * 3
    np.testing.assert_array_equal(fig.axes[5].images[0].get_array(), probs[1, 1, 2, :4, :4])
    assert fig.axes[3].get_ylabel() == "layer 1" and fig.axes[2].get_title() == "head 2"


def test_plot_entropy_and_head_stat():
    entropy = np.arange(12, dtype=np.float32).reshape(2, 2, 3)  # [L, B, N]
    stats = AttentionStats(entropy=entropy, to_cls=None, to_sep=None, to_self=None,
                           to_prev=None, rollout=None)
    ax = plot_entropy(stats).axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), entropy.mean(1))
    assert len(ax.texts) == 6 and ax.texts[5].get_text() == "9.50"
    ax = plot_entropy(stats, batch=0).axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), entropy[:, 0])
    with pytest.raises(ValueError, match=r"values must have shape \[L, N\] \(one number per head\)"):
        plot_head_stat(entropy)
