"""``rmask-tune sweep FILE``: run a search-space file on Ray Tune, logging every trial to MLflow."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.sweep.runner import set_environment

    set_environment()  # before anything imports ray
    from rmask_tune.sweep import load_space

    space = load_space(args.file)
    if args.lr_from:
        space.law = _law(args.lr_from, space)
    if args.dry_run:
        _print_plan(space)
        return
    from rmask_tune.sweep.runner import run_sweep

    run_sweep(space, resume=args.resume, address=args.address)


def _law(path: str, space):
    from rmask_tune.errors import RmaskError
    from rmask_tune.law import load_law

    law = load_law(path)
    if law.method not in space.file.methods:
        raise RmaskError(f"{path} is a law for method '{law.method}', which {space.source} does not sweep")
    return law


def _print_plan(space) -> None:
    """What the sweep would run: its trial count and each cell's learning rates."""
    print(f"{space.name}: {space.num_trials()} trials ({space.file.search.type} search, {space.file.scheduler.type} scheduler, "
          f"{space.epochs} epochs), storage {space.storage}")  # fmt: skip
    for cell in space.cells():
        ratio = "" if cell.ratio is None else f" {cell.ratio * 100:g}%"
        lrs = ", ".join(f"{lr:.3g}" for lr in cell.lrs) or "no learning rate"
        print(f"  {cell.model} {cell.task} {cell.method}{ratio}: {lrs}")


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
    sweep.add_argument("--lr-from", metavar="LAW_JSON", help="replace the law's method's LR grids by narrow grids around its predictions")
    sweep.add_argument("--dry-run", action="store_true", help="validate the file and list the trials' grids, then stop")
    sweep.set_defaults(run=_run)
