"""The law-guided learning-rate search: which LR of a cell's grid to try next, and when a cell is done.

Pure decision logic (numpy only; no Ray): the Ray Tune searcher (``rmask_tune.sweep.law_search``) and the
replay benchmark (``rmask_tune.report.search_replay``) both drive this one implementation.

A cell is one (model, task, method, ratio); it proposes LRs of its own grid only. Per cell:

- **Start** from the prior: the LR the shared-exponent law predicts for the cell (the pair's offset when the
  fit has it, else the mean offset of the model's pairs), at the nearest grid LR. A cell with no prediction (a baseline, or a new model family's
  first ratio: the exponent alone, no offset) starts at the grid's lower middle.
- **Bracket**: the curve (mean dev over seeds per LR) is taken as unimodal with a cliff about half a decade
  above the optimum, so it probes from below: the best LR's lower neighbour first, then its upper one, until the best LR has measured, lower neighbours on both
  sides (or sits at the grid's edge with its inner neighbour measured).
- **Seeds** beyond the first are spent only near the optimum: ``extra_seeds`` more at the best LR and at
  its better neighbour, once bracketed; a best LR that moves is bracketed again.
- **No signal**: a Random Masking cell whose curve, bracketed or over three LRs, fails the signal test of docs/statistics.md
  (max-type bootstrap test against the frozen model when the search ran it, else the smallest LR; the
  trials' dev values drawn as binomials, rule 5, since a searcher sees a trial's metric, not its examples)
  stops without spending seeds.
- **Sharing**: a (model, task)'s ratios are searched densest first; every located optimum (bracketed and
  interior, signal passed: the law's own rules) joins the prior's points, and the shared-exponent fit
  (``rmask_tune.law.fit_shared``, the report's) is refitted, so the next ratio starts from the pair's
  learned offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rmask_tune.errors import RmaskError
from rmask_tune.law import Law, SharedFit, fit_shared, offset_spread, usual_budget
from rmask_tune.law_record import LawPoint
from rmask_tune.resampling import DevRecord, bootstrap_cell, optimum_with_interval, signal_test

LAW_METHOD = "random_masking"
NO_LR = "none"  # the frozen model: trains nothing, the signal test's reference
SIGNAL_SAMPLES = 1000
SIGNAL_LRS = 3  # LRs measured before a cell may stop for want of signal


@dataclass(frozen=True)
class CellId:
    """One LR search: a (model, task, method, ratio)."""

    model: str
    task: str
    method: str
    ratio: float | None

    @property
    def pair(self) -> str:
        return f"{self.model}/{self.task}"


@dataclass
class SearchSettings:
    """How the search spends trials."""

    seeds: tuple[int, ...] = (0, 1, 2)  # the seeds it may use, the first for every probe
    extra_seeds: int = 2  # more seeds at the best LR and its close neighbours once bracketed
    extra_trials: int = 4  # at most this many trials beyond the first seed per cell
    close: float = 0.25  # a neighbour is close when below the best by less than this many binomial SEs of a difference
    reference_seeds: int = 1  # frozen-model trials per (model, task) (the signal test's reference)
    law_method: str = LAW_METHOD


@dataclass
class SearchPrior:
    """What a search starts from: the law's optima (``points``, with their errors and budgets). A pair among them
    starts from its own offset, a new task of a model among them from the mean offset of the model's pairs; a model
    none of them has (a new family) from no offset: the exponent alone, the offset learned from its own first
    ratio."""

    points: list[LawPoint]
    note: str = ""

    @classmethod
    def from_law(cls, law: Law, note: str = "") -> SearchPrior:
        return cls(list(law.points), note)

    def pairs(self) -> set[str]:
        return {p.pair for p in self.points}

    def budget(self) -> int | None:
        """The budget (optimizer steps) most of the prior's optima were measured at (ties: the larger); None
        when they do not say (a law.json from before budgets were recorded)."""
        return usual_budget(self.points)


@dataclass
class Cell:
    """One cell's search state: results per grid index and seed (None: diverged), pending trials, status."""

    id: CellId
    grid: list[float]  # sorted LRs; empty for a method without one
    results: dict[int, dict[int, float | None]] = field(default_factory=dict)
    pending: set[tuple[int, int]] = field(default_factory=set)
    unavailable: set[tuple[int, int]] = field(default_factory=set)  # ended without a result: not proposed again
    dev_examples: int = 0
    steps: int | None = None  # the cell's training budget (optimizer steps); None: not known
    status: str = "searching"  # searching | located | no signal | done

    @property
    def done(self) -> bool:
        return self.status != "searching"

    def measured(self) -> dict[int, float]:
        """Mean dev over seeds per measured grid index; a diverged trial counts as the cell's worst value."""
        known = [v for seeds in self.results.values() for v in seeds.values() if v is not None]
        floor = min(known) if known else 0.0
        return {i: float(np.mean([floor if v is None else v for v in seeds.values()]))
                for i, seeds in self.results.items() if seeds}

    def best(self) -> int | None:
        means = self.measured()
        return max(means, key=lambda i: (means[i], -i)) if means else None

    def busy(self, i: int, seed: int) -> bool:
        return seed in self.results.get(i, {}) or (i, seed) in self.pending or (i, seed) in self.unavailable

    def records(self) -> dict[float, dict[int, DevRecord]]:
        """The cell's results as the signal test draws them (binomials with n = dev examples)."""
        floor = min([v for s in self.results.values() for v in s.values() if v is not None] or [0.0])
        return {self.grid[i]: {s: DevRecord(floor, 0) if v is None else DevRecord(v, self.dev_examples)
                               for s, v in seeds.items()} for i, seeds in self.results.items() if seeds}


