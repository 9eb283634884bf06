"""`bertjax fill-mask TEXT`: the MLM head's top-k predictions for each mask token in TEXT."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fill-mask", help="top-k MLM predictions for each [MASK] in TEXT",
        description="Runs the model's MLM head on TEXT and prints, for each [MASK], the top-k "
                    "tokens with their probabilities and the text with that mask filled (the "
                    "other masks stay masked). The mask is the model's own token ([MASK], or <mask> "
                    "for RoBERTa, XLM-R, CamemBERT and MPNet; [MASK] is read as <mask> there). "
                    "Needs a model with an MLM head (a ...ForMaskedLM, BertForPreTraining or "
                    "AlbertForPreTraining, e.g. bert-base-uncased). With no --model: the offline "
                    "default model, which has no MLM head, so this is an error.")
    p.add_argument("text", metavar="TEXT", help="a text with one or more [MASK] (or <mask>) tokens")
    p.add_argument("--model", "-m", help="a converted folder, a Hugging Face folder or a hub id")
    p.add_argument("--top-k", "-k", type=int, default=5, help="predictions per mask (default: 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertjax.checkpoints.pretrained import has_mlm_head
    from bertjax.checkpoints.sources import DEFAULT_MODEL

    name = args.model or DEFAULT_MODEL
    if not has_mlm_head(args.model):  # from the parameter names: before converting or compiling
        raise ValueError(f"{name} has no MLM head (no cls/predictions in its weights): fill-mask "
                         f"needs a model with its MLM head (a ...ForMaskedLM or BertForPreTraining "
                         f"checkpoint), e.g. --model bert-base-uncased; offline, train the toy MLM "
                         f"in about a minute (python notebooks/toy_mlm.py toy-mlm, in the "
                         f"repository) and pass --model toy-mlm")
    from bertjax.analysis.fill_mask import fill_mask
    from bertjax.checkpoints.pretrained import load_pretrained

    model = load_pretrained(args.model)
    if not 1 <= args.top_k <= model.config.vocab_size:
        raise ValueError(f"--top-k must be in [1, {model.config.vocab_size}] (the vocabulary "
                         f"size), got {args.top_k}")
    if model.tokenizer is None:
        raise ValueError(f"{model.folder or name} has no tokenizer files (tokenizer.json or "
                         f"vocab.txt)")
    results = fill_mask(model.params, model.config, model.tokenizer, args.text, args.top_k)
    print(f"model: {model.folder or name}")
    for m, predictions in enumerate(results):
        print(f"{model.tokenizer.mask_token} {m + 1} of {len(results)} "
              f"(token position {predictions[0]['position']}):")
        width = max(len(p["token"]) for p in predictions)
        for rank, p in enumerate(predictions, 1):
            print(f"  {rank:>2}. {p['token']:<{width}}  {p['score']:.4f}  {p['sequence']}")
    return 0
