"""The linear-regression simulator reproduces the paper's three claims on concrete seeds."""

import json

import numpy as np
import pytest

from rmask_tune.analysis.theory import gram, gradient_descent, make_problem, random_mask, simulate
from rmask_tune.cli import main
from rmask_tune.errors import RmaskError

RATIOS = (1.0, 0.5, 0.2, 0.1, 0.05)


@pytest.fixture(scope="module")
def wide():
    """d = 4000 >> n / p for every ratio: the regime the theorems describe."""
    return simulate(n=50, d=4000, ratios=RATIOS, seed=0)


def test_masked_gram_is_p_times_the_gram_on_average():
    X, _ = make_problem(30, 300, seed=3)
    grams = [gram(X * random_mask(300, 0.2, seed)) for seed in range(400)]
    target = 0.2 * gram(X)
    single = np.linalg.norm(grams[0] - target, 2)
    averaged = np.linalg.norm(np.mean(grams, axis=0) - target, 2)
    assert averaged < 0.1 * np.linalg.norm(target, 2)
    assert averaged < single / 5  # the error of a mean of 400 unbiased draws shrinks ~20x


def test_masked_spectrum_concentrates_around_p_times_the_full_one(wide):
    for row in wide.rows[1:3]:  # p = 0.5, 0.2: kept >= 16 n
        assert row.deviation < 0.3
        assert 1.0 <= row.lambda_ratio < 1.3
    # Ten times more features: the relative deviation shrinks by about sqrt(10).
    narrow = simulate(n=50, d=400, ratios=(0.2, 0.1), seed=0)
    for small_d, large_d in zip(narrow.rows, wide.rows[2:4]):
        assert large_d.deviation < small_d.deviation / 2
    assert wide.rows[0].deviation == pytest.approx(0.0, abs=1e-12)


def test_gd_converges_just_below_two_over_lambda_max_and_diverges_just_above(wide):
    for row in wide.rows:
        assert (row.below, row.above) == ("converged", "diverged"), row.p
        assert row.min_norm_gap < 1e-6  # GD from zero reaches the min-norm solution
    lrs = [row.max_stable_lr for row in wide.rows]
    assert all(a < b for a, b in zip(lrs, lrs[1:]))  # sparser mask, larger stable LR
    assert lrs[-1] > 10 * lrs[0]


def test_threshold_is_sharp_on_a_plain_problem():
    X, y = make_problem(20, 100, seed=1)
    threshold = 2 / np.linalg.eigvalsh(gram(X))[-1]
    assert gradient_descent(X, y, 0.99 * threshold).outcome == "converged"
    assert gradient_descent(X, y, 1.01 * threshold).outcome == "diverged"


def test_solution_norm_grows_like_one_over_sqrt_p(wide):
    norms = [row.solution_norm for row in wide.rows]
    assert all(a < b for a, b in zip(norms, norms[1:]))
    for row in wide.rows:
        assert row.interpolates
        assert 0.85 < row.norm_ratio < 1.2, row.p


def test_default_setting_shows_the_breakdown_below_n_kept_features():
    result = simulate(seed=0)  # n = 50, d = 400
    kept = {row.p: row for row in result.rows}
    assert kept[0.05].kept < 50 and not kept[0.05].interpolates
    assert all(row.above == "diverged" for row in result.rows)
    assert [row.max_stable_lr for row in result.rows] == sorted(row.max_stable_lr for row in result.rows)


def test_cli_prints_the_table_and_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "theory"
    assert main(["theory", "--n", "20", "--d", "200", "--ratios", "1,0.5", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "X_m X_m^T / n" in table and "max_lr" in table
    data = json.loads((out / "theory.json").read_text())
    assert [row["p"] for row in data["rows"]] == [1.0, 0.5]
    assert (out / "theory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "theory.json").read_text()
    assert main(["theory", "--n", "20", "--d", "200", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "theory.json").read_text() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n", "50", "--d", "50"], "must exceed n"),
        (["--ratios", "0.5,2"], "not in (0, 1]"),
        (["--ratios", "a"], "not a number"),
    ],
)
def test_cli_rejects_bad_input(argv, message, capsys):
    assert main(["theory", *argv]) == 2
    assert message in capsys.readouterr().err


def test_mask_keeping_nothing_is_a_user_error():
    with pytest.raises(RmaskError, match="keeps no feature"):
        simulate(n=5, d=10, ratios=(1e-6,), seed=0)
