"""Read a sweep's trials back from its MLflow store (the schema the sweep writes) or from its export.

Each trial run is first read into a ``RunRecord`` (what the store holds for it, and what an export
carries), then into the ``Trial`` a report uses: the same records give the same report either way.
A sweep file (YAML) names its store through the sweep's own loader: ``rmask_tune.report.resolve_source``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from rmask_tune.errors import RmaskError
from rmask_tune.files.atomic import write_atomic
from rmask_tune.runstore.export import encode_export, read_export
from rmask_tune.runstore.names import (
    BEST_DEV, BUDGET_STEPS, EPOCHS_COMPLETED, HISTORIES, ROLE_TAG, ROLE_TRIAL, STATUS_TAG, TAG_PREFIX, TEST, TRAINABLE_FRACTION,
    TRIAL_ID_TAG, WALL_TIME, is_none,
)
from rmask_tune.runstore.record import RunRecord, Source

TERMINAL = ("finished", "diverged", "stopped")
# Significant digits at which configurations compare numbers: a learning rate or ratio logged as 0.1 or
# as 0.10000000000000002 (another formatting, or float arithmetic on another machine) is one value.
SAME_DIGITS = 9
# The per-epoch metric histories kept for every trial (step = epoch).
# Settings every trial of one (model, task) at one budget shares; trials that differ in them are not comparable.
SAME_PER_TASK = ("epochs", "train_examples", "dev_examples", "test_examples")


@dataclass
class Trial:
    """One trial (an MLflow child run), with the numbers a report needs."""

    run_id: str
    trial_id: str
    status: str  # finished | diverged | stopped | errored | running
    model: str
    task: str
    method: str
    ratio: float | None  # None for methods without a ratio (baselines)
    lr: float | None  # None for a method that trains nothing
    seed: int
    metric: str
    dev: float | None  # best dev metric so far
    test: float | None
    epochs: int  # epochs completed
    planned_epochs: int | None
    wall_time_s: float | None
    trainable_params: int | None
    total_params: int | None
    start_time: int
    record: RunRecord | None = field(default=None, repr=False, compare=False)  # what it was read from
    steps: int | None = None  # its budget: planned optimizer steps (``budget_steps``); None when underivable

    @property
    def configuration(self) -> tuple:
        """What the trial is a run of: runs with the same configuration are re-runs of one another."""
        return configuration_key(self.model, self.task, self.method, self.ratio, self.lr, self.seed)

    @property
    def trainable_fraction(self) -> float | None:
        if self.trainable_params is None or not self.total_params:
            return self.ratio
        return self.trainable_params / self.total_params


def configuration_key(model: str, task: str, method: str, ratio, lr, seed) -> tuple:
    """The identity of a trial's configuration (a report keeps the newest of its re-runs, a sweep with
    --skip-done leaves it out once ended), its values compared as ``comparable`` compares them."""
    return tuple(comparable(value) for value in (model, task, method, ratio, lr, seed))


def comparable(value):
    """A configuration value (as given, or as an MLflow param's text) as configurations compare it: a
    none-like value as None, a number at SAME_DIGITS significant digits, any other text as it is."""
    if is_none(value):
        return None
    try:
        return float(f"{float(value):.{SAME_DIGITS}g}")
    except (TypeError, ValueError):
        return value


def resolve_source(source: str, tracking_uri: str | None = None) -> Source:
    """Turn an experiment name, a sweep folder or a sweep export into where its runs live.

    A folder must hold ``mlflow.db`` (the sweep's default store); its experiment is the only one in
    the store, or the folder's name. An export (``*.json.gz`` or ``*.json``, see
    ``rmask_tune.runstore.export``) stands in for the store it came from.
    """
    path = Path(source)
    if path.is_file() and path.name.endswith((".json.gz", ".json")):
        export = read_export(path)
        return Source(export.tracking_uri, export.experiment, export)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        raise RmaskError(f"{path} is a sweep file: name its folder, store or export here")
    if path.is_dir():
        db = path / "mlflow.db"
        if not db.is_file() and tracking_uri is None:
            raise RmaskError(f"sweep folder {path} has no mlflow.db; pass --tracking-uri")
        uri = tracking_uri or f"sqlite:///{db.resolve()}"
        names = _experiment_names(uri)
        if len(names) == 1:
            return Source(uri, names[0])
        if path.resolve().name in names:
            return Source(uri, path.resolve().name)
        raise RmaskError(f"{db} holds experiments {', '.join(names) or 'none'}; name one instead of the folder")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RmaskError(f"{source!r} is not a sweep folder or YAML file; for an experiment name pass --tracking-uri")
    return Source(uri, source)


def check_has_trials(count: int, experiment: str) -> None:
    """A report or an export needs trial runs: an experiment without any is refused, the same way by both."""
    if not count:
        raise RmaskError(f"experiment {experiment!r} has no trial runs (tag {ROLE_TAG}={ROLE_TRIAL})")


def budget_steps(params: dict[str, str]) -> int | None:
    """A trial's budget, the optimizer steps it was planned to train: its ``budget_steps`` param, else (trials
    from before it was recorded) derived from its config params as the trainer counts them
    (``TrialConfig.optimizer_steps``: ``max_steps``, else epochs x ceil(ceil(train_examples / batch_size) /
    grad_accum)). A derived budget counts ``train_examples`` as requested: for a task whose training split is
    smaller, it is the budget the trial asked for. None when the params do not say."""
    recorded = _num(params.get(BUDGET_STEPS), int)
    if recorded is not None:
        return recorded
    max_steps = _num(params.get("max_steps"), int)
    if max_steps is not None:
        return max_steps
    epochs, examples = _num(params.get("epochs"), int), _num(params.get("train_examples"), int)
    batch, accum = _num(params.get("batch_size"), int), _num(params.get("grad_accum"), int) or 1
    if None in (epochs, examples, batch) or batch < 1 or accum < 1:
        return None
    batches = -(-examples // batch)
    return epochs * -(-batches // accum)


def check_one_sweep(trials: list[Trial], experiment: str) -> None:
    """The trials of one (model, task) at one budget (``Trial.steps``) must share their data and training length
    (``SAME_PER_TASK``): their per-example results are compared pairwise. Budgets may differ (the law's budget
    term is fitted across them, each budget's cells on their own); a store holding sweeps that differ at one
    budget is named, not reported."""
    seen: dict[tuple, dict[str, list[Trial]]] = {}
    for trial in trials:
        params = trial.record.params if trial.record is not None else {}
        for name in SAME_PER_TASK:
            if name in params:
                seen.setdefault((trial.model, trial.task, trial.steps, name), {}).setdefault(params[name], []).append(trial)
    for (model, task, steps, name), values in seen.items():
        if len(values) > 1:
            mix = " and ".join(f"{value} ({len(group)} trial(s))" for value, group in sorted(values.items()))
            budget = "" if steps is None else f", all at a budget of {steps} steps"
            raise RmaskError(f"experiment {experiment!r} mixes sweeps: its {model} {task} trials ran with {name} {mix}"
                             f"{budget}; report each sweep on its own (its own store, export or experiment)")


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per trial's examples.json
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if not db.is_file():  # MLflow would silently create an empty store
            raise RmaskError(f"no MLflow store at {db}")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_names(uri: str) -> list[str]:
    return [e.name for e in _client(uri).search_experiments() if e.name != "Default"]


def _num(value, cast=float):
    if is_none(value):
        return None
    try:
        return cast(float(value)) if cast is int else cast(value)
    except ValueError:
        return None


def load_trials(source: Source) -> tuple[list[Trial], int]:
    """Every trial run in the experiment (``rmask.role`` = trial), newest first, and how many runs
    were unreadable (no ``model``/``task`` param).

    Stopped or running trials may lack the final metrics: their best dev metric and epoch count
    come from the ``dev_metric`` history.
    """
    records, unreadable = load_records(source)
    return [trial_of(record) for record in records], unreadable


def load_records(source: Source) -> tuple[list[RunRecord], int]:
    """The readable trial runs' records, newest first, and how many runs were unreadable."""
    if source.export is not None:
        return list(source.export.records), source.export.unreadable
    client = _client(source.tracking_uri)
    experiment = client.get_experiment_by_name(source.experiment)
    if experiment is None:
        known = ", ".join(_experiment_names(source.tracking_uri)) or "none"
        raise RmaskError(f"no experiment {source.experiment!r} in {source.tracking_uri} (experiments: {known})")
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_TRIAL}'",
            max_results=5000, page_token=token, order_by=["attributes.start_time DESC"],
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    readable = [r for r in runs if {"model", "task"} <= set(r.data.params)]
    return [_record(client, run) for run in readable], len(runs) - len(readable)


