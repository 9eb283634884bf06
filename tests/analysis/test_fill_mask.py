"""`fill_mask` and `bertjax fill-mask` against transformers' own fill-mask pipeline, on tiny
BertForMaskedLM checkpoints (tied and untied decoder) saved with a tiny WordPiece tokenizer."""

from __future__ import annotations

import re

import numpy as np
import pytest
import transformers
from conftest import TINY, make_checkpoint

from bertjax.analysis.fill_mask import fill_mask
from bertjax.checkpoints.pretrained import load_pretrained
from bertjax.commands.cli import main

V = TINY["vocab_size"]
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran", ".", "##s", "##ing"]
TEXTS = ["the cat [MASK] on the mat .", "[MASK] dog ran", "the [MASK] sat on the [MASK] .",
         "[MASK] [MASK] a [MASK]"]


def write_tokenizer(folder) -> None:
    """A WordPiece vocab of V=101 tokens (5 special, a few words, filler) and its BertTokenizer."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    vocab += [f"w{i}" for i in range(V - len(vocab))]
    path = folder / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizer(vocab=str(path)).save_pretrained(folder)


@pytest.fixture(scope="module", params=["tied", "untied"])
def mlm_folder(request, tmp_path_factory) -> str:
    """A tiny BertForMaskedLM with a tokenizer; init std 0.3 (not 0.02) so the predictions are
    not all near 1/V."""
    folder = tmp_path_factory.mktemp(f"mlm_{request.param}")
    make_checkpoint(folder, "BertForMaskedLM", initializer_range=0.3,
                    tie_word_embeddings=request.param == "tied")
    write_tokenizer(folder)
    return str(folder)


@pytest.fixture(scope="module")
def model(mlm_folder):
    return load_pretrained(mlm_folder)


@pytest.fixture(scope="module")
def reference(mlm_folder):
    pipe = transformers.pipeline("fill-mask", model=mlm_folder, device="cpu")

    def run(text, top_k):  # always one list per mask
        out = pipe(text, top_k=top_k)
        return out if isinstance(out[0], list) else [out]

    return run


def test_tied_and_untied_checkpoints_load_as_such(model, mlm_folder):
    decoder = model.params["cls"]["predictions"].get("decoder")
    untied = transformers.BertConfig.from_pretrained(mlm_folder).tie_word_embeddings is False
    assert (decoder is not None) == untied


@pytest.mark.parametrize("text", TEXTS)
def test_matches_the_transformers_pipeline(model, reference, text):
    got = fill_mask(model.params, model.config, model.tokenizer, text, top_k=5)
    want = reference(text, 5)
    ids = model.tokenizer(text)["input_ids"]
    assert len(got) == len(want) == text.count("[MASK]")
    assert [r[0]["position"] for r in got] == [i for i, t in enumerate(ids) if t == 4]
    for mask, (g, w) in enumerate(zip(got, want)):
        assert [p["id"] for p in g] == [p["token"] for p in w], f"mask {mask}"
        np.testing.assert_allclose([p["score"] for p in g], [p["score"] for p in w], atol=1e-5)
        assert [p["token"] for p in g] == model.tokenizer.convert_ids_to_tokens([p["id"] for p in g])
        for p, w_p in zip(g, w):
            filled = list(ids)
            filled[p["position"]] = p["id"]
            assert p["sequence"] == model.tokenizer.decode(filled[1:-1])  # prediction always shown
            ref = w_p["sequence"]
            if len(want) > 1:  # the pipeline keeps [CLS] and [SEP] for several masks
                if not (ref.startswith("[CLS] ") and ref.endswith(" [SEP]")):
                    continue  # its decode glued a "##" piece to [CLS]: "[CLS]ing ..."
                ref = ref[6:-6]
            if p["id"] not in model.tokenizer.all_special_ids:  # the pipeline drops them
                assert p["sequence"] == ref
    assert got[0][0]["score"] > got[0][-1]["score"] + 1e-3  # not a flat distribution


def test_whole_vocabulary_matches_a_torch_softmax(model, mlm_folder):
    import torch

    text = TEXTS[2]
    got = fill_mask(model.params, model.config, model.tokenizer, text, top_k=V)
    torch_model = transformers.BertForMaskedLM.from_pretrained(mlm_folder,
                                                               attn_implementation="eager").eval()
    ids = torch.tensor([model.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(torch_model(ids).logits[0], dim=-1).numpy()  # [S, V]
    for result in got:
        position = result[0]["position"]
        scores = np.zeros(V)
        scores[[p["id"] for p in result]] = [p["score"] for p in result]
        np.testing.assert_allclose(scores, probs[position], atol=1e-5)
        assert sorted(p["id"] for p in result) == list(range(V))
        assert np.all(np.diff([p["score"] for p in result]) <= 0)  # most probable first


def test_errors(model, checkpoint_factory):
    p, c, tok = model.params, model.config, model.tokenizer
    with pytest.raises(ValueError, match=r"the text has no \[MASK\] token to fill: 'the cat sat'"):
        fill_mask(p, c, tok, "the cat sat")
    for k in (0, V + 1):
        with pytest.raises(ValueError, match=rf"top_k must be in \[1, vocab_size=101\], got {k}"):
            fill_mask(p, c, tok, TEXTS[0], top_k=k)
    with pytest.raises(ValueError, match="fill_mask needs a tokenizer: this model's folder has no"):
        fill_mask(p, c, None, TEXTS[0])
    bare = load_pretrained(checkpoint_factory("BertModel"))
    with pytest.raises(ValueError, match=r"this model has no MLM head \(no cls/predictions"):
        fill_mask(bare.params, bare.config, tok, TEXTS[0])


def test_cli(model, mlm_folder, capsys):
    assert main(["fill-mask", TEXTS[2], "--model", mlm_folder, "--top-k", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    want = fill_mask(model.params, model.config, model.tokenizer, TEXTS[2], top_k=3)
    assert out[0] == f"model: {mlm_folder}"
    assert out[1] == "[MASK] 1 of 2 (token position 2):" and out[5].startswith("[MASK] 2 of 2")
    for line, p in zip(out[2:5] + out[6:9], want[0] + want[1]):
        token, score, sequence = re.fullmatch(r"\s+\d\. (\S+)\s+(\d\.\d{4})  (.*)",
                                              line).groups()
        assert (token, sequence) == (p["token"], p["sequence"])
        assert float(score) == pytest.approx(p["score"], abs=5e-5)
    assert len(out) == 9


@pytest.mark.parametrize("argv,message", [
    (["the cat sat"], r"the text has no \[MASK\] token to fill"),
    (["[MASK] sat", "--top-k", "0"], r"--top-k must be in \[1, 101\] \(the vocabulary size\), got 0"),
    (["[MASK] sat", "-k", "102"], r"--top-k must be in \[1, 101\] \(the vocabulary size\), got 102"),
])
def test_cli_errors_are_one_line(mlm_folder, capsys, argv, message):
    assert main(["fill-mask", "--model", mlm_folder] + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bertjax: error: ") and re.search(message, err) and err.count("\n") == 1
    assert "top_k" not in err and "=" not in err  # CLI wording, not the Python API's


def test_cli_default_model_has_no_mlm_head(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path))
    assert main(["fill-mask", "the cat [MASK] on the mat."]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("bertjax: error: sentence-transformers/all-MiniLM-L6-v2 has no "
                                   "MLM head (no cls/predictions in its weights): fill-mask needs")


def test_cli_refuses_a_model_without_mlm_head_before_converting(checkpoint_factory, tmp_path,
                                                                 monkeypatch, capsys):
    """From the parameter names: the default model is not converted into the cache, and neither
    a Hugging Face folder nor a converted one is read or compiled."""
    from bertjax.checkpoints import checkpoint

    bare = checkpoint_factory("BertModel")
    converted = str(tmp_path / "bare-jax")
    checkpoint.convert_checkpoint(bare, converted)
    capsys.readouterr()  # what building the checkpoint printed

    def refuse(*args, **kwargs):
        raise AssertionError("read or converted a model that fill-mask must refuse")

    monkeypatch.setattr(checkpoint, "read_checkpoint", refuse)
    monkeypatch.setenv("BERTJAX_CACHE", str(tmp_path / "cache"))
    for model in ([], ["--model", bare], ["--model", converted]):
        assert main(["fill-mask", "the [MASK] sat"] + model) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(r"bertjax: error: \S+ has no MLM head \(no cls/predictions in its "
                            r"weights\): fill-mask needs .*\n", err), err
    assert not (tmp_path / "cache").exists()
