"""``rmask-tune export``: a sweep's compact export, from which ``rmask-tune report`` regenerates its report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rmask_tune.errors import RmaskError


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.files.atomic import check_writable
    from rmask_tune.report import resolve_source
    from rmask_tune.runstore.export import EXPORT_FILE
    from rmask_tune.runstore.reader import export_sweep

    out = Path(args.out) if args.out else Path(EXPORT_FILE)
    if out.is_dir() or (args.out or "").endswith(("/", os.sep)):
        out = out / EXPORT_FILE
    if out.exists() and not args.overwrite:
        raise RmaskError(f"{out} exists; pass --overwrite or choose another --out")
    check_writable(out.parent, "--out folder")
    where = resolve_source(args.source, args.tracking_uri)
    export_sweep(where, out)
    print(f"exported {where.experiment} to {out} ({out.stat().st_size} bytes)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    export = sub.add_parser("export", help="write a sweep's trials (configs, metrics, per-example results) to one file")
    export.add_argument("source", help="experiment name, sweep folder (holding mlflow.db) or sweep YAML")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's own store)")
    export.add_argument("--out", help="file or folder to write (default: ./sweep-export.json.gz); missing folders are created")
    export.add_argument("--overwrite", action="store_true", help="replace an existing export file")
    export.set_defaults(run=_run)
