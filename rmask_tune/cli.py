"""The ``rmask-tune`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from rmask_tune.errors import RmaskError


def _bench(args: argparse.Namespace) -> None:
    from rmask_tune.bench import format_table, run_bench
    from rmask_tune.models import load_model

    model = load_model(args.model)
    rows = run_bench(model, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = argparse.ArgumentParser(prog="rmask-tune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time one training step per method against the frozen floor")
    bench.add_argument("--model", default="tiny-llama")
    bench.add_argument("--batch-size", type=int, default=8)
    bench.add_argument("--seq-len", type=int, default=64)
    bench.add_argument("--rounds", type=int, default=5)
    bench.add_argument("--json", action="store_true", help="print rows as JSON")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except RmaskError as err:
        print(f"rmask-tune: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
