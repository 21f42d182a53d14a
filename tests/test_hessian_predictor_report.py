"""The a-priori Hessian predictor lr = c / lambda_max in every report: recalibrated from the report folder's
probes.json against the law's own optima and validated leave-one-task-out, on a real sqlite store with known
noisy metrics (tests/noisy_store.py) and probes whose lambda_max is built so that c / lambda_max hits known LRs;
and ``analyze calibrate`` on a tiny random-init model writing and merging probes.json."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import pytest
from noisy_store import PEAK, NoisyLaw, noisy_store

from rmask_tune.analysis.landscape import ProbeSettings
from rmask_tune.analysis.predict import calibrate_law
from rmask_tune.analysis.probes import PROBES_FILE, load_probes, save_probes
from rmask_tune.cli import main
from rmask_tune.law_record import ExcludedCell, LawPoint
from rmask_tune.law import Law, load_law
from rmask_tune.report import build_report
from paths import DATA

# True optima on grid points: SST-2 1e-2/1e-3/1e-4 at 10^-2.5/-1.5/-0.5, RTE half a decade lower, CB a decade.
TRUTH = NoisyLaw(ratios={1e-2: True, 1e-3: True, 1e-4: True}, offsets={"SST-2": 0.0, "RTE": -0.5, "CB": -1.0},
                 a=-4.5, b=-1.0)
C_TRUE = 0.5
SHARPER = {"SST-2": 10.0}  # SST-2's probe reads 10x the curvature its optimum implies: c / lambda_max a decade low
UNPROBED = ("CB", 1e-4)  # an optimum without a probe
SETTINGS = ProbeSettings(batches=1, batch_size=2, iters=3)
OTHER_SETTINGS = ProbeSettings(batches=1, batch_size=2, iters=3, fd_step_mode="relative")


def true_lambda(task: str, ratio: float) -> float:
    return C_TRUE / 10 ** TRUTH.log_lr(task, ratio) * SHARPER.get(task, 1.0)


def probe(task: str, ratio: float, settings: ProbeSettings = SETTINGS, model: str = "m", scale: float = 1.0) -> dict:
    """Two repeats 10% either side of the constructed lambda_max (their geometric mean), times ``scale``."""
    lam = true_lambda(task, ratio) * scale
    return {"model": model, "task": task, "ratio": ratio, "lambda_max": lam, "lambda_max_repeats": [lam * 1.1, lam / 1.1],
            "step_range": [1e-4, 2e-4], "probe": settings.record()}


def write_probes(path: Path, tasks) -> Path:
    """Probes at every optimum of ``tasks`` but UNPROBED, and one with other settings (not used)."""
    cells = [(t, r) for t in tasks for r in TRUTH.ratios if (t, r) != UNPROBED]
    save_probes(path, [probe(t, r) for t, r in cells] + [probe("RTE", 1e-2, OTHER_SETTINGS)])
    return path


def geometric_c(points: list[LawPoint], lambdas: dict[tuple, float]) -> float:
    return statistics.geometric_mean(p.lr * lambdas[(p.task, p.ratio)] for p in points)


@pytest.fixture(scope="module")
def store():
    folder = noisy_store(TRUTH)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def uncalibrated(store, tmp_path_factory):
    return build_report(str(store), out=tmp_path_factory.mktemp("report") / "noisy", bootstrap=100).folder


@pytest.fixture(scope="module")
def calibrated(store, uncalibrated, tmp_path_factory):
    probes = write_probes(tmp_path_factory.mktemp("probes") / PROBES_FILE, TRUTH.offsets)
    return build_report(str(store), out=uncalibrated, overwrite=True, bootstrap=100, probes=probes).folder


@pytest.mark.slow
def test_without_probes_the_section_says_how_to_make_them(uncalibrated):
    law = load_law(uncalibrated / "law.json")
    assert law.probe_calibration is None and law.validation.to_json()["hessian_predictor"] is None
    readme = (uncalibrated / "README.md").read_text()
    section = readme.split("## 3c. The a-priori Hessian predictor\n\n", 1)[1].split("\n\n", 1)[0]
    assert section.startswith("Not calibrated: `rmask-tune analyze calibrate --law law.json`")
    assert not (uncalibrated / PROBES_FILE).exists()


def test_calibration_and_leave_one_task_out_hit_the_constructed_lrs(calibrated):
    law = load_law(calibrated / "law.json")
    points = law.points
    assert {(p.task, p.ratio) for p in points} == {(t, r) for t in TRUTH.offsets for r in TRUTH.ratios}
    for p in points:  # the optima sit on their grid points, within a fifth of a grid step
        assert math.log10(p.lr) == pytest.approx(TRUTH.log_lr(p.task, p.ratio), abs=0.1)
    probed = [p for p in points if (p.task, p.ratio) != UNPROBED]
    lambdas = {(t, r): true_lambda(t, r) for t in TRUTH.offsets for r in TRUTH.ratios}

    entry = law.probe_calibration.to_json()
    assert entry["n"] == 8 and entry["points_without_probe"] == 1 and entry["probes_with_other_settings"] == 1
    assert entry["probe"] == SETTINGS.record() and entry["repeats"] == 2
    assert entry["c"] == pytest.approx(geometric_c(probed, lambdas), rel=1e-9)
    assert math.log10(entry["c"] / C_TRUE) == pytest.approx(3 / 8, abs=0.03)  # 3 of 8 optima a decade off

    predictor = law.validation.to_json()["hessian_predictor"]
    assert predictor["held_out"] and predictor["probes"] == 9
    rows = predictor["rows"]
    assert [(r["task"], r["ratio"]) for r in rows] == sorted((t, r) for t, r in lambdas if (t, r) != UNPROBED)
    # c refitted without the task: SST-2 from RTE and CB (c_true); RTE with SST-2's three sharp optima of five.
    decades_off = {"SST-2": -1.0, "RTE": 3 / 5, "CB": 3 / 6}
    for row in rows:
        task, ratio = row["task"], row["ratio"]
        others = [p for p in probed if p.task != task]
        assert row["c"] == pytest.approx(geometric_c(others, lambdas), rel=1e-9)
        assert row["predicted_lr"] == pytest.approx(row["c"] / lambdas[(task, ratio)], rel=1e-9)
        assert row["best_grid_lr"] == pytest.approx(10 ** TRUTH.log_lr(task, ratio), rel=1e-3)  # GRID: 3 digits
        assert row["error_steps"] == pytest.approx(abs(decades_off[task]) / 0.5, abs=0.15), row  # c's optima
        regret = 100 * (PEAK - TRUTH.accuracy(task, ratio, row["predicted_lr"]))
        assert row["regret"] == pytest.approx(regret, abs=4), row  # the measured curve: 200 dev examples x 2 seeds
        assert not row["beyond_grid"]
    sst2 = [r for r in rows if r["task"] == "SST-2"]
    assert [r["error_steps"] for r in sst2] == pytest.approx([2.0] * 3, abs=0.15)  # the off task: two steps low
    assert min(r["regret"] for r in sst2) > max(r["regret"] for r in rows if r["task"] != "SST-2")
    overall = law.validation.to_json()["summary"]["hessian_predictor"]
    assert overall["cells"] == 8 and overall["max_error_steps"] == max(r["error_steps"] for r in rows)

    readme = (calibrated / "README.md").read_text()
    assert readme.index("## 3b.") < readme.index("## 3c. The a-priori Hessian predictor") < readme.index("## 4.")
    section = readme.split("## 3c. The a-priori Hessian predictor", 1)[1].split("## 4.", 1)[0]
    assert f"c = {entry['c']:.4g}, the geometric mean of lr* · lambda_max over the 8 optima below" in section
    assert "left out: 1 optimum(s) without a probe, 1 probe(s) with other settings" in section
    assert "of all models (the predictor is meant for models no sweep has seen" in section
    lot = law.validation.to_json()["summary"]["leave_one_task_out"]
    assert (f"Hessian predictor: 8 cell(s); error mean {overall['mean_error_steps']:.2f}, worst "
            f"{overall['max_error_steps']:.2f} grid steps" in section)
    assert f"the law's leave-one-task-out (3b): {lot['cells']} cell(s); error mean {lot['mean_error_steps']:.2f}" in section
    first = next(r for r in sst2 if r["ratio"] == 1e-2)
    assert (f"| m | SST-2 | 0.01 | {first['c']:.4g} | {first['lambda_max']:.4g} | {first['predicted_lr']:.2g} | "
            f"{first['best_grid_lr']:.2g} | {first['error_steps']:.2f} | {first['regret']:.1f} |") in section


def test_an_overwrite_rerun_keeps_the_probes_and_the_calibration(store, calibrated, capsys):
    probes = (calibrated / PROBES_FILE).read_bytes()  # --probes merged into the folder's own probes.json
    before = load_law(calibrated / "law.json")
    assert main(["report", str(store), "--out", str(calibrated), "--overwrite", "--bootstrap", "100"]) == 0
    after = load_law(calibrated / "law.json")
    assert (calibrated / PROBES_FILE).read_bytes() == probes
    assert after.probe_calibration == before.probe_calibration
    assert after.validation.to_json()["hessian_predictor"] == before.validation.to_json()["hessian_predictor"]
    s = after.validation.to_json()["summary"]["hessian_predictor"]
    assert (f"  Hessian predictor c / lambda_max (c {after.probe_calibration.c:.3g}), leave-one-task-out: error "
            f"{s['mean_error_steps']:.2f} grid steps (worst {s['max_error_steps']:.2f}), regret {s['mean_regret']:.1f} "
            f"points (worst {s['max_regret']:.1f}) over 8 cell(s)") in capsys.readouterr().out


def test_probes_of_one_task_give_in_sample_errors(calibrated, tmp_path):
    out = tmp_path / "one-task"
    out.mkdir()
    write_probes(out / PROBES_FILE, ["SST-2"])  # a folder holding only its probes.json is a new report folder
    build_report(str(calibrated / "sweep-export.json.gz"), out=out, bootstrap=100)
    law = load_law(out / "law.json")
    predictor = law.validation.to_json()["hessian_predictor"]
    assert not predictor["held_out"] and law.probe_calibration.to_json()["points_without_probe"] == 6
    assert math.log10(law.probe_calibration.to_json()["c"] / (C_TRUE * 10)) == pytest.approx(0, abs=0.03)
    assert [r["task"] for r in predictor["rows"]] == ["SST-2"] * 3
    assert all(r["error_steps"] < 0.12 and r["from"] == "c in-sample" for r in predictor["rows"])
    readme = (out / "README.md").read_text()
    assert "Leave-one-task-out is not possible: the probes at the law's optima cover one (model, task) only." in readme


@pytest.mark.slow
def test_two_model_families_give_c_per_model_and_within_model_errors(store, tmp_path, capsys):
    """A second family whose probe reads 1000x less curvature at the same optima (as an encoder with a fresh head
    does against a causal LM): c held out across families misses by decades, c from the same model's other
    tasks does not, and the report shows c per model and both validations."""
    family = NoisyLaw(ratios=TRUTH.ratios, offsets={"RTE": -0.5, "CB": -1.0}, a=TRUTH.a, b=TRUTH.b, model="m2")
    second = noisy_store(family)
    try:
        probes = [probe(t, r) for t in ("RTE", "CB") for r in TRUTH.ratios]  # not SHARPER's SST-2
        probes += [probe(t, r, model="m2", scale=1e-3) for t in family.offsets for r in TRUTH.ratios]
        save_probes(tmp_path / PROBES_FILE, probes)
        out = tmp_path / "two"
        assert main(["report", str(store), "--also", str(second), "--out", str(out), "--bootstrap", "100",
                     "--probes", str(tmp_path / PROBES_FILE)]) == 0
    finally:
        shutil.rmtree(second, ignore_errors=True)
    law = load_law(out / "law.json")
    by_model = law.probe_calibration.to_json()["c_by_model"]
    assert math.log10(by_model["m"] / C_TRUE) == pytest.approx(0, abs=0.1)
    assert math.log10(by_model["m2"] / (C_TRUE * 1e-3)) == pytest.approx(0, abs=0.1)
    validation = law.validation.to_json()
    across, within = validation["hessian_predictor"]["rows"], validation["hessian_predictor"]["within_model_rows"]
    # m2's tasks predicted across families miss by about two decades (four grid steps) with c mostly of m's.
    assert min(r["error_steps"] for r in across if r["model"] == "m2") > 2
    assert len(within) == 12 and {r["from"] for r in within} == {"c of the same model's other tasks"}
    for row in within:  # each c from the other probed task of the row's own model
        assert math.log10(row["c"] / (C_TRUE * (1e-3 if row["model"] == "m2" else 1))) == pytest.approx(0, abs=0.1)
    assert max(r["error_steps"] for r in within) < 0.4
    summary = validation["summary"]["hessian_predictor_within_model"]
    out_text = capsys.readouterr().out
    assert f"Hessian predictor, c from the same model's other tasks: error {summary['mean_error_steps']:.2f}" in out_text
    section = (out / "README.md").read_text().split("## 3c.", 1)[1].split("## 4.", 1)[0]
    assert f"c fitted on each model's optima alone: m {by_model['m']:.4g}, m2 {by_model['m2']:.4g}." in section
    assert f"(what a model family already swept on other tasks gives; not the a-priori case): 12 cell(s)" in section


@pytest.mark.parametrize("content, message", [
    (None, "probes file not found"),
    ("{}", "is not an rmask-tune probes file"),
    ('{"format": "rmask-tune probes v1", "probes": [{"model": "m"}]}', "a probe entry lacks task, ratio"),
])
def test_bad_probes_files_are_refused(store, tmp_path, capsys, content, message):
    path = tmp_path / PROBES_FILE
    if content is not None:
        path.write_text(content)
    assert main(["report", str(store), "--out", str(tmp_path / "out"), "--probes", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "out").exists()




def test_calibrate_writes_and_merges_probes_json(tmp_path):
    """tiny-llama (random init) on real SST-2: the probes land in probes.json beside law.json; a probe of the same
    cell with the same settings is replaced, one with other settings or of another cell is kept."""
    settings = ProbeSettings(batches=1, batch_size=2, iters=3, data_dir=str(DATA))
    points = [{"model": "tiny-llama", "task": "SST-2", "ratio": ratio, "lr": lr, "log10_lr": math.log10(lr), "se": 0.1}
              for ratio, lr in ((1e-5, 0.05), (1e-4, 0.01))]
    law_path = tmp_path / "law.json"
    Law(pooled=None, models={}, points=[LawPoint.from_json(p) for p in points]).save(law_path)
    stale = {"model": "tiny-llama", "task": "SST-2", "ratio": 1e-5, "lambda_max": 1.0, "lambda_max_repeats": [1.0],
             "step_range": None, "probe": settings.record()}
    other = {**stale, "probe": OTHER_SETTINGS.record()}
    elsewhere = {**stale, "task": "RTE"}
    save_probes(tmp_path / PROBES_FILE, [stale, other, elsewhere])

    entry = calibrate_law(law_path, settings).to_json()
    kept = load_probes(tmp_path / PROBES_FILE)
    assert kept[:2] == [other, elsewhere] and len(kept) == 4
    for new, point in zip(kept[2:], entry["points"]):
        assert new == {k: point[k] for k in ("model", "task", "ratio", "lambda_max", "lambda_max_repeats",
                                             "step_range")} | {"probe": settings.record()}
        assert new["lambda_max"] > 0 and new["lambda_max"] != 1.0
    assert entry["probe"] == settings.record() and "points_without_probe" not in entry  # law.json's entry as before


@pytest.mark.slow
def test_calibrate_excluded_probes_cells_outside_the_law_without_fitting_c_on_them(tmp_path, capsys):
    """--excluded probes the law's excluded cells too: they land in probes.json (for the report to score the
    predictor on them) but c stays fitted on the optima alone; with only excluded cells chosen, law.json is
    left as it was."""
    point = {"model": "tiny-llama", "task": "SST-2", "ratio": 1e-4, "lr": 0.01, "log10_lr": -2.0, "se": 0.1}
    flat = {**point, "task": "COPA", "ratio": 1e-5, "lr": 0.3, "reason": "signal test failed"}
    law_path = tmp_path / "law.json"
    Law(pooled=None, models={}, points=[LawPoint.from_json(point)], excluded=[ExcludedCell.from_json(flat)]).save(law_path)
    probe_options = ["--batches", "1", "--batch-size", "2", "--iters", "3", "--data-dir", str(DATA)]

    assert main(["analyze", "calibrate", "--law", str(law_path), "--task", "COPA", *probe_options]) == 2
    assert "no optimal-LR points for task COPA" in capsys.readouterr().err
    before = law_path.read_text()
    assert main(["analyze", "calibrate", "--law", str(law_path), "--task", "COPA", "--excluded", *probe_options]) == 0
    assert "c unchanged" in capsys.readouterr().out and law_path.read_text() == before
    assert [(p["task"], p["ratio"]) for p in load_probes(tmp_path / PROBES_FILE)] == [("COPA", 1e-5)]

    assert main(["analyze", "calibrate", "--law", str(law_path), "--excluded", *probe_options]) == 0
    probes = {(p["task"], p["ratio"]): p["lambda_max"] for p in load_probes(tmp_path / PROBES_FILE)}
    calibration = load_law(law_path).probe_calibration.to_json()
    assert set(probes) == {("COPA", 1e-5), ("SST-2", 1e-4)} and calibration["n"] == 1
    assert calibration["c"] == pytest.approx(0.01 * probes[("SST-2", 1e-4)])
