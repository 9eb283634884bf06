"""Writes a tiny random transformers BERT checkpoint (any head), for trying the converter out.

The model is built and saved by transformers itself (`save_pretrained`), with torch.manual_seed(SEED)
and BERT's own initialisation, or every parameter drawn from N(0, 1) with --random-all (so that no
wrong tensor can pass for the right one). `--format bin` writes the pickled `pytorch_model.bin` of
older transformers versions; `--legacy` renames it to the Google-ported naming (LayerNorm
gamma/beta, a position_ids buffer). A small WordPiece tokenizer comes with it (`vocab.txt` of exactly
vocab_size=101 entries, generated: the special tokens, a few words, every letter and digit alone and
as a `##` continuation, so that any lowercase English text tokenizes, mostly into letters), so the
folder and its conversion work with `bertjax inspect` and `bertjax fill-mask` (texts of at most 11
tokens: max_position_embeddings is 13). `--no-tokenizer` leaves it out.

Usage:
  python conversion/make_tiny_checkpoint.py OUT [--head mlm] [--format bin] [--untied] ...
  bertjax convert OUT OUT-jax --verify
  bertjax inspect "The cat sat on the mat." --model OUT-jax
"""

from __future__ import annotations

import argparse
import os

HEADS = {"model": "BertModel", "mlm": "BertForMaskedLM", "pretraining": "BertForPreTraining",
         "classifier": "BertForSequenceClassification"}
# Every axis a different size (as in the tests): V=101, D=15, N=3, I=37, L=4; P=13, Y=3.
TINY = {"vocab_size": 101, "hidden_size": 15, "num_hidden_layers": 4, "num_attention_heads": 3,
        "intermediate_size": 37, "max_position_embeddings": 13, "type_vocab_size": 3}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as in BERT's own vocabularies
WORDS = ["the", "cat", "sat", "on", "mat", "because", "it", "was", "tired", "dog", "is", "of", "an",
         "and", "paris", "france", "capital", "lovely", "in", "to", "he", "she", "city", "big",
         "small", "red", "saw", "ran"]
PUNCTUATION = list(".,!?'-")


def vocabulary() -> list[str]:
    """The generated WordPiece vocabulary: vocab_size entries, every one distinct."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    digits = [str(d) for d in range(10)]
    vocab = SPECIAL + WORDS + PUNCTUATION + letters + digits + [f"##{c}" for c in letters]
    assert len(vocab) == len(set(vocab)) == TINY["vocab_size"], len(vocab)
    return vocab


def save_tokenizer(out: str) -> None:
    """vocab.txt and the BertTokenizer's files (tokenizer_config.json, special_tokens_map.json)."""
    import transformers

    path = os.path.join(out, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(vocabulary()) + "\n")
    tokenizer = transformers.BertTokenizer(vocab=path, do_lower_case=True,
                                           model_max_length=TINY["max_position_embeddings"])
    tokenizer.save_pretrained(out)


def build(head: str, untied: bool, pooler: bool, num_labels: int, seed: int, random_all: bool):
    import torch
    import transformers

    config = transformers.BertConfig(**TINY, tie_word_embeddings=not untied, num_labels=num_labels)
    torch.manual_seed(seed)
    extra = {} if head != "model" else {"add_pooling_layer": pooler}
    model = getattr(transformers, HEADS[head])(config, **extra).eval()
    if random_all:
        with torch.no_grad():
            for p in model.parameters():  # tied parameters are listed once and stay tied
                p.normal_()
    return model


def legacy_names(state: dict) -> dict:
    """The Google-ported naming: LayerNorm gamma/beta and a position_ids buffer."""
    import torch

    out = {}
    for key, tensor in state.items():
        if ".LayerNorm." in key:
            key = key.replace(".weight", ".gamma").replace(".bias", ".beta")
        out[key] = tensor
    prefix = "bert." if any(k.startswith("bert.") for k in state) else ""
    out[f"{prefix}embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    return out


def save(model, out: str, fmt: str, legacy: bool, shard: str | None) -> None:
    import torch

    model.save_pretrained(out, **({"max_shard_size": shard} if shard else {}))
    if fmt == "bin" or legacy:
        for name in os.listdir(out):
            if name.endswith((".safetensors", ".safetensors.index.json")):
                os.remove(os.path.join(out, name))
        state = model.state_dict()
        torch.save(legacy_names(state) if legacy else state, os.path.join(out, "pytorch_model.bin"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT")
    parser.add_argument("--head", choices=HEADS, default="mlm")
    parser.add_argument("--format", choices=("safetensors", "bin"), default="safetensors")
    parser.add_argument("--untied", action="store_true", help="tie_word_embeddings=false")
    parser.add_argument("--no-pooler", action="store_true", help="BertModel without its pooler")
    parser.add_argument("--num-labels", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--random-all", action="store_true", help="every parameter from N(0, 1)")
    parser.add_argument("--legacy", action="store_true", help="Google-ported names, as a .bin")
    parser.add_argument("--shard", metavar="SIZE", help="max_shard_size, e.g. 20KB (safetensors)")
    parser.add_argument("--no-tokenizer", action="store_true", help="write the weights only")
    args = parser.parse_args(argv)
    model = build(args.head, args.untied, not args.no_pooler, args.num_labels, args.seed,
                  args.random_all)
    save(model, args.out, args.format, args.legacy, args.shard)
    if not args.no_tokenizer:
        save_tokenizer(args.out)
    print(f"wrote a tiny {HEADS[args.head]} to {args.out}: {', '.join(sorted(os.listdir(args.out)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
