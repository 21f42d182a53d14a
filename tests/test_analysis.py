"""The Hessian probe, distances and the LR predictor on tiny-llama (SmolLM2 tokenizer) and real SST-2."""

import json
import math

import pytest
import torch

from rmask_tune.analysis.distance import run_distance
from rmask_tune.analysis.hessian import MaskedHessian, lanczos, power_iteration
from rmask_tune.analysis.landscape import ProbeSettings, probe_ratio, probe_trial
from rmask_tune.analysis.predict import calibrate, prediction_errors, predict_lr
from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.law_record import LawPoint
from rmask_tune.law import Law, load_law
from rmask_tune.masking import load_adapter, masked_layers
from rmask_tune.trainer import prepare_trial, run_trial
from paths import DATA

pytestmark = pytest.mark.needs_data

SETTINGS = ProbeSettings(batches=1, batch_size=2, iters=6, data_dir=str(DATA))  # a cheap probe for the CLI tests
TINY = {"model": "tiny-llama", "task": "SST-2", "data_dir": str(DATA), "batch_size": 2}


def probe_trial_for(ratio: float):
    return prepare_trial({**TINY, "ratio": ratio, **SETTINGS.trial_overrides()})


@pytest.fixture(scope="module")
def small_mask():
    """A mask of about fifteen values, with its Hessian (fd) on one batch of two SST-2 examples."""
    trial = probe_trial_for(1e-6)
    batches = [next(trial.train_batches())]
    return trial, MaskedHessian(trial.model, trial.loss, batches)


@pytest.mark.slow
def test_lanczos_matches_the_dense_finite_difference_hessian(small_mask):
    _, hessian = small_mask
    assert 8 <= hessian.dim <= 30
    dense = hessian.dense()
    eigenvalues = torch.linalg.eigvalsh(dense)
    result = hessian.top_eigenvalue(iters=hessian.dim, tol=1e-4)
    assert result.converged and result.iterations < hessian.dim
    assert result.eigenvalue == pytest.approx(float(eigenvalues[-1]), rel=0.02)
    assert result.bottom == pytest.approx(float(eigenvalues[0]), rel=0.02)
    # At random init negative curvature dominates this spectrum: power iteration needs the shift, creeps
    # towards the top and says it has not converged within a short budget; given thousands of
    # products (cheap on the dense matrix) it gets there.
    assert eigenvalues[0] < -10 * eigenvalues[-1] < 0
    short = power_iteration(lambda v: dense @ v, hessian.dim, iters=30, tol=1e-4)
    assert short.shifted and not short.converged
    long = power_iteration(lambda v: dense @ v, hessian.dim, iters=20000, tol=1e-9)
    assert long.eigenvalue == pytest.approx(float(eigenvalues[-1]), rel=0.02)


