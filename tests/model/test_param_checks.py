"""The config must agree with the params tree: every shape it implies is checked (shapes only, so
under jit, vmap and grad too, per-layer or stacked), once per kind of tree; empty inputs, capture
of the wrong type and checked_forward's value checks."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, tiny_inputs

import bertjax
from bertjax.model import params as P


@pytest.fixture(scope="module")
def model():
    config = bertjax.BertConfig(**TINY)
    return config, bertjax.init_params(jax.random.key(0), config)


IDS = np.array([[2, 3, 4], [5, 6, 7]], np.int32)


def _with(config, **changes):
    return dataclasses.replace(config, **changes)


FIELD_CASES = {
    "vocab": (dict(vocab_size=200), r"params: embeddings/word_embeddings/embedding has shape "
                                    r"\(101, 15\), the config needs \(200, 15\) \(vocab_size=200\)"),
    "positions": (dict(max_position_embeddings=20),
                  r"embeddings/position_embeddings/embedding has shape \(13, 15\), the config needs "
                  r"\(20, 15\) \(max_position_embeddings=20\)"),
    "types": (dict(type_vocab_size=4), r"embeddings/token_type_embeddings/embedding has shape "
                                       r"\(3, 15\), the config needs \(4, 15\) \(type_vocab_size=4\)"),
    "hidden": (dict(hidden_size=18), r"params: embeddings/LayerNorm/bias has shape \(15,\), the "
                                     r"config needs \(18,\) \(hidden_size=18\)"),
    "intermediate": (dict(intermediate_size=40),
                     r"params: encoder/layer/0/intermediate/dense/bias has shape \(37,\), the "
                     r"config needs \(40,\) \(intermediate_size=40\)"),
    "more-layers": (dict(num_hidden_layers=5),
                    r"^params: the tree has 4 layers \(0, 1, 2, 3\), the config says num_hidden_layers=5 "
                    r"\(missing 16: encoder/layer/4 \(16 leaves\)\)$"),
    "fewer-layers": (dict(num_hidden_layers=3),
                     r"^params: the tree has 4 layers \(0, 1, 2, 3\), the config says "
                     r"num_hidden_layers=3 \(unexpected 16: encoder/layer/3 \(16 leaves\)\)$"),
}


@pytest.mark.parametrize("changes,match", FIELD_CASES.values(), ids=FIELD_CASES.keys())
def test_config_disagreeing_with_the_params(model, changes, match):
    config, params = model
    with pytest.raises(ValueError, match=match):
        bertjax.forward(params, IDS, _with(config, **changes))


def test_id_beyond_the_table_but_inside_a_larger_vocab_size(model):
    config, params = model  # id 150 < vocab_size 200 passes the range check; the table has 101 rows
    with pytest.raises(ValueError, match=r"\(vocab_size=200\)"):
        bertjax.forward(params, np.array([[150]], np.int32), _with(config, vocab_size=200))


def test_stacked_tree_with_the_wrong_number_of_layers(model):
    config, params = model
    with pytest.raises(ValueError, match=r"params: encoder/layer/attention/output/LayerNorm/bias has "
                                         r"shape \(4, 15\), the config needs \(5, 15\) "
                                         r"\(num_hidden_layers=5\)"):
        bertjax.forward(bertjax.stack_layers(params), IDS, _with(config, num_hidden_layers=5))


def _edited(params, path: str, value=None):
    """A copy of params with the subtree at "a/b/c" replaced by value, or deleted when it is None."""
    tree = jax.tree_util.tree_map(lambda x: x, params)
    *parents, last = path.split("/")
    node = tree
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return tree


TREE_CASES = {
    "deleted-layer": ("encoder/layer/2", None,
                      r"^params: the tree has 3 layers \(0, 1, 3\), the config says "
                      r"num_hidden_layers=4 \(missing 16: encoder/layer/2 \(16 leaves\)\)$"),
    "missing-leaf": ("encoder/layer/1/attention/self/key/bias", None,
                     r"params do not match the BERT parameter tree \(missing 1: "
                     r"encoder/layer/1/attention/self/key/bias\)$"),
    "non-float-leaf": ("pooler/dense/bias", jnp.zeros(15, jnp.int32),
                       r"params: pooler/dense/bias has dtype int32, expected a float dtype"),
}


@pytest.mark.parametrize("path,value,match", TREE_CASES.values(), ids=TREE_CASES.keys())
def test_an_edited_tree(model, path, value, match):
    config, params = model
    with pytest.raises(ValueError, match=match):
        bertjax.forward(_edited(params, path, value), IDS, config)


def test_checked_on_tracers_under_jit_vmap_and_grad(model):
    config, params = model
    bad = _with(config, intermediate_size=40)
    match = r"intermediate/dense/bias has shape \(37,\), the config needs \(40,\)"
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda p: bertjax.forward(p, IDS, bad).last_hidden_state)(params)
    with pytest.raises(ValueError, match=match):
        jax.vmap(lambda p: bertjax.forward(p, IDS, bad).last_hidden_state)(
            jax.tree_util.tree_map(lambda x: x[None], params))
    with pytest.raises(ValueError, match=match):
        jax.grad(lambda p: bertjax.forward(p, IDS, bad).last_hidden_state.sum())(params)


def test_the_check_runs_once_per_kind_of_tree(model, monkeypatch):
    config, params = model
    calls = []
    check = P._check_tree
    monkeypatch.setattr(P, "_check_tree", lambda *a: calls.append(a[2]) or check(*a))
    monkeypatch.setattr(P, "_CHECKED", set())
    for _ in range(3):
        bertjax.forward(params, IDS, config)
    assert calls.count("") == 1  # the whole tree, checked by forward
    bertjax.forward(jax.tree_util.tree_map(lambda x: x + 1, params), IDS, config)  # same shapes
    assert calls.count("") == 1


PART_CASES = {
    "embeddings": (lambda p, c: bertjax.embeddings(p["embeddings"], IDS, _with(c, vocab_size=99)),
                   r"embeddings/word_embeddings/embedding has shape \(101, 15\), the config needs "
                   r"\(99, 15\) \(vocab_size=99\)"),
    "encoder": (lambda p, c: bertjax.encoder(p, jnp.zeros((2, 3, 15)), _with(c, num_hidden_layers=2)),
                r"the tree has 4 layers \(0, 1, 2, 3\), the config says num_hidden_layers=2 "
                r"\(unexpected 32: encoder/layer/2 \(16 leaves\), encoder/layer/3 \(16 leaves\)\)"),
    "encoder-layer": (lambda p, c: bertjax.encoder_layer(p["encoder"]["layer"]["0"],
                                                         jnp.zeros((2, 3, 15)),
                                                         _with(c, intermediate_size=36)),
                      r"encoder/layer/0/intermediate/dense/bias has shape \(37,\), the config "
                      r"needs \(36,\) \(intermediate_size=36\)"),
    "attention-hidden": (lambda p, c: bertjax.attention(p["encoder"]["layer"]["0"]["attention"],
                                                        jnp.zeros((2, 3, 16)), c),
                         r"hidden must have shape \[B, S, D\] with D = hidden_size = 15, got shape "
                         r"\(2, 3, 16\)"),
    "pooler": (lambda p, c: bertjax.pooler(p, jnp.zeros((2, 3, 18)), _with(c, hidden_size=18)),
               r"pooler/dense/bias has shape \(15,\), the config needs \(18,\) "
               r"\(hidden_size=18\)"),
}


@pytest.mark.parametrize("call,match", PART_CASES.values(), ids=PART_CASES.keys())
def test_parts_check_their_subtree(model, call, match):
    config, params = model
    with pytest.raises(ValueError, match=match):
        call(params, config)


@pytest.mark.parametrize("shape,what", [((0, 3), "batch"), ((2, 0), "sequence")])
def test_empty_batch_or_sequence(model, shape, what):
    config, params = model
    with pytest.raises(ValueError, match=re.escape(f"input_ids has shape {shape}: an empty {what}")):
        bertjax.forward(params, np.zeros(shape, np.int32), config)


@pytest.mark.parametrize("capture,match", [
    (5, r"capture must be an activation name, a glob, 'all' or a collection of them, got int 5"),
    (b"attn.q", r"capture must be .* got bytes b'attn.q'"),
    ([1], r"capture entries must be strings, got 1"),
], ids=["int", "bytes", "list-of-int"])
def test_capture_of_the_wrong_type(model, capture, match):
    config, params = model
    with pytest.raises(ValueError, match=match):
        bertjax.forward(params, IDS, config, capture=capture)
    if not isinstance(capture, list):  # the parts refuse it too, before any annotated function
        hidden = np.zeros((2, 3, config.hidden_size), np.float32)
        with pytest.raises(ValueError, match=match):
            bertjax.embeddings(params, IDS, config, capture=capture)
        with pytest.raises(ValueError, match=match):
            bertjax.encoder(params, hidden, config, capture=capture)


def test_checked_forward_outside_jit_returns_the_error(model):
    config, params = model
    ids = IDS.copy()
    ids[1, 2] = 150
    err, out = bertjax.checked_forward(params, ids, config)  # no exception here
    assert out.last_hidden_state.shape == (2, 3, 15)
    with pytest.raises(Exception, match=r"input_ids must be in \[0, 101\) \(vocab_size=101\), got 150"):
        err.throw()
    err, _ = bertjax.checked_forward(params, IDS, config)
    err.throw()


@pytest.mark.parametrize("name,value,match", [
    ("attention_mask", 2, r"attention_mask must be 0 \(padding\) or 1 \(token\), got 2"),
    ("token_type_ids", 7, r"token_type_ids must be in \[0, 3\) \(type_vocab_size=3\), got 7"),
    ("position_ids", 13, r"position_ids must be in \[0, 13\) \(max_position_embeddings=13\), got 13"),
])
def test_checked_forward_value_checks_under_outer_jit(model, name, value, match):
    config, params = model
    ids, types, mask = tiny_inputs()
    good = dict(token_type_ids=types, attention_mask=mask, position_ids=np.arange(7)[None])

    @jax.jit
    def run(arrays):
        return bertjax.checked_forward(params, ids, config, **arrays)[0]

    run(good).throw()
    bad = dict(good)
    bad[name] = np.asarray(good[name]).copy()
    bad[name][0, 5] = value
    with pytest.raises(Exception, match=match):
        run(bad).throw()


def test_the_layer_count_mismatch_leads_with_its_cause_in_one_short_line(model):
    """The cause first, the missing leaves summarised by subtree, under 200 characters."""
    config, params = model
    with pytest.raises(ValueError) as e:
        bertjax.forward(params, IDS, _with(config, num_hidden_layers=5))
    assert str(e.value).startswith("params: the tree has 4 layers") and len(str(e.value)) < 200


def test_missing_leaves_are_summarised_by_subtree(model):
    config, params = model
    tree = _edited(params, "encoder/layer/1/attention/self/key")
    with pytest.raises(ValueError, match=r"^params do not match the BERT parameter tree \(missing 2: "
                                         r"encoder/layer/1/attention/self/key \(2 leaves\)\)$"):
        bertjax.forward(tree, IDS, config)


@pytest.mark.parametrize("part,given,match", [
    ("attention", "", r"^params: attention takes the subtree encoder/layer/<i>/attention, got a tree "
                      r"holding 'encoder': pass params\['encoder'\]\['layer'\]\[i\]\['attention'\] "
                      r"\(i: the layer, a string\)$"),
    ("attention", "encoder/layer/0", r"takes the subtree encoder/layer/<i>/attention, got a tree "
                                     r"holding 'attention': pass params\['attention'\]$"),
    ("encoder_layer", "", r"^params: encoder_layer takes the subtree encoder/layer/<i>, got a tree "
                          r"holding 'encoder': pass params\['encoder'\]\['layer'\]\[i\]"),
])
def test_a_part_given_a_larger_tree_says_which_subtree_it_takes(model, part, given, match):
    config, params = model
    tree = params
    for key in filter(None, given.split("/")):
        tree = tree[key]
    hidden = np.zeros((1, 3, config.hidden_size), np.float32)
    with pytest.raises(ValueError, match=match):
        getattr(bertjax, part)(tree, hidden, config)
