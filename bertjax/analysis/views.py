"""Attention views: bertviz's inputs built from JAX/NumPy arrays, and a standalone head view page.

* `head_view_inputs` gives the keyword arguments of `bertviz.head_view` / `bertviz.model_view`
  (`attention`: a tuple over layers of [1, N, S, S], `tokens`, `sentence_b_start`). bertviz's
  `format_attention` calls `torch.stack`, so it needs torch tensors: `as_torch=True` converts them
  (torch is imported only then; bertviz itself depends on torch). NumPy arrays otherwise.
* `neuron_view_data` gives the per-layer `attn` / `queries` / `keys` dict that bertviz's
  `neuron_view.js` reads (what `bertviz.neuron_view.get_attention(..., include_queries_and_keys=True)`
  returns), for one sentence or pair; `bertviz_neuron_view` renders it with bertviz's own script.
* `head_view_html` / `save_head_view`, `model_view_html` / `save_model_view` and
  `neuron_view_html` / `save_neuron_view`: our own head view, model view (layers x heads grid) and
  neuron view (queries, keys, q x k, q.k and softmax of a hovered token), each one self-contained
  HTML file with the data as JSON and a small vanilla-JS/SVG renderer (`head_view.html`,
  `model_view.html`, `neuron_view.html` beside this module). No server and no network: bertviz's
  pages load require.js, d3 and jQuery from a CDN, which fails offline.

Every JSON a page embeds goes through `script_json` (markup-safe inside `<script>`, NaN and Inf
written as null under a visible warning). Index arguments (`layer`, `head`, `sentence_b_start`)
are unannotated on purpose: ints and NumPy ints are taken, anything else is a one-line ValueError
(`check_index`), not a type checker's error.

Axis letters: L layers, B batch, N heads, S query positions, T key positions, H head size.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import json
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np

from bertjax.analysis.tables import as_int, check_index, example_attention, real_positions
from bertjax.checkpoints.files import atomic_write
from bertjax.model import capture as C

_HERE = os.path.dirname(__file__)
# bertviz's names for the sentence filters of a pair
FILTERS = {"all": "All", "aa": "Sentence A -> Sentence A", "bb": "Sentence B -> Sentence B",
           "ab": "Sentence A -> Sentence B", "ba": "Sentence B -> Sentence A"}
# JSON in a <script> block: "<" could close it (`</script>`) or open a comment that swallows the
# closing tag (`<!--<script>`); "&" and ">" complete the HTML set, U+2028/9 end a line in older JS.
_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                   "\u2029": "\\u2029"}
_WARNING = ('<div class="bjx-warning" style="color:#a00;background:#fee;border:1px solid #a00;'
            'padding:4px 8px;margin:4px 0;font-family:sans-serif">Warning: {}</div>')


def script_json(data, **dumps) -> tuple[str, int]:
    """`data` as JSON that is safe inside any `<script>` block (every page of this module writes
    its data through here), and how many non-finite numbers (NaN, Inf) it held: they are written as
    null, as JSON has no NaN (`JSON.parse` would throw and leave a blank page)."""
    bad = 0
    try:
        text = json.dumps(data, allow_nan=False, **dumps)
    except ValueError:  # the rare case: walk the data once more, counting and replacing
        data, bad = _finite(data)
        text = json.dumps(data, allow_nan=False, **dumps)
    return re.sub("[<>&\u2028\u2029]", lambda m: _SCRIPT_ESCAPES[m.group()], text), bad


def _finite(x) -> tuple[object, int]:
    """x with each non-finite float replaced by None, and their count."""
    if isinstance(x, float):
        return (x, 0) if np.isfinite(x) else (None, 1)
    if isinstance(x, dict):
        pairs = [(k, _finite(v)) for k, v in x.items()]
        return {k: v for k, (v, _) in pairs}, sum(n for _, (_, n) in pairs)
    if isinstance(x, (list, tuple)):
        items = [_finite(v) for v in x]
        return [v for v, _ in items], sum(n for _, n in items)
    return x, 0


def _non_finite_warning(bad: int, kind: str) -> str:
    """Warns (RuntimeWarning, on stderr outside tests) and returns the page's visible warning."""
    if not bad:
        return ""
    text = (f"{bad} value(s) of this {kind} are not finite (NaN or Inf) and are shown as "
            f"missing: the model's weights or inputs hold NaN or Inf")
    warnings.warn(text, RuntimeWarning, stacklevel=4)
    return _WARNING.format(html.escape(text))


