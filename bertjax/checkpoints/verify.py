"""`bertjax convert SRC OUT --verify`: the converted model against transformers' PyTorch BERT.

Both models run on the same few inputs: fixed sentences tokenized with the checkpoint's own tokenizer
when it ships one (random ids with padding otherwise). The reference is transformers' model class for
the heads found (BertModel, BertForMaskedLM, BertForPreTraining or BertForSequenceClassification),
built from the source's config and the source's own tensors in float32, in eval mode with
`attn_implementation="eager"` (the only one that returns attention probabilities). transformers does
its own key handling (prefixes, gamma/beta), so the check is independent of our key table.

The parity table lists the max abs diff of the embeddings output, each layer's hidden state and
attention probabilities, the pooler, the MLM logits and classifier logits when present, and the MLM
top-k agreement. Tolerances: float32 parameters |ours - ref| <= 1e-4 + 2e-6 |ref| elementwise;
bfloat16 / float16 parameters (compared with the float32 reference) only loosely,
max |ours - ref| <= 5% of max |ref| per output, and the table says so.

torch and transformers are imported only here, and only when verifying.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import numpy as np

from bertjax.checkpoints.checkpoint import CONFIG_FILE, read_checkpoint
from bertjax.checkpoints.readers import read_weights
from bertjax.checkpoints.sources import Source, locate
from bertjax.model import capture as C
from bertjax.model.params import Heads

SENTENCES = ("The quick brown fox jumps over the lazy dog.",
             "Paris is the [MASK] of France.",
             "A language model reads the whole sentence at once, in [MASK] directions.")
ATOL, RTOL = 1e-4, 2e-6  # float32 parameters, elementwise: |ours - ref| <= ATOL + RTOL |ref|
LOOSE = 0.05  # bfloat16 / float16 parameters: max |ours - ref| <= LOOSE * max |ref|
TOP_K = 5
MAX_TOKENS = 32


class VerifyError(ValueError):
    """Verification could not run (no torch, a source transformers cannot read)."""


def require_reference() -> None:
    """Raises VerifyError (one line) when torch or transformers cannot be imported."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise VerifyError(f"--verify needs torch and transformers ({e}); install "
                          f"'bertjax[torch]' or leave out --verify") from None


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the parity table."""

    name: str
    max_abs_diff: float
    ok: bool


def compare(name: str, ours: np.ndarray, ref: np.ndarray, loose: bool) -> Row:
    """Max abs diff of one output and whether it is within tolerance."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Row(f"{name} (shape {ours.shape} vs {ref.shape})", float("inf"), False)
    diff = np.abs(ours - ref)
    ok = (diff.max() <= LOOSE * np.abs(ref).max() if loose
          else bool((diff <= ATOL + RTOL * np.abs(ref)).all()))
    return Row(name, float(diff.max()), bool(ok))


def top_k_agreement(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray, k: int = TOP_K):
    """(mean share of the reference's top-k found in ours, top-1 agreement) over real tokens.

    ours, ref: float [B, S, V] logits; mask: int [B, S], 1 for real tokens.
    """
    real = mask.astype(bool)
    top_ours = np.argsort(-ours, axis=-1)[..., :k][real]  # [R, k]
    top_ref = np.argsort(-ref, axis=-1)[..., :k][real]  # [R, k]
    shared = [len(set(a) & set(b)) / k for a, b in zip(top_ours, top_ref)]
    return float(np.mean(shared)), float(np.mean(top_ours[:, 0] == top_ref[:, 0]))


def verify_inputs(folder: str | None, vocab_size: int, type_vocab_size: int, positions: int):
    """See `_verify_inputs`; token types are None for a model without them (type_vocab_size 0)."""
    ids, types, mask, what = _verify_inputs(folder, vocab_size, max(type_vocab_size, 1), positions)
    return ids, (types if type_vocab_size else None), mask, what


