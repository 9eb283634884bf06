"""`bertjax finetune`: fine-tune a model on a .jsonl file; resumable; saves a folder bertjax.load reads."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a model for classification, token labels or MLM (resumable)",
        description="FILE.jsonl holds one JSON object a line: classification {\"text\", optional "
                    "\"text_pair\", \"label\"} (label a name or an integer); tokens {\"tokens\": "
                    "[words], \"labels\": [one per word]}; mlm {\"text\"}. Checkpoints go to OUT; "
                    "rerun the same command to resume after an interruption. The fine-tuned model "
                    "is written to OUT/model (read it with bertjax.load), the per-step loss and "
                    "per-epoch metrics to OUT/history.json.")
    p.add_argument("--model", help="model folder, file or hub id (default: the offline MiniLM)")
    p.add_argument("--train", required=True, metavar="FILE.jsonl", help="the training examples")
    p.add_argument("--eval", metavar="FILE.jsonl", help="evaluated after every epoch")
    p.add_argument("--task", required=True, choices=("classification", "tokens", "mlm"),
                   help="sequence labels, one label per word, or masked-language modelling")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="checkpoints, OUT/model and OUT/history.json (rerun to resume)")
    p.add_argument("--epochs", type=int, default=3, help="passes over the training file")
    p.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    p.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW)")
    p.add_argument("--warmup", type=float, default=0.1,
                   help="fraction of the optimizer steps with a linear warm-up (then linear decay)")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (not on biases and LayerNorm)")
    p.add_argument("--clip-norm", type=float, default=1.0, help="max global gradient norm")
    p.add_argument("--max-length", type=int,
                   help="tokens per example, cut beyond (default: the model's, <= 512)")
    p.add_argument("--seed", type=int, default=0, help="head init, shuffling, masking, dropout")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="batches whose gradients are averaged into one update")
    p.add_argument("--bf16", action="store_true",
                   help="forward and backward in bfloat16 (float32 master weights)")
    p.add_argument("--text-field", help="field of the text (default: text; tokens for --task tokens)")
    p.add_argument("--pair-field", default="text_pair", help="field of an optional second text")
    p.add_argument("--label-field", help="field of the label (default: label; labels for tokens)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS",
                   help="steps between checkpoints (there is always one at each epoch end)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bertjax.training.finetune import Options, finetune, summary_line

    opts = Options(train=args.train, out=args.out, task=args.task, model=args.model,
                   eval=args.eval, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   warmup=args.warmup, weight_decay=args.weight_decay, clip_norm=args.clip_norm,
                   max_length=args.max_length, seed=args.seed, grad_accum=args.grad_accum,
                   bf16=args.bf16, text_field=args.text_field, pair_field=args.pair_field,
                   label_field=args.label_field, checkpoint_every=args.checkpoint_every)
    print(summary_line(finetune(opts, progress=not args.no_progress, log=print)))
    return 0
