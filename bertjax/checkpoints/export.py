"""Export back to transformers: a parameter tree -> a folder `transformers.AutoModel` loads.

The folder holds `config.json` (the family's transformers form, `config.to_dict()`, with
`architectures` naming the class), `model.safetensors` in transformers' names and the tokenizer files.
The names are the import key table (`bertjax.checkpoints.convert.key_table`) read backwards: each tree
path goes to its source key, kernels transposed back to torch's [out, in], the base model's keys
under the family's prefix (`bert.`, `roberta.`, ...) for a head class, and a tied decoder left out
(transformers ties it to the word embeddings when it loads, as its own `save_pretrained` does).

The class follows from the task (`TASKS`): "model" (the base model), "mlm", "classification"
(sequence), "tokens" (token classification), "pretraining" (ELECTRA's discriminator, ALBERT's
MLM + SOP). By default it is read from the tree's heads; a classifier is a sequence head unless its
form is the family's token head (`infer_task`). Parts of the tree the class has no place for (a
pooler under a token head, an MLM head beside a classifier) are left out and listed in the plan's
notes.

Written like `save`: into a temporary sibling folder renamed into place, an existing folder replaced
only with `force=True`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from bertjax.checkpoints.checkpoint import _per_layer, _replace
from bertjax.checkpoints.convert import key_table
from bertjax.checkpoints.files import TOKENIZER_FILES, check_out, make_public
from bertjax.checkpoints.keys import source_key
from bertjax.checkpoints.sources import tokenizer_files
from bertjax.model.config import BertConfig
from bertjax.model.params import Heads, check_params, flatten

WEIGHTS_FILE = "model.safetensors"
# model_type -> (class name stem, base_model_prefix)
FAMILY_CLASSES = {
    "bert": ("Bert", "bert"), "roberta": ("Roberta", "roberta"),
    "xlm-roberta": ("XLMRoberta", "roberta"), "camembert": ("Camembert", "roberta"),
    "distilbert": ("DistilBert", "distilbert"), "electra": ("Electra", "electra"),
    "albert": ("Albert", "albert"), "mpnet": ("MPNet", "mpnet"),
    "deberta-v2": ("DebertaV2", "deberta"), "modernbert": ("ModernBert", "model"),
}
# task -> class name suffix
TASKS = {"model": "Model", "mlm": "ForMaskedLM", "classification": "ForSequenceClassification",
         "tokens": "ForTokenClassification", "pretraining": "ForPreTraining"}
# The top-level parts of the tree each task's class holds besides embeddings and encoder.
_HEAD_PARTS = {"model": ("pooler",), "mlm": ("cls",),
               "classification": ("pooler", "pre_classifier", "classifier"),
               "tokens": ("classifier",),
               "pretraining": ("pooler", "cls", "sop_classifier", "discriminator_predictions")}
# Families whose sequence classifier reads the pooler (the others drop it in that class):
# DeBERTa's ContextPooler is its sequence head's pooler, absent from DebertaV2Model.
_POOLED = ("bert", "albert", "deberta-v2")
# ModernBERT's sequence and token classifiers are one form (head dense + norm, classifier).
_SHARED_HEAD = ("modernbert",)
# MLM output bias -> the decoder Linear's own bias, which transformers ties to it only while the
# decoder weight is tied: an untied export writes both (as transformers' save_pretrained does).
_DECODER_BIAS = {"cls.predictions.bias": "cls.predictions.decoder.bias",
                 "lm_head.bias": "lm_head.decoder.bias",
                 "predictions.bias": "predictions.decoder.bias"}
# Config keys naming special token ids that BertConfig does not keep, per family, and the token
# (tokenizer_config.json's key) each names: filled from the exported tokenizer's files, or None
# without one (the config class's defaults are ids of the real vocabulary, out of a small one's).
_SPECIAL_IDS = {"modernbert": {"cls_token_id": "cls_token", "sep_token_id": "sep_token",
                               "bos_token_id": "cls_token", "eos_token_id": "sep_token"}}
_SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def config_type(config: BertConfig) -> str:
    """The config's family (`model_type`; "bert" for a config without the field)."""
    return getattr(config, "model_type", "bert")


def _model_type(config: BertConfig) -> str:
    model_type = config_type(config)
    if model_type not in FAMILY_CLASSES:
        raise ValueError(f"cannot export model_type {model_type!r}; supported: "
                         f"{', '.join(FAMILY_CLASSES)}")
    return model_type


