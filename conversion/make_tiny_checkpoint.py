"""Writes a tiny random transformers checkpoint of any family and head, for trying bertjax out offline.

`--family` (bert, roberta, xlm-roberta, camembert, distilbert, electra, albert, mpnet, deberta-v2,
modernbert) picks the architecture: BERT's own tiny config below, or the family's tiny reference
config of shared/FAMILY_NOTES.md, with a real tokenizer of the family's kind built offline (no
training, no hub: every piece generated, so that the folder is the same on every run): WordPiece for
BERT/DistilBERT/ELECTRA (`vocabulary()`) and MPNet (its `<s> <pad> </s>` ids and `<mask>` last),
byte-level BPE for RoBERTa (vocab.json + merges.txt + tokenizer.json: the 256 byte symbols, one
merge chain per word, `<s> <pad> </s> <unk>` at ids 0-3 and `<mask>` last, as roberta-base) and for
ModernBERT (the same pieces through `PreTrainedTokenizerFast`, `[UNK] [CLS] [SEP] [PAD] [MASK]`
after them as in ModernBERT-base, their ids in the config), and a SentencePiece-style Unigram
(tokenizer.json, scores favouring whole words) for XLM-R, CamemBERT, ALBERT and DeBERTa-v2
(`[PAD] [CLS] [SEP] [UNK]` at ids 0-3 and `[MASK]` last, as deberta-v3-base), saved through the
family's own tokenizer class with its special tokens at the family's ids. The config's vocab_size is
the tokenizer's size. `--variant` picks a family's other config form: DeBERTa-v2's is a v3 config
(relative attention with position buckets, shared attention keys, no absolute positions) unless
`--variant v2-xlarge` (separate position keys, the convolution layer, absolute positions, token
types, E=19 embeddings projected to D, the legacy MLM head). `build_family(out, family, head)` does
it from Python (the tests' `family_checkpoint` fixture).

The BERT checkpoint (the default family) is described next.

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
  python conversion/make_tiny_checkpoint.py OUT [--family roberta] [--head mlm] [--format bin] ...
  bertjax convert OUT OUT-jax --verify
  bertjax inspect "The cat sat on the mat." --model OUT-jax
"""

from __future__ import annotations

import argparse
import json
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


FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "albert",
            "mpnet", "deberta-v2", "modernbert")
# --head -> transformers class suffix; "pretraining" only where the family has such a class.
HEAD_SUFFIX = {"model": "Model", "mlm": "ForMaskedLM", "pretraining": "ForPreTraining",
               "classifier": "ForSequenceClassification", "tokens": "ForTokenClassification"}
