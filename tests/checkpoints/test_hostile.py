"""Hostile checkpoint files: each is refused with a message naming the file and what is wrong
(the builders are in hostile.py)."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
from hostile import (
    Evalling,
    config_json,
    copy_folder,
    entry,
    fifo,
    malicious_bin,
    nested_json,
    safetensors_bytes,
    sparse_file,
    with_nonfinite,
    write,
    write_index,
)
from safetensors.numpy import save_file

import bertjax
from bertjax.checkpoints.checkpoint import convert_checkpoint
from bertjax.checkpoints.convert import NonFiniteWeightsWarning
from bertjax.checkpoints.readers import CheckpointError, _unpickling_error, read_weights
from bertjax.commands.cli import main

DATA = np.arange(6, dtype=np.float32).tobytes()  # 24 bytes: room for two float32 tensors of 3


@pytest.mark.parametrize("header", [None, [1, 2], "text", 3], ids=["null", "list", "string", "number"])
def test_safetensors_header_that_is_not_an_object(tmp_path, header):
    path = write(tmp_path / "w.safetensors", safetensors_bytes(header, DATA))
    with pytest.raises(CheckpointError, match=r"w\.safetensors has a corrupted safetensors header: "
                                              r"a JSON \w+ where a JSON object is expected"):
        read_weights(path)


@pytest.mark.parametrize("metadata", [[1], "x", {"format": 1}, {"a": None}],
                         ids=["list", "string", "int-value", "null-value"])
def test_safetensors_bad_metadata(tmp_path, metadata):
    header = {"__metadata__": metadata, "a": entry(0, 24)}
    path = write(tmp_path / "w.safetensors", safetensors_bytes(header, DATA))
    with pytest.raises(CheckpointError, match=r"w\.safetensors has a corrupted safetensors header: "
                                              r"__metadata__ must be an object of string to string"):
        read_weights(path)


def test_safetensors_string_metadata_is_fine(tmp_path):
    header = {"__metadata__": {"format": "pt"}, "a": entry(0, 24)}
    state = read_weights(write(tmp_path / "w.safetensors", safetensors_bytes(header, DATA)))
    np.testing.assert_array_equal(state["a"], np.arange(6, dtype=np.float32))


def test_safetensors_duplicate_key(tmp_path):
    raw = b'{"a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}, "a": {"dtype": "F32", ' \
          b'"shape": [6], "data_offsets": [0, 24]}}'
    path = write(tmp_path / "w.safetensors", safetensors_bytes(raw, DATA))
    with pytest.raises(CheckpointError, match=r"corrupted safetensors header: the key 'a' appears twice"):
        read_weights(path)


@pytest.mark.parametrize("header, message", [
    ({"a": entry(0, 16), "b": entry(8, 24)},
     r"w\.safetensors: tensors 'a' and 'b' overlap \(bytes 8\.\.16 of the data section\): corrupted file"),
    ({"a": entry(0, 8), "b": entry(16, 24)},
     r"w\.safetensors: 8 bytes before tensor 'b' belong to no tensor \(a gap at byte 8"),
    ({"a": entry(0, 16)}, r"w\.safetensors: 8 bytes after the last tensor belong to no tensor"),
    ({"a": entry(0, 24), "b": entry(24, 40)},
     r"w\.safetensors is truncated: tensor 'b' ends at byte \d+ but the file has \d+ bytes"),
], ids=["overlapping-tensors", "gap-between-tensors", "bytes-after-the-last-tensor",
        "tensor-outside-the-data-section"])
def test_safetensors_data_section_layout(tmp_path, header, message):
    path = write(tmp_path / "w.safetensors", safetensors_bytes(header, DATA))
    with pytest.raises(CheckpointError, match=message):
        read_weights(path)


@pytest.mark.parametrize("bad", [
    {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]},
    {"dtype": "F32", "shape": [2], "data_offsets": [True, 8]},
    {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]},
    "not an entry",
], ids=["float-shape", "negative-shape", "float-offset", "bool-offset", "three-offsets", "string"])
def test_safetensors_malformed_entry(tmp_path, bad):
    path = write(tmp_path / "w.safetensors", safetensors_bytes({"w": bad}, bytes(8)))
    with pytest.raises(CheckpointError, match=r"tensor 'w' has an unsupported or corrupted header entry"):
        read_weights(path)


def test_safetensors_reversed_range(tmp_path):
    path = write(tmp_path / "w.safetensors",
                 safetensors_bytes({"w": entry(8, 0, shape=[0])}, bytes(8)))
    with pytest.raises(CheckpointError, match=r"tensor 'w' has a corrupted byte range \[8, 0\)"):
        read_weights(path)


def _shards(folder) -> None:
    save_file({"a": np.ones(3, np.float32)}, os.path.join(folder, "a.safetensors"))
    save_file({"b": np.zeros(2, np.float32)}, os.path.join(folder, "b.safetensors"))


@pytest.mark.parametrize("weight_map, what", [
    ([["a", "a.safetensors"]], r"expected a JSON object with a \"weight_map\" object"),
    ("a.safetensors", r"expected a JSON object with a \"weight_map\" object"),
    ({"a": 1}, r"weight_map\['a'\] must be a shard file name \(a string\), got 1"),
    ({"a": ["a.safetensors"]}, r"weight_map\['a'\] must be a shard file name"),
], ids=["list", "string", "int-value", "list-value"])
def test_index_weight_map_not_str_to_str(tmp_path, weight_map, what):
    _shards(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json.*" + what):
        read_weights(write_index(tmp_path, weight_map))


def test_index_naming_itself(tmp_path):
    _shards(tmp_path)
    index = write_index(tmp_path, {"a": "a.safetensors", "b": "model.safetensors.index.json"})
    with pytest.raises(CheckpointError, match=r"weight_map\['b'\] = 'model\.safetensors\.index\.json' "
                                              r"names the index file itself"):
        read_weights(index)


def test_index_naming_another_index(tmp_path):
    _shards(tmp_path)
    write_index(tmp_path, {"a": "one.index.json"}, "two.index.json")
    with pytest.raises(CheckpointError, match=r"one\.index\.json: weight_map\['a'\] = 'two\.index\.json' "
                                              r"is not a weights shard"):
        read_weights(write_index(tmp_path, {"a": "two.index.json"}, "one.index.json"))


def test_index_naming_a_directory(tmp_path):
    _shards(tmp_path)
    os.makedirs(tmp_path / "c.safetensors")
    with pytest.raises(CheckpointError, match=r"weight_map\['b'\] = 'c\.safetensors' is not a regular file"):
        read_weights(write_index(tmp_path, {"a": "a.safetensors", "b": "c.safetensors"}))


@pytest.mark.parametrize("shard", ["../a.safetensors", "sub/a.safetensors", "/etc/passwd", "..", ""],
                         ids=["dotdot", "subfolder", "absolute", "parent", "empty"])
def test_index_paths_outside_the_folder(tmp_path, shard):
    os.makedirs(tmp_path / "ckpt" / "sub")
    _shards(tmp_path)
    _shards(tmp_path / "ckpt" / "sub")
    index = write_index(tmp_path / "ckpt", {"a": shard})
    with pytest.raises(CheckpointError, match=rf"weight_map\['a'\] = '{shard}' is not a plain file "
                                              r"name in the checkpoint folder"):
        read_weights(index)


def test_index_symlink_leading_out(tmp_path):
    os.makedirs(tmp_path / "ckpt")
    _shards(tmp_path)
    os.symlink(tmp_path / "a.safetensors", tmp_path / "ckpt" / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"weight_map\['a'\] = 'a\.safetensors' is a symlink "
                                              r"leading out of the checkpoint folder"):
        read_weights(write_index(tmp_path / "ckpt", {"a": "a.safetensors"}))


def test_index_symlink_inside_the_folder_is_fine(tmp_path):
    _shards(tmp_path)
    os.symlink("a.safetensors", tmp_path / "link.safetensors")
    state = read_weights(write_index(tmp_path, {"a": "link.safetensors"}))
    np.testing.assert_array_equal(state["a"], np.ones(3, np.float32))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_bin_running_os_system_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = malicious_bin(tmp_path / "evil.bin", marker, legacy)
    with pytest.raises(CheckpointError) as info:
        read_weights(path)
    message = str(info.value)
    assert not marker.exists()
    assert "evil.bin: a pickle wanting posix.system was refused for safety" in message
    assert "save its state dict as safetensors" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "corrupted" not in message


def test_raw_pickle_calling_eval_is_refused(tmp_path):
    path = tmp_path / "eval.bin"
    path.write_bytes(pickle.dumps({"x": Evalling()}, protocol=2))
    with pytest.raises(CheckpointError, match=r"eval\.bin: a pickle wanting eval was refused for "
                                              r"safety.*save its state dict as safetensors"):
        read_weights(str(path))


# torch's wordings of a refused global, from the weights_only unpickler of each version: the
# message bertjax gives names the global and never passes on torch's weights_only=False advice.
UNSAFE = ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
          "will likely succeed, but it can result in arbitrary code execution. ")
WORDINGS = {
    "2.4+": (UNSAFE + "WeightsUnpickler error: Unsupported global: GLOBAL evil.Thing was not an "
             "allowed global by default. Please use `torch.serialization.add_safe_globals([Thing])`",
             "evil.Thing"),
    "2.5+ blocked": (UNSAFE + "\n\nTrying to load unsupported GLOBAL posix.system whose module posix "
                     "is blocked.", "posix.system"),
    "1.13-2.3": (UNSAFE + "WeightsUnpickler error: Unsupported class evil.Thing", "evil.Thing"),
    "reduce": (UNSAFE + "WeightsUnpickler error: Trying to call reduce for unrecognized function "
               "<built-in function system>", "<built-in function system>"),
    "newobj": (UNSAFE + "WeightsUnpickler error: Can only create new object for nn.Parameter or "
               "classes allowlisted via `add_safe_globals` but got <class 'evil.Thing'>",
               "<class"),
    "build": (UNSAFE + "WeightsUnpickler error: Can only build Tensor, Parameter, OrderedDict or "
              "types allowlisted via `add_safe_globals`, but got <class 'evil.Thing'>", "<class"),
}


@pytest.mark.parametrize("version", list(WORDINGS))
def test_every_torch_wording_of_a_refused_global(version):
    text, wanted = WORDINGS[version]
    message = str(_unpickling_error("m.bin", pickle.UnpicklingError(text)))
    assert message.startswith(f"m.bin: a pickle wanting {wanted}")
    assert "refused for safety" in message and "weights_only" not in message


def test_unpickler_corruption_never_quotes_the_weights_only_advice():
    text = (UNSAFE + "Please file an issue with the following so that we can make `weights_only=True` "
            "compatible with your use case: WeightsUnpickler error: \n\nUnsupported operand 255")
    message = str(_unpickling_error("m.bin", pickle.UnpicklingError(text)))
    assert message == "cannot read m.bin: corrupted or not a PyTorch checkpoint (Unsupported operand 255)"


@pytest.fixture(scope="module")
def nan_dir(checkpoint_factory, tmp_path_factory) -> str:
    """A tiny BertModel checkpoint with a NaN in a query kernel and an Inf in the pooler bias."""
    return with_nonfinite(checkpoint_factory("BertModel"), tmp_path_factory.mktemp("nan") / "m",
                          {"encoder.layer.1.attention.self.query.weight": (4, np.nan),
                           "pooler.dense.bias": (0, -np.inf)})


NAN_MESSAGE = (r"2 weight tensor\(s\) hold NaN or Inf \(as float32\): "
               r"encoder/layer/1/attention/self/query/kernel \(1 NaN\), pooler/dense/bias \(1 Inf\)")


def test_nonfinite_weights_warn_and_load(nan_dir):
    with pytest.warns(NonFiniteWeightsWarning, match=r"model\.safetensors: " + NAN_MESSAGE):
        _, params = bertjax.load(nan_dir)
    assert np.isnan(params["encoder"]["layer"]["1"]["attention"]["self"]["query"]["kernel"]).sum() == 1


def test_nonfinite_weights_refused_with_strict(nan_dir):
    with pytest.raises(CheckpointError, match=NAN_MESSAGE + r"; refused \(strict\)"):
        bertjax.load(nan_dir, strict=True)


def test_nonfinite_weights_in_a_converted_folder(nan_dir, tmp_path):
    with pytest.warns(NonFiniteWeightsWarning):
        convert_checkpoint(nan_dir, tmp_path / "out")
    with pytest.warns(NonFiniteWeightsWarning, match=r"flax_model\.msgpack: " + NAN_MESSAGE):
        bertjax.load(tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"flax_model\.msgpack: " + NAN_MESSAGE):
        bertjax.load(tmp_path / "out", strict=True)


def test_cli_convert_warns_on_nonfinite_weights_and_strict_refuses(nan_dir, tmp_path, capsys):
    assert main(["convert", nan_dir, str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"^bertjax: warning: .*model\.safetensors: " + NAN_MESSAGE
                     + r" \(--strict refuses such weights\)$", err, re.M)
    assert main(["convert", nan_dir, str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"bertjax: error: .*model\.safetensors: " + NAN_MESSAGE
                        + r"; refused \(strict\)\n", err)
    assert not os.path.exists(tmp_path / "strict")


# Issue 27: OUT folders --force may replace, symlinked and special files, configs that claim more
# than the weights hold, files far bigger than the config allows, JSON nested too deep.

@pytest.fixture(scope="module")
def bare(checkpoint_factory) -> str:
    """A tiny BertModel folder (config.json and model.safetensors, no tokenizer files)."""
    return checkpoint_factory("BertModel")


@pytest.fixture(scope="module")
def converted(bare, tmp_path_factory) -> str:
    """A converted tiny folder (config.json and flax_model.msgpack)."""
    return convert_checkpoint(bare, tmp_path_factory.mktemp("converted") / "m")["out"]


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"bertjax: error: [^\n]+\n", err), err
    return err


@pytest.mark.parametrize("out", ["", ".", "..", "./", "../..", "{work}", "{parent}"],
                         ids=["empty", "dot", "dotdot", "dot-slash", "grandparent", "absolute-cwd",
                              "absolute-parent"])
def test_convert_force_never_replaces_the_current_folder_or_a_parent(bare, tmp_path, monkeypatch,
                                                                     capsys, out):
    work = tmp_path / "thesis" / "chapter"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("years of work")
    monkeypatch.chdir(work)
    out = out.format(work=work, parent=work.parent)
    err = _one_line_error(capsys, ["convert", bare, out, "--force"])
    if out:
        assert "is the current folder or one of its parents; choose a new folder for OUT" in err
    else:
        assert "OUT is empty (an unset variable?); name the folder to write" in err
    assert sorted(os.listdir(work)) == ["notes.txt"]
    assert sorted(os.listdir(tmp_path / "thesis")) == ["chapter"]
    with pytest.raises((ValueError, FileExistsError)):
        convert_checkpoint(bare, out, force=True)
    assert (work / "notes.txt").read_text() == "years of work"


def test_force_replaces_only_a_bertjax_checkpoint(bare, converted, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "chapter1.tex").write_text("years of work")
    err = _one_line_error(capsys, ["convert", bare, str(notes), "--force"])
    assert (f"{notes} is not a bertjax checkpoint folder (no config.json and flax_model.msgpack; it "
            f"holds chapter1.tex), and only such a folder is replaced; choose another OUT, or remove "
            f"it yourself") in err
    err = _one_line_error(capsys, ["convert", "org/some-model", str(notes), "--force"])
    assert "is not a bertjax checkpoint folder" in err  # refused before a hub id is looked up
    config, params = bertjax.load(converted)
    with pytest.raises(FileExistsError, match=r"is not a bertjax checkpoint folder"):
        bertjax.save(notes, config, params, force=True)
    assert os.listdir(notes) == ["chapter1.tex"]
    (tmp_path / "empty").mkdir()  # an empty folder or a checkpoint may be replaced
    assert main(["convert", bare, str(tmp_path / "empty"), "--force"]) == 0
    assert main(["convert", bare, str(tmp_path / "empty"), "--force"]) == 0
    assert sorted(os.listdir(tmp_path / "empty")) == ["config.json", "flax_model.msgpack"]
    (tmp_path / "tok").mkdir()  # only tokenizer files: what a checkpoint holds (toy_mlm's case)
    (tmp_path / "tok" / "vocab.txt").write_text("[PAD]\n")
    bertjax.save(tmp_path / "tok", config, params, tokenizer_dir=str(tmp_path / "tok"), force=True)
    assert (tmp_path / "tok" / "vocab.txt").read_text() == "[PAD]\n"
    with pytest.raises(ValueError, match=r"OUT is empty"):
        bertjax.save("", config, params, force=True)


def test_a_failed_force_leaves_no_old_folder(bare, converted, tmp_path, monkeypatch):
    out = tmp_path / "out"
    convert_checkpoint(bare, out)
    rename = os.rename
    for failing in (0, 1):  # moving the old folder aside fails, or moving the new one in
        calls = []

        def flaky(a, b, calls=calls, failing=failing):
            calls.append(a)
            if len(calls) == failing + 1:
                raise PermissionError(f"cannot rename {a}")
            return rename(a, b)

        monkeypatch.setattr(os, "rename", flaky)
        with pytest.raises(PermissionError):
            convert_checkpoint(bare, out, force=True)
        monkeypatch.setattr(os, "rename", rename)
        assert sorted(os.listdir(tmp_path)) == ["out"], failing
        assert sorted(os.listdir(out)) == ["config.json", "flax_model.msgpack"]


def test_a_failed_save_leaves_none_of_the_folders_it_made(bare, tmp_path, monkeypatch):
    from bertjax.checkpoints import checkpoint

    def full_disk(path, params):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_msgpack", full_disk)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(bare, tmp_path / "a" / "b" / "out")
    assert os.listdir(tmp_path) == []


def _with_tokenizer_link(bare, tmp_path, target) -> str:
    src = copy_folder(bare, tmp_path / "src")
    os.symlink(target, os.path.join(src, "vocab.txt"))
    return src


def test_a_tokenizer_symlink_leading_out_of_the_source_is_refused(bare, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    src = _with_tokenizer_link(bare, tmp_path, secret)
    message = (r"vocab\.txt is a symlink leading out of the source folder .* \(to .*secret\.txt\); "
               r"copy the file itself into the folder, or remove the link")
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(src, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")
    config, params = bertjax.load(src)
    with pytest.raises(CheckpointError, match=message):
        bertjax.save(tmp_path / "out", config, params, tokenizer_dir=src)
    assert re.search(message, _one_line_error(capsys, ["convert", src, str(tmp_path / "out")]))
    assert not os.path.exists(tmp_path / "out")


def test_tokenizer_links_inside_the_source_and_hub_snapshots_are_copied(bare, tmp_path):
    src = _with_tokenizer_link(bare, tmp_path, "real-vocab.txt")
    (tmp_path / "src" / "real-vocab.txt").write_text("[PAD]\n")
    convert_checkpoint(src, tmp_path / "out")
    assert not os.path.islink(tmp_path / "out" / "vocab.txt")
    assert (tmp_path / "out" / "vocab.txt").read_text() == "[PAD]\n"
    repo = tmp_path / "hub" / "models--org--tiny"  # huggingface_hub's cache: links into blobs/
    snapshot = repo / "snapshots" / "abc123"
    os.makedirs(repo / "blobs")
    copy_folder(bare, snapshot)
    (repo / "blobs" / "f00d").write_text("[UNK]\n")
    os.symlink("../../blobs/f00d", snapshot / "vocab.txt")
    convert_checkpoint(str(snapshot), tmp_path / "out2")
    assert (tmp_path / "out2" / "vocab.txt").read_text() == "[UNK]\n"


def test_a_tokenizer_file_that_is_not_a_regular_file_is_refused(bare, tmp_path):
    src = copy_folder(bare, tmp_path / "src")
    fifo(os.path.join(src, "tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"tokenizer\.json is not a regular file \(a fifo\)"):
        convert_checkpoint(src, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


def _unblock(path, after: float = 10.0) -> None:
    """Opens the FIFO `path` for writing after `after` s, so that a reader that blocked on it
    (the bug) ends instead of hanging the test."""
    import threading
    import time

    def write():
        time.sleep(after)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # nobody reads it: nothing blocked
            return
        os.write(fd, b"{}")
        os.close(fd)

    threading.Thread(target=write, daemon=True).start()


def test_config_that_is_a_fifo_is_refused_without_blocking(bare, tmp_path, capsys):
    config = fifo(tmp_path / "config.json")
    _unblock(config)
    weights = os.path.join(bare, "model.safetensors")
    err = _one_line_error(capsys, ["convert", weights, str(tmp_path / "out"), "--config", config])
    assert "config.json is not a regular file (a fifo); pass a config.json file" in err
    with pytest.raises(ValueError, match=r"is not a regular file \(a fifo\)"):
        bertjax.BertConfig.from_json(config)


def test_weights_that_are_a_fifo_are_refused(bare, tmp_path):
    weights = fifo(tmp_path / "w.safetensors")
    _unblock(weights)
    with pytest.raises(CheckpointError,
                       match=r"weights file .*w\.safetensors is not a regular file \(a fifo\)"):
        read_weights(weights)
    with pytest.raises(CheckpointError, match=r"w\.safetensors is not a regular file or a folder "
                                              r"\(a fifo\)"):
        convert_checkpoint(weights, tmp_path / "out", config=os.path.join(bare, "config.json"))


@pytest.mark.parametrize("content, message", [
    (nested_json(100_000), r"is not valid JSON: nested too deeply"),
    (nested_json(100_000, '{"a": 1}').replace("[", '{"a": ', 1), r"is not valid JSON"),
    (b'{"vocab_size": 101, "name": "\xff\xfe"}', r"is not UTF-8 \(byte 0xff at position \d+\)"),
    ('{"vocab_size": ' + "9" * 5000 + "}", r"is not valid JSON: a number with more than \d+ digits"),
], ids=["nested-arrays", "nested-objects", "invalid-utf8", "5000-digit-number"])
def test_config_json_that_python_cannot_read_gives_one_line(bare, tmp_path, capsys, content, message):
    src = copy_folder(bare, tmp_path / "src")
    path = os.path.join(src, "config.json")
    with open(path, "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=rf"config file {re.escape(path)} {message}"):
        bertjax.BertConfig.from_json(path)
    assert re.search(message, _one_line_error(capsys, ["convert", src, str(tmp_path / "out")]))


def test_nested_json_in_a_safetensors_header_and_an_index(tmp_path):
    path = write(tmp_path / "w.safetensors", safetensors_bytes(nested_json(100_000).encode()))
    with pytest.raises(CheckpointError, match=r"w\.safetensors has a corrupted safetensors header"):
        read_weights(path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(nested_json(100_000))
    with pytest.raises(CheckpointError, match=r"is not a valid sharded-checkpoint index"):
        read_weights(str(index))


def test_config_sizes_over_the_limits_are_refused():
    with pytest.raises(ValueError, match=r"BertConfig\.num_hidden_layers=1000000000 is over the "
                                         r"limit of \d+ \(bertjax\.model\.config\.LIMITS\)"):
        bertjax.BertConfig(num_hidden_layers=10**9)
    with pytest.raises(ValueError, match=r"BertConfig\.vocab_size=\d+ is over the limit"):
        bertjax.BertConfig(vocab_size=2**40)


@pytest.mark.parametrize("fmt", ["safetensors", "msgpack"])
def test_config_claiming_more_layers_than_the_weights_is_refused_first(bare, converted, tmp_path,
                                                                      monkeypatch, fmt):
    from bertjax.model import params as P

    src = copy_folder(bare if fmt == "safetensors" else converted, tmp_path / "src")
    config_json(src, num_hidden_layers=1000)
    monkeypatch.setattr(P, "layer_shapes", None)  # nothing may be built per layer
    with pytest.raises(CheckpointError, match=r"the config says num_hidden_layers=1000 but the "
                                              r"weights hold 4 layers \(0\.\.3\)"):
        bertjax.load(src)
    config_json(src, num_hidden_layers=10**9)
    with pytest.raises(ValueError, match=r"num_hidden_layers=1000000000 is over the limit"):
        bertjax.load(src)


def test_a_msgpack_bigger_than_the_config_allows_is_refused_unread(converted, tmp_path, monkeypatch):
    from flax import serialization

    src = copy_folder(converted, tmp_path / "src")
    sparse_file(os.path.join(src, "flax_model.msgpack"), 64 * 2**20)  # a hole: no disk used

    def restore(*args, **kwargs):
        raise AssertionError("the file was read")

    monkeypatch.setattr(serialization, "msgpack_restore", restore)
    with pytest.raises(CheckpointError, match=r"flax_model\.msgpack is 67108864 bytes, more than "
                                              r"the \d+ bytes at most that a model of its "
                                              r"config\.json needs"):
        bertjax.load(src)


def test_bounded_lines_never_reads_more_than_the_limit_of_one_line():
    import io

    from bertjax.checkpoints.files import LongLine, bounded_lines

    class Counting(io.BytesIO):
        most = 0

        def readline(self, size=-1):
            line = super().readline(size)
            Counting.most = max(Counting.most, len(line))
            return line

    data = b"ab\n" + b"x" * 1000 + b"\n\ncd" + b"y" * 2000
    lines = list(bounded_lines(Counting(data), 16))
    assert Counting.most <= 17 and [n for n, _ in lines] == [1, 2, 3, 4]
    assert lines[0][1] == b"ab\n" and lines[2][1] == b"\n"
    for (_, long), size in ((lines[1], 1001), (lines[3], 2002)):
        assert isinstance(long, LongLine) and long.size == size
    assert list(bounded_lines(io.BytesIO(b"x" * 16 + b"\n"), 16))[0][1].size == 17  # newline counts
    assert list(bounded_lines(io.BytesIO(b"x" * 15 + b"\n"), 16)) == [(1, b"x" * 15 + b"\n")]
