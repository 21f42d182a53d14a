"""The ``rmask-tune`` command line."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from rmask_tune import commands
from rmask_tune.errors import RmaskError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand found in ``rmask_tune.commands``."""
    parser = argparse.ArgumentParser(prog="rmask-tune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in sorted(m.name for m in pkgutil.iter_modules(commands.__path__)):
        importlib.import_module(f"rmask_tune.commands.{module}").register(sub)
    return parser


def installed_version() -> str:
    """The version of the installed ``rmask-tune`` distribution (its package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rmask-tune")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed: no package metadata; pip install -e .)"


INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl+C (128 + SIGINT)


def _normalise_task(args: argparse.Namespace) -> None:
    """Every command's ``--task`` as the registry names it (``sst-2`` is SST-2); an unknown name is refused."""
    if getattr(args, "task", None):
        from rmask_tune.tasks import get_task

        args.task = get_task(args.task).name


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2 (1: a command that did not do all it was asked;
    130: interrupted by Ctrl+C)."""
    args = build_parser().parse_args(argv)
    try:
        _normalise_task(args)
        args.run(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit flush
    except RmaskError as err:
        print(f"rmask-tune: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"rmask-tune: interrupted: {args.command} stopped by Ctrl+C", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # the output went into a reader that stopped early (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
