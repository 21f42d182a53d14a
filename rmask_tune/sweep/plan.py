"""The trials a validated search-space file describes: its cells (model x task x method x ratio, each with
its LR grid and settings), their grid points, the Optuna schedule, and the trial configurations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rmask_tune.sweep.schema import OptunaSearch, SweepFile

if TYPE_CHECKING:
    from rmask_tune.law import Law
    from rmask_tune.law_search import SearchPrior

@dataclass(frozen=True)
class Cell:
    """The trials that share everything but the learning rate (and the seed)."""

    model: str
    task: str
    method: str
    ratio: float | None
    lrs: tuple[float, ...]  # empty for a method without a learning rate
    settings: tuple[tuple[str, Any], ...] = ()  # task_settings and method_options, as (key, value) pairs


@dataclass(frozen=True)
class EndedTrial:
    """A trial of the grid that an earlier sitting ended: its grid point, its best dev metric (None: it
    diverged) and its dev metric at each epoch it completed."""

    point: dict
    best_dev: float | None
    dev_by_epoch: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class SweepSpace:
    """A validated search-space file with its paths resolved and, once ``rmask_tune.sweep.resolve`` applied the
    sweep command's options, everything this sitting runs; nothing changes it afterwards (it is frozen, and so
    is its file).

    ``law`` narrows its method's LR grids to ``law_points`` LRs (``--lr-from``, ``--lr-points``); ``prior`` is
    a law search's prior, read from its law.json; ``resume`` continues the sweep saved in ``storage``;
    ``done`` holds the grid's trials that earlier sittings ended (``--skip-done``, or those a resumed sweep
    left out), which it leaves out, and ``ended`` what ``--skip-done`` read of them (a law search and per-cell
    ASHA take them in as this sitting's own)."""

    file: SweepFile
    source: Path
    data_dir: str | None
    storage: Path
    law: Law | None = None
    law_points: int = 5
    prior: SearchPrior | None = None
    resume: bool = False
    done: tuple[dict, ...] = ()
    ended: tuple[EndedTrial, ...] = ()

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
            steps = None if task is None else self.budget(task, method)
            return tuple(narrow_grid(self.law, ratio, model if known else None, points=self.law_points,
                                     task=task if known else None, steps=steps))
        return tuple(self.file.methods[method].lrs(ratio) or ())

    def budget(self, task: str, method: str) -> int | None:
        """The optimizer steps a trial of ``method`` on ``task`` trains for all its epochs (its budget, as the
        trial records it); None for a method that trains nothing."""
        from rmask_tune.sweep.budget import trial_steps
        from rmask_tune.trainer.config import TrialConfig

        point = {"model": self.file.models[0], "task": task, "method": method, **self.task_settings(task)}
        config = TrialConfig.from_dict({**self.settings(), **point})
        return trial_steps(config) or None

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
