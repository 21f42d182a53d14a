"""Search-space files: the YAML schema, its validation, and the trials a file describes.

A file names models, tasks, methods (each with its own ratio and learning-rate grids), seeds, the
training and data settings every trial shares (TrialConfig fields), the settings a task overrides
(``task_settings``, e.g. a smaller batch for long inputs), the search (``grid``, ``optuna`` or ``law``), the
early-stopping scheduler, per-trial resources, and where results and MLflow runs go.
Everything is checked before Ray starts; a problem is one RmaskError that names the field and its line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rmask_tune.errors import RmaskError
from rmask_tune.sweep.yaml_lines import dotted, locate, read_yaml

# TrialConfig fields a sweep sets per trial, or in the ``data`` section, rather than in ``training``.
SWEPT_FIELDS = ("model", "task", "method", "ratio", "density", "lr", "seed", "method_options")
DATA_FIELDS = ("data_dir", "train_examples", "dev_examples", "test_examples")
# Settings every trial of a sweep shares, which ``task_settings`` cannot override.
SWEEP_WIDE_FIELDS = ("epochs", "data_dir")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _ratio(value: Any) -> float:
    """A trainable ratio: a fraction in (0, 1], or a percentage string such as ``'0.1%'``."""
    text = value.strip() if isinstance(value, str) else None
    try:
        if isinstance(value, bool):
            raise ValueError
        ratio = float(text[:-1]) / 100 if text and text.endswith("%") else float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a ratio is a fraction in (0, 1] or a percentage like '1%', got {value!r}") from None
    if not (math.isfinite(ratio) and 0 < ratio <= 1):
        raise ValueError(f"a ratio must be in (0, 1] (a fraction of the model; write percentages as '5%'), got {value!r}")
    return ratio


def _lr_grid(value: Any) -> Any:
    """``{min, max, per_decade}`` as its log-spaced list (3 significant digits) from ``min`` to ``max`` (both
    always in it); a number as a one-item list."""
    if isinstance(value, dict):
        grid = LogGrid.model_validate(value)
        decades = math.log10(grid.max / grid.min)
        steps = max(round(decades * grid.per_decade), 1 if grid.max > grid.min else 0)
        return [float(f"{grid.min * 10 ** (i * decades / max(steps, 1)):.3g}") for i in range(steps + 1)]
    return [value] if isinstance(value, (int, float, str)) else value


def _number(value: Any) -> Any:
    """YAML's ``true`` / ``false`` are not numbers (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError(f"a number is needed here, got {str(value).lower()}")
    return value


Ratio = Annotated[float, BeforeValidator(_ratio)]
PositiveLr = Annotated[float, Field(gt=0, allow_inf_nan=False), BeforeValidator(_number)]
Examples = Annotated[int, Field(ge=1), BeforeValidator(_number)]