def infer_task(config: BertConfig, params: dict) -> str:
    """The task a tree's heads serve: "classification" for a classifier ("tokens" where it cannot
    be the family's sequence head: BERT's or ALBERT's without a pooler, a plain classifier where the
    family's has another form, RoBERTa's dense + out_proj or DistilBERT's pre_classifier),
    "pretraining" for ELECTRA's discriminator or ALBERT's SOP head, "mlm" for an
    MLM head, else "model". A ModernBERT classifier, whose sequence and token heads have one
    form, is refused (ValueError): its task must be given."""
    model_type = _model_type(config)
    if "classifier" in params:
        classifier = params["classifier"]
        if model_type in _SHARED_HEAD:
            raise ValueError(f"give the task, 'classification' or 'tokens' (bertjax export "
                             f"--task): a {model_type} classifier (head and classifier) serves "
                             f"{FAMILY_CLASSES[model_type][0]}ForSequenceClassification and "
                             f"...ForTokenClassification alike")
        if model_type in _POOLED:  # BERT's and ALBERT's sequence head reads the pooler
            return "classification" if "pooler" in params else "tokens"
        return "classification" if "dense" in classifier or "pre_classifier" in params else "tokens"
    if "discriminator_predictions" in params or "sop_classifier" in params:
        return "pretraining"
    return "mlm" if "cls" in params else "model"


def architecture(config: BertConfig, task: str) -> str:
    """The transformers class name for a family and task, e.g. ("roberta", "mlm") ->
    RobertaForMaskedLM."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    stem = FAMILY_CLASSES[_model_type(config)][0]
    if task == "pretraining" and stem not in ("Electra", "Albert"):
        raise ValueError(f"task 'pretraining' exports ELECTRA's discriminator or ALBERT's MLM + SOP "
                         f"heads; a {config_type(config)} has no such class here (its NSP head is "
                         f"dropped on import): use task 'mlm'")
    return stem + TASKS[task]


def _required(config: BertConfig, task: str) -> tuple[str, ...]:
    """Top-level parts the task's class must find in the tree."""
    model_type = config_type(config)
    if task == "mlm":
        return ("cls",)
    if task in ("classification", "tokens") and model_type in _SHARED_HEAD:
        return ("head", "classifier")
    if task == "classification":
        if model_type in _POOLED:
            return ("pooler", "classifier")
        return ("pre_classifier", "classifier") if model_type == "distilbert" else ("classifier",)
    if task == "tokens":
        return ("classifier",)
    if task == "pretraining":
        return ("discriminator_predictions",) if model_type == "electra" else (
            "pooler", "cls", "sop_classifier")
    return ()


def _kept_parts(config: BertConfig, task: str) -> tuple[str, ...]:
    parts = _HEAD_PARTS[task]
    if task == "classification" and config_type(config) not in _POOLED:
        parts = tuple(p for p in parts if p != "pooler")
    if task == "model" and config_type(config) == "deberta-v2":
        parts = ()  # DebertaV2Model has no pooler (the ContextPooler is the classifier's)
    if task in ("classification", "tokens") and config_type(config) in _SHARED_HEAD:
        parts = ("head", "classifier")
    if task == "pretraining" and config_type(config) == "electra":
        parts = ("discriminator_predictions",)
    return ("embeddings", "encoder", *parts)


@dataclasses.dataclass
class ExportPlan:
    """What `save_transformers` writes: the class, the tensors in transformers' names (torch
    layout, NumPy), the config dict and notes on parts left out."""

    architecture: str
    tensors: dict[str, np.ndarray]
    config: dict
    notes: list[str]


def _check_heads(config: BertConfig, params: dict, task: str, name: str) -> None:
    sequence_form = config_type(config) not in _POOLED + _SHARED_HEAD  # a head of its own form
    if task == "classification" and sequence_form and "classifier" in params:
        classifier = params["classifier"]
        token_form = "kernel" in classifier
        if config_type(config) != "distilbert" and token_form:
            raise ValueError(f"{name} needs the family's sequence head (classifier/dense and "
                             f"classifier/out_proj); this tree's classifier is a token head: "
                             f"use task 'tokens'")
    if (task == "tokens" and config_type(config) not in _SHARED_HEAD and "classifier" in params
            and "kernel" not in params["classifier"]):
        raise ValueError(f"{name} needs classifier/{{kernel,bias}} at every token; this tree's "
                         f"classifier is a sequence head: use task 'classification'")
    missing = [p for p in _required(config, task) if p not in params]
    if missing:
        raise ValueError(f"{name} needs {' and '.join(missing)} in the parameter tree, which has "
                         f"only {', '.join(sorted(params))}; export with another task")


