"""PyTorch state dict -> parameter tree: bit-exact for every head and dialect, and every refusal.

The expected trees are derived from the torch tensors by the contract's naming rule, written out
here (`expected_tree`) independently of `bertjax.checkpoints.convert.key_table`. Checkpoints have every
parameter random (biases and LayerNorm included), so no wrong source tensor can pass for the right
one, and the tied decoder's two biases differ when the decoder is untied.
"""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from conftest import TINY
from safetensors.torch import load_file, save_file

from bertjax.checkpoints.checkpoint import read_checkpoint
from bertjax.checkpoints.convert import key_table, state_dict_to_params
from bertjax.checkpoints.readers import CheckpointError
from bertjax.model.config import BertConfig
from bertjax.model.params import Heads, flatten, param_shapes

DTYPES = {"float32": (np.float32, torch.float32), "bfloat16": (ml_dtypes.bfloat16, torch.bfloat16),
          "float16": (np.float16, torch.float16)}


def random_checkpoint(folder, model_class: str, safe: bool = True, seed: int = 0,
                      **overrides) -> str:
    """A tiny transformers checkpoint (save_pretrained) with every parameter drawn at random."""
    extra = {"add_pooling_layer": overrides.pop("add_pooling_layer")} \
        if "add_pooling_layer" in overrides else {}
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(transformers.BertConfig(**{**TINY, **overrides}),
                                               **extra)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters are listed once and stay tied
            p.normal_()
    model.save_pretrained(folder)
    if not safe:  # the pickled .bin of older transformers: every key, tied ones included
        os.remove(os.path.join(folder, "model.safetensors"))
        torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    return str(folder)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    """make(model_class, safe=True, **config) -> folder, cached per arguments."""
    cache = {}

    def make(model_class, safe=True, **overrides):
        key = (model_class, safe, tuple(sorted(overrides.items())))
        if key not in cache:
            cache[key] = random_checkpoint(tmp_path_factory.mktemp(model_class), model_class,
                                           safe, **overrides)
        return cache[key]

    return make


def torch_state(folder: str) -> dict[str, torch.Tensor]:
    """The folder's tensors read by torch / safetensors.torch (not by bertjax)."""
    safe = os.path.join(folder, "model.safetensors")
    if os.path.exists(safe):
        return load_file(safe)
    return torch.load(os.path.join(folder, "pytorch_model.bin"), weights_only=True)


def _leaf(module: str, leaf: str) -> str:
    if module == "LayerNorm":
        return {"weight": "scale", "gamma": "scale", "bias": "bias", "beta": "bias"}[leaf]
    if module.endswith("_embeddings"):
        return "embedding"
    return "kernel" if leaf == "weight" else leaf


def expected_tree(state: dict[str, torch.Tensor], untied: bool) -> dict[str, torch.Tensor]:
    """Tree path -> torch tensor by the contract: `bert.` dropped, Dense weights transposed, the NSP
    head and buffers dropped, the decoder weight kept only untied, and the MLM bias the one
    transformers' forward adds (the decoder Linear's, when the file has it)."""
    want = {}
    for key, t in state.items():
        key = key.removeprefix("bert.")
        if (key.startswith("cls.seq_relationship.") or key.endswith("_ids")
                or key == "cls.predictions.decoder.bias"
                or (key == "cls.predictions.decoder.weight" and not untied)):
            continue
        *modules, leaf = key.split(".")
        name = _leaf(modules[-1], leaf)
        want["/".join(modules + [name])] = t.T if name == "kernel" else t
    if "cls.predictions.decoder.bias" in state:
        want["cls/predictions/bias"] = state["cls.predictions.decoder.bias"]
    return want


def bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def torch_bits(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """The bits of torch's own (correctly rounded) cast."""
    t = t.to(dtype).contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if dtype == torch.bfloat16 else bits(t.numpy())


def assert_bit_exact(params: dict, state: dict[str, torch.Tensor], untied: bool,
                     dtype: str = "float32") -> None:
    np_dtype, torch_dtype = DTYPES[dtype]
    got, want = flatten(params), expected_tree(state, untied)
    assert sorted(got) == sorted(want)
    for path, t in want.items():
        assert got[path].dtype == np_dtype, path
        assert got[path].shape == tuple(t.shape), path
        np.testing.assert_array_equal(bits(got[path]), torch_bits(t, torch_dtype), err_msg=path)


CASES = [  # (model class, overrides, heads, note)
    ("BertModel", {}, Heads(pooler=True), None),
    ("BertModel", {"add_pooling_layer": False}, Heads(pooler=False), None),
    ("BertForMaskedLM", {}, Heads(pooler=False, mlm=True), None),
    ("BertForMaskedLM", {"tie_word_embeddings": False},
     Heads(pooler=False, mlm=True, untied_decoder=True), None),
    ("BertForPreTraining", {}, Heads(pooler=True, mlm=True), "next-sentence-prediction"),
    ("BertForSequenceClassification", {"num_labels": 4}, Heads(pooler=True, classifier=True), None),
]


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("model_class,overrides,heads,note", CASES,
                         ids=["model", "model-no-pooler", "mlm-tied", "mlm-untied", "pretraining",
                              "classifier"])
def test_fp32_conversion_is_bit_exact(random_dir, model_class, overrides, heads, note, safe):
    folder = random_dir(model_class, safe, **overrides)
    loaded = read_checkpoint(folder)
    assert loaded.heads == heads
    assert_bit_exact(loaded.params, torch_state(folder), heads.untied_decoder)
    assert loaded.notes == ([f"dropped the {note} head (cls.seq_relationship)"] if note else [])
    assert loaded.config.tie_word_embeddings == (not heads.untied_decoder)


def test_classifier_is_kept_at_its_contract_path(random_dir):
    folder = random_dir("BertForSequenceClassification", num_labels=4)
    params = read_checkpoint(folder).params
    state = torch_state(folder)
    np.testing.assert_array_equal(params["classifier"]["kernel"], state["classifier.weight"].T.numpy())
    np.testing.assert_array_equal(params["classifier"]["bias"], state["classifier.bias"].numpy())
    assert params["classifier"]["kernel"].shape == (TINY["hidden_size"], 4)


def test_untied_decoder_uses_the_bias_transformers_adds(random_dir):
    """transformers 5 keeps the untied decoder's own bias; its forward adds that one."""
    folder = random_dir("BertForMaskedLM", tie_word_embeddings=False)
    state = torch_state(folder)
    assert not torch.equal(state["cls.predictions.bias"], state["cls.predictions.decoder.bias"])
    predictions = read_checkpoint(folder).params["cls"]["predictions"]
    np.testing.assert_array_equal(predictions["bias"], state["cls.predictions.decoder.bias"].numpy())
    np.testing.assert_array_equal(predictions["decoder"]["kernel"],
                                  state["cls.predictions.decoder.weight"].T.numpy())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_is_the_correctly_rounded_cast(random_dir, dtype):
    folder = random_dir("BertForPreTraining")
    loaded = read_checkpoint(folder, dtype=dtype)
    assert_bit_exact(loaded.params, torch_state(folder), untied=False, dtype=dtype)


def test_minilm_is_bit_exact(minilm_dir):
    loaded = read_checkpoint(minilm_dir)
    assert loaded.heads == Heads(pooler=True) and loaded.notes == []
    assert_bit_exact(loaded.params, load_file(os.path.join(minilm_dir, "model.safetensors")),
                     untied=False)


def legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Google-ported naming of the original BERT checkpoints: LayerNorm gamma/beta, a
    position_ids buffer, the decoder weight stored, no decoder bias."""
    out = {}
    for key, t in state.items():
        if ".LayerNorm." in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        out[key] = t
    out["bert.embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    out.pop("cls.predictions.decoder.bias")
    return out


def test_legacy_google_naming(random_dir, tmp_path):
    folder = random_dir("BertForPreTraining", safe=False)
    state = torch_state(folder)
    old = legacy(state)
    assert "bert.embeddings.LayerNorm.gamma" in old and "cls.seq_relationship.weight" in old
    shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    torch.save(old, tmp_path / "pytorch_model.bin")
    loaded = read_checkpoint(str(tmp_path))
    assert loaded.heads == Heads(pooler=True, mlm=True)
    assert_bit_exact(loaded.params, state, untied=False)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_sharded_checkpoint(random_dir, tmp_path, safe):
    folder = random_dir("BertForMaskedLM")
    state = torch_state(folder)
    model = transformers.BertForMaskedLM.from_pretrained(folder)
    if safe:
        model.save_pretrained(tmp_path, max_shard_size="20KB")
        assert os.path.exists(tmp_path / "model.safetensors.index.json")
    else:  # by hand, as older transformers wrote it
        names = sorted(state)
        shards = {"pytorch_model-00001-of-00002.bin": names[::2],
                  "pytorch_model-00002-of-00002.bin": names[1::2]}
        for shard, keys in shards.items():
            torch.save({k: state[k] for k in keys}, tmp_path / shard)
        weight_map = {k: shard for shard, keys in shards.items() for k in keys}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
        shutil.copy(os.path.join(folder, "config.json"), tmp_path / "config.json")
    shards = [f for f in os.listdir(tmp_path) if "-of-" in f]
    assert len(shards) >= 2
    assert_bit_exact(read_checkpoint(str(tmp_path)).params, state, untied=False)


def _tiny_config(**overrides) -> BertConfig:
    return BertConfig(**{**TINY, **overrides})


def test_a_stored_decoder_that_differs_stays_untied(random_dir):
    """As transformers 5: a tied config, but the file's decoder weight and bias are their own."""
    state = {k: v.numpy() for k, v in torch_state(random_dir("BertForMaskedLM", safe=False)).items()}
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    state["cls.predictions.decoder.bias"] = state["cls.predictions.decoder.bias"] + 1
    params, heads, notes = state_dict_to_params(state, _tiny_config())
    assert heads.untied_decoder
    assert len(notes) == 2
    assert "cls.predictions.bias differs from cls.predictions.decoder.bias" in notes[0]
    assert "decoder.weight differs from the word embeddings although the config ties them" in notes[1]
    np.testing.assert_array_equal(params["cls"]["predictions"]["decoder"]["kernel"],
                                  state["cls.predictions.decoder.weight"].T)
    np.testing.assert_array_equal(params["cls"]["predictions"]["bias"],
                                  state["cls.predictions.decoder.bias"])


def test_tied_decoder_equal_to_embeddings_is_dropped(random_dir):
    state = {k: v.numpy() for k, v in torch_state(random_dir("BertForMaskedLM", safe=False)).items()}
    assert "cls.predictions.decoder.weight" in state
    params, heads, notes = state_dict_to_params(state, _tiny_config())
    assert not heads.untied_decoder and notes == []
    assert "decoder" not in params["cls"]["predictions"]


@pytest.fixture(scope="module")
def tiny_state(random_dir) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in torch_state(random_dir("BertModel")).items()}


