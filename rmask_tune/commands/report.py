"""``rmask-tune report``: results table, LR sensitivity, the optimal-LR law and compute of a sweep."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rmask_tune.law_record import HeldOutStats


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.report import build_report

    report = build_report(args.source, args.tracking_uri, args.out, overwrite=args.overwrite,
                       bootstrap=args.bootstrap, seed=args.seed, versus=args.versus, export=not args.no_export,
                       also=args.also, probes=args.probes)
    law, out = report.law, report.folder
    shared = law.shared
    summaries = law.validation.summary if law.validation is not None else {}
    lines = []
    if shared is None:
        print("no law: no (model, task) has cells that pass the rules at two or more ratios")
    else:
        print(f"law: lr* = 10^offset[model/task] * ratio^{shared.b:.3f} (b 95% CI [{shared.b_ci[0]:.3f}, "
              f"{shared.b_ci[1]:.3f}]; {len(shared.points)} optima of {len(shared.pairs)} pair(s), "
              f"{len(law.excluded)} cell(s) excluded)")
        if shared.g is not None:
            change = ("not identified" if shared.b_change is None else
                      f"{shared.b_change:+.3f} [{shared.b_change_ci[0]:.3f}, {shared.b_change_ci[1]:.3f}]")
            print(f"  budget term: lr* ∝ steps^{shared.g:.3f} (g 95% CI [{shared.g_ci[0]:.3f}, {shared.g_ci[1]:.3f}]) "
                  f"over budgets {shared.steps_range[0]} – {shared.steps_range[1]} steps; change of b per decade of "
                  f"steps: {change}")
        lines = [("leave_one_task_out", "leave-one-task-out"),
                 ("leave_one_task_out_within_model", "leave-one-task-out, from the same model's other tasks"),
                 ("leave_one_task_out_across_models", "leave-one-task-out, from other models"),
                 ("leave_one_ratio_out", "leave-one-ratio-out"),
                 ("leave_one_budget_out", "leave-one-budget-out (the held-out budget's optima out of the fit)"),
                 ("leave_one_budget_out_budget_ignored", "leave-one-budget-out with the budget ignored (no budget term)")]
    calibration = law.probe_calibration
    if calibration is not None:
        held_out = "leave-one-task-out" if law.validation.hessian_predictor.held_out else "in-sample"
        lines.append(("hessian_predictor", f"Hessian predictor c / lambda_max (c {calibration.c:.3g}), {held_out}"))
    if calibration is not None and len(calibration.c_by_model or {}) > 1:
        lines.append(("hessian_predictor_within_model", "Hessian predictor, c from the same model's other tasks"))
    for key, name in lines:
        summary = summaries.get(key)
        if summary:
            law_cells = summary.law_cells
            print(f"  {name}: {_errors(summary)}" + (f"; the law's cells: {_errors(law_cells)}" if law_cells else ""))
    print(f"report written to {out / 'index.html'}")


def _errors(summary: HeldOutStats) -> str:
    return (f"error {summary.mean_error_steps:.2f} grid steps (worst {summary.max_error_steps:.2f}), regret "
            f"{summary.mean_regret:.1f} points (worst {summary.max_regret:.1f}) over {summary.cells} cell(s)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    report = sub.add_parser("report", help="write an HTML/Markdown report and law.json for a sweep")
    report.add_argument("source", help="experiment name, sweep folder (holding mlflow.db), sweep YAML, "
                                       "or a sweep export (sweep-export.json.gz, regenerates its report)")
    report.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's own store)")
    report.add_argument("--out", help="report folder (default: reports/<experiment>)")
    report.add_argument("--overwrite", action="store_true", help="replace the files of an existing report folder")
    report.add_argument("--no-export", action="store_true",
                        help="leave the sweep's export (sweep-export.json.gz) out of the report folder")
    report.add_argument("--versus", metavar="SWEEP",
                        help="another sweep (name, folder, YAML or export) to compare with on the cells both ran, "
                             "e.g. the full grid behind a law-guided sweep")
    report.add_argument("--also", action="append", default=[], metavar="SWEEP",
                        help="add another sweep's trials (folder, YAML or export; repeatable), e.g. cells of the same "
                             "experiment run in another sitting: one report over all of them")
    report.add_argument("--probes", metavar="FILE",
                        help="Hessian probes (a probes.json written by `rmask-tune analyze calibrate`) to merge into "
                             "the report folder's own probes.json, which calibrates and validates lr = c / lambda_max")
    report.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the law's intervals")
    report.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    report.set_defaults(run=_run)
