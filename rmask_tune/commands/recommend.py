"""``rmask-tune recommend``: the learning rate the fitted law (or the calibrated Hessian probe) gives
for a trainable ratio."""

from __future__ import annotations

import argparse
import json
import sys


def _loss_settings(text: str | None) -> dict | None:
    """``--loss-settings``: a JSON object, or None (the probe uses the loss the law's optima were trained with)."""
    from rmask_tune.errors import RmaskError

    if text is None:
        return None
    try:
        settings = json.loads(text)
    except ValueError as exc:
        raise RmaskError(f"--loss-settings is not JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise RmaskError(f"--loss-settings must be a JSON object, got {text}")
    return settings


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.recommend import recommend

    rec = recommend(args.ratio, law_path=args.law, experiment=args.experiment, tracking_uri=args.tracking_uri,
                    model=args.model, task=args.task, anchor=args.anchor, probe=args.probe,
                    loss_settings=_loss_settings(args.loss_settings) if args.probe else None,
                    data_dir=args.data_dir, device=args.device, points=args.points, decades=args.decades,
                    steps=args.steps)
    if rec.extrapolated:
        low, high = rec.ratio_range
        print(f"rmask-tune: warning: ratio {rec.ratio:g} is outside the fitted range {low:g} – {high:g}; "
              "the law is extrapolated", file=sys.stderr)
    if rec.budget is not None and rec.budget.extrapolated:
        low, high = rec.budget.steps_range
        print(f"rmask-tune: warning: {rec.budget.steps:g} steps is outside the fitted budgets {low} – {high} steps; "
              "the budget term is extrapolated", file=sys.stderr)
    if rec.warning:
        print(f"rmask-tune: warning: {rec.warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(rec.to_json(), allow_nan=False))
        return
    lo, hi = rec.interval
    if rec.probe is not None:
        probe = rec.probe
        print(f"recommended lr for ratio {rec.ratio:g} (Hessian probe, {rec.model} on {rec.task}): {rec.lr:.3g}")
        print(f"  lambda_max = {probe.lambda_max:.4g}, c = {probe.c:.4g} ({probe.c_basis}); 95% range "
              f"from the calibration's scatter: {lo:.3g} – {hi:.3g}")
        loss = ", ".join(f"{k}={v}" for k, v in sorted(probe.loss_settings.items())) or "the trainer's defaults"
        print(f"  loss probed: {loss} (from {probe.loss_basis})")
    else:
        span = "no interval" if lo is None else f"95% interval {lo:.3g} – {hi:.3g}"
        print(f"recommended lr for ratio {rec.ratio:g}: {rec.lr:.3g} ({span})")
        print(f"  from: {rec.basis}: {rec.detail}")
        if rec.b is not None:
            print(f"  shared exponent b = {rec.b:.3f} [{rec.b_ci[0]:.3f}, {rec.b_ci[1]:.3f}], "
                  f"fitted on ratios {rec.ratio_range[0]:g} – {rec.ratio_range[1]:g}")
        if rec.budget is not None:
            budget = rec.budget
            which = "--steps" if budget.asked else "the law's own budget"
            print(f"  for {budget.steps:g} optimizer steps ({which}); budget exponent g = {budget.g:.3f} "
                  f"[{budget.g_ci[0]:.3f}, {budget.g_ci[1]:.3f}], fitted on budgets {budget.steps_range[0]} – "
                  f"{budget.steps_range[1]} steps")
    print("  grid: " + " ".join(f"{v:g}" for v in rec.grid))
    if rec.law_search:
        print(f"{rec.model}/{rec.task} is not in the law: measure it with the law searcher (a few LRs per ratio "
              "instead of the full grid; docs/searcher.md), then recommend from its own law:")
        print("\n".join(f"  {command}" for command in rec.law_search))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``recommend`` subcommand."""
    rec = sub.add_parser("recommend", help="the learning rate the fitted law gives for a trainable ratio")
    rec.add_argument("--ratio", type=float, required=True, help="trainable fraction of the model, e.g. 1e-4")
    rec.add_argument("--model", help="the model to train (a model the law has not seen needs --anchor or --probe)")
    rec.add_argument("--law", help="law.json written by `rmask-tune report`")
    rec.add_argument("--experiment", help="fit the law from this experiment (name, sweep folder or sweep YAML)")
    rec.add_argument("--tracking-uri", help="MLflow tracking URI for --experiment")
    rec.add_argument("--points", type=int, default=5, help="points in the LR grid (default 5)")
    rec.add_argument("--decades", type=float, default=1.0, help="decades the LR grid spans (default 1)")
    rec.add_argument("--probe", action="store_true",
                     help="predict a priori from the top Hessian eigenvalue "
                          "(needs --model, --task and a calibrated --law)")
    rec.add_argument("--task", help="the task to train (its own offset when the law has it; needed by --probe)")
    rec.add_argument("--anchor", metavar="SWEEP",
                     help="a short sweep of your model at one ratio (name, folder, YAML or export): its optimum sets "
                          "the model's offset under the law's shared exponent")
    rec.add_argument("--data-dir", help="offline data folder for --probe (default: $RMASK_DATA_DIR, then the hub)")
    rec.add_argument("--device", choices=("cpu", "cuda"), help="device for --probe")
    rec.add_argument("--loss-settings", metavar="JSON",
                     help="the training loss --probe measures, e.g. '{\"objective\": \"classification\", "
                          "\"scoring\": \"mean\"}' (default: the one the law's optima for this model/task were "
                          "trained with)")
    rec.add_argument("--steps", type=float, metavar="N",
                     help="the training budget in optimizer steps (epochs x batches per epoch); default: the law's "
                          "own. A law fitted at one budget has no budget term: it warns and answers for its own")
    rec.add_argument("--json", action="store_true", help="print one JSON object")
    rec.set_defaults(run=_run)