def _b_start(start, count: int) -> int | None:
    """sentence_b_start checked against the `count` tokens shown: None, or an int in [1, count)."""
    if start is None:
        return None
    if as_int(start) is None or not 1 <= as_int(start) < count:
        raise ValueError(f"sentence_b_start must be an int in [1, {count}) (the first token of "
                         f"sentence B among the {count} tokens shown) or None, got {start!r}")
    return as_int(start)


def _layer_names(layers, count: int) -> list[int]:
    """The layer numbers shown for the `count` layers of the data (None: 0 .. count - 1)."""
    if layers is None:
        return list(range(count))
    names = [as_int(i) for i in layers] if isinstance(layers, (tuple, list, np.ndarray)) else []
    if len(names) != count or not all(i is not None and i >= 0 for i in names):
        raise ValueError(f"layers must name the {count} layers of probs (the layer numbers of a "
                         f"layer-selected capture, in its order), got {layers!r}")
    return names


def sentence_b_start(token_type_ids, batch: int = 0) -> int | None:
    """The first position of sentence B (token type 1) in one example, or None for one sentence."""
    types = np.asarray(token_type_ids)
    types = types[batch] if types.ndim == 2 else types
    starts = np.flatnonzero(types == 1)
    return int(starts[0]) if starts.size else None


def head_view_inputs(probs, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                     sentence_b_start=None, as_torch: bool | None = None) -> dict:
    """Keyword arguments for `bertviz.head_view(**inputs)` and `bertviz.model_view(**inputs)`.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's tokens; padding is stripped when `attention_mask` is given.
      sentence_b_start: index of the first token of sentence B (see `sentence_b_start`).
      as_torch: torch tensors (what bertviz needs) or NumPy arrays; None (the default) gives
        torch tensors when torch is installed, so `bertviz.head_view(**inputs)` works as it is.

    Returns:
      {"attention": tuple over layers of float32 [1, N, S', S'], "tokens": S' tokens,
       "sentence_b_start": int or None}.
    """
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    layers = tuple(layer[None] for layer in probs)  # L x [1, N, S', S']
    if as_torch is None:
        as_torch = importlib.util.find_spec("torch") is not None
    if as_torch:
        import torch

        layers = tuple(torch.from_numpy(np.ascontiguousarray(layer)) for layer in layers)
    return {"attention": layers, "tokens": tokens, "sentence_b_start": sentence_b_start}


def _as_lists(x: np.ndarray, decimals: int) -> list:
    return np.round(np.asarray(x, np.float64), decimals).tolist()


def neuron_view_data(acts: dict, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                     sentence_b_start=None, decimals: int = 6) -> dict:
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
    start = sentence_b_start = _b_start(sentence_b_start, len(tokens))
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


def _layer_and_head(data: dict, layer: int | None, head: int | None) -> tuple[int, int]:
    """Non-negative (layer, head) of neuron view data (None: 0); negative indices from the end."""
    attn = data["all"]["attn"]  # [L][N][S][T]
    return (check_index("layer", 0 if layer is None else layer, len(attn)),
            check_index("head", 0 if head is None else head, len(attn[0])))


def _filter_options(data: dict) -> str:
    return "".join(f'<option value="{v}">{html.escape(FILTERS.get(v, v))}</option>' for v in data)


