"""``rmask-tune bench``: time one training step per method against the frozen floor."""

from __future__ import annotations

import argparse
import json
import sys

HEAD_CHOICES = ("auto", "causal-lm", "sequence-classification", "image-classification")


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.bench import format_table, run_bench
    from rmask_tune.models import default_head, load_model

    head = default_head(args.model) if args.head == "auto" else args.head
    if head == "zero-shot-image":  # CLIP: time its image tower under a linear head (the zero-shot head is frozen)
        head = "image-classification"
    model = load_model(args.model, head=head)
    print(f"bench: {args.model} as {type(model).__name__} ({head} head)", file=sys.stderr)
    rows = run_bench(model, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds, precision=args.precision)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    bench = sub.add_parser("bench", help="time one training step per method against the frozen floor")
    bench.add_argument("--model", default="tiny-llama")
    bench.add_argument(
        "--head",
        choices=HEAD_CHOICES,
        default="auto",
        help="auto: causal-lm for decoders, sequence-classification for encoders, image-classification for ViT",
    )
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--seq-len", type=int, default=64)
    bench.add_argument("--rounds", type=int, default=5)
    bench.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="precision policy of every method's copy (rmask_tune/precision.py)")
    bench.add_argument("--json", action="store_true", help="print rows as JSON")
    bench.set_defaults(run=_run)
    register_search(bench.add_subparsers(dest="bench_command", metavar="search"))


def _run_search(args: argparse.Namespace) -> None:
    from rmask_tune.report.search_replay import format_replay, replay

    summaries = replay([args.export, *args.also], repeats=args.repeats)
    if args.json:
        print(json.dumps([s.to_dict() for s in summaries], indent=1))
    else:
        print(format_replay(summaries))


def register_search(sub: argparse._SubParsersAction) -> None:
    """Add ``bench search``: LR searchers replayed against committed sweep exports."""
    search = sub.add_parser(
        "search", help="replay LR searchers (full grid, random, Optuna TPE, --lr-from, the law searcher) against "
                       "sweep exports, without training",
        description="Answer each searcher's proposed (cell, LR, seed) with the recorded trial of the exports and "
                    "score its choices against the full grid's (docs/searcher.md).")
    search.add_argument("export", help="a sweep export (sweep-export.json.gz)")
    search.add_argument("--also", action="append", default=[], metavar="EXPORT",
                        help="another export to replay (repeatable); every export's law is part of the priors")
    search.add_argument("--repeats", type=int, default=10, help="seeds of the randomised searchers (default 10)")
    search.add_argument("--json", action="store_true",
                        help="one object per searcher and prior mode (totals over the Random Masking rows, per_row)")
    search.set_defaults(run=_run_search)
