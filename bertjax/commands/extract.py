"""`bertjax extract`: a corpus's activations to disk, sharded over all devices, resumable."""

from __future__ import annotations

import argparse


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers, got {text!r}") from None


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="run a corpus through the model and write activations to disk (resumable)",
        description="INPUT is .txt (one text a line) or .jsonl (a text field, optionally a pair "
                    "field). Empty lines are skipped and counted; texts over --max-length tokens "
                    "are truncated and counted. Run the same command again to resume after an "
                    "interruption. Read the result with bertjax.ActivationStore(OUT): len(store) "
                    "examples in input order; store[i][NAME] is example i's array, padding "
                    "stripped (a per-layer name is [L, S_i, ...], L the --layers kept in the order "
                    "given, every layer without --layers; with --reduce, no S_i axis); "
                    "store.token_ids(i) its token ids; store.line(i) the 1-based input line it "
                    "came from; store.stacked(NAME) every example at once, for probing.")
    p.add_argument("--model", help="model folder, file or hub id (default: the offline MiniLM)")
    p.add_argument("--input", required=True, metavar="FILE", help="the corpus: .txt or .jsonl")
    p.add_argument("--capture", required=True, metavar="NAMES",
                   help="comma-separated activation names or globs (e.g. layer.out,attn.*), or all")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="the folder to write (rerun the same command to resume it)")
    p.add_argument("--layers", type=_ints,
                   help="layers of per-layer names to keep, e.g. 0,5,11, stored in this order "
                        "(store[i][NAME][j] is the j-th layer listed)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--max-length", type=int, help="tokens per text (default: the model's, <= 512)")
    p.add_argument("--reduce", choices=("none", "mean", "cls"), default="none",
                   help="mean: average over real tokens; cls: position 0; none: every token")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the parameters and of the stored activations")
    p.add_argument("--chunk-size", type=int, default=256, help="input lines per committed shard")
    p.add_argument("--text-field", default="text", help=".jsonl field with the text")
    p.add_argument("--pair-field", default="text_pair", help=".jsonl field with an optional pair")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip and count lines that are not UTF-8 (or not valid .jsonl records) "
                        "instead of stopping at the first")
    p.add_argument("--model-axis", type=int, default=1,
                   help="devices sharing one model replica, its large kernels split over them "
                        "(for a model larger than one device; default 1: data parallel only)")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (arguments detected "
                        "on TPU pods, Slurm and Open MPI, else give the three options below); run "
                        "the same command in every process with one shared --out: process i does "
                        "chunks k with k %% count == i on its own devices")
    p.add_argument("--coordinator-address", help="with --distributed: host:port of process 0")
    p.add_argument("--num-processes", type=int, help="with --distributed: how many processes")
    p.add_argument("--process-id", type=int, help="with --distributed: this process, 0..n-1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import transformers

    from bertjax.scale.extract import Options, check_request, extract, summary_line

    transformers.logging.set_verbosity_error()  # we count truncations ourselves
    opts = Options(input=args.input, out=args.out, model=args.model, layers=args.layers,
                   capture=tuple(x.strip() for x in args.capture.split(",") if x.strip()),
                   batch_size=args.batch_size, max_length=args.max_length, reduce=args.reduce,
                   dtype=args.dtype, chunk_size=args.chunk_size, text_field=args.text_field,
                   pair_field=args.pair_field, skip_invalid=args.skip_invalid,
                   model_axis=args.model_axis)
    check_request(opts)  # bad names and options fail before anything starts
    cluster = (args.coordinator_address, args.num_processes, args.process_id)
    if args.distributed:
        import jax

        jax.distributed.initialize(*cluster)
    elif any(x is not None for x in cluster):
        raise ValueError("--coordinator-address, --num-processes and --process-id need "
                         "--distributed")
    summary = extract(opts, progress=not args.no_progress)
    print(summary_line(args.out, summary))
    return 0
