"""The offline pages (head view, model view, neuron view) in a real headless browser: the scripts run
without a console message, draw their lines and selectors, and compute what the data says.

Skipped when no chromium is installed (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax
from bertjax.analysis.views import neuron_view_data, save_head_view, save_model_view, save_neuron_view

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no headless chromium installed")

L, N = TINY["num_hidden_layers"], TINY["num_attention_heads"]
TOKENS = ["[CLS]", "the", "cat", "sat", "[SEP]", "slept", "[SEP]"]


def _browser(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--enable-logging=stderr", "--v=0", *args, f"file://{path}"],
                          capture_output=True, text=True, timeout=120)


def dom_and_console(path: str) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the page's console messages (errors included)."""
    run = _browser(path, "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, [line for line in run.stderr.splitlines() if ":CONSOLE" in line]


def screenshot(path: str, png: str) -> np.ndarray:
    """The page rendered at 1200 x 700, as an RGB array."""
    from PIL import Image

    run = _browser(path, f"--screenshot={png}", "--window-size=1200,700")
    assert run.returncode == 0, run.stderr[-2000:]
    return np.asarray(Image.open(png).convert("RGB"))


def coloured(image: np.ndarray) -> int:
    """Pixels that are neither grey nor white: the coloured lines and toggles."""
    rgb = image.astype(int)
    return int(((rgb.max(-1) - rgb.min(-1)) > 40).sum())


@pytest.fixture(scope="module")
def acts():
    config = bertjax.BertConfig(**TINY)
    params = bertjax.init_params(jax.random.key(0), config, bertjax.Heads())
    params = jax.tree_util.tree_map_with_path(  # std 0.3: sharp attention, q.k of order one
        lambda path, x: x * 15.0 if path[-1].key in ("kernel", "embedding") else x, params)
    ids, types, _ = tiny_inputs()
    out = bertjax.forward(params, ids, config, types, capture=("attn.probs", "attn.q", "attn.k"))
    return {k: np.asarray(v) for k, v in out.acts.items()}


def test_head_view_in_a_browser(acts, tmp_path):
    path = save_head_view(str(tmp_path / "head.html"), acts["attn.probs"], TOKENS, layer=1, head=2,
                          sentence_b_start=5)
    dom, console = dom_and_console(path)
    assert console == []
    assert dom.count("<option") == L and re.search(r'<option value="1"[^>]*>1</option>', dom)
    strokes = set(re.findall(r'<line [^>]*stroke="(#\w+)"', dom))
    assert strokes == {"#2ca02c"}  # only head 2 is drawn at first: the others are toggled off
    assert coloured(screenshot(path, str(tmp_path / "head.png"))) > 500


def test_model_view_in_a_browser(acts, tmp_path):
    path = save_model_view(str(tmp_path / "model.html"), acts["attn.probs"], TOKENS, layer=2, head=1)
    dom, console = dom_and_console(path)
    assert console == []
    assert dom.count('<option value="') == L + N
    frames = re.findall(r'<rect width="\d+" height="\d+" fill="none" stroke="(#\w+)"', dom)
    assert len(frames) == L * N and frames.count("#000") == 1  # the selected cell is outlined
    assert frames.index("#000") == 2 * N + 1 and ">layer 2, head 1<" in dom
    assert dom.count("<line") > L * N  # every small diagram has lines
    assert coloured(screenshot(path, str(tmp_path / "model.png"))) > 2000


def test_neuron_view_in_a_browser(acts, tmp_path):
    data = neuron_view_data(acts, TOKENS, sentence_b_start=5)
    path = save_neuron_view(str(tmp_path / "neuron.html"), data, layer=-1, head=1)
    dom, console = dom_and_console(path)
    assert console == []
    for header in ("query q", "key k", "q × k", "q·k", "softmax"):
        assert f">{header}</text>" in html.unescape(dom), header
    assert re.search(r'<option value="ab"[^>]*>Sentence A -&gt; Sentence B</option>', dom)
    # query 0 of the last layer's head 1: the page's q.k and softmax against NumPy
    q, k = acts["attn.q"][L - 1, 0, 1], acts["attn.k"][L - 1, 0, 1]  # [S, H]
    numbers = [t for t in re.findall(r">(-?\d+\.\d+)</text>", dom)]
    dots = [n for n in numbers if len(n.split(".")[1]) == 2]
    probs = [n for n in numbers if len(n.split(".")[1]) == 3]
    np.testing.assert_allclose([float(x) for x in dots], k @ q[0], atol=0.006)
    np.testing.assert_allclose([float(x) for x in probs], acts["attn.probs"][L - 1, 0, 1, 0], atol=6e-4)
    assert np.ptp(k @ q[0]) > 0.5  # the numbers checked are not all alike
    assert coloured(screenshot(path, str(tmp_path / "neuron.png"))) > 500