def test_finite_differences_agree_with_double_backward(small_mask):
    trial, fd = small_mask
    exact = MaskedHessian(trial.model, trial.loss, fd.batches, hvp="exact")
    vector = torch.randn(fd.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    approx, reference = fd.hvp(vector), exact.hvp(vector)
    assert torch.linalg.vector_norm(approx - reference) < 1e-2 * torch.linalg.vector_norm(reference)
    # The probe leaves the values exactly where they were.
    assert all(float(p.abs().max()) == 0.0 for p in fd.params)


@pytest.mark.parametrize("solver", [lanczos, power_iteration])
def test_solvers_find_the_top_of_definite_and_indefinite_spectra(solver):
    for spectrum, top in (([0.1, 0.5, 1.0, 3.0], 3.0), ([-5.0, -1.0, 0.5, 2.0], 2.0)):
        basis, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        matrix = basis @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ basis.T
        result = solver(lambda v: matrix @ v, 4, iters=500, tol=1e-10)
        assert result.converged and result.eigenvalue == pytest.approx(top, rel=1e-6)


@pytest.mark.slow
def test_sparser_mask_has_a_flatter_landscape_on_the_same_batches():
    settings = ProbeSettings(batches=1, batch_size=2, iters=15, tol=1e-2, data_dir=str(DATA))
    dense_mask = probe_ratio("tiny-llama", "SST-2", 1e-3, settings)
    sparse_mask = probe_ratio("tiny-llama", "SST-2", 1e-5, settings)
    assert dense_mask.loss == pytest.approx(sparse_mask.loss)  # the same batches, the same function at init
    assert dense_mask.trainable_params > 50 * sparse_mask.trainable_params
    assert dense_mask.converged and sparse_mask.converged
    assert 0 < sparse_mask.lambda_max < dense_mask.lambda_max / 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short finished training runs at ratio 1e-5 that differ only in learning rate."""
    root = tmp_path_factory.mktemp("runs")
    dirs = {}
    for lr in (1e-3, 3e-2):
        dirs[lr] = root / f"lr{lr:g}"
        config = {**TINY, "ratio": 1e-5, "lr": lr, "epochs": 1, "train_examples": 8, "dev_examples": 2,
                  "test_examples": 2, "quiet": True}  # fmt: skip
        run_trial(config, output_dir=dirs[lr])
    return root, dirs


def test_distance_is_the_norm_of_the_trained_values_and_grows_with_lr(runs):
    _, dirs = runs
    rows = {lr: run_distance(path) for lr, path in dirs.items()}
    base = prepare_trial({**TINY, "method": "none", **SETTINGS.trial_overrides()})  # same base model, no mask
    model = base.accelerator.unwrap_model(base.model)
    load_adapter(model, dirs[3e-2] / "adapter")
    values = torch.cat([layer.values.detach() for layer in masked_layers(model).values()])
    assert rows[3e-2].distance == pytest.approx(float(values.norm()), rel=1e-6)
    assert rows[3e-2].trainable_params == values.numel()
    assert rows[3e-2].distance > 5 * rows[1e-3].distance > 0


@pytest.mark.slow
def test_cli_landscape_after_training_and_distance(runs, tmp_path, capsys):
    root, dirs = runs
    out = tmp_path / "landscape"
    argv = ["analyze", "landscape", "--after-training", str(dirs[3e-2]), "--batches", "1", "--batch-size", "2",
            "--iters", "4", "--data-dir", str(DATA), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "central finite differences" in table and "Lanczos" in table and "trained" in table
    points = json.loads((out / "landscape.json").read_text())["points"]
    init, trained = points
    assert (init["state"], trained["state"]) == ("init", "trained")
    assert init["trainable_params"] == trained["trainable_params"] == run_distance(dirs[3e-2]).trainable_params
    assert trained["loss"] < init["loss"]  # the trained values are loaded: the training loss went down
    assert (out / "landscape.png").read_bytes()[:4] == b"\x89PNG"
    assert main(argv) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err

    assert main(["analyze", "distance", str(root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(row["lr"] for row in rows) == [1e-3, 3e-2]


def test_calibration_round_trips_through_law_json_and_predict_lr(tmp_path, capsys):
    assert calibrate([(2.0, 0.5), (8.0, 0.5)]) == pytest.approx(2.0)  # geometric mean of 1 and 4
    law_path = tmp_path / "law.json"
    point = {"model": "tiny-llama", "task": "SST-2", "ratio": 1e-5, "lr": 0.02, "log10_lr": math.log10(0.02), "se": 0.1}
    Law(pooled=None, models={}, points=[LawPoint.from_json(point)]).save(law_path)
    argv = ["analyze", "calibrate", "--law", str(law_path), "--batches", "1", "--batch-size", "2", "--iters", "4",
            "--data-dir", str(DATA)]  # fmt: skip
    assert main(argv) == 0
    assert "probe_calibration" in capsys.readouterr().out
    law = load_law(law_path)
    entry = law.probe_calibration.to_json()
    assert entry["n"] == 1 and [p.to_json() for p in law.points] == [point]
    lr, lam = predict_lr("tiny-llama", "SST-2", 1e-5, entry["c"], data_dir=str(DATA), **entry["probe"])
    assert lam == pytest.approx(entry["points"][0]["lambda_max"], rel=1e-9)  # the probe is deterministic
    assert lr == pytest.approx(0.02, rel=1e-9)


def test_prediction_errors_in_half_decade_steps():
    # lr* x lambda_max is 1 for the first two points; the third optimum sits a decade above c / lambda_max.
    pairs = [{"lambda_max": 1.0, "lr": 1.0}, {"lambda_max": 10.0, "lr": 0.1}, {"lambda_max": 100.0, "lr": 0.1}]
    c = calibrate((p["lambda_max"], p["lr"]) for p in pairs)
    assert c == pytest.approx(10 ** (1 / 3))
    errors = prediction_errors(pairs, c)
    assert errors[2]["error_steps"] == pytest.approx(-4 / 3)  # log10(10^(1/3) / 100 / 0.1) / 0.5
    assert errors[2]["loo_error_steps"] == pytest.approx(-2.0)  # c = 1 from the other two: one decade low
    assert errors[0]["loo_error_steps"] == pytest.approx(math.log10(math.sqrt(10)) / 0.5)
    assert errors[1]["predicted_lr"] == pytest.approx(c / 10)
    assert prediction_errors(pairs[:1], 2.0)[0]["loo_error_steps"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "landscape", "--ratios", "1e-3"], "needs --model and --task"),
        (["analyze", "landscape", "--model", "tiny-llama", "--task", "SST-2", "--ratios", "2"], "not in (0, 1]"),
        (["analyze", "distance", "/nonexistent-run"], "no metrics.json"),
        (["analyze", "landscape", "--after-training", "/nonexistent-run"], "no metrics.json"),
    ],
)
def test_cli_rejects_bad_input(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_probe_refuses_a_method_without_masked_values():
    trial = prepare_trial({**TINY, "method": "lora", **SETTINGS.trial_overrides()})
    with pytest.raises(RmaskError, match="no Random Masking values"):
        probe_trial(trial, "init", SETTINGS)
