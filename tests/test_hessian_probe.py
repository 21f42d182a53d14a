"""The local finite-difference step against exact HVPs at several mask sizes, and the calibration's spread
over repeated probes: tiny-llama (SmolLM2 tokenizer), real SST-2."""

import json
import math
import statistics

import pytest
import torch

from rmask_tune.analysis.hessian import FD_NOISE_FLOOR, MaskedHessian
from rmask_tune.analysis.hvp_check import compare_hvps
from rmask_tune.analysis.landscape import ProbeSettings, probe_batches, probe_ratio
from rmask_tune.analysis.predict import calibrate, calibrate_law, constant_for
from rmask_tune.analysis.probes import probe_loss_settings
from rmask_tune.cli import main
from rmask_tune.errors import RmaskError
from rmask_tune.law_record import LawPoint, ProbeCalibration
from rmask_tune.law import Law, load_law
from rmask_tune.masking import masked_layers
from rmask_tune.trainer import prepare_trial
from paths import DATA

pytestmark = pytest.mark.needs_data

TOLERANCE = 0.02  # relative error of an fd HVP (and of lambda_max) that counts as agreeing with the exact one
CHECK = ProbeSettings(batches=1, batch_size=2, iters=8, data_dir=str(DATA))


def masked_trial(density: float):
    """tiny-llama with Random Masking of ``density`` of its attention q/v entries, on one batch of 2 examples."""
    config = {"model": "tiny-llama", "task": "SST-2", "method": "random_masking", "density": density}
    trial = prepare_trial({**config, **CHECK.trial_overrides()})
    return trial, probe_batches(trial, CHECK)


def scale_masked_weights(trial, factor: float) -> None:
    """Multiply the base weights of the masked layers (q and v) by ``factor``: a sharper, larger-norm model."""
    with torch.no_grad():
        for layer in masked_layers(trial.model).values():
            layer.base_layer.weight.mul_(factor)


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
@pytest.mark.slow
def test_local_step_agrees_with_exact_hvps_at_every_mask_size(density):
    trial, batches = masked_trial(density)
    result = compare_hvps(trial.model, trial.loss, batches, CHECK, vectors=2)
    targets = sum(layer.base_layer.weight.numel() for layer in masked_layers(trial.model).values())
    assert result["trainable_params"] == pytest.approx(density * targets, rel=0.01)  # ~4k to ~200k values
    assert [row["kind"] for row in result["vectors"]] == ["top", "random", "random"]
    for row in result["vectors"]:
        assert row["fd_error"] < TOLERANCE, row
        assert row["fd_step"] <= row["relative_step"]  # the local step never exceeds the old one
    assert result["lambda_fd"] == pytest.approx(result["lambda_exact"], rel=TOLERANCE)
    top = result["vectors"][0]
    assert top["exact_curvature"] == pytest.approx(result["lambda_exact"], rel=0.05)  # it is the top eigenvector
    assert top["fd_loss_change"] < 1e-2  # local: the quadratic term along the step is a small loss change


@pytest.mark.slow
def test_relative_step_fails_where_the_local_step_holds():
    """At half of q/v the old step (fd_step * (1 + ||W0||)) leaves the local region along the sharpest direction,
    and with the weights scaled up it grows with them; the curvature step stays within tolerance on both."""
    trial, batches = masked_trial(0.5)
    plain = compare_hvps(trial.model, trial.loss, batches, CHECK, vectors=0)["vectors"][0]
    scale_masked_weights(trial, 3.0)
    scaled = compare_hvps(trial.model, trial.loss, batches, CHECK, vectors=0)["vectors"][0]
    for top in (plain, scaled):
        assert top["fd_error"] < TOLERANCE < top["relative_error"], top
        assert top["relative_loss_change"] > 30 * top["fd_loss_change"]  # second-order loss change along the step
    assert scaled["relative_step"] > 2 * plain["relative_step"]


