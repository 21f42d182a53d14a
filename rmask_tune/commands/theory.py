"""``rmask-tune theory``: simulate the paper's linear-regression analysis of Random Masking."""

from __future__ import annotations

import argparse
import json


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.outputs import output_paths, parse_ratios, write_json
    from rmask_tune.analysis.theory import format_table, plot, simulate

    ratios = parse_ratios(args.ratios)
    paths = output_paths(args.out, ["theory.json", "theory.png"]) if args.out else None
    result = simulate(args.n, args.d, ratios, args.seed, margin=args.margin)
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_table(result))
    if paths:
        write_json(paths[0], result.to_dict())
        plot(result, paths[1])
        if not args.json:
            print(f"wrote {paths[0]} and {paths[1]}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``theory`` subcommand."""
    theory = sub.add_parser(
        "theory",
        help="simulate masked overparameterized linear regression: spectra, stable LRs, solution norms",
        description="Random masks on the features of an overparameterized linear regression (d > n): compares "
        "the masked Gram spectrum with p times the unmasked one (Thm 5.1), runs gradient descent just below "
        "and above 2/lambda_max (Prop 5.2) and reports the norm of the solution it reaches (Prop 5.3).",
    )
    theory.add_argument("--n", type=int, default=50, help="samples (default 50)")
    theory.add_argument("--d", type=int, default=400, help="features, more than --n (default 400)")
    theory.add_argument("--ratios", default="1,0.5,0.2,0.1,0.05", help="mask ratios p, comma-separated")
    theory.add_argument("--seed", type=int, default=0)
    theory.add_argument("--margin", type=float, default=0.02, help="GD runs at (1 -+ margin) * 2/lambda_max")
    theory.add_argument("--out", help="folder for theory.json and theory.png (never overwritten)")
    theory.add_argument("--json", action="store_true", help="print the result as JSON")
    theory.set_defaults(run=_run)