def plan_export(config: BertConfig, params: dict, task: str | None = None) -> ExportPlan:
    """The tensors, config and class `save_transformers` writes (see the module docstring).

    Args:
      config: the model's config.
      params: the parameter tree (per-layer or stacked; NumPy or jax leaves).
      task: one of TASKS, or None to infer it from the tree's heads (`infer_task`).
    """
    check_params(params, config)
    task = infer_task(config, params) if task is None else task
    name = architecture(config, task)
    _check_heads(config, params, task, name)
    kept = _kept_parts(config, task)
    dropped = sorted(p for p in params if p not in kept)
    tree = {k: v for k, v in _per_layer(params).items() if k in kept}
    heads = Heads.of(tree)
    flat = flatten(tree)
    tensors = {}
    for key, path, transposed in key_table(config, heads):
        array = np.asarray(flat.pop(path))
        if task != "model":  # the base model's keys under its prefix in a task class
            key = source_key(config, key)
        tensors[key] = np.ascontiguousarray(array.T if transposed else array)
        if heads.untied_decoder and key in _DECODER_BIAS:
            tensors[_DECODER_BIAS[key]] = tensors[key]
    if flat:  # the key table and the tree must cover each other exactly
        raise ValueError(f"no transformers name for {', '.join(sorted(flat))}")
    d = config.to_dict()
    d["architectures"] = [name]
    d["tie_word_embeddings"] = bool(config.tie_word_embeddings and not heads.untied_decoder)
    notes = [f"left out {part} (a {name} has no place for it)" for part in dropped]
    return ExportPlan(name, tensors, d, notes)


def safetensors_bytes_header(tensors: dict[str, np.ndarray]) -> bytes:
    """The safetensors header (8-byte length + JSON, padded to 8 bytes) for tensors written in
    this order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, array in tensors.items():
        dtype = np.dtype(array.dtype).name
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"cannot write {key} of dtype {dtype} to safetensors")
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
    """Writes tensors (little-endian, C order) as one safetensors file, one tensor at a time."""
    with open(path, "wb") as f:
        f.write(safetensors_bytes_header(tensors))
        for array in tensors.values():
            array = np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<"))
            f.write(array.reshape(-1).view(np.uint8).data)
        f.flush()
        os.fsync(f.fileno())


def special_token_ids(config: dict, files: dict[str, str]) -> dict:
    """The family's special token id keys (`_SPECIAL_IDS`) of an exported config dict: each id as
    the tokenizer (`files`: name -> path, tokenizer_config.json and tokenizer.json's added
    tokens) has it, else None."""
    wanted = _SPECIAL_IDS.get(config.get("model_type"), {})
    if not wanted:
        return {}
    try:
        with open(files["tokenizer_config.json"], encoding="utf-8") as f:
            names = json.load(f)
        with open(files["tokenizer.json"], encoding="utf-8") as f:
            added = {t["content"]: t["id"] for t in json.load(f).get("added_tokens", [])}
    except (KeyError, OSError, ValueError, TypeError, AttributeError):
        names, added = {}, {}
    ids = {}
    for key, token in wanted.items():
        name = names.get(token) if isinstance(names, dict) else None
        name = name.get("content") if isinstance(name, dict) else name
        ids[key] = added.get(name) if isinstance(name, str) else None
    return ids


def copy_tokenizer(tokenizer_dir: str | None, folder: str) -> list[str]:
    """Copies the tokenizer files found in `tokenizer_dir` (only regular files inside it:
    `bertjax.checkpoints.sources.tokenizer_files`); returns their names."""
    copied = []
    for name, path in tokenizer_files(tokenizer_dir):
        shutil.copyfile(path, os.path.join(folder, name))
        copied.append(name)
    return copied


def _check_out(out, force: bool) -> str:
    """OUT checked as `save` checks it; with force only a transformers folder bertjax could have
    exported (config.json and model.safetensors, or only such files) is replaced."""
    return check_out(out, force, what="transformers model", marks=("config.json", WEIGHTS_FILE),
                     names=("config.json", WEIGHTS_FILE) + TOKENIZER_FILES)


def save_transformers(out, config: BertConfig, params: dict, tokenizer_dir: str | None = None,
                      force: bool = False, *, task: str | None = None) -> str:
    """Writes a transformers model folder atomically (temporary sibling, then rename); returns its
    path.

    Args:
      out: the folder to write (config.json, model.safetensors, the tokenizer files).
      config: the model's config.
      params: the parameter tree (per-layer or stacked, any float dtype: it is written as it is).
      tokenizer_dir: a folder whose tokenizer files are copied (None: no tokenizer).
      force: replace an existing `out`.
      task: one of TASKS ("model", "mlm", "classification", "tokens", "pretraining"), choosing the
        transformers class; None infers it from the heads (`infer_task`).

    Raises FileExistsError when `out` exists and force is False, ValueError when `params` do not
    match `config` or the task's class needs a part the tree lacks.
    """
    out = _check_out(out, force)
    return write_export(out, plan_export(config, params, task), tokenizer_dir, force)


def write_export(out, plan: ExportPlan, tokenizer_dir: str | None = None,
                 force: bool = False) -> str:
    """Writes a planned export (`plan_export`) to `out` atomically; returns its path."""
    out = _check_out(out, force)
    files = dict(tokenizer_files(tokenizer_dir))  # refused before anything is written
    config = {**plan.config, **special_token_ids(plan.config, files)}
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        write_safetensors(os.path.join(tmp, WEIGHTS_FILE), plan.tensors)
        copy_tokenizer(tokenizer_dir, tmp)
        make_public(tmp)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
