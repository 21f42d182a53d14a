"""``rmask-tune sweep FILE``: run a search-space file on Ray Tune, logging every trial to MLflow."""

from __future__ import annotations

import argparse
from collections import defaultdict

from rmask_tune.errors import IncompleteError


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.sweep.resolve import SweepOptions
    from rmask_tune.sweep.runner import set_environment

    options = SweepOptions(lr_from=args.lr_from, lr_points=args.lr_points, prior=args.prior,
                           skip_done=tuple(args.skip_done), resume=args.resume)
    set_environment()  # before anything imports ray
    from rmask_tune.sweep import load_space, resolve_space

    space = resolve_space(load_space(args.file), options)
    if options.skip_done and not _print_skipped(space, options.skip_done):
        return
    if args.dry_run:
        _print_plan(space)
        return
    from rmask_tune.sweep.runner import run_sweep

    outcome = run_sweep(space, address=args.address, join=args.join)
    if not outcome.complete and not args.allow_failures:
        again = "" if outcome.errored and not (outcome.interrupted or outcome.unstarted) else \
            f"; continue with `rmask-tune sweep {space.source} --resume`"
        raise IncompleteError(f"{outcome.line()}{again} (--allow-failures exits 0 all the same)")


def _print_skipped(space, sources: tuple[str, ...]) -> bool:
    """Say how many trials ``--skip-done`` left out; False when none is left."""
    left = space.num_trials()
    where = ", ".join(sources)
    print(f"skipping {len(space.done)} of {left + len(space.done)} trials already done in {where}")
    if not left:
        print(f"nothing left to run: every trial of {space.source} is done in {where}")
    return left > 0


def _print_plan(space) -> None:
    """What the sweep would run: its trial count, each task's own settings and each cell's learning rates."""
    from rmask_tune.sweep.plan import cell_key

    most = "at most " if space.file.search.type == "law" else ""  # the law searcher runs what it needs
    print(f"{space.name}: {most}{space.num_trials()} trials ({space.file.search.type} search, {space.file.scheduler.type} scheduler, "
          f"{space.epochs} epochs), storage {space.storage}")  # fmt: skip
    for task, settings in space.file.task_settings.items():
        print(f"  {task} trials: " + ", ".join(f"{key} {value}" for key, value in settings.items()))
    left = defaultdict(list)  # each cell's learning rates with a trial to run (--skip-done leaves some out)
    for point in space.grid_trials():
        left[cell_key({"trial": point})].append(point["lr"])
    for cell in space.cells():
        ratio = "" if cell.ratio is None else f" {cell.ratio * 100:g}%"
        lrs = left.get((cell.model, cell.task, cell.method, cell.ratio))
        if lrs is None:
            listed = "all done in the --skip-done source(s)"
        else:
            listed = ", ".join(f"{lr:.3g}" for lr in dict.fromkeys(lrs) if lr is not None) or "no learning rate"
        print(f"  {cell.model} {cell.task} {cell.method}{ratio}: {listed}")
    _print_cost(space)


def _print_cost(space) -> None:
    """The sweep's size and its GPU-hours at the per-step costs stated in rmask_tune/sweep/cost.py."""
    from rmask_tune.sweep.cost import MODEL_COSTS, REFERENCE_BATCH, REFERENCE_TOKENS, sweep_cost
    from rmask_tune.sweep.schema import AshaScheduler

    cost = sweep_cost(space)
    priced = [m for m in space.file.models if m in MODEL_COSTS]
    print(f"Estimate for {space.name}:")
    print(f"  trials: {cost.trials}")
    print(f"  optimizer steps: {cost.steps:,} (every trial for all its epochs)")
    if priced:
        which = "" if not cost.unpriced else f" for {', '.join(priced)}"
        cut = "; ASHA's early stops may cut it" if isinstance(space.file.scheduler, AshaScheduler) else ""
        print(f"  GPU-hours: ~{cost.gpu_hours:,.1f}{which} (whole-GPU hours{cut}), from the stated costs "
              f"(rmask_tune/sweep/cost.py, scaled to each trial's batch and task length):")
        for model in priced:
            c = MODEL_COSTS[model]
            print(f"    {model}: {c.step_s:.3g} s per step of {REFERENCE_BATCH} x {REFERENCE_TOKENS} tokens, "
                  f"{c.eval_s:.3g} s per evaluated example; {c.source}")
    if cost.unpriced:
        print(f"  GPU-hours unavailable for {', '.join(cost.unpriced)}: "
              "no stated step cost in rmask_tune/sweep/cost.py")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` subcommand."""
    sweep = sub.add_parser(
        "sweep",
        help="search learning rates (x ratios, tasks, models, methods, seeds) on Ray Tune with MLflow tracking",
        description="Run a search-space YAML file (see search_spaces/) on an embedded local Ray, or on a running "
        "Ray cluster with --address. Every trial is logged to MLflow; an interrupted sweep continues with --resume.",
    )
    sweep.add_argument("file", help="search-space YAML file")
    sweep.add_argument("--resume", action="store_true", help="continue the interrupted sweep in the file's storage_path")
    sweep.add_argument("--address", help="Ray cluster to run on: 'auto' or HOST:PORT (default: a local Ray)")
    sweep.add_argument("--lr-from", metavar="LAW_JSON",
                       help="replace the law's method's LR grids by narrow grids (a decade wide) around its "
                            "recommendations for each model and task")
    sweep.add_argument("--lr-points", type=int, metavar="N",
                       help="LRs in each --lr-from grid (default 5); 1 trains the recommendation alone (check runs)")
    sweep.add_argument("--prior", metavar="LAW_JSON",
                       help="search each cell with the law-guided searcher (docs/searcher.md) from this law.json: "
                            "a few LRs of the file's grids per cell instead of all of them (search type law)")
    sweep.add_argument("--skip-done", action="append", default=[], metavar="SOURCE",
                       help="run only the grid's trials that SOURCE (a sweep export, sweep folder or YAML; repeatable) "
                            "did not end (finished, diverged or stopped by ASHA) with the same configuration and "
                            "settings: a sitting on a machine without the earlier sittings' runs/. ASHA then ranks a "
                            "trial only against the peers of its cell that run in this sitting; a law search observes "
                            "SOURCE's results as its own. Grid or law search, not optuna; not with --resume")
    sweep.add_argument("--join", action="store_true",
                       help="add this sweep's trials to an MLflow experiment that already holds another sweep's "
                            "(only when both have the same settings; default: refuse)")
    sweep.add_argument("--allow-failures", action="store_true",
                       help="exit 0 even when trials errored or the sweep was interrupted (default: exit 1)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="validate the file, list the trials' grids, estimate their optimizer steps and GPU-hours, then stop")
    sweep.set_defaults(run=_run)
