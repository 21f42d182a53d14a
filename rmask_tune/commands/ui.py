"""``rmask-tune ui [STORAGE_OR_SWEEP_FILE]``: browse a sweep's MLflow runs in the MLflow UI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def tracking_uri_of(target: str) -> str:
    """The MLflow store of a sweep: from its search-space file, or its storage folder (sweep.json / mlflow.db)."""
    from rmask_tune.errors import RmaskError

    path = Path(target)
    if path.is_file():
        from rmask_tune.sweep import load_space

        return load_space(path).tracking_uri
    state = path / "sweep.json"
    if state.is_file():
        return json.loads(state.read_text())["tracking_uri"]
    if (path / "mlflow.db").is_file():
        return f"sqlite:///{(path / 'mlflow.db').resolve()}"
    raise RmaskError(f"no sweep at {target}: pass a search-space file or a sweep's storage folder (with sweep.json or mlflow.db)")


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.errors import RmaskError

    uri = tracking_uri_of(args.target)
    if uri.startswith(("http://", "https://")):
        print(f"this sweep logs to the MLflow server at {uri}; open it there")
        return
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    print(f"MLflow UI for {uri}: http://127.0.0.1:{args.port}  (Ctrl-C stops it)", flush=True)
    server = subprocess.Popen(command, env=env)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait()
        return
    if code != 0:
        raise RmaskError(f"the MLflow server stopped with exit code {code} (is port {args.port} in use? try --port)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ui`` subcommand."""
    ui = sub.add_parser("ui", help="open a sweep's MLflow runs in the MLflow UI (on 127.0.0.1)")
    ui.add_argument("target", nargs="?", default=".", help="a search-space file or a sweep's storage folder (default: .)")
    ui.add_argument("--port", type=int, default=5000, help="port to serve on (default 5000)")
    ui.set_defaults(run=_run)
