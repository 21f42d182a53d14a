"""One sweep against another on the cells they share: what a law-guided sweep saved against the full
grid (trials, trial-epochs, device hours) and what it gave up (the test metric at its best-dev LR)."""

from __future__ import annotations

from dataclasses import dataclass

from rmask_tune.report.summary import Curve, Summary, effort


@dataclass
class Side:
    """One sweep's effort and answer for one cell."""

    trials: int
    trial_epochs: int
    hours: float
    best_lr: float | None
    test: float | None  # mean over seeds at the best-dev LR


@dataclass
class CellComparison:
    key: tuple  # model, task, method, ratio
    ours: Side
    theirs: Side

    @property
    def gap(self) -> float | None:
        """Our test metric minus theirs (negative: the other sweep found a better LR)."""
        if self.ours.test is None or self.theirs.test is None:
            return None
        return self.ours.test - self.theirs.test


def _side(summary: Summary, key: tuple) -> Side:
    curve: Curve = summary.curves[key]
    cost = effort([t for group in curve.trials.values() for t in group])
    test = sum(curve.test) / len(curve.test) if curve.test else None
    return Side(cost["trials"], cost["trial_epochs"], cost["device_hours"], curve.best_lr, test)


def compare(ours: Summary, theirs: Summary) -> list[CellComparison]:
    """Every (model, task, method, ratio) cell both sweeps ran (and budget, in reports of several), in our order."""
    shared = [key for key in ours.curves if key in theirs.curves]
    return [CellComparison(key, _side(ours, key), _side(theirs, key)) for key in shared]


def totals(cells: list[CellComparison]) -> dict:
    """Summed effort of both sides, and the mean and worst test gap over cells with both results."""
    gaps = [c.gap for c in cells if c.gap is not None]
    out = {"cells": len(cells), "compared": len(gaps),
           "mean_gap": sum(gaps) / len(gaps) if gaps else None, "worst_gap": min(gaps) if gaps else None}
    for side in ("ours", "theirs"):
        sides = [getattr(c, side) for c in cells]
        out[side] = {"trials": sum(s.trials for s in sides), "trial_epochs": sum(s.trial_epochs for s in sides),
                     "hours": sum(s.hours for s in sides)}
    return out
