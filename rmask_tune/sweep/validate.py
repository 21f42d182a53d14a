"""Reading a search-space file: its YAML, its schema, then the checks the types cannot make (names against
the model, task and method registries, grids against methods, settings against TrialConfig). Everything is
checked before Ray starts; a problem is one RmaskError that names the field and its line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rmask_tune.errors import RmaskError
from rmask_tune.sweep.plan import SweepSpace, trial_point
from rmask_tune.sweep.schema import AshaScheduler, MethodGrid, SweepFile
from rmask_tune.sweep.yaml_lines import dotted, locate, read_yaml

# TrialConfig fields a sweep sets per trial, or in the ``data`` section, rather than in ``training``.
SWEPT_FIELDS = ("model", "task", "method", "ratio", "density", "lr", "seed", "method_options")
DATA_FIELDS = ("data_dir", "train_examples", "dev_examples", "test_examples")
# Settings every trial of a sweep shares, which ``task_settings`` cannot override.
SWEEP_WIDE_FIELDS = ("epochs", "data_dir")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

class _Invalid(Exception):
    """A problem at a place in the file (a key path)."""

    def __init__(self, loc: tuple, message: str):
        super().__init__(message)
        self.loc, self.message = loc, message


def load_space(path: str | Path) -> SweepSpace:
    """Read and validate a search-space file; relative paths in it are resolved against the CWD."""
    path = Path(path)
    data, node = read_yaml(path)
    try:
        if not isinstance(data, dict):
            raise _Invalid((), "a search-space file is a mapping of settings (name, models, tasks, methods, ...)")
        try:
            sweep = SweepFile.model_validate(data)
        except ValidationError as error:
            raise _from_pydantic(error.errors()[0]) from None
        data_dir, storage = _data_dir(sweep), _storage(sweep)
        space = SweepSpace(_resolved_names(sweep), path, data_dir, storage)
        _check(space)
    except _Invalid as problem:
        line, found = locate(node, problem.loc)
        where = f"{path}:{line}" if line else str(path)
        field = f"{dotted(found)}: " if found else ""
        raise RmaskError(f"{where}: {field}{problem.message}") from None
    return space


def _from_pydantic(error: dict) -> _Invalid:
    loc, kind, ctx = tuple(error["loc"]), error["type"], error.get("ctx") or {}
    if kind == "unknown_key":
        return _Invalid(loc + (ctx["key"],), error["msg"])
    if kind == "missing":
        return _Invalid(loc[:-1], f"'{loc[-1]}' is required")
    if kind == "value_error":
        return _Invalid(loc, str(ctx.get("error", error["msg"])))
    message = error["msg"][0].lower() + error["msg"][1:]
    value = error.get("input")
    return _Invalid(loc, message if isinstance(value, (dict, list)) else f"{message}, got {value!r}")


def _data_dir(sweep: SweepFile) -> str | None:
    """``data.data_dir`` (else ``$RMASK_DATA_DIR``) as an absolute path; None leaves the data to the hub."""
    raw = sweep.data.data_dir or os.environ.get("RMASK_DATA_DIR")
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        where = ("data", "data_dir") if sweep.data.data_dir else ()
        raise _Invalid(where, f"data directory not found: {raw}" + ("" if where else " (from $RMASK_DATA_DIR)"))
    return str(path)


def _storage(sweep: SweepFile) -> Path:
    """Where the sweep keeps Tune's folders, trial outputs and (by default) the MLflow store."""
    return Path(sweep.storage_path or Path("runs") / sweep.name).expanduser().resolve()


def _resolved_names(sweep: SweepFile) -> SweepFile:
    """The file with its models, tasks and ``task_settings`` keys checked and in their resolved spelling (a local
    model folder made absolute, a task's canonical name), its grids checked against the methods and its
    settings against TrialConfig: the checks pydantic's types cannot make that need no paths."""
    if not _NAME.match(sweep.name):
        raise _Invalid(("name",), f"a sweep name is letters, digits, '.', '_' and '-', got {sweep.name!r}")
    resolved_models = [_check_model(i, model) for i, model in enumerate(sweep.models)]
    resolved_tasks = [_check_task(i, task) for i, task in enumerate(sweep.tasks)]
    for index, (key, values) in enumerate((("models", resolved_models), ("tasks", resolved_tasks), ("seeds", sweep.seeds))):
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise _Invalid((key,), f"listed twice: {', '.join(duplicates)}")
    for method, grid in sweep.methods.items():
        _check_method(method, grid)
    _check_training(sweep.training)
    task_settings = _check_task_settings(sweep.task_settings, resolved_tasks)
    return sweep.model_copy(update={"models": resolved_models, "tasks": resolved_tasks, "task_settings": task_settings})


