"""The schema of a sweep export (``sweep-export.json.gz``, written by ``rmask_tune.runstore.export``).

Checked once, where an export is read (``read_export``), so ``report`` and its ``--also`` and ``--versus``,
``sweep --skip-done`` and ``recommend --anchor`` all refuse a malformed export with the same one line.
A trial's ``params`` are MLflow's texts; ``model`` and ``task`` must be there, and a learning rate or ratio
must be a positive finite number (or none). Metrics are numbers, or the texts ``nan``, ``inf`` and ``-inf``
(strict JSON has no NaN).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from rmask_tune.files import Count, Section

KIND = "rmask-tune sweep export"
VERSION = 1
Number = Union[Annotated[float, Field(strict=True)], Literal["nan", "inf", "-inf"]]
Time = Annotated[int, Field(strict=True)] | None
NONE_TEXTS = ("", "none", "None", "null")


class ExportExamples(Section):
    splits: dict[str, str]


class ExportTrial(Section):
    """One trial run's record."""

    run_id: str
    run_status: str
    start_time: Time
    end_time: Time
    params: dict[str, str]
    metrics: dict[str, Number]
    tags: dict[str, str]
    history: dict[str, list[tuple[Annotated[int, Field(strict=True)], Number]]]
    examples: ExportExamples | None

    @field_validator("params")
    @classmethod
    def _params(cls, params: dict[str, str]) -> dict[str, str]:
        for name in ("model", "task"):
            if not params.get(name):
                raise ValueError(f"params.{name} is missing")
        for name in ("lr", "ratio"):
            text = params.get(name, "none")
            if text in NONE_TEXTS:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"params.{name} must be a positive finite number or none, got {text!r}")
        return params


class ExportFile(Section):
    """The whole export."""

    kind: Literal["rmask-tune sweep export"]
    version: Literal[1]
    experiment: str
    tracking_uri: str
    unreadable: Count
    example_sets: dict[str, dict]
    trials: list[ExportTrial] = Field(min_length=1)  # an export of a store without trials is refused

    @model_validator(mode="after")
    def _example_sets(self):
        for i, trial in enumerate(self.trials):
            missing = [key for key in (trial.examples.splits.values() if trial.examples else ()) if key not in self.example_sets]
            if missing:
                raise ValueError(f"trials[{i}].examples names example set {missing[0]!r}, which example_sets lacks")
        return self
