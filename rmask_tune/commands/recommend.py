"""``rmask-tune recommend``: the learning rate the fitted law (or the calibrated Hessian probe) gives
for a trainable ratio."""

from __future__ import annotations

import argparse
import json
import math
import sys


def _law(args: argparse.Namespace):
    from rmask_tune.errors import RmaskError
    from rmask_tune.law import load_law

    if args.law and args.experiment:
        raise RmaskError("give either --law or --experiment, not both")
    if args.law:
        return load_law(args.law)
    if args.experiment:
        from rmask_tune.report import law_of, load_summary

        return law_of(load_summary(args.experiment, args.tracking_uri))
    raise RmaskError("recommend needs --law PATH (a report's law.json) or --experiment NAME")


def _anchor(args: argparse.Namespace, ratio: float) -> dict | None:
    """The optimum a short sweep on the user's model measured (``--anchor``), nearest ``ratio``."""
    if not args.anchor:
        return None
    from rmask_tune.errors import RmaskError
    from rmask_tune.report import load_summary
    from rmask_tune.report.summary import LAW_METHOD

    summary = load_summary(args.anchor, args.tracking_uri)
    cells = [c for c in summary.curves.values() if c.method == LAW_METHOD and c.ratio is not None
             and (args.model is None or c.model == args.model) and (args.task is None or c.task == args.task)]
    usable = [c for c in cells if c.optimum is not None and not c.optimum.at_edge]
    if not usable:
        why = "its best LR is at the grid's edge" if cells else "it has no Random Masking cell for this model/task"
        raise RmaskError(f"--anchor {args.anchor}: no interior optimum to calibrate on ({why})")
    cell = min(usable, key=lambda c: abs(math.log10(c.ratio) - math.log10(ratio)))
    return {"ratio": cell.ratio, "log10_lr": cell.optimum.log10_lr, "se": cell.optimum.se,
            "model": cell.model, "task": cell.task}


def _from_law(args: argparse.Namespace, law, ratio: float) -> dict:
    from rmask_tune.law import log_grid

    if law.shared is None:  # a law.json from before the shared fit (format v1)
        lr, lo, hi = law.predict(ratio, args.model, prediction=True)
        return {"lr": lr, "interval": [lo, hi], "basis": "single-line law (v1 law.json)",
                "detail": "refit with `rmask-tune report` for per-task offsets and honest intervals",
                "warning": "this law.json has no shared fit; its interval is the single line's prediction band",
                "extrapolated": not law.in_range(ratio, args.model), "ratio_range": list(law.fit_for(args.model).ratio_range),
                "grid": log_grid(lr, args.points, args.decades)}
    rec = law.recommend(ratio, args.model, args.task, anchor=_anchor(args, ratio))
    pair = f"{args.model}/{args.task}"
    if args.task is not None and pair not in law.shared.pairs and rec.basis != "anchor":
        known = ", ".join(p for p in law.shared.pairs if p.split("/", 1)[0] == args.model) or ", ".join(law.shared.pairs)
        unseen = f"{pair} is not in the law (it has {known}); using {rec.detail}"
        rec.warning = unseen if rec.warning is None else f"{unseen}; {rec.warning}"
    return {**rec.to_dict(), "b": law.shared.b, "b_ci": list(law.shared.b_ci),
            "ratio_range": list(law.shared.ratio_range), "extrapolated": not law.in_range(ratio),
            "grid": log_grid(rec.lr, args.points, args.decades)}


def _probe_loss(args: argparse.Namespace, law) -> tuple[dict, str]:
    """The training loss to probe: ``--loss-settings`` when given, else the one the law's optima were trained with."""
    from rmask_tune.analysis.probes import probe_loss_settings
    from rmask_tune.errors import RmaskError

    if args.loss_settings is None:
        return probe_loss_settings(law.point_json(), args.model, args.task)
    try:
        settings = json.loads(args.loss_settings)
    except ValueError as exc:
        raise RmaskError(f"--loss-settings is not JSON: {exc}") from None
    if not isinstance(settings, dict):
        raise RmaskError(f"--loss-settings must be a JSON object, got {args.loss_settings}")
    return settings, "--loss-settings"


