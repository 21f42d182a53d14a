"""The search-space file's schema: what a sweep YAML may say, as pydantic models (``SweepFile``).

A file names models, tasks, methods (each with its own ratio and learning-rate grids), seeds, the
training and data settings every trial shares (TrialConfig fields), the settings a task overrides
(``task_settings``, e.g. a smaller batch for long inputs), the search (``grid``, ``optuna`` or ``law``), the
early-stopping scheduler, per-trial resources, and where results and MLflow runs go. The checks the types
cannot make, against the registries, are ``rmask_tune.sweep.validate``'s.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError


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
    """A section of the file: unknown keys are errors that name the key and the known ones. Frozen: the
    checks against the registries make a resolved copy (``model_copy``) rather than edit it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
