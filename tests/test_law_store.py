"""The law's statistics end to end on a real sqlite MLflow store with known noisy metrics: trials logged by the
sweep's own tracker with per-example dev results (simulated: an example is right when its fixed difficulty lies
under the accuracy at that LR, so results are paired across LRs), a known law, and one flat cell."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from rmask_tune.law import load_law
from rmask_tune.report import build_report
from rmask_tune.sweep.tracking import SweepTracker
from rmask_tune.tasks.results import ExampleLog

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
GRID = [float(f"{10 ** e:.3g}") for e in np.arange(-4.0, 0.01, 0.5)]
RATIOS = {1e-2: True, 1e-3: True, 1e-4: True, 1e-5: False}  # ratio -> learns (1e-5: flat, the frozen level)
SEEDS, DEV, TEST = (0, 1), 200, 200


def true_log_lr(ratio: float) -> float:
    return -4.0 - 0.8 * math.log10(ratio)  # 1e-2: -2.4, 1e-3: -1.6, 1e-4: -0.8


def accuracy(ratio: float | None, lr: float | None) -> float:
    if ratio is None or not RATIOS[ratio]:
        return 0.6
    return max(0.6, 0.85 - 0.1 * (math.log10(lr) - true_log_lr(ratio)) ** 2)


def _log(difficulty: np.ndarray, level: float, rng) -> ExampleLog:
    log = ExampleLog("SST-2", "accuracy", "accuracy")
    uids = [f"dev-{i}" for i in range(DEV)]
    for epoch in (1, 2):
        log.add("dev", epoch, uids, {"correct": (difficulty < level + rng.normal(0, 0.005)).astype(int).tolist()})
    log.add("test", 2, [f"test-{i}" for i in range(TEST)], {"correct": (rng.random(TEST) < level).astype(int).tolist()})
    return log


def _fill(uri: str, artifacts: Path, ratios=tuple(RATIOS), frozen: bool = True) -> None:
    """The frozen model (when ``frozen``) and the Random Masking cells at ``ratios``; every trial's noise is
    seeded by its place in the whole plan, so a store holding part of it holds the same trials."""
    tracker = SweepTracker(uri, "noisy-law", "noisy-law", "sweep-1", artifacts)
    tracker.open({"sweep_file": "noisy-law.yaml"})
    difficulty = {seed: np.random.default_rng(100 + seed).random(DEV) for seed in SEEDS}  # one dev set per seed
    cells = [("none", None, None)] + [("random_masking", r, lr) for r in RATIOS for lr in GRID]
    for n, ((method, ratio, lr), seed) in enumerate((c, s) for c in cells for s in SEEDS):
        if (ratio is None and not frozen) or (ratio is not None and ratio not in ratios):
            continue
        trial_id = f"t{n:03d}"
        log = _log(difficulty[seed], accuracy(ratio, lr), np.random.default_rng(n))
        dev = [log.scores(e)["accuracy"] for e in log.evaluations if e.split == "dev"]
        tracker.trial_run(trial_id, trial_id, {
            "model": "m", "task": "SST-2", "method": method, "lr": "none" if lr is None else lr, "seed": seed,
            "ratio": "none" if ratio is None else ratio, "density": "none", "epochs": 2, "train_examples": 256,
            "dev_examples": DEV, "test_examples": TEST, "metric": "accuracy"})
        for epoch, value in enumerate(dev, 1):
            tracker.log_epoch(trial_id, {"epoch": epoch, "train_loss": 1.0, "dev_metric": value,
                                         "trainable_params": 0 if ratio is None else round(ratio * 1e6),
                                         "total_params": 1_000_000, "precision": "fp32"})
        tracker.finish_trial(trial_id, "finished", {
            "epoch": 2, "best_dev_metric": max(dev), "best_epoch": 1 + int(np.argmax(dev)),
            "test_metric": log.scores(log.find("test"))["accuracy"], "wall_time_s": 1.0,
            "examples_json": json.dumps(log.to_dict())})
    tracker.close(tags={"rmask.trials": len(cells) * len(SEEDS)})


def _store(ratios=tuple(RATIOS), frozen: bool = True) -> Path:
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="rmask-noisy-law-", dir=shm))
    _fill(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts", ratios, frozen)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = _store()
    out = build_report(str(folder), out=tmp_path_factory.mktemp("report") / "noisy", bootstrap=300)
    yield out
    shutil.rmtree(folder, ignore_errors=True)


def _law_data(folder: Path) -> dict:
    data = json.loads((folder / "law.json").read_text())
    for key in ("created", "tracking_uri"):
        data.pop(key)
    return data


def test_intervals_signal_test_and_shared_exponent_on_a_noisy_store(report):
    law = load_law(report / "law.json")
    points = {p["ratio"]: p for p in law.data["points"]}
    assert set(points) == {1e-2, 1e-3, 1e-4}
    for ratio, p in points.items():
        assert p["resampled"] == "per-example" and p["signal"]["reference"] == "frozen model"
        assert p["signal"]["passed"] and p["signal"]["difference"] > 0.15
        low, high = p["interval"]
        assert low < 10 ** true_log_lr(ratio) < high, ratio  # the bootstrap interval holds the true optimum
        assert high / low < 10  # and dev noise, not the grid alone, sets its width
    (flat,) = law.data["excluded"]
    assert flat["ratio"] == 1e-5 and flat["reason"].startswith("signal test failed")
    assert flat["signal"]["p_value"] >= 0.05 and flat["signal"]["reference"] == "frozen model"
    assert law.shared.b_ci[0] <= -0.8 <= law.shared.b_ci[1]
    assert law.shared.b == pytest.approx(-0.8, abs=0.1)
    readme = (report / "README.md").read_text()
    assert "no: signal test failed" in readme and "| per-example |" in readme


def test_the_report_regenerates_from_its_export_alone(report, tmp_path):
    again = build_report(str(report / "sweep-export.json.gz"), out=tmp_path / "again", bootstrap=300)
    assert _law_data(report) == _law_data(again)


def test_sittings_in_separate_stores_combine_into_the_same_report(report, tmp_path):
    """Cells run in two sittings (two stores, as on two machines): one's export plus the other's store with
    --also give the report of the whole sweep, and the combined export regenerates it."""
    first, second = _store(ratios=(1e-2, 1e-3)), _store(ratios=(1e-4, 1e-5), frozen=False)
    try:
        part = build_report(str(first), out=tmp_path / "first", bootstrap=300)
        whole = build_report(str(part / "sweep-export.json.gz"), out=tmp_path / "whole", bootstrap=300,
                             also=[str(second)])
    finally:
        shutil.rmtree(first, ignore_errors=True)
        shutil.rmtree(second, ignore_errors=True)
    assert _law_data(whole) == _law_data(report)
    again = build_report(str(whole / "sweep-export.json.gz"), out=tmp_path / "again", bootstrap=300)
    assert _law_data(again) == _law_data(report)