def _from_probe(args: argparse.Namespace, law, ratio: float) -> dict:
    """lr = c / lambda_max: the top Hessian eigenvalue at initialization, c from law.json's calibration."""
    from rmask_tune.errors import RmaskError
    from rmask_tune.law import log_grid

    if not (args.model and args.task):
        raise RmaskError("--probe needs --model and --task (the probe measures that model's loss on that task)")
    calibration = law.probe_calibration
    if not calibration:
        raise RmaskError(
            f"{args.law} has no probe_calibration; run `rmask-tune analyze calibrate --law {args.law}` first"
        )
    from rmask_tune.analysis.predict import constant_for, predict_lr

    constant = constant_for(calibration, args.model)
    loss, loss_basis = _probe_loss(args, law)
    lr, lam = predict_lr(args.model, args.task, ratio, constant.c, loss_settings=loss,
                         **(calibration.probe or {}), data_dir=args.data_dir, device=args.device)
    spread = 10 ** (1.96 * constant.log10_sd)
    return {"lr": lr, "interval": [lr / spread, lr * spread], "lambda_max": lam, "c": constant.c,
            "c_basis": constant.basis, "warning": constant.warning, "loss_settings": loss, "loss_basis": loss_basis,
            "calibration_points": calibration.n, "grid": log_grid(lr, args.points, args.decades)}


LAW_SEARCH_TEMPLATE = "search_spaces/law-search.yaml"


def law_search_commands(law, law_path: str | None, model: str | None, task: str | None, ratio: float) -> list[str] | None:
    """The commands that measure a (model, task) the law has not fitted with the law-guided searcher, then
    recommend from the law that sweep gives (None when the law has the pair, or no model and task were given)."""
    if not (model and task) or law.shared is None or f"{model}/{task}" in law.shared.pairs:
        return None
    name = f"{model}-{task}-law".lower()
    prior = law_path or "LAW_JSON"
    return [
        f"sed -e 's/^name: .*/name: {name}/' -e 's/^models: .*/models: [{model}]/' -e 's/^tasks: .*/tasks: [{task}]/' "
        f"-e 's#^storage_path: .*#storage_path: runs/{name}#' {LAW_SEARCH_TEMPLATE} > {name}.yaml",
        f"rmask-tune sweep {name}.yaml --prior {prior}",
        f"rmask-tune report {name}.yaml --out reports/{name}",
        f"rmask-tune recommend --law reports/{name}/law.json --model {model} --task {task} --ratio {ratio:g}",
    ]


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.errors import RmaskError
    from rmask_tune.law import check_ratio

    ratio = check_ratio(args.ratio)
    if args.probe and not args.law:
        raise RmaskError("--probe needs --law: the calibrated constant c lives in law.json")
    law = _law(args)
    result = _from_probe(args, law, ratio) if args.probe else _from_law(args, law, ratio)
    if result.get("extrapolated"):
        low, high = result["ratio_range"]
        print(f"rmask-tune: warning: ratio {ratio:g} is outside the fitted range {low:g} – {high:g}; "
              "the law is extrapolated", file=sys.stderr)
    if result.get("warning"):
        print(f"rmask-tune: warning: {result['warning']}", file=sys.stderr)
    search = law_search_commands(law, args.law, args.model, args.task, ratio)
    if args.json:
        print(json.dumps({"ratio": ratio, "model": args.model, "task": args.task,
                          "source": "probe" if args.probe else "law", **result, "law_search": search}, allow_nan=False))
        return
    if args.probe:
        print(f"recommended lr for ratio {ratio:g} (Hessian probe, {args.model} on {args.task}): {result['lr']:.3g}")
        print(f"  lambda_max = {result['lambda_max']:.4g}, c = {result['c']:.4g} ({result['c_basis']}); 95% range "
              f"from the calibration's scatter: {result['interval'][0]:.3g} – {result['interval'][1]:.3g}")
        loss = ", ".join(f"{k}={v}" for k, v in sorted(result["loss_settings"].items())) or "the trainer's defaults"
        print(f"  loss probed: {loss} (from {result['loss_basis']})")
    else:
        lo, hi = result["interval"]
        span = "no interval" if lo is None else f"95% interval {lo:.3g} – {hi:.3g}"
        print(f"recommended lr for ratio {ratio:g}: {result['lr']:.3g} ({span})")
        print(f"  from: {result['basis']}: {result['detail']}")
        if "b" in result:
            print(f"  shared exponent b = {result['b']:.3f} [{result['b_ci'][0]:.3f}, {result['b_ci'][1]:.3f}], "
                  f"fitted on ratios {result['ratio_range'][0]:g} – {result['ratio_range'][1]:g}")
    print("  grid: " + " ".join(f"{v:g}" for v in result["grid"]))
    if search:
        print(f"{args.model}/{args.task} is not in the law: measure it with the law searcher (a few LRs per ratio "
              "instead of the full grid; docs/searcher.md), then recommend from its own law:")
        print("\n".join(f"  {command}" for command in search))


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
    rec.add_argument("--json", action="store_true", help="print one JSON object")
    rec.set_defaults(run=_run)
