"""One sweep against another on the cells they share: what a law-guided sweep saved against the full
grid (trials, trial-epochs, device hours) and what it gave up (the test metric at its best-dev LR)."""

from __future__ import annotations

from dataclasses import dataclass

from rmask_tune.report.summary import NO_EFFORT, Curve, Effort, Summary, effort


@dataclass
class Side:
    """One sweep's effort and answer for one cell."""

    cost: Effort
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
    test = sum(curve.test) / len(curve.test) if curve.test else None
    return Side(effort([t for group in curve.trials.values() for t in group]), curve.best_lr, test)


def compare(ours: Summary, theirs: Summary) -> list[CellComparison]:
    """Every (model, task, method, ratio) cell both sweeps ran (and budget, in reports of several), in our order."""
    shared = [key for key in ours.curves if key in theirs.curves]
    return [CellComparison(key, _side(ours, key), _side(theirs, key)) for key in shared]


@dataclass(frozen=True)
class Totals:
    """Summed effort of both sides, and the mean and worst test gap over the cells with both results."""

    cells: int
    compared: int
    mean_gap: float | None
    worst_gap: float | None
    ours: Effort
    theirs: Effort


def totals(cells: list[CellComparison]) -> Totals:
    gaps = [c.gap for c in cells if c.gap is not None]
    return Totals(len(cells), len(gaps), sum(gaps) / len(gaps) if gaps else None, min(gaps) if gaps else None,
                  sum((c.ours.cost for c in cells), NO_EFFORT), sum((c.theirs.cost for c in cells), NO_EFFORT))
