"""The trials of a sweep's grid that earlier sittings already ended (``rmask-tune sweep FILE --skip-done SOURCE``).

A sweep run in several sittings, on machines that do not keep ``runs/``, travels as its sittings' exports (or
stores). A grid point is done when a source holds a run of it that ended (finished, diverged or stopped by ASHA:
``TERMINAL``; stopped by ASHA only for a sweep that stops trials early itself: one without a scheduler trains every
trial to the end, so an earlier sitting's stopped trial runs again) with the same configuration (the report's
identity of re-runs: model, task, method, ratio, LR, seed), the same settings the sweep logs next to them
(``CONFIG_PARAMS``: epochs, examples, batch, objective, scoring, schedule, optimizer, targets, method options, ...)
and a resolved precision this sweep's trials would train in (under auto, a CPU sitting's fp32 trials are not done
for a GPU sitting). A setting a run did not log (sweeps before it was logged) counts as TrialConfig's default, so a
sitting that changed it reruns its trials rather than taking them as done. Errored, interrupted or still-running
runs do not count. Each comes back with its dev metric per epoch: ASHA in a later sitting ranks a trial against
its cell's peers of every sitting, as one uninterrupted sweep would.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import MISSING, fields

from rmask_tune.errors import RmaskError
from rmask_tune.runstore.reader import TERMINAL, comparable, configuration_key, load_records, resolve_source, trial_of
from rmask_tune.sweep.plan import METRIC, EndedTrial, SweepSpace
from rmask_tune.sweep.schema import NoScheduler, OptunaSearch


def done_trials(space: SweepSpace, sources: list[str]) -> list[EndedTrial]:
    """The grid points of ``space`` that a trial run of one of ``sources`` (exports, sweep folders or YAMLs)
    ended with the same configuration and settings, each with what that run recorded."""
    from rmask_tune.runstore.names import CONFIG_PARAMS, param_text
    from rmask_tune.sweep.callbacks import trial_params
    from rmask_tune.trainer.config import TrialConfig

    if isinstance(space.file.search, OptunaSearch):
        raise RmaskError(f"--skip-done needs a grid search: {space.source} samples its learning rates with optuna, "
                         "so its trials are not known before they run")
    ended = defaultdict(list)  # configuration -> the params and best dev of its ended runs
    to_the_end = isinstance(space.file.scheduler, NoScheduler)
    for source in sources:
        records, _ = load_records(resolve_source(source))
        for record in records:
            trial = trial_of(record)
            if trial.status in TERMINAL and not (to_the_end and trial.status == "stopped"):
                best = None if trial.status == "diverged" else trial.dev
                ended[trial.configuration].append((record.params, best, tuple(record.history.get(METRIC, ()))))
    settings = space.settings()

    def text(value):  # a setting as its MLflow param's text compares
        return comparable(str(param_text(value)))

    defaults = {f.name: text(f.default_factory() if f.default is MISSING else f.default)
                for f in fields(TrialConfig) if f.name in CONFIG_PARAMS}

    precisions = expected_precisions(settings, space.file.resources.gpus)

    def done(point: dict) -> list[EndedTrial]:
        logged = trial_params(point, settings)
        key = configuration_key(*(point[name] for name in ("model", "task", "method", "ratio", "lr", "seed")))
        return [EndedTrial(point, best, dev_by_epoch) for params, best, dev_by_epoch in ended.get(key, ())
                if all(text(logged[name]) == (comparable(params[name]) if name in params else defaults[name])
                       for name in CONFIG_PARAMS) and params.get("precision", "unlogged") in precisions]

    return [runs[0] for point in space.grid_trials() if (runs := done(point))]


def expected_precisions(settings: dict, gpus: float) -> set[str]:
    """The resolved precisions (``rmask_tune.precision``) this sweep's trials would train in, plus ``unlogged``
    (a run from before the resolved precision was logged): the named policy, else auto's choice for the
    trials' device: fp32 on CPU, bf16 or fp16 on a GPU (which one depends on the GPU, unknown here)."""
    name = settings.get("precision") or "auto"
    if name != "auto":
        return {name, "unlogged"}
    device = settings.get("device") or ("cuda" if gpus > 0 else "cpu")
    return {"fp32", "unlogged"} if device == "cpu" else {"bf16", "fp16", "unlogged"}
