"""Replay LR searchers against committed sweep exports, without training (``rmask-tune bench search``).

A proposed (cell, LR, seed) is answered with the recorded trial at that grid LR and seed: its dev metric per
epoch (a scheduler could stop it at any epoch), its test metric and its epochs. A searcher may propose only
the export's grid LRs. For each (model, task, method) row (one per budget), a searcher's choice per cell is the
report's own model selection (``rmask_tune.report.summary.select_lr``) over the trials it ran, and is scored
against the full grid's choice:

- LR error: ``|log10 chosen - log10 grid choice|`` in half-decade grid steps;
- test regret: the grid choice's test metric minus the chosen LR's, both the mean over *all* the grid's seeds
  at that LR (the LR choice is scored, not a seed's luck), in points; the oracle (the LR with the best mean
  test metric) is shown beside it, as the grid choice's own gap to the best test.

Searchers, side by side: the full grid; the law searcher (``rmask_tune.law_search``) with a prior fitted on
the other (model, task) pairs only (the replayed pair's optima never enter it) and as a new model family (the
exponent alone, fitted without any pair of the replayed model); random search and Optuna TPE per cell at the
law searcher's budget (repeated over seeds); and the guided sweep (``--lr-from``: the three grid LRs nearest
the law's recommendation, every seed). Priors are the law of the replayed exports themselves (the report's
``summarize`` on each export), less what the replayed row must not see.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from rmask_tune.errors import RmaskError
from rmask_tune.law_record import LawPoint
from rmask_tune.law_search import NO_LR, CellId, LawSearch, SearchPrior, SearchSettings
from rmask_tune.runstore.export import read_export
from rmask_tune.runstore.reader import TERMINAL, Trial, trial_of
from rmask_tune.report.summary import LAW_METHOD, select_lr, summarize
from rmask_tune.validation import GRID_STEP

GUIDED_POINTS = 3  # a decade around the recommendation at the grids' half-decade spacing
MIN_GRID = 3  # cells with fewer LRs (check runs at one LR) are not searches
PRIORS = {"other pairs": "prior from the other (model, task) pairs (the replayed pair left out)",
          "new family": "new model family: the exponent only, fitted without the replayed model's pairs"}


@dataclass
class Answer:
    """A recorded trial as the replay answers it."""

    trial: Trial
    dev_by_epoch: list[float]

    @property
    def dev(self) -> float | None:
        finite = [v for v in self.dev_by_epoch if math.isfinite(v)]
        return max(finite) if finite else None

    @property
    def epochs(self) -> int:
        return len(self.dev_by_epoch)


@dataclass
class ReplayCell:
    """One cell of an export: its grid and its recorded trials by (LR, seed)."""

    id: CellId
    grid: list[float]
    seeds: list[int]
    trials: dict[tuple[float | None, int], Trial]
    grid_choice: float | None = None
    test_at: dict[float, float] = field(default_factory=dict)  # mean test metric over the grid's seeds per LR
    # (an LR none of whose trials has a test metric, all stopped early or diverged, counts as the worst)
    dev_examples: int = 0
    steps: int | None = None  # the budget its trials recorded (optimizer steps); None: they do not say

    def answer(self, lr: float | None, seed: int) -> Answer | None:
        """The recorded trial at a grid LR (an LR off the grid is an error), or None when the grid lacks it."""
        if lr is not None and not any(abs(math.log10(lr / g)) < 1e-6 for g in self.grid):
            raise RmaskError(f"{self.id}: LR {lr:g} is not on the replayed grid")
        trial = self.trials.get((_key(lr), seed))
        if trial is None:
            return None
        history = [v for _, v in sorted(trial.record.history.get("dev_metric", []))] if trial.record else []
        return Answer(trial, history or ([trial.dev] if trial.dev is not None else []))


@dataclass
class Row:
    """A (model, task, method) of an export at one budget: its cells and the frozen model's (the signal reference).
    An export that joins budgets has a row per budget; the row's pair leaves the prior at every budget."""

    source: str
    model: str
    task: str
    method: str
    cells: list[ReplayCell]
    frozen: ReplayCell | None
    steps: int | None = None  # the budget of its cells (optimizer steps); None: they do not say

    @property
    def pair(self) -> str:
        return f"{self.model}/{self.task}"

    def grid_trials(self) -> list[Trial]:
        return [t for c in self.cells for t in c.trials.values()] + (list(self.frozen.trials.values()) if
                                                                      self.frozen and self.method == LAW_METHOD else [])