def test_key_table_covers_the_tree():
    config = _tiny_config(num_labels=5)
    heads = Heads(pooler=True, mlm=True, untied_decoder=True, classifier=True)
    table = key_table(config, heads)
    assert [path for _, path, _ in table] == list(flatten(param_shapes(config, heads)))
    rows = {path: (key, t) for key, path, t in table}
    assert rows["encoder/layer/1/attention/self/query/kernel"] == (
        "encoder.layer.1.attention.self.query.weight", True)
    assert rows["embeddings/LayerNorm/scale"] == ("embeddings.LayerNorm.weight", False)
    assert rows["embeddings/word_embeddings/embedding"] == ("embeddings.word_embeddings.weight", False)
    assert rows["cls/predictions/decoder/kernel"] == ("cls.predictions.decoder.weight", True)
    assert rows["classifier/kernel"] == ("classifier.weight", True)


def test_gpt2_state_dict_is_not_bert():
    gpt2 = transformers.GPT2Model(transformers.GPT2Config(n_embd=8, n_layer=1, n_head=2,
                                                          vocab_size=11, n_positions=5))
    state = {k: v.numpy() for k, v in gpt2.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"not a BERT checkpoint: no 'embeddings\.word_"
                                              r"embeddings\.weight' \(bert\. prefix optional\); "
                                              r"its keys look like: h\.0\.attn"):
        state_dict_to_params(state, _tiny_config())
    with pytest.raises(CheckpointError, match=r"its keys look like: \(no tensors at all\)"):
        state_dict_to_params({}, _tiny_config())


