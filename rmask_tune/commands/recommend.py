"""``rmask-tune recommend``: the learning rate the fitted law (or the calibrated Hessian probe) gives
for a trainable ratio."""

from __future__ import annotations

import argparse
import json
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


def _from_law(args: argparse.Namespace, law, ratio: float) -> dict:
    from rmask_tune.law import narrow_grid

    lr, lo, hi = law.predict(ratio, args.model)
    _, plo, phi = law.predict(ratio, args.model, prediction=True)
    fit = law.fit_for(args.model)
    return {"lr": lr, "ci": [lo, hi], "prediction_interval": [plo, phi], "a": fit.a, "b": fit.b,
            "ratio_range": list(fit.ratio_range), "extrapolated": not law.in_range(ratio, args.model),
            "grid": narrow_grid(law, ratio, args.model, points=args.points, decades=args.decades)}


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
    from rmask_tune.analysis.predict import predict_lr

    lr, lam = predict_lr(args.model, args.task, ratio, calibration["c"], **calibration.get("probe", {}),
                         data_dir=args.data_dir, device=args.device)
    spread = 10 ** (1.96 * calibration.get("log10_sd", 0.0))
    return {"lr": lr, "interval": [lr / spread, lr * spread], "lambda_max": lam, "c": calibration["c"],
            "calibration_points": calibration.get("n"), "grid": log_grid(lr, args.points, args.decades)}


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
    if args.json:
        print(json.dumps({"ratio": ratio, "model": args.model, "source": "probe" if args.probe else "law", **result}))
        return
    scope = f"model {args.model}" if args.model else "pooled over models and tasks"
    if args.probe:
        print(f"recommended lr for ratio {ratio:g} (Hessian probe, {args.model} on {args.task}): {result['lr']:.3g}")
        print(f"  lambda_max = {result['lambda_max']:.4g}, c = {result['c']:.4g} (calibrated on "
              f"{result['calibration_points']} optima); 95% range from the calibration's scatter: "
              f"{result['interval'][0]:.3g} – {result['interval'][1]:.3g}")
    else:
        print(f"recommended lr for ratio {ratio:g} ({scope}): {result['lr']:.3g}")
        print(f"  95% CI of the law: {result['ci'][0]:.3g} – {result['ci'][1]:.3g};  a single task's optimum (95%): "
              f"{result['prediction_interval'][0]:.3g} – {result['prediction_interval'][1]:.3g}")
        sign = "-" if result["b"] < 0 else "+"
        print(f"  law: log10 lr* = {result['a']:.3f} {sign} {abs(result['b']):.3f} * log10(ratio), fitted on ratios "
              f"{result['ratio_range'][0]:g} – {result['ratio_range'][1]:g}")
    print("  grid: " + " ".join(f"{v:g}" for v in result["grid"]))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``recommend`` subcommand."""
    rec = sub.add_parser("recommend", help="the learning rate the fitted law gives for a trainable ratio")
    rec.add_argument("--ratio", type=float, required=True, help="trainable fraction of the model, e.g. 1e-4")
    rec.add_argument("--model", help="use this model's fit (default: the pooled fit)")
    rec.add_argument("--law", help="law.json written by `rmask-tune report`")
    rec.add_argument("--experiment", help="fit the law from this experiment (name, sweep folder or sweep YAML)")
    rec.add_argument("--tracking-uri", help="MLflow tracking URI for --experiment")
    rec.add_argument("--points", type=int, default=5, help="points in the LR grid (default 5)")
    rec.add_argument("--decades", type=float, default=1.0, help="decades the LR grid spans (default 1)")
    rec.add_argument("--probe", action="store_true",
                     help="predict a priori from the top Hessian eigenvalue "
                          "(needs --model, --task and a calibrated --law)")
    rec.add_argument("--task", help="task for --probe")
    rec.add_argument("--data-dir", help="offline data folder for --probe (default: $RMASK_DATA_DIR, then the hub)")
    rec.add_argument("--device", choices=("cpu", "cuda"), help="device for --probe")
    rec.add_argument("--json", action="store_true", help="print one JSON object")
    rec.set_defaults(run=_run)