@dataclass
class RowResult:
    """One searcher's outcome on a row, per cell: its chosen LR; and what it ran."""

    row: Row
    trials: int
    trial_epochs: int
    choices: dict[CellId, float | None]
    prior_pairs: list[str] | None = None
    outcomes: dict[CellId, str] = field(default_factory=dict)  # the law searcher's: located, no signal, ...

    def cell_scores(self) -> list[tuple[float, float, float]]:
        """(LR error in steps, regret, oracle gap) per cell (points)."""
        scores = []
        for cell in self.row.cells:
            chosen = self.choices.get(cell.id)
            grid_test = cell.test_at[cell.grid_choice]
            oracle = max(cell.test_at.values())
            if chosen is None:  # nothing run in the cell: the worst LR's test
                chosen = min(cell.test_at, key=cell.test_at.get)
            error = abs(math.log10(chosen) - math.log10(cell.grid_choice)) / GRID_STEP
            scores.append((error, 100 * (grid_test - cell.test_at[chosen]), 100 * (oracle - grid_test)))
        return scores


def _key(lr: float | None) -> float | None:
    return None if lr is None else float(f"{lr:.6g}")


def load_rows(path: str) -> tuple[list[Row], list[LawPoint]]:
    """The export's rows (cells of three or more LRs, one row per budget) and its law's points (the report's rules)."""
    export = read_export(path)
    trials = [trial_of(r) for r in export.records]
    summary = summarize(trials, export.experiment, export.tracking_uri)
    cells: dict[tuple[CellId, int | None], list[Trial]] = defaultdict(list)
    for t in trials:
        if t.status in TERMINAL:
            cells[(CellId(t.model, t.task, t.method, t.ratio), t.steps)].append(t)
    built = {(cid, steps): replay_cell(cid, group, steps) for (cid, steps), group in cells.items()}
    rows: dict[tuple, list[ReplayCell]] = defaultdict(list)
    for (cid, steps), cell in built.items():
        if cid.method != NO_LR and len(cell.grid) >= MIN_GRID and cell.grid_choice is not None:
            rows[(cid.model, cid.task, cid.method, steps)].append(cell)
    order = sorted(rows.items(), key=lambda kv: (kv[0][2] != LAW_METHOD, kv[0][:3], kv[0][3] or 0))
    out = [Row(path, m, t, meth, sorted(cs, key=lambda c: -(c.id.ratio or 0)),
               built.get((CellId(m, t, NO_LR, None), steps)), steps) for (m, t, meth, steps), cs in order]
    return out, summary.law.points


def replay_cell(cid: CellId, trials: list[Trial], steps: int | None) -> ReplayCell:
    """A cell's recorded grid as a searcher sees it (its trials, all at the budget ``steps``): its trials by
    (LR, seed), and its best-dev choice by the report's own selection rule."""
    curve = select_lr(trials)
    kept = [t for group in curve.trials.values() for t in group]
    by_slot = {(_key(t.lr), t.seed): t for t in sorted(kept, key=lambda t: t.start_time)}
    grid = sorted({t.lr for t in kept if t.lr is not None})
    test_at = {}
    for lr in grid:
        tests = [t.test for t in curve.trials[lr] if t.test is not None and math.isfinite(t.test)]
        if tests:
            test_at[lr] = float(np.mean(tests))
    for lr in grid:  # every seed stopped early (ASHA) or diverged: no test metric; scored as the cell's worst
        test_at.setdefault(lr, min(test_at.values(), default=math.nan))
    examples = [int(float(t.record.params["dev_examples"])) for t in kept if t.record and t.record.params.get("dev_examples")]
    choice = curve.best_lr if curve.best_lr is not None and math.isfinite(test_at.get(curve.best_lr, math.nan)) else None
    return ReplayCell(cid, grid, sorted({t.seed for t in kept}), by_slot, choice, test_at, max(examples or [0]), steps)


