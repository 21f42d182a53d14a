"""``rmask-tune analyze``: loss-landscape sharpness vs ratio, distance travelled, LR-probe calibration."""

from __future__ import annotations

import argparse
import json
import sys


def _settings(args: argparse.Namespace):
    from rmask_tune.analysis.landscape import ProbeSettings

    return ProbeSettings(
        batches=args.batches,
        batch_size=args.batch_size,
        iters=args.iters,
        tol=args.tol,
        hvp=args.hvp,
        solver=args.solver,
        fd_step=args.fd_step,
        seed=args.seed,
        data_dir=args.data_dir,
        device=args.device,
    )


def _report(point) -> None:
    print(
        f"[{point.state}] ratio {point.ratio:.3g} ({point.trainable_params} values): lambda_max {point.lambda_max:.4g} "
        f"after {point.iterations} iterations in {point.seconds:.1f}s",
        file=sys.stderr,
    )


def _landscape(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.landscape import format_points, plot_points, probe_ratio, probe_run
    from rmask_tune.analysis.outputs import output_paths, parse_ratios, write_json
    from rmask_tune.errors import RmaskError

    runs = [r for r in (args.after_training or "").split(",") if r]
    ratios = parse_ratios(args.ratios) if args.ratios or not runs else []
    if ratios and not (args.model and args.task):
        raise RmaskError("probing --ratios needs --model and --task")
    settings = _settings(args)
    paths = output_paths(args.out, ["landscape.json", "landscape.png"]) if args.out else None
    points = []
    for ratio in ratios:
        points.append(probe_ratio(args.model, args.task, ratio, settings))
        _report(points[-1])
    for run in runs:
        for point in probe_run(run, settings):
            points.append(point)
            _report(point)
    data = {"settings": vars(settings), "points": [p.to_dict() for p in points]}
    print(json.dumps(data, indent=1) if args.json else format_points(points))
    if paths:
        write_json(paths[0], data)
        plot_points(points, paths[1])
        print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)


def _distance(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.distance import find_runs, format_distances, plot_distances, run_distance
    from rmask_tune.analysis.outputs import output_paths, write_json

    paths = output_paths(args.out, ["distance.json", "distance.png"]) if args.out else None
    rows = [run_distance(run) for run in find_runs(args.runs)]
    data = [row.to_dict() for row in rows]
    print(json.dumps(data, indent=1) if args.json else format_distances(rows))
    if paths:
        write_json(paths[0], data)
        plot_distances(rows, paths[1])
        print(f"wrote {paths[0]} and {paths[1]}", file=sys.stderr)


def _calibrate(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.predict import calibrate_law

    def progress(pair: dict) -> None:
        print(
            f"{pair['model']} {pair['task']} ratio {pair['ratio']:.3g}: lambda_max {pair['lambda_max']:.4g}, "
            f"best LR {pair['lr']:.3g}",
            file=sys.stderr,
        )

    entry = calibrate_law(args.law, _settings(args), model=args.model, task=args.task, progress=progress)
    if args.json:
        print(json.dumps(entry, indent=1))
    else:
        for point in entry["points"]:
            loo = point["loo_error_steps"]
            print(
                f"{point['model']} {point['task']} ratio {point['ratio']:.3g}: swept optimum {point['lr']:.3g}, "
                f"predicted {point['predicted_lr']:.3g} ({point['error_steps']:+.2f} half-decade steps"
                + ("" if loo is None else f"; {loo:+.2f} with c fitted on the other points") + ")"
            )
        loo_mean = entry["mean_abs_loo_error_steps"]
        print(
            f"c = {entry['c']:.4g} from {entry['n']} point(s) (log10 spread {entry['log10_sd']:.2f}); "
            f"mean |error| {entry['mean_abs_error_steps']:.2f} half-decade steps"
            + ("" if loo_mean is None else f", {loo_mean:.2f} leave-one-out")
            + f"; saved to {args.law} under probe_calibration; predicted LR = c / lambda_max"
        )


def _probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, default=4, help="fixed training batches in the loss (default 4)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--solver", choices=("lanczos", "power"), default="lanczos",
                        help="top-eigenvalue solver: lanczos (default; sound when negative curvature dominates) "
                             "or power iteration")  # fmt: skip
    parser.add_argument("--iters", type=int, default=20, help="at most this many Hessian-vector products (default 20)")
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="relative tolerance (Lanczos: Ritz residual; power: change of the estimate)")  # fmt: skip
    parser.add_argument("--hvp", choices=("fd", "exact"), default="fd",
                        help="Hessian-vector products: fd = central differences of gradients (default), "
                             "exact = double backward")  # fmt: skip
    parser.add_argument("--fd-step", type=float, default=1e-2, help="fd step relative to 1 + ||W0 + delta||")
    parser.add_argument("--seed", type=int, default=0, help="data, mask and power-iteration seed")
    parser.add_argument("--data-dir", help="offline data folder (default: $RMASK_DATA_DIR, then the hub)")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` subcommand and its ``landscape`` / ``distance`` / ``calibrate`` actions."""
    analyze = sub.add_parser("analyze", help="loss-landscape sharpness, distance travelled, LR-probe calibration")
    actions = analyze.add_subparsers(dest="action", required=True)

    landscape = actions.add_parser(
        "landscape",
        help="top Hessian eigenvalue over the masked values vs ratio (at init and after training)",
        description="Lanczos (or power iteration) on Hessian-vector products of the mean training loss over fixed "
        "batches, restricted to the masked values: at initialization for each --ratios, and for each --after-training "
        "run both at its initialization and at its trained adapter.",
    )
    landscape.add_argument("--model")
    landscape.add_argument("--task")
    landscape.add_argument("--ratios", help="comma-separated (default 1e-2,1e-3,1e-4 unless --after-training)")
    landscape.add_argument("--after-training", metavar="RUN_DIR[,RUN_DIR...]", help="finished rmask-tune train runs")
    landscape.add_argument("--out", help="folder for landscape.json and landscape.png (never overwritten)")
    _probe_options(landscape)
    landscape.set_defaults(run=_landscape)

    distance = actions.add_parser(
        "distance",
        help="L2 norm of the trained deltas vs ratio, from finished runs",
        description="Reads metrics.json and adapter.safetensors of each run folder (or of each run folder "
        "inside a given folder, e.g. a sweep's trials folder).",
    )
    distance.add_argument("runs", nargs="+", metavar="RUN_DIR")
    distance.add_argument("--out", help="folder for distance.json and distance.png (never overwritten)")
    distance.add_argument("--json", action="store_true", help="print the result as JSON")
    distance.set_defaults(run=_distance)

    calibrate = actions.add_parser(
        "calibrate",
        help="calibrate lr = c / lambda_max against the optimal LRs in law.json",
        description="Probes lambda_max at initialization for every optimal-LR point in law.json (optionally "
        "only --model / --task), sets c to the geometric mean of lr * lambda_max and stores it in law.json "
        "under probe_calibration.",
    )
    calibrate.add_argument("--law", required=True, help="law.json written by rmask-tune report")
    calibrate.add_argument("--model", help="only this model's points")
    calibrate.add_argument("--task", help="only this task's points")
    _probe_options(calibrate)
    calibrate.set_defaults(run=_calibrate)