class _Strict(BaseModel):
    """A section of the file: unknown keys are errors that name the key and the known ones."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if key not in cls.model_fields:
                    known = ", ".join(cls.model_fields)
                    raise PydanticCustomError(
                        "unknown_key", "unknown key '{key}' (known: {known})", {"key": str(key), "known": known}
                    )
        return data


class LogGrid(_Strict):
    """A log-spaced learning-rate grid from ``min`` to ``max`` with ``per_decade`` points per decade."""

    min: PositiveLr
    max: PositiveLr
    per_decade: Annotated[float, Field(ge=1, allow_inf_nan=False), BeforeValidator(_number)] = 2

    @model_validator(mode="after")
    def _ordered(self) -> LogGrid:
        if self.max < self.min:
            raise ValueError(f"max ({self.max:g}) is below min ({self.min:g})")
        return self


LrGrid = Annotated[list[PositiveLr], BeforeValidator(_lr_grid), Field(min_length=1)]


class MethodGrid(_Strict):
    """One method's grids: ``ratios`` (methods that take a ratio), ``lr`` (all but ``none``), ``lr_by_ratio``
    (a ratio's own LR grid, in place of ``lr``: sparser masks want larger LRs), ``options``."""

    ratios: list[Ratio] | None = Field(default=None, min_length=1)
    lr: LrGrid | None = None
    lr_by_ratio: dict[Ratio, LrGrid] | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def lrs(self, ratio: float | None) -> list[float] | None:
        """The learning rates of one ratio: its own grid, else the method's."""
        own = (self.lr_by_ratio or {}).get(ratio)
        return own if own is not None else self.lr


class DataSettings(_Strict):
    """Where the task data is and how many examples each split gets."""

    data_dir: str | None = None
    train_examples: Annotated[int, Field(ge=0), BeforeValidator(_number)] = 1000  # 0: only for method none
    dev_examples: Examples = 500
    test_examples: Examples = 1000


class GridSearch(_Strict):
    """Every combination of the grids."""

    type: Literal["grid"] = "grid"


class OptunaSearch(_Strict):
    """Optuna (TPE) samples ``num_samples`` learning rates, log-uniformly, per model x task x method x ratio x seed."""

    type: Literal["optuna"]
    num_samples: Annotated[int, Field(ge=1)]
    seed: int = 0


class LawGuidedSearch(_Strict):
    """The law-guided searcher (rmask_tune/law_search.py): per cell, a few LRs of its grid at a time, started
    from ``prior`` (a law.json; without one, plain bracketing), until the optimum is bracketed or the cell
    shows no signal. The grids and seeds are the file's: it runs a subset of the grid's trials."""

    type: Literal["law"]
    prior: str | None = None


class AshaScheduler(_Strict):
    """Asynchronous successive halving over epochs on the dev metric."""

    type: Literal["asha"] = "asha"
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2
    max_epochs: Annotated[int, Field(ge=1)] | None = None
    # A trial is stopped only when its dev metric is more than this below the rung's cutoff (metric units).
    # Small dev sets are noisy: a learning rate still climbing after its first epoch can sit a few examples
    # under trials that do nothing at all. About one standard error of the dev metric is a sound value.
    tolerance: Annotated[float, Field(ge=0)] = 0.0


class NoScheduler(_Strict):
    """Every trial trains for all its epochs."""

    type: Literal["none"]


class Resources(_Strict):
    """What one trial reserves: CPUs and (possibly fractional) GPUs."""

    cpus: Annotated[float, Field(gt=0)] = 1
    gpus: Annotated[float, Field(ge=0)] = 0


class MlflowSettings(_Strict):
    """The tracking store (default ``sqlite:///<storage_path>/mlflow.db``) and experiment (default: ``name``)."""

    tracking_uri: str | None = None
    experiment_name: str | None = None


class SweepFile(_Strict):
    """The top level of a search-space file."""

    name: str
    models: list[str] = Field(min_length=1)
    tasks: list[str] = Field(min_length=1)
    methods: dict[str, MethodGrid] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0), BeforeValidator(_number)]] = Field(default=[0], min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)
    data: DataSettings = Field(default_factory=DataSettings)
    task_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: Annotated[Union[GridSearch, OptunaSearch, LawGuidedSearch], Field(discriminator="type")] = Field(
        default_factory=GridSearch
    )
    scheduler: Annotated[Union[AshaScheduler, NoScheduler], Field(discriminator="type")] = Field(
        default_factory=AshaScheduler
    )
    resources: Resources = Field(default_factory=Resources)
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 1
    max_failures: Annotated[int, Field(ge=0)] = 1
    storage_path: str | None = None
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)


@dataclass(frozen=True)
class Cell:
    """The trials that share everything but the learning rate (and the seed)."""

    model: str
    task: str
    method: str
    ratio: float | None
    lrs: tuple[float, ...]  # empty for a method without a learning rate
    settings: tuple[tuple[str, Any], ...] = ()  # task_settings and method_options, as (key, value) pairs


