"""`bertjax inspect [TEXT]`: tokens, activation shapes and an attention table of one run."""

from __future__ import annotations

import argparse

SAMPLE_TEXT = "The cat sat on the mat because it was tired."
DEFAULT_CAPTURE = "embed.*,attn.*,mlp.*,layer.out"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="run the model on TEXT and show tokens, activation shapes and attention",
        description="Runs the model on TEXT and prints its tokens, the shape of every captured "
                    "activation and the attention table of one layer (one head, or the mean over "
                    "heads). With no --model: the offline default model (all-MiniLM-L6-v2).")
    p.add_argument("text", metavar="TEXT", nargs="?", default=SAMPLE_TEXT,
                   help=f"the input (default: {SAMPLE_TEXT!r})")
    p.add_argument("--pair", metavar="TEXT_B", help="a second sentence (token type 1)")
    p.add_argument("--model", "-m", help="a converted folder, a Hugging Face folder or a hub id")
    p.add_argument("--layer", type=int, default=-1, help="layer of the table (default: last)")
    p.add_argument("--head", type=int, help="head of the table (default: mean over heads)")
    p.add_argument("--capture", default=DEFAULT_CAPTURE,
                   help="comma-separated activation names or globs, or 'all' "
                        f"(default: {DEFAULT_CAPTURE})")
    p.add_argument("--html", metavar="FILE",
                   help="write the standalone head view page to FILE (showing --head alone when given)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertjax.analysis.tables import check_index
    from bertjax.checkpoints.pretrained import load_pretrained
    from bertjax.model.capture import ATTN_PROBS, EVERY_NAME

    model = load_pretrained(args.model)
    if model.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files (vocab.txt or tokenizer.json)")
    config = model.config
    layer = check_index("layer", args.layer, config.num_layers)
    if args.head is not None:
        check_index("head", args.head, config.num_attention_heads)
    names = _capture_names(model.params, args.capture, config)
    tokens, types, acts = _run_model(model, args.text, args.pair, names | {ATTN_PROBS})
    print(f"model: {model.folder or args.model} ({config.num_layers} layers x "
          f"{config.num_attention_heads} heads, hidden {config.hidden_size})")
    print(f"tokens ({len(tokens)}): {' '.join(tokens)}")
    print("activations:")
    for name in (n for n in EVERY_NAME if n in names):
        print(f"  {name:<18}{str(tuple(acts[name].shape)):<24}{acts[name].dtype}")
    _print_table(acts[ATTN_PROBS], tokens, layer, args.head)
    if args.html:
        _write_html(args.html, acts[ATTN_PROBS], tokens, types, layer, args.head)
    return 0


def _capture_names(params: dict, capture: str, config=None) -> frozenset[str]:
    """--capture ("a,b*,all") resolved against the model (its family and heads)."""
    from bertjax.model.capture import resolve
    from bertjax.model.params import Heads

    heads = Heads.of(params)
    return resolve([n.strip() for n in capture.split(",") if n.strip()],
                   has_pooler=heads.pooler, has_mlm=heads.mlm, config=config,
                   heads=None if config is None else heads)


def _run_model(model, text: str, pair: str | None, names: frozenset[str]):
    """Tokenizes TEXT (and the pair) and runs the model; returns tokens, token types [1, S], acts."""
    import numpy as np

    import bertjax
    from bertjax.analysis.tables import tokens_for

    encoded = model.tokenizer(text, pair, return_tensors="np")
    ids = encoded["input_ids"].astype(np.int32)  # [1, S]
    types = np.asarray(encoded.get("token_type_ids", np.zeros_like(ids)), np.int32)  # [1, S]
    out = bertjax.forward(model.params, ids, model.config,
                          types if model.config.has_token_types else None, capture=names)
    return tokens_for(model.tokenizer, ids[0]), types, out.acts


def _print_table(probs, tokens, layer: int, head: int | None) -> None:
    """The attention table, rounded, with every column shown whatever the terminal width."""
    from bertjax.analysis.tables import attention_table

    try:
        table = attention_table(probs, tokens, layer=layer, head=head)
    except ImportError as e:
        raise ValueError(str(e)) from e
    which = "mean over heads" if head is None else f"head {head}"
    print(f"attention, layer {layer}, {which} (rows: queries, columns: keys):")
    print(table.to_string(float_format=lambda x: f"{x:.2f}", line_width=None))


def _write_html(path: str, probs, tokens, types, layer: int, head: int | None) -> None:
    from bertjax.analysis.views import save_head_view, sentence_b_start

    save_head_view(path, probs, tokens, layer=layer, head=head,
                   sentence_b_start=sentence_b_start(types), title="bertjax inspect: " + " ".join(tokens))
    print(f"wrote head view to {path}")