def test_missing_and_unexpected_keys_are_listed_by_name(tiny_state):
    state = dict(tiny_state)
    state.pop("encoder.layer.1.output.dense.bias")
    state["encoder.layer.0.attention.self.rotary.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"does not match a BERT with this config \(missing 1: "
                                              r"encoder\.layer\.1\.output\.dense\.bias; unexpected "
                                              r"1: encoder\.layer\.0\.attention\.self\.rotary\."
                                              r"weight\)"):
        state_dict_to_params(state, _tiny_config())


def test_fewer_layers_in_the_config_are_named_before_any_table(tiny_state):
    with pytest.raises(CheckpointError, match=r"the config says num_hidden_layers=1 but the weights "
                                              r"hold 4 layers \(0\.\.3\); fix num_hidden_layers"):
        state_dict_to_params(tiny_state, _tiny_config(num_hidden_layers=1))


def test_shape_mismatch_names_the_tensor(tiny_state):
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.0\.intermediate\.dense\.bias has "
                                              r"shape \(37,\), the config needs \(40,\)"):
        state_dict_to_params(tiny_state, _tiny_config(intermediate_size=40))


def test_transposed_dense_weight_is_a_shape_mismatch(tiny_state):
    """A Dense weight stored as [in, out] (already transposed) is caught by its shape."""
    key = "encoder.layer.1.output.dense.weight"
    state = {**tiny_state, key: np.ascontiguousarray(tiny_state[key].T)}
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.output\.dense\.weight has shape "
                                              r"\(37, 15\), the config needs \(15, 37\)"):
        state_dict_to_params(state, _tiny_config())


def test_integer_weights_are_refused(tiny_state):
    state = {**tiny_state, "pooler.dense.bias": np.zeros(15, np.int32)}
    with pytest.raises(CheckpointError, match=r"pooler\.dense\.bias has dtype int32, expected "
                                              r"floating point"):
        state_dict_to_params(state, _tiny_config())


def test_duplicate_names_after_normalising(tiny_state):
    state = {**tiny_state, "bert.pooler.dense.bias": tiny_state["pooler.dense.bias"]}
    with pytest.raises(CheckpointError, match=r"checkpoint has both 'pooler\.dense\.bias' and "
                                              r"'bert\.pooler\.dense\.bias'"):
        state_dict_to_params(state, _tiny_config())


def test_safetensors_written_by_torch_keep_their_bits(tmp_path, tiny_state):
    """bf16 tensors in the file: read without torch, then converted to float32 exactly."""
    state = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tiny_state.items()
             if v.dtype == np.float32}
    save_file(state, tmp_path / "model.safetensors")
    _tiny_config().to_json(tmp_path / "config.json")
    params = read_checkpoint(str(tmp_path)).params
    got = params["encoder"]["layer"]["0"]["attention"]["self"]["query"]["kernel"]
    want = state["encoder.layer.0.attention.self.query.weight"].T.float().numpy()
    np.testing.assert_array_equal(bits(got), bits(want))


# --- conversion/: the README's key table and the scripts built on the library.

CONVERSION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "conversion")


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"conversion_{name}",
                                                  os.path.join(CONVERSION, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_key_table_is_the_code_table():
    script = _script("key_table")
    table = script.markdown_table()
    assert script.readme_table() == table, "run: python conversion/key_table.py --write"
    rows = table.splitlines()[2:]
    heads = script.EVERY_HEAD
    assert len(rows) == len(key_table(script.CONFIG, heads))  # one layer stands for all
    assert ("| `encoder.layer.<i>.intermediate.dense.weight` | `encoder/layer/<i>/intermediate/"
            "dense/kernel` | [D, I] | yes ([I, D]) | always |") in rows
    assert "| `classifier.weight` | `classifier/kernel` | [D, C] | yes ([C, D]) | with a classifier |" \
        in rows


def test_make_tiny_checkpoint_script_legacy_bin(tmp_path, capsys):
    """The script's legacy .bin (gamma/beta, position_ids, every parameter random) converts
    bit-exactly, and the parity script passes on it."""
    make = _script("make_tiny_checkpoint")
    assert make.main([str(tmp_path / "src"), "--head", "pretraining", "--legacy",
                      "--random-all"]) == 0
    state = torch.load(tmp_path / "src" / "pytorch_model.bin", weights_only=True)
    assert "bert.encoder.layer.1.output.LayerNorm.gamma" in state
    loaded = read_checkpoint(str(tmp_path / "src"))
    assert loaded.heads == Heads(pooler=True, mlm=True)
    assert_bit_exact(loaded.params, state, untied=False)
    capsys.readouterr()
    assert _script("verify_parity").main([str(tmp_path / "src")]) == 0
    assert capsys.readouterr().out.rstrip().endswith("verify: OK")
