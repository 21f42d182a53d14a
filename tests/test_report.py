"""Reports and recommendations from a real sqlite MLflow store holding a synthetic sweep with a known
law (lr* = 10^-4.5 * ratio^-0.5, shifted per task and model), written in the sweep's MLflow schema:
parent and child runs, with diverged, ASHA-stopped, running, errored, re-run and missing trials."""

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from rmask_tune.cli import main
from rmask_tune.law import load_law
from rmask_tune.report import build_report, load_summary
from paths import DATA

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

EXPERIMENT = "synthetic-law"
GRID = [float(f"{10 ** e:.3g}") for e in np.arange(-4.0, -1.49, 0.5)]  # 1e-4 .. 3.16e-2
RATIOS = [1e-5, 1e-4, 1e-3]
TASK_SHIFT = {"SST-2": 0.0, "RTE": -0.2}
MODEL_SHIFT = {"m-small": 0.0, "m-big": -0.3}
TOTAL = {"m-small": 1_000_000, "m-big": 4_000_000}
EPOCHS = 3


def true_log_lr(model, task, ratio):
    return -4.5 - 0.5 * math.log10(ratio) + TASK_SHIFT[task] + MODEL_SHIFT[model]


def plan():
    """The synthetic trials (dicts), each with its dev history, test metric and status."""
    rng = np.random.default_rng(0)
    trials = []

    def add(model, task, method, ratio, lr, seed, dev, status="finished", **extra):
        noise = rng.normal(0, 0.0005)
        trainable = TOTAL[model] if method == "full" else round((ratio or 1e-3) * TOTAL[model])
        trials.append({"model": model, "task": task, "method": method, "ratio": ratio, "lr": lr, "seed": seed,
                       "status": status, "history": [dev - 0.02, dev - 0.005, dev + noise],
                       "test": dev + noise - 0.03 + rng.normal(0, 0.002), "trainable": trainable,
                       "wall": 60.0 + 10 * seed, **extra})

    for model in MODEL_SHIFT:
        for task in TASK_SHIFT:
            ratios = RATIOS + ([1e-7] if (model, task) == ("m-small", "SST-2") else [])  # 1e-7: optimum past the grid
            for ratio in ratios:
                for lr in GRID:
                    for seed in (0, 1):
                        if (model, task, ratio, lr, seed) == ("m-small", "RTE", 1e-3, GRID[2], 1):
                            continue  # never ran: a missing trial
                        dev = 0.9 - 0.1 * (math.log10(lr) - true_log_lr(model, task, ratio)) ** 2
                        if model == "m-big" and lr == GRID[-1]:
                            add(model, task, "random_masking", ratio, lr, seed, dev, "diverged", no_dev=True)
                        elif model == "m-small" and lr == GRID[0] and task == "RTE":
                            add(model, task, "random_masking", ratio, lr, seed, dev, "stopped", epochs=1)
                        else:
                            add(model, task, "random_masking", ratio, lr, seed, dev)
            for lr in (1e-5, 1e-4, 1e-3):  # the full fine-tuning baseline
                for seed in (0, 1):
                    add(model, task, "full", None, lr, seed, 0.93 - 0.05 * (math.log10(lr) + 4) ** 2)
    # CB ran only on m-big and is still running; one trial errored; one configuration was re-run
    add("m-big", "CB", "random_masking", 1e-3, 1e-3, 0, 0.7, "running", epochs=1)
    add("m-big", "CB", "random_masking", 1e-3, 1e-2, 0, 0.7, "errored", epochs=0)
    rerun = dict(trials[0], status="errored", test=None, wall=5.0, epochs=0, old=True)
    trials.insert(0, rerun)
    return trials


