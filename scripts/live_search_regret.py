"""Score a live law-guided sweep against the full grid run on some of its cells (issue 28's live run).

The searched sweep may come in several exports (one per sitting), and so may the grid. Per cell the grid exports
cover (three or more LRs), the grid is every ended trial of that cell in all of them (a grid sitting run with
``--skip-done`` holds only the trials the searcher and the seeds file did not run; re-runs of a slot keep the
newest, as the report does); ``--seeds`` names exports of a seeds file (more seeds at the searcher's LRs), whose
trials join the grid of the cells the grid covers and are not the searcher's. A cell is one per budget (optimizer
steps), as in ``bench search``. The searcher's choice is the report's selection over the searched exports' trials of the cell; the grid's is the same selection over the grid. Scoring is `rmask-tune bench search`'s:
LR error in half-decade grid steps, test regret = the grid choice's test minus the searcher choice's, each the
mean over all the grid's seeds at that LR (points; negative: the searcher's LR tested better), the oracle gap
beside it. Then each export's cost: trials, trial-epochs, device-hours (sum of trial wall times) and the
wall-clock span from its first trial's start to its last trial's end.

    python scripts/live_search_regret.py reports/minilm-l6-cb-law/parts/law.json.gz \
        --grid reports/minilm-l6-cb-law/parts/grid-sitting-*.json.gz
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from dataclasses import dataclass

from rmask_tune.law_search import CellId
from rmask_tune.report.search_replay import MIN_GRID, replay_cell
from rmask_tune.report.summary import effort, select_lr
from rmask_tune.runstore.export import read_export
from rmask_tune.runstore.reader import TERMINAL, Trial, trial_of
from rmask_tune.validation import GRID_STEP


Cell = tuple[CellId, int | None]  # a cell at one budget (optimizer steps), as ``search_replay`` groups them


@dataclass(frozen=True)
class CellScore:
    cell: CellId
    steps: int | None
    searched_trials: int
    grid_trials: int
    searched_lr: float
    grid_lr: float
    lr_error_steps: float
    regret: float
    oracle_gap: float


def ended_by_cell(paths: list[str]) -> dict[Cell, list[Trial]]:
    """The ended trials of every export, by cell and budget."""
    cells: dict[Cell, list[Trial]] = defaultdict(list)
    for path in paths:
        for trial in (trial_of(r) for r in read_export(path).records):
            if trial.status in TERMINAL:
                cells[(CellId(trial.model, trial.task, trial.method, trial.ratio), trial.steps)].append(trial)
    return cells


def score(searched: dict[Cell, list[Trial]], grid: dict[Cell, list[Trial]]) -> list[CellScore]:
    scores = []
    for key, grid_trials in sorted(grid.items(), key=lambda kv: (-(kv[0][0].ratio or 0), kv[0][1] or 0)):
        cid, steps = key
        cell = replay_cell(cid, grid_trials + searched.get(key, []), steps)
        if len(cell.grid) < MIN_GRID or cell.grid_choice is None or not searched.get(key):
            continue
        chosen = select_lr(searched[key]).best_lr
        scores.append(CellScore(
            cid, steps, len(searched[key]), len(cell.trials), chosen, cell.grid_choice,
            abs(math.log10(chosen / cell.grid_choice)) / GRID_STEP,
            100 * (cell.test_at[cell.grid_choice] - cell.test_at[chosen]),
            100 * (max(cell.test_at.values()) - cell.test_at[cell.grid_choice])))
    return scores


def cost_line(name: str, cells: dict[Cell, list[Trial]]) -> str:
    trials = [t for group in cells.values() for t in group]
    cost = effort(trials)
    ends = [t.start_time / 1000 + (t.wall_time_s or 0) for t in trials]
    span_h = (max(ends) - min(t.start_time / 1000 for t in trials)) / 3600
    return (f"{name}: {cost.trials} ended trials, {cost.trial_epochs} trial-epochs, "
            f"{cost.device_hours:.2f} device-hours (sum of trial wall times), {span_h:.2f} h wall-clock span")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searched", nargs="+", help="the law-guided sweep's exports, one per sitting")
    parser.add_argument("--grid", nargs="+", required=True,
                        help="the full grid's exports, one per sitting (some of the searched sweep's cells)")
    parser.add_argument("--seeds", nargs="*", default=[], help="a seeds file's exports: their trials of the grid's cells join the grid")
    args = parser.parse_args()
    searched, grid = ended_by_cell(args.searched), ended_by_cell(args.grid)
    for key, trials in ended_by_cell(args.seeds).items():
        if key in grid:
            grid[key].extend(trials)
    print("| Cell | Searcher trials | Grid trials | Searcher LR | Grid best-dev LR | LR error (steps) | Regret (points) | Oracle gap |")
    print("|---|---|---|---|---|---|---|---|")
    for s in score(searched, grid):
        steps = f" {s.steps} steps" if s.steps else ""
        name = f"{s.cell.model} {s.cell.task} {s.cell.method} {s.cell.ratio:g}{steps}"
        print(f"| {name} | {s.searched_trials} | {s.grid_trials} | {s.searched_lr:g} | {s.grid_lr:g} | "
              f"{s.lr_error_steps:.2f} | {s.regret:.2f} | {s.oracle_gap:.2f} |")
    print(cost_line("searched", searched))
    print(cost_line("grid", grid))


if __name__ == "__main__":
    main()
