"""The law's statistics on simulated noisy dev sets: bootstrap intervals, the signal test, the shared-exponent
fit and leave-one-out validation. Every cell is simulated per example: an example is answered correctly when
its fixed difficulty lies under the model's accuracy at that LR, so results are paired across LRs as real
dev sets are."""

import math

import numpy as np
import pytest

from rmask_tune.law import Law, fit_shared, load_law, offset_spread
from rmask_tune.law_record import LawPoint
from rmask_tune.resampling import DevRecord, bootstrap_cell, optimum_with_interval, signal_test
from rmask_tune.validation import (
    ACROSS_MODELS,
    WITHIN_MODEL,
    leave_one_ratio_out,
    leave_one_task_out,
    summarize_by_source,
    summarize_validation,
)

GRID = [10.0**e for e in np.arange(-4.0, 0.01, 0.5)]


def accuracy_curve(log10_optimum: float, top: float = 0.85, width: float = 0.08):
    return lambda lr: max(0.5, top - width * (math.log10(lr) - log10_optimum) ** 2)


def simulate_cell(curve, rng, seeds=(0, 1, 2), n=200, epochs=2, grid=GRID):
    """records[lr][seed] with per-example scores; the seed's noise shifts the curve a little, as training noise does."""
    records = {lr: {} for lr in grid}
    for seed in seeds:
        difficulty = rng.random(n)
        shift = rng.normal(0, 0.01)
        for lr in grid:
            scores = np.stack([(difficulty < curve(lr) + shift + rng.normal(0, 0.01)).astype(float)
                               for _ in range(epochs)])
            records[lr][seed] = DevRecord.from_scores(scores)
    return records


@pytest.mark.slow
def test_bootstrap_interval_covers_the_true_optimum():
    rng = np.random.default_rng(0)
    truth = -2.2  # between grid points
    covered = 0
    for rep in range(40):
        boot = bootstrap_cell(simulate_cell(accuracy_curve(truth), rng), samples=200, seed=rep)
        est = optimum_with_interval(boot)
        covered += est.interval[0] <= truth <= est.interval[1]
    assert covered / 40 >= 0.85


def test_a_smaller_dev_set_gives_a_wider_interval():
    rng = np.random.default_rng(1)
    small = optimum_with_interval(bootstrap_cell(simulate_cell(accuracy_curve(-2.0), rng, n=50), samples=300))
    large = optimum_with_interval(bootstrap_cell(simulate_cell(accuracy_curve(-2.0), rng, n=1000), samples=300))
    assert small.interval[1] - small.interval[0] > large.interval[1] - large.interval[0]
    assert small.source == large.source == "per-example"


def test_the_signal_test_rejects_a_flat_cell_and_keeps_a_real_one():
    rng = np.random.default_rng(2)
    flat = lambda lr: 0.5  # noqa: E731
    false_alarms = 0
    for rep in range(30):
        cell = simulate_cell(flat, rng, n=200)
        frozen = simulate_cell(flat, rng, n=200, grid=[1.0])[1.0]
        false_alarms += signal_test(bootstrap_cell(cell, frozen, samples=200, seed=rep)).passed
    assert false_alarms / 30 <= 0.15
    real = simulate_cell(accuracy_curve(-2.0, top=0.62, width=0.02), rng, n=200)
    frozen = simulate_cell(flat, rng, n=200, grid=[1.0])[1.0]
    test = signal_test(bootstrap_cell(real, frozen, samples=500))
    assert test.passed and test.reference == "frozen model" and test.difference > 0.05


def test_without_a_frozen_model_the_smallest_lr_is_the_reference():
    rng = np.random.default_rng(3)
    boot = bootstrap_cell(simulate_cell(accuracy_curve(-1.0), rng), samples=200)
    test = signal_test(boot)
    assert test.reference == "smallest LR" and test.passed


