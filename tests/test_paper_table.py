"""The report's paper layout (methods x tasks + average, mean ± std over seeds, trainable counts), read
back from a real sqlite MLflow store written by the sweep's own tracker (SweepTracker), 2 seeds."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from rmask_tune.report import build_report, load_summary
from rmask_tune.report.paper_table import paper_tables, paper_tasks
from rmask_tune.sweep.tracking import SweepTracker

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
MODEL, TOTAL = "tiny-opt", 1_000_000
# (method, ratio, trainable) -> task -> lr -> [(dev, test) per seed]
RESULTS = {
    ("lora", None, 3_000): {
        "RTE": {1e-4: [(0.70, 0.66), (0.72, 0.70)], 1e-3: [(0.60, 0.58), (0.62, 0.60)]},
        "SST-2": {1e-4: [(0.80, 0.79), (0.82, 0.81)], 1e-3: [(0.90, 0.91), (0.88, 0.87)]},
    },
    ("random_masking", 0.01, 10_000): {
        "RTE": {1e-3: [(0.75, 0.71), (0.70, 0.74)], 1e-2: [(0.72, 0.50), (0.72, 0.50)]},
        "SST-2": {1e-3: [(0.85, 0.84), (0.86, 0.85)], 1e-2: [(0.91, 0.90), (0.93, 0.95)]},
    },
    ("random_masking", 0.001, 1_000): {  # one seed, and SST-2 only
        "SST-2": {1e-2: [(0.70, 0.69)], 1e-1: [(0.75, 0.77)]},
    },
}


def _fill(uri: str, artifacts: Path) -> None:
    """Log every trial as a sweep does: parameters first, one dev metric per epoch, then the final result."""
    tracker = SweepTracker(uri, "paper-table", "paper-table", "sweep-1", artifacts)
    tracker.open({"sweep_file": "paper-table.yaml"})
    n = 0
    for (method, ratio, trainable), tasks in RESULTS.items():
        for task, by_lr in tasks.items():
            for lr, seeds in by_lr.items():
                for seed, (dev, test) in enumerate(seeds):
                    trial_id, n = f"t{n:03d}", n + 1
                    params = {"model": MODEL, "task": task, "method": method, "lr": lr, "seed": seed,
                              "ratio": "none" if ratio is None else ratio, "density": "none", "epochs": 2,
                              "train_examples": 100, "dev_examples": 50, "test_examples": 50, "metric": "accuracy"}
                    tracker.trial_run(trial_id, trial_id, params)
                    sizes = {"trainable_params": trainable, "total_params": TOTAL, "precision": "fp32"}
                    for epoch, value in ((1, dev - 0.05), (2, dev)):
                        result = {"epoch": epoch, "train_loss": 1.0 / epoch, "dev_metric": value, **sizes}
                        tracker.log_epoch(trial_id, result)
                    tracker.finish_trial(trial_id, "finished", {
                        "epoch": 2, "test_metric": test, "best_dev_metric": dev, "best_epoch": 2, "wall_time_s": 1.0,
                        "trainable_fraction": trainable / TOTAL})
    tracker.close(tags={"rmask.trials": n})


@pytest.fixture(scope="module")
def store():
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="rmask-paper-table-", dir=shm))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    _fill(uri, folder / "artifacts")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_cells_are_mean_and_std_over_seeds_at_the_best_dev_lr(store):
    (table,) = paper_tables(load_summary(str(store), bootstrap=10))
    assert table.model == MODEL and table.tasks == ["SST-2", "RTE"]  # the paper's column order
    lora, dense, sparse = table.rows
    assert [r.label for r in table.rows] == ["LoRA", "Random Masking 1%", "Random Masking 0.1%"]
    # LoRA: SST-2's best mean dev is at 1e-3 (0.89 vs 0.81), RTE's at 1e-4 (0.71 vs 0.61)
    sst2, rte = lora.cells["SST-2"], lora.cells["RTE"]
    assert (sst2.mean, sst2.seeds) == (pytest.approx(0.89), 2)
    assert sst2.std == pytest.approx(0.0282843, abs=1e-6)  # sqrt(((0.91-0.89)^2 + (0.87-0.89)^2) / (2-1))
    assert (rte.mean, rte.std) == (pytest.approx(0.68), pytest.approx(0.0282843, abs=1e-6))
    assert lora.average == pytest.approx((0.89 + 0.68) / 2) and lora.covered == 2
    assert (lora.trainable_params, lora.trainable_fraction) == (3_000, pytest.approx(0.003))
    # Random Masking 1%: SST-2 at 1e-2 (tests 0.90, 0.95); RTE at 1e-3 (mean dev 0.725 beats 0.72)
    assert dense.cells["SST-2"].mean == pytest.approx(0.925)
    assert dense.cells["SST-2"].std == pytest.approx(0.0353553, abs=1e-6)
    assert dense.cells["RTE"].mean == pytest.approx(0.725)
    assert dense.cells["RTE"].std == pytest.approx(0.0212132, abs=1e-6)
    # one seed: no deviation; a task without trials: no cell, and the average covers one task
    assert (sparse.cells["SST-2"].mean, sparse.cells["SST-2"].std) == (pytest.approx(0.77), None)
    assert "RTE" not in sparse.cells and sparse.covered == 1 and sparse.average == pytest.approx(0.77)


def test_readme_and_html_show_the_paper_layout(store, tmp_path):
    out = build_report(str(store), out=tmp_path / "report", bootstrap=10).folder
    readme = (out / "README.md").read_text()
    layout = readme[readme.index("## 1b. In the paper's layout"):]
    assert "| Method | Params | SST-2 | RTE | Avg |" in layout
    assert "| LoRA | 3K (0.3%) | 89.0 ± 2.8 | 68.0 ± 2.8 | 78.5 |" in layout
    assert "| Random Masking 1% | 10K (1%) | 92.5 ± 3.5 | 72.5 ± 2.1 | 82.5 |" in layout
    assert "| Random Masking 0.1% | 1K (0.1%) | 77.0 | — | 77.0† |" in layout
    page = (out / "index.html").read_text()
    cells = ["Random Masking 1%", "10K (1%)", "92.5 ± 3.5", "72.5 ± 2.1", "82.5"]
    assert "".join(f"<td>{c}</td>" for c in cells) in page


def test_tasks_outside_the_paper_follow_in_name_order():
    ordered = paper_tasks(["WiC", "CIFAR-10", "SST-2", "DROP", "AG-News"])
    assert ordered == ["SST-2", "WiC", "DROP", "AG-News", "CIFAR-10"]
