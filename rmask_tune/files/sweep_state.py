"""The schema of a sweep's ``sweep.json`` (``rmask_tune.sweep.runner.SweepState``), read by ``--resume``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STATE_FORMAT = "rmask-tune sweep v1"
Text = Annotated[str, Field(min_length=1)]


class SweepStateFile(BaseModel):
    """Every field ``SweepState`` holds; nothing else."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: Literal["rmask-tune sweep v1"]
    sweep_id: Text
    name: Text
    source: Text
    fingerprint: dict[str, Any]
    tracking_uri: Text
    experiment: Text
    done: list[dict[str, Any]] = []