def _verify_inputs(folder: str | None, vocab_size: int, type_vocab_size: int, positions: int):
    """int32 ids, token types and mask [B, S]: SENTENCES through the checkpoint's tokenizer, or
    random ids with a padded row when there is no usable tokenizer. Returns them and a label."""
    from bertjax.checkpoints.pretrained import has_tokenizer, tokenizer_for

    tokenizer = tokenizer_for(folder) if has_tokenizer(folder) else None
    if tokenizer is not None:
        enc = tokenizer(list(SENTENCES), padding=True, truncation=True, return_tensors="np",
                        max_length=min(positions, MAX_TOKENS))
        ids = enc["input_ids"].astype(np.int32)
        types = enc.get("token_type_ids", np.zeros_like(ids)).astype(np.int32)
        if ids.max() < vocab_size and types.max() < type_vocab_size:
            return ids, types, enc["attention_mask"].astype(np.int32), "tokenized sentences"
    rng = np.random.default_rng(0)
    length = min(positions, 12)
    ids = rng.integers(1, vocab_size, size=(3, length)).astype(np.int32)
    types = rng.integers(0, type_vocab_size, size=(3, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, length // 2:] = 0
    ids[1, length // 2:] = 0
    return ids, types, mask, "random ids with padding"


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report and progress bar off for a moment (our table is the report)."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


# transformers' class name prefix of each family.
_CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta",
                 "camembert": "Camembert", "distilbert": "DistilBert", "electra": "Electra",
                 "albert": "Albert", "mpnet": "MPNet", "deberta-v2": "DebertaV2",
                 "modernbert": "ModernBert"}


def is_token_head(heads: Heads, architectures=()) -> bool:
    """Whether the tree's classifier is a token head: a plain classifier without a pooler; for
    ModernBERT, whose sequence and token heads have one form (head + classifier), whether the
    source config.json's `architectures` names its ...ForTokenClassification."""
    if heads.classifier_form == "head":
        return any(str(a).endswith("ForTokenClassification") for a in architectures or ())
    return heads.classifier_form == "linear" and not heads.pooler


def _reference_class(heads: Heads, config=None, architectures=()):
    """transformers' class of the family for the heads found, and its extra arguments."""
    import transformers

    family = "bert" if config is None else config.model_type
    token_head = is_token_head(heads, architectures)
    if heads.classifier:
        task = "ForTokenClassification" if token_head else "ForSequenceClassification"
    elif heads.disc or heads.sop or (heads.mlm and heads.pooler and family == "bert"):
        task = "ForPreTraining"
    elif heads.mlm:
        task = "ForMaskedLM"
    else:
        pooled = family in ("bert", "roberta", "xlm-roberta", "camembert", "albert", "mpnet")
        return (getattr(transformers, _CLASS_PREFIX[family] + "Model"),
                {"add_pooling_layer": heads.pooler} if pooled else {})
    return getattr(transformers, _CLASS_PREFIX[family] + task), {}


def _as_torch(array: np.ndarray):
    import torch

    array = np.asarray(array)
    if array.dtype.kind in "iub":
        return torch.from_numpy(np.array(array))
    return torch.from_numpy(np.array(array, dtype=np.float32))


def reference_model(source: Source, config_path: str, heads: Heads, config=None):
    """transformers' model of the family for these heads, holding the source's tensors in float32,
    eval mode."""
    import json

    import transformers

    if source.weights.endswith(".msgpack"):
        raise VerifyError(f"--verify compares with the PyTorch weights, and {source.weights} is a "
                          f"Flax msgpack file")
    with open(config_path, encoding="utf-8") as f:
        d = json.load(f)
    family = d.get("model_type", "bert")
    model_class, kwargs = _reference_class(heads, config, d.get("architectures"))
    state = {k: _as_torch(v) for k, v in read_weights(source.weights).items()}
    hf_config = transformers.CONFIG_MAPPING[family].from_json_file(config_path)
    with _quiet_transformers():
        model, info = model_class.from_pretrained(
            None, config=hf_config, state_dict=state, output_loading_info=True,
            attn_implementation="eager", dtype="float32", **kwargs)
    missing = sorted(info["missing_keys"]) + sorted(info["mismatched_keys"])
    if missing:
        raise VerifyError(f"transformers' {model_class.__name__} could not load "
                          f"{', '.join(map(str, missing[:4]))} from {source.weights}")
    return model.eval()


def hidden_names(num_layers: int, pre_norm: bool) -> list[str]:
    """The rows of transformers' hidden_states[1:]: each layer's output, but a pre-norm model's
    (ModernBERT's) last entry is its final norm's output (the last hidden state)."""
    names = [f"layer {i} hidden" for i in range(num_layers)]
    return names[:-1] + ["final norm"] if pre_norm else names


def reference_outputs(model, heads: Heads, ids, types, mask) -> dict[str, np.ndarray]:
    """name -> float32 array from the transformers model (see module docstring for the names)."""
    import torch

    base = model.base_model
    args = {k: torch.from_numpy(v.astype(np.int64)) for k, v in
            (("input_ids", ids), ("token_type_ids", types), ("attention_mask", mask))
            if v is not None}
    with torch.no_grad():
        out = base(**args, output_hidden_states=True, output_attentions=True)
        ref = {"embeddings": out.hidden_states[0]}
        names = hidden_names(len(out.attentions), model.config.model_type == "modernbert")
        for i, (name, hidden, probs) in enumerate(zip(names, out.hidden_states[1:],
                                                      out.attentions)):
            ref[name], ref[f"layer {i} attention"] = hidden, probs
        if heads.pooler and getattr(out, "pooler_output", None) is not None:
            ref["pooler"] = out.pooler_output  # (a task model without one drops a stored pooler)
        top = model(**args) if model is not base else None
        if heads.mlm:
            logits = getattr(top, "prediction_logits", None)
            ref["mlm logits"] = top.logits if logits is None else logits
        if heads.disc:
            ref["disc logits"] = top.logits
        if heads.sop:
            ref["sop logits"] = top.sop_logits
        if heads.classifier:
            ref["classifier logits"] = top.logits
    return {k: v.float().numpy() for k, v in ref.items()}


def bertjax_outputs(params: dict, config, heads: Heads, ids, types, mask,
                    token_head: bool | None = None) -> dict[str, np.ndarray]:
    """The same names as `reference_outputs`, from `bertjax.forward`, as float32 (`token_head`:
    the classifier's task, `is_token_head`; None: read from the heads)."""
    from bertjax.model.forward import forward
    from bertjax.model.heads import classifier_logits, token_classifier_logits

    # = hidden_states[0]: the projection's output where it follows the norm (ELECTRA, ALBERT)
    projected = config.has_projection and not config.projection_before_norm
    first = C.EMBED_PROJ if projected else C.EMBED_OUT
    capture = (first, C.LAYER_OUT, C.ATTN_PROBS) + tuple(
        name for name, has in ((C.MLM_LOGITS, heads.mlm), (C.DISC_LOGITS, heads.disc),
                               (C.SOP_LOGITS, heads.sop)) if has)
    out = forward(params, ids, config, token_type_ids=types, attention_mask=mask, capture=capture)
    ours = {"embeddings": out.acts[first]}
    hidden = list(out.acts[C.LAYER_OUT])
    if config.pre_norm:  # transformers' last hidden_states entry: the final norm's output
        hidden[-1] = out.last_hidden_state
    for i, name in enumerate(hidden_names(config.num_layers, config.pre_norm)):
        ours[name] = hidden[i]
        ours[f"layer {i} attention"] = out.acts[C.ATTN_PROBS][i]
    if heads.pooler:
        ours["pooler"] = out.pooler_output
    if heads.mlm:
        ours["mlm logits"] = out.acts[C.MLM_LOGITS]
    if heads.disc:
        ours["disc logits"] = out.acts[C.DISC_LOGITS]
    if heads.sop:
        ours["sop logits"] = out.acts[C.SOP_LOGITS]
    token_head = is_token_head(heads) if token_head is None else token_head
    if heads.classifier and token_head:
        ours["classifier logits"] = token_classifier_logits(params, out.last_hidden_state, config)
    elif heads.classifier:
        pooled = out.pooler_output if heads.classifier_form == "linear" else out.last_hidden_state
        ours["classifier logits"] = classifier_logits(params, pooled, config, attention_mask=mask)
    return {k: np.asarray(v, np.float32) for k, v in ours.items()}


def format_table(rows: list[Row], loose: bool) -> str:
    """The parity table, one output per line."""
    rule = f"max|diff| <= {LOOSE:g} max|ref| (loose)" if loose else f"|diff| <= {ATOL:g} + {RTOL:g}|ref|"
    width = max(len(r.name) for r in rows) + 2
    lines = [f"  {'output':<{width}}{'max abs diff':>14}  within {rule}"]
    lines += [f"  {r.name:<{width}}{r.max_abs_diff:>14.3g}  {'yes' if r.ok else 'NO'}" for r in rows]
    return "\n".join(lines)


def _print_report(title: str, rows: list[Row], loose: bool, mlm_agreement) -> bool:
    """Prints the table and the verdict; returns whether every row is within tolerance."""
    print(title)
    print(format_table(rows, loose))
    if mlm_agreement is not None:
        top_k, top_1, tokens = mlm_agreement
        print(f"  mlm top-{TOP_K} agreement {top_k:.1%} (top-1 {top_1:.1%}) over {tokens} real tokens")
    bad = [r.name for r in rows if not r.ok]
    print(f"verify: FAILED, above tolerance: {', '.join(bad)}" if bad else "verify: OK")
    return not bad


def verify_conversion(out: str, src, config: str | None = None, dtype: str = "float32") -> int:
    """Runs the converted folder `out` (parameters in `dtype`, as converted) and transformers on
    the source `src` (config: a config.json for a bare weights file); prints the parity table.
    Returns 0 when every output is within tolerance, 1 otherwise.

    Raises VerifyError when torch/transformers are missing or the source cannot be read by them.
    """
    require_reference()
    import jax
    import jax.numpy as jnp

    converted = read_checkpoint(out, dtype=dtype)
    cfg, heads = converted.config, converted.heads
    loose = np.dtype(converted.params["embeddings"]["LayerNorm"]["scale"].dtype) != np.float32
    source = locate(src, config)
    model = reference_model(source, source.config or os.path.join(out, CONFIG_FILE), heads, cfg)
    ids, types, mask, what = verify_inputs(out, cfg.vocab_size, cfg.type_vocab_size,
                                           cfg.max_sequence_length)
    params = jax.tree_util.tree_map(jnp.asarray, converted.params)
    token_head = is_token_head(heads, model.config.architectures)
    ours = bertjax_outputs(params, cfg, heads, ids, types, mask, token_head)
    ref = reference_outputs(model, heads, ids, types, mask)
    rows = [compare(name, ours[name], ref[name], loose) for name in ref]
    agreement = (*top_k_agreement(ours["mlm logits"], ref["mlm logits"], mask),
                 int(mask.sum())) if heads.mlm else None
    title = (f"verify: bertjax vs transformers {type(model).__name__} (eager, eval) on {what} "
             f"[B={ids.shape[0]}, S={ids.shape[1]}], {dtype} parameters"
             + (", compared loosely with the float32 reference" if loose else ""))
    return 0 if _print_report(title, rows, loose, agreement) else 1
