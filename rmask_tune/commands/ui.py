"""``rmask-tune ui [STORAGE_OR_SWEEP_FILE]``: browse a sweep's MLflow runs in the MLflow UI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# The server's settings, unless the user set them: no telemetry, and none of MLflow 3's background job
# workers (GenAI judges and scorers, a dozen processes a sweep's runs never use).
SERVER_ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Seconds the server gets to exit on SIGTERM before it is killed.
STOP_GRACE_S = 10.0


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


def experiment_of(target: str) -> str | None:
    """The sweep's experiment name, known from a search-space file or sweep.json; None for a bare store."""
    path = Path(target)
    if path.is_file():
        from rmask_tune.sweep import load_space

        return load_space(path).experiment_name
    state = path / "sweep.json"
    return json.loads(state.read_text())["experiment"] if state.is_file() else None


def prepare_experiments(uri: str, name: str | None) -> list[tuple[str, str]]:
    """(name, id) of the sweep's experiment (or, for a bare store, of every experiment but Default), each
    marked as model training with the sweep's runs view, so older stores open on their runs too."""
    from mlflow import MlflowClient

    from rmask_tune.errors import RmaskError
    from rmask_tune.sweep.mlflow_view import mark_experiment

    client = MlflowClient(uri)
    if name is not None:
        found = client.get_experiment_by_name(name)
        experiments = [] if found is None else [found]
    else:
        experiments = [e for e in client.search_experiments() if e.name != "Default"]
    if not experiments:
        raise RmaskError(f"{uri} holds no experiment {name!r}" if name else f"{uri} holds no sweep's experiment")
    for experiment in experiments:
        mark_experiment(client, experiment.experiment_id)
    return [(e.name, e.experiment_id) for e in experiments]


def _run(args: argparse.Namespace) -> None:
    from rmask_tune.errors import RmaskError
    from rmask_tune.sweep.mlflow_view import runs_url

    uri = tracking_uri_of(args.target)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if uri.startswith(("http://", "https://")):
        print(f"this sweep logs to the MLflow server at {uri}; open it there")
        return
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise RmaskError(f"no MLflow store at {uri[len('sqlite:///') :]} (has the sweep run yet?)")
    base = f"http://127.0.0.1:{args.port}"
    experiments = prepare_experiments(uri, experiment_of(args.target))
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    env = {**SERVER_ENVIRONMENT, **os.environ}
    print(f"MLflow UI for {uri}: {base}  (Ctrl-C stops it)", flush=True)
    for name, experiment_id in experiments:
        print(f"  {name}: runs  {runs_url(base, experiment_id)}", flush=True)
        print(f"  {' ' * len(name)}  charts  {runs_url(base, experiment_id, charts=True)}", flush=True)
    code = serve(command, env)
    if code is not None and code != 0:
        raise RmaskError(f"the MLflow server stopped with exit code {code} (is port {args.port} in use? try --port)")


class _Stop(Exception):
    """SIGTERM or SIGHUP reached the command (a process manager or a closed terminal ends it)."""


def _raise_stop(signum, frame) -> None:
    raise _Stop


def serve(command: list[str], env: dict) -> int | None:
    """Run the server in its own process group until it exits (its exit code) or this command is ended by
    Ctrl-C, SIGTERM or SIGHUP (None): then the whole group (mlflow and its uvicorn) is ended and waited for."""
    server = subprocess.Popen(command, env=env, start_new_session=True)
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = server.wait()
    except (KeyboardInterrupt, _Stop):
        code = None
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        end_group(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def end_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to ``process``'s group, SIGKILL to what is left after ``grace_s``; returns once the group is gone."""
    group = process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(group, process):
            time.sleep(0.05)
        if not _group_alive(group, process):
            break
    process.wait()


def _group_alive(group: int, process: subprocess.Popen) -> bool:
    process.poll()  # reap the direct child, so it does not count as alive
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ui`` subcommand."""
    ui = sub.add_parser("ui", help="open a sweep's MLflow runs in the MLflow UI (on 127.0.0.1)")
    ui.add_argument("target", nargs="?", default=".", help="a search-space file or a sweep's storage folder (default: .)")
    ui.add_argument("--port", type=int, default=5000, help="port to serve on (default 5000)")
    ui.set_defaults(run=_run)
