"""The optimal-LR point estimate, the single-line law fit, law.json and the narrow grid, on data with a known truth."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from paths import REPO

from rmask_tune.errors import RmaskError
from rmask_tune.law_record import LawPoint
from rmask_tune.law import Law, fit_law, load_law, narrow_grid
from rmask_tune.resampling import DevRecord, bootstrap_cell, optimum_with_interval, quadratic_vertex

GRID = [10.0**e for e in np.arange(-5.0, -0.99, 0.5)]


def parabola(lr, vertex=-3.3, peak=0.9, curvature=0.05):
    return peak - curvature * (math.log10(lr) - vertex) ** 2


def exact_cell(lrs, curve):
    """A noise-free cell: one constant record per LR."""
    return bootstrap_cell({lr: {0: DevRecord(curve(lr), 0)} for lr in lrs}, samples=20)


def test_quadratic_optimum_recovers_a_parabolas_vertex_from_shuffled_grid():
    est = optimum_with_interval(exact_cell(GRID[::-1], parabola))
    assert est.kind == "quadratic" and not est.at_edge
    assert est.log10_lr == pytest.approx(-3.3, abs=1e-9)
    assert est.best_grid_lr == pytest.approx(10**-3.5)
    # no noise: the error is the grid's resolution, spacing / sqrt(12)
    assert est.se == pytest.approx(0.5 / math.sqrt(12))
    assert est.interval == pytest.approx((-3.3, -3.3))


def test_best_point_at_the_grid_edge_is_flagged_not_extrapolated():
    high = optimum_with_interval(exact_cell(GRID, lambda lr: parabola(lr, vertex=0.0)))
    assert high.kind == "edge-high" and high.at_edge and high.edge_fraction == 1.0
    assert high.log10_lr == pytest.approx(-1.0)
    low = optimum_with_interval(exact_cell(GRID, lambda lr: parabola(lr, vertex=-7.0)))
    assert low.kind == "edge-low" and low.lr == pytest.approx(1e-5)


def test_a_plateau_of_two_best_points_puts_the_optimum_between_them():
    x = np.log10([1e-4, 1e-3, 1e-2, 1e-1])
    assert quadratic_vertex(x, np.array([0.4, 0.5, 0.5, 0.4])) == (pytest.approx(-2.5), "quadratic")


def test_estimator_rejects_unusable_curves():
    with pytest.raises(RmaskError, match="at least two learning rates"):
        optimum_with_interval(exact_cell([1e-3], parabola))
    with pytest.raises(RmaskError, match="at least one trial"):
        bootstrap_cell({1e-3: {}})


def synthetic_points(seed=0, noise=0.1, a=-4.5, b=-0.5):
    rng = np.random.default_rng(seed)
    return [LawPoint(task=task, ratio=r, log10_lr=a + b * math.log10(r) + rng.normal(0, noise), se=noise)
            for r in np.logspace(-6, -2, 9) for task in ("SST-2", "RTE")]


def test_wls_fit_recovers_a_known_exponent_within_its_interval():
    fit = fit_law(synthetic_points(), bootstrap=500, seed=0)
    b_se = math.sqrt(fit.cov[1][1])
    assert abs(fit.b + 0.5) < 3 * b_se and abs(fit.a + 4.5) < 3 * math.sqrt(fit.cov[0][0])
    assert fit.b_ci[0] < fit.b < fit.b_ci[1] and fit.b_ci[1] - fit.b_ci[0] < 0.15
    assert fit.r2 > 0.95
    assert fit.ratio_range == pytest.approx((1e-6, 1e-2))
    assert fit.residual_sd == pytest.approx(0.1, rel=0.4)
    assert len(fit.points) == 18 and fit.points[0].task == "SST-2"
    # the bootstrap is seeded: same seed, same intervals; another seed, others
    assert fit_law(synthetic_points(), bootstrap=500, seed=0).b_ci == fit.b_ci
    assert fit_law(synthetic_points(), bootstrap=500, seed=1).b_ci != fit.b_ci


def test_bootstrap_intervals_cover_the_true_exponent_at_about_their_level():
    fits = [fit_law(synthetic_points(seed=100 + s), bootstrap=200, seed=s) for s in range(60)]
    b_cover = sum(f.b_ci[0] < -0.5 < f.b_ci[1] for f in fits) / len(fits)
    a_cover = sum(f.a_ci[0] < -4.5 < f.a_ci[1] for f in fits) / len(fits)
    assert 0.8 <= b_cover < 1 and 0.8 <= a_cover < 1  # nominal 95%; case bootstrap on 18 points runs ~92%
    assert abs(np.mean([f.b for f in fits]) + 0.5) < 0.01  # unbiased


def test_weights_discount_an_uncertain_outlier():
    points = synthetic_points(noise=0.02)
    points.append(LawPoint(ratio=1e-6, log10_lr=3.0, se=50.0))  # wildly off, but with a huge error
    fit = fit_law(points, bootstrap=200)
    assert abs(fit.b + 0.5) < 0.02
    unweighted = fit_law([replace(p, se=0.02) for p in points], bootstrap=10)
    assert abs(unweighted.b + 0.5) > 0.1


def test_fit_needs_two_ratios():
    with pytest.raises(RmaskError, match="two or more ratios"):
        fit_law([LawPoint(ratio=1e-3, log10_lr=-3, se=0.1)] * 3)


@pytest.fixture()
def law_file(tmp_path):
    pooled = fit_law(synthetic_points(), bootstrap=300)
    law = Law(pooled=pooled, models={"opt-125m": fit_law(synthetic_points(seed=2), bootstrap=300)},
              points=list(pooled.points))
    path = tmp_path / "law.json"
    law.save(path)
    return path


def test_law_json_round_trip_predict_and_narrow_grid(law_file):
    raw = json.loads(law_file.read_text())
    assert raw["format"] == "rmask-tune law v2" and raw["probe_calibration"] is None
    assert set(raw["pooled"]) >= {"a", "b", "a_ci", "b_ci", "cov", "r2", "ratio_range", "points", "n_points"}
    law = load_law(law_file)
    fit = law.fit_for(None)
    lr, lo, hi = law.predict(1e-4)
    assert lr == pytest.approx(10 ** (fit.a + fit.b * -4))
    assert lr == pytest.approx(10 ** (-4.5 + 2), rel=0.15)  # the truth: 10^-4.5 * ratio^-0.5
    assert lo < lr < hi
    _, plo, phi = law.predict(1e-4, prediction=True)
    assert plo < lo and phi > hi
    # the band widens away from the data
    _, far_lo, far_hi = law.predict(1e-9)
    assert far_hi / far_lo > hi / lo
    assert law.in_range(1e-4) and not law.in_range(1e-8) and not law.in_range(0.5)
    assert law.predict(1e-4, "opt-125m")[0] != lr
    grid = narrow_grid(law, 1e-4)
    assert len(grid) == 5 and grid == sorted(grid)
    assert grid[2] == pytest.approx(lr, rel=0.01)
    assert grid[-1] / grid[0] == pytest.approx(10, rel=0.01)
    assert narrow_grid(law, 1e-4, points=3, decades=2)[0] == pytest.approx(lr / 10, rel=0.01)


def test_law_errors_are_one_line_user_errors(law_file, tmp_path):
    law = load_law(law_file)
    for bad in (0, 2, -1e-3, float("nan")):
        with pytest.raises(RmaskError, match="ratio must be"):
            law.predict(bad)
    with pytest.raises(RmaskError, match="no fit for model 'llama'.*opt-125m"):
        law.predict(1e-3, "llama")
    with pytest.raises(RmaskError, match="not found"):
        load_law(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RmaskError, match="not valid JSON"):
        load_law(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(RmaskError, match="not an rmask-tune law file"):
        load_law(tmp_path / "other.json")


@pytest.mark.parametrize("committed", sorted((REPO / "reports").rglob("law.json")),
                         ids=lambda p: str(p.parent.relative_to(REPO / "reports")))
def test_every_committed_law_json_loads_and_saves_back_the_same(committed, tmp_path):
    """law.json's one reader and one writer keep every committed report's law as it is, key for key (a v1 file
    comes back as v2: the same law, with no shared or per-task fits, which v1 did not have)."""
    again = tmp_path / "law.json"
    load_law(committed).save(again)
    original = json.loads(committed.read_text())
    if original["format"] == "rmask-tune law v1":
        original = {"shared": None, "tasks": {}, **original, "format": "rmask-tune law v2"}
    assert json.loads(again.read_text()) == original


def test_held_out_rows_and_calibration_points_load_typed_and_keep_their_keys(tmp_path):
    """law.json's held-out rows and calibration points load as records (``from`` as ``source``); a null the file
    holds is written back as null, a key it lacks stays absent, and a row missing a score is a one-line error."""
    d = json.loads((REPO / "reports" / "law-across-tasks" / "law.json").read_text())
    row = d["validation"]["leave_one_task_out"][0]
    point = d["probe_calibration"]["points"][0]
    point["loo_error_steps"] = None
    del point["step_range"]
    path = tmp_path / "law.json"
    path.write_text(json.dumps(d))
    law = load_law(path)
    typed = law.validation.leave_one_task_out[0]
    assert (typed.model, typed.source, typed.regret, typed.in_law) == (row["model"], row["from"], row["regret"],
                                                                      row["in_law"])
    assert law.probe_calibration.points[0].loo_error_steps is None
    law.save(tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == d
    del d["validation"]["leave_one_task_out"][0]["regret"]
    path.write_text(json.dumps(d))
    with pytest.raises(RmaskError, match="HeldOutRow entry is malformed.*regret"):
        load_law(path)
