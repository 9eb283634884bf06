"""Issue 27, the analysis surfaces as a hostile user tries them: each case once gave a crash, a
script injection, a raw library error or a silently wrong answer, and must now give a one-line
refusal (or the right answer). One tiny model and its compiled programs serve every case.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax
from bertjax.analysis import circuits, interventions, pruning, views
from bertjax.model.params import Heads

CONFIG = bertjax.BertConfig(**TINY)
L, N, V, D = (TINY[k] for k in ("num_hidden_layers", "num_attention_heads", "vocab_size",
                                "hidden_size"))
S = 7
XSS = "</script><script>alert(1)</script>"
TOKENS = ["[CLS]", XSS, "<!--<script>", "a\u2028b\u2029", "&amp;", "]]>", "[SEP]"]


@pytest.fixture(scope="module")
def model():
    """(params with an MLM head, params without one, ids, clean run capturing what the cases read)."""
    params = bertjax.init_params(jax.random.key(0), CONFIG, Heads(mlm=True))
    bare = bertjax.init_params(jax.random.key(0), CONFIG, Heads(pooler=False))
    ids, _, _ = tiny_inputs()
    clean = bertjax.forward(params, ids, CONFIG, capture=("attn.probs", "attn.q", "attn.k",
                                                         "layer.out"))
    return params, bare, jnp.asarray(ids), clean


def _metric(out):
    return jnp.sum(out.last_hidden_state[:, 0, 0])


# --- 3, 15: what goes into a <script> block ------------------------------------------------------

def _probs(nan: bool = False) -> np.ndarray:
    rng = np.random.default_rng(0)
    probs = rng.random((L, 1, N, S, S)).astype(np.float32)
    probs /= probs.sum(-1, keepdims=True)
    if nan:
        probs[1, 0, 2, 3, 4] = np.nan
        probs[0, 0, 0, 0, 0] = np.inf
    return probs


def _neuron_data(nan: bool = False) -> dict:
    rng = np.random.default_rng(1)
    acts = {"attn.probs": _probs(nan), "attn.q": rng.normal(size=(L, 1, N, S, 5)),
            "attn.k": rng.normal(size=(L, 1, N, S, 5))}
    return views.neuron_view_data(acts, TOKENS, sentence_b_start=4)


PAGES = {
    "head_view": lambda nan=False: views.head_view_html(_probs(nan), TOKENS),
    "model_view": lambda nan=False: views.model_view_html(_probs(nan), TOKENS),
    "neuron_view": lambda nan=False: views.neuron_view_html(_neuron_data(nan)),
    "bertviz_neuron_view": lambda nan=False: views.bertviz_neuron_view(_neuron_data(nan)).data,
}


def _script_payloads(page: str) -> list[str]:
    """The JSON each page embeds in a script block."""
    found = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)
    found += re.findall(r"window.bertviz_params = (.*?)</script>", page, re.S)
    return found


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"invalid JSON constant {constant} in the page")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("view", PAGES)
def test_tokens_cannot_leave_the_script_block(view):
    page = PAGES[view]()
    assert "<script>alert" not in page and "<!--" not in page
    assert "\u2028" not in page and "\u2029" not in page
    assert page.count("</script") == page.count("<script")  # only the page's own blocks close
    (payload,) = _script_payloads(page)
    data = _strict(payload)
    tokens = data["tokens"] if "tokens" in data else (
        data["views"]["all"]["left_text"] if "views" in data else data["attention"]["all"]["left_text"])
    assert tokens == TOKENS  # escaped for HTML, the same strings for the script


@pytest.mark.parametrize("view", PAGES)
def test_nan_attention_gives_valid_json_and_a_visible_warning(view):
    with pytest.warns(RuntimeWarning, match=r"not finite \(NaN or Inf\)"):
        page = PAGES[view](nan=True)
    (payload,) = _script_payloads(page)
    _strict(payload)  # NaN / Infinity would make JSON.parse throw: a blank page
    assert 'class="bjx-warning"' in page and "NaN or Inf" in page


def test_inspect_html_with_nan_warns_on_stderr(tmp_path, capfd):
    from bertjax.commands.inspect import _write_html

    path = str(tmp_path / "view.html")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda m, c, f, n, file=None, line=None: print(
            warnings.formatwarning(m, c, f, n, line), end="", file=__import__("sys").stderr)
        _write_html(path, _probs(nan=True)[:, 0], TOKENS, np.zeros((1, S), int), 0, None)
    err = capfd.readouterr().err
    assert "not finite" in err
    page = open(path, encoding="utf-8").read()
    assert 'class="bjx-warning"' in page
    _strict(_script_payloads(page)[0])


@pytest.mark.parametrize("save", [views.save_head_view, views.save_model_view])
def test_view_onto_a_directory_leaves_nothing(tmp_path, save):
    target = tmp_path / "out.html"
    target.mkdir()
    with pytest.raises(ValueError, match=r"is a directory: give a file path for the page"):
        save(str(target), _probs(), TOKENS)
    assert sorted(os.listdir(tmp_path)) == ["out.html"] and not os.listdir(target)


@pytest.mark.parametrize("index", [np.int64(1), np.int32(-1)], ids=["int64", "int32"])
def test_view_indices_take_numpy_ints(index):
    page = views.head_view_html(_probs(), TOKENS, layer=index, head=index)
    data = _strict(_script_payloads(page)[0])
    assert data["layer"] == int(index) % L and data["head"] == int(index) % N


@pytest.mark.parametrize("index", [np.float64(1.0), 1.5, True], ids=["np.float64", "float", "bool"])
def test_view_indices_refuse_floats_and_bools(index):
    with pytest.raises(ValueError, match=r"layer must be an integer index"):
        views.model_view_html(_probs(), TOKENS, layer=index)


@pytest.mark.parametrize("start", [-1, 99, 0, 7, 1.5, True])
def test_neuron_view_data_sentence_b_start_out_of_range(start):
    rng = np.random.default_rng(1)
    acts = {"attn.probs": _probs(), "attn.q": rng.normal(size=(L, 1, N, S, 5)),
            "attn.k": rng.normal(size=(L, 1, N, S, 5))}
    with pytest.raises(ValueError, match=r"sentence_b_start must be an int in \[1, 7\)"):
        views.neuron_view_data(acts, TOKENS, sentence_b_start=start)


def test_views_label_the_selected_layers():
    page = views.head_view_html(_probs()[:2], TOKENS, layers=(3, 1))
    assert _strict(_script_payloads(page)[0])["layer_names"] == [3, 1]
    with pytest.raises(ValueError, match=r"layers must name the 2 layers of probs"):
        views.model_view_html(_probs()[:2], TOKENS, layers=(3,))


# --- 2, 16: reuse= --------------------------------------------------------------------------------

@pytest.mark.parametrize("first,then", [(True, False), (False, True)], ids=["host-to-device",
                                                                             "device-to-host"])
def test_reuse_across_offload_refused(model, first, then):
    params, _, ids, _ = model
    prev = bertjax.forward(params, ids, CONFIG, capture="attn.probs", offload=first)
    with pytest.raises(ValueError, match=r"reuse: acts\['attn.probs'\] is in .* memory, this "
                                         r"call writes it to .* memory"):
        bertjax.forward(params, ids, CONFIG, capture="attn.probs", offload=then, reuse=prev)
    assert not prev.acts["attn.probs"].is_deleted()  # refused before donating


def test_reuse_of_a_donated_output_refused(model):
    params, _, ids, _ = model
    prev = bertjax.forward(params, ids, CONFIG, capture="attn.probs")
    bertjax.forward(params, ids, CONFIG, capture="attn.probs", reuse=prev)
    with pytest.raises(ValueError, match=r"reuse: its buffers were already donated"):
        bertjax.forward(params, ids, CONFIG, capture="attn.probs", reuse=prev)


def test_reuse_of_a_patch_input_refused(model):
    params, _, ids, _ = model
    prev = bertjax.forward(params, ids, CONFIG, capture="layer.out")
    new = prev.acts["layer.out"]
    with pytest.raises(ValueError, match=r"reuse: acts\['layer.out'\] is also passed as an input"):
        bertjax.forward(params, ids, CONFIG, capture="layer.out", reuse=prev,
                        patch={"layer.out": (new, jnp.zeros(new.shape, bool))})
    assert not new.is_deleted()


# --- 14, 16: edit and patch operands --------------------------------------------------------------

@pytest.mark.parametrize("mul", [None, "x", 1j, np.ones((D,), np.complex64), [[1, "a"]]],
                         ids=["None", "str", "complex", "complex-array", "mixed-list"])
def test_edit_operands_must_be_real_numbers(model, mul):
    params, _, ids, _ = model
    with pytest.raises(ValueError, match=r"edit\['layer.out'\] mul must be a real number or "
                                         r"array"):
        bertjax.forward(params, ids, CONFIG, edit={"layer.out": (mul, 0.0)})


@pytest.mark.parametrize("value", [0.5, np.nan, 2.0, -1])
def test_patch_masks_must_be_boolean(model, value):
    params, _, ids, clean = model
    new = clean.acts["layer.out"]
    mask = np.zeros(new.shape, np.float32)
    mask[1, 0, 0] = value
    with pytest.raises(ValueError, match=r"patch\['layer.out'\] mask must be boolean \(or 0/1\)"):
        bertjax.forward(params, ids, CONFIG, patch={"layer.out": (new, mask)})


def test_patch_mask_of_zeros_and_ones_still_works(model):
    params, _, ids, clean = model
    new = clean.acts["layer.out"] + 1.0
    mask = np.zeros(new.shape, np.int32)
    mask[2] = 1
    out = bertjax.forward(params, ids, CONFIG, capture="layer.out",
                          patch={"layer.out": (new, mask)})
    np.testing.assert_array_equal(out.acts["layer.out"][2], new[2])


def test_head_mask_list_is_taken_as_an_array(model):
    params, _, ids, _ = model
    mask = [[1.0, 0.0, 1.0]] * L
    got = bertjax.forward(params, ids, CONFIG, head_mask=mask).last_hidden_state
    want = bertjax.forward(params, ids, CONFIG, head_mask=jnp.asarray(mask)).last_hidden_state
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"head_mask must be a float \[L, N\] array"):
        bertjax.forward(params, ids, CONFIG, head_mask=[["a"] * N] * L)


def test_edit_at_a_missing_head_refused(model):
    _, bare, ids, _ = model
    with pytest.raises(ValueError, match=r"cannot edit 'mlm.logits': this model has no MLM head"):
        bertjax.forward(bare, ids, CONFIG, edit={"mlm.logits": (0.0, 0.0)})
    with pytest.raises(ValueError, match=r"cannot edit 'pooler.out': this model has no pooler"):
        bertjax.forward(bare, ids, CONFIG, edit={"pooler.out": (0.0, 0.0)})


# --- 13: named axes -------------------------------------------------------------------------------

def test_named_axes_edit_is_per_head(model):
    params, _, ids, _ = model
    ids3 = ids[:, :N]  # S == N: a positional [N] operand would scale the keys T
    scale = jnp.asarray([0.5, 2.0, 3.0])
    got = bertjax.forward(params, ids3, CONFIG, capture="attn.probs",
                          edit={"attn.probs": ({"N": scale}, 0.0)}).acts["attn.probs"]
    want = bertjax.forward(params, ids3, CONFIG, capture="attn.probs",
                           edit={"attn.probs": (scale[:, None, None], 0.0)}).acts["attn.probs"]
    np.testing.assert_array_equal(got, want)
    both = bertjax.forward(params, ids3, CONFIG, capture="attn.probs",
                           edit={"attn.probs": ({"N L": jnp.ones((N, L))}, 0.0)})
    assert both.acts["attn.probs"].shape == (L, 2, N, N, N)


def test_ambiguous_positional_operand_warns(model):
    params, _, ids, _ = model
    with pytest.warns(UserWarning, match=r"edit\['attn.probs'\] mul of shape \(3,\) is aligned "
                                         r"to the trailing axes \[T\].*\{'N': mul\}"):
        bertjax.forward(params, ids[:, :N], CONFIG, edit={"attn.probs": (jnp.ones(N), 0.0)})


@pytest.mark.parametrize("operand,match", [
    ({"X": np.ones(3)}, r"unknown axis 'X'"),
    ({"N": np.ones(4)}, r"has shape \(4,\) for axes \[N\]"),
    ({"N": np.ones(3), "L": np.ones(4)}, r"one entry"),
    ({"N N": np.ones((3, 3))}, r"repeats an axis"),
])
def test_named_axes_refusals(model, operand, match):
    params, _, ids, _ = model
    with pytest.raises(ValueError, match=match):
        bertjax.forward(params, ids, CONFIG, edit={"attn.probs": (operand, 0.0)})


# --- 11: layer-selected captures ------------------------------------------------------------------

@pytest.fixture(scope="module")
def selected(model):
    params, _, ids, _ = model
    return bertjax.forward(params, ids, CONFIG, capture={"layer.out": (2,), "attn.probs": (2,)})


def test_patch_from_a_layer_selected_capture_refused(model, selected):
    params, _, ids, _ = model
    pair = interventions.patch_from(selected.acts, "layer.out")  # no config: cannot tell
    with pytest.raises(ValueError, match=r"patch\['layer.out'\] new has 1 layer but the model "
                                         r"has 4"):
        bertjax.forward(params, ids, CONFIG, patch={"layer.out": pair})
    with pytest.raises(ValueError, match=r"clean_acts\['layer.out'\] has 1 layers but the model "
                                         r"has 4: a layer-selected capture"):
        interventions.patch_from(selected.acts, "layer.out", config=CONFIG)


def test_patch_sweep_of_a_layer_selected_capture_refused(model, selected):
    params, _, ids, _ = model
    with pytest.raises(ValueError, match=r"clean_acts\['attn.probs'\] has 1 layers but the model "
                                         r"has 4"):
        interventions.patch_sweep(params, CONFIG, {"input_ids": ids}, selected.acts, "attn.probs",
                                  _metric)


def test_site_grads_honours_a_layer_selection(model):
    params, _, ids, _ = model
    some = bertjax.site_grads(params, ids, CONFIG, _metric, names={"layer.out": (1,)})
    every = bertjax.site_grads(params, ids, CONFIG, _metric, names="layer.out")
    assert some["layer.out"].shape == (1, 2, S, D)
    np.testing.assert_array_equal(some["layer.out"], every["layer.out"][1:2])


def test_site_grads_refuses_a_wrong_shaped_edit(model):
    params, _, ids, _ = model
    with pytest.raises(ValueError, match=r"edit\['layer.out'\] add has shape \(5,\), which does "
                                         r"not broadcast"):
        bertjax.site_grads(params, ids, CONFIG, _metric, names="layer.out",
                           edit={"layer.out": (1.0, jnp.zeros(5))})


# --- 14: index arguments of the builders ----------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(layers=1.7), r"layers must be ints, got 1.7"),
    (dict(heads=[0, 1.5]), r"heads must be ints, got 1.5"),
    (dict(layers=True), r"layers must be ints, got True"),
])
def test_patch_from_refuses_non_integer_indices(model, kwargs, match):
    _, _, _, clean = model
    with pytest.raises(ValueError, match=match):
        interventions.patch_from(clean.acts, "attn.probs", config=CONFIG, **kwargs)


@pytest.mark.parametrize("heads", [[(True, 0)], [(0, 1.0)], [(0,)]], ids=["bool", "float", "short"])
def test_ablate_heads_refuses_non_pairs_of_ints(heads):
    with pytest.raises(ValueError, match=r"heads must be \(layer, head\) pairs of ints"):
        interventions.ablate_heads(CONFIG, heads)


# --- 10: circuits ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda p: circuits.ov_circuit(p, CONFIG)[4, 0], r"circuit axis 0 \(size 4\): index 4 is out "
                                                      r"of range \[-4, 4\)"),
    (lambda p: circuits.qk_circuit(p, CONFIG)[0, -4], r"circuit axis 1 \(size 3\): index -4"),
    (lambda p: circuits.qk_circuit(p, CONFIG)[0, 1.0], r"circuit axis 1 \(size 3\): indices must "
                                                        r"be ints"),
    (lambda p: circuits.ov_circuit(p, CONFIG)[0, 0].rows([V]),
     r"rows: index 101 is out of range \[-15, 15\)"),
    (lambda p: circuits.full_ov_circuit(p, CONFIG, 4, 0), r"layer 4 is out of range"),
    (lambda p: circuits.full_ov_circuit(p, CONFIG, 0, 3), r"head 3 is out of range"),
    (lambda p: circuits.copying_scores(p, CONFIG, [1, V]), r"token_ids must be in \[0, 101\)"),
    (lambda p: circuits.copying_scores(p, CONFIG, [-1]), r"token_ids must be in \[0, 101\)"),
    (lambda p: circuits.copying_scores(p, CONFIG, [1], unembed=jnp.zeros((D, V - 1))),
     r"unembed must have shape \[D, V\]=\(15, 101\), got \(15, 100\)"),
    # (5 heads of 3 for 3 of 5 has the same kernel shapes: what no shape check can tell apart)
    (lambda p: circuits.qk_circuit(p, bertjax.BertConfig(**{**TINY, "intermediate_size": 36})),
     r"params: .* the config needs"),
    (lambda p: circuits.circuit_spectra(p, bertjax.BertConfig(**{**TINY, "num_hidden_layers": 3})),
     r"config says num_hidden_layers=3"),
], ids=["layer", "head", "float", "rows", "full-ov-layer", "full-ov-head", "copying",
        "copying-negative", "unembed", "sizes-config", "layers-config"])
def test_circuits_guard_indices_and_config(model, call, match):
    params, _, _, _ = model
    with pytest.raises(ValueError, match=match):
        call(params)


def test_circuit_negative_indices_count_from_the_end(model):
    params, _, _, _ = model
    ov = circuits.ov_circuit(params, CONFIG)
    np.testing.assert_array_equal(ov[-1, -1].left, ov[L - 1, N - 1].left)
    np.testing.assert_array_equal(ov[0, 0].rows([-1]), ov[0, 0].rows([D - 1]))


# --- 12, 16: pruning ------------------------------------------------------------------------------

def _accuracy(out, batch):  # argmax: its gradient is zero everywhere
    return jnp.mean((jnp.argmax(out.last_hidden_state, -1) == 0).astype(jnp.float32))


def test_prune_curve_with_a_zero_gradient_metric_refused(model):
    params, _, ids, _ = model
    with pytest.warns(RuntimeWarning, match=r"all zero"), pytest.raises(
            ValueError, match=r"importance= is all zero"):
        pruning.prune_curve(params, CONFIG, [{"input_ids": ids}], _accuracy)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_prune_curve_with_non_finite_importance_refused(model, bad):
    params, _, ids, _ = model
    importance = np.ones((L, N))
    importance[1, 1] = bad
    with pytest.raises(ValueError, match=r"importance= holds NaN or Inf"):
        pruning.prune_curve(params, CONFIG, [{"input_ids": ids}], _accuracy, importance=importance)


@pytest.mark.parametrize("step", [99, -99, 1.0])
def test_prune_curve_mask_step_out_of_range(step):
    curve = pruning.PruneCurve(pruned=np.arange(0, 13), share=np.arange(13) / 12,
                               values=np.zeros(13), order=np.zeros((12, 2), int),
                               importance=np.zeros((L, N)))
    with pytest.raises(ValueError, match=r"step must be an int in \[-13, 13\)"):
        curve.mask(step)


# --- 14: config values ----------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("layer_norm_eps", math.inf), ("layer_norm_eps", math.nan),
                                         ("initializer_range", math.inf)])
def test_config_refuses_non_finite_floats(field, value):
    with pytest.raises(ValueError, match=rf"BertConfig.{field} must be a finite number > 0"):
        bertjax.BertConfig.from_dict({**TINY, field: value})


def test_config_refuses_gaps_in_id2label():
    with pytest.raises(ValueError, match=r"id2label keys must be the ids 0..1 without gaps, got "
                                         r"\['0', '2'\]"):
        bertjax.BertConfig.from_dict({**TINY, "id2label": {"0": "a", "2": "b"}})


@pytest.mark.parametrize("mul,match", [(1j, r"must be a real number or array"),
                                       ({"D": np.ones(D)}, r"named-axes operands are placed by "
                                                           r"bertjax.forward")],
                         ids=["complex", "named"])
def test_parts_check_their_operands_too(model, mul, match):
    from bertjax.model.embeddings import embeddings

    params, _, ids, _ = model
    with pytest.raises(ValueError, match=rf"edit\['embed.out'\] mul(: | ){match}"):
        embeddings(params["embeddings"], ids, CONFIG, edit={"embed.out": (mul, 0.0)})


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="no node to run the pages' scripts")
@pytest.mark.parametrize("view", ["head_view", "model_view", "neuron_view"])
def test_page_scripts_run_with_missing_values(tmp_path, view):
    """The page's own script runs to the end on data with NaN (written as null), and the hostile
    tokens reach the drawing as plain text."""
    path = tmp_path / "page.html"
    with pytest.warns(RuntimeWarning, match=r"not finite"):
        path.write_text(PAGES[view](nan=True), encoding="utf-8")
    run = subprocess.run([NODE, os.path.join(os.path.dirname(__file__), "dom_stub.js"), str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    drawn = json.loads(run.stdout)
    assert XSS in drawn and "<!--<script>" in drawn
    if view == "neuron_view":
        assert "missing" in drawn  # the softmax column of the NaN entry


@pytest.mark.skipif(NODE is None, reason="no node to run the pages' scripts")
def test_model_view_shows_the_selected_layer_numbers(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(views.model_view_html(_probs()[:2], TOKENS, layers=(3, 1)), encoding="utf-8")
    run = subprocess.run([NODE, os.path.join(os.path.dirname(__file__), "dom_stub.js"), str(path)],
                         capture_output=True, text=True, timeout=60)
    drawn = json.loads(run.stdout)
    assert "layer 3" in drawn and "layer 1" in drawn and "layer 0" not in drawn


@pytest.mark.parametrize("index", [np.int64(2), jnp.int32(2), jnp.asarray(2)],
                         ids=["np.int64", "jnp.int32", "jax-scalar"])
def test_integer_scalars_are_indices_everywhere(model, index):
    """NumPy and JAX integer scalars are taken wherever a Python int is (views, builders, curve)."""
    _, _, _, clean = model
    page = views.model_view_html(_probs(), TOKENS, layer=index, head=index, sentence_b_start=index,
                                 layers=[index, 0, 1, 3])
    data = _strict(_script_payloads(page)[0])
    assert (data["layer"], data["head"], data["sentence_b_start"]) == (2, 2, 2)
    assert data["layer_names"] == [2, 0, 1, 3]
    _, mask = interventions.patch_from(clean.acts, "attn.probs", layers=index, heads=[index],
                                       config=CONFIG)
    assert np.asarray(mask)[2, :, 2].all() and not np.asarray(mask)[1].any()
    assert interventions.ablate_heads(CONFIG, [(index, index)])[2, 2] == 0
    curve = pruning.PruneCurve(pruned=np.arange(0, 13), share=np.arange(13) / 12,
                               values=np.zeros(13), order=np.stack([np.arange(12) // 3,
                                                                    np.arange(12) % 3], 1),
                               importance=np.zeros((L, N)))
    assert curve.mask(index).sum() == L * N - 2