def write_store(db_path, trials, experiment=EXPERIMENT):
    """Log ``trials`` as the sweep would: a parent run and one child run per trial."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(f"sqlite:///{db_path}")
    exp = client.create_experiment(experiment)
    parent = client.create_run(exp, tags={"rmask.role": "sweep", "rmask.sweep": experiment}).info.run_id
    client.log_param(parent, "sweep_file", "synthetic.yaml")
    for i, t in enumerate(trials):
        run = client.create_run(exp, start_time=1_000_000 + (0 if t.get("old") else 1000 + i), tags={
            "mlflow.parentRunId": parent, "rmask.role": "trial", "rmask.trial_id": f"t{i:04d}",
            "rmask.status": t["status"]})
        rid, now = run.info.run_id, int(time.time() * 1000)
        epochs = t.get("epochs", EPOCHS)
        params = {"model": t["model"], "task": t["task"], "method": t["method"],
                  "ratio": "" if t["ratio"] is None else repr(t["ratio"]), "density": "", "lr": repr(t["lr"]),
                  "seed": str(t["seed"]), "trainable_params": str(t["trainable"]),
                  "total_params": str(TOTAL[t["model"]]),
                  "epochs": str(EPOCHS), "train_examples": "1000", "dev_examples": "500", "test_examples": "1000",
                  "metric": "accuracy"}
        history = [] if t.get("no_dev") else t["history"][:epochs]
        metrics = [Metric("dev_metric", v, now, e + 1) for e, v in enumerate(history)]
        metrics += [Metric("train_loss", 1.0 / (e + 1), now, e + 1) for e in range(epochs)]
        if t["status"] in ("finished", "diverged"):
            final = {"best_epoch": 3, "diverged": float(t["status"] == "diverged"), "step_time_s": 0.1,
                     "peak_mem_bytes": 1e6, "epochs_completed": epochs, "wall_time_s": t["wall"],
                     "trainable_fraction": t["trainable"] / TOTAL[t["model"]]}
            if not t.get("no_dev"):
                final |= {"best_dev_metric": max(t["history"]), "test_metric": t["test"]}
            metrics += [Metric(k, float(v), now, 0) for k, v in final.items()]
        client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        if t["status"] != "running":
            client.set_terminated(rid, "FAILED" if t["status"] == "errored" else "FINISHED",
                                  end_time=run.info.start_time + int(t["wall"] * 1000))
    return f"sqlite:///{db_path}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # A real sqlite store, on tmpfs where there is one: sqlite's fsyncs otherwise dominate this test.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="rmask-report-", dir=shm)) if shm else tmp_path_factory.mktemp("sweep")
    trials = plan()
    yield write_store(folder / "mlflow.db", trials), folder, trials
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    uri, _, _ = store
    out = tmp_path_factory.mktemp("reports") / "synthetic"
    return build_report(EXPERIMENT, uri, out, bootstrap=400).folder


def expected_cell(trials, model, task, method, ratio):
    """Test metric at the best-mean-dev LR, from the trials as planned (mean, std over seeds)."""
    mine = [t for t in trials if (t["model"], t["task"], t["method"], t["ratio"]) == (model, task, method, ratio)
            and t["status"] in ("finished", "diverged", "stopped") and not t.get("old")]
    by_lr = {}
    for t in mine:
        if not t.get("no_dev"):
            by_lr.setdefault(t["lr"], []).append(t)
    best = max(by_lr, key=lambda lr: np.mean([max(t["history"][: t.get("epochs", EPOCHS)]) for t in by_lr[lr]]))
    tests = [t["test"] for t in by_lr[best] if t["status"] != "stopped"]
    return best, np.mean(tests), np.std(tests, ddof=1)


@pytest.mark.slow
def test_table_cells_are_test_metrics_at_the_best_dev_lr(store):
    uri, _, trials = store
    summary = load_summary(EXPERIMENT, uri, bootstrap=50)
    assert summary.models == ["m-big", "m-small"] and summary.tasks == ["CB", "RTE", "SST-2"]
    rows = {(r.model, r.method, r.ratio): r for r in summary.rows}
    assert len(rows) == 2 * (1 + 3) + 1  # per model: full + 3 ratios; m-small also 1e-7
    for key in [("m-small", "random_masking", 1e-4), ("m-big", "random_masking", 1e-3), ("m-small", "full", None)]:
        for task in ("SST-2", "RTE"):
            best, mean, std = expected_cell(trials, key[0], task, key[1], key[2])
            curve = rows[key].cells[task]
            assert curve.best_lr == best
            assert np.mean(curve.test) == pytest.approx(mean) and np.std(curve.test, ddof=1) == pytest.approx(std)
        assert "CB" not in rows[key].cells
        avg, covered = rows[key].average(summary.tasks)
        assert covered == 2
    # the best grid LR is the grid point nearest the true optimum
    curve = rows[("m-small", "random_masking", 1e-4)].cells["RTE"]
    assert math.log10(curve.best_lr) == pytest.approx(-2.5, abs=0.01)  # truth -2.7
    assert rows[("m-small", "random_masking", 1e-4)].trainable_fraction == pytest.approx(1e-4)


def test_diverged_trials_without_dev_count_as_the_worst_point(store):
    uri, _, _ = store
    summary = load_summary(EXPERIMENT, uri, bootstrap=50)
    curve = summary.curves[("m-big", "SST-2", "random_masking", 1e-5)]
    assert [t.status for t in curve.trials[GRID[-1]]] == ["diverged", "diverged"]
    worst = min(min(v) for lr, v in curve.dev.items() if lr != GRID[-1])
    assert curve.dev[GRID[-1]] == [worst, worst]
    # stopped trials enter the dev curve with their partial history but give no test metric
    stopped = summary.curves[("m-small", "RTE", "random_masking", 1e-3)].trials[GRID[0]]
    assert {t.status for t in stopped} == {"stopped"} and all(t.test is None and t.epochs == 1 for t in stopped)


@pytest.mark.slow
def test_fitted_law_recovers_the_known_exponent(report, store):
    law = load_law(report / "law.json")
    assert set(law.models) == {"m-small", "m-big"}
    # the shared exponent with an offset per (model, task) recovers the law and its shifts
    shared = law.shared
    assert shared.b == pytest.approx(-0.5, abs=0.03) and shared.b_ci[0] <= -0.5 <= shared.b_ci[1]
    offsets = dict(zip(shared.pairs, shared.offsets))
    assert offsets["m-small/RTE"] - offsets["m-small/SST-2"] == pytest.approx(-0.2, abs=0.06)
    assert offsets["m-big/SST-2"] - offsets["m-small/SST-2"] == pytest.approx(-0.3, abs=0.06)
    # no per-example results in this store: every cell is resampled by the stated binomial approximation
    assert {p.resampled for p in law.points} == {"binomial"}
    assert {p.signal["reference"] for p in law.points} == {"smallest LR"}
    for model, fit in [*law.models.items(), ("pooled", law.pooled)]:
        assert fit.b_ci[0] <= -0.5 <= fit.b_ci[1], model
        assert fit.b == pytest.approx(-0.5, abs=0.06), model
        assert fit.r2 > (0.9 if model != "pooled" else 0.75)  # tasks shift by 0.2, models by 0.3
        assert fit.ratio_range == pytest.approx((1e-5, 1e-3))
    # at the middle ratio 1e-4: -4.5 + 2 + the mean task shift -0.1 (+ the model shift)
    assert law.models["m-small"].log10_lr(1e-4) == pytest.approx(-2.6, abs=0.05)
    assert law.models["m-big"].log10_lr(1e-4) == pytest.approx(-2.9, abs=0.05)
    assert len(law.models["m-small"].points) == 6  # SST-2 1e-7 is at the grid edge: excluded
    # one fit per model and task recovers that task's own intercept (the law's task and model shifts)
    assert set(law.tasks) == {f"{m}/{t}" for m in MODEL_SHIFT for t in TASK_SHIFT}
    for name, fit in law.tasks.items():
        model, task = name.split("/")
        assert fit.b == pytest.approx(-0.5, abs=0.06) and len(fit.points) == (2 if name == "m-big/RTE" else 3), name
        assert fit.log10_lr(1e-4) == pytest.approx(-2.5 + TASK_SHIFT[task] + MODEL_SHIFT[model], abs=0.05), name
    # m-big RTE at 0.1%: its optimum beats the smallest LR by 2.5 points on 500 dev examples, which the
    # binomial approximation (no pairing) cannot call significant: the signal test keeps it out, by name
    assert len(law.pooled.points) == 11
    flat = [e for e in [e.to_json() for e in law.excluded] if (e["model"], e["task"], e["ratio"]) == ("m-big", "RTE", 1e-3)]
    assert len(flat) == 1 and flat[0]["reason"].startswith("signal test failed") and "p = " in flat[0]["reason"]
    # every point is the true optimum (the quadratic is exact on a parabola) up to seed noise
    for p in law.pooled.points:
        assert p.log10_lr == pytest.approx(true_log_lr(p.model, p.task, p.ratio), abs=0.05)
        assert p.estimate == "quadratic" and p.se > 0
    raw = json.loads((report / "law.json").read_text())
    assert raw["experiment"] == EXPERIMENT and raw["method"] == "random_masking" and raw["probe_calibration"] is None
    assert raw["bootstrap"] == {"samples": 400, "seed": 0}
    edge = [e for e in raw["excluded"] if e["ratio"] == 1e-7]
    assert len(edge) == 1 and edge[0]["estimate"] == "edge-high" and "upper edge" in edge[0]["reason"]
    assert edge[0]["lr"] == pytest.approx(GRID[-1])


def test_missing_and_partial_data_are_named(report):
    readme = (report / "README.md").read_text()
    notes = readme.split("## What is missing or partial")[1].split("## 1.")[0]
    assert "1 trial(s) still running (or killed)" in notes and "1 trial(s) errored" in notes
    assert "1 re-run trial(s) of an identical configuration" in notes
    assert "m-small · Random Masking 0.1% · RTE: 1 trial(s) of the grid missing (lr 0.001 seed 1)" in notes
    assert "m-small · Random Masking 0.00001% · SST-2: best dev LR 0.032 is the largest in the grid" in notes
    assert "m-small · Random Masking 0.00001%: no trial for RTE" in notes
    assert "m-small · CB: no trial" in notes
    assert "m-big · Full FT: no trial for CB" in notes
    assert "m-big · Random Masking 0.1% · CB: no finished trial with a test metric" in notes
    # CB ran a window of the grid: said once, and only the holes inside the window count as missing
    assert "m-big · Random Masking 0.1% · CB: LRs 0.001 – 0.01 only (other tasks: 0.0001 – 0.032)" in notes
    assert "m-big · Random Masking 0.1% · CB: 4 trial(s) of the grid missing (lr 0.001 seed 1, lr 0.0032 seed 0, " \
           "lr 0.0032 seed 1, lr 0.01 seed 1)" in notes
    # the stopped trials leave a full curve: no note for them beyond the compute table
    assert "m-small · Random Masking 0.1% · SST-2" not in notes


def test_readme_tables_law_and_compute(report, store):
    _, _, trials = store
    readme = (report / "README.md").read_text()
    best, mean, std = expected_cell(trials, "m-small", "SST-2", "random_masking", 1e-3)
    row = next(line for line in readme.splitlines() if line.startswith("| m-small | Random Masking 0.1% | 0.1% |"))
    assert f"{mean * 100:.1f} ± {std * 100:.1f}" in row and row.rstrip(" |").endswith("†")
    assert "| m-big | Full FT | 100% |" in readme
    for png in ("law.png", "lr_sensitivity_m-small.png", "lr_sensitivity_m-big.png", "params_vs_performance.png"):
        assert f"]({png})" in readme and (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    law_rows = [line for line in readme.splitlines() if line.startswith("| pooled |")]
    assert len(law_rows) == 1 and "-0.5" in law_rows[0]
    rte = next(line for line in readme.splitlines() if line.startswith("| m-big · RTE |"))
    assert "| 2 | 1e-05 – 0.0001 |" in rte  # its 0.1% cell failed the signal test
    for pair in ("m-small/SST-2", "m-small/RTE", "m-big/SST-2", "m-big/RTE"):
        assert sum(line.startswith(f"| {pair} |") for line in readme.splitlines()) == 1, pair
    assert "## 3b. Validation" in readme and "Leave-one-task-out: 13 cell(s)" in readme  # every Random Masking cell
    # compute: every deduplicated trial, its epochs and wall time; ASHA-stopped trials and the epochs they saved
    kept = [t for t in trials if not t.get("old")]
    epochs = sum(t.get("epochs", EPOCHS) if not t.get("no_dev") else EPOCHS for t in kept)
    hours = sum(t["wall"] for t in kept if t["status"] != "running") / 3600
    stopped = [t for t in kept if t["status"] == "stopped"]
    compute = next(line for line in readme.splitlines() if line.startswith(f"| {len(kept)} |"))
    assert compute == f"| {len(kept)} | {epochs} | {hours:.3f} | {len(stopped)} | {len(stopped)} | {2 * len(stopped)} |"
    assert "1 trial(s) have no wall time yet" in readme


@pytest.mark.slow
def test_versus_compares_a_narrow_sweep_with_the_full_grid(store, tmp_path):
    _, folder, trials = store
    # A "law-guided" sweep of m-small / SST-2: three LRs a quarter-decade apart around the true optimum, one seed.
    guided, rng = [], np.random.default_rng(1)
    for ratio in RATIOS:
        centre = true_log_lr("m-small", "SST-2", ratio)
        for offset in (-0.25, 0.0, 0.25):
            lr = float(f"{10 ** (centre + offset):.3g}")
            dev = 0.9 - 0.1 * offset ** 2
            guided.append({"model": "m-small", "task": "SST-2", "method": "random_masking", "ratio": ratio, "lr": lr,
                           "seed": 0, "status": "finished", "history": [dev - 0.02, dev - 0.005, dev],
                           "test": dev - 0.03 + rng.normal(0, 0.002), "trainable": round(ratio * 1_000_000),
                           "wall": 30.0})
    (tmp_path / "guided").mkdir()
    write_store(tmp_path / "guided" / "mlflow.db", guided, experiment="guided")
    from rmask_tune.report.compare import compare, totals

    cells = compare(load_summary(str(tmp_path / "guided"), bootstrap=20), load_summary(str(folder), bootstrap=20))
    assert sorted(c.key for c in cells) == [("m-small", "SST-2", "random_masking", r) for r in RATIOS]
    for cell in cells:
        ratio = cell.key[3]
        assert (cell.ours.cost.trials, cell.ours.cost.trial_epochs) == (3, 9)
        assert (cell.theirs.cost.trials, cell.theirs.cost.trial_epochs) == (len(GRID) * 2, len(GRID) * 2 * EPOCHS)
        centre = [t for t in guided if t["ratio"] == ratio][1]
        assert cell.ours.best_lr == centre["lr"] and cell.ours.test == pytest.approx(centre["test"])
        best, mean, _ = expected_cell(trials, "m-small", "SST-2", "random_masking", ratio)
        assert cell.theirs.best_lr == best and cell.gap == pytest.approx(centre["test"] - mean)
    t = totals(cells)
    assert t.ours.trials == 9 and t.theirs.trials == 3 * len(GRID) * 2
    assert t.ours.device_hours == pytest.approx(9 * 30 / 3600)
    assert t.worst_gap == pytest.approx(min(c.gap for c in cells))
    out = build_report(str(tmp_path / "guided"), out=tmp_path / "report", bootstrap=20, versus=str(folder)).folder
    readme = (out / "README.md").read_text()
    assert f'## 6. Against "{EXPERIMENT}"' in readme
    assert f"this sweep used 9 trials, 27 trial-epochs and 0.075 device hours against {3 * len(GRID) * 2}" in readme


def test_html_is_self_contained(report):
    page = (report / "index.html").read_text()
    assert page.count("<img") == 4 and page.count('src="data:image/png;base64,') == 4
    assert "src=\"http" not in page and "<script" not in page and "<link" not in page


def test_html_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the HTML render check needs it")
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,4200",
         (report / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Uncaught" not in done.stderr and ":CONSOLE" not in done.stderr
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (4200, 1400)
    assert pixels.std() > 0.1  # not blank
    colours = {tuple(c) for c in (pixels.reshape(-1, 3) * 255).astype(int)[::7]}
    assert len(colours) > 200  # text, tables and the plots' colour maps
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.4
    assert saturated.mean() > 0.001  # coloured plot lines and markers actually drawn (tables are grey)


@pytest.mark.slow
def test_report_cli_refuses_to_overwrite_without_the_flag(store, tmp_path, capsys):
    uri, folder, _ = store
    out = tmp_path / "r"
    assert main(["report", str(folder), "--out", str(out), "--bootstrap", "50"]) == 0  # the folder holds mlflow.db
    printed = capsys.readouterr().out
    assert "law: lr* = 10^offset[model/task] * ratio^-0.4" in printed and "leave-one-task-out: error" in printed
    assert str(out / "index.html") in printed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(["report", EXPERIMENT, "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds files" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    again = ["report", EXPERIMENT, "--tracking-uri", uri, "--out", str(out), "--overwrite", "--bootstrap", "60"]
    assert main(again) == 0
    assert json.loads((out / "law.json").read_text())["bootstrap"]["samples"] == 60


def test_report_cli_errors_are_one_line(store, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, _, _ = store
    cases = [
        (["report", "no-such-exp", "--tracking-uri", uri], "no experiment 'no-such-exp'"),
        (["report", "x", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"], "no MLflow store"),
        (["report", str(tmp_path)], "has no mlflow.db"),
        (["report", "just-a-name"], "pass --tracking-uri"),
        (["report", EXPERIMENT, "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--bootstrap", "0"],
         "bootstrap must be at least 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_recommend_end_to_end(report, store, capsys):
    law_path = str(report / "law.json")
    # a known (model, task): its own offset, an interval from the fit and the scatter around it
    assert main(["recommend", "--ratio", "1e-4", "--law", law_path, "--model", "m-big", "--task", "RTE", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["basis"] == "pair" and captured.err == "" and not out["extrapolated"]
    assert out["lr"] == pytest.approx(10 ** true_log_lr("m-big", "RTE", 1e-4), rel=0.15)
    lo, hi = out["interval"]
    assert lo < out["lr"] < hi
    assert len(out["grid"]) == 5 and out["grid"][-1] / out["grid"][0] == pytest.approx(10, rel=0.02)
    # a new task on a known model: the mean of its tasks' offsets, the interval widened by their spread
    assert main(["recommend", "--ratio", "1e-4", "--law", law_path, "--model", "m-big", "--task", "CB", "--json"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert new["basis"] == "new task"
    assert new["lr"] == pytest.approx(10 ** (-4.5 + 2 - 0.1 - 0.3), rel=0.15)
    assert new["interval"][1] / new["interval"][0] > hi / lo
    # a model the law never saw: the pooled pairs, with a warning that names the calibration options
    assert main(["recommend", "--ratio", "1e-4", "--law", law_path, "--model", "gpt-9"]) == 0
    text = capsys.readouterr()
    assert "recommended lr for ratio 0.0001" in text.out and "pooled law (unseen model)" in text.out
    assert "not in the law" in text.err and "--anchor" in text.err
    # ... or its offset from an anchor sweep of that model at one ratio (here m-small's own cells stand in)
    _, folder, _ = store
    assert main(["recommend", "--ratio", "1e-5", "--law", law_path, "--model", "m-small", "--task", "SST-2",
                 "--anchor", str(folder), "--json"]) == 0
    anchored = json.loads(capsys.readouterr().out)
    assert anchored["basis"] == "anchor" and "at ratio 1e-05" in anchored["detail"]
    assert anchored["lr"] == pytest.approx(10 ** true_log_lr("m-small", "SST-2", 1e-5), rel=0.15)
    # out of the fitted range: a warning, still an answer
    assert main(["recommend", "--ratio", "1e-7", "--law", law_path, "--model", "m-big", "--task", "RTE"]) == 0
    text = capsys.readouterr()
    assert "outside the fitted range 1e-05 – 0.001" in text.err and "recommended lr" in text.out
    # straight from the experiment, without a report
    uri, _, _ = store
    assert main(["recommend", "--ratio", "1e-4", "--experiment", EXPERIMENT, "--tracking-uri", uri,
                 "--model", "m-big", "--task", "RTE", "--json"]) == 0
    # (the report used 400 bootstrap resamples, this 1000: the optima's weights differ slightly)
    assert json.loads(capsys.readouterr().out)["lr"] == pytest.approx(out["lr"], rel=0.02)


def test_recommend_errors_are_one_line_and_exit_2(report, tmp_path, capsys):
    law_path = str(report / "law.json")
    cases = [
        (["--ratio", "0", "--law", law_path], "ratio must be a fraction of the model in (0, 1], got 0"),
        (["--ratio", "2", "--law", law_path], "ratio must be a fraction of the model in (0, 1], got 2"),
        (["--ratio", "1e-4", "--law", str(tmp_path / "missing.json")], "law file not found"),
        (["--ratio", "1e-4"], "needs --law PATH"),
        (["--ratio", "1e-4", "--law", law_path, "--model", "gpt-9", "--anchor", str(report / "sweep-export.json.gz")],
         "no interior optimum to calibrate on (it has no Random Masking cell for this model/task)"),
    ]
    for argv, message in cases:
        assert main(["recommend", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


REAL_SWEEP = """
name: report-real
models: [tiny-llama]
tasks: [SST-2]
methods:
  random_masking:
    ratios: ["1%", "0.1%"]
    lr: {{min: 1e-3, max: 1e-1, per_decade: 1}}
  none: {{}}