def _check(space: SweepSpace) -> None:
    """The checks that need the space: epochs against the scheduler, the store, each task's first trial."""
    sweep = space.file
    max_epochs = getattr(sweep.scheduler, "max_epochs", None)
    epochs = sweep.training.get("epochs")
    if max_epochs is not None and epochs is not None and int(epochs) != max_epochs:
        raise _Invalid(
            ("scheduler", "max_epochs"),
            f"must equal training.epochs ({epochs}): trials train for training.epochs and ASHA stops at max_epochs",
        )
    if isinstance(sweep.scheduler, AshaScheduler) and sweep.scheduler.grace_period > space.epochs:
        raise _Invalid(("scheduler", "grace_period"), f"is more than the {space.epochs} epochs a trial trains")
    if sweep.mlflow.tracking_uri is not None and not sweep.mlflow.tracking_uri.strip():
        raise _Invalid(("mlflow", "tracking_uri"), "must not be empty")
    for task in sweep.tasks:
        _check_task_trials(space, task)


def _check_task_trials(space: SweepSpace, task: str) -> None:
    """A task's first trial is a valid TrialConfig, and its objective suits the task."""
    from rmask_tune.tasks import get_task
    from rmask_tune.trainer.config import TrialConfig

    own = space.task_settings(task)
    for key in DATA_FIELDS[1:]:
        count = own.get(key, getattr(space.file.data, key))
        trains = [m for m in space.file.methods if m != "none"]
        if count == 0 and (key != "train_examples" or trains):
            where = ("task_settings", task, key) if key in own else ("data", key)
            why = f"methods {', '.join(trains)} train on them" if key == "train_examples" else "every trial needs them"
            raise _Invalid(where, f"0 {key.split('_')[0]} examples: {why}")
    cell = next(c for c in space.cells() if c.task == task)
    point = trial_point(cell, cell.lrs[0] if cell.lrs else None, space.file.seeds[0])
    try:
        config = TrialConfig.from_dict(space.trial_config(point))
    except RmaskError as error:
        raise _Invalid(("task_settings", task) if own else ("training",), str(error)) from None
    if get_task(task).kind == "generation" and config.objective == "classification":
        where = ("task_settings", task, "objective") if "objective" in own else ("training", "objective")
        raise _Invalid(
            where, f"{task} is a generation task, which trains on the LM loss: give it objective lm in task_settings"
        )


def _check_model(index: int, name: str) -> str:
    """An alias, an existing local folder / .gguf file (made absolute) or an ``org/name`` hub id."""
    from rmask_tune.models import MODEL_ALIASES

    if name in MODEL_ALIASES:
        return name
    path = Path(name).expanduser()
    if path.is_dir() or (path.suffix == ".gguf" and path.is_file()):
        return str(path.resolve())
    if _HUB_ID.match(name) and not name.startswith((".", "~", "/")):
        return name
    aliases = ", ".join(MODEL_ALIASES)
    raise _Invalid(("models", index), f"unknown model '{name}': not an alias ({aliases}), a local folder or an org/name hub id")


def _check_task(index: int, name: str) -> str:
    from rmask_tune.tasks import get_task

    try:
        return get_task(name).name
    except RmaskError as error:
        raise _Invalid(("tasks", index), str(error)) from None


