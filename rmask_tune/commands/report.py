"""``rmask-tune report``: results table, LR sensitivity, the optimal-LR law and compute of a sweep."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.report import build_report
    from rmask_tune.law import load_law

    out = build_report(args.source, args.tracking_uri, args.out, overwrite=args.overwrite,
                       bootstrap=args.bootstrap, seed=args.seed, versus=args.versus)
    law = load_law(out / "law.json")
    for name, fit in [*sorted(law.models.items()), ("pooled", law.pooled)]:
        if fit is not None:
            print(f"law {name}: lr* = 10^{fit.a:.2f} * ratio^{fit.b:.3f} "
                  f"(b 95% CI [{fit.b_ci[0]:.3f}, {fit.b_ci[1]:.3f}], R² {fit.r2:.3f}, {len(fit.points)} points)")
    print(f"report written to {out / 'index.html'}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    report = sub.add_parser("report", help="write an HTML/Markdown report and law.json for a sweep")
    report.add_argument("source", help="experiment name, sweep folder (holding mlflow.db) or sweep YAML")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's own store)")
    report.add_argument("--out", help="report folder (default: reports/<experiment>)")
    report.add_argument("--overwrite", action="store_true", help="replace the files of an existing report folder")
    report.add_argument("--versus", metavar="SWEEP",
                        help="another sweep (name, folder or YAML) to compare with on the cells both ran, "
                             "e.g. the full grid behind a law-guided sweep")
    report.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the law's intervals")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    report.set_defaults(run=_run)
