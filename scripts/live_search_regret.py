"""Score a live law-guided sweep against the full grid run on some of its cells (issue 28's live run).

Per cell the grid export covers (three or more LRs), the grid is every ended trial of that cell in both exports
(a grid sitting run with ``--skip-done`` holds only the trials the searcher did not run; re-runs of a slot keep
the newest, as the report does). The searcher's choice is the report's selection over the searched export's
trials of the cell; the grid's is the same selection over the grid. Scoring is `rmask-tune bench search`'s:
LR error in half-decade grid steps, test regret = the grid choice's test minus the searcher choice's, each the
mean over all the grid's seeds at that LR (points; negative: the searcher's LR tested better), the oracle gap
beside it. Then each export's cost: trials, trial-epochs, device-hours (sum of trial wall times) and the
wall-clock span from its first trial's start to its last trial's end.

    python scripts/live_search_regret.py reports/minilm-l6-cb-law/parts/law.json.gz reports/minilm-l6-cb-law/parts/grid-sitting-*.json.gz
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


@dataclass(frozen=True)
class CellScore:
    cell: CellId
    searched_trials: int
    grid_trials: int
    searched_lr: float
    grid_lr: float
    lr_error_steps: float
    regret: float
    oracle_gap: float


def ended_by_cell(path: str) -> dict[CellId, list[Trial]]:
    cells: dict[CellId, list[Trial]] = defaultdict(list)
    for trial in (trial_of(r) for r in read_export(path).records):
        if trial.status in TERMINAL:
            cells[CellId(trial.model, trial.task, trial.method, trial.ratio)].append(trial)
    return cells


def score(searched: dict[CellId, list[Trial]], grid: dict[CellId, list[Trial]]) -> list[CellScore]:
    scores = []
    for cid, grid_trials in sorted(grid.items(), key=lambda kv: -(kv[0].ratio or 0)):
        cell = replay_cell(cid, grid_trials + searched.get(cid, []))
        if len(cell.grid) < MIN_GRID or cell.grid_choice is None or not searched.get(cid):
            continue
        chosen = select_lr(searched[cid]).best_lr
        scores.append(CellScore(
            cid, len(searched[cid]), len(cell.trials), chosen, cell.grid_choice,
            abs(math.log10(chosen / cell.grid_choice)) / GRID_STEP,
            100 * (cell.test_at[cell.grid_choice] - cell.test_at[chosen]),
            100 * (max(cell.test_at.values()) - cell.test_at[cell.grid_choice])))
    return scores


def cost_line(name: str, cells: dict[CellId, list[Trial]]) -> str:
    trials = [t for group in cells.values() for t in group]
    cost = effort(trials)
    ends = [t.start_time / 1000 + (t.wall_time_s or 0) for t in trials]
    span_h = (max(ends) - min(t.start_time / 1000 for t in trials)) / 3600
    return (f"{name}: {cost['trials']} ended trials, {cost['trial_epochs']} trial-epochs, "
            f"{cost['device_hours']:.2f} device-hours (sum of trial wall times), {span_h:.2f} h wall-clock span")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searched", help="the law-guided sweep's export")
    parser.add_argument("grid", nargs="+", help="the full grid's exports, one per sitting (some of the searched sweep's cells)")
    args = parser.parse_args()
    searched, grid = ended_by_cell(args.searched), defaultdict(list)
    for path in args.grid:
        for cid, trials in ended_by_cell(path).items():
            grid[cid].extend(trials)
    print("| Cell | Searcher trials | Grid trials | Searcher LR | Grid best-dev LR | LR error (steps) | Regret (points) | Oracle gap |")
    print("|---|---|---|---|---|---|---|---|")
    for s in score(searched, grid):
        name = f"{s.cell.model} {s.cell.task} {s.cell.method} {s.cell.ratio:g}"
        print(f"| {name} | {s.searched_trials} | {s.grid_trials} | {s.searched_lr:g} | {s.grid_lr:g} | "
              f"{s.lr_error_steps:.2f} | {s.regret:.2f} | {s.oracle_gap:.2f} |")
    print(cost_line("searched", searched))
    print(cost_line("grid", grid))


if __name__ == "__main__":
    main()
