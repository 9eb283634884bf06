"""The toolkit on every family (issue 23, item 4): one test per wing, parametrized over the tiny
offline models of conversion/make_tiny_checkpoint.py (`family_checkpoint`), sharing one loaded model
and one `capture="all"` run per family. Where a method cannot be exact for a family it refuses with
one line naming the family (QK circuits of MPNet, DeBERTa and ModernBERT, whose scores add
relative or rotary position terms; the full OV circuit of an E-wide decoder).

Compile time is most of these tests' cost (a fine-tuning step of a tiny model: seconds of XLA
optimisation passes for milliseconds of running), so they compile with XLA's optimisations off
(the suite's default, tests/conftest.py); every check is at a tolerance, or compares two runs of one
program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_script

import bertjax
from bertjax.analysis import attribution, circuits, interventions, pruning, tables, views
from bertjax.scale import sharding

FAMILIES = tiny_script().FAMILIES
TEXTS = ["the cat sat on the mat.", "a dog ran"]
# Metrics read one feature: the sum of a LayerNorm's output over its features is constant where its
# scale is uniform (a fresh model's), so its gradient would be zero up to rounding.
# Families whose attention scores are not W_Q W_K^T alone: the refusal of their QK circuits.
QK_REFUSALS = {
    "mpnet": "QK circuits of this mpnet model would leave out the relative position bias",
    "deberta-v2": r"the QK circuit W_Q W_K\^T omits DeBERTa's c2p and p2c position terms",
    "modernbert": r"the QK circuit W_Q W_K\^T is not position-free in ModernBERT: rotary"}



@pytest.fixture(scope="module")
def models(family_checkpoint):
    """family -> dict(config, params, tokenizer, ids, mask, out: a capture="all" run)."""
    cache = {}

    def get(family):
        if family not in cache:
            folder = family_checkpoint(family, "mlm")
            config, params = bertjax.load(folder)
            tokenizer = bertjax.tokenizer_for(folder)
            batch = tokenizer(TEXTS, padding=True, return_tensors="np")
            ids, mask = batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)
            out = bertjax.forward(params, ids, config, attention_mask=mask, capture="all")
            cache[family] = dict(config=config, params=params, tokenizer=tokenizer, ids=ids,
                                 mask=mask, out=out)
        return cache[family]

    return get


def _run(m, **kwargs):
    return bertjax.forward(m["params"], m["ids"], m["config"], attention_mask=m["mask"], **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_by_layer_and_reuse(family, models):
    m = models(family)
    L = m["config"].num_layers
    picked = _run(m, capture={"layer.out": [0, L - 1]}).acts["layer.out"]
    np.testing.assert_allclose(picked, m["out"].acts["layer.out"][np.array([0, L - 1])],
                               atol=1e-5)  # another program: float rounding only
    first = _run(m, capture=("attn.probs",))
    want = np.asarray(first.acts["attn.probs"])
    again = _run(m, capture=("attn.probs",), reuse=first)  # first's buffers donated
    np.testing.assert_array_equal(again.acts["attn.probs"], want)


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_patch_and_head_mask(family, models):
    m = models(family)
    config, base = m["config"], np.asarray(m["out"].last_hidden_state)
    same = _run(m, edit={"attn.out": (1.0, 0.0)}, patch={"layer.out": interventions.patch_from(
        m["out"].acts, "layer.out", layers=[0])}, head_mask=jnp.ones((config.num_layers,
                                                                      config.num_attention_heads)))
    np.testing.assert_allclose(same.last_hidden_state, base, atol=1e-5)
    for kwargs in ({"edit": {"attn.out": (0.0, 0.0)}},
                   {"head_mask": interventions.ablate_heads(config, [(0, 1)])}):
        assert np.abs(np.asarray(_run(m, **kwargs).last_hidden_state) - base).max() > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_site_grads(family, models):
    m = models(family)
    grads = bertjax.site_grads(m["params"], m["ids"], m["config"],
                               lambda o: o.last_hidden_state[:, 0, 0].sum(), ("layer.out",),
                               attention_mask=m["mask"])
    g = np.asarray(grads["layer.out"])
    assert g.shape == m["out"].acts["layer.out"].shape and np.isfinite(g).all()
    assert np.abs(g[-1]).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_table_and_view(family, models):
    m = models(family)
    probs, tokens = m["out"].acts["attn.probs"], tables.tokens_for(m["tokenizer"], m["ids"][0])
    table = tables.attention_table(probs, tokens, layer=-1, attention_mask=m["mask"][0])
    np.testing.assert_allclose(table.sum(axis=1), 1.0, atol=1e-5)
    assert table.index[0] == m["tokenizer"].cls_token
    html = views.head_view_html(probs, tokens, attention_mask=m["mask"][0])
    assert views.script_json(tokens, separators=(",", ":"))[0] in html  # embedded, markup-escaped


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_attribution_adds_up(family, models):
    m = models(family)
    position = int(np.flatnonzero(m["mask"][1])[-1]) - 1
    split = attribution.logit_attribution(m["params"], m["config"], m["ids"], position, token=7,
                                          batch=1, attention_mask=m["mask"])
    split.check()
    assert ("embed.token_type" in split.parts) == m["config"].has_token_types
    assert split.heads().shape == (m["config"].num_layers, m["config"].num_attention_heads)


@pytest.mark.parametrize("family", FAMILIES)
def test_circuits(family, models):
    m = models(family)
    config, params = m["config"], m["params"]
    L, N, D, H = config.num_layers, config.num_attention_heads, config.hidden_size, config.head_size
    ov = circuits.ov_circuit(params, config)
    assert ov.left.shape == (L, N, D, H)
    if family in QK_REFUSALS:
        for qk in (circuits.qk_circuit, circuits.composition_scores):
            with pytest.raises(ValueError, match=QK_REFUSALS[family]):
                qk(params, config)
    else:
        scores = circuits.composition_scores(params, config)
        assert scores["q"].shape == (L, N, L, N) and np.isfinite(scores["v"]).all()
    if config.embed_size != config.hidden_size:
        with pytest.raises(ValueError, match=f"this {family} model's decoder reads E=19-wide"):
            circuits.full_ov_circuit(params, config, 0, 0)
    else:
        full = circuits.full_ov_circuit(params, config, 0, 0)
        assert full.dense().shape == (config.vocab_size, config.vocab_size)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_head_importance(family, models):
    m = models(family)
    scores = pruning.head_importance(m["params"], m["config"],
                                     [{"input_ids": m["ids"], "attention_mask": m["mask"]}],
                                     lambda out, batch: out.last_hidden_state[:, 0, 0].sum())
    assert scores.shape == (m["config"].num_layers, m["config"].num_attention_heads)
    assert np.isfinite(scores).all() and (scores > 0).any()
    L, N = m["config"].num_layers, m["config"].num_attention_heads
    curve = pruning.prune_curve(m["params"], m["config"],
                                [{"input_ids": m["ids"], "attention_mask": m["mask"]}],
                                lambda out, batch: out.last_hidden_state[:, 0, 0].sum(),
                                importance=scores, step=N)
    assert curve.pruned.tolist() == list(range(0, L * N + 1, N)) and curve.order.shape == (L * N, 2)
    assert np.isfinite(curve.values).all() and abs(curve.values[0] - curve.values[-1]) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_forward_and_bf16(family, models):
    m = models(family)
    config, params = m["config"], m["params"]
    mesh = sharding.make_mesh()
    run = sharding.sharded_forward(mesh, params, config, capture=("layer.out",))
    out = run(sharding.shard_params(mesh, params, config), m["ids"], m["mask"], None)
    np.testing.assert_allclose(out.acts["layer.out"], m["out"].acts["layer.out"], atol=1e-5)
    half = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    low = _run({**m, "params": half}, capture=("mlm.logits",)).acts["mlm.logits"]
    assert low.dtype == jnp.bfloat16
    real = m["mask"].astype(bool)
    agree = (np.argmax(np.asarray(low, np.float32), -1) ==
             np.argmax(np.asarray(m["out"].acts["mlm.logits"]), -1))[real].mean()
    assert agree >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_every_task_then_export(family, family_checkpoint, tmp_path):
    """Two steps of `bertjax finetune` for each task, classification (the family's own sequence
    head added), tokens (its token head) and mlm (its MLM head); each model exports (`bertjax
    export`, the task read from finetune.json) to the family's ...For<Task> class with every key
    in place, the classifiers with bertjax's logits, and reads back bit for bit (less the MLM head
    a classifier's class has no place for)."""
    import torch
    import transformers

    from bertjax.commands.cli import main
    from bertjax.model.params import flatten
    from bertjax.training import datasets as D
    from bertjax.training import finetune as F

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "big", "small", "red"]
    texts = [{"text": " ".join(rng.choice(words, size=4)), "label": ("a", "b")[i % 2]}
             for i in range(16)]
    tokens = [{"tokens": list(rng.choice(words, size=3)), "labels": ["A", "B", "A"]}
              for _ in range(16)]
    data = {"classification": texts, "tokens": tokens, "mlm": texts}
    classes = {"classification": transformers.AutoModelForSequenceClassification,
               "tokens": transformers.AutoModelForTokenClassification,
               "mlm": transformers.AutoModelForMaskedLM}
    tokenizer = None
    for task, records in data.items():
        train = D.write_jsonl(tmp_path / f"{task}.jsonl", records)
        opts = F.Options(train=train, out=str(tmp_path / task), model=family_checkpoint(family),
                         task=task, epochs=1, batch_size=8, max_length=12, lr=1e-3)
        summary = F.finetune(opts, progress=False)
        assert summary["steps"] == 2 and np.isfinite(summary["history"]["loss"]).all(), task
        hf = tmp_path / f"hf-{task}"
        assert main(["export", summary["model"], str(hf)]) == 0
        model, info = classes[task].from_pretrained(hf, output_loading_info=True,
                                                     attn_implementation="eager")
        assert not info["missing_keys"] and not info["unexpected_keys"], (task, info)
        config, params = bertjax.load(summary["model"])
        a, b = flatten(params), flatten(bertjax.load(hf)[1])  # less what the class has no place for
        assert b.keys() <= a.keys() and all(np.array_equal(a[k], b[k]) for k in b), task
        assert {k.split("/")[0] for k in a.keys() - b.keys()} <= (
            set() if task == "mlm" else {"cls", "pooler"}), task
        if task == "mlm":
            continue
        tokenizer = tokenizer or transformers.AutoTokenizer.from_pretrained(hf)
        batch = tokenizer(TEXTS, padding=True, return_tensors="np")
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = bertjax.forward(params, ids, config, attention_mask=mask)
        if task == "tokens":
            want = bertjax.token_classifier_logits(params, out.last_hidden_state, config)
        else:
            pooled = (out.pooler_output if config.classifier_kind == "pooler"
                      else out.last_hidden_state)
            want = bertjax.classifier_logits(params, pooled, config, attention_mask=mask)
        with torch.no_grad():
            got = model.eval()(input_ids=torch.tensor(ids),
                               attention_mask=torch.tensor(mask)).logits
        np.testing.assert_allclose(got.numpy(), np.asarray(want), atol=1e-5, rtol=0,
                                   err_msg=task)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_extract(family, models, family_checkpoint, tmp_path):
    """`bertjax extract` stores each text's layer outputs as the forward computes them alone."""
    from bertjax.scale.extract import Options, extract
    from bertjax.scale.store import ActivationStore

    m = models(family)
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    extract(Options(str(corpus), str(tmp_path / "out"), model=family_checkpoint(family, "mlm"),
                    capture=("layer.out",), batch_size=2), progress=False)
    store = ActivationStore(tmp_path / "out")
    assert len(store) == 2 and store.complete
    for i in range(2):
        length = int(m["mask"][i].sum())
        np.testing.assert_array_equal(store.token_ids(i), m["ids"][i, :length])
        np.testing.assert_allclose(store[i]["layer.out"],
                                   m["out"].acts["layer.out"][:, i, :length], atol=1e-4)