@pytest.mark.slow
def test_curvature_step_keeps_the_second_order_loss_change_fixed_per_direction():
    trial, batches = masked_trial(0.1)
    hessian = MaskedHessian(trial.model, trial.loss, batches, fd_loss_change=1e-3)
    top = hessian.top_eigenvalue(iters=6)
    flat = torch.randn(hessian.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for unit in (top.vector, flat / flat.norm()):
        kappa = float(hessian.hvp(unit).norm())  # ||H u||
        local = math.sqrt(2e-3 / kappa)
        assert FD_NOISE_FLOOR * hessian.gradient_norm / kappa < local < hessian.relative_step()  # no bound binds
        assert local / 2 <= hessian.steps[-1] <= 2 * local  # re-measured when ||H u|| moved the step over 2x
        assert hessian.step_size() == pytest.approx(local)
    kappa_top = abs(top.eigenvalue)
    assert kappa < kappa_top / 10 and hessian.steps[-1] > 2 * math.sqrt(2e-3 / kappa_top)  # flat: a longer step
    relative = MaskedHessian(trial.model, trial.loss, batches, fd_step_mode="relative")
    relative.hvp(torch.ones(relative.dim, dtype=torch.float64))
    assert relative.steps == [pytest.approx(1e-2 * (1 + relative.parameter_norm()))]
    with pytest.raises(RmaskError, match="unknown fd step mode 'tiny'"):
        MaskedHessian(trial.model, trial.loss, batches, fd_step_mode="tiny")
    with pytest.raises(RmaskError, match="fd_loss_change must be positive"):
        MaskedHessian(trial.model, trial.loss, batches, fd_loss_change=0.0)


@pytest.mark.slow
def test_probe_results_record_the_hvp_and_the_steps():
    settings = ProbeSettings(batches=1, batch_size=2, iters=4, data_dir=str(DATA))
    local = probe_ratio("tiny-llama", "SST-2", 1e-4, settings)
    old = probe_ratio("tiny-llama", "SST-2", 1e-4, ProbeSettings(**{**vars(settings), "fd_step_mode": "relative"}))
    exact = probe_ratio("tiny-llama", "SST-2", 1e-4, ProbeSettings(**{**vars(settings), "hvp": "exact"}))
    assert (local.hvp, local.step_mode, old.step_mode, exact.hvp, exact.step_mode) == (
        "fd", "curvature", "relative", "exact", None
    )  # fmt: skip
    assert local.step_range[0] <= local.step <= local.step_range[1] <= old.step
    assert old.step_range == [old.step, old.step]  # the relative step is one fixed number
    assert exact.step is None and exact.step_range is None
    assert local.lambda_max == pytest.approx(exact.lambda_max, rel=TOLERANCE)


def test_a_calibration_record_without_a_step_mode_reproduces_the_relative_step():
    # law.json's probe as calibrations stored it before step modes existed
    old = {"batches": 4, "batch_size": 8, "iters": 20, "tol": 1e-3, "hvp": "fd", "solver": "lanczos", "fd_step": 0.01,
           "seed": 0}  # fmt: skip
    assert ProbeSettings.from_record(old).fd_step_mode == "relative"
    new = ProbeSettings(batches=2).record()
    assert new["fd_step_mode"] == "curvature" and ProbeSettings.from_record(new) == ProbeSettings(batches=2)
    with pytest.raises(RmaskError, match="unknown probe setting.*: step"):
        ProbeSettings.from_record({**old, "step": 1.0})


@pytest.fixture()
def law_path(tmp_path):
    """A small law.json: two optimal-LR points on tiny-llama SST-2."""
    points = [
        {"model": "tiny-llama", "task": "SST-2", "ratio": ratio, "lr": lr, "log10_lr": math.log10(lr), "se": 0.1}
        for ratio, lr in ((1e-5, 0.05), (1e-4, 0.01))
    ]  # fmt: skip
    path = tmp_path / "law.json"
    Law(pooled=None, models={}, points=[LawPoint.from_json(p) for p in points]).save(path)
    return path


@pytest.mark.slow
def test_calibration_reports_the_spread_over_repeated_probes(law_path, capsys):
    argv = ["analyze", "calibrate", "--law", str(law_path), "--repeats", "3", "--batches", "1", "--batch-size", "2",
            "--iters", "3", "--data-dir", str(DATA)]  # fmt: skip
    assert main(argv) == 0
    assert "c over 3 repeated probes" in capsys.readouterr().out
    entry = load_law(law_path).probe_calibration.to_json()
    assert entry["repeats"] == 3 and entry["probe"]["fd_step_mode"] == "curvature" and "repeat" not in entry["probe"]
    for point in entry["points"]:
        values = point["lambda_max_repeats"]
        assert len(values) == 3 and len(set(values)) == 3  # other batches, other start vectors
        assert point["lambda_max"] == pytest.approx(statistics.geometric_mean(values))
        assert point["lambda_max_sd"] == pytest.approx(statistics.stdev(values))
        assert point["lambda_max_range"] == [min(values), max(values)]
        assert point["step_range"][0] <= point["step_range"][1]
    per_repeat = [calibrate((p["lambda_max_repeats"][r], p["lr"]) for p in entry["points"]) for r in range(3)]
    assert entry["c_repeats"] == pytest.approx(per_repeat)
    assert entry["c"] == pytest.approx(statistics.geometric_mean(per_repeat))
    assert entry["c_sd"] == pytest.approx(statistics.stdev(per_repeat)) and entry["c_sd"] > 0
    assert entry["c_range"] == [min(per_repeat), max(per_repeat)]
    # Repeat 0 is the single probe a calibration without repeats makes.
    settings = ProbeSettings.from_record(entry["probe"], data_dir=str(DATA))
    assert probe_ratio("tiny-llama", "SST-2", 1e-5, settings).lambda_max == entry["points"][0]["lambda_max_repeats"][0]
    with pytest.raises(RmaskError, match="repeats must be at least 1"):
        calibrate_law(law_path, settings, repeats=0)


@pytest.mark.slow
def test_calibration_and_recommend_probe_the_loss_each_cell_trained_on(tmp_path, capsys):
    """A law point's loss settings (here the classification objective over SST-2's two candidates, not the LM
    objective over the vocabulary) decide the loss whose Hessian the probe measures, in calibration and in
    `recommend --probe`, and probes.json says so."""
    loss = {"objective": "classification", "scoring": "mean", "max_length": 512}
    point = {"model": "tiny-llama", "task": "SST-2", "ratio": 1e-4, "lr": 0.01, "log10_lr": -2.0, "se": 0.1,
             "loss_settings": loss}  # fmt: skip
    path = tmp_path / "law.json"
    Law(pooled=None, models={}, points=[LawPoint.from_json(point)]).save(path)
    measured = calibrate_law(path, CHECK).points[0].lambda_max
    assert measured == probe_ratio("tiny-llama", "SST-2", 1e-4, CHECK, loss).lambda_max
    assert measured != pytest.approx(probe_ratio("tiny-llama", "SST-2", 1e-4, CHECK).lambda_max, rel=0.05)
    assert json.loads((tmp_path / "probes.json").read_text())["probes"][0]["loss_settings"] == loss
    with pytest.raises(RmaskError, match="not a loss setting the probe takes: lr"):
        probe_ratio("tiny-llama", "SST-2", 1e-4, CHECK, {"lr": 1.0})
    # `recommend --probe` probes that same loss, with this model's own c; `--loss-settings` overrides the loss
    base = ["recommend", "--ratio", "1e-4", "--law", str(path), "--probe", "--model", "tiny-llama", "--task", "SST-2",
            "--data-dir", str(DATA)]  # fmt: skip
    assert main([*base, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # one calibration point: its own c = lr* x lambda_max, so the probe gives back its optimum
    assert out["lambda_max"] == measured and out["lr"] == pytest.approx(0.01)
    assert out["loss_settings"] == loss and out["loss_basis"] == "the law's points (tiny-llama on SST-2)"
    assert out["c_basis"] == "c of tiny-llama's own optima (1)" and out["warning"] is None
    assert main([*base, "--json", "--loss-settings", "{}"]) == 0
    lm = json.loads(capsys.readouterr().out)
    assert lm["loss_settings"] == {} and lm["lambda_max"] != pytest.approx(measured, rel=0.05)
    assert main([*base, "--loss-settings", '{"lr": 1}']) == 2
    assert "not a loss setting the probe takes: lr" in capsys.readouterr().err
    assert main([*base, "--loss-settings", "[1]"]) == 2
    assert "--loss-settings must be a JSON object" in capsys.readouterr().err


def test_probe_loss_comes_from_the_nearest_points_and_refuses_a_mixture():
    cls = {"objective": "classification", "scoring": "mean"}
    head = {"head": "classifier", "train_head": True}
    points = [LawPoint(model="a", task="SST-2", loss_settings=cls), LawPoint(model="a", task="WiC", loss_settings=cls),
              LawPoint(model="b", task="SST-2", loss_settings=head)]  # fmt: skip
    assert probe_loss_settings(points, "a", "WiC") == (cls, "the law's points (a on WiC)")
    assert probe_loss_settings(points, "a", "COPA") == (cls, "the law's points (a)")
    assert probe_loss_settings(points, "c", "WiC") == (cls, "the law's points (WiC)")
    assert probe_loss_settings([], "c", "WiC") == ({}, "the trainer's defaults")
    with pytest.raises(RmaskError, match=r"the law's points \(SST-2\) were trained with different losses"):
        probe_loss_settings(points, "c", "SST-2")
    with pytest.raises(RmaskError, match=r"\(all\) were trained with different losses"):
        probe_loss_settings(points, "c", "COPA")


def test_constant_for_a_new_model_carries_the_spread_between_models():
    points = [{"model": "a", "lr": 0.01, "lambda_max": 10.0}, {"model": "a", "lr": 0.1, "lambda_max": 2.0},
              {"model": "b", "lr": 0.01, "lambda_max": 0.01}]  # fmt: skip
    c_a = math.sqrt(0.1 * 0.2)  # the geometric mean of a's lr* x lambda_max
    calibration = {"c": 0.05, "n": 3, "log10_sd": 0.3, "c_by_model": {"a": c_a, "b": 1e-4}, "points": points}
    own = constant_for(ProbeCalibration.from_json(calibration), "a")
    assert own.c == c_a and own.warning is None
    assert own.log10_sd == pytest.approx(math.log10(2) / math.sqrt(2))  # a's two points around a's own c
    new = constant_for(ProbeCalibration.from_json(calibration), "z")
    between = statistics.stdev([math.log10(c_a), -4.0])
    assert new.c == 0.05 and new.log10_sd == pytest.approx(math.hypot(0.3, between))
    assert "differs 1.41e+03x between its models (a, b)" in new.warning
    single = constant_for(ProbeCalibration.from_json({"c": 0.05, "n": 2, "log10_sd": 0.3, "c_by_model": {"a": 0.05}}), "z")
    assert single.log10_sd == 0.3 and "calibrated on a only" in single.warning


@pytest.mark.slow
def test_cli_hvp_check_writes_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["analyze", "hvp-check", "--model", "tiny-llama", "--task", "SST-2", "--ratios", "1e-5", "--vectors", "1",
            "--batches", "1", "--batch-size", "2", "--iters", "3", "--data-dir", str(DATA),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "lam exact" in table and "local step" in table
    (check,) = json.loads((out / "hvp_check.json").read_text())["checks"]
    assert check["ratio"] == 1e-5 and check["step_mode"] == "curvature" and len(check["vectors"]) == 2
    assert check["agrees"] == (check["max_error"] <= 0.02 and check["lambda_error"] <= 0.02)
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv[:-2], "--vectors", "-1"]) == 2
    assert "vectors must be at least 0" in capsys.readouterr().err