@dataclass
class SweepSpace:
    """A validated search-space file with its paths resolved; ``law`` narrows LR grids to ``law_points`` LRs
    (``--lr-from``, ``--lr-points``);
    ``done`` holds the grid's trials that earlier sittings ended (``--skip-done``), which it leaves out."""

    file: SweepFile
    source: Path
    data_dir: str | None
    storage: Path
    law: Any = None
    law_points: int = 5
    done: list[dict] = field(default_factory=list)
    done_dev: list[float | None] = field(default_factory=list)  # the done trials' best dev (a law search uses them)

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def epochs(self) -> int:
        """The epochs every trial trains at most (``training.epochs``, else ``scheduler.max_epochs``)."""
        from rmask_tune.trainer.config import TrialConfig

        max_epochs = getattr(self.file.scheduler, "max_epochs", None)
        return int(self.file.training.get("epochs") or max_epochs or TrialConfig.__dataclass_fields__["epochs"].default)

    @property
    def tracking_uri(self) -> str:
        return self.file.mlflow.tracking_uri or f"sqlite:///{self.storage / 'mlflow.db'}"

    @property
    def experiment_name(self) -> str:
        return self.file.mlflow.experiment_name or self.file.name

    def settings(self) -> dict:
        """The TrialConfig settings every trial shares (training, data)."""
        data = self.file.data
        return {
            "quiet": True,
            **self.file.training,
            "epochs": self.epochs,
            "data_dir": self.data_dir,
            "train_examples": data.train_examples,
            "dev_examples": data.dev_examples,
            "test_examples": data.test_examples,
        }

    def shared_settings(self) -> dict:
        """What makes this sweep's trials comparable with another's in one experiment (``--join``): the settings
        every trial shares but where the data lives, and each task's own."""
        shared = {k: v for k, v in self.settings().items() if k not in ("quiet", "data_dir")}
        return {**shared, "task_settings": self.file.task_settings}

    def task_settings(self, task: str) -> dict:
        """The settings ``task`` overrides (its ``task_settings`` entry; empty when it has none)."""
        return dict(self.file.task_settings.get(task, {}))

    def lr_grid(self, model: str, method: str, ratio: float | None, task: str | None = None) -> tuple[float, ...]:
        """The learning rates of one cell: the method's grid, or for the law's method the law's narrow grid
        of ``law_points`` LRs around its recommendation for (``model``, ``task``)."""
        from rmask_tune.law import narrow_grid

        if self.law is not None and method == self.law.method and ratio is not None:
            known = model in self.law.models_known()
            return tuple(narrow_grid(self.law, ratio, model if known else None, points=self.law_points,
                                     task=task if known else None))
        return tuple(self.file.methods[method].lrs(ratio) or ())

    def cell_settings(self, task: str, method: str) -> tuple[tuple[str, Any], ...]:
        """A cell's own trial settings: its task's ``task_settings`` and its method's ``options``."""
        options = self.file.methods[method].options
        return tuple({**self.task_settings(task), **({"method_options": dict(options)} if options else {})}.items())

    def cells(self) -> list[Cell]:
        """Every model x task x method x ratio, in file order."""
        return [
            Cell(model, task, method, ratio, self.lr_grid(model, method, ratio, task), self.cell_settings(task, method))
            for model in self.file.models
            for task in self.file.tasks
            for method, grid in self.file.methods.items()
            for ratio in grid.ratios or [None]
        ]

    def grid_trials(self) -> list[dict]:
        """Every trial of a grid search: one per cell, learning rate and seed, but those in ``done``."""
        seeds = self.file.seeds
        points = [trial_point(cell, lr, seed) for cell in self.cells() for lr in cell.lrs or [None] for seed in seeds]
        return [point for point in points if point not in self.done]

    def optuna_schedule(self) -> list[tuple[int, Cell, int]]:
        """(cell index, cell, seed) per Optuna trial, round-robin: ``num_samples`` rounds over cells x seeds.

        A cell whose method has no learning rate is only in the first round.
        """
        cells = list(enumerate(self.cells()))
        rounds = range(self.file.search.num_samples)
        return [(i, cell, seed) for r in rounds for i, cell in cells for seed in self.file.seeds if cell.lrs or r == 0]

    def num_trials(self) -> int:
        """How many trials the sweep runs."""
        if isinstance(self.file.search, OptunaSearch):
            return len(self.optuna_schedule())
        return len(self.grid_trials())

    def trial_config(self, point: dict) -> dict:
        """The full TrialConfig mapping of one trial."""
        return {**self.settings(), **{key: value for key, value in point.items() if value is not None}}

    def fingerprint(self) -> dict:
        """The sections that define the trials; a resumed sweep must not change them."""
        return self.file.model_dump(mode="json", include=set(FINGERPRINT_KEYS))

    def changed_section(self, saved: dict) -> str | None:
        """The first section of a saved fingerprint this file no longer matches, or None.

        Settings added to rmask-tune after the sweep started are compared at their defaults, so a newer
        version resumes an older sweep as long as the file itself is unchanged.
        """
        try:
            saved = SweepFile.model_validate({**saved, "name": self.name}).model_dump(mode="json", include=set(saved))
        except ValidationError:
            pass
        current = self.fingerprint()
        return next((section for section in saved if saved[section] != current.get(section)), None)


FINGERPRINT_KEYS = ("models", "tasks", "methods", "seeds", "training", "data", "task_settings", "search", "scheduler")


def trial_point(cell: Cell, lr: float | None, seed: int) -> dict:
    """What sets one trial apart from the others of its sweep (its task's own settings included)."""
    point = {"model": cell.model, "task": cell.task, "method": cell.method, "ratio": cell.ratio, "lr": lr, "seed": seed}
    return {**point, **dict(cell.settings)}


# What every trial reports after each epoch and what the search and the scheduler maximise.
METRIC, MODE = "dev_metric", "max"


def cell_key(config: dict) -> tuple:
    """The LR search a trial belongs to: its model, task, method and ratio (all but LR and seed)."""
    point = config["trial"]
    return point["model"], point["task"], point["method"], point["ratio"]


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
        space = SweepSpace(sweep, path, _data_dir(sweep), _storage(sweep))
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


def _check(space: SweepSpace) -> None:
    """The checks pydantic's types cannot make: names, grids against methods, settings against TrialConfig."""
    sweep = space.file
    if not _NAME.match(sweep.name):
        raise _Invalid(("name",), f"a sweep name is letters, digits, '.', '_' and '-', got {sweep.name!r}")
    resolved_models = [_check_model(i, model) for i, model in enumerate(sweep.models)]
    resolved_tasks = [_check_task(i, task) for i, task in enumerate(sweep.tasks)]
    for index, (key, values) in enumerate((("models", resolved_models), ("tasks", resolved_tasks), ("seeds", sweep.seeds))):
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise _Invalid((key,), f"listed twice: {', '.join(duplicates)}")
    sweep.models, sweep.tasks = resolved_models, resolved_tasks
    for method, grid in sweep.methods.items():
        _check_method(method, grid)
    _check_training(sweep.training)
    sweep.task_settings = _check_task_settings(sweep.task_settings, sweep.tasks)
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