seeds: [0]
training: {{epochs: 2, batch_size: 8, tokenizer: smollm2-135m, objective: classification}}
data: {{data_dir: {data}, train_examples: 16, dev_examples: 16, test_examples: 16}}
search: {{type: grid}}
scheduler: {{type: asha, grace_period: 1, reduction_factor: 2}}
resources: {{cpus: 1, gpus: 0}}
max_concurrent_trials: 2
storage_path: {storage}
"""


@pytest.mark.slow
def test_report_of_a_real_small_sweep(tmp_path):
    """`rmask-tune sweep` on a tiny model and real SST-2, then `rmask-tune report` on its YAML."""
    data = DATA
    if not (data / "glue").is_dir():
        pytest.skip(f"the shared data folder {data} is missing")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(REAL_SWEEP.format(data=data, storage=tmp_path / "runs"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    sweep = subprocess.run(["rmask-tune", "sweep", str(spec)], capture_output=True, text=True, env=env,
                           timeout=600, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert main(["report", str(spec), "--out", str(tmp_path / "report"), "--bootstrap", "50"]) == 0
    summary = load_summary(str(spec), bootstrap=50)
    assert summary.experiment == "report-real" and len(summary.trials) == 7  # 2 ratios x 3 LRs + the frozen model
    # every trial that wrote metrics.json shows its numbers
    results = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "trials").glob("*/metrics.json")]
    assert len(results) == sum(t.status in ("finished", "diverged") for t in summary.trials) >= 4
    for r in results:
        trial = next(t for t in summary.trials if (t.method, t.ratio) == (r["method"], r["ratio"])
                     and (t.lr == r["lr"] or t.method == "none"))
        assert trial.test == pytest.approx(r["test_metric"]) and trial.dev == pytest.approx(r["dev_metric"])
        assert trial.epochs == len(r["epochs"]) and trial.wall_time_s == pytest.approx(r["wall_time_s"], rel=0.5)
    # each ratio's table cell is the test metric at its best-dev LR; the law saw both ratios
    law = json.loads((tmp_path / "report" / "law.json").read_text())
    assert sorted(p["ratio"] for p in law["points"] + law["excluded"]) == [1e-3, 1e-2]
    # with the settings that shaped each cell's training loss, which `analyze calibrate` probes with
    for cell in law["points"] + law["excluded"]:
        assert cell["loss_settings"] == {"objective": "classification", "scoring": "mean", "max_length": 512,
                                         "tokenizer": "smollm2-135m"}
    for ratio in (1e-2, 1e-3):
        curve = summary.curves[("tiny-llama", "SST-2", "random_masking", ratio)]
        assert sorted(curve.trials) == [1e-3, 1e-2, 1e-1]
        best = max(curve.dev, key=lambda lr: curve.dev[lr][0])
        assert curve.best_lr == best and curve.test == [t.test for t in curve.trials[best] if t.test is not None]
    stopped = [t for t in summary.trials if t.status == "stopped"]
    assert summary.compute.stopped.trials == len(stopped)
    assert summary.compute.effort.trial_epochs == sum(t.epochs for t in summary.trials) <= 13
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| tiny-llama | Random Masking 1% | 1% |" in readme and "| tiny-llama | Frozen | 0% |" in readme
    assert (tmp_path / "report" / "index.html").read_text().count("data:image/png;base64,") >= 2


@pytest.mark.slow
def test_recommend_probe_uses_the_calibrated_constant(report, tmp_path, capsys):
    """--probe: lr = c / lambda_max, lambda_max from the Hessian probe on a tiny model and real SST-2."""
    data = DATA
    if not (data / "glue").is_dir():
        pytest.skip(f"the shared data folder {data} is missing")
    law_path = tmp_path / "law.json"
    raw = json.loads((report / "law.json").read_text())
    law_path.write_text(json.dumps(raw))
    base = ["recommend", "--ratio", "1e-3", "--law", str(law_path), "--probe"]
    assert main([*base, "--model", "tiny-llama"]) == 2
    assert "--probe needs --model and --task" in capsys.readouterr().err
    assert main([*base, "--model", "tiny-llama", "--task", "SST-2"]) == 2
    assert f"run `rmask-tune analyze calibrate --law {law_path}` first" in capsys.readouterr().err
    probe = {"batches": 1, "batch_size": 4, "iters": 3, "tol": 1e-3, "hvp": "fd", "fd_step": 1e-2, "seed": 0}
    law_path.write_text(json.dumps({**raw, "probe_calibration": {"c": 0.05, "n": 4, "log10_sd": 0.1, "probe": probe}}))
    assert main([*base, "--model", "tiny-llama", "--task", "SST-2", "--data-dir", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "probe" and out["lambda_max"] > 0
    assert out["lr"] * out["lambda_max"] == pytest.approx(0.05)
    assert out["interval"] == pytest.approx([out["lr"] / 10**0.196, out["lr"] * 10**0.196])
    assert out["grid"][2] == pytest.approx(out["lr"], rel=0.01) and len(out["grid"]) == 5
