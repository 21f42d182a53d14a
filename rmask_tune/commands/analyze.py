"""``rmask-tune analyze``: loss-landscape sharpness vs ratio, distance travelled, LR-probe calibration, and a
check of finite-difference HVPs against exact ones."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path


def _settings(args: argparse.Namespace):
    """The probe settings: every ProbeSettings field but ``repeat`` is an option of the same name."""
    from rmask_tune.analysis.landscape import ProbeSettings

    return ProbeSettings(**{f.name: getattr(args, f.name) for f in fields(ProbeSettings) if f.name != "repeat"})


class _Output:
    """An action's result: printed as text (or JSON with ``--json``); with ``--out``, also written there as
    ``NAME.json`` and, for an action with a plot, ``NAME.png``. The folder is checked when the action starts,
    so a probe never runs only to find it cannot write."""

    def __init__(self, args: argparse.Namespace, name: str, plot: bool = False):
        from rmask_tune.analysis.outputs import output_paths

        self.as_json = args.json
        names = [f"{name}.json"] + ([f"{name}.png"] if plot else [])
        self.paths = output_paths(args.out, names) if args.out else []

    def emit(self, data, text: Callable[[], str], plot: Callable[[Path], None] | None = None) -> None:
        """Print ``data`` (JSON) or ``text()``; write ``data`` and ``plot``'s figure to the --out folder."""
        from rmask_tune.analysis.outputs import write_json

        print(json.dumps(data, indent=1) if self.as_json else text())
        if self.paths:
            write_json(self.paths[0], data)
            if plot is not None:
                plot(self.paths[1])
            print(f"wrote {' and '.join(map(str, self.paths))}", file=sys.stderr)


def _report(point) -> None:
    print(
        f"[{point.state}] ratio {point.ratio:.3g} ({point.trainable_params} values): lambda_max {point.lambda_max:.4g} "
        f"after {point.iterations} iterations in {point.seconds:.1f}s",
        file=sys.stderr,
    )