PRETRAINING = ("bert", "electra", "albert")
# The tiny reference configs of shared/FAMILY_NOTES.md (vocab_size: the tokenizer's size).
_REF = {"hidden_size": 33, "num_attention_heads": 3, "num_hidden_layers": 2,
        "intermediate_size": 47, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
_ROBERTA = {**_REF, "max_position_embeddings": 34, "type_vocab_size": 1, "pad_token_id": 1,
            "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5}
FAMILY_CONFIGS = {
    "roberta": ("Roberta", _ROBERTA),
    "xlm-roberta": ("XLMRoberta", _ROBERTA),
    "camembert": ("Camembert", {**_ROBERTA, "bos_token_id": 5, "eos_token_id": 6}),
    "distilbert": ("DistilBert", {"dim": 33, "n_heads": 3, "n_layers": 2, "hidden_dim": 47,
                                  "max_position_embeddings": 29, "dropout": 0.0,
                                  "attention_dropout": 0.0, "pad_token_id": 0}),
    "electra": ("Electra", {**_REF, "embedding_size": 19, "max_position_embeddings": 29}),
    "albert": ("Albert", {**_REF, "embedding_size": 19, "num_hidden_layers": 4,
                          "num_hidden_groups": 2, "inner_group_num": 2, "hidden_act": "gelu_new",
                          "max_position_embeddings": 29, "pad_token_id": 0, "bos_token_id": 2,
                          "eos_token_id": 3}),
    "mpnet": ("MPNet", {**_REF, "max_position_embeddings": 34, "pad_token_id": 1,
                        "bos_token_id": 0, "eos_token_id": 2, "layer_norm_eps": 1e-5,
                        "relative_attention_num_buckets": 32}),
    # tests/model/modern_ref.py's DEBERTA_V3 and MODERNBERT (special token ids: the tokenizer's)
    "deberta-v2": ("DebertaV2", {**_REF, "max_position_embeddings": 29, "type_vocab_size": 0,
                                 "relative_attention": True, "pos_att_type": "p2c|c2p",
                                 "position_buckets": 8, "max_relative_positions": -1,
                                 "norm_rel_ebd": "layer_norm", "share_att_key": True,
                                 "position_biased_input": False, "layer_norm_eps": 1e-7,
                                 "legacy": False, "pad_token_id": 0}),
    "modernbert": ("ModernBert", {"hidden_size": 36, "num_attention_heads": 3,
                                  "num_hidden_layers": 4, "intermediate_size": 47,
                                  "max_position_embeddings": 64, "local_attention": 6,
                                  "layer_types": ["full_attention", "sliding_attention",
                                                  "sliding_attention", "full_attention"]}),
}
# --variant: a family's other config forms, as changes to its FAMILY_CONFIGS entry (the first
# variant is the entry itself). DeBERTa-v2-xlarge: tests/model/modern_ref.py's DEBERTA_V2XL.
VARIANTS = {"deberta-v2": {"v3": {}, "v2-xlarge": {
    "type_vocab_size": 2, "share_att_key": False, "position_biased_input": True,
    "conv_kernel_size": 3, "conv_act": "gelu", "embedding_size": 19, "legacy": True}}}
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
DIGITS = [str(d) for d in range(10)]


def mpnet_vocabulary() -> list[str]:
    """MPNet's WordPiece vocabulary: `<s> <pad> </s>` at 0-2 (pad id 1, as MPNet hard-codes),
    [UNK], the words and characters of `vocabulary()`, and `<mask>` last (as mpnet-base)."""
    return (["<s>", "<pad>", "</s>", "[UNK]"] + WORDS + PUNCTUATION + LETTERS + DIGITS
            + [f"##{c}" for c in LETTERS] + ["<mask>"])


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE's 256 base symbols, in its order)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def bpe_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE (vocab, merges): `<s> <pad> </s> <unk>` at 0-3, the 256 byte symbols, one
    merge chain per word with its leading space (Ġ; chains that only ever extend a Ġ piece, so that
    no word's merges cut into another's: a text's first word, having no space, stays in bytes),
    `<mask>` last (as roberta-base)."""
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    for char in bytes_to_unicode().values():
        vocab[char] = len(vocab)
    merges = []
    for word in WORDS:
        piece = "\u0120"
        for char in word:
            if piece + char not in vocab:
                merges.append((piece, char))
                vocab[piece + char] = len(vocab)
            piece += char
    vocab["<mask>"] = len(vocab)
    return vocab, merges


def unigram_pieces(lowercase: bool) -> list[tuple[str, float]]:
    """SentencePiece-style Unigram pieces (piece, log-probability): whole words (with the ▁ word
    start) most likely, then single characters alone and word-initial, so any text of letters,
    digits and punctuation tokenizes (uppercase letters too unless `lowercase`)."""
    chars = LETTERS + ([] if lowercase else [c.upper() for c in LETTERS]) + DIGITS + PUNCTUATION
    pieces = [("\u2581", -2.0)] + [("\u2581" + w, -1.0 - 0.01 * i) for i, w in enumerate(WORDS)]
    pieces += [(c, -6.0 - 0.01 * i) for i, c in enumerate(chars)]
    pieces += [("\u2581" + c, -7.0 - 0.01 * i) for i, c in enumerate(LETTERS)]
    return pieces


# Unigram families: (special tokens before the pieces, after them) at the family's ids.
UNIGRAM_SPECIALS = {
    "xlm-roberta": (["<s>", "<pad>", "</s>", "<unk>"], ["<mask>"]),
    "camembert": (["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED", "<s>", "</s>"],
                  ["<mask>"]),
    "albert": (["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], []),
    "deberta-v2": (["[PAD]", "[CLS]", "[SEP]", "[UNK]"], ["[MASK]"]),
}
# ModernBERT's special tokens after the byte-level pieces (ModernBERT-base's order) and the
# config fields naming their ids.
MODERNBERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
MODERNBERT_IDS = {"pad_token_id": "[PAD]", "cls_token_id": "[CLS]", "sep_token_id": "[SEP]",
                  "bos_token_id": "[CLS]", "eos_token_id": "[SEP]"}


def modernbert_tokenizer(max_length: int):
    """ModernBERT's byte-level BPE (`bpe_vocabulary`'s pieces without RoBERTa's specials, then
    MODERNBERT_SPECIALS) as a `PreTrainedTokenizerFast`: `[CLS] text [SEP]`, pairs `[CLS] a [SEP]
    b [SEP]`, `[MASK]` taking the space before it, as ModernBERT-base's tokenizer.json."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, processors

    vocab, merges = bpe_vocabulary()
    pieces = [t for t in vocab if t not in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")]
    vocab = {t: i for i, t in enumerate(pieces + list(MODERNBERT_SPECIALS))}
    bpe = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[(t, vocab[t]) for t in ("[CLS]", "[SEP]")])
    # [MASK] takes the space before it (lstrip), as in ModernBERT-base
    mask = tokenizers.AddedToken("[MASK]", lstrip=True, special=True)
    bpe.add_special_tokens([t for t in MODERNBERT_SPECIALS if t != "[MASK]"] + [mask])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token=mask, model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"])


def family_tokenizer(family: str, max_length: int):
    """The family's tokenizer, built offline (see the module docstring)."""
    import transformers

    stem = FAMILY_CONFIGS.get(family, ("Bert",))[0]
    if family in ("bert", "distilbert", "electra", "mpnet"):
        words = mpnet_vocabulary() if family == "mpnet" else vocabulary()
        vocab = {w: i for i, w in enumerate(words)}
        return getattr(transformers, f"{stem}Tokenizer")(vocab=vocab, do_lower_case=True,
                                                          model_max_length=max_length)
    if family == "roberta":
        vocab, merges = bpe_vocabulary()
        return transformers.RobertaTokenizer(vocab=vocab, merges=merges,
                                             model_max_length=max_length)
    if family == "modernbert":
        return modernbert_tokenizer(max_length)
    before, after = UNIGRAM_SPECIALS[family]
    pieces = ([(t, 0.0) for t in before] + unigram_pieces(family == "albert")
              + [(t, 0.0) for t in after])
    extra = {"unk_token": "[UNK]"} if family == "deberta-v2" else {}
    return getattr(transformers, f"{stem}Tokenizer")(vocab=pieces, model_max_length=max_length,
                                                      **extra)


def family_fields(family: str, variant: str | None = None) -> tuple[str, dict]:
    """(transformers class stem, config keyword arguments) of a family's tiny config, in its
    `variant` form (VARIANTS; None: the first)."""
    stem, fields = FAMILY_CONFIGS.get(family, ("Bert", TINY))
    forms = VARIANTS.get(family, {})
    if variant is not None and variant not in forms:
        have = (f"{family}'s are {', '.join(forms)}" if forms else
                f"only {', '.join(VARIANTS)} {'has' if len(VARIANTS) == 1 else 'have'} variants")
        raise ValueError(f"--variant {variant!r} is not a variant of {family}: {have}")
    return stem, {**fields, **forms.get(variant, {})}


def build_family(out: str, family: str = "bert", head: str = "mlm", seed: int = 0,
                 num_labels: int = 2, pooler: bool = True, untied: bool = False,
                 random_all: bool = False, variant: str | None = None) -> str:
    """Writes a tiny random `family` model with `head` (HEAD_SUFFIX) and its tokenizer to `out`
    (created); returns `out`. Its vocab_size is the tokenizer's size; `variant` one of the
    family's VARIANTS (None: its first)."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if head not in HEAD_SUFFIX:
        raise ValueError(f"head must be one of {', '.join(HEAD_SUFFIX)}, got {head!r}")
    if head == "pretraining" and family not in PRETRAINING:
        raise ValueError(f"--head pretraining: {family} has no ForPreTraining class; families "
                         f"with one: {', '.join(PRETRAINING)}")
    stem, fields = family_fields(family, variant)
    positions = fields["max_position_embeddings"]
    offset = 2 if family in ("roberta", "xlm-roberta", "camembert", "mpnet") else 0
    tokenizer = family_tokenizer(family, positions - offset)
    if family == "modernbert":
        fields = {**fields, **{k: tokenizer.convert_tokens_to_ids(t)
                               for k, t in MODERNBERT_IDS.items()}}
    config = getattr(transformers, f"{stem}Config")(
        **{**fields, "vocab_size": len(tokenizer)}, num_labels=num_labels,
        tie_word_embeddings=not untied, attn_implementation="eager")
    torch.manual_seed(seed)
    extra = {"add_pooling_layer": False} if head == "model" and not pooler else {}
    model = getattr(transformers, stem + HEAD_SUFFIX[head])(config, **extra).eval()
    if random_all:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if family == "modernbert":  # named as ModernBERT-base names it (transformers 5 writes its
        path = os.path.join(out, "tokenizer_config.json")  # backend's name, TokenizersBackend)
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**settings, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    return out


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
    parser.add_argument("--family", choices=FAMILIES, default="bert")
    parser.add_argument("--head", choices=HEAD_SUFFIX, default="mlm",
                        help="tokens: ForTokenClassification; pretraining: bert, electra, albert")
    parser.add_argument("--variant", help="a family's other config form: deberta-v2 v3 (default) "
                                          "or v2-xlarge")
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
    if args.family != "bert" or args.head == "tokens" or args.variant:
        if args.format != "safetensors" or args.legacy or args.shard or args.no_tokenizer:
            parser.error("--format bin, --legacy, --shard and --no-tokenizer are for --family bert "
                         "without --head tokens")
        try:
            build_family(args.out, args.family, args.head, args.seed, args.num_labels,
                         not args.no_pooler, args.untied, args.random_all, args.variant)
        except ValueError as e:
            parser.error(str(e))
        form = f" {args.variant}" if args.variant else ""
        print(f"wrote a tiny {args.family}{form} ({args.head}) to {args.out}: "
              f"{', '.join(sorted(os.listdir(args.out)))}")
        return 0
    model = build(args.head, args.untied, not args.no_pooler, args.num_labels, args.seed,
                  args.random_all)
    save(model, args.out, args.format, args.legacy, args.shard)
    if not args.no_tokenizer:
        save_tokenizer(args.out)
    print(f"wrote a tiny {HEADS[args.head]} to {args.out}: {', '.join(sorted(os.listdir(args.out)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