def _check_method(method: str, grid: MethodGrid) -> None:
    from rmask_tune.methods import METHODS, method_options

    where = ("methods", method)
    if method not in METHODS:
        raise _Invalid(where, f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    options = method_options(method)
    takes_ratio = "ratio" in options
    if grid.ratios is not None and not takes_ratio:
        raise _Invalid(where + ("ratios",), f"method '{method}' takes no ratio")
    if grid.ratios is None and {"ratio", "density"} <= set(options):
        raise _Invalid(where, f"method '{method}' needs ratios (fractions like 0.001, or percentages like '0.1%')")
    for key in ("lr", "lr_by_ratio"):
        if method == "none" and getattr(grid, key) is not None:
            raise _Invalid(where + (key,), "method 'none' trains nothing, so it takes no learning rate")
    if grid.lr_by_ratio is not None and grid.ratios is None:
        raise _Invalid(where + ("lr_by_ratio",), f"method '{method}' takes no ratio, so it takes no per-ratio grids")
    if grid.ratios is not None and len(set(grid.ratios)) != len(grid.ratios):
        raise _Invalid(where + ("ratios",), "a ratio is listed twice")
    for key, lrs in [("lr", grid.lr)] + [(("lr_by_ratio", r), g) for r, g in (grid.lr_by_ratio or {}).items()]:
        twice = sorted({f"{lr:g}" for lr in lrs or () if lrs.count(lr) > 1})
        if twice:
            raise _Invalid(where + ((key,) if isinstance(key, str) else key), f"learning rate listed twice: {', '.join(twice)}")
    strays = [f"{r:g}" for r in grid.lr_by_ratio or {} if r not in grid.ratios]
    if strays:
        raise _Invalid(where + ("lr_by_ratio",), f"grid for ratio(s) not in ratios: {', '.join(strays)}")
    uncovered = [r for r in grid.ratios or [None] if not grid.lrs(r)]
    if method != "none" and uncovered:
        which = "" if grid.ratios is None else \
            f" or lr_by_ratio for each ratio (none for {', '.join(f'{r:g}' for r in uncovered)})"
        raise _Invalid(where, f"method '{method}' needs an lr grid (a list, or {{min, max, per_decade}}){which}")
    for name in grid.options:
        if name in ("ratio", "density"):
            raise _Invalid(where + ("options", name), f"set {name} through the method's ratios grid")
        if name not in options:
            known = ", ".join(o for o in options if o not in ("ratio", "density")) or "none"
            raise _Invalid(where + ("options", name), f"unknown option for '{method}' (its options: {known})")


def _check_training(training: dict) -> None:
    """Each training setting on its own through TrialConfig, so an error names its key."""
    from rmask_tune.trainer.config import TrialConfig

    known = [f for f in TrialConfig.__dataclass_fields__ if f not in SWEPT_FIELDS + DATA_FIELDS]
    for key, value in training.items():
        where = ("training", key)
        if key in SWEPT_FIELDS:
            raise _Invalid(where, f"'{key}' is swept: set it in models / tasks / methods / seeds")
        if key in DATA_FIELDS:
            raise _Invalid(where, f"'{key}' belongs in the data section")
        if key not in known:
            raise _Invalid(where, f"unknown training setting '{key}' (known: {', '.join(known)})")
        _check_setting(where, key, value)


def _check_task_settings(task_settings: dict, tasks: list[str]) -> dict:
    """Each task's overrides checked key by key; the mapping keyed by the tasks' canonical names."""
    from rmask_tune.tasks import get_task
    from rmask_tune.trainer.config import TrialConfig

    known = [f for f in TrialConfig.__dataclass_fields__ if f not in SWEPT_FIELDS + SWEEP_WIDE_FIELDS]
    resolved = {}
    for name, settings in task_settings.items():
        where = ("task_settings", name)
        try:
            task = get_task(name).name
        except RmaskError as error:
            raise _Invalid(where, str(error)) from None
        if task not in tasks:
            raise _Invalid(where, f"task '{task}' is not in this file's tasks ({', '.join(tasks)})")
        if task in resolved:
            raise _Invalid(where, f"task '{task}' has settings twice")
        for key, value in settings.items():
            if key in SWEPT_FIELDS:
                raise _Invalid(where + (key,), f"'{key}' is swept: set it in models / tasks / methods / seeds")
            if key in SWEEP_WIDE_FIELDS:
                raise _Invalid(where + (key,), f"'{key}' is the same for every task: set it in training or data")
            if key not in known:
                raise _Invalid(where + (key,), f"unknown task setting '{key}' (known: {', '.join(known)})")
            _check_setting(where + (key,), key, value)
        resolved[task] = settings
    return resolved


def _check_setting(where: tuple, key: str, value: Any) -> None:
    """One TrialConfig setting on its own, so an error names its key."""
    from rmask_tune.trainer.config import TrialConfig

    try:
        TrialConfig(model="m", task="t", method="full", **{key: value})
    except RmaskError as error:
        raise _Invalid(where, str(error)) from None
    except TypeError:
        raise _Invalid(where, f"invalid value {value!r}") from None
