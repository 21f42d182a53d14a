"""The law-guided searcher: its decisions (rmask_tune/law_search.py) on known curves, and as a Ray Tune searcher in
a real sweep (tiny Llama, real SST-2, real MLflow sqlite): proposals, concurrency, resume, skip-done."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from test_sweep_ray import local_ray, mlflow_runs, run_cli, sweep_file  # noqa: F401 (local_ray: a fixture)

from rmask_tune.errors import RmaskError
from rmask_tune.law_record import LawPoint
from rmask_tune.law_search import CellId, LawSearch, SearchPrior, SearchSettings
from paths import REPO

GRID = [float(f"{10 ** (-4 + 0.5 * k):.3g}") for k in range(9)]  # 1e-4 ... 1, half-decade steps


def curve(log10_opt: float, lr: float) -> float:
    """Unimodal in log LR with a cliff half a decade above the optimum."""
    d = math.log10(lr) - log10_opt
    return 0.5 if d > 0.6 else 0.85 - 0.3 * d**2


def run(search: LawSearch, optima: dict[CellId, float]) -> list[tuple[CellId, float, int]]:
    """Answer every proposal, one at a time; returns the trials in order."""
    ran = []
    while (proposal := search.propose()) is not None:
        cid, lr, seed = proposal
        dev = 0.5 if cid.method == "none" else curve(optima[cid], lr)
        search.observe(cid, lr, seed, dev)
        ran.append(proposal)
    assert search.finished()
    return ran


def cells(ratios, task="T") -> dict[CellId, list[float]]:
    return {CellId("m", task, "random_masking", r): GRID for r in ratios} | {CellId("m", task, "none", None): []}


def test_later_ratios_start_from_the_offset_the_first_one_taught():
    ratios = (1e-2, 1e-3, 1e-4)
    optima = {CellId("m", "T", "random_masking", r): -2.5 - (math.log10(r) + 2) for r in ratios}  # on grid LRs
    prior = SearchPrior([LawPoint(model="other", task="U", ratio=r, log10_lr=0.7 - math.log10(r), se=0.1)
                         for r in (1e-2, 1e-3, 1e-4)])  # another family: its exponent only, no offset for m
    search = LawSearch(cells(ratios), prior, SearchSettings(seeds=(0,)), {cid: 1000 for cid in cells(ratios)})
    ran = run(search, optima)
    assert ran[0][0].method == "none"  # the signal test's reference first
    per_cell = {cid: [lr for c, lr, _ in ran if c == cid] for cid in optima}
    first, *later = ratios
    assert len(per_cell[CellId("m", "T", "random_masking", first)]) >= 3  # no offset yet: bracketed from the middle
    for ratio in later:  # the fitted offset and exponent put the first probe on the optimum, then its neighbours
        cid = CellId("m", "T", "random_masking", ratio)
        nearest = min(GRID, key=lambda lr: abs(math.log10(lr) - optima[cid]))
        assert per_cell[cid][0] == nearest and len(per_cell[cid]) == 3
    for cid, log10_opt in optima.items():
        assert search.choice(cid) == min(GRID, key=lambda lr: abs(math.log10(lr) - log10_opt))
        assert search.cells[cid].status == "located"


def test_a_flat_cell_stops_as_no_signal_after_three_lrs():
    search = LawSearch(cells((1e-3,)), None, SearchSettings(seeds=(0, 1, 2)), {cid: 200 for cid in cells((1e-3,))})
    ran = run(search, {CellId("m", "T", "random_masking", 1e-3): -10.0})  # far below the grid: chance everywhere
    assert search.cells[CellId("m", "T", "random_masking", 1e-3)].status == "no signal"
    assert len(ran) == 1 + 3  # the frozen model, three LRs, no extra seed


def test_close_neighbours_get_extra_seeds_and_a_clear_best_does_not():
    cid = CellId("m", "T", "random_masking", 1e-3)
    clear = LawSearch(cells((1e-3,)), None, SearchSettings(seeds=(0, 1, 2)), {c: 1000 for c in cells((1e-3,))})
    assert {s for _, _, s in run(clear, {cid: math.log10(GRID[4])})} == {0}
    close = LawSearch(cells((1e-3,)), None, SearchSettings(seeds=(0, 1, 2)), {c: 1000 for c in cells((1e-3,))})
    ran = run(close, {cid: math.log10(GRID[4]) + 0.25})  # midway between two grid LRs: a close call
    extra = {(lr, s) for c, lr, s in ran if s != 0}
    assert {lr for lr, _ in extra} == {GRID[4], GRID[5]} and {s for _, s in extra} == {1, 2}


def test_several_proposals_while_trials_run_and_the_state_survives_a_restore():
    grid = cells((1e-2, 1e-3))
    search = LawSearch(grid, None, SearchSettings(seeds=(0,)), {c: 1000 for c in grid})
    first = [search.propose() for _ in range(3)]  # nothing observed yet: the frozen model, a start, its lower neighbour
    assert [p[0].method for p in first] == ["none", "random_masking", "random_masking"]
    assert first[2][1] < first[1][1] and all(p[1] in GRID for p in first[1:])
    saved = json.loads(json.dumps(search.to_dict()))
    restored = LawSearch.from_dict(saved)
    for proposal in first:  # what a resumed Tune reruns is pending again
        restored.resume_pending(*proposal)
    assert restored.propose() == search.propose()
    with pytest.raises(RmaskError, match="not on the cell's grid"):
        search.observe(first[1][0], 0.02, 0, 0.8)


@pytest.fixture(scope="module")
def law_sweep(local_ray, tmp_path_factory):
    """Random Masking over a 5-LR grid and LoRA over 3, law search from the committed law, 2 trials at a time."""
    tmp = tmp_path_factory.mktemp("law")
    body = """\
        methods:
          random_masking:
            ratios: ["1%"]
            lr: {min: 1e-3, max: 1e-1, per_decade: 2}
          lora:
            lr: [1e-4, 1e-3, 1e-2]
          none: {}
        training: {epochs: 2, batch_size: 4}
        scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
        search: {type: law}
        max_concurrent_trials: 2
        """
    path = sweep_file(tmp, "law", body)
    law = REPO / "reports" / "law-across-tasks" / "law.json"
    out = run_cli(["sweep", str(path), "--prior", str(law)])
    return tmp, path, law, out


@pytest.mark.slow
def test_law_sweep_runs_a_subset_of_the_grid_with_one_mlflow_run_per_trial(law_sweep):
    tmp, path, _, out = law_sweep
    client, trials, parent = mlflow_runs(tmp / "law", "law")
    assert parent.data.params["search"] == "law"
    grids = {"random_masking": {1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1}, "lora": {1e-4, 1e-3, 1e-2}}
    by_method = {m: [float(r.data.params["lr"]) for r in trials if r.data.params["method"] == m] for m in grids}
    assert len([r for r in trials if r.data.params["method"] == "none"]) == 1
    for method, lrs in by_method.items():
        assert set(lrs) <= grids[method] and len(lrs) == len(set(lrs)) >= 2  # grid LRs, each once (one seed)
    assert len(trials) < 1 + 5 + 3
    assert f"law search: {len(trials)} of the grid's 9 trials ran" in out and "not started" not in out
    spans = sorted((r.info.start_time, r.info.end_time) for r in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # two trials at once


def test_resume_restores_the_searcher_and_runs_nothing_again(law_sweep):
    tmp, path, law, _ = law_sweep
    _, before, _ = mlflow_runs(tmp / "law", "law")
    states = list((tmp / "law" / "tune").glob("searcher-state-*"))
    assert states and json.loads(states[0].read_text())["search"]["cells"]
    out = run_cli(["sweep", str(path), "--prior", str(law), "--resume"])
    _, after, _ = mlflow_runs(tmp / "law", "law")
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert "not started" not in out


def test_skip_done_feeds_an_earlier_sittings_results_to_the_searcher(law_sweep, tmp_path):
    tmp, path, law, _ = law_sweep
    export = tmp_path / "first.json.gz"
    run_cli(["export", str(tmp / "law"), "--out", str(export)])
    _, first, _ = mlflow_runs(tmp / "law", "law")
    again = tmp_path / "law.yaml"
    again.write_text(path.read_text().replace(str(tmp / "law"), str(tmp_path / "second")))
    out = run_cli(["sweep", str(again), "--prior", str(law), "--skip-done", str(export)])
    assert f"skipping {len(first)} of 9 trials already done" in out
    # the searcher takes the first sitting's results as its own: it has nothing left to try
    assert not (tmp_path / "second" / "mlflow.db").exists() or not mlflow_runs(tmp_path / "second", "law")[1]


def test_recommend_outside_the_law_prints_the_law_search_to_run(tmp_path, capsys):
    import shutil
    import subprocess

    from rmask_tune.cli import main
    from rmask_tune.sweep import load_space

    root = REPO
    law = root / "reports" / "law-across-tasks" / "law.json"
    assert main(["recommend", "--law", str(law), "--model", "minilm-l6", "--task", "CB", "--ratio", "1e-4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if "minilm-l6/CB is not in the law" in line)
    commands = [line.strip() for line in lines[start + 1:]]
    assert commands[1] == f"rmask-tune sweep minilm-l6-cb-law.yaml --prior {law}"
    (tmp_path / "search_spaces").mkdir()
    shutil.copy(root / "search_spaces" / "law-search.yaml", tmp_path / "search_spaces")
    subprocess.run(commands[0], shell=True, check=True, cwd=tmp_path)  # the sweep file it writes
    space = load_space(tmp_path / "minilm-l6-cb-law.yaml")
    assert (space.file.models, space.file.tasks, space.file.search.type) == (["minilm-l6"], ["CB"], "law")
    assert main(["recommend", "--law", str(law), "--model", "smollm2-135m", "--task", "SST-2", "--ratio", "1e-4"]) == 0
    assert "not in the law" not in capsys.readouterr().out  # a pair the law has: no search to run


def test_a_new_budget_starts_from_the_prior_and_learns_the_budget_exponent_from_its_first_ratio():
    # The prior: the pair's optima at 64 steps. At 640 steps every optimum sits half a decade higher (g = 0.5).
    ratios = (1e-2, 1e-3, 1e-4)
    at_64 = {r: -3.0 - (math.log10(r) + 2) for r in ratios}
    prior = SearchPrior([LawPoint(model="m", task="T", ratio=r, log10_lr=v, se=0.05, steps=64)
                         for r, v in at_64.items()])
    optima = {CellId("m", "T", "random_masking", r): v + 0.5 for r, v in at_64.items()}
    grid = cells(ratios)
    search = LawSearch(grid, prior, SearchSettings(seeds=(0,)), {c: 1000 for c in grid}, {c: 640 for c in grid})
    ran = run(search, optima)
    per_cell = {cid: [lr for c, lr, _ in ran if c == cid] for cid in optima}
    first = CellId("m", "T", "random_masking", 1e-2)
    assert math.log10(per_cell[first][0]) == pytest.approx(at_64[1e-2], abs=1e-3)  # the prior's 64-step optimum
    assert search.fit().g == pytest.approx(0.5, abs=0.02)  # learned from the first located ratio
    for cid in optima:
        nearest = min(GRID, key=lambda lr: abs(math.log10(lr) - optima[cid]))
        assert search.choice(cid) == nearest
        if cid != first:  # the later ratios start on their optimum at this budget: three trials each
            assert per_cell[cid][0] == nearest and len(per_cell[cid]) == 3
    assert all(p.steps == 640 for p in search.located_points())
    restored = LawSearch.from_dict(json.loads(json.dumps(search.to_dict())))
    assert {c.steps for c in restored.cells.values()} == {640} and restored.prior.points == prior.points
    # Without budgets the located optima pull the pair's one offset halfway: the third ratio starts a grid step off.
    blind = LawSearch(grid, SearchPrior([replace(p, steps=None) for p in prior.points]),
                      SearchSettings(seeds=(0,)), {c: 1000 for c in grid})
    assert len([c for c, _, _ in run(blind, optima) if c.method != "none"]) > len(
        [c for c, _, _ in ran if c.method != "none"])
