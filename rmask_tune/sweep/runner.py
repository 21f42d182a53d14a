"""``run_sweep``: a validated search space through Ray Tune, resumable, with MLflow tracking and a summary.

The storage folder holds everything a sweep writes::

    <storage_path>/sweep.json        the sweep's id and the settings it started with
    <storage_path>/mlflow.db         the MLflow store (unless mlflow.tracking_uri points elsewhere)
    <storage_path>/mlartifacts/      MLflow artifacts of a local store
    <storage_path>/tune/             Ray Tune's experiment folder (what --resume restores)
    <storage_path>/trials/<id>/      each trial's metrics.json, adapter and attempts.jsonl
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

from rmask_tune.errors import RmaskError
from rmask_tune.sweep.plan import SweepSpace
from rmask_tune.sweep.reaper import Reaper
from rmask_tune.sweep.results import SweepOutcome, print_summary, summary_rows, timing
from rmask_tune.sweep.state import SweepState

# The embedded local Ray: Tune keeps only small configs and results in the object store.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# Ray's own defaults that suit a laptop or a test run: no token auth, no Windows/macOS multi-node.
RAY_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Save Tune's experiment state often, so an interrupted sweep resumes close to where it stopped; Tune's
# own console output gives way to the sweep's progress line (its verbose=0 still prints a header).
TUNE_ENVIRONMENT = {"TUNE_GLOBAL_CHECKPOINT_S": "2", "RAY_AIR_NEW_OUTPUT": "0"}


def set_environment() -> None:
    """Ray, Tune and MLflow settings the sweep needs, unless the user set them (call before importing ray)."""
    for key, value in {**RAY_ENVIRONMENT, **TUNE_ENVIRONMENT, "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
        os.environ.setdefault(key, value)


def run_sweep(space: SweepSpace, *, address: str | None = None, stream=None, join: bool = False) -> SweepOutcome:
    """Run (or, for a space resolved with ``resume``, continue) ``space``; print progress to stderr and a
    summary to ``stream``.

    ``address`` connects to a running Ray cluster (``auto`` or ``HOST:PORT``); without it an embedded
    local Ray is started, or the one this process already has is used. The trials in ``space.done``
    (``--skip-done``: ended in earlier sittings) are left out, so ASHA ranks each trial only against the
    peers of its cell that run in this sweep. ``join`` lets a new sweep add its trials to an MLflow experiment
    that holds another sweep's with the same settings. A new sweep that fails before any trial started leaves
    its folder as it found it (no sweep.json), so it can start again. Returns whether every trial ended.
    """
    from rmask_tune.sweep.tracking import SweepTracker, probe_tracking_uri

    stream = stream or sys.stdout
    started = time.time()
    set_environment()
    state = SweepState.load(space) if space.resume else SweepState.new(space)
    probe_tracking_uri(state.tracking_uri, space.storage)
    _quiet_loggers()
    started_ray = _connect(address, space)
    reaper = Reaper() if started_ray else None  # takes Ray down should this process die without doing so
    tracker = SweepTracker(state.tracking_uri, state.experiment, space.name, state.sweep_id, space.storage / "mlartifacts")
    try:
        if not space.resume:
            state.save(space.storage)
        tracker.open(_sweep_params(space, state), space.shared_settings(), join=join)
        tuner = _tuner(space, tracker, state)
        ray_ready = time.time()
        try:
            results = tuner.fit()
        except Exception as error:  # Tune's driver died, e.g. on a worker Ray killed for memory
            if not space.resume and not _trials_started(space):
                raise RmaskError(f"the sweep stopped before any trial started: {root_cause(error)}") from None
            cut = tracker.abandon()
            raise RmaskError(
                f"the sweep stopped: {root_cause(error)}; {cut} running trial(s) marked interrupted; continue with "
                f"`rmask-tune sweep {space.source} --resume`"
            ) from None
    except BaseException:
        if not space.resume and not _trials_started(space):
            state.forget(space.storage, tracker)  # nothing ran: the folder can start this sweep again
        raise
    finally:
        if started_ray:
            import ray

            ray.shutdown()
            reaper.stop()
    wall = time.time() - started
    rows = summary_rows(results, interrupted=tracker.trials_with_status("interrupted"))
    print_summary(rows, space, tracker, stream, timing(rows, space.file.max_concurrent_trials, started, ray_ready, wall))
    return SweepOutcome.of(rows, space)


def _trials_started(space: SweepSpace) -> bool:
    """Whether any trial of the sweep has started (each one's folder appears under trials/ when it does)."""
    trials = space.storage / "trials"
    return trials.is_dir() and any(trials.iterdir())


def root_cause(error: BaseException) -> str:
    """The first line of the exception at the bottom of ``error``'s chain (what Ray or Tune actually hit)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _sweep_params(space: SweepSpace, state: SweepState) -> dict:
    return {
        "sweep_file": state.source,
        "sweep_name": space.name,
        "num_trials": space.num_trials(),
        "search": space.file.search.type,
        "scheduler": space.file.scheduler.type,
        "epochs": space.epochs,
        "lr_from_law": space.law is not None,
        "skipped_done": len(space.done),
    }


def _quiet_loggers() -> None:
    """MLflow's database migrations and Ray's start-up notes are not the user's concern."""
    for name in ("alembic", "mlflow.store.db.utils", "ray", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _connect(address: str | None, space: SweepSpace) -> bool:
    """Connect to ``address``, reuse this process's Ray, or start a local one (True when started here)."""
    import ray

    if address is not None:
        _probe_address(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise RmaskError(f"cannot connect to the Ray cluster at {address}: {str(error).splitlines()[0]}") from None
        return False
    started = not ray.is_initialized()
    if started:
        ray.init(
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            _node_ip_address="127.0.0.1",
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    have, resources = ray.cluster_resources(), space.file.resources
    for name, need, key in (("CPUs", resources.cpus, "CPU"), ("GPUs", resources.gpus, "GPU")):
        if need > have.get(key, 0):
            if started:
                ray.shutdown()
            raise RmaskError(
                f"a trial needs {need:g} {name} (resources), this machine has {have.get(key, 0):g}; "
                "lower resources or run on a cluster with --address"
            )
    return started


def _probe_address(address: str) -> None:
    """A HOST:PORT that accepts no connection is a one-line error (ray.init would retry for minutes)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")  # HOST:PORT or ray://HOST:PORT
    if address == "auto" or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise RmaskError(f"no Ray cluster answers at {address} ({error.strerror or error}); check --address") from None


def _tuner(space: SweepSpace, tracker, state: SweepState):
    from ray import tune

    from rmask_tune.sweep.callbacks import MlflowCallback, ProgressCallback
    from rmask_tune.sweep.search import trial_dirname, tune_scheduler, tune_search
    from rmask_tune.sweep.plan import METRIC, MODE
    from rmask_tune.sweep.trainable import run_tune_trial

    resources = space.file.resources
    trainable = tune.with_resources(run_tune_trial, {"cpu": resources.cpus, "gpu": resources.gpus})
    experiment = space.storage / "tune"
    if space.resume and tune.Tuner.can_restore(str(experiment)):
        # Callbacks, scheduler and searcher come back from the experiment as they were saved.
        return tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=True, restart_errored=False
        )
    trials_dir = space.storage / "trials"
    param_space, search_alg, num_samples = tune_search(space, trials_dir)
    callbacks = [
        ProgressCallback(space.num_trials()),
        MlflowCallback(tracker, _sweep_params(space, state)),
    ]
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode=MODE,
            search_alg=search_alg,
            scheduler=tune_scheduler(space),
            num_samples=num_samples,
            max_concurrent_trials=None if search_alg else space.file.max_concurrent_trials,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=space.file.max_failures),
            verbose=0,
        ),
    )
