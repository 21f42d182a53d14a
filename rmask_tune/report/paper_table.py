"""The paper's table layout (its Tables 1, 4 and 5): one table per model, methods as rows (each baseline,
then Random Masking per ratio), tasks as columns in the paper's order, and the average over tasks.

Each cell is the test metric at the learning rate with the best mean dev metric, as mean and sample
standard deviation over seeds (no deviation from a single seed). Pure data; render.py formats it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from rmask_tune.report.summary import Summary

PAPER_TASKS = ("SST-2", "RTE", "CB", "BoolQ", "WSC", "WiC", "MultiRC", "COPA", "ReCoRD", "SQuAD", "DROP")


@dataclass(frozen=True)
class SeedStats:
    """A cell: the mean test metric over seeds, its sample standard deviation (None for one seed), the seeds."""

    mean: float
    std: float | None
    seeds: int


@dataclass
class PaperRow:
    """One method (and ratio): its trainable parameters, its cells by task, and its average over tasks."""

    label: str
    trainable_params: int | None
    trainable_fraction: float | None
    cells: dict[str, SeedStats]
    average: float | None
    covered: int  # tasks the average is over


@dataclass
class PaperTable:
    model: str
    tasks: list[str]
    rows: list[PaperRow]


def seed_stats(values: list[float]) -> SeedStats | None:
    """Mean and sample standard deviation of one cell's per-seed test metrics; None without any."""
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return SeedStats(statistics.fmean(values), std, len(values))


def paper_tasks(tasks: list[str]) -> list[str]:
    """``tasks`` in the paper's column order, any other task after them in name order."""
    return [t for t in PAPER_TASKS if t in tasks] + sorted(t for t in tasks if t not in PAPER_TASKS)


def paper_tables(summary: Summary) -> list[PaperTable]:
    """One table per model, its rows in the report's order (baselines, then masking by decreasing ratio)."""
    tables = []
    for model in summary.models:
        rows = [r for r in summary.rows if r.model == model]
        tasks = paper_tasks(sorted({task for r in rows for task in r.cells}))
        out = []
        for r in rows:
            cells = {task: stats for task in tasks if (c := r.cells.get(task)) and (stats := seed_stats(c.test))}
            average, covered = r.average(tasks)
            out.append(PaperRow(r.label, r.trainable_params, r.trainable_fraction, cells, average, covered))
        tables.append(PaperTable(model, tasks, out))
    return tables