def test_binomial_fallback_for_trials_without_per_example_results():
    rng = np.random.default_rng(4)
    cell = simulate_cell(accuracy_curve(-2.0), rng, seeds=(0,))
    reported = {lr: {0: DevRecord(r[0].value, 200)} for lr, r in cell.items()}
    paired = optimum_with_interval(bootstrap_cell(cell, samples=300))
    binomial = optimum_with_interval(bootstrap_cell(reported, samples=300))
    assert binomial.source == "binomial"
    assert binomial.log10_lr == pytest.approx(paired.log10_lr)
    # Unpaired draws are noisier than paired ones: the approximation errs on the wide side.
    assert binomial.interval[1] - binomial.interval[0] >= paired.interval[1] - paired.interval[0] - 1e-9


def shared_points(rng, exponent=-0.8, offsets=None, noise=0.1, ratios=(1e-2, 1e-3, 1e-4, 1e-5)):
    offsets = offsets or {"SST-2": -2.0, "RTE": -1.6, "COPA": -2.3, "WiC": -1.9}
    return [LawPoint(model="m", task=task, ratio=r, se=noise,
                     log10_lr=off + exponent * (math.log10(r) + 3.5) + rng.normal(0, noise))
            for task, off in offsets.items() for r in ratios]


def test_shared_fit_recovers_the_exponent_and_task_offsets():
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(30):
        fit = fit_shared(shared_points(rng))
        hits += fit.b_ci[0] <= -0.8 <= fit.b_ci[1]
    assert hits / 30 >= 0.85
    fit = fit_shared(shared_points(np.random.default_rng(6), noise=0.02))
    assert fit.b == pytest.approx(-0.8, abs=0.03)
    offsets = dict(zip(fit.pairs, fit.offsets))
    assert offsets["m/RTE"] - offsets["m/SST-2"] == pytest.approx(0.4, abs=0.05)
    assert fit.between_sd == pytest.approx(np.std([-2.0, -1.6, -2.3, -1.9], ddof=1), abs=0.1)


def test_a_new_task_interval_includes_the_spread_between_tasks():
    rng = np.random.default_rng(7)
    points = shared_points(rng, noise=0.05)
    law = Law(pooled=None, models={}, shared=fit_shared(points))
    known = law.recommend(3e-5, "m", "SST-2")
    new = law.recommend(3e-5, "m", "BoolQ")
    assert known.basis == "pair" and new.basis == "new task"
    assert math.log10(new.hi / new.lo) > 3 * math.log10(known.hi / known.lo)
    # Held-out tasks fall inside the new-task interval.
    inside = 0
    for held in ("SST-2", "RTE", "COPA", "WiC"):
        rest = Law(pooled=None, models={}, shared=fit_shared([p for p in points if p.task != held]))
        rec = rest.recommend(1e-3, "m", held)
        truth = next(p.log10_lr for p in points if p.task == held and p.ratio == 1e-3)
        inside += math.log10(rec.lo) <= truth <= math.log10(rec.hi)
    assert inside == 4
    unseen = law.recommend(3e-5, "other-model")
    assert unseen.warning and "--anchor" in unseen.warning
    anchored = law.recommend(3e-5, "other-model", anchor=LawPoint(ratio=1e-3, log10_lr=-1.0, se=0.1))
    assert anchored.basis == "anchor" and anchored.warning is None
    assert math.log10(anchored.lr) == pytest.approx(-1.0 + fit_shared(points).b * math.log10(3e-5 / 1e-3))


def test_shared_fit_round_trips_through_law_json(tmp_path):
    law = Law(pooled=None, models={}, shared=fit_shared(shared_points(np.random.default_rng(8))))
    law.save(tmp_path / "law.json")
    again = load_law(tmp_path / "law.json")
    assert again.recommend(1e-4, "m", "RTE") == law.recommend(1e-4, "m", "RTE")