def _landscape(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.landscape import format_points, plot_points, probe_ratio, probe_run
    from rmask_tune.analysis.outputs import parse_ratios
    from rmask_tune.errors import RmaskError

    runs = [r for r in (args.after_training or "").split(",") if r]
    ratios = parse_ratios(args.ratios) if args.ratios or not runs else []
    if ratios and not (args.model and args.task):
        raise RmaskError("probing --ratios needs --model and --task")
    settings = _settings(args)
    output = _Output(args, "landscape", plot=True)
    points = []
    for ratio in ratios:
        points.append(probe_ratio(args.model, args.task, ratio, settings))
        _report(points[-1])
    for run in runs:
        for point in probe_run(run, settings):
            points.append(point)
            _report(point)
    data = {"settings": vars(settings), "points": [p.to_dict() for p in points]}
    output.emit(data, lambda: format_points(points), lambda path: plot_points(points, path))


def _distance(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.distance import find_runs, format_distances, plot_distances, run_distance

    output = _Output(args, "distance", plot=True)
    rows = [run_distance(run) for run in find_runs(args.runs)]
    output.emit([row.to_dict() for row in rows], lambda: format_distances(rows), lambda path: plot_distances(rows, path))


def _calibrate(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.predict import calibrate_law

    def progress(pair: dict) -> None:
        low, high = pair["lambda_max_range"]
        print(
            f"{pair['model']} {pair['task']} ratio {pair['ratio']:.3g}: lambda_max {pair['lambda_max']:.4g} "
            f"(range {low:.4g} - {high:.4g} over {len(pair['lambda_max_repeats'])} probe(s)), best LR {pair['lr']:.3g}",
            file=sys.stderr,
        )

    entry = calibrate_law(args.law, _settings(args), model=args.model, task=args.task, repeats=args.repeats,
                          excluded=args.excluded, progress=progress)
    if entry is None:
        print(f"probed only cells the law excluded: probes.json beside {args.law} updated, its c unchanged "
              "(`rmask-tune report` scores the predictor on them)")
    elif args.json:
        print(json.dumps(entry.to_json(), indent=1))
    else:
        for point in entry.points:
            loo = point.loo_error_steps
            print(
                f"{point.model} {point.task} ratio {point.ratio:.3g}: swept optimum {point.lr:.3g}, "
                f"predicted {point.predicted_lr:.3g} ({point.error_steps:+.2f} half-decade steps"
                + ("" if loo is None else f"; {loo:+.2f} with c fitted on the other points") + ")"
            )
        loo_mean = entry.mean_abs_loo_error_steps
        print(
            f"c = {entry.c:.4g} from {entry.n} point(s) (log10 spread {entry.log10_sd:.2f}); "
            f"mean |error| {entry.mean_abs_error_steps:.2f} half-decade steps"
            + ("" if loo_mean is None else f", {loo_mean:.2f} leave-one-out")
            + f"; saved to {args.law} under probe_calibration (the probes to probes.json beside it, which "
            "`rmask-tune report` recalibrates from); predicted LR = c / lambda_max"
        )
        if entry.repeats > 1:
            low, high = entry.c_range
            print(f"c over {entry.repeats} repeated probes (other batches and start vectors): "
                  f"sd {entry.c_sd:.3g}, range {low:.4g} - {high:.4g}")  # fmt: skip


def _hvp_check(args: argparse.Namespace) -> None:
    from rmask_tune.analysis.hvp_check import check_ratio, format_checks
    from rmask_tune.analysis.outputs import parse_ratios

    output = _Output(args, "hvp_check")
    settings = _settings(args)
    checks = []
    for ratio in parse_ratios(args.ratios):
        checks.append(
            check_ratio(args.model, args.task, ratio, settings, vectors=args.vectors, tolerance=args.tolerance)
        )
        print(f"ratio {ratio:.3g}: worst fd error {checks[-1].max_error:.2e}, lambda_max exact "
              f"{checks[-1].lambda_exact:.4g} / fd {checks[-1].lambda_fd:.4g}", file=sys.stderr)  # fmt: skip
    data = {"settings": vars(settings), "vectors": args.vectors, "checks": [c.to_dict() for c in checks]}
    output.emit(data, lambda: format_checks(checks))


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
    parser.add_argument("--fd-step-mode", choices=("curvature", "relative"), default="curvature",
                        help="how fd chooses its step: curvature = a local step, h^2 kappa / 2 = --fd-loss-change "
                             "with kappa the largest ||H u|| measured (default); relative = --fd-step * "
                             "(1 + ||W0 + delta||), the first version's step, to reproduce calibrations made "
                             "with it (not local at large masks)")  # fmt: skip
    parser.add_argument("--fd-step", type=float, default=1e-2,
                        help="relative step: fd step relative to 1 + ||W0 + delta|| (the ceiling of the curvature "
                             "step; default 1e-2)")  # fmt: skip
    parser.add_argument("--fd-loss-change", type=float, default=1e-3,
                        help="curvature step: second-order loss change along the step, in nats (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="data, mask and power-iteration seed")
    parser.add_argument("--data-dir", help="offline data folder (default: $RMASK_DATA_DIR, then the hub)")
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _action(actions: argparse._SubParsersAction, name: str, run: Callable[[argparse.Namespace], None], *,
            help: str, description: str) -> argparse.ArgumentParser:
    """One ``analyze`` action's parser, which runs ``run``."""
    parser = actions.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run)
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` subcommand and its ``landscape`` / ``distance`` / ``calibrate`` / ``hvp-check`` actions."""
    analyze = sub.add_parser("analyze", help="loss-landscape sharpness, distance travelled, LR-probe calibration")
    actions = analyze.add_subparsers(dest="action", required=True)

    landscape = _action(
        actions, "landscape", _landscape,
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

    distance = _action(
        actions, "distance", _distance,
        help="L2 norm of the trained deltas vs ratio, from finished runs",
        description="Reads metrics.json and the Random Masking adapter of each run folder (or of each run folder "
        "inside a given folder, e.g. a sweep's trials folder).",
    )
    distance.add_argument("runs", nargs="+", metavar="RUN_DIR")
    distance.add_argument("--out", help="folder for distance.json and distance.png (never overwritten)")
    distance.add_argument("--json", action="store_true", help="print the result as JSON")

    calibrate = _action(
        actions, "calibrate", _calibrate,
        help="calibrate lr = c / lambda_max against the optimal LRs in law.json",
        description="Probes lambda_max at initialization for every optimal-LR point in law.json (optionally "
        "only --model / --task), sets c to the geometric mean of lr * lambda_max and stores it in law.json "
        "under probe_calibration; the probes go to probes.json beside law.json (merged with those there).",
    )
    calibrate.add_argument("--law", required=True, help="law.json written by rmask-tune report")
    calibrate.add_argument("--model", help="only this model's points")
    calibrate.add_argument("--task", help="only this task's points")
    calibrate.add_argument("--excluded", action="store_true",
                           help="also probe the cells the law excluded (a failed signal test, an edge optimum): they "
                                "do not enter c, but the report scores the predictor on them, as its "
                                "leave-one-task-out scores the law")  # fmt: skip
    calibrate.add_argument("--repeats", type=int, default=1,
                           help="probe each point this many times, each on other batches (data seed --seed + r) from "
                                "another start vector; reports the spread of lambda_max and c (default 1)")  # fmt: skip
    _probe_options(calibrate)

    check = _action(
        actions, "hvp-check", _hvp_check,
        help="agreement of finite-difference HVPs with exact ones (double backward), per ratio",
        description="For each --ratios mask at initialization: the relative error of fd HVPs (with the chosen "
        "step, and with the relative step) against exact HVPs on the exact top eigenvector and on --vectors "
        "random unit vectors, and lambda_max by Lanczos on fd and on exact products.",
    )
    check.add_argument("--model", required=True)
    check.add_argument("--task", required=True)
    check.add_argument("--ratios", default="1e-2,1e-3,1e-4,1e-5", help="comma-separated (default 1e-2,1e-3,1e-4,1e-5)")
    check.add_argument("--vectors", type=int, default=3, help="random unit vectors per ratio (default 3)")
    check.add_argument("--tolerance", type=float, default=0.02,
                       help="relative error that counts as agreement (default 0.02)")  # fmt: skip
    check.add_argument("--out", help="folder for hvp_check.json (never overwritten)")
    _probe_options(check)
