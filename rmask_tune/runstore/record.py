"""What the run store holds for one trial run (``RunRecord``), and where a sweep's runs live (``Source``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunRecord:
    """One trial run as stored: its params, latest metrics, ``rmask.*`` tags, per-epoch histories
    (``(step, value)`` pairs) and per-example results (examples.json; None when the trial recorded none,
    as trials from before per-example results were recorded)."""

    run_id: str
    run_status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    start_time: int | None
    end_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    history: dict[str, list[tuple[int, float]]]
    examples: dict | None = None


@dataclass
class Source:
    """Where a sweep's runs live: an MLflow store, or an export of one (``export``, already read)."""

    tracking_uri: str
    experiment: str
    export: object | None = None  # a SweepExport