def _record(client, run) -> RunRecord:
    run_id = run.info.run_id
    history = {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in HISTORIES}
    return RunRecord(
        run_id=run_id,
        run_status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        params=dict(run.data.params),
        metrics=dict(run.data.metrics),
        tags={key: value for key, value in run.data.tags.items() if key.startswith(TAG_PREFIX)},
        history={name: sorted(points) for name, points in history.items()},
        examples=_examples_artifact(run.info.artifact_uri, client.tracking_uri),
    )


def _examples_artifact(artifact_uri: str, tracking_uri: str) -> dict | None:
    """The run's examples.json, or None when it has none (read from the artifact store directly: the
    client would look the run up again for every call)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from rmask_tune.tasks.results import EXAMPLES_FILE

    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    if EXAMPLES_FILE not in {a.path for a in repository.list_artifacts()}:
        return None
    with tempfile.TemporaryDirectory() as folder:
        return json.loads(Path(repository.download_artifacts(EXAMPLES_FILE, folder)).read_text())


def trial_of(record: RunRecord) -> Trial:
    """The report's view of a trial run."""
    params, metrics, tags = record.params, record.metrics, record.tags
    dev, epochs = metrics.get(BEST_DEV), _num(metrics.get(EPOCHS_COMPLETED), int)
    if dev is None or epochs is None:
        history = record.history.get("dev_metric", [])
        values = [value for _, value in history]
        dev = dev if dev is not None else (max(values) if values else None)
        epochs = epochs if epochs is not None else len({step for step, _ in history})
    wall = metrics.get(WALL_TIME)
    if wall is None and record.end_time:
        wall = (record.end_time - record.start_time) / 1000
    status = tags.get(STATUS_TAG) or ("running" if record.run_status == "RUNNING" else "errored")
    ratio = _num(params.get("ratio"))
    if ratio is None and _num(params.get("density")) is not None:  # a mask given by density
        ratio = metrics.get(TRAINABLE_FRACTION)
    return Trial(
        run_id=record.run_id,
        trial_id=tags.get(TRIAL_ID_TAG, record.run_id),
        status=status,
        model=params["model"],
        task=params["task"],
        method=params.get("method", "random_masking"),
        ratio=ratio,
        lr=_num(params.get("lr")),
        seed=_num(params.get("seed"), int) or 0,
        metric=params.get("metric", "metric"),
        dev=dev,
        test=metrics.get(TEST),
        epochs=epochs,
        planned_epochs=_num(params.get("epochs"), int),
        wall_time_s=wall,
        trainable_params=_num(params.get("trainable_params"), int),
        total_params=_num(params.get("total_params"), int),
        start_time=record.start_time or 0,
        record=record,
        steps=budget_steps(params),
    )


def export_sweep(source: Source, path: str | Path) -> Path:
    """Write the export of ``source``'s trials to ``path`` (atomically; missing folders are created, as a
    report's are); returns ``path``. A store without trial runs is refused, as ``report`` refuses it."""
    records, unreadable = load_records(source)
    check_has_trials(len(records), source.experiment)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, encode_export(source.experiment, source.tracking_uri, records, unreadable))
    return path
