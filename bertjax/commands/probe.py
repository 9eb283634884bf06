"""`bertjax probe CONLLU`: per-layer probes on a CoNLL-U treebank, printed as a table.

Tasks: `upos` and `deprel` (a linear probe per layer on each word's feature, Tenney et al. /
Liu et al. 2019; `--control` adds Hewitt & Liang's control task and selectivity), `distance` and
`depth` (Hewitt & Manning's structural probes: UUAS / root accuracy and Spearman). Layer 0 is the
embeddings' output, layer l encoder layer l's.
"""

from __future__ import annotations

import argparse
import json

TASKS = ("upos", "deprel", "distance", "depth")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe", help="train a probe per layer on a CoNLL-U treebank and print a per-layer table",
        description="Reads CONLLU, computes every layer's word features (first subword piece) and "
                    "trains one probe per layer, all layers at once; prints held-out scores per "
                    "layer. With no --model: the offline default model (all-MiniLM-L6-v2).")
    p.add_argument("conllu", metavar="CONLLU", help="a CoNLL-U file (Universal Dependencies)")
    p.add_argument("--model", "-m", help="a converted folder, a Hugging Face folder or a hub id")
    p.add_argument("--task", choices=TASKS, default="upos", help="what to probe for")
    p.add_argument("--layers", help="comma-separated layers, 0 = embeddings (default: all)")
    p.add_argument("--control", action="store_true",
                   help="also train on a control task (upos/deprel) and report selectivity")
    p.add_argument("--pool", choices=("first", "mean", "last"), default="first",
                   help="which subword pieces make a word's feature")
    p.add_argument("--max-sentences", type=int, help="use the first N sentences only")
    p.add_argument("--rank", type=int, default=64, help="structural probes' rank")
    p.add_argument("--C", type=float, default=1.0, dest="C", metavar="FLOAT",
                   help="inverse L2 strength of the linear probes, as C in sklearn's LogisticRegression")
    p.add_argument("--seed", type=int, default=0, help="held-out split, control task, init")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def parse_layers(text: str | None, n: int) -> list[int]:
    """--layers "0,3,-1" -> indices in 0..n-1 (negative from the end)."""
    if not text:
        return list(range(n))
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--layers must be comma-separated integers, got {text!r}") from None
    bad = [x for x in layers if not -n <= x < n]
    if bad or not layers:
        raise ValueError(f"--layers must be in 0..{n - 1} (0 the embeddings), got {text!r}")
    return [x % n for x in layers]


def run(args: argparse.Namespace) -> int:
    from bertjax.checkpoints.pretrained import load_pretrained
    from bertjax.probing.sentences import sentence_features
    from bertjax.probing.treebank import read_conllu

    sentences = read_conllu(args.conllu)[:args.max_sentences]
    if len(sentences) < 5:
        raise ValueError(f"{args.conllu} has {len(sentences)} sentences: probing needs at least 5")
    model = load_pretrained(args.model)
    if model.tokenizer is None:
        raise ValueError(f"{args.model} has no tokenizer files (vocab.txt or tokenizer.json)")
    layers = parse_layers(args.layers, model.config.num_layers + 1)
    feats = sentence_features(model.params, model.config, model.tokenizer,
                              [s.words for s in sentences], pool=args.pool,
                              progress=not args.no_progress)
    feats = [f[layers] for f in feats]
    bar = _bar(args, 2 if args.control and args.task in ("upos", "deprel") else 1)
    if args.task in ("upos", "deprel"):
        rows = _classify(args, sentences, feats, bar)
    else:
        rows = _structural(args, sentences, feats)
        bar.update(1)
    bar.close()
    result = {"task": args.task, "model": model.folder or args.model, "sentences": len(sentences),
              "words": int(sum(len(s.words) for s in sentences)),
              "layers": [dict(layer=layer, **{k: float(v[i]) for k, v in rows.items()})
                         for i, layer in enumerate(layers)]}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(format_table(result))
    return 0


def _bar(args, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training", unit="probe", disable=args.no_progress)


def _classify(args, sentences, feats, bar) -> dict:
    import numpy as np

    from bertjax.probing.control import control_labels
    from bertjax.probing.linear import probe_layers

    tags = [t for s in sentences for t in (s.upos if args.task == "upos" else s.deprels)]
    names = sorted(set(tags))
    labels = np.array([names.index(t) for t in tags], np.int64)
    x = np.concatenate(feats, axis=1)  # [L, N, D]
    control = None
    if args.control:
        words = [w.lower() for s in sentences for w in s.words]
        control = control_labels(words, labels, args.seed)
    r = probe_layers(x, labels, control=control, seed=args.seed, C=args.C)
    bar.update(2 if args.control else 1)
    rows = {"accuracy": r.accuracy}
    if control is not None:
        rows.update(control=r.control_accuracy, selectivity=r.selectivity)
    return rows


def _structural(args, sentences, feats) -> dict:
    from bertjax.probing.structural import depth_probe, distance_probe

    probe = distance_probe if args.task == "distance" else depth_probe
    r = probe(feats, [s.heads for s in sentences], rank=args.rank, seed=args.seed,
              upos=[s.upos for s in sentences])
    first = ("uuas", r.uuas) if args.task == "distance" else ("root_accuracy", r.root_accuracy)
    return dict([first, ("spearman", r.spearman)])


def format_table(result: dict) -> str:
    """The per-layer table of `run`'s result."""
    cols = [k for k in result["layers"][0] if k != "layer"]
    lines = [f"{result['task']} probe: {result['sentences']} sentences, {result['words']} words, "
             f"model {result['model']}", "layer  " + "  ".join(f"{c:>12}" for c in cols)]
    for row in result["layers"]:
        lines.append(f"{row['layer']:>5}  " + "  ".join(f"{row[c]:>12.4f}" for c in cols))
    return "\n".join(lines)
