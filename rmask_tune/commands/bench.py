"""``rmask-tune bench``: time one training step per method against the frozen floor, interleaved."""

from __future__ import annotations

import argparse
import json
import sys

from rmask_tune.errors import RmaskError
from rmask_tune.heads import IMAGE_CLASSIFICATION, TRAINABLE_HEADS, ZERO_SHOT_IMAGE

# A zero-shot head is frozen: a CLIP model is timed as its image tower under a linear head.
HEAD_CHOICES = ("auto", *(name for name in TRAINABLE_HEADS if name != ZERO_SHOT_IMAGE.name))


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.bench import BENCH_METHODS, RM_RATIOS, bench_cases, format_table, run_bench
    from rmask_tune.bench_profile import format_crossover, layer_crossover
    from rmask_tune.masking.backends import BACKENDS
    from rmask_tune.masking.layer import PATHS
    from rmask_tune.models import default_head, load_model

    bad_path = [p for p in args.paths if p not in PATHS]
    if bad_path:
        raise RmaskError(f"unknown path '{bad_path[0]}'; choose from {', '.join(PATHS)}")
    bad_backend = [b for b in args.backends or () if b not in BACKENDS]
    if bad_backend:
        raise RmaskError(f"unknown backend '{bad_backend[0]}'; choose from {', '.join(BACKENDS)}")
    ratios = args.ratios or RM_RATIOS
    cases = bench_cases(ratios, args.paths, args.methods or BENCH_METHODS, args.backends)
    head = default_head(args.model) if args.head == "auto" else args.head
    if head == ZERO_SHOT_IMAGE.name:
        head = IMAGE_CLASSIFICATION.name
    model = load_model(args.model, head=head)
    print(f"bench: {args.model} as {type(model).__name__} ({head} head), {len(cases)} cases x {args.rounds} rounds",
          file=sys.stderr)  # fmt: skip
    result = run_bench(model, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds,
                       precision=args.precision, cases=cases, profile_steps=args.profile_steps if args.profile else 0)
    crossover = None
    if args.profile:
        from rmask_tune.masking import apply_random_masking, masked_layers

        apply_random_masking(model, ratio=max(ratios))
        shape = max((layer.mask.rmask_shape for layer in masked_layers(model).values()), key=lambda s: s[0] * s[1])
        rows = args.batch_size * args.seq_len
        crossover = (shape, rows, layer_crossover(shape, rows, (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)))
    if args.json:
        out = result.to_dict()
        if crossover:
            out["crossover"] = {"shape": crossover[0], "rows": crossover[1],
                                "points": [vars(p) for p in crossover[2]]}  # fmt: skip
        print(json.dumps(out, indent=1))
    else:
        print(format_table(result))
        if crossover:
            print("\n" + format_crossover(*crossover))


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
    bench.add_argument("--rounds", type=int, default=15, help="interleaved rounds (each steps every method once)")
    bench.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                       help="precision policy of every method's copy (rmask_tune/precision.py)")
    bench.add_argument("--methods", type=_names, default=None,
                       help="comma-separated subset of: floor, random_masking, structured_masking, lora, shira, "
                            "full, dense_mask (default: all)")  # fmt: skip
    bench.add_argument("--ratios", type=_floats, default=None, help="Random Masking ratios (default 1e-2,1e-3,1e-4,1e-5)")
    bench.add_argument("--paths", type=_names, default=("auto",),
                       help="Random Masking paths to time, comma-separated: auto, dense, sparse, inplace (default auto)")
    bench.add_argument("--backends", type=_names, default=None,
                       help="value-gradient backends to time, comma-separated: auto, torch, numba, spops (default auto)")
    bench.add_argument("--profile", action="store_true",
                       help="also profile each Random Masking case by stage, and time one layer's dense and sparse "
                            "paths over a density grid (the crossover of the auto path's cost model)")  # fmt: skip
    bench.add_argument("--profile-steps", type=int, default=3, help="steps profiled per Random Masking case")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
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