# --- searchers --------------------------------------------------------------------------------------------

def full_grid(row: Row) -> RowResult:
    trials = row.grid_trials()
    return RowResult(row, len(trials), sum(t.epochs for t in trials), {c.id: c.grid_choice for c in row.cells})


def _choose(ran: list[Trial]) -> float | None:
    """The report's selection over the trials a searcher ran in a cell (None: it ran none)."""
    return select_lr(ran).best_lr if ran else None


def prior_for(row: Row, points: list[LawPoint], mode: str) -> SearchPrior:
    """The law searcher's prior for ``row``: ``points`` less the row's pair ("other pairs": a new task, whose
    model's other pairs give the offset) or less every pair of the row's model ("new family": no offset)."""
    if mode == "other pairs":
        return SearchPrior([p for p in points if p.pair != row.pair], PRIORS[mode])
    return SearchPrior([p for p in points if p.model != row.model], PRIORS[mode])


def law_search(row: Row, prior: SearchPrior) -> RowResult:
    """Replay the law searcher on ``row`` (one proposal at a time, each answered before the next)."""
    cells = {c.id: c for c in row.cells}
    if row.frozen is not None and row.method == LAW_METHOD:
        cells[row.frozen.id] = row.frozen
    seeds = tuple(sorted({s for c in cells.values() for s in c.seeds}))
    search = LawSearch({cid: c.grid for cid, c in cells.items()}, prior, SearchSettings(seeds=seeds),
                       {cid: c.dev_examples for cid, c in cells.items()}, {cid: c.steps for cid, c in cells.items()})
    ran: dict[CellId, list[Trial]] = defaultdict(list)
    epochs = 0
    while (proposal := search.propose()) is not None:
        cid, lr, seed = proposal
        answer = cells[cid].answer(lr, seed)
        if answer is None:
            search.unavailable(cid, lr, seed)
            continue
        search.observe(cid, lr, seed, answer.dev, cells[cid].dev_examples)
        ran[cid].append(answer.trial)
        epochs += answer.epochs
    if not search.finished():
        raise RmaskError(f"the law search of {row.pair} stopped before its cells were done")
    used = sum(len(v) for v in ran.values())
    return RowResult(row, used, epochs, {c.id: _choose(ran[c.id]) for c in row.cells}, sorted(prior.pairs()),
                     {c.id: search.cells[c.id].status for c in row.cells})


def _budgets(row: Row, total: int) -> list[int]:
    n = len(row.cells)
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def random_search(row: Row, total: int, seed: int) -> RowResult:
    """``total`` trials spread evenly over the row's cells, each (LR, seed) drawn uniformly without replacement."""
    rng = random.Random(seed)
    choices, used, epochs = {}, 0, 0
    for cell, budget in zip(row.cells, _budgets(row, total)):
        slots = sorted(cell.trials, key=str)
        ran = [cell.trials[s] for s in rng.sample(slots, min(budget, len(slots)))]
        choices[cell.id] = _choose(ran)
        used, epochs = used + len(ran), epochs + sum(t.epochs for t in ran)
    return RowResult(row, used, epochs, choices)