def bertviz_neuron_view(data: dict, layer=None, head=None,
                        display_mode: str = "dark"):
    """Renders `neuron_view_data` with bertviz's neuron_view.js (needs bertviz installed).

    Returns an `IPython.display.HTML`, as `bertviz.neuron_view.show(..., html_action="return")`,
    with its labels (coloured for `display_mode` by the script), sans-serif font and filter names;
    `layer` / `head` may be negative (from the end). Like bertviz's own pages it loads require.js,
    d3 and jQuery from a CDN when displayed; `neuron_view_html` is the offline alternative.
    """
    from IPython.display import HTML

    spec = importlib.util.find_spec("bertviz")
    if spec is None:
        raise ImportError("bertviz_neuron_view needs bertviz: pip install bertviz")
    with open(os.path.join(os.path.dirname(spec.origin), "neuron_view.js")) as f:
        script = f.read()
    layer, head = _layer_and_head(data, layer, head)
    root = f"bertviz-{_digest(data)}"
    params = {"attention": data, "default_filter": "all", "root_div_id": root,
              "bidirectional": True, "display_mode": display_mode, "layer": layer, "head": head}
    payload, bad = script_json(params)
    warning = _non_finite_warning(bad, "neuron view")
    filters = ('<span class="dropdown-label">Attention: </span>'
               f'<select id="filter">{_filter_options(data)}</select>') if len(data) > 1 else ""
    page = (
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js">'
        f'</script><div id="{root}" style="padding:8px;font-family:\'Helvetica Neue\', Helvetica, '
        'Arial, sans-serif;"><span style="user-select:none">'
        '<span class="dropdown-label">Layer: </span><select id="layer"></select> '
        '<span class="dropdown-label">Head: </span><select id="att_head"></select> '
        f"{filters}</span><div id='vis'></div></div>"
        f"<script>window.bertviz_params = {payload}</script><script>{script}</script>")
    return HTML(warning + page)


def _digest(data) -> str:
    return hashlib.sha1(script_json(data, sort_keys=True)[0].encode()).hexdigest()[:12]


def _read(name: str) -> str:
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


def _template(name: str) -> str:
    """The page template with the parts all three views share inlined (pages stay one file):
    __VIEWTOP__ (_view_top.html: the style, the root element and its toolbar up to the layer
    selector), __VIEWSCRIPT__ (_view_script.html: the data and the start of the page's script),
    and in those __VIEWCSS__ (_view_common.css) and __VIEWJS__ (_view_common.js)."""
    shared = {"VIEWTOP": _read("_view_top.html"), "VIEWSCRIPT": _read("_view_script.html"),
              "VIEWJS": _read("_view_common.js"), "VIEWCSS": _read("_view_common.css").strip()}
    shared = {k: v.rstrip("\n") for k, v in shared.items()}
    text = _read(name)
    for _ in range(2):  # the parts, then what they include
        text = re.sub(r"__(VIEWTOP|VIEWSCRIPT|VIEWJS|VIEWCSS)__", lambda m: shared[m.group(1)], text)
    return text


def _fill(template: str, values: dict[str, str]) -> str:
    """Replaces each __NAME__ of the template in one pass, so no value is ever substituted into."""
    text = _template(template)
    return re.sub(r"__([A-Z]+)__", lambda m: values.get(m.group(1), m.group(0)), text)


def _render(template: str, data: dict, title: str, kind: str) -> str:
    """The template with its root id, escaped title and the data as JSON (`script_json`), after a
    visible warning when the data held NaN or Inf."""
    payload, bad = script_json(data, separators=(",", ":"))
    warning = _non_finite_warning(bad, kind.replace("-", " "))
    return warning + _fill(template, {"ROOT": f"bertjax-{kind}-{_digest(data)}",
                                      "TITLE": html.escape(title), "KIND": kind, "DATA": payload})


def _save_page(path: str, body: str, title: str, kind: str) -> str:
    if os.path.isdir(path):  # refused before anything is written (no temporary file left)
        raise ValueError(f"{path} is a directory: give a file path for the page")
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body>\n</html>\n")
    atomic_write(os.path.abspath(path), page.encode("utf-8"), kind)
    return path