def test_leave_one_out_scores_predictions_on_measured_curves():
    rng = np.random.default_rng(9)
    offsets = {"SST-2": -2.0, "RTE": -1.6, "COPA": -2.3}
    ratios = (1e-2, 1e-3, 1e-4)
    curves, points = {}, []
    for task, off in offsets.items():
        for r in ratios:
            truth = off - 0.8 * (math.log10(r) + 3.5)
            lrs = [10.0**e for e in np.arange(round(truth * 2) / 2 - 2, round(truth * 2) / 2 + 2.01, 0.5)]
            means = [accuracy_curve(truth)(lr) for lr in lrs]
            curves[("m", task, r)] = (lrs, means)
            points.append(LawPoint(model="m", task=task, ratio=r, se=0.1, log10_lr=truth + rng.normal(0, 0.05)))
    # A cell without signal (flat up to noise), which the rules kept out of the law: scored, and marked so.
    curves[("m", "SST-2", 1e-5)] = ([10.0**e for e in np.arange(-2, 1.01, 0.5)], list(0.5 + rng.normal(0, 0.01, 7)))
    tasks = leave_one_task_out(points, curves)
    assert len(tasks) == 10 and {r.task for r in tasks} == set(offsets)
    assert [r.ratio for r in tasks if not r.in_law] == [1e-5]
    law_cells = summarize_validation(tasks).law_cells
    in_law = [r for r in tasks if r.in_law]
    assert law_cells.cells == 9 and law_cells.mean_regret == pytest.approx(np.mean([r.regret for r in in_law]))
    # A task none of whose cells entered the law: still predicted as a new task, from the whole law.
    curves[("m", "WiC", 1e-3)] = ([10.0**e for e in np.arange(-3, 0.01, 0.5)], list(0.5 + rng.normal(0, 0.01, 7)))
    wic = [r for r in leave_one_task_out(points, curves) if r.task == "WiC"]
    shared = fit_shared(points)
    assert len(wic) == 1 and not wic[0].in_law and wic[0].source == WITHIN_MODEL
    offset = offset_spread(np.asarray(shared.offsets), np.asarray(shared.cov).diagonal()[:-1])[0]
    assert wic[0].predicted_lr == pytest.approx(10.0 ** (offset + shared.b * (-3 - shared.x0)))
    del curves[("m", "SST-2", 1e-5)], curves[("m", "WiC", 1e-3)]
    tasks = leave_one_task_out(points, curves)
    # RTE's offset is 0.43 decades above the others' mean: about one grid step off, a little regret.
    rte = [r for r in tasks if r.task == "RTE"]
    assert all(0.4 <= r.error_steps <= 1.7 for r in rte)
    assert all(0 < r.regret < 8 for r in rte)
    ratios_out = leave_one_ratio_out(points, curves)
    assert len(ratios_out) == 9
    summary = summarize_validation(ratios_out)
    assert summary.mean_error_steps < 0.6 and summary.max_regret < 2
    assert summarize_validation(tasks).mean_regret > summary.mean_regret
    assert {r.source for r in tasks} == {WITHIN_MODEL} and summarize_by_source(tasks) == {}
    # A second model with one task in the law: its cells are predicted from the first model's tasks, and
    # the summary keeps that cross-family prediction apart from the within-model ones.
    for r in ratios:
        truth = -1.0 - 0.8 * (math.log10(r) + 3.5)
        lrs = [10.0**e for e in np.arange(round(truth * 2) / 2 - 2, round(truth * 2) / 2 + 2.01, 0.5)]
        curves[("m2", "SST-2", r)] = (lrs, [accuracy_curve(truth)(lr) for lr in lrs])
        points.append(LawPoint(model="m2", task="SST-2", ratio=r, se=0.1, log10_lr=truth))
    tasks = leave_one_task_out(points, curves)
    across = [r for r in tasks if r.source == ACROSS_MODELS]
    assert {r.model for r in across} == {"m2"} and len(across) == 3
    assert all(r.error_steps > 1.2 for r in across)  # m2's offset is 1 decade above m's tasks' mean
    split = summarize_by_source(tasks)
    assert split["leave_one_task_out_within_model"].cells == 9
    assert split["leave_one_task_out_across_models"].mean_error_steps == pytest.approx(
        np.mean([r.error_steps for r in across]))