def tpe_search(row: Row, total: int, seed: int) -> RowResult:
    """Optuna TPE per cell at the same budget: a log-uniform LR snapped to the grid, the lowest unused seed
    there (a grid LR whose seeds are all used gives the nearest LR with one left)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    choices, used, epochs = {}, 0, 0
    for cell, budget in zip(row.cells, _budgets(row, total)):
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        ran: list[Trial] = []
        free = dict(sorted(cell.trials.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])))
        while len(ran) < budget and free:
            trial = study.ask()
            wanted = trial.suggest_float("lr", cell.grid[0], cell.grid[-1], log=True)
            slot = min(free, key=lambda s: (abs(math.log10(s[0]) - math.log10(wanted)), s[1]))
            answer = cell.answer(slot[0], slot[1])
            del free[slot]
            ran.append(answer.trial)
            study.tell(trial, answer.dev if answer.dev is not None else 0.0)  # diverged: the worst value
        choices[cell.id] = _choose(ran)
        used, epochs = used + len(ran), epochs + sum(t.epochs for t in ran)
    return RowResult(row, used, epochs, choices)


def guided(row: Row, prior: SearchPrior) -> RowResult:
    """``--lr-from``: the grid LRs nearest the law's recommendation and its half-decade neighbours, every seed."""
    search = LawSearch({c.id: c.grid for c in row.cells}, prior, steps={c.id: c.steps for c in row.cells})
    choices, used, epochs = {}, 0, 0
    for cell in row.cells:
        centre = search.predict(cell.id)
        x = np.log10(cell.grid)
        at = int(np.argmin(np.abs(x - centre))) if centre is not None else (len(x) - 1) // 2
        lo = min(max(at - GUIDED_POINTS // 2, 0), max(len(x) - GUIDED_POINTS, 0))
        ran = [t for (lr, s), t in cell.trials.items() if lr is not None and lr in
               {_key(v) for v in cell.grid[lo: lo + GUIDED_POINTS]}]
        choices[cell.id] = _choose(ran)
        used, epochs = used + len(ran), epochs + sum(t.epochs for t in ran)
    return RowResult(row, used, epochs, choices)


# --- the benchmark -------------------------------------------------------------------------------------------

TARGETS = {"other pairs": 1 / 5, "new family": 1 / 3}  # share of the grid's trials; regret bounds below
TARGET_REGRET_MEAN, TARGET_REGRET_WORST = 0.5, 2.0


@dataclass
class RowSummary:
    """One searcher on one row, averaged over its repeats."""

    source: str
    model: str
    task: str
    method: str
    steps: int | None  # the row's budget
    cells: int
    trials: float
    grid_trials: int
    trial_epochs: float
    grid_trial_epochs: int
    error_steps_mean: float
    regret_mean: float
    regret_worst: float
    oracle_gap_mean: float
    prior_pairs: list[str] | None
    misses: list[str]
    outcomes: str = ""  # how the law searcher's cells ended, e.g. "3 located, 1 no signal"

    @property
    def share(self) -> float:
        return self.trials / self.grid_trials


@dataclass
class SearcherSummary:
    """One searcher (and prior mode) over every row: totals, means over rows, and the spread over repeats."""

    searcher: str
    prior: str | None
    repeats: int
    rows: list[RowSummary]
    regret_mean_sd: float  # sd over repeats of the mean regret (0 for a deterministic searcher)

    def totals(self) -> dict:
        rows = [r for r in self.rows if r.method == LAW_METHOD]
        trials, grid = sum(r.trials for r in rows), sum(r.grid_trials for r in rows)
        return {
            "searcher": self.searcher, "prior": self.prior, "repeats": self.repeats, "method": LAW_METHOD,
            "rows": len(rows), "trials": trials, "grid_trials": grid, "share": trials / grid if grid else None,
            "trial_epochs": sum(r.trial_epochs for r in rows), "grid_trial_epochs": sum(r.grid_trial_epochs for r in rows),
            "error_steps_mean": _mean([r.error_steps_mean for r in rows]),
            "regret_mean": _mean([r.regret_mean for r in rows]), "regret_mean_sd": self.regret_mean_sd,
            "regret_worst": max((r.regret_worst for r in rows), default=None),
            "oracle_gap_mean": _mean([r.oracle_gap_mean for r in rows]),
            "trials_per_row": trials / len(rows) if rows else None,
            "misses": [f"{r.model}/{r.task}: {m}" for r in rows for m in r.misses],
        }

    def to_dict(self) -> dict:
        return {**self.totals(), "per_row": [
            {**r.__dict__, "share": r.share, "left_out_of_prior": None if r.prior_pairs is None else f"{r.model}/{r.task}"}
            for r in self.rows]}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _outcomes(result: RowResult) -> str:
    counts: dict[str, int] = defaultdict(int)
    for status in result.outcomes.values():
        counts[status] += 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _summarise_row(results: list[RowResult], target: str | None) -> RowSummary:
    row = results[0].row
    scores = [r.cell_scores() for r in results]
    grid = full_grid(row)
    summary = RowSummary(
        row.source, row.model, row.task, row.method, row.steps, len(row.cells),
        float(np.mean([r.trials for r in results])), grid.trials,
        float(np.mean([r.trial_epochs for r in results])), grid.trial_epochs,
        float(np.mean([s[0] for rep in scores for s in rep])), float(np.mean([s[1] for rep in scores for s in rep])),
        float(np.mean([max(s[1] for s in rep) for rep in scores])), float(np.mean([s[2] for s in scores[0]])),
        results[0].prior_pairs, [], _outcomes(results[0]),
    )
    if target is not None and row.method == LAW_METHOD:
        if summary.share > TARGETS[target] + 1e-9:
            summary.misses.append(f"{summary.trials:g} of {grid.trials} trials ({summary.share:.0%} > "
                                  f"{TARGETS[target]:.0%})")
        if summary.regret_mean > TARGET_REGRET_MEAN:
            summary.misses.append(f"mean regret {summary.regret_mean:.2f} > {TARGET_REGRET_MEAN} points")
        if summary.regret_worst > TARGET_REGRET_WORST:
            summary.misses.append(f"worst regret {summary.regret_worst:.2f} > {TARGET_REGRET_WORST} points")
    return summary


def replay(paths: list[str], *, repeats: int = 10) -> list[SearcherSummary]:
    """Every searcher on every row of the exports at ``paths``; the priors come from all of them, less what
    each row must not see (``prior_for``)."""
    if repeats < 1:
        raise RmaskError(f"--repeats must be at least 1, got {repeats}")
    rows, points = [], []
    for path in paths:
        more, law_points = load_rows(path)
        rows += more
        points += law_points
    if not rows:
        raise RmaskError(f"no cell of three or more learning rates in {', '.join(paths)}")
    per: dict[tuple, list[list[RowResult]]] = defaultdict(list)  # (searcher, prior) -> per row, per repeat
    for row in rows:
        law = {mode: law_search(row, prior_for(row, points, mode)) for mode in PRIORS}
        budget = law["other pairs"].trials - (len(row.frozen.seeds[:1]) if row.frozen and row.method == LAW_METHOD else 0)
        per[("full grid", None)].append([full_grid(row)])
        for mode, result in law.items():
            per[("law", mode)].append([result])
        per[("guided (--lr-from)", "other pairs")].append([guided(row, prior_for(row, points, "other pairs"))])
        per[("random", None)].append([random_search(row, budget, r) for r in range(repeats)])
        per[("optuna tpe", None)].append([tpe_search(row, budget, r) for r in range(repeats)])
    out = []
    for (name, prior), by_row in per.items():
        target = prior if name == "law" else None
        law_rows = [reps for reps in by_row if reps[0].row.method == LAW_METHOD]
        spread = 0.0
        if len(by_row[0]) > 1 and law_rows:
            per_repeat = [np.mean([np.mean([s[1] for s in reps[k].cell_scores()]) for reps in law_rows])
                          for k in range(len(by_row[0]))]
            spread = float(np.std(per_repeat, ddof=1))
        out.append(SearcherSummary(name, prior, len(by_row[0]), [_summarise_row(reps, target) for reps in by_row],
                                   spread))
    return out


def format_replay(summaries: list[SearcherSummary]) -> str:
    """The benchmark's table: totals over the Random Masking rows, then each law-searcher row with its misses."""
    lines = ["Replay of the committed grids (no training): Random Masking rows, one per (model, task).",
             "Regret: the grid's best-dev choice's test metric minus the chosen LR's, mean over the grid's seeds "
             "at each LR (points); oracle gap: the best test LR's over the grid choice.",
             "The law searcher's prior never holds the replayed pair: 'other pairs' is fitted without it, "
             "'new family' without any pair of its model and with no offset.", "",
             "| Searcher | Prior | Trials | Grid trials | Share | Trial-epochs | LR error (steps) | Regret mean "
             "(± sd over repeats) | Regret worst |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        t = s.totals()
        spread = f" ± {t['regret_mean_sd']:.2f}" if s.repeats > 1 else ""
        lines.append(f"| {s.searcher}{f' (x{s.repeats})' if s.repeats > 1 else ''} | {s.prior or '—'} | "
                     f"{t['trials']:.1f} | {t['grid_trials']} | {t['share']:.0%} | {t['trial_epochs']:.0f} | "
                     f"{t['error_steps_mean']:.2f} | {t['regret_mean']:.2f}{spread} | {t['regret_worst']:.2f} |")
    for s in summaries:
        if s.searcher != "law":
            continue
        lines += ["", f"Law searcher, {PRIORS[s.prior]} (target: at most {TARGETS[s.prior]:.0%} of the grid's "
                      f"trials, regret mean <= {TARGET_REGRET_MEAN}, worst <= {TARGET_REGRET_WORST}):", "",
                  "| Export | Model | Task | Steps | Cells | Trials | Grid trials | Trial-epochs | LR error "
                  "| Regret mean | Regret worst | Oracle gap | Prior pairs | Misses |", "|---" * 14 + "|"]
        for r in (r for r in s.rows if r.method == LAW_METHOD):
            pairs = ", ".join(r.prior_pairs or []) or "none"
            lines.append(f"| {r.source} | {r.model} | {r.task} | {r.steps or '—'} | {r.outcomes} | {r.trials:g} "
                         f"| {r.grid_trials} | {r.trial_epochs:g} | {r.error_steps_mean:.2f} | {r.regret_mean:.2f} "
                         f"| {r.regret_worst:.2f} | {r.oracle_gap_mean:.2f} | {pairs} (left out: {r.model}/{r.task}) | "
                         f"{'; '.join(r.misses) or 'meets the target'} |")
    law = next(s for s in summaries if s.searcher == "law")
    baselines = sorted({r.method for r in law.rows if r.method != LAW_METHOD})
    if baselines:
        lines += ["", "Baselines: the same searcher without a ratio prior (plain bracketing from the grid's middle), "
                      "per method over its (model, task) rows:", "",
                  "| Method | Rows | Trials | Grid trials | LR error (steps) | Regret mean | Regret worst |",
                  "|---|---|---|---|---|---|---|"]
        for method in baselines:
            rows = [r for r in law.rows if r.method == method]
            lines.append(f"| {method} | {len(rows)} | {sum(r.trials for r in rows):g} | "
                         f"{sum(r.grid_trials for r in rows)} | {np.mean([r.error_steps_mean for r in rows]):.2f} | "
                         f"{np.mean([r.regret_mean for r in rows]):.2f} | {max(r.regret_worst for r in rows):.2f} |")
    return "\n".join(lines)
