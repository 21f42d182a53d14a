"""The replay benchmark (``rmask-tune bench search``) on a synthetic export whose curves are known: unimodal in
log LR with a cliff half a decade above an optimum that follows a law of exponent -1, and a flat task."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.report import search_replay as replay
from rmask_tune.runstore.export import encode_export
from rmask_tune.runstore.record import RunRecord

RATIOS = (1e-2, 1e-3, 1e-4, 1e-5)
SEEDS = (0, 1, 2)
B = -1.0
OFFSETS = {"T1": -1.5, "T2": -1.0}  # log10 lr* at log10 ratio -3.5: every optimum on a grid LR
DEV_EXAMPLES = 1000


def optimum(task: str, ratio: float, shift: float = 0.0) -> float:
    """log10 lr*; ``shift``: how far (decades) a longer budget moves it."""
    return OFFSETS[task] + B * (math.log10(ratio) + 3.5) + shift


def grid(task: str, ratio: float, shift: float = 0.0) -> list[float]:
    """Seven half-decade LRs, the optimum's nearest one a step above the middle (so not where a search starts
    without a prior)."""
    centre = round(optimum(task, ratio, shift) * 2) / 2 - 0.5
    return [float(f"{10 ** (centre + 0.5 * k):.3g}") for k in range(-3, 4)]


def dev_value(task: str, ratio: float | None, lr: float | None, seed: int, shift: float = 0.0) -> float:
    noise = 0.001 * (seed - 1)
    if task == "FLAT" or ratio is None:
        return 0.5 + noise
    distance = math.log10(lr) - optimum(task, ratio, shift)
    if distance > 0.6:  # the cliff
        return 0.5 + noise
    return 0.85 - 0.2 * distance**2 + noise


def record(n: int, task: str, method: str, ratio: float | None, lr: float | None, seed: int,
           budget: tuple[int, float] | None = None) -> RunRecord:
    """One trial; ``budget``: (its optimizer steps, the shift of the optima there)."""
    dev = dev_value(task, ratio, lr, seed, budget[1] if budget else 0.0)
    params = {"model": "m1", "task": task, "method": method, "ratio": str(ratio), "lr": str(lr), "seed": str(seed),
              "metric": "accuracy", "epochs": "2", "dev_examples": str(DEV_EXAMPLES)}
    if budget is not None:
        params["budget_steps"] = str(budget[0])
    metrics = {"best_dev_metric": dev, "test_metric": dev - 0.02, "epochs_completed": 2.0}
    return RunRecord(f"run{n}", "FINISHED", n, n + 1, params, metrics, {"rmask.status": "finished"},
                     {"dev_metric": [(1, dev - 0.05), (2, dev)], "train_loss": []})


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    records = []
    for task in ("T1", "T2", "FLAT"):
        for seed in SEEDS:
            records.append(record(len(records), task, "none", None, None, seed))
        for ratio in RATIOS:
            for lr in grid("T1" if task == "FLAT" else task, ratio):
                for seed in SEEDS:
                    records.append(record(len(records), task, "random_masking", ratio, lr, seed))
    path = tmp_path_factory.mktemp("replay") / "synthetic.json.gz"
    path.write_bytes(encode_export("synthetic", "none", records, 0))
    return path


@pytest.fixture(scope="module")
def rows(export):
    found, points = replay.load_rows(str(export))
    return {row.task: row for row in found}, points


@pytest.mark.slow
def test_the_law_searcher_finds_every_optimum_with_a_fifth_of_the_grid(rows):
    by_task, points = rows
    for task in ("T1", "T2"):
        row = by_task[task]
        grid_result = replay.full_grid(row)
        for mode in replay.PRIORS:
            result = replay.law_search(row, replay.prior_for(row, points, mode))
            for cell in row.cells:  # the grid's own choice: the LR nearest the known optimum
                nearest = min(cell.grid, key=lambda lr: abs(math.log10(lr) - optimum(task, cell.id.ratio)))
                assert cell.grid_choice == nearest
                assert result.choices[cell.id] == nearest
            assert set(result.outcomes.values()) == {"located"}
            assert [s[1] for s in result.cell_scores()] == [0.0] * 4
            assert result.trials <= grid_result.trials / 5


def test_a_flat_task_stops_early_as_no_signal(rows):
    by_task, points = rows
    row = by_task["FLAT"]
    result = replay.law_search(row, replay.prior_for(row, points, "other pairs"))
    assert set(result.outcomes.values()) == {"no signal"}
    assert result.trials <= 1 + 3 * len(row.cells)  # the frozen reference, then three LRs a cell
    assert replay.full_grid(row).trials == 3 + 7 * 3 * len(row.cells)


def test_the_replayed_pair_is_never_in_its_prior(rows):
    by_task, points = rows
    assert {p.task for p in points} == {"T1", "T2"}  # the law of the export holds both pairs
    row = by_task["T1"]
    other = replay.prior_for(row, points, "other pairs")
    assert other.points and all(p.task == "T2" for p in other.points)
    assert replay.law_search(row, other).prior_pairs == ["m1/T2"]
    family = replay.prior_for(row, points, "new family")
    assert family.points == []  # no pair of model m1: the exponent and offset are learned from the row itself
    # with T2's optimum moved, the prior moves with it while T1's own trials never enter it
    moved = [replace(p, log10_lr=p.log10_lr + 1.0) if p.task == "T2" else p for p in points]
    assert replay.prior_for(row, moved, "other pairs").points != other.points
    shifted_own = [replace(p, log10_lr=p.log10_lr + 1.0) if p.task == "T1" else p for p in points]
    assert replay.prior_for(row, shifted_own, "other pairs").points == other.points


BUDGETS = {64: 0.0, 200: -1.0}  # at 200 steps every optimum lies a decade lower: two grid steps


@pytest.mark.slow
def test_an_export_of_two_budgets_replays_each_budget_on_its_own(tmp_path):
    """Cells at two budgets are two rows, never one merged grid; each finds its own budget's optimum, and the
    replayed pair leaves the prior at every budget."""
    records = []
    for steps, shift in BUDGETS.items():
        for task in ("T1", "T2"):
            for seed in SEEDS:
                records.append(record(len(records), task, "none", None, None, seed, (steps, shift)))
            for ratio in RATIOS:
                for lr in grid(task, ratio, shift):
                    for seed in SEEDS:
                        records.append(record(len(records), task, "random_masking", ratio, lr, seed, (steps, shift)))
    path = tmp_path / "budgets.json.gz"
    path.write_bytes(encode_export("budgets", "none", records, 0))
    found, points = replay.load_rows(str(path))
    assert sorted((r.task, r.steps) for r in found) == [("T1", 64), ("T1", 200), ("T2", 64), ("T2", 200)]
    assert {p.steps for p in points} == set(BUDGETS)
    for row in found:
        shift = BUDGETS[row.steps]
        assert row.frozen is not None and row.frozen.steps == row.steps
        prior = replay.prior_for(row, points, "other pairs")
        assert {p.task for p in prior.points} == {"T1", "T2"} - {row.task}
        assert {p.steps for p in prior.points} == set(BUDGETS)
        result = replay.law_search(row, prior)
        for cell in row.cells:
            assert cell.steps == row.steps and len(cell.trials) == 7 * len(SEEDS)
            nearest = min(cell.grid, key=lambda lr: abs(math.log10(lr) - optimum(row.task, cell.id.ratio, shift)))
            assert cell.grid_choice == nearest and result.choices[cell.id] == nearest
        assert set(result.outcomes.values()) == {"located"}


def test_a_search_may_propose_only_the_grids_lrs(rows):
    by_task, _ = rows
    cell = by_task["T1"].cells[0]
    assert cell.answer(cell.grid[2], 0).dev == pytest.approx(dev_value("T1", cell.id.ratio, cell.grid[2], 0))
    assert cell.answer(cell.grid[2], 0).epochs == 2  # per epoch: a scheduler could stop it after the first
    with pytest.raises(RmaskError, match="not on the replayed grid"):
        cell.answer(cell.grid[2] * 1.5, 0)


@pytest.mark.slow
def test_bench_search_prints_every_searcher_side_by_side(export, capsys):
    assert main(["bench", "search", str(export), "--repeats", "2", "--json"]) == 0
    objects = json.loads(capsys.readouterr().out)
    by_name = {(o["searcher"], o["prior"]): o for o in objects}
    assert set(by_name) == {("full grid", None), ("law", "other pairs"), ("law", "new family"),
                            ("guided (--lr-from)", "other pairs"), ("random", None), ("optuna tpe", None)}
    for o in objects:
        assert {"searcher", "prior", "trials", "grid_trials", "regret_mean", "regret_worst"} <= set(o)
        assert o["grid_trials"] == 3 * 87
    law = by_name[("law", "other pairs")]
    assert law["trials"] <= law["grid_trials"] / 5 and law["regret_worst"] <= 0.0
    assert by_name[("random", None)]["trials"] == pytest.approx(law["trials"] - 3)  # its budget: less the frozen
    for row in law["per_row"]:
        assert row["left_out_of_prior"] == f"m1/{row['task']}" and row["left_out_of_prior"] not in row["prior_pairs"]
    assert main(["bench", "search", str(export), "--repeats", "1"]) == 0
    table = capsys.readouterr().out
    assert "(left out: m1/T1)" in table and "never holds the replayed pair" in table
    assert main(["bench", "search", str(export), "--repeats", "0"]) == 2