def cell_to_dict(cell: Cell) -> dict:
    return {"id": [cell.id.model, cell.id.task, cell.id.method, cell.id.ratio], "grid": cell.grid,
            "results": [[i, s, v] for i, seeds in cell.results.items() for s, v in seeds.items()],
            "unavailable": sorted(cell.unavailable),
            "dev_examples": cell.dev_examples, "steps": cell.steps, "status": cell.status}


def cell_from_dict(d: dict) -> Cell:
    cell = Cell(CellId(*d["id"]), list(d["grid"]), dev_examples=int(d["dev_examples"]), steps=d.get("steps"),
                status=d["status"])
    for i, s, v in d["results"]:
        cell.results.setdefault(int(i), {})[int(s)] = v
    cell.unavailable = {(int(i), int(s)) for i, s in d.get("unavailable", [])}
    return cell


class LawSearch:
    """The search over a set of cells (see the module docstring). ``propose`` gives the next (cell, LR, seed)
    or None when every cell is waiting on pending trials; ``observe`` takes a trial's best dev value."""

    def __init__(self, cells: dict[CellId, list[float]], prior: SearchPrior | None = None,
                 settings: SearchSettings | None = None, dev_examples: dict[CellId, int] | None = None,
                 steps: dict[CellId, int | None] | None = None):
        self.settings = settings or SearchSettings()
        self.prior = prior or SearchPrior([])
        self.cells = {cid: Cell(cid, sorted(grid), dev_examples=(dev_examples or {}).get(cid, 0),
                                steps=(steps or {}).get(cid)) for cid, grid in cells.items()}
        self._fit_cache: tuple[int, SharedFit | None] | None = None

    # --- what to run next -------------------------------------------------------------------------------
    def finished(self) -> bool:
        return all(c.done for c in self.cells.values())

    def propose(self) -> tuple[CellId, float | None, int] | None:
        """The next trial, in priority order: frozen references first, then each pair's ratios densest first."""
        for cell in self._order():
            if cell.done:
                continue
            choice = self._next_in(cell)
            if choice is not None:
                i, seed = choice
                cell.pending.add((i, seed))
                return cell.id, (cell.grid[i] if cell.grid else None), seed
        return None

    def _order(self) -> list[Cell]:
        def key(c: Cell):
            return (c.id.method != NO_LR, c.id.method != self.settings.law_method, -(c.id.ratio or 0.0))
        return sorted(self.cells.values(), key=key)

    def _next_in(self, cell: Cell) -> tuple[int, int] | None:
        seeds = self.settings.seeds
        if not cell.grid:  # a method without an LR: its first seeds once each
            wanted = seeds[: self.settings.reference_seeds] if cell.id.method == NO_LR else seeds
            free = [s for s in wanted if not cell.busy(0, s)]
            if not free:
                if not cell.pending:
                    cell.status = "done"
                return None
            return 0, free[0]
        first = seeds[0]
        best = cell.best()
        if best is None:
            start = self._start(cell)
            if not cell.busy(start, first):
                return start, first
            best = start  # a start still running: its neighbours may run beside it, lower first
        elif len(cell.measured()) >= SIGNAL_LRS and self._no_signal(cell):
            cell.status = "no signal"
            return None
        for i in (best - 1, best + 1):
            if 0 <= i < len(cell.grid) and not cell.busy(i, first):
                return i, first
        if not self._bracketed(cell):
            return None  # a neighbour of the best LR is still running
        if self._no_signal(cell):
            cell.status = "no signal"
            return None
        spent = sum(s != first for seeds_at in cell.results.values() for s in seeds_at) + sum(
            s != first for _, s in cell.pending)
        for seed in seeds[1: 1 + self.settings.extra_seeds] if spent < self.settings.extra_trials else []:
            for i in self._near(cell):  # seed by seed, so the close LRs compare on the same seeds
                if not cell.busy(i, seed):
                    return i, seed
        if not cell.pending:
            cell.status = "located"
        return None

    def _bracketed(self, cell: Cell) -> bool:
        best, means = cell.best(), cell.measured()
        if best is None:
            return False
        first = self.settings.seeds[0]
        return all(not 0 <= i < len(cell.grid) or i in means or (i, first) in cell.unavailable
                   for i in (best - 1, best + 1))

    def _near(self, cell: Cell) -> list[int]:
        """Where extra seeds go: the best LR and its measured neighbours that it does not clearly beat (less
        than ``close`` binomial standard errors of a difference); none when it clearly beats both."""
        best, means = cell.best(), cell.measured()
        p = min(max(means[best], 0.0), 1.0)
        margin = self.settings.close * math.sqrt(2 * p * (1 - p) / max(cell.dev_examples, 1))
        close = [i for i in (best - 1, best + 1) if i in means and means[best] - means[i] < margin]
        return [best] + close if close else []

    def _no_signal(self, cell: Cell) -> bool:
        """The signal test of docs/statistics.md fails (Random Masking cells only)."""
        if cell.id.method != self.settings.law_method or len(cell.measured()) < 2:
            return False
        frozen = self.cells.get(CellId(cell.id.model, cell.id.task, NO_LR, None))
        reference = None
        if frozen is not None and frozen.results.get(0):
            reference = {s: DevRecord(v if v is not None else 0.0, frozen.dev_examples or cell.dev_examples)
                         for s, v in frozen.results[0].items()}
        boot = bootstrap_cell(cell.records(), reference, samples=SIGNAL_SAMPLES, seed=0)
        return not signal_test(boot).passed

    def _start(self, cell: Cell) -> int:
        centre = self.predict(cell.id)
        if centre is None:
            return (len(cell.grid) - 1) // 2
        return int(np.argmin(np.abs(np.log10(cell.grid) - centre)))

    # --- the prior and what the search learned ------------------------------------------------------------
    def located_points(self) -> list[LawPoint]:
        """This search's optima that pass the law's rules: bracketed, interior, signal passed."""
        points = []
        for cell in self.cells.values():
            if cell.status != "located" or cell.id.method != self.settings.law_method or cell.id.ratio is None:
                continue
            records = cell.records()
            if len(records) < 3:
                continue
            estimate = optimum_with_interval(bootstrap_cell(records, samples=200, seed=0))
            if estimate.at_edge:
                continue
            points.append(LawPoint(model=cell.id.model, task=cell.id.task, ratio=cell.id.ratio, steps=cell.steps,
                                   log10_lr=estimate.log10_lr, se=estimate.se, extra={"searched": True}))
        return points

    def fit(self) -> SharedFit | None:
        """The shared-exponent fit over the prior's points and this search's located optima (None: too few)."""
        located = sum(c.status == "located" for c in self.cells.values())
        if self._fit_cache is not None and self._fit_cache[0] == located:
            return self._fit_cache[1]
        try:
            fit = fit_shared(self.prior.points + self.located_points())
        except RmaskError:
            fit = None
        self._fit_cache = (located, fit)
        return fit

    def predict(self, cid: CellId) -> float | None:
        """The log10 LR the law predicts for a Random Masking cell, or None (no prediction: bracket from scratch).

        At the cell's budget when the fit has a budget term (the prior's points and the located optima span two
        or more budgets within a pair); without one, at the budgets its points were measured at."""
        if cid.method != self.settings.law_method or cid.ratio is None:
            return None
        fit = self.fit()
        if fit is None:
            return None
        steps = self.cells[cid].steps if cid in self.cells else None
        steps = steps if steps is not None else self.prior.budget()
        if cid.pair in fit.pairs:
            return fit.centre(fit.offsets[fit.pairs.index(cid.pair)], cid.ratio, steps)
        mine = [i for i, p in enumerate(fit.pairs) if p.split("/", 1)[0] == cid.model]
        if not mine:
            return None
        offset, _, _ = offset_spread(np.asarray(fit.offsets)[mine], np.asarray(fit.cov).diagonal()[mine])
        return fit.centre(offset, cid.ratio, steps)

    # --- results --------------------------------------------------------------------------------------------
    def observe(self, cid: CellId, lr: float | None, seed: int, dev: float | None, dev_examples: int = 0) -> None:
        """A trial's result: its best dev value (None or NaN: diverged or no evaluation)."""
        cell = self.cells[cid]
        i = 0 if not cell.grid else index_of(cell.grid, lr)
        cell.pending.discard((i, seed))
        cell.results.setdefault(i, {})[seed] = None if dev is None or not math.isfinite(dev) else float(dev)
        if dev_examples:
            cell.dev_examples = dev_examples

    def resume_pending(self, cid: CellId, lr: float | None, seed: int) -> None:
        """A trial proposed before the search was saved and still running after it was restored."""
        cell = self.cells[cid]
        cell.pending.add((0 if not cell.grid else index_of(cell.grid, lr), seed))

    def unavailable(self, cid: CellId, lr: float | None, seed: int) -> None:
        """A trial that ended without a result (errored, or absent from a replayed grid): not proposed again."""
        cell = self.cells[cid]
        slot = (0 if not cell.grid else index_of(cell.grid, lr), seed)
        cell.pending.discard(slot)
        cell.unavailable.add(slot)

    def choice(self, cid: CellId) -> float | None:
        """The cell's best measured LR (mean dev over its seeds)."""
        cell = self.cells[cid]
        best = cell.best()
        return None if best is None or not cell.grid else cell.grid[best]

    def to_dict(self) -> dict:
        """What a resumed search needs (pending trials are dropped: they are rerun or re-proposed)."""
        return {"cells": [cell_to_dict(c) for c in self.cells.values()],
                "prior": [p.to_json() for p in self.prior.points], "note": self.prior.note,
                "settings": self.settings.__dict__}

    @classmethod
    def from_dict(cls, d: dict) -> LawSearch:
        settings = SearchSettings(**{**d["settings"], "seeds": tuple(d["settings"]["seeds"])})
        search = cls({}, SearchPrior([LawPoint.from_json(p) for p in d["prior"]], d["note"]), settings)
        for entry in d["cells"]:
            cell = cell_from_dict(entry)
            search.cells[cell.id] = cell
        return search


def index_of(grid: list[float], lr: float | None) -> int:
    """The grid index of ``lr`` (compared in log10 to 1e-6 decades); an LR off the grid is an error."""
    if lr is None:
        raise RmaskError("a cell with a learning-rate grid got a trial without a learning rate")
    x = np.abs(np.log10(grid) - math.log10(lr))
    i = int(np.argmin(x))
    if x[i] > 1e-6:
        raise RmaskError(f"learning rate {lr:g} is not on the cell's grid ({', '.join(f'{v:g}' for v in grid)})")
    return i
