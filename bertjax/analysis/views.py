"""Attention views: bertviz's inputs built from JAX/NumPy arrays, and a standalone head view page.

* `head_view_inputs` gives the keyword arguments of `bertviz.head_view` / `bertviz.model_view`
  (`attention`: a tuple over layers of [1, N, S, S], `tokens`, `sentence_b_start`). bertviz's
  `format_attention` calls `torch.stack`, so it needs torch tensors: `as_torch=True` converts them
  (torch is imported only then; bertviz itself depends on torch). NumPy arrays otherwise.
* `neuron_view_data` gives the per-layer `attn` / `queries` / `keys` dict that bertviz's
  `neuron_view.js` reads (what `bertviz.neuron_view.get_attention(..., include_queries_and_keys=True)`
  returns), for one sentence or pair; `bertviz_neuron_view` renders it with bertviz's own script.
* `head_view_html` / `save_head_view`: our own head view, one self-contained HTML file with the data
  as JSON and a small vanilla-JS/SVG renderer (`head_view.html` beside this module). No server and no
  network: bertviz's pages load require.js, d3 and jQuery from a CDN, which fails offline.

Axis letters: L layers, B batch, N heads, S query positions, T key positions, H head size.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from collections.abc import Sequence

import numpy as np

from bertjax.analysis.tables import check_index, example_attention, real_positions
from bertjax.checkpoints.files import atomic_write
from bertjax.model import capture as C

_TEMPLATE = os.path.join(os.path.dirname(__file__), "head_view.html")


def sentence_b_start(token_type_ids, batch: int = 0) -> int | None:
    """The first position of sentence B (token type 1) in one example, or None for one sentence."""
    types = np.asarray(token_type_ids)
    types = types[batch] if types.ndim == 2 else types
    starts = np.flatnonzero(types == 1)
    return int(starts[0]) if starts.size else None


def head_view_inputs(probs, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                     sentence_b_start: int | None = None, as_torch: bool = False) -> dict:
    """Keyword arguments for `bertviz.head_view(**inputs)` and `bertviz.model_view(**inputs)`.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's tokens; padding is stripped when `attention_mask` is given.
      sentence_b_start: index of the first token of sentence B (see `sentence_b_start`).
      as_torch: torch tensors instead of NumPy arrays (bertviz needs them).

    Returns:
      {"attention": tuple over layers of float32 [1, N, S', S'], "tokens": S' tokens,
       "sentence_b_start": int or None}.
    """
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    layers = tuple(layer[None] for layer in probs)  # L x [1, N, S', S']
    if as_torch:
        import torch

        layers = tuple(torch.from_numpy(np.ascontiguousarray(layer)) for layer in layers)
    return {"attention": layers, "tokens": tokens, "sentence_b_start": sentence_b_start}


def _as_lists(x: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(x, np.float64), decimals).tolist()


def neuron_view_data(acts: dict, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                     sentence_b_start: int | None = None, decimals: int = 6) -> dict:
    """bertviz's neuron view data for one example: attention, queries and keys per layer.

    Args:
      acts: captured `attn.probs`, `attn.q` and `attn.k` ([L, B, N, S, T] / [L, B, N, S, H]).
      tokens: the example's tokens (padding stripped with `attention_mask`).
      sentence_b_start: first position of sentence B, for a pair; adds the "aa", "bb", "ab",
        "ba" views.

    Returns:
      {"all": {"attn": [L][N][S][T], "queries": [L][N][S][H], "keys": [L][N][T][H],
      "left_text": tokens, "right_text": tokens}, and for a pair the same per sentence
      combination, as bertviz's `neuron_view.get_attention(..., include_queries_and_keys=True)`.
    """
    missing = [n for n in (C.ATTN_PROBS, C.ATTN_Q, C.ATTN_K) if n not in acts]
    if missing:
        raise ValueError(f"neuron_view_data needs {', '.join(missing)} in acts "
                         f"(capture=(\"attn.probs\", \"attn.q\", \"attn.k\"))")
    probs, tokens = example_attention(acts[C.ATTN_PROBS], tokens, batch, attention_mask)
    keep = real_positions(attention_mask, np.asarray(acts[C.ATTN_Q]).shape[3], batch)
    q, k = (np.asarray(acts[name], np.float32)[:, batch][:, :, keep] for name in (C.ATTN_Q, C.ATTN_K))
    start = sentence_b_start
    spans = {"all": slice(None), "a": slice(0, start), "b": slice(start, None)}
    views = {"all": ("all", "all")}
    if sentence_b_start is not None:
        views.update(aa=("a", "a"), bb=("b", "b"), ab=("a", "b"), ba=("b", "a"))
    data = {}
    for name, (left, right) in views.items():
        rows, cols = spans[left], spans[right]
        data[name] = {"attn": _as_lists(probs[:, :, rows, cols], decimals),
                      "queries": _as_lists(q[:, :, rows], decimals),
                      "keys": _as_lists(k[:, :, cols], decimals),
                      "left_text": tokens[rows], "right_text": tokens[cols]}
    return data


def bertviz_neuron_view(data: dict, layer: int | None = None, head: int | None = None,
                        display_mode: str = "dark"):
    """Renders `neuron_view_data` with bertviz's neuron_view.js (needs bertviz installed).

    Returns an `IPython.display.HTML`, as `bertviz.neuron_view.show(..., html_action="return")`;
    like bertviz's own pages it loads require.js, d3 and jQuery from a CDN when displayed.
    """
    import importlib.util

    from IPython.display import HTML

    spec = importlib.util.find_spec("bertviz")
    if spec is None:
        raise ImportError("bertviz_neuron_view needs bertviz: pip install bertviz")
    with open(os.path.join(os.path.dirname(spec.origin), "neuron_view.js")) as f:
        script = f.read()
    root = f"bertviz-{_digest(data)}"
    params = {"attention": data, "default_filter": "all", "root_div_id": root,
              "bidirectional": True, "display_mode": display_mode, "layer": layer, "head": head}
    filters = "".join(f'<option value="{v}">{v}</option>' for v in data)
    page = (
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js">'
        f'</script><div id="{root}" style="padding:8px">Layer: <select id="layer"></select> '
        f'Head: <select id="att_head"></select> Attention: <select id="filter">{filters}</select>'
        f"<div id='vis'></div></div><script>window.bertviz_params = {json.dumps(params)}</script>"
        f"<script>{script}</script>")
    return HTML(page)


def _digest(data) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def head_view_html(probs, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                   sentence_b_start: int | None = None, layer: int = -1,
                   title: str = "bertjax head view", decimals: int = 4) -> str:
    """Our head view as an HTML fragment (a div and its scripts) for `IPython.display.HTML`.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's tokens (padding stripped with `attention_mask`).
      layer: the layer shown first (the page has a layer selector and head toggles).
      decimals: rounding of the embedded probabilities (keeps the page small).

    Returns:
      the HTML fragment; it needs no library and no network.
    """
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    data = {"tokens": tokens, "attn": _as_lists(probs, decimals),
            "layer": check_index("layer", layer, probs.shape[0]),
            "sentence_b_start": sentence_b_start}
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    with open(_TEMPLATE, encoding="utf-8") as f:
        template = f.read()
    root = f"bertjax-head-view-{_digest(data)}"
    return (template.replace("__ROOT__", root).replace("__TITLE__", html.escape(title))
            .replace("__DATA__", payload))


def save_head_view(path: str, probs, tokens: Sequence[str], **kwargs) -> str:
    """Writes the head view as one standalone HTML page (atomically); returns the path.

    Takes the arguments of `head_view_html`. The file opens offline in any browser.
    """
    body = head_view_html(probs, tokens, **kwargs)
    title = html.escape(kwargs.get("title", "bertjax head view"))
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
            f"</head>\n<body>\n{body}\n</body>\n</html>\n")
    atomic_write(os.path.abspath(path), page.encode("utf-8"), "head_view")
    return path