def head_view_html(probs, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                   sentence_b_start=None, layer=-1, head=None,
                   title: str = "bertjax head view", decimals: int = 4, layers=None) -> str:
    """Our head view as an HTML fragment (a div and its scripts) for `IPython.display.HTML`.

    Args:
      probs: `attn.probs`, float [L, B, N, S, T] (or [L, N, S, T]).
      tokens: the example's tokens (padding stripped with `attention_mask`).
      layer: the layer shown first (the page has a layer selector and head toggles).
      head: the only head shown first (the others one click away on their toggles); None shows all.
      decimals: rounding of the embedded probabilities (keeps the page small).
      layers: the model's layer numbers of probs' L axis, shown in the page: the selection of a
        layer-selected capture (`capture={"attn.probs": (3, 7)}` gives layers=(3, 7)); None: 0..L-1.
        `layer` indexes probs' L axis.

    Returns:
      the HTML fragment; it needs no library and no network.
    """
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    data = {"tokens": tokens, "attn": _as_lists(probs, decimals),
            "layer": check_index("layer", layer, probs.shape[0]),
            "head": None if head is None else check_index("head", head, probs.shape[1]),
            "sentence_b_start": _b_start(sentence_b_start, len(tokens)),
            "layer_names": _layer_names(layers, probs.shape[0])}
    return _render("head_view.html", data, title, "head-view")


def save_head_view(path: str, probs, tokens: Sequence[str], **kwargs) -> str:
    """Writes the head view as one standalone HTML page (atomically); returns the path.

    Takes the arguments of `head_view_html`. The file opens offline in any browser.
    """
    body = head_view_html(probs, tokens, **kwargs)
    return _save_page(path, body, kwargs.get("title", "bertjax head view"), "head_view")


def model_view_html(probs, tokens: Sequence[str], batch: int = 0, attention_mask=None,
                    sentence_b_start=None, layer=0, head=0,
                    title: str = "bertjax model view", decimals: int = 4, layers=None) -> str:
    """Our model view: every head of every layer as a small attention diagram (layers x heads),
    and the clicked one (first `layer`, `head`) drawn large with its tokens. Arguments as
    `head_view_html`; the fragment needs no library and no network."""
    probs, tokens = example_attention(probs, tokens, batch, attention_mask)
    data = {"tokens": tokens, "attn": _as_lists(probs, decimals),
            "layer": check_index("layer", layer, probs.shape[0]),
            "head": check_index("head", head, probs.shape[1]),
            "sentence_b_start": _b_start(sentence_b_start, len(tokens)),
            "layer_names": _layer_names(layers, probs.shape[0])}
    return _render("model_view.html", data, title, "model-view")


def save_model_view(path: str, probs, tokens: Sequence[str], **kwargs) -> str:
    """Writes the model view as one standalone HTML page (atomically); returns the path.
    Takes the arguments of `model_view_html`."""
    body = model_view_html(probs, tokens, **kwargs)
    return _save_page(path, body, kwargs.get("title", "bertjax model view"), "model_view")


def neuron_view_html(data: dict, layer=None, head=None,
                     title: str = "bertjax neuron view", layers=None) -> str:
    """Our neuron view of `neuron_view_data`: for the hovered (or clicked) query token, its query
    vector, every key vector, their elementwise product q x k, the dot product q.k and the softmax
    (the attention probabilities), with layer, head and (for a pair) sentence selectors.

    Args:
      data: `neuron_view_data(...)`.
      layer, head: shown first (None: 0; negative from the end).
      layers: the model's layer numbers of the data's layers (see `head_view_html`).

    Returns:
      the HTML fragment; it needs no library and no network.
    """
    layer, head = _layer_and_head(data, layer, head)
    page = {"views": data, "labels": {k: FILTERS.get(k, k) for k in data}, "layer": layer,
            "head": head, "layer_names": _layer_names(layers, len(data["all"]["attn"]))}
    return _render("neuron_view.html", page, title, "neuron-view")


def save_neuron_view(path: str, data: dict, **kwargs) -> str:
    """Writes the neuron view as one standalone HTML page (atomically); returns the path.
    Takes the arguments of `neuron_view_html`."""
    body = neuron_view_html(data, **kwargs)
    return _save_page(path, body, kwargs.get("title", "bertjax neuron view"), "neuron_view")
